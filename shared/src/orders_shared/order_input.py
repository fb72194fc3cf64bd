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

import difflib
import json
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

# What no text field may hold, wherever it is: Postgres cannot store NUL (0x00) in
# text; C0 and C1 controls (DEL and NEL included) break mail headers and logs; a
# lone surrogate cannot be encoded as UTF-8 at all. Line feed is allowed only in
# multi-line fields (the shipping address).
_UNCARRIABLE_RE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
# What a name or an address may not hold either: bidirectional controls (which
# can make text read differently from what it says, e.g. U+202E) and the Unicode
# line and paragraph separators (a line break a mail system may honour).
_LAYOUT_RE = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
UNCARRIABLE_RULE = "must not contain control characters (C0, DEL, C1, NUL) or unpaired surrogates"
LAYOUT_RULE = "must not contain bidirectional controls or line/paragraph separators"

MAX_JSON_DEPTH = 16
"""How deep objects and arrays may nest in a submitted document (an order needs 3)."""
MAX_NUMBER_DIGITS = 20
"""How many characters a JSON number may have (a quantity needs 4)."""

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
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")


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
    check_text(field, value, multiline=multiline, layout=True)
    return value


def check_text(field: str, value: str, *, multiline: bool = False, layout: bool = False) -> None:
    """Refuse what Postgres or a mail system cannot carry; with ``layout``, also
    what would change how a name or address reads (:data:`LAYOUT_RULE`)."""
    if _UNCARRIABLE_RE.search(value) or (not multiline and "\n" in value):
        raise OrderInputError(field, UNCARRIABLE_RULE)
    if layout and _LAYOUT_RE.search(value):
        raise OrderInputError(field, LAYOUT_RULE)


def _matching(data: Mapping[str, Any], field: str, pattern: re.Pattern[str], rule: str) -> str:
    value = data[field]
    if not isinstance(value, str):
        raise OrderInputError(field, "must be a string")
    check_text(field, value)
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
            # the key is input too: name it only when it is plainly a field name
            name = key if isinstance(key, str) and _KEY_RE.fullmatch(key) else "<unnamed>"
            field = f"{where}.{name}" if where else name
            # a misspelt field name: say which known one it is likely to be
            near = difflib.get_close_matches(name, (*required, *optional), n=1, cutoff=0.75)
            hint = f"; did you mean {near[0]!r}?" if near and name != "<unnamed>" else ""
            raise OrderInputError(field, f"is not a known field{hint}")
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
    if isinstance(quantity, _NotANumber):
        raise OrderInputError(f"{where}.quantity", quantity.rule)
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
    check_text("email", email, layout=True)
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


class _NotANumber:
    """Stands in for a JSON number :func:`parse_order_json` will not convert, so the
    field it sits in is named in the refusal."""

    def __init__(self, rule: str) -> None:
        self.rule = rule


def _number(text: str) -> int | _NotANumber:
    if len(text) > MAX_NUMBER_DIGITS:
        return _NotANumber(f"must be a number of at most {MAX_NUMBER_DIGITS} characters")
    return int(text)


def _not_integer(text: str) -> _NotANumber:
    return _NotANumber("must be an integer")


def json_depth_exceeded(text: str, limit: int) -> int | None:
    """The offset where objects/arrays nest deeper than ``limit``, or None.

    A linear scan, so a document nested a million levels deep is refused before
    the JSON parser (which recurses) ever sees it."""
    depth = 0
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return i
        elif ch in "]}":
            depth -= 1
    return None


def parse_order_json(document: str | bytes) -> Order:
    """Decode a submitted JSON document and :func:`parse_order` it.

    Refuses, with a field and a rule like every other refusal, what the
    standard library would choke on or silently accept: nesting deeper than
    :data:`MAX_JSON_DEPTH` (the parser recurses), a number longer than
    :data:`MAX_NUMBER_DIGITS` (a 5,000-digit integer is costly to convert and
    refused by Python's own limit), NaN/Infinity and fractions where an integer
    is expected, invalid UTF-8 and malformed JSON. The CLI maps
    :class:`OrderInputError` to exit code 2.
    """
    if isinstance(document, bytes):
        try:
            document = document.decode("utf-8")
        except UnicodeDecodeError:
            raise OrderInputError("order", "must be UTF-8 encoded JSON") from None
    where = json_depth_exceeded(document, MAX_JSON_DEPTH)
    if where is not None:
        raise OrderInputError(
            "order",
            f"must not nest objects or arrays more than {MAX_JSON_DEPTH} levels deep "
            f"(at character {where})",
        )
    try:
        data = json.loads(
            document, parse_int=_number, parse_float=_not_integer, parse_constant=_not_integer
        )
    except json.JSONDecodeError as exc:
        raise OrderInputError(
            "order", f"must be valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except (ValueError, RecursionError):
        raise OrderInputError("order", "must be valid JSON") from None
    return parse_order(data)


def check_order(order: Order) -> None:
    """Re-check an :class:`Order` that did not come through :func:`parse_order`
    (a workflow started by other means). Raises :class:`OrderInputError`."""
    parse_order(order_to_json(order))
