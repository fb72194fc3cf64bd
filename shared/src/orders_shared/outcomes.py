"""Activity failures the workflow acts on only when their service wrote them.

A Temporal failure's ``ApplicationFailureInfo.type`` and ``non_retryable`` travel in
the clear: anyone who can answer an activity task (poll its queue on an
unauthenticated Temporal) can fail it with any type, e.g. a non-retryable
``PaymentDeclined``. So every worker's failure converter
(:class:`OutcomeFailureConverter`) also writes the type and ``non_retryable`` into the
failure's *encoded attributes* (the payload that already carries message and stack
trace), which the payload codec encrypts under the service's key, bound to the
workflow, the activity type and the direction (``orders-envelope/3``). On the
workflow's side (:class:`WorkflowSideFailureConverter`, activity contexts only) an
application failure counts only when its encoded attributes decode and name the
same type and ``non_retryable`` as the clear fields; any other becomes
:data:`UNAUTHENTICATED_OUTCOME` (retryable), which the workflow treats as a refused
answer: it runs the step again, never as the business outcome the clear type claims.

What this proves: the failure was written by someone holding the service's payload
key for this workflow and activity (the service, the orchestrator, or a reader's
unwrapped data key; not a keyless poller, and not another worker). A signature only
the service can make (Transit ``sign``) would narrow that to the service itself; it
is not built (docs/payload-keys.md).

This module imports no Vault code: the workflow sandbox imports its constants.
"""

from __future__ import annotations

from typing import Any

import temporalio.api.failure.v1
from temporalio.converter import (
    ActivitySerializationContext,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadConverter,
    SerializationContext,
    WithSerializationContext,
)
from temporalio.exceptions import ApplicationError

UNAUTHENTICATED_OUTCOME = "UnauthenticatedOutcome"
"""Type the workflow side gives an activity failure without proof of its service."""

ATTR_TYPE = "type"
ATTR_NON_RETRYABLE = "non_retryable"


class OutcomeFailureConverter(DefaultFailureConverterWithEncodedAttributes):
    """Message, stack trace, type and ``non_retryable`` in the encoded attributes."""

    def to_failure(
        self,
        exception: BaseException,
        payload_converter: PayloadConverter,
        failure: temporalio.api.failure.v1.Failure,
    ) -> None:
        super().to_failure(exception, payload_converter, failure)
        if not failure.HasField("application_failure_info"):
            return
        attrs = payload_converter.from_payloads([failure.encoded_attributes])[0]
        if not isinstance(attrs, dict):  # pragma: no cover - written just above
            return
        info = failure.application_failure_info
        attrs[ATTR_TYPE] = info.type
        attrs[ATTR_NON_RETRYABLE] = info.non_retryable
        failure.encoded_attributes.CopyFrom(payload_converter.to_payloads([attrs])[0])


class WorkflowSideFailureConverter(OutcomeFailureConverter, WithSerializationContext):
    """In an activity context, an application failure whose clear type or
    ``non_retryable`` is not what its encoded attributes say becomes
    :data:`UNAUTHENTICATED_OUTCOME` (retryable)."""

    def __init__(self) -> None:
        super().__init__()
        self.strict = False

    def with_context(self, context: SerializationContext) -> WorkflowSideFailureConverter:
        view = WorkflowSideFailureConverter()
        view.strict = isinstance(context, ActivitySerializationContext)
        return view

    def from_failure(
        self,
        failure: temporalio.api.failure.v1.Failure,
        payload_converter: PayloadConverter,
    ) -> BaseException:
        if self.strict and failure.HasField("application_failure_info"):
            problem = self._unproven(failure, payload_converter)
            if problem is not None:
                info = failure.application_failure_info
                return ApplicationError(
                    f"an activity failure without proof of its service ({problem}; its "
                    f"clear type {info.type[:80]!r}, non_retryable={info.non_retryable}, "
                    "is not acted on)",
                    type=UNAUTHENTICATED_OUTCOME,
                    non_retryable=False,
                )
        return super().from_failure(failure, payload_converter)

    @staticmethod
    def _unproven(
        failure: temporalio.api.failure.v1.Failure, payload_converter: PayloadConverter
    ) -> str | None:
        if not failure.HasField("encoded_attributes"):
            return "no encoded attributes"
        try:
            attrs: Any = payload_converter.from_payloads([failure.encoded_attributes])[0]
        except Exception as exc:  # a refused or unreadable payload: not proof
            return f"encoded attributes unreadable ({type(exc).__name__})"
        if not isinstance(attrs, dict):
            cause = getattr(attrs, "cause", type(attrs).__name__)
            return f"encoded attributes refused ({cause})"
        info = failure.application_failure_info
        if attrs.get(ATTR_TYPE) != info.type or attrs.get(ATTR_NON_RETRYABLE) is not (
            info.non_retryable
        ):
            return "the encoded type or non_retryable differs from the clear one"
        return None
