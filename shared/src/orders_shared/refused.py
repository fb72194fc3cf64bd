"""An activity result the orchestrator could not accept, as a value the workflow can test.

Anyone who can reach Temporal can answer an activity task (poll the queue, respond
completed). When what comes back is not a payload of the service that owns the
activity (another key, a legacy ``/1`` envelope, a plain or corrupt payload, a
payload that is not the activity's result type, or no result at all), raising while
the SDK decodes the workflow's activation would fail the *workflow task*: the SDK
retries that task forever, the workflow never runs again and its compensation never
starts. So on the workflow side (the orchestrator's data converter,
``data_converter(..., workflow_side=True)``):

* the payload codec turns a refused activity payload into a marker payload
  (encoding :data:`REFUSED_ENCODING`, data: the refusal's cause and message,
  neither of which ever holds plaintext or key material), and
* :class:`WorkflowSidePayloadConverter` turns that marker, or an activity payload
  that does not convert to the requested type, into a :class:`RefusedResult`;

and the workflow treats a :class:`RefusedResult` (or ``None`` where a result was
due) as an infrastructure failure of that step: it runs the step again, bounded,
then compensates (``orders_orchestrator.workflows``). Workflow-context payloads
(the workflow's own input) and every activity worker keep raising as before.

This module imports no Vault code: the workflow sandbox imports it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    ActivitySerializationContext,
    CompositePayloadConverter,
    DefaultPayloadConverter,
    EncodingPayloadConverter,
    SerializationContext,
)

REFUSED_ENCODING = "binary/orders-refused"
"""Encoding of the marker payload the workflow-side codec puts in place of a refused one."""

NO_RESULT = "no-result"
"""Cause of a completion that carried no result at all."""

UNCONVERTIBLE = "unconvertible"
"""Cause of a payload that decoded but is not the activity's result type."""


@dataclasses.dataclass(frozen=True)
class RefusedResult:
    """What the workflow got instead of an activity result: never acted on."""

    cause: str
    message: str


def refused_payload(cause: str, message: str) -> Payload:
    """The marker payload for a refusal (``cause`` and ``message`` carry no secret)."""
    data = json.dumps({"cause": cause, "message": message[:2000]}).encode()
    return Payload(metadata={"encoding": REFUSED_ENCODING.encode()}, data=data)


class RefusedPayloadConverter(EncodingPayloadConverter):
    """Reads the marker payload as a :class:`RefusedResult`; never writes one."""

    @property
    def encoding(self) -> str:
        return REFUSED_ENCODING

    def to_payload(self, value: Any) -> Payload | None:
        return None  # a refusal is never sent anywhere

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        try:
            obj = json.loads(payload.data)
            return RefusedResult(str(obj["cause"]), str(obj["message"]))
        except (ValueError, KeyError, TypeError):
            return RefusedResult("malformed-refusal", "a refusal marker that does not parse")


class WorkflowSidePayloadConverter(CompositePayloadConverter):
    """The default converters plus :class:`RefusedPayloadConverter`; in an activity
    context, a payload that does not convert becomes a :class:`RefusedResult` instead of
    an error (which would fail the workflow task)."""

    def __init__(self) -> None:
        super().__init__(
            RefusedPayloadConverter(), *DefaultPayloadConverter.default_encoding_payload_converters
        )
        self.soft = False

    def with_context(self, context: SerializationContext) -> WorkflowSidePayloadConverter:
        view = WorkflowSidePayloadConverter()
        view.soft = isinstance(context, ActivitySerializationContext)
        return view

    def from_payloads(
        self, payloads: Sequence[Payload], type_hints: list[type] | None = None
    ) -> list[Any]:
        if not self.soft:
            return super().from_payloads(payloads, type_hints)
        hints: list[type | None] = list(type_hints or [])
        hints += [None] * (len(payloads) - len(hints))
        values: list[Any] = []
        for payload, hint in zip(payloads, hints, strict=False):
            try:
                values.extend(super().from_payloads([payload], [hint] if hint else None))
            except Exception as exc:  # any conversion failure: refused, never raised
                encoding = payload.metadata.get("encoding", b"<none>")[:40].decode(errors="replace")
                values.append(
                    RefusedResult(
                        UNCONVERTIBLE,
                        f"a payload of encoding {encoding!r} that is not "
                        f"{getattr(hint, '__name__', 'a value')} ({type(exc).__name__})",
                    )
                )
        return values
