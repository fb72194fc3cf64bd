"""``orders-bench --short`` runs against the real stack and writes the three configurations.

No timing assertions (machines are noisy): only that it runs, every configuration
completed orders, and the JSON and markdown are written with their figures.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from orders_ops import bench_scaling as scaling
from orders_ops.bench import Options, run_bench, write
from orders_ops.bench_chart import chart
from orders_ops.bench_configs import CONFIGS
from orders_ops.bench_scaling import SWEEPS
from orders_ops.stack import Stack
from orders_shared.codec import LEGACY_PAYLOAD_KEY

pytestmark = [pytest.mark.stack]


async def test_short_bench_writes_all_three_configurations(stack: Stack, tmp_path: Path) -> None:
    # the sweep and the chart: the next test (one run of each is enough)
    opts = dataclasses.replace(Options.short(), sweep="none")
    result = await run_bench(stack.settings, opts)
    out = tmp_path / "bench.json"
    write(result, out)
    data = json.loads(out.read_text())
    assert set(data["configurations"]) == set(CONFIGS)
    for name in CONFIGS:
        figures = data["configurations"][name]
        # orders ran and none failed (how many finished inside 3 s depends on the machine)
        assert figures["orders_started"] > 0, name
        assert figures["orders_failed"] == 0, (name, figures["first_errors"])
        assert {"p50", "p95", "p99"} <= set(figures["latency_ms"])
        assert "vault_requests_per_order_by_path" in figures
    # the per-call codec calls Transit once per payload encoded and once per payload
    # decoded: at least an order's input and result and each of its five activities'
    # input and result, each sealed once and opened once (a codec left out: none)
    per_call = data["configurations"]["per-call"]["vault_requests_per_order_by_path"]
    sealed = per_call.get(f"update transit/encrypt/{LEGACY_PAYLOAD_KEY}", 0)
    opened = per_call.get(f"update transit/decrypt/{LEGACY_PAYLOAD_KEY}", 0)
    assert sealed >= 2 + 2 * 5 and opened == sealed, per_call
    # plain never calls Vault, for payloads or anything else
    plain = data["configurations"]["plain"]
    assert plain["vault_requests"] == 0 and plain["vault_requests_per_order_by_path"] == {}, plain
    assert "targets" in data and "codec_micro" in data
    assert "| per-call |" in out.with_suffix(".md").read_text()


async def test_short_bench_sweeps_concurrency_replicas_and_draws_the_chart(
    stack: Stack, tmp_path: Path
) -> None:
    sweep = SWEEPS["short"]
    found = await scaling.sweep(stack.settings, sweep, lambda _m: None, breakdown_concurrency=2)
    points = found["points"]
    # every (configuration, replicas, concurrency) of the plan, each with completed orders
    plan = {(c, 1, n) for c in sweep.configs for n in sweep.concurrency}
    plan |= {(c, r, n) for r, levels in sweep.replica_points for c in sweep.configs for n in levels}
    assert {(p["configuration"], p["replicas"], p["concurrency"]) for p in points} == plan
    for p in points:  # orders ran, none failed (how many finished in time: the machine's)
        assert p["orders_started"] > 0, p
        assert p["orders_failed"] == 0, p["first_errors"]
        assert {"p50", "p95", "p99"} <= set(p["latency_ms"])
    # where the time goes, read back from each order's history
    assert set(found["breakdown"]) == set(sweep.configs)
    for b in found["breakdown"].values():
        assert b["orders"] == sweep.breakdown_orders
        rows = {r["what"]: r for r in b["rows"]}
        assert rows["workflow task"]["per_order"] >= 1
        # the five services' activities, each with both halves of its time
        assert sum(w.startswith("activity ") for w in rows) >= 5, sorted(rows)
        for r in rows.values():
            assert {"p50", "p95"} <= set(r["schedule_to_start_ms"])
            assert {"p50", "p95"} <= set(r["start_to_close_ms"])
    png = chart(points, tmp_path / "bench.png", "short sweep")
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    md = "\n".join(scaling.markdown(found))
    assert "| secured | 2 | 4 |" in md and "schedule-to-start" in md
