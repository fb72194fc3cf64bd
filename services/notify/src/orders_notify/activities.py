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
write the outbox message (the sender needs the address). The contact is read
and opened *before* the transaction starts: no transaction (and no row lock)
is held across a Vault call.

When the message cannot be written for good (a field that does not open or
breaks the rules once open, a status conflict), the workflow calls
``record_order_status``: it records the final status without a message, logs an
error line and counts ``orders_status_without_message_total``, so the order never
stays ``received`` after money and goods moved, and an operator is alerted.
"""

from __future__ import annotations

import structlog
from prometheus_client import Counter
from temporalio import activity

from orders_shared.codec import TransitClient
from orders_shared.contracts.common import OrderOutcome
from orders_shared.contracts.notify import (
    NOTIFY_CUSTOMER,
    RECORD_ORDER_STATUS,
    NotifyCustomerInput,
    NotifyCustomerOutput,
    RecordOrderStatusInput,
    RecordOrderStatusOutput,
)
from orders_shared.db import Connection, ConnectionSource
from orders_shared.errors import (
    FulfillmentFailed,
    OrderRejected,
    OrderStateConflict,
    OutOfStock,
    PaymentDeclined,
)
from orders_shared.sealing import open_in_activity

DB_ROLE = "order-notify"

STATUS_WITHOUT_MESSAGE = Counter(
    "orders_status_without_message_total",
    "Orders whose final status was recorded without a customer message, by outcome and "
    "by the error type that made the message impossible (alert on any increase)",
    ["outcome", "cause"],
)

_log = structlog.get_logger("orders_notify")

_FAILURE_TEXT = {
    OrderRejected.TYPE: "we could not accept it as submitted (for example, an item we do not sell)",
    OutOfStock.TYPE: "an item in it is out of stock",
    PaymentDeclined.TYPE: "the payment was declined",
    FulfillmentFailed.TYPE: (
        "we cannot deliver to the shipping address given; your payment has been refunded"
    ),
}
_FAILURE_DEFAULT = "we could not process it; nothing has been charged or kept for it"


_REFUND_PENDING = (
    "Your payment has not been refunded yet: our team is handling it and will write to "
    "you once it is done.\n"
)


def compose(
    order_id: str,
    name: str,
    outcome: OrderOutcome,
    reason_code: str | None,
    *,
    refund_unfinished: bool = False,
) -> tuple[str, str, str]:
    """(kind, subject, body) of the message for an outcome. With ``refund_unfinished``
    the message never claims a refund (or that nothing was charged)."""
    if outcome == "completed":
        return (
            "order_completed",
            f"Your order {order_id} is on its way",
            f"Hello {name},\n\nyour order {order_id} has been paid and shipped.\n",
        )
    why = _FAILURE_TEXT.get(reason_code or "", _FAILURE_DEFAULT)
    if refund_unfinished:
        why = why.split(";", 1)[0]
        if why == _FAILURE_DEFAULT.split(";", 1)[0]:
            why = "we could not process it"
    return (
        "order_failed",
        f"Your order {order_id} could not be completed",
        f"Hello {name},\n\nwe are sorry: your order {order_id} could not be completed "
        f"because {why}.\n" + (_REFUND_PENDING if refund_unfinished else ""),
    )


# status_by and updated_at are stamped by a trigger (the role may not write them)
_RECORD_STATUS = """
    UPDATE app.orders
       SET status = $2, status_reason = $3
     WHERE order_id = $1 AND status IN ('received', $2)
    RETURNING true
"""
# Validate stored the rejection with its detailed reason; keep it. (The role
# may not read status_reason, so it cannot COALESCE it either.)
_RECORD_REJECTED = """
    UPDATE app.orders
       SET status = $2
     WHERE order_id = $1 AND status IN ('received', $2)
    RETURNING true
"""


async def _record_status(
    conn: Connection, order_id: str, outcome: OrderOutcome, reason: str | None
) -> bool:
    if outcome == "rejected":
        return bool(await conn.fetchval(_RECORD_REJECTED, order_id, outcome))
    return bool(await conn.fetchval(_RECORD_STATUS, order_id, outcome, reason))


def _status_reason(inp: NotifyCustomerInput | RecordOrderStatusInput) -> str | None:
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
        async with self.db.connection(DB_ROLE) as conn:
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
        # Vault calls outside any transaction and without holding a connection
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
        kind, subject, body = compose(
            inp.order_id,
            name,
            inp.outcome,
            inp.reason_code,
            refund_unfinished=inp.refund_unfinished,
        )
        async with self.db.connection(DB_ROLE) as conn, conn.transaction():
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
            if not await _record_status(conn, inp.order_id, inp.outcome, _status_reason(inp)):
                # Raising rolls back the message too: nothing half-recorded.
                raise OrderStateConflict(
                    f"order already has a different final status than {inp.outcome!r}"
                )
        return NotifyCustomerOutput(order_id=inp.order_id, notified=True, already_notified=False)

    @activity.defn(name=RECORD_ORDER_STATUS)
    async def record_order_status(self, inp: RecordOrderStatusInput) -> RecordOrderStatusOutput:
        """Record the final status without a message (notify failed for good).

        Never refuses: a status already final stays as it is and is returned.
        Logs an error and counts it either way: a customer was not told."""
        async with self.db.connection(DB_ROLE) as conn, conn.transaction():
            changed = await _record_status(conn, inp.order_id, inp.outcome, _status_reason(inp))
            status: str | None = await conn.fetchval(
                "SELECT status FROM app.orders WHERE order_id = $1", inp.order_id
            )
        STATUS_WITHOUT_MESSAGE.labels(outcome=inp.outcome, cause=inp.cause).inc()
        _log.error(
            "order status recorded without a customer message",
            outcome=inp.outcome,
            cause=inp.cause,
            recorded_status=status,
            status_changed=changed,
            fix="look at the order's contact data and tell the customer by other means",
        )
        return RecordOrderStatusOutput(order_id=inp.order_id, status=status, changed=changed)
