"""The demo's checks really find what they claim: a static secret in a worker's memory,
a payload stored in the clear, an order that ended with the right status but wrong rows."""

import json
import secrets
import subprocess
import sys
import time
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.api.history.v1 import HistoryEvent

from orders_ops.demo import _scan_memory, outcome_differences, scenarios, unprotected_payloads
from orders_shared.contracts.orchestrator import OrderWorkflowResult
from orders_shared.search_attributes import OUTCOME_PATCH


def test_memory_scan_finds_a_secret_a_process_holds_and_nothing_else() -> None:
    planted = secrets.token_hex(24).encode()
    absent = secrets.token_hex(24).encode()
    # the secret arrives on stdin, so it is only in the child's memory, not its arguments
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; s = sys.stdin.readline(); print('ready', flush=True); "
            "time.sleep(60)",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(planted + b"\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"ready\n"
        started = time.monotonic()
        assert _scan_memory(child.pid, [planted, absent]) == {planted}
        assert time.monotonic() - started < 30
    finally:
        child.kill()
        child.wait()


def _event(event_id: int, payload: Payload) -> HistoryEvent:
    event = HistoryEvent(event_id=event_id)
    event.workflow_execution_started_event_attributes.input.payloads.append(payload)
    return event


def test_history_check_fails_on_plain_payloads_and_passes_on_encrypted_ones() -> None:
    plain = Payload(
        metadata={"encoding": b"json/plain"},
        data=b'{"order_id": "o-1", "customer_id": "cust-1815"}',
    )
    assert any("json/plain" in p for p in unprotected_payloads([_event(1, plain)]))
    # a payload labelled encrypted that still carries the order in the clear is caught too
    lying = Payload(metadata={"encoding": b"binary/encrypted"}, data=plain.data)
    assert any("cust-1815" in p for p in unprotected_payloads([_event(1, lying)]))
    sealed = Payload(metadata={"encoding": b"binary/encrypted"}, data=secrets.token_bytes(64))
    assert unprotected_payloads([_event(1, sealed)]) == []
    # a history without any payload proves nothing, and says so
    assert unprotected_payloads([HistoryEvent(event_id=1)]) != []


def _upsert(event_id: int, **values: object) -> HistoryEvent:
    event = HistoryEvent(event_id=event_id)
    fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes
    for name, value in values.items():
        fields.indexed_fields[name].CopyFrom(
            Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(value).encode())
        )
    return event


def test_only_the_outcome_attributes_are_clear_by_design_and_only_with_their_values() -> None:
    sealed = Payload(metadata={"encoding": b"binary/encrypted"}, data=secrets.token_bytes(64))
    marker = HistoryEvent(event_id=2)
    marker.marker_recorded_event_attributes.marker_name = "core_patch"
    marker.marker_recorded_event_attributes.details["patch-data"].payloads.append(
        Payload(
            metadata={"encoding": b"json/plain"},
            data=json.dumps({"id": OUTCOME_PATCH, "deprecated": False}).encode(),
        )
    )
    ok = [
        _event(1, sealed),
        marker,
        _upsert(3, TemporalChangeVersion=[OUTCOME_PATCH]),
        _upsert(4, OrderOutcome="failed", OrderReason="PaymentDeclined"),
    ]
    assert unprotected_payloads(ok) == []
    # order data in an attribute, an unknown outcome or another attribute: flagged
    for bad in (
        _upsert(5, OrderReason="Ada Lovelace, 1 Main Street"),
        _upsert(5, OrderOutcome="shipped"),
        _upsert(5, CustomerEmail="ada@example.com"),
    ):
        assert any(
            "event 5: a payload stored as 'json/plain'" in p
            for p in unprotected_payloads([*ok, bad])
        )


class _Rows:
    """A stand-in for an asyncpg connection answering the demo's row queries."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers

    def _answer(self, sql: str) -> Any:
        table = next(t for t in ("orders", "reservations", "payments", "shipments",
                                 "notifications") if f"app.{t} " in sql)  # fmt: skip
        return self.answers[table]

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return self._answer(sql)

    async def fetch(self, sql: str, *args: Any) -> Any:
        return self._answer(sql)


async def test_outcome_check_compares_path_reason_and_every_row() -> None:
    ok = next(s for s in scenarios("t") if s.key == "undeliverable")
    result = OrderWorkflowResult(
        order_id="o", status="failed", path=list(ok.expect.path), reason_code="FulfillmentFailed"
    )
    rows = {
        "orders": "failed",
        "reservations": [("released",)],
        "payments": [("charge", "approved"), ("refund", "approved")],
        "shipments": 0,
        "notifications": [("order_failed",)],
    }
    assert await outcome_differences(_Rows(**rows), ok.expect, result) == []  # type: ignore[arg-type]
    # the same final status with a refund missing is a wrong outcome
    missing = {**rows, "payments": [("charge", "approved")]}
    wrong = await outcome_differences(_Rows(**missing), ok.expect, result)  # type: ignore[arg-type]
    assert len(wrong) == 1 and wrong[0].startswith("payments")
    # so is a path that skipped the release
    short = OrderWorkflowResult(
        order_id="o",
        status="failed",
        path=list(ok.expect.path[:-2]),
        reason_code="FulfillmentFailed",
    )
    wrong = await outcome_differences(_Rows(**rows), ok.expect, short)  # type: ignore[arg-type]
    assert [w.split(":")[0] for w in wrong] == ["path"]
