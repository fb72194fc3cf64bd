"""Business refusals: non-retryable, typed, and distinct from infrastructure failures.

A refusal is an *answer* (the order is invalid, the stock is gone, the card
was declined), so retrying cannot change it: each is an ``ApplicationError``
with ``non_retryable=True`` and a stable ``type`` string the workflow matches
on (the Python class does not survive the trip through Temporal; the
``type`` does).

Everything else an activity raises (asyncpg connection errors, an
``InvalidPasswordError`` from an expired or revoked credential, Vault being
unreachable) is deliberately *not* caught and converted: it reaches Temporal
as a retryable failure and the activity is retried until the infrastructure
is back. Activity code must only raise these types for conditions it has
positively established, never from an ``except Exception``.

Messages name the field or rule, never a customer's value (an email, an
address or a payment token must not end up in a failure message).
"""

from __future__ import annotations

from typing import Any, ClassVar

from temporalio.exceptions import ApplicationError


class BusinessRefusal(ApplicationError):
    """Base of the refusals; subclasses fix ``TYPE``."""

    TYPE: ClassVar[str] = "BusinessRefusal"

    def __init__(self, message: str, *details: Any) -> None:
        super().__init__(message, *details, type=self.TYPE, non_retryable=True)


class OrderRejected(BusinessRefusal):
    """The order is invalid (bad field, unknown SKU, total too large)."""

    TYPE = "OrderRejected"


class OutOfStock(BusinessRefusal):
    """Not enough stock for at least one line; nothing was reserved."""

    TYPE = "OutOfStock"


class PaymentDeclined(BusinessRefusal):
    """The payment provider declined the charge; nothing was charged."""

    TYPE = "PaymentDeclined"


class FulfillmentFailed(BusinessRefusal):
    """The order cannot be shipped (e.g. an undeliverable address), after payment."""

    TYPE = "FulfillmentFailed"


class OrderStateConflict(BusinessRefusal):
    """A step found the order in a state it cannot act on (e.g. notify asked to
    record ``completed`` on an order already recorded as ``failed``). Retrying
    cannot fix it; it points at a bug or a reused order id."""

    TYPE = "OrderStateConflict"


BUSINESS_ERROR_TYPES: tuple[str, ...] = (
    OrderRejected.TYPE,
    OutOfStock.TYPE,
    PaymentDeclined.TYPE,
    FulfillmentFailed.TYPE,
    OrderStateConflict.TYPE,
)
"""Every refusal type, for ``RetryPolicy.non_retryable_error_types``."""
