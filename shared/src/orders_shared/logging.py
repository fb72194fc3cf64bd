"""Structured JSON logs for every worker, with secrets and personal data redacted.

One JSON object per line on stderr. Every line carries the service; activity
code adds workflow id, activity and database role through structlog's
contextvars; lines the Temporal SDK logs (workflow code runs on its own
threads) get the service from :func:`add_service` and their workflow details
as fields, never in the message text. A redaction step replaces, at any depth
of dicts and lists, the value of any key that names a secret or a
sealed/personal field, and token-like text and URL credentials under any key.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
import temporalio.activity
import temporalio.workflow

REDACTED = "[redacted]"
_SENSITIVE_KEY = re.compile(
    r"pass(word)?|secret|token|jwt|authorization|credential|private|"
    r"email|address|payment_token|card|customer_name|payload",
    re.IGNORECASE,
)
# values that look like secrets under any key: Vault/OpenBao tokens (service s./hvs.,
# batch b./hvb., recovery r./hvr.), this stack's dev root token, JWTs, Transit ciphertext
_SENSITIVE_VALUE = re.compile(
    r"(?<![A-Za-z0-9])(?:hvs|hvb|hvr|s|b|r)\.[A-Za-z0-9_-]{20,}"
    r"|dev-root[A-Za-z0-9_-]*"
    r"|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}(?:\.[A-Za-z0-9_-]*)?"
    r"|vault:v\d+:[A-Za-z0-9+/=]*"
)
# user:password@ in a URL, and secret-named query parameters
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s@]+@")
_URL_SECRET_PARAM = re.compile(
    r"(?i)([?&][^=&\s#]*(?:token|password|secret|sig|key|auth)[^=&\s#]*=)[^&\s#]+"
)
# keys that contain a sensitive word but only describe, never hold, a secret
_SAFE_KEYS = frozenset({"token_seconds_left", "token_ttl", "token_file", "lease_ttl"})
_MAX_DEPTH = 8

_service: str | None = None


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


def redact_text(text: str) -> str:
    """``text`` with token-like values, URL userinfo and secret query parameters replaced."""
    text = _URL_USERINFO.sub(rf"\1{REDACTED}@", text)
    text = _URL_SECRET_PARAM.sub(rf"\1{REDACTED}", text)
    return _SENSITIVE_VALUE.sub(REDACTED, text)


def _clean(key: str | None, value: Any, depth: int) -> Any:
    if key is not None and key not in _SAFE_KEYS and _SENSITIVE_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"  # raw bytes are payloads or keys more often than not
    if depth >= _MAX_DEPTH and isinstance(value, Mapping | list | tuple | set | frozenset):
        return "[nested too deep]"
    if isinstance(value, Mapping):
        return {k: _clean(str(k), v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(None, v, depth + 1) for v in value]
    return value


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace secrets and personal values, at any depth of dicts and lists: every value
    under a sensitive key, and token-like text or URL credentials under any key."""
    for key, value in list(event.items()):
        event[key] = _clean(key, value, 0)
    return event


def add_service(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Every line names its service, also lines logged where the context variables are
    not (the SDK runs workflow code on threads of its own)."""
    if _service is not None:
        event.setdefault("service", _service)
    return event


def lift_temporal_extra(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The Temporal SDK's loggers put workflow or activity details in a dict on the
    record (``temporal_workflow``/``temporal_activity``); make them fields of the line."""
    for name in ("temporal_workflow", "temporal_activity"):
        details = event.pop(name, None)
        if isinstance(details, Mapping):
            for key, value in details.items():
                event.setdefault(str(key), value)
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
    """JSON logs on stderr for ``service``; also routes stdlib logging (Temporal SDK) there.

    The SDK's workflow and activity loggers would append their details to the
    message text as a Python dict; here they stay out of the message and become
    fields (``workflow_id``, ``run_id``...), like every other structured value."""
    global _service
    _service = service
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    temporalio.workflow.logger.workflow_info_on_message = False
    temporalio.workflow.logger.workflow_info_on_extra = True
    temporalio.activity.logger.activity_info_on_message = False
    temporalio.activity.logger.activity_info_on_extra = True
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_service,
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
            foreign_pre_chain=[
                structlog.stdlib.ExtraAdder(),  # extra={...} of a stdlib call: fields
                lift_temporal_extra,
                *shared,
            ],
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
