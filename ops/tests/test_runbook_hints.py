"""The hints the runbooks print name commands a user of this checkout has (issue 25 item 9):
only OpenBao's `bao` is installed (no `vault`), and a runbook names itself, not
`orders-stack`, for its own next step."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orders_ops import runbook_pki, runbooks, stack
from orders_ops.settings import StackSettings

# a command quoted at the start of a hint: 'bao read ...', '.venv/bin/bao read ...',
# 'orders-runbook revoke <service>'
QUOTED_COMMAND = re.compile(r"'(?:\.venv/bin/)?(vault|bao|temporal|orders(?:-[a-z]+)?) ")
BIN = Path(sys.executable).parent


def quoted_commands(module: Any) -> set[str]:
    tree = ast.parse(Path(module.__file__).read_text())
    texts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)]
    return {m for t in texts if isinstance(t, str) for m in QUOTED_COMMAND.findall(t)}


@pytest.mark.parametrize("module", [runbooks, runbook_pki], ids=lambda m: m.__name__)
def test_every_command_a_runbook_hint_names_is_installed(module: Any) -> None:
    named = quoted_commands(module)
    assert named, "the scan found no hint at all"
    missing = sorted(name for name in named if not (BIN / name).exists())
    assert not missing, f"hints name commands not in {BIN}: {missing}"


def test_the_runbooks_issuer_rotation_names_its_own_finish_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our own logic only: Vault and the rotation itself are faked (tests/test_runbooks.py
    runs the rotation against the real stack)."""
    monkeypatch.setattr(
        runbooks, "identify", lambda _s: SimpleNamespace(adapter=SimpleNamespace(close=list))
    )
    monkeypatch.setattr(stack, "rotate_issuer_key", lambda _s, finish: ["rotated"])
    settings = StackSettings(
        state_dir=tmp_path,
        temporal_port=1,
        temporal_ui_port=2,
        temporal_http_port=3,
        temporal_metrics_port=4,
        vault_port=5,
        postgres_port=6,
    )
    lines = runbooks.rotate_issuer(settings, finish=False, overlap_over=False)
    assert any("'orders-runbook rotate-issuer-key --finish'" in line for line in lines), lines
    assert not any("orders-stack" in line for line in lines), lines
