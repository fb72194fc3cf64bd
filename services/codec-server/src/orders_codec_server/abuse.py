"""``make abuse``: a small, bounded abuse benchmark of the real codec server process.

Starts ``orders-codec-server`` (default limits, except 5 s header and body
timeouts so the slow cases end sooner) against the local stack's OpenBao, sends
each abusive request, and prints per case: the answer, the time until it came,
the server's stall (the slowest answer to ``/healthz``, polled meanwhile) and
its peak resident memory (psutil RSS, sampled every 10 ms). It asserts only
that the server stays up and refuses each case (no 200, no 500); the figures
are for reading, not for asserting (machines are noisy).

Uses the local stack (started if it is not running, and then stopped again); the
dev root token encrypts the payloads and a payload reader's Vault token asks for
their decoding.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import psutil  # type: ignore[import-untyped]
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload

from orders_shared.codec import TokenTransit, TransitEnvelopeCodec, TransitPerCallCodec

MIB = 1024 * 1024


class Sampler:
    """Peak RSS of one process, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.01)

    def reset(self) -> None:
        self.peak = self.process.memory_info().rss

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Row:
    case: str
    answer: str
    seconds: float
    stall: float
    peak_mib: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _body(payloads: list[Payload]) -> bytes:
    return json.dumps({"payloads": [json_format.MessageToDict(p) for p in payloads]}).encode()


async def _post(url: str, body: bytes, token: str) -> str:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http,
        http.post(url, data=body, headers=headers) as r,
    ):
        await r.read()
        return str(r.status)


async def _raw(port: int, data: bytes) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        first = await asyncio.wait_for(reader.read(64), 120)
        if not first:
            return "closed"
        return first.split(b" ")[1].decode()
    finally:
        writer.close()


async def _token_flood(url: str, count: int) -> str:
    sem = asyncio.Semaphore(20)
    statuses: dict[str, int] = {}

    async def one(i: int) -> None:
        async with sem:
            status = await _post(url, b'{"payloads":[]}', f"flood-token-{i}")
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(one(i) for i in range(count)))
    return " ".join(f"{n}x{s}" for s, n in sorted(statuses.items()))


async def _slow_flood(port: int, token: str, count: int) -> str:
    head = (
        b"POST /decode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: 1000000\r\n\r\n{"
    )
    results = await asyncio.gather(*(_raw(port, head) for _ in range(count)))
    counts: dict[str, int] = {}
    for r in results:
        counts[r] = counts.get(r, 0) + 1
    return " ".join(f"{n}x{s}" for s, n in sorted(counts.items()))


async def _stall(url: str, done: asyncio.Event) -> float:
    """The longest the server took to answer ``/healthz`` (not limited) meanwhile."""
    worst = 0.0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        while not done.is_set():
            started = time.monotonic()
            async with http.get(f"{url}/healthz") as r:
                await r.read()
            worst = max(worst, time.monotonic() - started)
            await asyncio.sleep(0.02)
    return worst


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except OSError:
        return False


