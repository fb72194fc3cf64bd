"""orders-stack on a stack of its own (other ports, other state folder): up, status, env,
busy ports, down. The servers are real; bootstrap is left out (tested elsewhere)."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orders_ops.settings import StackSettings
from orders_ops.stack import Stack, StackError, _pid_alive, _port_free, main
from orders_ops.testing import isolated_settings

pytestmark = pytest.mark.stack


@pytest.fixture
def own_stack() -> Iterator[Stack]:
    # under /tmp itself: as root, postgres runs as nobody and must reach its folder
    # (pytest's own tmp_path sits in a 0700 folder)
    state = Path(tempfile.mkdtemp(prefix="orders-stack-test-"))
    state.chmod(0o755)
    stack = Stack(isolated_settings(state))
    yield stack
    stack.down(echo=lambda _line: None)
    shutil.rmtree(state, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs postgres as nobody")
def test_a_state_folder_nobody_can_reach_is_refused_with_the_fix(tmp_path: Path) -> None:
    stack = Stack(isolated_settings(tmp_path / "state"))  # pytest's tmp_path parents are 0700
    with pytest.raises(StackError, match=r"cannot reach .* is not searchable by other users"):
        stack.postgres.start(timeout=10)
    assert stack.postgres.pid() is None


def test_down_into_a_closed_pipe_still_stops_everything(
    own_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`orders-stack down | head`: the reader goes away after one line, and down must
    still stop every server (it used to stop at the first line it could not write)."""
    own_stack.up(timeout=60, bootstrap=False, echo=lambda _line: None)
    servers = [own_stack.postgres, own_stack.vault, own_stack.temporal, own_stack.provider]
    pids = [s.pid() for s in servers]
    assert all(pids)
    monkeypatch.setattr(StackSettings, "from_env", classmethod(lambda cls: own_stack.settings))
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` that has already exited
    with os.fdopen(write_end, "w") as closed:
        monkeypatch.setattr(sys, "stdout", closed)
        try:
            main(["down"])
        except SystemExit as exc:
            assert exc.code in (0, None)
        monkeypatch.undo()
    for server, pid in zip(servers, pids, strict=True):
        assert pid is not None and not _pid_alive(pid, ""), f"{server.name} still runs"


def test_up_twice_status_env_and_down_leave_nothing(own_stack: Stack) -> None:
    own_stack.up(timeout=60, bootstrap=False, echo=lambda _line: None)
    servers = [own_stack.postgres, own_stack.vault, own_stack.temporal]
    pids = [s.pid() for s in servers]
    assert all(pids)
    own_stack.up(timeout=60, bootstrap=False, echo=lambda _line: None)  # harmless
    assert [s.pid() for s in servers] == pids
    # the root token is in a root-only file, never on a command line anyone can read
    vault_cmdline = Path(f"/proc/{pids[1]}/cmdline").read_bytes()
    assert own_stack.settings.root_token().encode() not in vault_cmdline
    assert own_stack.settings.root_token_file.stat().st_mode & 0o777 == 0o600

    rows = {r["server"]: r for r in own_stack.status()}
    for server, pid in zip(servers, pids, strict=True):
        assert (rows[server.name]["pid"], rows[server.name]["health"]) == (pid, "up")
    assert rows["identity"]["health"] == "down"

    env = own_stack.env()
    assert env["VAULT_ADDR"] == f"http://127.0.0.1:{own_stack.settings.vault_port}"
    assert env["TEMPORAL_ADDRESS"] == f"127.0.0.1:{own_stack.settings.temporal_port}"
    assert env["VAULT_TOKEN"] == own_stack.settings.root_token()
    assert env["ORDERS_ADMIN_DATABASE_URL"].endswith(
        f"@127.0.0.1:{own_stack.settings.postgres_port}/orders"
    )

    own_stack.down(echo=lambda _line: None)
    for server, pid in zip(servers, pids, strict=True):
        assert pid is not None and not _pid_alive(pid, ""), f"{server.name} still runs"
        assert server.pid() is None
        assert all(_port_free(p) for p in server.ports.values()), f"{server.name} port held"


def test_a_busy_port_is_refused_by_number_and_variable(own_stack: Stack) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", own_stack.settings.vault_port))
        squatter.listen()
        with pytest.raises(StackError) as err:
            own_stack.vault.start(timeout=10)
    message = str(err.value)
    assert f"api port {own_stack.settings.vault_port}" in message
    assert "ORDERS_VAULT_" in message
    assert own_stack.vault.pid() is None


def test_bad_port_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ORDERS_VAULT_PORT", "eighty")
    with pytest.raises(SystemExit) as exit_info:
        main(["status"])
    assert exit_info.value.code == 1
    assert "ORDERS_VAULT_PORT='eighty' is not a port number" in capsys.readouterr().err
