"""pytest plugin: the real local stack, started once per test session.

If every server of the stack under ``ORDERS_STATE_DIR`` already runs (for
example after ``make up``), the tests use it and leave it running. Otherwise
the fixture starts it and stops exactly what it started at the end.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orders_ops.settings import StackSettings
from orders_ops.stack import Stack


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
