"""docs/deployment.md has a checklist for a first real cluster, each check with a command
that shows it, and the commands name what the charts really are."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "deployment.md").read_text()
COMMAND = re.compile(r"`((?:kubectl|helm|vault|orders-bootstrap|curl)\b[^`]*)`")


def _checklist() -> list[str]:
    section = DOC.split("## First real cluster: checklist", 1)[1].split("\n## ", 1)[0]
    return re.split(r"\n(?=\d+\. )", section.split("\n1. ", 1)[1])


def test_every_check_has_a_command() -> None:
    items = _checklist()
    assert len(items) >= 10
    for number, item in enumerate(items, start=1):
        if "see *Reading payloads on kind*" in item:
            continue  # the command is in that section (checked by test_kind_codec.py)
        assert COMMAND.search(item), f"check {number} has no command: {item[:80]}"


def test_checklist_commands_name_real_charts_and_values() -> None:
    text = "\n".join(_checklist())
    for chart in re.findall(r"helm/([a-z-]+)", text):
        assert (ROOT / "helm" / chart / "Chart.yaml").is_file(), chart
    for value in ("bootstrap.kubernetes.issuer", "bootstrap.seedDemoData", "global.vault.caSecret"):
        assert value in text, value
    assert "temporal.connect_failed" in text
