"""``artifacts/bench.png``: throughput and p95 latency per configuration against orders in
flight, one line per configuration and replica count (two replicas: dashed, square
markers). Drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

COLOURS = {"plain": "tab:grey", "per-call": "tab:red", "secured": "tab:green"}


def chart(points: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Write the chart of the scaling ``points`` (see :func:`bench_scaling.sweep`) to ``path``."""
    fig, (ax_tp, ax_p95) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    lines: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for p in points:
        lines.setdefault((p["configuration"], p["replicas"]), []).append(p)
    for (name, replicas), series in sorted(lines.items()):
        series.sort(key=lambda p: p["concurrency"])
        x = [p["concurrency"] for p in series]
        style = {
            "color": COLOURS.get(name, "tab:blue"),
            "linestyle": "-" if replicas == 1 else "--",
            "marker": "o" if replicas == 1 else "s",
            "label": f"{name}" + ("" if replicas == 1 else f", {replicas} replicas"),
        }
        ax_tp.plot(x, [p["throughput_orders_per_s"] for p in series], **style)
        # no order completed inside a window: no latency (a gap, not a zero)
        ax_p95.plot(x, [p["latency_ms"]["p95"] or math.nan for p in series], **style)
    for ax, label in ((ax_tp, "orders completed / s"), (ax_p95, "p95 latency, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("orders in flight")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    if any(p["latency_ms"]["p95"] for p in points):
        ax_p95.set_yscale("log")
    ax_tp.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
