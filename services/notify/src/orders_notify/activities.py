"""notify_customer: write the customer's message to the outbox and record the
order's final status, as ``order-notify``.

Notify is the one step every path ends with, so it is also the one role that
may set ``orders.status``. Both happen in one transaction keyed by the
outbox's ``UNIQUE (order_id, kind)``: the message insert decides whether this
call is the first; only the first changes the status, so a retry or duplicate
neither writes a second message nor moves ``updated_at``.

A final status is never overwritten with a different one: an order already
recorded as ``failed`` cannot become ``completed``
(:class:`OrderStateConflict`). ``rejected`` is recorded by validate itself
(the order is stored already rejected); notify then stamps who recorded it.

The message text is chosen from the reason *code*: no internal error text and
no other customer data than the name reaches the body. Nothing is sent: a
separate sender would deliver from the outbox.

The customer's name and email are stored sealed to this service (Transit key
``orders-seal-notify``); they are opened with the service's own identity to
write the outbox message (the sender needs the address).
"""

from __future__ import annotations

from temporalio import activity

from orders_shared.codec import TransitClient
from orders_shared.contracts.common import OrderOutcome
from orders_shared.contracts.notify import (
    NOTIFY_CUSTOMER,
    NotifyCustomerInput,
    NotifyCustomerOutput,
)
from orders_shared.db import ConnectionSource
from orders_shared.errors import (
    FulfillmentFailed,
    OrderRejected,
    OrderStateConflict,
    OutOfStock,
    PaymentDeclined,
)
from orders_shared.sealing import open_in_activity

DB_ROLE = "order-notify"

_FAILURE_TEXT = {
    OrderRejected.TYPE: "we could not accept it as submitted (for example, an item we do not sell)",
    OutOfStock.TYPE: "an item in it is out of stock",
    PaymentDeclined.TYPE: "the payment was declined",
    FulfillmentFailed.TYPE: (
        "we cannot deliver to the shipping address given; your payment has been refunded"
    ),
}
_FAILURE_DEFAULT = "we could not process it; nothing has been charged or kept for it"


def compose(
    order_id: str, name: str, outcome: OrderOutcome, reason_code: str | None
) -> tuple[str, str, str]:
    """(kind, subject, body) of the message for an outcome."""
    if outcome == "completed":
        return (
            "order_completed",
            f"Your order {order_id} is on its way",
            f"Hello {name},\n\nyour order {order_id} has been paid and shipped.\n",
        )
    why = _FAILURE_TEXT.get(reason_code or "", _FAILURE_DEFAULT)
    return (
        "order_failed",
        f"Your order {order_id} could not be completed",
        f"Hello {name},\n\nwe are sorry: your order {order_id} could not be completed "
        f"because {why}.\n",
    )


_RECORD_STATUS = """
    UPDATE app.orders
       SET status = $2, status_reason = $3, status_by = current_user, updated_at = now()
     WHERE order_id = $1 AND status IN ('received', $2)
    RETURNING true
"""
# Validate stored the rejection with its detailed reason; keep it. (The role
# may not read status_reason, so it cannot COALESCE it either.)
_RECORD_REJECTED = """
    UPDATE app.orders
       SET status = $2, status_by = current_user, updated_at = now()
     WHERE order_id = $1 AND status IN ('received', $2)
    RETURNING true
"""


def _status_reason(inp: NotifyCustomerInput) -> str | None:
    if inp.outcome == "completed":
        return None
    if inp.reason:
        return f"{inp.reason_code}: {inp.reason}" if inp.reason_code else inp.reason
    return inp.reason_code


class NotifyActivities:
    def __init__(self, db: ConnectionSource, transit: TransitClient) -> None:
        self.db = db
        self.transit = transit  # opens the name and email sealed to this service

    @activity.defn(name=NOTIFY_CUSTOMER)
    async def notify_customer(self, inp: NotifyCustomerInput) -> NotifyCustomerOutput:
        async with self.db.connection(DB_ROLE) as conn, conn.transaction():
            contact = await conn.fetchrow(
                "SELECT customer_name, email FROM app.customer_contacts WHERE order_id = $1",
                inp.order_id,
            )
            if contact is None:
                # Never recorded (refused for its shape before validate stored it):
                # there is nobody to write to and no status to set.
                return NotifyCustomerOutput(
                    order_id=inp.order_id, notified=False, already_notified=False
                )
            name = await open_in_activity(
                self.transit,
                "notify",
                contact["customer_name"],
                order_id=inp.order_id,
                field="customer_name",
            )
            email = await open_in_activity(
                self.transit, "notify", contact["email"], order_id=inp.order_id, field="email"
            )
            kind, subject, body = compose(inp.order_id, name, inp.outcome, inp.reason_code)
            inserted = await conn.fetchval(
                """
                INSERT INTO app.notifications (order_id, kind, recipient, subject, body)
                VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (order_id, kind) DO NOTHING
                RETURNING true
                """,
                inp.order_id,
                kind,
                email,
                subject,
                body,
            )
            if not inserted:
                return NotifyCustomerOutput(
                    order_id=inp.order_id, notified=True, already_notified=True
                )
            updated = await conn.fetchval(
                _RECORD_REJECTED if inp.outcome == "rejected" else _RECORD_STATUS,
                *(
                    (inp.order_id, inp.outcome)
                    if inp.outcome == "rejected"
                    else (inp.order_id, inp.outcome, _status_reason(inp))
                ),
            )
            if not updated:
                # Raising rolls back the message too: nothing half-recorded.
                raise OrderStateConflict(
                    f"order already has a different final status than {inp.outcome!r}"
                )
        return NotifyCustomerOutput(order_id=inp.order_id, notified=True, already_notified=False)
