"""Scaling figures for ``orders-bench``: throughput and latency against orders in flight,
with one and two replicas of every worker, and where an order's time goes.

* :func:`sweep`: for each replica count, the configurations run side by side (one
  after the other at each concurrency, so load drifts fall on all alike), each
  point a warm-up then a measured window (:func:`orders_ops.bench_load.drive`).
* :func:`breakdown`: a set of orders at fixed concurrency, then each one's Temporal
  history read back: per activity, schedule-to-start (queued in Temporal until a
  worker polls it: dispatch and worker slots) and start-to-close (the activity's
  own work: Postgres, Vault, the codec, the provider); the same for workflow tasks
  (the orchestrator's workflow code and the codec on its payloads).

Sweeps: ``short`` (``make test``: proves the code runs), ``default`` (``make bench``:
plain and secured at 1, 4, 16 and 64 in flight, two replicas at 16) and ``long``
(all three configurations, every concurrency with one and two replicas).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

from orders_ops.bench_configs import CONFIGS, Configuration, configuration
from orders_ops.bench_load import Window, bench_order, drive, percentile
from orders_ops.settings import StackSettings


@dataclass(frozen=True)
class Sweep:
    configs: tuple[str, ...]
    concurrency: tuple[int, ...]
    replica_points: tuple[tuple[int, tuple[int, ...]], ...]
    """(replicas, concurrencies) beyond one replica at every concurrency."""
    warmup: float
    seconds: float
    breakdown_orders: int


SWEEPS: dict[str, Sweep] = {
    "short": Sweep(("plain", "secured"), (4,), ((2, (4,)),), 0.5, 1.5, 3),
    "default": Sweep(("plain", "secured"), (1, 4, 16, 64), ((2, (16,)),), 3.0, 10.0, 24),
    "long": Sweep(CONFIGS, (1, 4, 16, 64), ((2, (1, 4, 16, 64)),), 5.0, 20.0, 60),
}


def _point(name: str, replicas: int, concurrency: int, w: Window) -> dict[str, Any]:
    s = w.summary()
    return {
        "configuration": name,
        "replicas": replicas,
        "concurrency": concurrency,
        "orders_started": s["orders_started"],
        "throughput_orders_per_s": s["throughput_orders_per_s"],
        "latency_ms": s["latency_ms"],
        "orders_completed": s["orders_completed"],
        "orders_failed": s["orders_failed"],
        "bench_process_cpu_ms_per_order": s["bench_process_cpu_ms_per_order"],
        "first_errors": s["first_errors"],
    }


async def _measure(config: Configuration, concurrency: int, sw: Sweep) -> Window:
    await drive(config, seconds=sw.warmup, concurrency=concurrency, window=None)
    window = Window()
    cpu = time.process_time()
    await drive(config, seconds=sw.seconds, concurrency=concurrency, window=window)
    window.cpu_seconds = time.process_time() - cpu
    window.seconds = sw.seconds
    return window


async def sweep(
    settings: StackSettings,
    sw: Sweep,
    progress: Callable[[str], None],
    *,
    breakdown_concurrency: int = 4,
) -> dict[str, Any]:
    """``points``: throughput and latency per (configuration, replicas, concurrency);
    ``breakdown``: where the time goes per configuration (one replica, on the same
    workers, after its points)."""
    plan = [(1, sw.concurrency), *sw.replica_points]
    points: list[dict[str, Any]] = []
    found: dict[str, Any] = {}
    for replicas, levels in plan:
        async with AsyncExitStack() as exits:
            configs = {}
            for name in sw.configs:
                progress(f"scaling: starting {name} with {replicas} replica(s) per service")
                configs[name] = await exits.enter_async_context(
                    configuration(name, settings, replicas=replicas)
                )
            for concurrency in levels:
                for name, config in configs.items():
                    progress(f"scaling: {name} x{replicas}, {concurrency} in flight")
                    window = await _measure(config, concurrency, sw)
                    points.append(_point(name, replicas, concurrency, window))
            if replicas == 1:
                for name, config in configs.items():
                    progress(f"where the time goes: {name}, {sw.breakdown_orders} orders")
                    found[name] = await breakdown(
                        config, sw.breakdown_orders, breakdown_concurrency
                    )
    return {"points": points, "breakdown": found}


# ----------------------------------------------------------------- where the time goes

_ACT_SCHEDULED = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
_ACT_STARTED = EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
_WFT_SCHEDULED = EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED
_WFT_STARTED = EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
_CLOSED = frozenset(
    getattr(EventType, f"EVENT_TYPE_{kind}_TASK_{end}")
    for kind in ("ACTIVITY", "WORKFLOW")
    for end in ("COMPLETED", "FAILED", "TIMED_OUT")
)


def _t(event: HistoryEvent) -> float:
    return event.event_time.seconds + event.event_time.nanos / 1e9


def spans(events: Iterable[HistoryEvent]) -> list[tuple[str, float, float]]:
    """(what, schedule-to-start s, start-to-close s) for every activity and workflow task
    of one history; ``what`` is ``activity <type>`` or ``workflow task``."""
    scheduled: dict[int, tuple[str, float]] = {}
    started: dict[int, float] = {}
    out = []
    for e in events:
        if e.event_type == _ACT_SCHEDULED:
            name = e.activity_task_scheduled_event_attributes.activity_type.name
            scheduled[e.event_id] = (f"activity {name}", _t(e))
        elif e.event_type == _WFT_SCHEDULED:
            scheduled[e.event_id] = ("workflow task", _t(e))
        elif e.event_type == _ACT_STARTED:
            started[e.activity_task_started_event_attributes.scheduled_event_id] = _t(e)
        elif e.event_type == _WFT_STARTED:
            started[e.workflow_task_started_event_attributes.scheduled_event_id] = _t(e)
        elif e.event_type in _CLOSED:
            # *_completed/failed/timed_out_event_attributes: each has scheduled_event_id
            attrs = getattr(e, e.WhichOneof("attributes") or "")
            sid = attrs.scheduled_event_id
            if sid in scheduled and sid in started:
                what, t_sched = scheduled[sid]
                out.append((what, started[sid] - t_sched, _t(e) - started[sid]))
    return out


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50) * 1000, 1),
        "p95": round(percentile(values, 95) * 1000, 1),
    }


def summarize_spans(
    per_order: list[list[tuple[str, float, float]]], order_seconds: list[float]
) -> dict[str, Any]:
    """Per activity type and for workflow tasks: schedule-to-start and start-to-close
    p50/p95, and the mean time per order spent in each (sums over an order's spans)."""
    s2s: dict[str, list[float]] = defaultdict(list)
    s2c: dict[str, list[float]] = defaultdict(list)
    for order in per_order:
        for what, a, b in order:
            s2s[what].append(a)
            s2c[what].append(b)
    n = max(len(per_order), 1)
    rows: list[dict[str, Any]] = []
    for what in sorted(s2s, key=lambda w: (w != "workflow task", w)):
        rows.append(
            {
                "what": what,
                "per_order": round(len(s2s[what]) / n, 2),
                "schedule_to_start_ms": _ms(s2s[what]),
                "start_to_close_ms": _ms(s2c[what]),
                "mean_ms_per_order_queued": round(1000 * sum(s2s[what]) / n, 1),
                "mean_ms_per_order_running": round(1000 * sum(s2c[what]) / n, 1),
            }
        )
    covered = sum(r["mean_ms_per_order_queued"] + r["mean_ms_per_order_running"] for r in rows)
    workflow_ms = 1000 * sum(order_seconds) / n
    return {
        "orders": len(per_order),
        "workflow_ms_mean": round(workflow_ms, 1),
        "in_tasks_ms_mean": round(covered, 1),
        "between_tasks_ms_mean": round(workflow_ms - covered, 1),
        "rows": rows,
    }


async def breakdown(config: Configuration, orders: int, concurrency: int) -> dict[str, Any]:
    """Run ``orders`` orders at ``concurrency``, then read each one's history."""
    sem = asyncio.Semaphore(concurrency)
    ids: list[str] = []

    async def one() -> None:
        async with sem:
            order = bench_order(f"{config.name}-bd")
            await config.run_one(order)
            ids.append(order.order_id)

    await asyncio.gather(*(one() for _ in range(orders)))
    per_order = []
    durations = []
    for wid in ids:
        history = await config.client.get_workflow_handle(wid).fetch_history()
        events = list(history.events)
        per_order.append(spans(events))
        durations.append(_t(events[-1]) - _t(events[0]))
    result = summarize_spans(per_order, durations)
    result["concurrency"] = concurrency
    return result


def markdown(scaling: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "| configuration | replicas | in flight | orders/s | p50 ms | p95 ms | "
        "bench CPU ms/order | orders (failed) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in scaling["points"]:
        lat = p["latency_ms"]
        lines.append(
            f"| {p['configuration']} | {p['replicas']} | {p['concurrency']} | "
            f"{p['throughput_orders_per_s']} | {lat['p50']} | {lat['p95']} | "
            f"{p['bench_process_cpu_ms_per_order']} | "
            f"{p['orders_completed']} ({p['orders_failed']}) |"
        )
    for name, b in scaling.get("breakdown", {}).items():
        lines += [
            "",
            f"Where an order's time goes, **{name}** ({b['orders']} orders, "
            f"{b['concurrency']} in flight): workflow {b['workflow_ms_mean']} ms mean, "
            f"{b['in_tasks_ms_mean']} ms of it queued or running in tasks, "
            f"{b['between_tasks_ms_mean']} ms between them.",
            "",
            "| task | per order | schedule-to-start p50/p95 ms | start-to-close p50/p95 ms "
            "| queued ms/order | running ms/order |",
            "|---|---|---|---|---|---|",
        ]
        for r in b["rows"]:
            q, c = r["schedule_to_start_ms"], r["start_to_close_ms"]
            lines.append(
                f"| {r['what']} | {r['per_order']} | {q['p50']} / {q['p95']} | "
                f"{c['p50']} / {c['p95']} | {r['mean_ms_per_order_queued']} | "
                f"{r['mean_ms_per_order_running']} |"
            )
    return lines
