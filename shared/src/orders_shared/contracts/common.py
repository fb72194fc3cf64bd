"""Types more than one service's contract uses: the order as submitted, and the outcome."""

from dataclasses import dataclass
from typing import Literal

OrderOutcome = Literal["completed", "failed", "rejected"]
"""The final status of an order, as recorded in ``app.orders.status``.

``rejected``: the order itself was refused (invalid, unknown SKU) before any
side effect. ``failed``: the process stopped on a refusal or an error after
the order was accepted (out of stock, payment declined, undeliverable), with
every side effect compensated. ``completed``: shipped and paid.
"""


@dataclass(frozen=True)
class OrderLine:
    """One line of an order: a SKU and how many of it."""

    sku: str
    quantity: int


@dataclass(frozen=True)
class Order:
    """An order as the customer submitted it, already checked by
    :func:`orders_shared.order_input.parse_order`.

    There are no prices here on purpose: the validate step prices the order
    from ``app.products`` and the payment step charges the total recorded in
    the database, never an amount carried in the workflow input.

    Once submitted, ``customer_name``, ``email``, ``shipping_address`` and
    ``payment_token`` hold sealed strings (``vault:v1:...``) that only their
    consuming service can open (:mod:`orders_shared.sealing`).
    """

    order_id: str
    customer_id: str
    customer_name: str
    email: str
    shipping_address: str
    payment_token: str
    lines: tuple[OrderLine, ...]
    currency: str = "EUR"
