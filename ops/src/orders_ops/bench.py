"""``orders-bench`` (``make bench``): figures for the costs this design adds, on the real stack.

Prints medians and 95th percentiles; asserts nothing (these machines are noisy,
so figures are reported, not enforced). Starts the local stack and the workers
if they are not running, and stops only what it started.

What it measures, each through the identity that would do it in production:

* ``make up`` from cold (servers + bootstrap), when it had to start the stack;
* JWT login, database credential issue, lease renew and revoke, and an asyncpg
  connect with a fresh credential (one Vault role, as the validate service);
* the envelope codec: encode+decode of a 1 KiB payload with a cached data key,
  and the Vault calls a workflow costs with it versus one Transit call per payload;
* orders end to end through the six worker processes: latency one at a time and
  throughput with 16 in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from temporalio.api.common.v1 import Payload

from orders_ops.identities import local_session
from orders_ops.settings import StackSettings
from orders_ops.stack import Stack
from orders_shared.client import connect, submit_order
from orders_shared.codec import TransitEnvelopeCodec, VaultTransit
from orders_shared.logging import configure_logging
from orders_shared.order_input import parse_order

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


async def codec(settings: StackSettings, n: int) -> list[Row]:
    session = await local_session(settings, "orchestrator")
    try:
        codec = TransitEnvelopeCodec(VaultTransit(session))
        payload = Payload(metadata={"encoding": b"json/plain"}, data=os.urandom(1024))
        t0 = time.perf_counter()
        await codec.decode(await codec.encode([payload]))  # cold: one datakey call
        cold = time.perf_counter() - t0

        async def roundtrip() -> None:
            await codec.decode(await codec.encode([payload]))

        warm = await _timed(n, roundtrip)
        return [
            ("codec encode+decode 1 KiB, first (datakey)", f"{cold * 1000:.2f} ms", "-", "n=1"),
            (
                "codec encode+decode 1 KiB, cached key",
                *_ms(warm),
                f"n={n}, Vault calls {codec.stats.vault_calls}",
            ),
        ]
    finally:
        await session.close()


BENCH_SKU = "BENCH-1"
BENCH_STOCK = 1_000_000


async def bench_stock(settings: StackSettings) -> None:
    """The benchmark's own SKU, its stock topped up before every run, so a benchmark never
    drains the demo catalogue (WIDGET-1 and friends) nor runs out itself."""
    conn = await asyncpg.connect(settings.admin_dsn(settings.database))
    try:
        await conn.execute(
            "INSERT INTO app.products (sku, name, unit_price_cents) VALUES ($1, $2, 100) "
            "ON CONFLICT (sku) DO NOTHING",
            BENCH_SKU,
            "Benchmark item (make bench only)",
        )
        await conn.execute(
            "INSERT INTO app.inventory (sku, on_hand) VALUES ($1, $2) "
            "ON CONFLICT (sku) DO UPDATE SET on_hand = EXCLUDED.on_hand",
            BENCH_SKU,
            BENCH_STOCK,
        )
    finally:
        await conn.close()


class BenchOrderFailed(RuntimeError):
    """A benchmark order did not complete: the message names the order and its reason."""


def _progress(message: str) -> None:
    print(f"  .. {message}", flush=True)


async def orders(settings: StackSettings, sequential: int, concurrent: int) -> list[Row]:
    await bench_stock(settings)
    session = await local_session(settings, "client")
    try:
        transit = VaultTransit(session)
        client = await connect(settings.temporal_address, transit)

        def order() -> Any:
            return parse_order(
                {
                    "order_id": f"bench-{uuid.uuid4().hex[:12]}",
                    "customer_id": "cust-bench",
                    "customer_name": "Bench Mark",
                    "email": "bench@example.com",
                    "shipping_address": "1 Loop Road",
                    "payment_token": "tok_bench",
                    "lines": [{"sku": BENCH_SKU, "quantity": 1}],
                }
            )

        async def one() -> None:
            submitted = await submit_order(client, order(), wait=True, transit=transit)
            result = submitted.result
            if result is None or result.status != "completed":
                raise BenchOrderFailed(
                    f"benchmark order {submitted.order_id} did not complete: "
                    + (
                        f"{result.status}, {result.reason_code}: {result.reason}"
                        if result
                        else "no result"
                    )
                    + " (see 'make logs')"
                )

        await one()  # warm-up: first data keys, pools
        _progress(f"{sequential} orders one after another")
        latencies = await _timed(sequential, one)
        _progress(f"{concurrent} orders, 16 in flight")
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(16)

        async def bounded() -> None:
            async with sem:
                await one()

        await asyncio.gather(*(bounded() for _ in range(concurrent)))
        elapsed = time.perf_counter() - t0
        return [
            ("order end to end, six worker processes", *_ms(latencies), f"n={sequential}"),
            (
                "throughput, 16 in flight",
                f"{concurrent / elapsed:.1f} orders/s",
                "-",
                f"n={concurrent}",
            ),
        ]
    finally:
        await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="orders-bench", description=__doc__)
    parser.add_argument("-n", type=int, default=50, help="samples per Vault/database figure")
    parser.add_argument("--orders", type=int, default=20, help="sequential orders")
    parser.add_argument("--concurrent", type=int, default=64, help="orders for throughput")
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench.json"))
    args = parser.parse_args()
    configure_logging("bench", "WARNING")
    stack = Stack(StackSettings.from_env())
    already = {s.name for s in stack.servers if s.pid() is not None}
    rows: list[Row] = []
    try:
        t0 = time.perf_counter()
        _progress("local stack up and bootstrapped")
        stack.up(timeout=90, echo=lambda _line: None)
        if not already:
            rows.append(
                (
                    "make up from cold (servers + bootstrap)",
                    f"{time.perf_counter() - t0:.2f} s",
                    "-",
                    "n=1",
                )
            )
        _progress("starting the six workers")
        stack.workers_up(timeout=90, echo=lambda _line: None)
        _progress(f"Vault and database costs ({args.n} samples each)")
        rows += asyncio.run(vault_and_database(stack.settings, args.n))
        _progress(f"envelope codec ({args.n * 20} samples)")
        rows += asyncio.run(codec(stack.settings, args.n * 20))
        _progress("orders end to end")
        rows += asyncio.run(orders(stack.settings, args.orders, args.concurrent))
    except BenchOrderFailed as exc:
        raise SystemExit(f"orders-bench: error: {exc}") from None
    finally:
        for server in reversed(stack.servers):
            if server.name not in already:
                server.stop()
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'median':>14}  {'p95':>10}  notes")
    for what, median, p95, notes in rows:
        print(f"{what:<{width}}  {median:>14}  {p95:>10}  {notes}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            [dict(zip(("what", "median", "p95", "notes"), r, strict=True)) for r in rows], indent=2
        )
    )
    print(f"(also written to {args.json})")


if __name__ == "__main__":
    main()
