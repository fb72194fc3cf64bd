"""orders_ops.apt: a failed install (no or stale package lists on a fresh machine) is
retried once after ``apt-get update``; a working one runs once. A stand-in apt-get on
PATH records its calls (the real one would change this machine)."""

from __future__ import annotations

import os
from pathlib import Path

from orders_ops import apt

FAKE = """#!/bin/sh
echo "$*" >> {log}
case "$*" in
  *update*) touch {lists}; exit 0 ;;
  *install*) [ -e {lists} ] && exit 0; echo "E: Unable to locate package nginx" >&2; exit 100 ;;
esac
"""


def _fake_apt(tmp_path: Path, *, lists: bool) -> tuple[dict[str, str], Path]:
    log, marker = tmp_path / "calls", tmp_path / "lists"
    if lists:
        marker.touch()
    script = tmp_path / "apt-get"
    script.write_text(FAKE.format(log=log, lists=marker))
    script.chmod(0o755)
    return {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}, log


def test_without_package_lists_it_updates_once_and_installs(tmp_path: Path) -> None:
    env, log = _fake_apt(tmp_path, lists=False)
    result = apt.install(["nginx"], env)
    assert result.returncode == 0
    calls = log.read_text().splitlines()
    assert [c.split()[-1] for c in calls] == ["nginx", "update", "nginx"]
    assert all("DPkg::Lock::Timeout=600" in c for c in calls)


def test_with_package_lists_it_installs_once(tmp_path: Path) -> None:
    env, log = _fake_apt(tmp_path, lists=True)
    assert apt.install(["prometheus"], env).returncode == 0
    assert len(log.read_text().splitlines()) == 1


def test_a_failure_names_what_apt_said(tmp_path: Path) -> None:
    env, _ = _fake_apt(tmp_path, lists=False)
    (tmp_path / "apt-get").write_text("#!/bin/sh\necho 'E: dpkg was interrupted' >&2\nexit 100\n")
    result = apt.install(["nginx"], env)
    assert result.returncode == 100
    assert apt.failure_tail(result) == "E: dpkg was interrupted"
