"""``orders-bench --profile``: where a secured worker's CPU goes, and the codec's own cost.

* :func:`codec_offline`: the envelope codec's encode+decode round trip against bare
  AES-256-GCM on the same bytes, with keys in memory (:class:`InMemoryTransit`: no
  Vault, so only the codec's own work is timed); the minimum over repeats of
  interleaved batches, the figure least moved by other jobs on a shared machine.
* :func:`profile_workers`: py-spy samples the six worker *processes* while secured
  orders run through them, and writes ``artifacts/profile-<service>.svg`` (flame
  graph) and ``artifacts/profile-<service>.txt`` (collapsed stacks), plus
  ``artifacts/profile-summary.txt``: per process, the share of samples in the
  payload codec, sealing, protobuf, the Temporal SDK, asyncpg and hvac.

py-spy attaches to another process with ``ptrace``: it needs root (or
``CAP_SYS_PTRACE``), as the workers run as their own OS users.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload

from orders_shared.allocator import tune_allocator
from orders_shared.codec import InMemoryTransit, TransitEnvelopeCodec, payload_keys

SIZES = {"1KiB": 1024, "256KiB": 256 * 1024}
BUCKETS = {
    "payload codec (orders_shared/codec.py)": "orders_shared/codec.py",
    "sealing (orders_shared/sealing.py)": "orders_shared/sealing.py",
    "protobuf": "google/protobuf",
    "Temporal SDK (temporalio)": "temporalio/",
    "asyncpg": "asyncpg/",
    "hvac / requests (Vault)": "hvac/",
    "cryptography": "cryptography/",
}
"""Frames whose file path contains the value count for the bucket (inclusive time)."""


def codec_offline(repeat: int = 7) -> dict[str, Any]:
    """Envelope codec round trip vs bare AES-GCM, keys in memory, cached data key.

    CPU time of this process (``time.process_time``) per round trip, in µs: on a
    machine shared with other jobs, wall time measures the queue for the CPU as
    much as the code. The minimum over ``repeat`` interleaved batches."""
    return asyncio.run(_codec_offline(repeat))


async def _codec_offline(repeat: int) -> dict[str, Any]:
    tune_allocator()  # as every worker does at start (orders_shared.allocator)
    codec = TransitEnvelopeCodec(InMemoryTransit(*payload_keys()))
    out: dict[str, Any] = {}
    for label, size in SIZES.items():
        data = os.urandom(size)
        payload = Payload(metadata={"encoding": b"binary/plain"}, data=data)
        key = AESGCM(AESGCM.generate_key(bit_length=256))
        nonce = os.urandom(12)
        number = 500 if size <= 4096 else 50
        await codec.decode(await codec.encode([payload]))  # the data key, fetched and cached
        env_us = bare_us = float("inf")
        for _ in range(repeat):  # interleaved, so load falls on both alike
            t0 = time.process_time()
            for _ in range(number):
                await codec.decode(await codec.encode([payload]))
            env_us = min(env_us, (time.process_time() - t0) / number * 1e6)
            t0 = time.process_time()
            for _ in range(number):
                key.decrypt(nonce, key.encrypt(nonce, data, b"aad"), b"aad")
            bare_us = min(bare_us, (time.process_time() - t0) / number * 1e6)
        out[label] = {
            "envelope_round_trip_cpu_us": round(env_us, 1),
            "bare_aes_gcm_round_trip_cpu_us": round(bare_us, 1),
            "envelope_over_bare": round(env_us / max(bare_us, 1e-3), 2),
        }
    return out


def py_spy() -> str:
    """The py-spy beside this interpreter (the venv's), else on PATH; a clear error if none."""
    here = Path(sys.executable).with_name("py-spy")
    found = str(here) if here.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("orders-bench: error: py-spy not found; run `make install`")
    if os.geteuid() != 0:
        raise SystemExit(
            "orders-bench: error: --profile attaches py-spy to the worker processes, which "
            "needs root (or CAP_SYS_PTRACE); run it as root"
        )
    return found


def start_recording(pids: dict[str, int], out_dir: Path) -> list[Any]:
    """One flame graph and one collapsed-stack recording per process, until
    :func:`finish_recording` (py-spy writes its output on SIGINT)."""
    spy = py_spy()
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for service, pid in pids.items():
        for fmt, ext in (("flamegraph", "svg"), ("raw", "txt")):
            cmd = [spy, "record", "--pid", str(pid), "--rate", "50", "--nonblocking"]
            cmd += ["--format", fmt, "--output", str(out_dir / f"profile-{service}.{ext}")]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    return procs


def finish_recording(procs: list[Any], timeout: float = 60.0) -> list[str]:
    """Stop every py-spy (SIGINT: it writes its file), wait; the last stderr line of each
    failure."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    errors = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode not in (0, -signal.SIGINT):
            tail = (err or b"").decode(errors="replace").strip().splitlines()[-1:]
            errors.append(tail[0] if tail else f"py-spy exited {proc.returncode}")
    return errors


def summarize(raw: Path) -> dict[str, Any]:
    """Share of samples (inclusive) per bucket, and the 10 hottest leaf frames."""
    total = 0
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for name, needle in BUCKETS.items():
            if any(needle in f for f in frames):
                buckets[name] += n
        leaves[frames[-1]] += n
    share = {k: round(100 * buckets[k] / total, 1) if total else 0.0 for k in BUCKETS}
    return {
        "samples": total,
        "percent_of_samples": share,
        "hottest_leaves": [[f, round(100 * n / total, 1)] for f, n in leaves.most_common(10)],
    }


def write_summary(out_dir: Path, services: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    lines = []
    for service in services:
        raw = out_dir / f"profile-{service}.txt"
        if not raw.exists():
            continue
        s = summary[service] = summarize(raw)
        lines.append(f"== worker-{service}: {s['samples']} samples")
        lines += [f"  {v:5.1f} %  {k}" for k, v in s["percent_of_samples"].items()]
        lines.append("  hottest leaf frames:")
        lines += [f"  {v:5.1f} %  {f}" for f, v in s["hottest_leaves"]]
    (out_dir / "profile-summary.txt").write_text("\n".join(lines) + "\n")
    return summary
