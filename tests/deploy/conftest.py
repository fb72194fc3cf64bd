"""Fixtures for the delivery tests: charts rendered offline with the Helm SDK, scanned once.

Nothing here needs a cluster, Docker or the local stack. The charts are copied to a
temporary folder and their ``file://../orders-lib`` dependency is packaged there
(``helm dependency build`` from the committed Chart.lock, offline), so the working
tree is never touched.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from orders_shared.catalog import SERVICES

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / "helm"
BIN = Path(sys.executable).parent
NAMESPACE = "orders"
WORKERS = tuple(SERVICES)  # the six worker charts are named after the catalog
CHARTS = (*WORKERS, "codec-server", "bootstrap", "dev-deps")
LIBRARY_USERS = (*WORKERS, "codec-server", "bootstrap")
PRODUCTION_VALUES = HELM / "values-production.example.yaml"
MODES = ("default", "production")

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Rendered:
    chart: str
    mode: str
    manifests: list[Manifest]
    text: str

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str) -> Manifest:
        found = self.of_kind(kind)
        assert len(found) == 1, f"{self.chart}/{self.mode}: {len(found)} {kind} objects"
        return found[0]


def modes(chart: str) -> tuple[str, ...]:
    """dev-deps is development-only: the production example has nothing for it."""
    return ("default",) if chart == "dev-deps" else MODES


def production_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(PRODUCTION_VALUES.read_text())
    return values


def values_for(mode: str) -> dict[str, Any] | None:
    return production_values() if mode == "production" else None


@pytest.fixture(scope="session")
def chart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of helm/ as a fresh clone has it (no charts/ folders), with every chart's
    library dependency built from its committed Chart.lock, exactly as the documented
    `helm dependency build helm/<chart>` does: a missing or stale Chart.lock fails here."""
    copy = tmp_path_factory.mktemp("helm") / "helm"
    shutil.copytree(HELM, copy, ignore=shutil.ignore_patterns("charts"))
    for chart in LIBRARY_USERS:
        helm.dependency_build(copy / chart)
    return copy


def render(chart_dir: Path, chart: str, values: dict[str, Any] | None) -> dict[str, str]:
    with helm.Chart.load(chart_dir / chart) as loaded:
        return loaded.render(values, name=chart, namespace=NAMESPACE, is_install=True)


@pytest.fixture(scope="session")
def rendered(chart_dir: Path) -> dict[tuple[str, str], Rendered]:
    out: dict[tuple[str, str], Rendered] = {}
    for chart in CHARTS:
        for mode in modes(chart):
            files = render(chart_dir, chart, values_for(mode))
            text = "\n---\n".join(
                body for name, body in sorted(files.items()) if not name.endswith("NOTES.txt")
            )
            docs = [d for d in yaml.safe_load_all(text) if d]
            out[(chart, mode)] = Rendered(chart, mode, docs, text)
    return out


@dataclass(frozen=True)
class CheckovReport:
    passed: int
    failed: list[dict[str, Any]]
    skipped: list[dict[str, Any]]


def run_checkov(framework: str, targets: list[str]) -> CheckovReport:
    args = [str(BIN / "checkov"), "--skip-download", "--framework", framework, "-o", "json"]
    for target in targets:
        args += ["-f", target]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    reports = json.loads(proc.stdout)
    if isinstance(reports, dict):
        reports = [reports]
    passed = 0
    failed: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for report in reports:
        results = report.get("results", {})
        passed += len(results.get("passed_checks", []))
        failed += results.get("failed_checks", [])
        skipped += results.get("skipped_checks", [])
    return CheckovReport(passed, failed, skipped)


@pytest.fixture(scope="session")
def manifests_dir(
    rendered: dict[tuple[str, str], Rendered], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("manifests")
    for (chart, mode), r in rendered.items():
        (out / f"{chart}.{mode}.yaml").write_text(r.text)
    yield out


@pytest.fixture(scope="session")
def checkov_kubernetes(manifests_dir: Path) -> CheckovReport:
    """checkov over every rendered manifest (both value sets), in one run."""
    return run_checkov("kubernetes", sorted(str(p) for p in manifests_dir.glob("*.yaml")))


DOCKERFILES = sorted(
    [ROOT / "Dockerfile", *(ROOT / "services").glob("*/Dockerfile")],
)


@pytest.fixture(scope="session")
def checkov_dockerfile() -> CheckovReport:
    return run_checkov("dockerfile", [str(p) for p in DOCKERFILES])


def tilt_harness() -> Any:
    """test_tiltfile.py's harness (the Tiltfile in starlark-go, Tilt's built-ins recorded),
    for other test files; loaded by path, as test modules are not importable by name."""
    name = "_orders_tilt_harness"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("test_tiltfile.py")
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def tilt_cluster() -> Any:
    """The Tiltfile's calls in cluster mode (a TiltRecorder)."""
    return tilt_harness().run_tiltfile({})
