"""``make charts``: package every chart as a ``.tgz``, ready to push to an OCI registry
(``helm push dist/charts/validate-0.1.0.tgz oci://<registry>/charts``).

Each chart's ``file://../orders-lib`` dependency is built from its committed
``Chart.lock`` first (``helm dependency build``), exactly as a team does before
``helm install`` from a clone. Uses Helm's own SDK (the ``helm-python-sdk`` dev
dependency), so no helm binary is needed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import helm_python as helm

ROOT = Path(__file__).resolve().parents[2]


def charts(helm_dir: Path) -> list[Path]:
    """Every chart folder under ``helm_dir``, the library chart first."""
    found = sorted(p.parent for p in helm_dir.glob("*/Chart.yaml"))
    return sorted(found, key=lambda p: p.name != "orders-lib")


def package_all(helm_dir: Path, destination: Path) -> list[Path]:
    destination.mkdir(parents=True, exist_ok=True)
    packaged = []
    for chart in charts(helm_dir):
        if (chart / "Chart.lock").exists():
            helm.dependency_build(chart)
        packaged.append(Path(helm.package(chart, destination=destination)))
        print(f"  {chart.name}: {packaged[-1].name}", flush=True)
    return packaged


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="package_charts", description=__doc__)
    parser.add_argument("--helm-dir", type=Path, default=ROOT / "helm")
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "charts")
    args = parser.parse_args(argv)
    packaged = package_all(args.helm_dir, args.out)
    print(f"make charts: {len(packaged)} charts packaged into {args.out}")


if __name__ == "__main__":
    main()
