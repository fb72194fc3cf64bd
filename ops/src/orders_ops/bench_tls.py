"""``make bench-tls``: the cost of Temporal mTLS, orders/s with and without it (short).

The six worker processes run twice on the same stack: first in plaintext to the dev
server, then with ``ORDERS_TLS=1`` through the local terminator with their own client
certificates; each time a few warm-up orders, then ``--orders`` orders with
``--concurrency`` in flight, all of which must complete. Prints a line per mode and
writes ``artifacts/bench-tls.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from orders_ops import pki, tls_proxy
from orders_ops.bench_load import bench_order, bench_stock
from orders_ops.identities import local_session
from orders_ops.settings import StackSettings
from orders_ops.stack import Stack
from orders_shared.client import connect, submit_order
from orders_shared.codec import VaultTransit
from orders_shared.logging import configure_logging
from orders_shared.tls import CertificateManager


async def _orders(settings: StackSettings, tls: bool, n: int, concurrency: int) -> float:
    """Orders per second over ``n`` orders (after 4 warm-up ones)."""
    session = await local_session(settings, "client")
    try:
        transit = VaultTransit(session)
        if tls:
            certs = CertificateManager(
                session,
                role="client-operator",
                common_name="orders-client",
                ca_file=str(pki.ca_file(settings)),
            )
            await certs.start(renew=False)
            client = await connect(
                tls_proxy.tls_address(), transit, tls=certs.temporal_tls(tls_proxy.SERVER_NAME)
            )
        else:
            client = await connect(settings.temporal_address, transit)
        sem = asyncio.Semaphore(concurrency)

        async def one(tag: str) -> None:
            async with sem:
                done = await submit_order(client, bench_order(tag), wait=True, transit=transit)
                if done.result is None or done.result.status != "completed":
                    raise SystemExit(f"orders-bench-tls: order {done.order_id} did not complete")

        await asyncio.gather(*(one("tls-warm") for _ in range(4)))
        t0 = time.perf_counter()
        await asyncio.gather(*(one("tls-bench") for _ in range(n)))
        return n / (time.perf_counter() - t0)
    finally:
        await session.close()


def run(stack: Stack, n: int, concurrency: int) -> dict[str, Any]:
    quiet = lambda _line: None  # noqa: E731
    out: dict[str, Any] = {"orders": n, "concurrency": concurrency}
    asyncio.run(bench_stock(stack.settings))
    for mode in ("plaintext", "mtls"):
        os.environ["ORDERS_TLS"] = "1" if mode == "mtls" else "0"
        stack.tls = mode == "mtls"
        stack.workers_down(quiet)
        if stack.tls:
            stack.tls_proxy.start(60)
        stack.workers_up(timeout=120, echo=quiet)
        rate = asyncio.run(_orders(stack.settings, stack.tls, n, concurrency))
        out[f"{mode}_orders_per_s"] = round(rate, 2)
        print(f"  {mode:<9} {rate:6.2f} orders/s ({n} orders, {concurrency} in flight)")
    stack.workers_down(quiet)
    plain, mtls = out["plaintext_orders_per_s"], out["mtls_orders_per_s"]
    out["mtls_cost_percent"] = round(100 * (plain - mtls) / plain, 1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="orders-bench-tls", description=__doc__)
    parser.add_argument("--orders", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench-tls.json"))
    args = parser.parse_args(argv)
    configure_logging("bench", "WARNING")
    stack = Stack(StackSettings.from_env())
    already = {s.name for s in [*stack.servers, stack.tls_proxy] if s.pid() is not None}
    try:
        stack.up(timeout=90, echo=lambda _line: None)
        result = run(stack, args.orders, args.concurrency)
    finally:
        for server in reversed([*stack.servers, stack.tls_proxy]):
            if server.name not in already:
                server.stop()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  mTLS costs {result['mtls_cost_percent']}% of the plaintext rate ({args.json})")


if __name__ == "__main__":
    main()
