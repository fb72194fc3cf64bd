"""Field sealing: each sensitive order field readable only by the service that consumes it.

The client checks the order (:func:`orders_shared.order_input.parse_order`),
then seals each sensitive field with Transit ``encrypt`` under the consumer's
key, and submits the order carrying the sealed strings (``vault:v1:...``):

=================  ====================  ==========================
field              consumer              Transit key
=================  ====================  ==========================
payment_token      payment               ``orders-seal-payment``
shipping_address   fulfill               ``orders-seal-fulfill``
email              notify                ``orders-seal-notify``
customer_name      notify                ``orders-seal-notify``
=================  ====================  ==========================

The client's policy may only *encrypt* with these keys; each consumer's policy
may only *decrypt* with its own. The orchestrator, validate and inventory
carry and store the sealed strings without being able to read them (validate
checks that they are sealed and stores them as given in
``app.customer_contacts``). This is on top of the payload codec: a reader of
history with the payload-reader policy sees the order, but its sensitive
fields still sealed.

Each field is sealed with the context ``order:<order id>:<field>`` (the seal
keys are derived keys): a sealed value opens only for the order *and the field*
it was sealed for, so a sealed email moved into ``customer_name`` (both sealed
to notify) does not open, nor does a payment token copied into another order.

Transition: values sealed before per-field contexts (context ``order:<id>``)
are in the history of workflows started before the upgrade and in
``app.customer_contacts``. While ``ORDERS_SEAL_ACCEPT_LEGACY`` is true (the
default) a value that does not open with its field's context is tried once
more with the old order-only context. Set it to false once no order sealed
before the upgrade will be processed again (open workflows finished, stored
contacts re-sealed or no longer needed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from typing import Any

from temporalio.exceptions import ApplicationError

from orders_shared.codec import TransitClient, TransitRejected
from orders_shared.contracts.common import Order, OrderLine
from orders_shared.order_input import OrderInputError, check_order

SEALED_FIELDS: dict[str, str] = {
    "payment_token": "payment",
    "shipping_address": "fulfill",
    "email": "notify",
    "customer_name": "notify",
}
"""Order field -> the service that consumes (and alone may open) it."""

MAX_SEALED = 4096
_SEALED_RE = re.compile(r"vault:v[1-9][0-9]{0,8}:[A-Za-z0-9+/]+={0,2}")

# Values that satisfy order_input's rules, to check the rest of a sealed order.
_PLACEHOLDERS: dict[str, Any] = {
    "payment_token": "tok_sealed",
    "shipping_address": "sealed",
    "email": "sealed@sealed.invalid",
    "customer_name": "sealed",
}


class SealedFieldError(ValueError):
    """A sealed field cannot be opened: it is not sealed, or sealed to another key,
    or altered. Not retryable (the same value fails every time)."""


def seal_key(service: str) -> str:
    """The Transit key fields for ``service`` are sealed with (ops.policies names the same)."""
    if service not in set(SEALED_FIELDS.values()):
        raise KeyError(f"service {service!r} consumes no sealed field")
    return f"orders-seal-{service}"


def is_sealed(value: str) -> bool:
    return len(value) <= MAX_SEALED and _SEALED_RE.fullmatch(value) is not None


def is_sealed_order(order: Order) -> bool:
    return all(is_sealed(getattr(order, f)) for f in SEALED_FIELDS)


async def seal_order(order: Order, transit: TransitClient) -> Order:
    """``order`` with every sensitive field sealed to its consumer (one Transit call each).

    The order is checked first: after sealing nobody upstream of the consumer
    can check a field's shape any more. Already sealed fields are kept.
    """
    fields = [f for f in SEALED_FIELDS if not is_sealed(getattr(order, f))]
    done: dict[str, Any] = {f: _PLACEHOLDERS[f] for f in SEALED_FIELDS if f not in fields}
    check_order(dataclasses.replace(order, **done))
    sealed = await asyncio.gather(
        *(
            transit.encrypt(
                seal_key(SEALED_FIELDS[f]),
                getattr(order, f).encode(),
                seal_context(order.order_id, f),
            )
            for f in fields
        )
    )
    changes: dict[str, Any] = dict(zip(fields, sealed, strict=True))
    return dataclasses.replace(order, **changes)


def check_sealed_order(order: Order) -> None:
    """Validate's check: every sensitive field is sealed, everything else follows the rules.

    Raises :class:`OrderInputError` (naming the field, never the value).
    """
    for field, service in SEALED_FIELDS.items():
        if not is_sealed(getattr(order, field)):
            raise OrderInputError(
                field,
                f"must be sealed to the {service} service (Transit key {seal_key(service)}); "
                "plain values are refused: submit with orders_shared.client.submit_order",
            )
    check_order(dataclasses.replace(order, **_PLACEHOLDERS))


def seal_context(order_id: str, field: str) -> bytes:
    """What a sealed field is bound to: its order and its field. The seal keys are derived
    keys, so a field opens only for the order and field it was sealed for; copied into
    another order (say a payment token seen in history) or into another field of the same
    consumer (an email as the customer name), it does not open."""
    if field not in SEALED_FIELDS:
        raise KeyError(f"{field!r} is not a sealed field ({', '.join(SEALED_FIELDS)})")
    return f"order:{order_id}:{field}".encode()


def legacy_seal_context(order_id: str) -> bytes:
    """The context values were sealed with before per-field contexts (order only)."""
    return f"order:{order_id}".encode()


SEAL_ACCEPT_LEGACY_ENV = "ORDERS_SEAL_ACCEPT_LEGACY"


def accept_legacy_seals() -> bool:
    """``ORDERS_SEAL_ACCEPT_LEGACY`` (default true): also open values sealed to the order only."""
    raw = os.environ.get(SEAL_ACCEPT_LEGACY_ENV, "").strip().lower()
    if raw in ("", "1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{SEAL_ACCEPT_LEGACY_ENV}={raw!r} is not a boolean (true/false)")


_TEMPLATE = Order(
    order_id="template",
    customer_id="template",
    lines=(OrderLine("TEMPLATE-1", 1),),
    **_PLACEHOLDERS,
)


def check_opened(field: str, value: str) -> None:
    """The rules ``parse_order`` applies to ``field``, applied again once it is open.

    Whoever may seal can seal anything: the consumer is the first to see the
    value, so it checks it before acting on it (an email with a line break would
    be a header injection in whatever sends it)."""
    changes: dict[str, Any] = {field: value}
    try:
        check_order(dataclasses.replace(_TEMPLATE, **changes))
    except OrderInputError as bad:
        raise SealedFieldError(f"the opened field {bad.field} {bad.rule}") from None


async def open_field(
    transit: TransitClient,
    service: str,
    value: str,
    *,
    order_id: str,
    field: str,
    accept_legacy: bool | None = None,
) -> str:
    """Open ``field`` of order ``order_id``, sealed to ``service``, with the caller's identity.

    :class:`SealedFieldError` when the value is not this field sealed to this
    service for this order; Vault being down
    (:class:`orders_shared.codec.TransitUnavailable`) or refusing the identity
    (:class:`orders_shared.codec.TransitDenied`, a policy problem) propagate, so
    the activity is retried. ``accept_legacy`` (default
    ``ORDERS_SEAL_ACCEPT_LEGACY``): also try the old order-only context.
    """
    if SEALED_FIELDS.get(field) != service:
        raise SealedFieldError(f"the field {field} is not sealed to the {service} service")
    if not is_sealed(value):
        raise SealedFieldError(f"the field {field} is not sealed to the {service} service")
    if accept_legacy is None:
        accept_legacy = accept_legacy_seals()
    key = seal_key(service)
    plain: bytes | None = None
    try:
        plain = await transit.decrypt(key, value, seal_context(order_id, field))
    except TransitRejected as exc:
        rejected = exc
    if plain is None and accept_legacy:
        try:
            plain = await transit.decrypt(key, value, legacy_seal_context(order_id))
        except TransitRejected:
            pass
    if plain is None:
        raise SealedFieldError(
            f"the field {field} does not open with {key} ({rejected}): sealed to another "
            "service, order or field, or altered"
        )
    try:
        text = plain.decode()
    except UnicodeDecodeError:
        raise SealedFieldError("the opened field is not text") from None
    check_opened(field, text)
    return text


SEALED_FIELD_INVALID = "SealedFieldInvalid"
"""Error type of an activity that was given a field it cannot open (never retried)."""


async def open_in_activity(
    transit: TransitClient, service: str, value: str, *, order_id: str, field: str
) -> str:
    """:func:`open_field` for activity code: a field that cannot be opened is a
    non-retryable ``ApplicationError`` of type :data:`SEALED_FIELD_INVALID`;
    infrastructure failures stay retryable."""
    try:
        return await open_field(transit, service, value, order_id=order_id, field=field)
    except SealedFieldError as exc:
        raise ApplicationError(str(exc), type=SEALED_FIELD_INVALID, non_retryable=True) from None
