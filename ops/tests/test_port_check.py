"""The stack's port check: a port some other process listens on stops a test run before
any server starts, naming the variable that moves it; a port held only by a closed
connection (TIME-WAIT) is free."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from orders_ops.settings import PORT_VARIABLES
from orders_ops.stack import Server
from orders_ops.testing import free_port, isolated_settings

PYTEST = [sys.executable, "-m", "pytest", "-p", "orders_ops.testing", "-p", "no:cacheprovider"]
NEEDS_THE_STACK = """
from pathlib import Path


def test_one(stack):
    Path({marker!r}).write_text("ran")


def test_two(stack):
    Path({marker!r}).write_text("ran")
"""


def test_a_taken_port_stops_the_run_before_any_server_starts() -> None:
    state = Path(tempfile.mkdtemp(prefix="orders-port-check-"))
    tests = state / "suite"
    tests.mkdir()
    marker = state / "a-test-ran"
    (tests / "test_needs_stack.py").write_text(NEEDS_THE_STACK.format(marker=str(marker)))
    ports = {var: free_port() for var in PORT_VARIABLES}
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERS_")}
    env.update({var: str(port) for var, port in ports.items()})
    env.update(ORDERS_STATE_DIR=str(state / "stack"), ORDERS_PORTS_SET_BY="make")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["ORDERS_VAULT_PORT"]))
        squatter.listen()
        run = subprocess.run(
            [*PYTEST, "--rootdir", str(tests), str(tests)],
            cwd=tests,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    out = run.stdout + run.stderr
    assert run.returncode == 4, out  # pytest's usage error: stopped, not 2 errors
    assert f"api port {ports['ORDERS_VAULT_PORT']}" in out, out
    assert "make test TEST_ORDERS_VAULT_PORT=<a free port>" in out, out
    assert out.count("is already in use by") == 1, out
    assert not marker.exists(), "a test ran although the stack could not start"
    run_dir = state / "stack" / "run"
    assert not run_dir.exists() or not any(run_dir.iterdir()), list(run_dir.iterdir())
    for var, port in ports.items():  # nothing listens on the stack's other ports
        if var != "ORDERS_VAULT_PORT":
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", port)) != 0, f"{var} {port} listens"


def _time_wait_port(*, client_side: bool) -> int:
    """A port nothing listens on, held by one connection in TIME-WAIT: the side that
    closes first keeps the TIME-WAIT (the server's, or a client's own local port)."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        first, second = (client, accepted) if client_side else (accepted, client)
        port: int = (client.getsockname() if client_side else listener.getsockname())[1]
        first.close()
        second.recv(1)  # the FIN arrived
        second.close()
    states = subprocess.run(["ss", "-Htan", f"sport = :{port}"], capture_output=True, text=True)
    assert "TIME-WAIT" in states.stdout and "LISTEN" not in states.stdout, states.stdout
    return port


def _server_on(port: int) -> Server:
    return Server(
        name="probe",
        settings=isolated_settings(Path(tempfile.gettempdir()) / "orders-probe"),
        ports={"api": port},
        port_vars={"api": "ORDERS_PROBE_PORT"},
    )


def test_a_time_wait_is_not_called_in_use_while_a_listener_is() -> None:
    server_side = _time_wait_port(client_side=False)
    assert _server_on(server_side).busy_ports() == []  # the server closed first: free
    client_side = _time_wait_port(client_side=True)
    (line,) = _server_on(client_side).busy_ports()  # a bind is refused for a minute
    assert "TIME-WAIT (no program listens on it)" in line and "in use by" not in line, line
    assert "ORDERS_PROBE_PORT" in line, line
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", free_port()))
        squatter.listen()
        (line,) = _server_on(squatter.getsockname()[1]).busy_ports()
    assert "is already in use by" in line and "TIME-WAIT" not in line, line
