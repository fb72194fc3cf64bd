"""Envelope sealing (format ``orders-seal/1``): Transit calls per order, bindings, old values."""

from __future__ import annotations

from typing import Any

import pytest

from orders_shared import sealing
from orders_shared.codec import InMemoryTransit, TransitDenied
from orders_shared.contracts.common import Order, OrderLine
from orders_shared.sealing import (
    DATA_KEY_CONTEXT,
    SEALED_FIELDS,
    SealedFieldError,
    check_sealed_order,
    forget_seal_keys,
    is_sealed,
    open_field,
    seal_context,
    seal_order,
    seal_vault_calls,
)

SEAL_KEYS = ("orders-seal-payment", "orders-seal-fulfill", "orders-seal-notify")


class Identity:
    """Another process's Transit client on the same keys (its own cache, its own denials)."""

    def __init__(self, keys: InMemoryTransit, *, denied: set[tuple[str, str]]) -> None:
        self.keys = keys
        self.denied = denied
        self.calls: list[tuple[str, str]] = []

    def _check(self, op: str, key: str) -> None:
        self.calls.append((op, key))
        if (op, key) in self.denied:
            raise TransitDenied(f"Vault refused {op} (403: permission denied)")

    async def datakey(self, key_name: str) -> tuple[bytes, str]:
        self._check("datakey", key_name)
        return await self.keys.datakey(key_name)

    async def encrypt(self, key_name: str, plaintext: bytes, context: bytes | None = None) -> str:
        self._check("encrypt", key_name)
        return await self.keys.encrypt(key_name, plaintext, context)

    async def decrypt(self, key_name: str, ciphertext: str, context: bytes | None = None) -> bytes:
        self._check("decrypt", key_name)
        return await self.keys.decrypt(key_name, ciphertext, context)

    async def rewrap(self, key_name: str, ciphertext: str) -> str:
        self._check("rewrap", key_name)
        return await self.keys.rewrap(key_name, ciphertext)


def order(order_id: str = "ord-1") -> Order:
    return Order(
        order_id=order_id,
        customer_id="cust-1",
        customer_name="Ada Lovelace",
        email="ada@example.com",
        shipping_address="1 Main Street, 1000 Brussels",
        payment_token="tok_visa",
        lines=(OrderLine("WIDGET-1", 2),),
    )


def deployment() -> tuple[Identity, dict[str, Identity]]:
    """The client may only encrypt with seal keys; each consumer only decrypt its own."""
    keys = InMemoryTransit(*SEAL_KEYS)
    client = Identity(keys, denied={(op, k) for op in ("decrypt", "datakey") for k in SEAL_KEYS})
    consumers = {
        s: Identity(
            keys,
            denied={("encrypt", k) for k in SEAL_KEYS}
            | {("decrypt", k) for k in SEAL_KEYS if k != f"orders-seal-{s}"},
        )
        for s in ("payment", "fulfill", "notify")
    }
    return client, consumers


async def test_steady_state_costs_no_transit_call_per_order() -> None:
    client, consumers = deployment()
    n = 200
    for i in range(n):
        sealed = await seal_order(order(f"ord-{i}"), client)
        check_sealed_order(sealed)  # validate accepts the envelope format
        for field, service in SEALED_FIELDS.items():
            value = getattr(sealed, field)
            assert value.startswith("orders-seal/1.vault:v1:") and is_sealed(value)
            opened = await open_field(
                consumers[service], service, value, order_id=f"ord-{i}", field=field
            )
            assert opened == getattr(order(), field)
    # one wrap per seal key (client), one unwrap per seal key (its consumer): 6 for 200 orders
    assert sorted(client.calls) == sorted(("encrypt", k) for k in SEAL_KEYS)
    for service, consumer in consumers.items():
        assert consumer.calls == [("decrypt", f"orders-seal-{service}")]
    assert seal_vault_calls(client) == 3


async def test_only_the_owning_service_opens_a_field() -> None:
    client, consumers = deployment()
    sealed = await seal_order(order(), client)
    # the client wrapped the data key but cannot unwrap it
    with pytest.raises(TransitDenied):
        await open_field(
            client, "payment", sealed.payment_token, order_id="ord-1", field="payment_token"
        )
    # notify cannot unwrap payment's data key (Vault refuses decrypt on orders-seal-payment) ...
    notify = consumers["notify"]
    with pytest.raises(SealedFieldError, match="not sealed to the notify"):
        await open_field(
            notify, "notify", sealed.payment_token, order_id="ord-1", field="payment_token"
        )
    # ... nor open it passed off as one of its own fields (unwrapped with its own key: rejected)
    with pytest.raises(SealedFieldError, match="does not open with orders-seal-notify"):
        await open_field(notify, "notify", sealed.payment_token, order_id="ord-1", field="email")


