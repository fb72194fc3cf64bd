"""A Temporal worker interceptor: log context and outcome metrics for every activity.

Each activity execution binds ``workflow_id``, ``activity`` and ``attempt`` to
the log context (structlog contextvars), so every line it logs carries them,
and counts its outcome: ``completed``, ``refused`` (a business refusal, by its
type) or ``error`` (anything else: an infrastructure failure that Temporal
retries). A refusal and an outage are never counted as the same thing.
"""

from __future__ import annotations

from typing import Any

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from orders_shared.metrics import ACTIVITY_OUTCOMES

log = structlog.get_logger(__name__)


class _ActivityInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        with structlog.contextvars.bound_contextvars(
            workflow_id=info.workflow_id, activity=info.activity_type, attempt=info.attempt
        ):
            try:
                result = await super().execute_activity(input)
            except ApplicationError as err:
                if err.non_retryable:
                    ACTIVITY_OUTCOMES.labels(info.activity_type, "refused", err.type or "").inc()
                    log.info("activity.refused", error_type=err.type)
                else:
                    ACTIVITY_OUTCOMES.labels(info.activity_type, "error", err.type or "").inc()
                    log.warning("activity.failed", error_type=err.type, retryable=True)
                raise
            except BaseException as exc:
                ACTIVITY_OUTCOMES.labels(info.activity_type, "error", type(exc).__name__).inc()
                # the exception's text may quote data; its type is enough to act on
                log.warning("activity.failed", error_type=type(exc).__name__, retryable=True)
                raise
            ACTIVITY_OUTCOMES.labels(info.activity_type, "completed", "").inc()
            log.info("activity.completed")
            return result


class ObservabilityInterceptor(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityInbound(next)
