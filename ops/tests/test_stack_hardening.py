"""orders-stack on a stack of its own: private state and logs, no secret printed, every
child with an environment of its own, OpenBao and Temporal keeping their data across
``down``/``up``, and a second stack refused on ports this one holds."""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import hvac
import pytest

from orders_ops.policies import PAYLOAD_KEY
from orders_ops.settings import StackSettings
from orders_ops.stack import Stack, StackError, _port_free, child_env, main
from orders_ops.testing import free_port, isolated_settings

pytestmark = pytest.mark.stack


def _quiet(_line: str) -> None:
    pass


QUIET: dict[str, Callable[[str], None]] = {"echo": _quiet}


def _new_state() -> Path:
    # under /tmp itself: as root, service users must pass through to their folders
    return Path(tempfile.mkdtemp(prefix="orders-stack-test-"))


@pytest.fixture
def own_stack() -> Iterator[Stack]:
    state = _new_state()
    stack = Stack(isolated_settings(state))
    yield stack
    stack.down(**QUIET)
    shutil.rmtree(state, ignore_errors=True)


def _secret_values(s: StackSettings) -> dict[str, str]:
    values = {p.name: p.read_text().strip() for p in s.secrets_dir.iterdir()}
    assert {"vault-root-token", "vault-unseal-key", "postgres-superuser-password"} <= set(values)
    return values


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


# --------------------------------------------------------------------------- item 2


def test_state_and_logs_are_private_and_no_secret_is_logged_or_printed(
    own_stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    s = own_stack.settings
    own_stack.up(timeout=60, bootstrap=False, **QUIET)
    assert _mode(s.state_dir) == (0o711 if os.geteuid() == 0 else 0o700)
    for folder in (s.run_dir, s.secrets_dir, s.state_dir / "vault"):
        assert _mode(folder) == 0o700, folder
    # not listable by others; as root passable, for the codec server's own log folder
    assert _mode(s.log_dir) == (0o711 if os.geteuid() == 0 else 0o700)
    for path in [*s.log_dir.glob("*.log*"), *s.secrets_dir.iterdir(), *s.run_dir.iterdir()]:
        assert _mode(path) == 0o600, path

    secrets = _secret_values(s)
    for log in s.log_dir.iterdir():
        text = log.read_text(errors="replace")
        for name, value in secrets.items():
            assert value not in text, f"{name} is in {log}"

    capsys.readouterr()
    env = {
        "ORDERS_STATE_DIR": str(s.state_dir),
        "ORDERS_VAULT_PORT": str(s.vault_port),
        "ORDERS_VAULT_CLUSTER_PORT": str(s.vault_cluster_port),
        "ORDERS_POSTGRES_PORT": str(s.postgres_port),
        "ORDERS_TEMPORAL_PORT": str(s.temporal_port),
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        main(["status"])
        main(["logs", "-n", "1000"])
    out = capsys.readouterr().out
    assert "==> " in out and "vault" in out
    for name, value in secrets.items():
        assert value not in out, f"{name} printed by status or logs"


def test_logs_an_older_version_left_readable_are_made_private(own_stack: Stack) -> None:
    s = own_stack.settings
    s.log_dir.mkdir(parents=True)
    old = s.log_dir / "worker-validate.log.1"
    old.write_text("an old run\n")
    old.chmod(0o644)
    s.log_dir.chmod(0o755)
    own_stack.prepare_state_dir()
    assert _mode(old) == 0o600
    # not listable by others; as root passable (0711) for the codec server's own log folder
    assert _mode(s.log_dir) == (0o711 if os.geteuid() == 0 else 0o700)


def test_logs_show_the_current_run_only(own_stack: Stack) -> None:
    s = own_stack.settings
    own_stack.vault.start(timeout=60)
    own_stack.vault.stop()
    own_stack.vault.start(timeout=60)
    current = own_stack.vault.log_file.read_text()
    previous = own_stack.vault.log_file.with_suffix(".log.1")
    assert current.count("server started") == 1
    assert previous.read_text().count("server started") == 1
    assert _mode(previous) == 0o600
    assert "(current run)" in own_stack.logs("vault")
    assert s.log_dir == own_stack.vault.log_file.parent


def test_a_logged_secret_is_redacted_by_logs(own_stack: Stack) -> None:
    """The second belt: should a server ever log a secret the stack keeps, ``logs``
    does not repeat it."""
    own_stack.vault.start(timeout=60)
    root = own_stack.settings.root_token()
    with open(own_stack.vault.log_file, "a") as log:
        log.write(f"root token {root}\n")
    shown = own_stack.logs("vault")
    assert root not in shown
    assert "root token [redacted]" in shown


# --------------------------------------------------------------------------- item 3

PLANTED = {
    "VAULT_TOKEN": "planted-root-token-0123456789",
    "BAO_TOKEN": "planted-root-token-0123456789",
    "VAULT_ADDR": "http://planted.invalid:1",
    "ORDERS_ADMIN_DATABASE_URL": "postgresql://postgres:planted-pw@127.0.0.1:1/orders",
    "PGPASSWORD": "planted-pw",
    "AWS_SECRET_ACCESS_KEY": "planted-aws",
}


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode(errors="replace") for k, v in pairs}


def _free_block(size: int) -> int:
    """A base port with ``size`` free ports above it and ``size`` free 1000 above."""
    for _ in range(200):
        base = free_port()
        ports = [base + i for i in range(size)] + [base + 1000 + i for i in range(size)]
        if all(p < 65536 and _port_free(p) for p in ports):
            return base
    raise AssertionError("no free block of ports")


def test_no_child_inherits_the_callers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in PLANTED.items():
        monkeypatch.setenv(key, value)
    state = _new_state()
    settings = isolated_settings(state)
    settings = dataclasses.replace(settings, worker_metrics_port=_free_block(6))
    stack = Stack(settings)
    try:
        stack.up(timeout=90, echo=_quiet)
        stack.workers_up(timeout=120, **QUIET)
        for server in stack.servers:
            if server is stack.prometheus:  # optional: only `up --metrics` starts it
                continue
            pid = server.pid()
            assert pid is not None, f"{server.name} is not running"
            env = _environ(pid)
            for key, value in PLANTED.items():
                assert env.get(key) != value, f"{server.name} inherited {key}"
                assert all(value not in v for v in env.values()), f"{server.name}: {key}"
            assert "VAULT_TOKEN" not in env and "ORDERS_ADMIN_DATABASE_URL" not in env
            root = settings.root_token()
            assert all(root not in v for v in env.values()), f"{server.name} has the root token"
    finally:
        stack.down(**QUIET)
        shutil.rmtree(state, ignore_errors=True)


def test_child_env_is_built_from_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_TOKEN", "planted")
    assert set(child_env(HOME="/x")) == {"PATH", "LANG", "HOME"}


# --------------------------------------------------------------------------- item 5


def _temporal(s: StackSettings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "temporal"), *args, "--address", s.temporal_address],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=child_env(HOME=str(s.state_dir)),
    )


