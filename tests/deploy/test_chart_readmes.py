"""Every chart has a README with install, upgrade and uninstall commands and a values
table generated from its values.schema.json (helm/chart_readme.py): the table here must be
exactly what the generator makes of the schema, so it never drifts."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / "helm"
ALL_CHARTS = sorted(p.parent.name for p in HELM.glob("*/Chart.yaml"))
SCHEMA_CHARTS = sorted(p.parent.name for p in HELM.glob("*/values.schema.json"))


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("_chart_readme", HELM / "chart_readme.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()


def test_every_chart_has_a_readme() -> None:
    assert "orders-lib" in ALL_CHARTS and "payment" in SCHEMA_CHARTS
    for chart in ALL_CHARTS:
        assert (HELM / chart / "README.md").is_file(), chart


@pytest.mark.parametrize("chart", SCHEMA_CHARTS)
def test_readme_has_install_upgrade_and_uninstall_commands(chart: str) -> None:
    text = (HELM / chart / "README.md").read_text()
    release = "dev-deps" if chart == "dev-deps" else f"orders-{chart}"
    for heading in ("## Install", "## Upgrade", "## Uninstall", "## Values"):
        assert heading in text, (chart, heading)
    assert f"helm upgrade --install {release} helm/{chart} -n orders" in text
    assert f"helm upgrade {release} helm/{chart} -n orders" in text
    assert f"helm uninstall {release} -n orders" in text
    if chart != "dev-deps":
        assert f"helm dependency build helm/{chart}" in text


@pytest.mark.parametrize("chart", SCHEMA_CHARTS)
def test_readme_values_table_is_the_schema(chart: str) -> None:
    text = (HELM / chart / "README.md").read_text()
    table = text.split(GEN.START, 1)[1].split(GEN.END, 1)[0].strip()
    assert table == GEN.values_table(HELM / chart), (
        f"helm/{chart}/README.md: run python helm/chart_readme.py"
    )
    schema = json.loads((HELM / chart / "values.schema.json").read_text())
    for section in schema["properties"]:
        assert f"| `{section}." in table or f"| `{section}` |" in table, section


def test_the_table_follows_a_schema_change(tmp_path: Path) -> None:
    chart = tmp_path / "payment"
    shutil.copytree(HELM / "payment", chart, ignore=shutil.ignore_patterns("charts"))
    before = GEN.values_table(chart)
    schema = json.loads((chart / "values.schema.json").read_text())
    schema["properties"]["payment"]["properties"]["replicas"]["description"] = "changed"
    (chart / "values.schema.json").write_text(json.dumps(schema))
    after = GEN.values_table(chart)
    assert before != after
    assert "| `payment.replicas` | integer | `1` | changed |" in after


def test_the_check_mode_names_a_stale_readme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    helm = tmp_path / "helm"
    shutil.copytree(HELM / "payment", helm / "payment", ignore=shutil.ignore_patterns("charts"))
    monkeypatch.setattr(GEN, "HELM", helm)
    assert GEN.main(["--check"]) == 0
    readme = helm / "payment" / "README.md"
    readme.write_text(readme.read_text().replace("| `payment.replicas` |", "| `payment.replica` |"))
    assert GEN.main(["--check"]) == 1
    assert "payment/README.md: values table differs" in capsys.readouterr().err
    assert GEN.main([]) == 0 and GEN.main(["--check"]) == 0
