"""Contract of the payment service: charge an order's recorded total, and refund it."""

from dataclasses import dataclass

from orders_shared.catalog import SERVICES

TASK_QUEUE = SERVICES["payment"].task_queue

PROCESS_PAYMENT = "process_payment"
REFUND_PAYMENT = "refund_payment"

REFUND_REFUSED = "PaymentRefundRefused"
"""Non-retryable error type of ``refund_payment`` when the provider refuses the refund
for a reason other than "no such charge" (e.g. refunded under another key): retrying
cannot change it; the order needs a person. The workflow goes on with release and notify."""


@dataclass(frozen=True)
class ProcessPaymentInput:
    """No amount on purpose: the service charges ``app.orders.total_cents``."""

    order_id: str
    payment_token: str


@dataclass(frozen=True)
class ProcessPaymentOutput:
    order_id: str
    amount_cents: int
    currency: str
    provider_ref: str


@dataclass(frozen=True)
class RefundPaymentInput:
    order_id: str


@dataclass(frozen=True)
class RefundPaymentOutput:
    """``refunded`` is false when the provider held no charge to refund (none was sent,
    it was declined, or it never reached the provider)."""

    order_id: str
    refunded: bool
    amount_cents: int
    provider_ref: str | None
