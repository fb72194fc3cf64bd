"""Field sealing: each sensitive order field readable only by the service that consumes it.

The client checks the order (:func:`orders_shared.order_input.parse_order`),
then seals each sensitive field to its consumer's Transit key, and submits the
order carrying the sealed strings:

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

Envelope (format ``orders-seal/1``, the default since the benchmark showed 8
Transit calls per order): the client makes a 256-bit data key per seal key
(``os.urandom``), wraps it with Transit ``encrypt`` under the consumer's seal
key (context ``orders-seal/1:data-key``), and seals each field locally with
AES-256-GCM, associated data = (format, seal key, order id, field). The sealed
string is ``orders-seal/1.<wrapped data key>.<base64url(nonce || ciphertext)>``.
The consumer unwraps the data key with Transit ``decrypt`` on its own seal key
and caches it; the client caches the key it made. Both caches have the payload
codec's bounds (:data:`SEAL_KEY_MAX_AGE`, :data:`SEAL_KEY_MAX_USES`,
:data:`SEAL_CACHE_SIZE`), so in steady state sealing costs no Vault call per
order. Guarantees kept: per service (only the consumer's policy may decrypt its
seal key, so only it unwraps the data key; the client may wrap, never unwrap),
per order and per field (associated data). See docs/payload-keys.md.

Older values (``vault:v1:...``, one Transit ``encrypt`` per field with the
context below) keep opening.

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
import base64
import binascii
import dataclasses
import os
import re
import time
import weakref
from collections import OrderedDict
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
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

SEAL_FORMAT = "orders-seal/1"
"""Envelope-sealed values: ``orders-seal/1.<wrapped data key>.<base64url(nonce||ct)>``."""
_ENVELOPE_RE = re.compile(
    r"orders-seal/1\.(vault:v[1-9][0-9]{0,8}:[A-Za-z0-9+/]+={0,2})\.([A-Za-z0-9_-]+={0,2})"
)
DATA_KEY_CONTEXT = b"orders-seal/1:data-key"
"""Transit context a seal data key is wrapped with (never an ``order:...`` context, so a
wrapped data key never opens as a field, nor a field as a data key)."""
_NONCE = 12
_TAG = 16

SEAL_KEY_MAX_AGE = 300.0
"""Seconds a data key seals new fields, and an unwrapped one stays cached (the payload
codec's ``max_key_age``)."""
SEAL_KEY_MAX_USES = 100_000
"""Fields one data key seals or opens before a new one is made / it is unwrapped again."""
SEAL_CACHE_SIZE = 1024
"""Unwrapped data keys a consumer keeps (least recently used dropped first)."""

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
    """Sealed by either format: the envelope (``orders-seal/1.``) or one Transit call
    (``vault:v<n>:``). Says nothing about whether it opens."""
    if len(value) > MAX_SEALED:
        return False
    return _SEALED_RE.fullmatch(value) is not None or _ENVELOPE_RE.fullmatch(value) is not None


@dataclasses.dataclass
class _SealKey:
    aead: AESGCM
    created: float
    uses: int = 0


class _SealCache:
    """One Transit client's seal data keys: the current one per seal key (to seal) and
    the unwrapped ones (to open). Kept per Transit client object, so a key one identity
    made or unwrapped is never used through another identity's client."""

    def __init__(self) -> None:
        self.current: dict[str, tuple[_SealKey, str]] = {}
        self.unwrapped: OrderedDict[tuple[str, str], _SealKey] = OrderedDict()
        self.locks: dict[Any, asyncio.Lock] = {}
        self.vault_calls = 0

    def fresh(self, entry: _SealKey) -> bool:
        return (
            entry.uses < SEAL_KEY_MAX_USES and time.monotonic() - entry.created < SEAL_KEY_MAX_AGE
        )

    def lock(self, what: Any) -> asyncio.Lock:
        return self.locks.setdefault(what, asyncio.Lock())


_CACHES: weakref.WeakKeyDictionary[Any, _SealCache] = weakref.WeakKeyDictionary()


def _cache(transit: TransitClient) -> _SealCache:
    cache = _CACHES.get(transit)
    if cache is None:
        cache = _CACHES[transit] = _SealCache()
    return cache


def forget_seal_keys(transit: TransitClient) -> None:
    """Drop the seal data keys cached for ``transit`` (after a seal key rotation)."""
    _CACHES.pop(transit, None)


def seal_vault_calls(transit: TransitClient) -> int:
    """Transit calls sealing and opening made through ``transit`` (wraps + unwraps)."""
    cache = _CACHES.get(transit)
    return 0 if cache is None else cache.vault_calls


def _seal_aad(key_name: str, order_id: str, field: str) -> bytes:
    out = bytearray()
    for part in (SEAL_FORMAT.encode(), key_name.encode(), order_id.encode(), field.encode()):
        out += len(part).to_bytes(4, "big") + part
    return bytes(out)


async def _sealing_key(transit: TransitClient, key_name: str) -> tuple[_SealKey, str]:
    cache = _cache(transit)
    current = cache.current.get(key_name)
    if current is None or not cache.fresh(current[0]):
        async with cache.lock(key_name):
            current = cache.current.get(key_name)
            if current is None or not cache.fresh(current[0]):
                plain = AESGCM.generate_key(bit_length=256)
                cache.vault_calls += 1
                wrapped = await transit.encrypt(key_name, plain, DATA_KEY_CONTEXT)
                current = (_SealKey(AESGCM(plain), time.monotonic()), wrapped)
                cache.current[key_name] = current
    current[0].uses += 1
    return current


async def seal_field(transit: TransitClient, order_id: str, field: str, value: str) -> str:
    """``value`` of ``field`` of order ``order_id`` sealed to the field's consumer
    (envelope format; a Transit call only when a new data key is due)."""
    key_name = seal_key(SEALED_FIELDS[field])
    entry, wrapped = await _sealing_key(transit, key_name)
    nonce = os.urandom(_NONCE)
    sealed = entry.aead.encrypt(nonce, value.encode(), _seal_aad(key_name, order_id, field))
    data = base64.urlsafe_b64encode(nonce + sealed).decode()
    return f"{SEAL_FORMAT}.{wrapped}.{data}"


async def _opening_key(transit: TransitClient, key_name: str, wrapped: str) -> _SealKey:
    cache = _cache(transit)
    slot = (key_name, wrapped)
    entry = cache.unwrapped.get(slot)
    if entry is None or not cache.fresh(entry):
        async with cache.lock(slot):
            entry = cache.unwrapped.get(slot)
            if entry is None or not cache.fresh(entry):
                cache.vault_calls += 1
                plain = await transit.decrypt(key_name, wrapped, DATA_KEY_CONTEXT)
                if len(plain) != 32:
                    raise TransitRejected("the unwrapped seal data key is not 256 bits")
                entry = _SealKey(AESGCM(plain), time.monotonic())
                cache.unwrapped[slot] = entry
                while len(cache.unwrapped) > SEAL_CACHE_SIZE:
                    cache.unwrapped.popitem(last=False)
        cache.locks.pop(slot, None)
    cache.unwrapped.move_to_end(slot)
    entry.uses += 1
    return entry


async def _open_envelope(
    transit: TransitClient, key_name: str, match: re.Match[str], order_id: str, field: str
) -> bytes:
    """Raises TransitRejected when the value does not open (wrong key, order, field, altered)."""
    key = await _opening_key(transit, key_name, match.group(1))
    try:
        raw = base64.urlsafe_b64decode(match.group(2))
    except (binascii.Error, ValueError):
        raise TransitRejected("the sealed data is not base64url") from None
    if len(raw) < _NONCE + _TAG:
        raise TransitRejected("the sealed data is truncated")
    try:
        return key.aead.decrypt(raw[:_NONCE], raw[_NONCE:], _seal_aad(key_name, order_id, field))
    except InvalidTag:
        raise TransitRejected("message authentication failed") from None


def is_sealed_order(order: Order) -> bool:
    return all(is_sealed(getattr(order, f)) for f in SEALED_FIELDS)


async def seal_order(order: Order, transit: TransitClient) -> Order:
    """``order`` with every sensitive field sealed to its consumer (envelope format:
    a Transit call only when a seal key's cached data key is due, see the module doc).

    The order is checked first: after sealing nobody upstream of the consumer
    can check a field's shape any more. Already sealed fields are kept.
    """
    fields = [f for f in SEALED_FIELDS if not is_sealed(getattr(order, f))]
    done: dict[str, Any] = {f: _PLACEHOLDERS[f] for f in SEALED_FIELDS if f not in fields}
    check_order(dataclasses.replace(order, **done))
    sealed = await asyncio.gather(
        *(seal_field(transit, order.order_id, f, getattr(order, f)) for f in fields)
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
    envelope = _ENVELOPE_RE.fullmatch(value)
    try:
        if envelope is not None:
            plain = await _open_envelope(transit, key, envelope, order_id, field)
        else:
            plain = await transit.decrypt(key, value, seal_context(order_id, field))
    except TransitRejected as exc:
        rejected = exc
    if plain is None and accept_legacy and envelope is None:
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
