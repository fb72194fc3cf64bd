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
import traceback
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


def exception_without_message(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Keep an exception's type and stack frames, drop its message.

    Exception messages quote data (a driver's error can carry a value, a library's
    can carry a URL with a token), so no log line carries one: the type and where
    it was raised are what an operator acts on.
    """
    info = event.pop("exc_info", None)
    if info is True:
        info = sys.exc_info()
    elif isinstance(info, BaseException):
        info = (type(info), info, info.__traceback__)
    if isinstance(info, tuple) and len(info) == 3 and info[0] is not None:
        event["error_type"] = info[0].__name__
        if info[2] is not None:
            event["stack"] = "".join(traceback.format_tb(info[2]))
    return event


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if key in _SAFE_KEYS:
            continue
        if _SENSITIVE_KEY.search(key):
            event[key] = REDACTED
        elif isinstance(value, str) and _SENSITIVE_VALUE.search(value):
            event[key] = _SENSITIVE_VALUE.sub(REDACTED, value)
    return event


class CurrentStderr:
    """A file object that writes to whatever ``sys.stderr`` is at the time of writing.

    A logger configured once keeps its file object; test runners (and some
    embedding hosts) swap ``sys.stderr`` later, and a log line from a background
    task must never fail on a stream that has since been closed.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stdlib handler bound to the current ``sys.stderr`` at each record."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(service: str, level: str = "INFO") -> None:
    """JSON logs on stderr for ``service``; also routes stdlib logging (Temporal SDK) there."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        exception_without_message,
        redact,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                exception_without_message,  # exc_info is added after the pre-chain
                redact,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
