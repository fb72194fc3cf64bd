"""The customer's message is chosen from the reason code; internal text never reaches it."""

from __future__ import annotations

from orders_notify.activities import compose
from orders_shared.errors import FulfillmentFailed, OutOfStock


def test_completed() -> None:
    kind, subject, body = compose("ord-1", "Ada", "completed", None)
    assert kind == "order_completed"
    assert subject == "Your order ord-1 is on its way"
    assert "paid and shipped" in body


def test_failure_texts_by_code() -> None:
    assert "out of stock" in compose("ord-1", "Ada", "failed", OutOfStock.TYPE)[2]
    assert "refunded" in compose("ord-1", "Ada", "failed", FulfillmentFailed.TYPE)[2]


def test_unknown_code_gets_the_generic_text() -> None:
    kind, _, body = compose("ord-1", "Ada", "failed", "StepFailed")
    assert kind == "order_failed"
    assert "nothing has been charged" in body
    assert "StepFailed" not in body


def test_an_unfinished_refund_is_never_claimed_as_done() -> None:
    for code in (FulfillmentFailed.TYPE, "StepFailed"):
        body = compose("ord-1", "Ada", "failed", code, refund_unfinished=True)[2]
        assert "has been refunded" not in body and "nothing has been charged" not in body
        assert "not been refunded yet" in body
