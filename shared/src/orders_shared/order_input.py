"""Pure validation of a submitted order: JSON-shaped data in, an :class:`Order` out.

Used at the edge (the CLI and :mod:`orders_shared.client`, so a bad order
never starts a workflow) and again by the validate activity (a workflow can
be started by other means, e.g. the Temporal CLI). The rules mirror the
database's CHECK constraints, so an order that passes here is never refused
by Postgres for its shape.

Errors name the field and the rule and never echo the value: values include
emails, addresses and payment tokens.

Whether a SKU *exists* is not checked here; that needs the catalogue and is
the validate activity's business refusal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from orders_shared.contracts.common import Order, OrderLine

MAX_LINES = 50
MAX_QUANTITY = 1000
MAX_NAME = 200
MAX_ADDRESS = 500
MAX_EMAIL = 254
DEFAULT_CURRENCY = "EUR"

ORDER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
CUSTOMER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}")
SKU_RE = re.compile(r"[A-Z0-9][A-Z0-9-]{1,31}")
CURRENCY_RE = re.compile(r"[A-Z]{3}")
PAYMENT_TOKEN_RE = re.compile(r"tok_[A-Za-z0-9_]{1,60}")
# Deliberately simple: one @, no spaces, a dot in the domain. Deliverability is
# the mail system's question, not ours.
EMAIL_RE = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

REQUIRED_FIELDS = (
    "order_id",
    "customer_id",
    "customer_name",
    "email",
    "shipping_address",
    "payment_token",
    "lines",
)
OPTIONAL_FIELDS = ("currency",)
LINE_FIELDS = ("sku", "quantity")


class OrderInputError(ValueError):
    """A submitted order broke a rule. ``field`` is a path like
    ``lines[2].quantity``; ``rule`` says what is expected."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


def _string(data: Mapping[str, Any], field: str, max_len: int, *, multiline: bool = False) -> str:
    value = data[field]
    if not isinstance(value, str):
        raise OrderInputError(field, "must be a string")
    if not value.strip():
        raise OrderInputError(field, "must not be empty")
    if len(value) > max_len:
        raise OrderInputError(field, f"must be at most {max_len} characters")
    if _CONTROL_RE.search(value) or (not multiline and "\n" in value):
        raise OrderInputError(field, "must not contain control characters")
    return value


def _matching(data: Mapping[str, Any], field: str, pattern: re.Pattern[str], rule: str) -> str:
    value = data[field]
    if not isinstance(value, str):
        raise OrderInputError(field, "must be a string")
    if not pattern.fullmatch(value):
        raise OrderInputError(field, rule)
    return value


def _check_keys(
    data: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...]
) -> None:
    if not isinstance(data, Mapping):
        raise OrderInputError(where or "order", "must be an object")
    for key in data:
        if key not in required and key not in optional:
            field = f"{where}.{key}" if where else str(key)
            raise OrderInputError(field, "is not a known field")
    for key in required:
        if key not in data:
            raise OrderInputError(f"{where}.{key}" if where else key, "is required")


def _line(data: Any, index: int) -> OrderLine:
    where = f"lines[{index}]"
    _check_keys(data, where, LINE_FIELDS, ())
    sku = data["sku"]
    if not isinstance(sku, str) or not SKU_RE.fullmatch(sku):
        raise OrderInputError(
            f"{where}.sku", "must be 2-32 characters of A-Z, 0-9 and '-', not starting with '-'"
        )
    quantity = data["quantity"]
    # bool is an int in Python; true is not a quantity
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise OrderInputError(f"{where}.quantity", "must be an integer")
    if not 1 <= quantity <= MAX_QUANTITY:
        raise OrderInputError(f"{where}.quantity", f"must be from 1 to {MAX_QUANTITY}")
    return OrderLine(sku=sku, quantity=quantity)


def parse_order(data: Any) -> Order:
    """Check ``data`` (decoded JSON) and build the :class:`Order`, or raise
    :class:`OrderInputError` for the first rule broken."""
    _check_keys(data, "", REQUIRED_FIELDS, OPTIONAL_FIELDS)
    order_id = _matching(
        data,
        "order_id",
        ORDER_ID_RE,
        "must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', ':', '-', starting with a "
        "letter or digit",
    )
    customer_id = _matching(
        data,
        "customer_id",
        CUSTOMER_ID_RE,
        "must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', ':', '@', '-', starting with a "
        "letter or digit",
    )
    customer_name = _string(data, "customer_name", MAX_NAME)
    email = data["email"]
    if not isinstance(email, str):
        raise OrderInputError("email", "must be a string")
    if len(email) > MAX_EMAIL:
        raise OrderInputError("email", f"must be at most {MAX_EMAIL} characters")
    if not EMAIL_RE.fullmatch(email):
        raise OrderInputError("email", "must be an email address like name@example.com")
    shipping_address = _string(data, "shipping_address", MAX_ADDRESS, multiline=True)
    payment_token = _matching(
        data,
        "payment_token",
        PAYMENT_TOKEN_RE,
        "must be a payment token: 'tok_' and 1-60 characters of A-Z, a-z, 0-9, '_'",
    )
    currency = DEFAULT_CURRENCY
    if "currency" in data:
        currency = _matching(
            data, "currency", CURRENCY_RE, "must be 3 upper-case letters (ISO 4217)"
        )

    raw_lines = data["lines"]
    if not isinstance(raw_lines, list | tuple):
        raise OrderInputError("lines", "must be a list")
    if not raw_lines:
        raise OrderInputError("lines", "must have at least one line")
    if len(raw_lines) > MAX_LINES:
        raise OrderInputError("lines", f"must have at most {MAX_LINES} lines")
    lines: list[OrderLine] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_lines):
        line = _line(raw, i)
        if line.sku in seen:
            raise OrderInputError(f"lines[{i}].sku", "must not repeat a SKU of an earlier line")
        seen.add(line.sku)
        lines.append(line)

    return Order(
        order_id=order_id,
        customer_id=customer_id,
        customer_name=customer_name,
        email=email,
        shipping_address=shipping_address,
        payment_token=payment_token,
        lines=tuple(lines),
        currency=currency,
    )


def order_to_json(order: Order) -> dict[str, Any]:
    """The JSON shape :func:`parse_order` accepts (``parse_order(order_to_json(o)) == o``)."""
    return {
        "order_id": order.order_id,
        "customer_id": order.customer_id,
        "customer_name": order.customer_name,
        "email": order.email,
        "shipping_address": order.shipping_address,
        "payment_token": order.payment_token,
        "currency": order.currency,
        "lines": [{"sku": line.sku, "quantity": line.quantity} for line in order.lines],
    }


def check_order(order: Order) -> None:
    """Re-check an :class:`Order` that did not come through :func:`parse_order`
    (a workflow started by other means). Raises :class:`OrderInputError`."""
    parse_order(order_to_json(order))
