"""Chaos: orders keep their outcomes and Postgres keeps its invariants under faults.

The trimmed variant of ``make chaos`` (every database lease revoked at once,
then the orchestrator SIGKILLed mid-workflow, with short phases) runs against
the real stack and six real worker processes; each fault must show it happened
(the leased logins gone from pg_roles; the old PID gone, a new one, and a task
cut short in history) or its phase is an error. The unit tests below show each
invariant rule failing on planted data, so a clean run means something.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from orders_ops.chaos import EXPECT, Options, run_chaos, table
from orders_ops.chaos_checks import (
    OrderFacts,
    check_money,
    check_outcome,
    check_rows,
    check_stock,
    classify_logins,
    read_stock,
)
from orders_ops.chaos_faults import trimmed_set
from orders_ops.stack import Stack

# ------------------------------------------------------------------------ the checker


def _completed(order_id: str = "o-1") -> OrderFacts:
    return OrderFacts(
        order_id,
        status="completed",
        total_cents=1250,
        reservations=[("SKU-A", 1, "reserved")],
        payments=[("charge", "approved", 1250)],
        shipments=1,
        notifications=["order_completed"],
    )


def test_a_clean_completed_order_passes() -> None:
    assert check_rows(_completed(), EXPECT["ok"], "completed") == []
    assert check_money([_completed()]) == []


def test_a_planted_duplicate_charge_is_caught() -> None:
    facts = _completed()
    facts.payments.append(("charge", "approved", 1250))
    problems = check_rows(facts, EXPECT["ok"], "completed")
    assert [p.kind for p in problems] == ["duplicate"]
    assert check_money([facts]) != []  # and the money no longer adds up


def test_duplicate_shipment_and_notification_are_caught() -> None:
    facts = _completed()
    facts.shipments = 2
    facts.notifications.append("order_failed")
    kinds = [p.kind for p in check_rows(facts, EXPECT["ok"], "completed")]
    assert kinds.count("duplicate") == 2


def test_a_failed_order_still_charged_or_holding_stock_is_caught() -> None:
    facts = OrderFacts(
        "o-2",
        status="failed",
        total_cents=1250,
        reservations=[("SKU-A", 1, "reserved")],
        payments=[("charge", "approved", 1250)],
        notifications=["order_failed"],
    )
    details = " ".join(p.detail for p in check_rows(facts, EXPECT["undeliverable"], "failed"))
    assert "never released" in details
    assert "never refunded" in details


def test_a_pending_charge_refunded_nets_to_zero_and_one_left_pending_is_caught() -> None:
    refunded = OrderFacts(
        "o-3",
        status="failed",
        total_cents=1250,
        reservations=[("SKU-A", 1, "released")],
        payments=[("charge", "pending", 1250), ("refund", "approved", 1250)],
        notifications=["order_failed"],
    )
    assert check_rows(refunded, EXPECT["badseal"], "failed") == []
    assert check_money([refunded]) == []
    refunded.payments.pop()
    assert any("pending" in p.detail for p in check_rows(refunded, EXPECT["badseal"], "failed"))


def test_the_wrong_outcome_is_caught() -> None:
    assert check_outcome("o", EXPECT["declined"], "failed", "PaymentDeclined", None) == []
    assert check_outcome("o", EXPECT["declined"], "completed", None, None) != []
    assert (
        check_outcome("o", EXPECT["badseal"], "failed", "StepFailed", "x SealedFieldInvalid") == []
    )
    assert (
        check_outcome("o", EXPECT["badseal"], "failed", "StepFailed", "failed (TimeoutError)") != []
    )


def test_stock_not_conserved_is_caught() -> None:
    assert check_stock({"A": 100}, {"A": 97}, {"A": 3}) == []
    assert check_stock({"A": 100}, {"A": 96}, {"A": 3}) != []


def test_logins_left_behind_are_classified() -> None:
    older, orphans, leaked = classify_logins(
        [
            "v-order-validate-abcdefghij0123456789-1000",
            "v-order-process-payment-abcdefghij0123456789-2000",
            "v-order-process-payment-abcdefghij0123456789-2600",
            "v-order-fulfill-abcdefghij0123456789-2100",
        ],
        run_started=1500,
        killed={"order-process-payment": 2500},
    )
    assert older == ["v-order-validate-abcdefghij0123456789-1000"]
    assert orphans == ["v-order-process-payment-abcdefghij0123456789-2000"]
    assert leaked == [
        "v-order-fulfill-abcdefghij0123456789-2100",
        "v-order-process-payment-abcdefghij0123456789-2600",
    ]


# ------------------------------------------------------------------------ the real thing


@pytest.mark.stack
async def test_trimmed_chaos_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    options = Options(rate=1.5, lead=2, tail=2, settle=50, json_path=None)
    report = await run_chaos(stack, trimmed_set(), options, say=lambda _line: None)
    print(table(report))
    ran = [p for p in report.phases if p.state == "ran"]
    # a phase whose fault did not show it happened (a no-op inject) is an error, not "ran"
    assert len(ran) == 3, [(p.fault, p.state, p.why, p.problems) for p in report.phases]
    for phase in ran:
        assert phase.submitted > 0 and phase.completed == phase.submitted, phase
        assert (phase.wrong, phase.duplicates, phase.stuck, phase.lost) == (0, 0, 0, 0), (
            phase.problems
        )
        assert phase.recovered, phase.problems
        print(phase.fault, phase.notes)  # the evidence each fault gave that it happened
    assert report.end_problems == [], report.end_problems
    assert report.ok

    # the same check on the real database fails once the stock is tampered with
    dsn = stack.settings.admin_dsn(stack.settings.database)
    conn = await asyncpg.connect(dsn)
    try:
        sku = next(iter(report.skus))
        assert check_stock(report.skus, *await read_stock(conn, list(report.skus))) == []
        await conn.execute("UPDATE app.inventory SET on_hand = on_hand - 1 WHERE sku = $1", sku)
        assert check_stock(report.skus, *await read_stock(conn, list(report.skus))) != []
    finally:
        await conn.close()