async def test_bound_to_order_and_field_even_with_the_key_cached() -> None:
    client, consumers = deployment()
    sealed = await seal_order(order(), client)
    notify = consumers["notify"]
    assert await open_field(notify, "notify", sealed.email, order_id="ord-1", field="email")
    # the data key is cached now: the bindings are the AES-GCM associated data, not Vault's
    with pytest.raises(SealedFieldError, match="another service, order or field"):
        await open_field(notify, "notify", sealed.email, order_id="ord-1", field="customer_name")
    with pytest.raises(SealedFieldError, match="another service, order or field"):
        await open_field(notify, "notify", sealed.email, order_id="ord-2", field="email")
    # altered ciphertext
    head, wrapped, data = sealed.email.split(".")
    # a character in the middle: all six of its bits are data (near the end, the bits
    # beside the padding are ignored by the decoder and the change could be a no-op)
    mid = len(data) // 2
    flipped = data[:mid] + ("A" if data[mid] != "A" else "B") + data[mid + 1 :]
    with pytest.raises(SealedFieldError):
        await open_field(
            notify, "notify", f"{head}.{wrapped}.{flipped}", order_id="ord-1", field="email"
        )
    assert notify.calls == [("decrypt", "orders-seal-notify")]


async def test_a_wrapped_data_key_never_opens_as_a_field() -> None:
    client, consumers = deployment()
    sealed = await seal_order(order(), client)
    wrapped = sealed.email.split(".")[1]  # vault:v1:... under orders-seal-notify
    assert is_sealed(wrapped)
    with pytest.raises(SealedFieldError):
        await open_field(consumers["notify"], "notify", wrapped, order_id="ord-1", field="email")
    # and a field sealed the old way never unwraps as a data key
    assert DATA_KEY_CONTEXT != seal_context("ord-1", "email")


async def test_old_transit_sealed_values_keep_opening() -> None:
    keys = InMemoryTransit(*SEAL_KEYS)
    old = await keys.encrypt(
        "orders-seal-payment", b"tok_visa", seal_context("ord-1", "payment_token")
    )
    assert (
        await open_field(keys, "payment", old, order_id="ord-1", field="payment_token")
        == "tok_visa"
    )
    with pytest.raises(SealedFieldError):
        await open_field(keys, "payment", old, order_id="ord-2", field="payment_token")


async def test_data_keys_are_renewed_after_their_age(monkeypatch: pytest.MonkeyPatch) -> None:
    client, consumers = deployment()
    now = [1000.0]
    monkeypatch.setattr(sealing.time, "monotonic", lambda: now[0])
    first = await seal_order(order(), client)
    now[0] += sealing.SEAL_KEY_MAX_AGE + 1
    second = await seal_order(order(), client)
    assert first.email.split(".")[1] != second.email.split(".")[1]
    assert len(client.calls) == 6
    forget_seal_keys(client)
    await seal_order(order(), client)
    assert len(client.calls) == 9
    for sealed in (first, second):
        assert await open_field(
            consumers["fulfill"],
            "fulfill",
            sealed.shipping_address,
            order_id="ord-1",
            field="shipping_address",
        )


def test_envelope_shape() -> None:
    for value in (
        "orders-seal/1.vault:v1:QUJD.QUJD",
        "orders-seal/1.vault:v7:QUJD==.QU-_JD",
    ):
        assert is_sealed(value), value
    for value in (
        "orders-seal/1.QUJD.QUJD",
        "orders-seal/2.vault:v1:QUJD.QUJD",
        "orders-seal/1.vault:v1:QUJD.",
        "orders-seal/1.vault:v1:QUJD.QU JD",
        "orders-seal/1.vault:v1:QUJD.QUJD" + "A" * 5000,
    ):
        assert not is_sealed(value), value


async def test_concurrent_first_seals_wrap_once() -> None:
    import asyncio

    client, consumers = deployment()
    orders: list[Any] = await asyncio.gather(
        *(seal_order(order(f"o{i}"), client) for i in range(50))
    )
    assert len(client.calls) == 3
    await asyncio.gather(
        *(
            open_field(
                consumers["payment"],
                "payment",
                o.payment_token,
                order_id=f"o{i}",
                field="payment_token",
            )
            for i, o in enumerate(orders)
        )
    )
    assert consumers["payment"].calls == [("decrypt", "orders-seal-payment")]
