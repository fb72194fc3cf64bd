"""``orders-bench`` (``make bench``): security's cost, side by side in one run.

Reports figures and whether each target is met; asserts nothing (these machines
are noisy). Starts the local stack if it is not running, and stops only what it
started. Writes ``artifacts/bench.json`` and ``artifacts/bench.md``.

1. Three configurations (:mod:`orders_ops.bench_configs`): ``plain`` (the
   insecure baseline, bench code only), ``per-call`` (a Vault login and a
   database credential per activity call, one Transit call per payload and per
   sealed field: bench code only) and ``secured`` (the product as shipped). All
   three run the six services' real worker code in this process (one Temporal
   client per identity, each with its own data converter; one namespace per
   configuration on the same Temporal server), alternating in rounds so that
   machine noise falls on all three alike. Each: throughput at fixed
   concurrency over a fixed time after a warm-up, latency p50/p95/p99.
2. Vault requests per completed order, by path, from Vault's audit log.
3. Postgres login roles created per 1,000 orders, from ``pg_roles``.
4. Codec micro-benchmarks (:mod:`orders_ops.bench_codec`), and the codec's own CPU
   cost with keys in memory (:func:`orders_ops.bench_profile.codec_offline`).
5. Scaling (:mod:`orders_ops.bench_scaling`): throughput and p95 at 1, 4, 16 and 64
   orders in flight, with one and two replicas of every worker, and where an
   order's time goes (schedule-to-start and start-to-close per task, from history).
6. Start-up and footprint of the six worker *processes*: cold start to
   ``/readyz``, ``make up`` to all six ready, RSS and CPU per order after secured
   orders through them, while py-spy profiles them (:mod:`orders_ops.bench_profile`,
   as root: ``artifacts/profile-*.svg``/``.txt``).
* Per-operation Vault and database costs (login, credential issue, renew,
  revoke, connect), the inputs of docs/scaling.md.

Writes ``artifacts/bench.json``, ``artifacts/bench.md`` and the chart ``artifacts/bench.png``.
``--short``: a few seconds per configuration, no worker processes (``make test``
runs it through tests/test_bench_short.py). ``--sweep long``: the full scaling sweep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from orders_ops import bench_profile, bench_scaling
from orders_ops.bench_chart import chart
from orders_ops.bench_codec import codec_micro
from orders_ops.bench_configs import CONFIGS, Configuration, OrderFailed, configuration
from orders_ops.bench_load import RoleWatch, Window, bench_stock, drive, measure
from orders_ops.identities import local_session
from orders_ops.settings import StackSettings
from orders_ops.stack import Stack
from orders_ops.vault_audit import VaultAuditLog
from orders_ops.vault_bootstrap import audit_log_file
from orders_ops.vault_database import credential_ttls
from orders_shared.allocator import tune_allocator
from orders_shared.catalog import SERVICES
from orders_shared.logging import configure_logging

Row = tuple[str, str, str, str]


def _ms(samples: list[float]) -> tuple[str, str]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"{statistics.median(ordered) * 1000:.2f} ms", f"{p95 * 1000:.2f} ms"


async def _timed(n: int, fn: Callable[[], Awaitable[Any]]) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t0)
    return samples


async def vault_and_database(settings: StackSettings, n: int) -> list[Row]:
    rows: list[Row] = []
    session = await local_session(settings, "validate")
    try:
        logins = await _timed(n, session.login)
        rows.append(("JWT login (Vault)", *_ms(logins), f"n={n}"))
        client = session.client
        issued: list[dict[str, Any]] = []

        async def issue() -> None:
            issued.append(
                await session.call(client.secrets.database.generate_credentials, "order-validate")
            )

        rows.append(("issue one DB credential", *_ms(await _timed(n, issue)), f"n={n}"))
        cursor = iter(issued)

        async def renew() -> None:
            lease = next(cursor)["lease_id"]
            await session.call(
                client.adapter.put, f"/v1/sys/leases/renew/{lease}", json={"increment": 300}
            )

        rows.append(("renew a lease", *_ms(await _timed(n, renew)), f"n={n}"))
        connect_n = min(n, 20)
        creds = iter(issued)

        async def fresh_connect() -> None:
            data = next(creds)["data"]
            conn = await asyncpg.connect(
                host="127.0.0.1",
                port=settings.postgres_port,
                database=settings.database,
                user=data["username"],
                password=data["password"],
            )
            await conn.close()

        rows.append(
            (
                "asyncpg connect, fresh credential",
                *_ms(await _timed(connect_n, fresh_connect)),
                f"n={connect_n}",
            )
        )
        revoking = iter(issued)

        async def revoke() -> None:
            lease = next(revoking)["lease_id"]
            await session.call(client.adapter.put, f"/v1/sys/leases/revoke/{lease}")

        rows.append(("revoke a lease (drops the role)", *_ms(await _timed(n, revoke)), f"n={n}"))
    finally:
        await session.close()
    return rows


@dataclass(frozen=True)
class Options:
    rounds: int = 3
    warmup: float = 5.0
    seconds: float = 20.0
    concurrency: int = 4
    op_samples: int = 30
    codec_samples: int = 200
    sweep: str = "default"
    profile: bool = True

    @classmethod
    def short(cls) -> Options:
        return cls(
            rounds=1,
            warmup=1.0,
            seconds=3.0,
            concurrency=4,
            op_samples=3,
            codec_samples=10,
            sweep="short",
            profile=False,
        )


SECURED_BACKGROUND = (
    "sys/leases/renew/",
    "auth/token/renew-self",
    "auth/token/lookup-self",
    "transit/datakey/",
    "transit/encrypt/orders-seal-",
    "transit/decrypt/orders-seal-",
    "transit/decrypt/orders-payload-",
    "database/creds/",
    "sys/leases/revoke/",
)
"""Vault paths the secured configuration may call outside any order."""
PER_CALL_ALSO = ("database/creds/", "transit/encrypt/orders-seal-", "transit/decrypt/orders-seal-")
"""Of those, the paths the per-call configuration calls for its own orders."""

TARGETS = {
    "secured_over_plain_throughput": 0.95,
    "secured_over_per_call_throughput": 1.3,
    "secured_vault_requests_per_order": 0.1,
    "secured_postgres_roles_per_1000_orders": 6,
    "envelope_over_bare_256KiB": 3.0,
    "worker_cold_start_s": 1.5,
    "worker_rss_mib": 120,
}


def _progress(message: str) -> None:
    print(f"  .. {message}", flush=True)


async def compare(settings: StackSettings, opts: Options) -> dict[str, Any]:
    """Items 1-3: the three configurations alternating in rounds."""
    await bench_stock(settings)
    audit = VaultAuditLog(audit_log_file(settings))
    roles = RoleWatch(settings)
    windows = {name: Window() for name in CONFIGS}
    async with AsyncExitStack() as exits:
        configs: dict[str, Configuration] = {}
        for name in CONFIGS:
            _progress(f"starting configuration {name} (six in-process workers)")
            configs[name] = await exits.enter_async_context(configuration(name, settings))
        for config in configs.values():  # first orders: namespaces, caches, pools
            await drive(config, seconds=opts.warmup, concurrency=2, window=None)
        for r in range(opts.rounds):
            order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]
            for name in order:
                _progress(f"round {r + 1}/{opts.rounds}: {name}, {opts.seconds:.0f}s measured")
                await measure(
                    configs[name],
                    windows[name],
                    audit=audit,
                    roles=roles,
                    warmup=opts.warmup,
                    seconds=opts.seconds,
                    concurrency=opts.concurrency,
                )
    out = {name: w.summary() for name, w in windows.items()}
    # Requests no order asks for (token and lease renewals, data keys of a new period)
    # land in whichever window is open when they happen. Only the secured
    # configuration holds leases and long-lived tokens, so its figure with every
    # such request of every window charged to it is the honest upper bound.
    background = 0
    for name, w in windows.items():
        paths: tuple[str, ...] = SECURED_BACKGROUND
        if name == "per-call":  # leave out the paths per-call calls for its own orders
            paths = tuple(p for p in paths if not p.startswith(PER_CALL_ALSO))
        background += sum(
            n for key, n in w.vault.items() if key.split(" ", 1)[-1].startswith(paths)
        )
    secured = windows["secured"]
    out["secured"]["vault_requests_per_order_with_all_background"] = round(
        background / max(secured.started, 1), 3
    )
    return out


def role_projection(secured: dict[str, Any]) -> dict[str, Any]:
    """Login roles per 1,000 orders with default TTLs, from the measured throughput:
    each database role of each service gets one new credential per rotation, at
    most once per lease TTL (the lease is renewed until max TTL, then replaced)."""
    ttl, max_ttl = credential_ttls()
    roles = sum(len(spec.db_roles) for spec in SERVICES.values())
    rate = secured["throughput_orders_per_s"] or 1e-9
    per_s = roles / max_ttl  # one replacement per role per max TTL (renewals keep the role)
    return {
        "db_roles_per_replica_set": roles,
        "default_ttl_s": ttl,
        "max_ttl_s": max_ttl,
        "roles_per_1000_orders_at_measured_rate": round(1000 * per_s / rate, 3),
        "note": "one replica per service; every replica adds its own roles",
    }


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


async def _process_orders(settings: StackSettings, n: int, concurrency: int) -> dict[str, Any]:
    """Secured orders through the six worker *processes* (the product as deployed)."""
    from orders_ops.bench_load import bench_order
    from orders_shared.client import connect, submit_order
    from orders_shared.codec import VaultTransit

    session = await local_session(settings, "client")
    try:
        transit = VaultTransit(session)
        client = await connect(settings.temporal_address, transit)
        sem = asyncio.Semaphore(concurrency)
        done = 0

        async def one() -> None:
            nonlocal done
            async with sem:
                submitted = await submit_order(
                    client, bench_order("proc"), wait=True, transit=transit
                )
                if submitted.result is None or submitted.result.status != "completed":
                    raise OrderFailed(f"order {submitted.order_id} did not complete")
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return {"orders": done, "seconds": round(time.perf_counter() - t0, 2)}
    finally:
        await session.close()


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU of a process so far (``/proc/<pid>/stat``), 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def processes(
    stack: Stack, up_seconds: float | None, *, profile: bool = False, profile_dir: Path
) -> dict[str, Any]:
    """Item 6: the six worker processes: cold start to /readyz, all six, RSS after orders."""
    out: dict[str, Any] = {}
    if any(w.pid() is not None for w in stack.workers):
        out["note"] = "workers were already running: cold starts not measured"
    else:
        t0 = time.perf_counter()
        stack.workers_up(timeout=90, echo=lambda _line: None)
        six = time.perf_counter() - t0
        out["all_six_ready_s"] = round(six, 2)
        if up_seconds is not None:
            out["make_up_to_all_six_ready_s"] = round(up_seconds + six, 2)
        cold: dict[str, float] = {}
        for worker in stack.workers:  # one at a time: a single worker's cold start
            worker.stop()
            deadline = time.monotonic() + 10
            while worker.busy_ports() and time.monotonic() < deadline:
                time.sleep(0.1)  # the old process's ports: not part of a cold start
            t0 = time.perf_counter()
            worker._launch()
            worker.wait_ready(90)
            cold[worker.service] = round(time.perf_counter() - t0, 2)
        out["cold_start_to_readyz_s"] = cold
    pids = {w.service: pid for w in stack.workers if (pid := w.pid()) is not None}
    recording = []
    if profile:
        _progress("py-spy attached to the six workers (artifacts/profile-*)")
        recording = bench_profile.start_recording(pids, profile_dir)
    _progress("secured orders through the six worker processes")
    cpu0 = {s: _cpu_seconds(pid) for s, pid in pids.items()}
    out["orders_through_processes"] = asyncio.run(_process_orders(stack.settings, 200, 8))
    done = max(out["orders_through_processes"]["orders"], 1)
    out["worker_cpu_ms_per_order"] = {
        s: round(1000 * (_cpu_seconds(pid) - cpu0[s]) / done, 1) for s, pid in pids.items()
    }
    out["worker_cpu_ms_per_order"]["all six"] = round(
        sum(out["worker_cpu_ms_per_order"].values()), 1
    )
    if profile:
        out["profile_errors"] = bench_profile.finish_recording(recording)
        out["profile"] = bench_profile.write_summary(profile_dir, list(pids))
    out["rss_mib_after_run"] = {
        w.service: _rss_mib(pid) for w in stack.workers if (pid := w.pid()) is not None
    }
    return out


def targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cfg = result["configurations"]
    plain, per_call, sec = (cfg[c]["throughput_orders_per_s"] or 1e-9 for c in CONFIGS)
    found: dict[str, Any] = {
        "secured_over_plain_throughput": (round(sec / plain, 3), ">="),
        "secured_over_per_call_throughput": (round(sec / per_call, 3), ">="),
        "secured_vault_requests_per_order": (
            cfg["secured"]["vault_requests_per_order_with_all_background"],
            "<=",
        ),
        "secured_postgres_roles_per_1000_orders": (
            cfg["secured"]["postgres_roles_per_1000_orders"],
            "<=",
        ),
    }
    # CPU time with keys in memory: the codec's own cost, steadier than wall time on a
    # shared machine (codec_micro's wall-time ratio is in the table beside it)
    offline = result.get("codec_offline_cpu", {}).get("256KiB")
    if offline:
        found["envelope_over_bare_256KiB"] = (offline["envelope_over_bare"], "<=")
    procs = result.get("processes", {})
    if "cold_start_to_readyz_s" in procs:
        found["worker_cold_start_s"] = (max(procs["cold_start_to_readyz_s"].values()), "<")
    rss = [v for v in procs.get("rss_mib_after_run", {}).values() if v is not None]
    if rss:
        found["worker_rss_mib"] = (max(rss), "<")
    out = {}
    for name, (value, op) in found.items():
        target = TARGETS[name]
        met = value >= target if op == ">=" else value <= target if op == "<=" else value < target
        out[name] = {"value": value, "target": f"{op} {target}", "met": met}
    return out


async def run_bench(settings: StackSettings, opts: Options) -> dict[str, Any]:
    """Everything but the worker processes (which need the Stack's processes)."""
    result: dict[str, Any] = {
        "mode": "in-process workers (six services' real code, one client per identity)",
        "options": opts.__dict__,
        "cpu_count": os.cpu_count(),
    }
    result["configurations"] = await compare(settings, opts)
    result["postgres_role_projection"] = role_projection(result["configurations"]["secured"])
    _progress(f"Vault and database costs per operation ({opts.op_samples} samples each)")
    result["per_operation"] = [
        dict(zip(("what", "median", "p95", "notes"), r, strict=True))
        for r in await vault_and_database(settings, opts.op_samples)
    ]
    _progress("codec micro-benchmarks")
    result["codec_micro"] = await codec_micro(settings, samples=opts.codec_samples)
    result["codec_offline_cpu"] = await asyncio.to_thread(bench_profile.codec_offline)
    if opts.sweep != "none":
        sweep = bench_scaling.SWEEPS[opts.sweep]
        result["scaling"] = {
            "sweep": opts.sweep,
            "sweep_options": sweep.__dict__,
            **await bench_scaling.sweep(settings, sweep, _progress),
        }
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def markdown(result: dict[str, Any]) -> str:
    cfg = result["configurations"]
    lines = [
        "| configuration | orders/s | p50 ms | p95 ms | p99 ms | Vault req/order | "
        "PG roles/1000 orders | bench CPU ms/order | orders (failed) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in CONFIGS:
        c = cfg[name]
        lat = c["latency_ms"]
        label = "plain (INSECURE baseline)" if name == "plain" else name
        lines.append(
            f"| {label} | {c['throughput_orders_per_s']} | {lat['p50']} | {lat['p95']} | "
            f"{lat['p99']} | {c['vault_requests_per_order']} | "
            f"{c['postgres_roles_per_1000_orders']} | {c['bench_process_cpu_ms_per_order']} | "
            f"{c['orders_completed']} ({c['orders_failed']}) |"
        )
    lines += [
        "",
        "Secured, Vault requests per order with every background request of every window "
        f"(renewals, new data keys) charged to it: "
        f"{cfg['secured'].get('vault_requests_per_order_with_all_background')}",
        "",
        "Vault requests per order, by path:",
        "",
    ]
    for name in CONFIGS:
        paths = cfg[name]["vault_requests_per_order_by_path"]
        shown = ", ".join(f"`{k}` {v}" for k, v in list(paths.items())[:8]) or "none"
        lines.append(f"- **{name}**: {shown}")
    micro = result.get("codec_micro", {})
    if micro:
        lines += [
            "",
            "| codec round trip (encode+decode) | envelope ms | per-call ms | bare AES-GCM ms | "
            "protobuf serialize+parse ms | envelope/bare |",
            "|---|---|---|---|---|---|",
        ]
        for size, m in micro.items():
            lines.append(
                f"| {size} | {m['envelope']['median_ms']} | {m['per_call']['median_ms']} | "
                f"{m['bare_aes_gcm']['median_ms']} | "
                f"{m['protobuf_serialize_parse_only']['median_ms']} | {m['envelope_over_bare']} |"
            )
    ops = result.get("per_operation", [])
    if ops:
        lines += ["", "| operation | median | p95 | notes |", "|---|---|---|---|"]
        lines += [f"| {o['what']} | {o['median']} | {o['p95']} | {o['notes']} |" for o in ops]
    offline = result.get("codec_offline_cpu", {})
    if offline:
        lines += [
            "",
            "| codec CPU per round trip, keys in memory | envelope µs | bare AES-GCM µs | ratio |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {size} | {m['envelope_round_trip_cpu_us']} | "
            f"{m['bare_aes_gcm_round_trip_cpu_us']} | {m['envelope_over_bare']} |"
            for size, m in offline.items()
        ]
    scaling = result.get("scaling")
    if scaling:
        lines += bench_scaling.markdown(scaling)
    procs = result.get("processes")
    if procs:
        figures = {k: v for k, v in procs.items() if k != "profile"}
        lines += ["", "Worker processes: " + json.dumps(figures)]
    lines += ["", "| target | value | wanted | met |", "|---|---|---|---|"]
    for target, t in result["targets"].items():
        met = "yes" if t["met"] else "NO"
        lines.append(f"| {target} | {t['value']} | {t['target']} | {met} |")
    if scaling:
        lines += ["", "![throughput and p95 against orders in flight](bench.png)"]
    lines += ["", f"Load average at the end (1, 5, 15 min): {result.get('load_average_at_end')}"]
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], json_path: Path) -> None:
    result["targets"] = targets(result)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2))
    json_path.with_suffix(".md").write_text(markdown(result))
    if result.get("scaling"):
        title = (
            f"orders-bench, sweep {result['scaling']['sweep']}, {result['cpu_count']} CPUs, "
            f"load average {result.get('load_average_at_end')}"
        )
        chart(result["scaling"]["points"], json_path.with_suffix(".png"), title)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="orders-bench", description=__doc__)
    parser.add_argument("--short", action="store_true", help="a few seconds per configuration")
    parser.add_argument("--rounds", type=int, help="rounds of the three configurations")
    parser.add_argument(
        "--seconds", type=float, help="measured seconds per configuration and round"
    )
    parser.add_argument("--concurrency", type=int, help="orders in flight")
    parser.add_argument(
        "--sweep",
        choices=["none", *bench_scaling.SWEEPS],
        help="scaling sweep (default: default; --short: short)",
    )
    parser.add_argument(
        "--no-profile", action="store_true", help="no py-spy on the worker processes"
    )
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench.json"))
    args = parser.parse_args(argv)
    opts = Options.short() if args.short else Options()
    changes = {
        k: v
        for k, v in (
            ("rounds", args.rounds),
            ("seconds", args.seconds),
            ("concurrency", args.concurrency),
            ("sweep", args.sweep),
        )
        if v is not None
    }
    opts = Options(**{**opts.__dict__, **changes})
    if args.no_profile or os.geteuid() != 0:  # py-spy attaches to other users' processes
        opts = Options(**{**opts.__dict__, "profile": False})
    configure_logging("bench", "WARNING")
    tune_allocator()  # the in-process workers allocate as the worker processes do
    stack = Stack(StackSettings.from_env())
    already = {s.name for s in stack.servers if s.pid() is not None}
    try:
        t0 = time.perf_counter()
        _progress("local stack up and bootstrapped")
        stack.up(timeout=90, echo=lambda _line: None)
        up_seconds = None if already else time.perf_counter() - t0
        result = asyncio.run(run_bench(stack.settings, opts))
        if up_seconds is not None:
            result["make_up_from_cold_s"] = round(up_seconds, 2)
        if not args.short:
            result["processes"] = processes(
                stack, up_seconds, profile=opts.profile, profile_dir=args.json.parent
            )
    except OrderFailed as exc:
        raise SystemExit(f"orders-bench: error: {exc}") from None
    finally:
        for server in reversed(stack.servers):
            if server.name not in already:
                server.stop()
    write(result, args.json)
    print(markdown(result))
    print(f"(written to {args.json} and {args.json.with_suffix('.md')})")


if __name__ == "__main__":
    main()