async def run(vault_addr: str, root_token: str, reader_token: str) -> list[Row]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(  # noqa: ASYNC220 (started once, before the cases)
        [
            sys.executable,
            "-m",
            "orders_codec_server",
            "--port",
            str(port),
            "--vault-addr",
            vault_addr,
            "--header-timeout",
            "5",
            "--body-timeout",
            "5",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    transit = TokenTransit(vault_addr, root_token)
    rows: list[Row] = []
    try:
        for _ in range(300):
            if _healthy(url):
                break
            await asyncio.sleep(0.05)
        else:
            raise SystemExit("orders-codec-server did not start")
        sampler = Sampler(server.pid)
        # crafted as an attacker holding a payload key would: the codec itself refuses to
        # write a payload that inflates past its own decode bound
        envelope = TransitEnvelopeCodec(transit, compress_over=0, max_decompressed=1 << 30)
        (per_call,) = await TransitPerCallCodec(transit).encode(
            [Payload(metadata={"encoding": b"json/plain"}, data=b"1")]
        )
        (bomb,) = await envelope.encode([Payload(data=b"\0" * (64 * MIB))])
        mediums = [
            (await envelope.encode([Payload(data=bytes([i % 256]) * (3 * MIB + MIB // 2))]))[0]
            for i in range(100)
        ]
        empties = b'{"payloads":[' + b",".join([b"{}"] * 1_398_000) + b"]}"
        per_calls, bomb_body, mediums_body = (
            _body([per_call] * 10_000),
            _body([bomb]),
            _body(mediums),
        )
        cases: list[tuple[str, Callable[[], Awaitable[str]]]] = [
            (
                f"1.4M empty payloads ({len(empties) // 1024} KiB)",
                lambda: _post(f"{url}/decode", empties, reader_token),
            ),
            (
                "10,000 per-call payloads",
                lambda: _post(f"{url}/decode", per_calls, reader_token),
            ),
            (
                f"zlib bomb: 64 MiB in {len(bomb_body) // 1024} KiB",
                lambda: _post(f"{url}/decode", bomb_body, reader_token),
            ),
            (
                f"100 x 3.5 MiB bombs in {len(mediums_body) // 1024} KiB",
                lambda: _post(f"{url}/decode", mediums_body, reader_token),
            ),
            (
                "slow body: declares 1 MB, sends 14 B",
                lambda: _raw(
                    port,
                    b"POST /decode HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nAuthorization: Bearer "
                    + reader_token.encode()
                    + b'\r\nContent-Length: 1000000\r\n\r\n{"payloads": [',
                ),
            ),
            (
                "slow headers (never end)",
                lambda: _raw(port, b"POST /decode HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: "),
            ),
            ("50 slow bodies at once", lambda: _slow_flood(port, reader_token, 50)),
            ("token flood: 500 distinct bad tokens", lambda: _token_flood(f"{url}/decode", 500)),
        ]
        for name, case in cases:
            sampler.reset()
            done = asyncio.Event()
            stall = asyncio.create_task(_stall(url, done))
            started = time.monotonic()
            answer = await case()
            seconds = time.monotonic() - started
            await asyncio.sleep(0.05)  # let the sampler see the tail
            done.set()
            rows.append(Row(name, answer, seconds, await stall, sampler.peak / MIB))
            alive = server.poll() is None and _healthy(url)
            assert alive, f"the codec server is down after: {name}"
            assert "200" not in answer and "500" not in answer, f"{name}: {answer}"
        sampler.stop()
    finally:
        transit.close()
        server.terminate()
        server.wait(30)
    return rows


def print_rows(rows: list[Row]) -> None:
    print(f"{'case':<42} {'answer':<20} {'time s':>7} {'stall s':>8} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r.case:<42} {r.answer:<20} {r.seconds:>7.2f} {r.stall:>8.2f} {r.peak_mib:>13.1f}")


def main() -> None:
    import hvac

    from orders_ops.issuer import mint_user
    from orders_ops.settings import StackSettings
    from orders_ops.stack import Stack

    stack = Stack(StackSettings.from_env())
    already = {s.name for s in stack.servers if s.pid() is not None}
    try:
        stack.up(timeout=90, echo=lambda _line: None)
        settings = stack.settings
        reader = hvac.Client(url=settings.vault_addr).auth.jwt.jwt_login(
            "payload-reader", mint_user(settings, "abuse-bench"), path="oidc-readers"
        )["auth"]["client_token"]
        print(
            "orders-codec-server, default limits (header/body timeouts 5 s for the bench), "
            f"Vault {settings.vault_addr}"
        )
        rows = asyncio.run(run(settings.vault_addr, settings.root_token(), reader))
    finally:
        for server in reversed(stack.servers):
            if server.name not in already:
                server.stop()
    print_rows(rows)
    print("the server stayed up and refused every case")


if __name__ == "__main__":
    main()
