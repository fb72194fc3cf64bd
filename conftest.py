"""Root conftest: the real-stack fixtures for every test folder, and test-safe logging."""

from collections.abc import Iterator

import pytest
import structlog

from orders_shared.logging import CurrentStderr

pytest_plugins = ["orders_ops.testing"]

# JSON lines on whatever stderr pytest has in place at the time (see CurrentStderr)
structlog.configure(
    processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
    logger_factory=structlog.PrintLoggerFactory(file=CurrentStderr()),  # type: ignore[arg-type]
    cache_logger_on_first_use=False,
)


@pytest.fixture(autouse=True)
def _structlog_config_restored() -> Iterator[None]:
    """A test that runs a command's main() in-process (the CLI sets its own level, ERROR)
    must not change what later tests' ``capture_logs`` can see."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
