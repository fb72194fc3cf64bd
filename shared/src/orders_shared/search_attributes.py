"""The order's outcome as Temporal search attributes: visible and searchable in the UI and CLI.

A declined, out-of-stock or undeliverable order is a business outcome, so its workflow
*completes* (the outcome is its result) and Temporal's lists alone would call it a
success. The order workflow therefore upserts, when the outcome is known,

* :data:`ORDER_OUTCOME` (``OrderOutcome``, Keyword): ``completed``, ``failed`` or
  ``rejected``, and
* :data:`ORDER_REASON` (``OrderReason``, Keyword): the reason's type for an order that
  did not complete (``PaymentDeclined``, ``OutOfStock``, ``FulfillmentFailed``,
  ``StepFailed``, ``OrderRejected``, ...); unset for a completed order,

so ``temporal workflow list --query 'OrderOutcome="failed"'`` finds them. Search
attributes are stored and indexed **in the clear** (the payload codec does not see
them): only the outcome word and the reason's type go there, never order data (no
customer, address, amount or message).

A namespace must know both attributes before a workflow upserts them (an unknown one
fails the workflow task, and the order waits until it is registered).
:func:`register_search_attributes` adds the missing ones through Temporal's operator
service, idempotently: the local stack's dev server gets them at start
(``--search-attribute``), :func:`orders_ops.namespaces.ensure_namespace` for every
namespace it makes, and ``orders-bootstrap temporal`` for a cluster's namespace.
"""

from __future__ import annotations

import json
import re

from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import SearchAttributeKey

ORDER_OUTCOME = SearchAttributeKey.for_keyword("OrderOutcome")
ORDER_REASON = SearchAttributeKey.for_keyword("OrderReason")
OUTCOME_PATCH = "order-outcome-search-attributes"
"""The ``workflow.patched`` id guarding the upsert: runs whose history was written
before it (without the upsert) replay unchanged."""

SEARCH_ATTRIBUTES: dict[str, IndexedValueType.ValueType] = {
    ORDER_OUTCOME.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    ORDER_REASON.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
}


OUTCOMES = ("completed", "failed", "rejected")
_REASON_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")  # an error type's name, nothing else
PATCH_MARKER = "core_patch"  # the SDK's marker for workflow.patched, stored in the clear
CHANGE_VERSION = "TemporalChangeVersion"  # the server's list of a run's patches


def written_in_the_clear(name: str, payload: Payload) -> bool:
    """Whether ``payload`` is one the order workflow writes unencrypted by design: an
    ``OrderOutcome`` word, an ``OrderReason`` type name, or :data:`OUTCOME_PATCH` in the
    patch marker (``name`` :data:`PATCH_MARKER`) or in ``TemporalChangeVersion``. Anything
    else (another value, another encoding) is not, so a check of the stored history
    (``orders-demo``) still flags it."""
    if payload.metadata.get("encoding") != b"json/plain":
        return False
    try:
        value = json.loads(payload.data)
    except ValueError:
        return False
    if name == ORDER_OUTCOME.name:
        return isinstance(value, str) and value in OUTCOMES
    if name == ORDER_REASON.name:
        return isinstance(value, str) and _REASON_TYPE.fullmatch(value) is not None
    if name == CHANGE_VERSION:
        return bool(value == [OUTCOME_PATCH])
    if name == PATCH_MARKER:
        return bool(value == {"id": OUTCOME_PATCH, "deprecated": False})
    return False


class SearchAttributeError(RuntimeError):
    """A namespace holds one of our names with another type; the message says the fix."""


def dev_server_flags() -> list[str]:
    """``temporal server start-dev`` arguments that register the attributes at start."""
    flags: list[str] = []
    for name in SEARCH_ATTRIBUTES:
        flags += ["--search-attribute", f"{name}=Keyword"]
    return flags


async def register_search_attributes(client: Client, namespace: str) -> list[str]:
    """Add the order attributes ``namespace`` lacks (none: nothing is changed); one line
    per attribute added. :class:`SearchAttributeError` when a name exists with another
    type (Temporal cannot change a type: remove it or use another namespace)."""
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    have = dict(listed.custom_attributes)
    wrong = [
        f"{name} is {IndexedValueType.Name(have[name])}"
        for name, kind in SEARCH_ATTRIBUTES.items()
        if name in have and have[name] != kind
    ]
    if wrong:
        raise SearchAttributeError(
            f"Temporal namespace {namespace!r}: search attribute {', '.join(wrong)}, the order "
            "workflow needs Keyword: remove it ('temporal operator search-attribute remove') "
            "and run the bootstrap again"
        )
    missing = {name: kind for name, kind in SEARCH_ATTRIBUTES.items() if name not in have}
    if not missing:
        return []
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
    )
    return [
        f"temporal: search attribute {name} (Keyword) added to namespace {namespace}"
        for name in missing
    ]
