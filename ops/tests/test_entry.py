"""The console entries that skip interpreter teardown (orders_ops.entry) keep what a
command says and its exit status: the output is flushed into a pipe, a SystemExit's
message and code are Python's own, and an ordinary return is 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _run(body: str) -> subprocess.CompletedProcess[str]:
    code = f"from orders_ops.entry import run\ndef main():\n{body}\nrun(main)\n"
    # block-buffered as a command's output into a pipe is (PYTHONUNBUFFERED would hide a
    # missing flush)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_every_line_written_into_a_pipe_arrives() -> None:
    done = _run("    for i in range(20000): print(f'line {i}')")
    assert done.returncode == 0
    assert done.stdout.splitlines()[-1] == "line 19999"
    assert len(done.stdout.splitlines()) == 20000


@pytest.mark.parametrize(
    ("body", "code", "stderr"),
    [
        ("    raise SystemExit('orders-x: error: the fix')", 1, "orders-x: error: the fix\n"),
        ("    raise SystemExit(2)", 2, ""),
        ("    raise SystemExit(None)", 0, ""),
        ("    print('ok')", 0, ""),
    ],
)
def test_the_exit_status_and_message_are_pythons_own(body: str, code: int, stderr: str) -> None:
    done = _run(body)
    assert (done.returncode, done.stderr) == (code, stderr)


@pytest.mark.parametrize("command", ["orders-bootstrap", "orders-stack"])
def test_the_installed_commands_go_through_it(command: str) -> None:
    script = (BIN / command).read_text()
    assert "from orders_ops.entry import" in script
    done = subprocess.run(
        [str(BIN / command), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
