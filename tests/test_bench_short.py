"""``orders-bench --short`` runs against the real stack and writes the three configurations.

No timing assertions (machines are noisy): only that it runs, every configuration
completed orders, and the JSON and markdown are written with their figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orders_ops.bench import Options, run_bench, write
from orders_ops.bench_configs import CONFIGS
from orders_ops.stack import Stack

pytestmark = [pytest.mark.stack]


async def test_short_bench_writes_all_three_configurations(stack: Stack, tmp_path: Path) -> None:
    result = await run_bench(stack.settings, Options.short())
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
    # the per-call configuration really calls Vault for every payload; plain never does
    assert data["configurations"]["per-call"]["vault_requests_per_order"] > 0
    assert "targets" in data and "codec_micro" in data
    assert "| per-call |" in out.with_suffix(".md").read_text()
