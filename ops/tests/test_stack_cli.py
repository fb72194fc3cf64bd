"""orders-stack and the Makefile, as a newcomer meets them: the state folder whatever
the current directory, ``env`` when the stack is down, help texts, a closed pipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orders_ops import osusers
from orders_ops.settings import PORT_VARIABLES, StackSettings, repo_root
from orders_ops.stack import main
from orders_ops.testing import free_port

REPO = Path(__file__).resolve().parents[2]


def test_the_state_folder_is_the_repositorys_whatever_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORDERS_STATE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert repo_root() == REPO
    assert StackSettings.from_env().state_dir == REPO / ".local"
    monkeypatch.chdir(REPO / "ops" / "src")
    assert StackSettings.from_env().state_dir == REPO / ".local"
    monkeypatch.setenv("ORDERS_STATE_DIR", str(tmp_path / "elsewhere"))
    assert StackSettings.from_env().state_dir == tmp_path / "elsewhere"


def test_env_with_the_stack_down_says_so_and_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ORDERS_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("ORDERS_VAULT_PORT", str(free_port()))
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "vault-root-token").write_text("s.stale-token-of-a-stopped-vault\n")
    with pytest.raises(SystemExit) as info:
        main(["env"])
    assert info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing a shell would eval
    assert "is down" in captured.err and "make up" in captured.err
    assert "stale-token" not in captured.err


def test_make_help_prints_the_eval_line_as_typed() -> None:
    out = subprocess.run(
        ["make", "-s", "--no-print-directory", "help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert 'eval "$(make -s env)"' in out
    assert "$$" not in out


def test_make_help_has_colour_on_a_terminal_only() -> None:
    """Into a pipe (`make help | less`, a CI log) no escape codes; on a terminal, colour."""
    argv = ["make", "-s", "--no-print-directory", "help"]
    piped = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    assert "up " in piped.stdout and "\x1b" not in piped.stdout
    leader, follower = os.openpty()
    try:
        done = subprocess.run(argv, cwd=REPO, stdout=follower, timeout=60, check=True)
        assert done.returncode == 0
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed, all is read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    assert b"\x1b[36mhelp" in b"".join(chunks)


def _make_dry_run(*args: str) -> str:
    """What `make -n <args>` would run: the recipe lines, nothing executed."""
    return subprocess.run(
        ["make", "-n", "--no-print-directory", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def test_make_journey_leaves_the_tracked_docs_alone_docs_journey_writes_them() -> None:
    """`make journey` writes to artifacts/ only; regenerating docs/ is its own target
    (orders-journey writes docs/journey.md and docs/images only with --docs)."""
    journey = [line for line in _make_dry_run("journey").splitlines() if "orders-journey" in line]
    assert journey and all("--docs" not in line for line in journey), journey
    docs = [line for line in _make_dry_run("docs-journey").splitlines() if "orders-journey" in line]
    assert docs and all("--docs" in line for line in docs), docs


def test_make_up_workers_starts_the_six_workers_too() -> None:
    plain = [line for line in _make_dry_run("up").splitlines() if "orders-stack up" in line]
    assert plain and all("--workers" not in line for line in plain), plain
    workers = [
        line for line in _make_dry_run("up", "WORKERS=1").splitlines() if "orders-stack up" in line
    ]
    assert workers and all("--workers" in line for line in workers), workers


def test_help_lists_every_port_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name, default in PORT_VARIABLES.items():
        assert name in out and str(default) in out, name
    assert "ORDERS_STATE_DIR" in out


def test_status_into_a_closed_pipe_is_no_traceback(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ORDERS_STATE_DIR": str(tmp_path),
        **{name: str(free_port()) for name in PORT_VARIABLES},
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "orders_ops.stack", "status"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head` that has read what it wanted
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_status_says_how_workers_are_isolated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ORDERS_STATE_DIR", str(tmp_path))
    for name in PORT_VARIABLES:
        monkeypatch.setenv(name, str(free_port()))
    main(["status"])
    out = capsys.readouterr().out
    assert f"isolation: {osusers.isolation_note()}" in out
    if os.geteuid() != 0:
        assert "by convention only" in out