def test_vault_and_temporal_keep_their_data_across_down_and_up(own_stack: Stack) -> None:
    s = own_stack.settings
    own_stack.up(timeout=90, echo=_quiet)
    assert own_stack.vault.initialized_now
    root = s.root_token()
    client = hvac.Client(url=s.vault_addr, token=root)
    # the key the payload codec encrypts history with (made by the bootstrap)
    plaintext = base64.b64encode(b"an order that must stay readable").decode()
    encrypted = client.secrets.transit.encrypt_data(PAYLOAD_KEY, plaintext)
    ciphertext = encrypted["data"]["ciphertext"]
    started = _temporal(
        s, "workflow", "start", "--type", "Persist", "--task-queue", "nobody", "-w", "persist-1"
    )
    assert started.returncode == 0, started.stderr
    client.adapter.close()
    # restarted by the same manager (as a chaos fault does): no new Vault either, so the
    # bootstrap must not treat the live database logins as a lost Vault's orphans
    own_stack.vault.stop()
    own_stack.vault.start(timeout=60)
    assert not own_stack.vault.initialized_now, "a restart counted as a new Vault"

    own_stack.down(echo=_quiet)
    again = Stack(s)  # a new manager, as a new 'orders-stack up' would be
    lines: list[str] = []
    again.up(timeout=90, echo=lines.append)
    assert not again.vault.initialized_now, "Vault was initialised again: its data is gone"
    assert any("bootstrap no changes" in line for line in lines), lines
    assert s.root_token() == root
    client = hvac.Client(url=s.vault_addr, token=root)
    decrypted = client.secrets.transit.decrypt_data(PAYLOAD_KEY, ciphertext)["data"]
    assert decrypted["plaintext"] == plaintext
    client.adapter.close()
    described = _temporal(s, "workflow", "describe", "-w", "persist-1")
    assert described.returncode == 0, described.stderr


def test_reset_deletes_everything(own_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    s = own_stack.settings
    own_stack.up(timeout=90, bootstrap=False, **QUIET)
    for key, value in {
        "ORDERS_STATE_DIR": str(s.state_dir),
        "ORDERS_VAULT_PORT": str(s.vault_port),
        "ORDERS_VAULT_CLUSTER_PORT": str(s.vault_cluster_port),
        "ORDERS_POSTGRES_PORT": str(s.postgres_port),
        "ORDERS_TEMPORAL_PORT": str(s.temporal_port),
        "ORDERS_TEMPORAL_UI_PORT": str(s.temporal_ui_port),
        "ORDERS_TEMPORAL_HTTP_PORT": str(s.temporal_http_port),
        "ORDERS_TEMPORAL_METRICS_PORT": str(s.temporal_metrics_port),
    }.items():
        monkeypatch.setenv(key, value)
    main(["reset"])
    assert not s.state_dir.exists()
    assert all(server.pid() is None for server in own_stack.servers)


# --------------------------------------------------------------------------- item 6


def test_a_second_stack_on_the_same_ports_is_refused_before_it_starts(
    own_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the advice outside make (under make test it names the TEST_ variable instead:
    # ops/tests/test_port_check.py)
    monkeypatch.delenv("ORDERS_PORTS_SET_BY", raising=False)
    own_stack.up(timeout=60, bootstrap=False, **QUIET)
    other_state = _new_state()
    try:
        second = Stack(dataclasses.replace(own_stack.settings, state_dir=other_state))
        with pytest.raises(StackError) as err:
            second.up(timeout=30, bootstrap=False, **QUIET)
        message = str(err.value)
        assert f"the orders stack of {own_stack.settings.state_dir}" in message
        assert "set ORDERS_POSTGRES_PORT to a free port" in message
        assert "set ORDERS_VAULT_PORT to a free port" in message
        assert not (other_state / "run").exists() or not any((other_state / "run").iterdir())
    finally:
        shutil.rmtree(other_state, ignore_errors=True)
