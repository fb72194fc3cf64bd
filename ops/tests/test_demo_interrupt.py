"""Ctrl-C during `orders-demo` (while its orders run in asyncio): the demo's clean-up
runs, and the user sees one line on stderr and exit code 130, not a traceback."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from orders_ops.settings import PORT_VARIABLES
from orders_ops.stack import _port_free

pytestmark = pytest.mark.stack


# Ports below the kernel's ephemeral range (32768+ here), so no outgoing connection of
# another test takes one between the check and the demo's bind, and each checked the way
# the stack checks its own (a bind: a port in TIME-WAIT is not free, though nothing listens).
_LOW, _HIGH = 30000, 32700
_SDK_OFFSET = 1000  # a worker's SDK metrics port is its metrics port + 1000


def _free_ports(count: int, workers: int) -> tuple[list[int], int]:
    """``count`` single ports and a block of ``workers`` metrics ports whose SDK ports
    (+1000) are free too; all distinct, all bindable now."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(_LOW, _HIGH - _SDK_OFFSET - workers)
        block = [base + i for i in range(workers)] + [
            base + _SDK_OFFSET + i for i in range(workers)
        ]
        if not all(_port_free(p) for p in block):
            continue
        singles: list[int] = []
        while len(singles) < count:
            port = rng.randrange(_LOW, _HIGH)
            if port not in block and port not in singles and _port_free(port):
                singles.append(port)
        return singles, base
    raise AssertionError(f"no free block of ports in {_LOW}-{_HIGH}")


def _closed(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _sigint_as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_the_demo_prints_one_line_and_leaves_nothing_running() -> None:
    state = Path(tempfile.mkdtemp(prefix="orders-demo-interrupt-"))
    state.chmod(0o755)  # as root, postgres runs as nobody and must reach its folder
    singles, metrics_base = _free_ports(len(PORT_VARIABLES), 6)
    ports = dict(zip(PORT_VARIABLES, singles, strict=True))
    ports["ORDERS_WORKER_METRICS_PORT"] = metrics_base
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
