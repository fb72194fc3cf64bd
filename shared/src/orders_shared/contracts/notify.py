"""Contract of the notify service: tell the customer and record the final status."""

from dataclasses import dataclass

from orders_shared.catalog import SERVICES
from orders_shared.contracts.common import OrderOutcome

TASK_QUEUE = SERVICES["notify"].task_queue

NOTIFY_CUSTOMER = "notify_customer"
RECORD_ORDER_STATUS = "record_order_status"


@dataclass(frozen=True)
class NotifyCustomerInput:
    """``reason_code`` is an error type from :mod:`orders_shared.errors` (or
    ``None`` on success); the service turns it into customer-facing words, so
    internal error text never reaches a customer. ``reason`` is the
    operator-facing explanation recorded in ``orders.status_reason``."""

    order_id: str
    outcome: OrderOutcome
    reason_code: str | None = None
    reason: str | None = None
    refund_unfinished: bool = False
    """True when the refund could not be completed: the message must not say the
    payment was refunded."""


@dataclass(frozen=True)
class NotifyCustomerOutput:
    """``notified`` is false when the order was never recorded (there is nobody
    to write to); ``already_notified`` when an earlier attempt did it."""

    order_id: str
    notified: bool
    already_notified: bool


@dataclass(frozen=True)
class RecordOrderStatusInput:
    """Record the final status *without* a message: the fallback when
    :data:`NOTIFY_CUSTOMER` failed for good. ``cause`` is the error type that
    made the message impossible (logged and counted, for an alert)."""

    order_id: str
    outcome: OrderOutcome
    cause: str
    reason_code: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class RecordOrderStatusOutput:
    """``status`` is what ``app.orders.status`` holds afterwards (``None`` when the
    order was never recorded); ``changed`` whether this call set it."""

    order_id: str
    status: str | None
    changed: bool
