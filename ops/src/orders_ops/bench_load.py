"""Load and counters for ``orders-bench``: fixed concurrency for a fixed time, alternating
configurations in rounds; Vault requests from Vault's audit log; Postgres login roles
seen in ``pg_roles``."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from orders_ops.bench_configs import Configuration
from orders_ops.settings import StackSettings
from orders_ops.vault_audit import VaultAuditLog
from orders_shared.contracts.common import Order
from orders_shared.order_input import parse_order

BENCH_SKU = "BENCH-1"
BENCH_STOCK = 10_000_000


async def bench_stock(settings: StackSettings) -> None:
    """The benchmark's own SKU, stock topped up before every run (never the demo's)."""
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


def bench_order(tag: str) -> Order:
    return parse_order(
        {
            "order_id": f"bench-{tag}-{uuid.uuid4().hex[:12]}",
            "customer_id": "cust-bench",
            "customer_name": "Bench Mark",
            "email": "bench@example.com",
            "shipping_address": "1 Loop Road",
            "payment_token": "tok_bench",
            "lines": [{"sku": BENCH_SKU, "quantity": 1}],
        }
    )


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Window:
    """What one configuration did in its measured windows (summed over rounds)."""

    seconds: float = 0.0
    started: int = 0
    completed: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    vault: Counter[str] = field(default_factory=Counter)
    roles_created: int = 0
    cpu_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = self.latencies
        # Vault requests and roles are counted until the last order started in the
        # window has finished, so they are divided by the orders started
        per_order = self.started or 1
        by_path: Counter[str] = Counter()
        for key, n in self.vault.items():
            by_path[_path_group(key)] += n
        total = sum(self.vault.values())
        return {
            "measured_seconds": round(self.seconds, 2),
            "orders_started": self.started,
            "orders_completed": self.completed,
            "orders_failed": self.failed,
            "throughput_orders_per_s": round(self.completed / self.seconds, 3)
            if self.seconds
            else 0.0,
            "latency_ms": {
                "p50": round(percentile(lat, 50) * 1000, 1) if lat else None,
                "p95": round(percentile(lat, 95) * 1000, 1) if lat else None,
                "p99": round(percentile(lat, 99) * 1000, 1) if lat else None,
            },
            "vault_requests": total,
            "vault_requests_per_order": round(total / per_order, 3),
            "vault_requests_per_order_by_path": {
                k: round(n / per_order, 3) for k, n in by_path.most_common()
            },
            "bench_process_cpu_ms_per_order": round(1000 * self.cpu_seconds / per_order, 1),
            "postgres_roles_created": self.roles_created,
            "postgres_roles_per_1000_orders": round(1000 * self.roles_created / per_order, 1),
            "first_errors": self.errors[:3],
        }


def _path_group(key: str) -> str:
    """``"update transit/encrypt/orders-seal-notify"`` stays; lease ids and creds suffixes
    are cut (``sys/leases/renew/database/creds/<role>/<id>`` -> ``.../<role>/*``)."""
    op, _, path = key.partition(" ")
    parts = path.split("/")
    if path.startswith("sys/leases/") and len(parts) > 6:
        path = "/".join(parts[:6]) + "/*"
    return f"{op} {path}"


class RoleWatch:
    """Distinct Vault-made login roles (``v-...``) seen in ``pg_roles`` while watching.

    Counted from Postgres by polling every ``interval`` seconds: roles that live
    shorter than that (the per-call configuration drops each role right after
    its call) can be missed, so for that configuration the figure is a lower
    bound (Vault's audit log counts the credentials issued).
    """

    def __init__(self, settings: StackSettings, interval: float = 0.05) -> None:
        self.settings = settings
        self.interval = interval

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[Callable[[], int]]:
        conn = await asyncpg.connect(self.settings.admin_dsn(self.settings.database))
        query = "SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%'"
        before = {r[0] for r in await conn.fetch(query)}
        seen: set[str] = set()
        stop = asyncio.Event()

        async def poll() -> None:
            while not stop.is_set():
                seen.update(r[0] for r in await conn.fetch(query))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)

        task = asyncio.create_task(poll())
        try:
            yield lambda: len(seen - before)
        finally:
            stop.set()
            await task
            seen.update(r[0] for r in await conn.fetch(query))
            await conn.close()


async def drive(
    config: Configuration, *, seconds: float, concurrency: int, window: Window | None
) -> None:
    """``concurrency`` loops submitting orders and waiting for each result, for ``seconds``.

    Orders completed before the end count for latency and throughput; every order
    started counts for the Vault and Postgres figures per order (its requests are
    all in the window's counts: the window ends when the last one finished).
    ``window=None``: warm-up.
    """
    end = time.perf_counter() + seconds

    async def loop(i: int) -> None:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            if window is not None:
                window.started += 1
            try:
                await config.run_one(bench_order(f"{config.name}-{i}"))
            except Exception as exc:
                if window is not None:
                    window.failed += 1
                    window.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                await asyncio.sleep(0.2)
                continue
            t1 = time.perf_counter()
            if window is not None and t1 <= end:
                window.completed += 1
                window.latencies.append(t1 - t0)

    await asyncio.gather(*(loop(i) for i in range(concurrency)))


async def measure(
    config: Configuration,
    window: Window,
    *,
    audit: VaultAuditLog,
    roles: RoleWatch,
    warmup: float,
    seconds: float,
    concurrency: int,
) -> None:
    """One round of one configuration: warm-up (not counted), then the measured window."""
    await drive(config, seconds=warmup, concurrency=concurrency, window=None)
    mark = audit.mark()
    async with roles.watch() as created:
        cpu = time.process_time()
        await drive(config, seconds=seconds, concurrency=concurrency, window=window)
        window.cpu_seconds += time.process_time() - cpu
        window.seconds += seconds
        window.roles_created += created()
    await asyncio.sleep(0.3)  # Vault writes the audit entry of the last request
    window.vault.update(audit.requests(mark))
