"""Ctrl-C during `orders-demo` (while its orders run in asyncio): the demo's clean-up
runs, and the user sees one line on stderr and exit code 130, not a traceback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from orders_ops.settings import PORT_VARIABLES
from orders_ops.testing import free_port

pytestmark = pytest.mark.stack


def _free_block(size: int) -> int:
    for _ in range(200):
        base = free_port()
        if base + size < 65536 and all(_closed(base + i) for i in range(size)):
            return base
    raise AssertionError("no free block of ports")


def _closed(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _sigint_as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_the_demo_prints_one_line_and_leaves_nothing_running() -> None:
    state = Path(tempfile.mkdtemp(prefix="orders-demo-interrupt-"))
    state.chmod(0o755)  # as root, postgres runs as nobody and must reach its folder
    ports = {var: free_port() for var in PORT_VARIABLES}
    ports["ORDERS_WORKER_METRICS_PORT"] = _free_block(6)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERS_")}
    env.update({var: str(port) for var, port in ports.items()}, ORDERS_STATE_DIR=str(state))
    env.pop("KEEP", None)
    demo = subprocess.Popen(
        [str(Path(sys.executable).with_name("orders-demo"))],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as a terminal's foreground job: a run started in the background by a
        # non-interactive shell (CI, nohup ... &) inherits SIGINT ignored, and Python
        # then never turns Ctrl-C into KeyboardInterrupt
        preexec_fn=_sigint_as_in_a_terminal,
    )
    try:
        assert demo.stdout is not None
        seen = []
        for line in demo.stdout:  # until the orders run (inside asyncio.run)
            seen.append(line)
            if line.startswith("  submitted "):
                break
        assert seen and seen[-1].startswith("  submitted "), "".join(seen)
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 130, (out, err)
    assert "Traceback" not in err and "CancelledError" not in err, err
    assert err.splitlines() == ["orders-demo: interrupted (Ctrl-C)"], err
    assert "stopping what the demo started" in out, out
    run_dir = state / "run"
    left = [p.name for p in run_dir.iterdir()] if run_dir.is_dir() else []
    assert left == [], f"pid files left: {left}"
    listening = [var for var, port in ports.items() if not _closed(port)]
    assert listening == [], f"still listening: {listening}"
    shutil.rmtree(state, ignore_errors=True)
