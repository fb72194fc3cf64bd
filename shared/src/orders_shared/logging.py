"""Structured JSON logs for every worker, with secrets and personal data redacted.

One JSON object per line on stderr. Every line carries the service; activity
code adds workflow id, activity and database role through structlog's
contextvars. A redaction step replaces the value of any key that names a
secret or a sealed/personal field, whatever the caller passed.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"
_SENSITIVE_KEY = re.compile(
    r"pass(word)?|secret|token|jwt|authorization|credential|private|"
    r"email|address|payment_token|card|customer_name|payload",
    re.IGNORECASE,
)
# values that look like secrets even under an innocent key
_SENSITIVE_VALUE = re.compile(
    r"(hvs\.|hvb\.|s\.)[A-Za-z0-9]{20,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}|vault:v\d+:"
)
# keys that contain a sensitive word but only describe, never hold, a secret
_SAFE_KEYS = frozenset({"token_seconds_left", "token_ttl", "token_file", "lease_ttl"})


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if key in _SAFE_KEYS:
            continue
        if _SENSITIVE_KEY.search(key):
            event[key] = REDACTED
        elif isinstance(value, str) and _SENSITIVE_VALUE.search(value):
            event[key] = _SENSITIVE_VALUE.sub(REDACTED, value)
    return event


def configure_logging(service: str, level: str = "INFO") -> None:
    """JSON logs on stderr for ``service``; also routes stdlib logging (Temporal SDK) there."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
