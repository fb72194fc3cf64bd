"""pytest plugin: the real local stack, started once per test session.

If every server of the stack under ``ORDERS_STATE_DIR`` already runs (for
example after ``make up``), the tests use it and leave it running. Otherwise
the fixture starts it and stops exactly what it started at the end.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from orders_ops.settings import SettingsError, StackSettings
from orders_ops.stack import Stack


def pytest_collection_finish(session: pytest.Session) -> None:
    """Check the stack's ports before the first test: a port some other process holds
    stops the whole run here, in seconds, with the variable to set (otherwise every test
    needing the stack would error, one by one, with the same message)."""
    uses = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    if "stack" not in uses and "workers" not in uses:
        return
    try:
        stack = Stack(StackSettings.from_env())
    except SettingsError as exc:
        pytest.exit(f"the test stack's settings: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
    servers = [*stack.base_servers, *stack.app_servers]
    if "workers" in uses:
        servers += stack.workers
    busy = [line for s in servers if s.pid() is None for line in s.busy_ports()]
    if busy:
        pytest.exit(
            "\n  ".join(["the test stack cannot start; ports already in use:", *busy]),
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


@pytest.fixture(scope="session")
def stack_settings() -> StackSettings:
    return StackSettings.from_env()


@pytest.fixture(scope="session")
def stack(stack_settings: StackSettings) -> Iterator[Stack]:
    """The running, bootstrapped local stack."""
    stack = Stack(stack_settings)
    already = {s.name for s in stack.servers if s.pid() is not None}
    stack.up(timeout=90, echo=lambda _line: None)
    yield stack
    for server in reversed(stack.servers):
        if server.name not in already:
            server.stop()


@pytest.fixture(scope="module")
def workers(stack: Stack) -> Iterator[Stack]:
    """The stack with its six worker processes (stopped afterwards if started here)."""
    already = {w.name for w in stack.workers if w.pid() is not None}
    stack.workers_up(timeout=90, echo=lambda _line: None)
    yield stack
    for worker in stack.workers:
        if worker.name not in already:
            worker.stop()


def free_port() -> int:
    """A loopback port free right now (for servers a test runs of its own)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def isolated_settings(state_dir: Path) -> StackSettings:
    """Settings for a second stack beside the main one: own folder, free ports."""
    return StackSettings(
        state_dir=state_dir,
        temporal_port=free_port(),
        temporal_ui_port=free_port(),
        temporal_http_port=free_port(),
        temporal_metrics_port=free_port(),
        vault_port=free_port(),
        postgres_port=free_port(),
        vault_cluster_port=free_port(),
        codec_port=free_port(),
        provider_port=free_port(),
    )


# tests/containers: the image build in the background, those tests last (see the module)
from orders_ops.testing_images import (  # noqa: E402
    image_engine,  # noqa: F401
    pytest_collection_modifyitems,  # noqa: F401
    pytest_sessionfinish,  # noqa: F401
)
