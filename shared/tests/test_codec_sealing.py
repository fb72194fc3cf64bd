"""Field sealing without Vault: which field goes to whom, and what validate accepts."""

from __future__ import annotations

import dataclasses

import pytest
from temporalio.exceptions import ApplicationError

from orders_shared.codec import InMemoryTransit, TransitDenied
from orders_shared.contracts.common import Order, OrderLine
from orders_shared.order_input import OrderInputError
from orders_shared.sealing import (
    SEALED_FIELD_INVALID,
    SEALED_FIELDS,
    SealedFieldError,
    check_sealed_order,
    is_sealed,
    is_sealed_order,
    legacy_seal_context,
    open_field,
    open_in_activity,
    seal_context,
    seal_key,
    seal_order,
)

SEAL_KEYS = ("orders-seal-payment", "orders-seal-fulfill", "orders-seal-notify")


def order() -> Order:
    return Order(
        order_id="ord-1",
        customer_id="cust-1",
        customer_name="Ada Lovelace",
        email="ada@example.com",
        shipping_address="1 Main Street, 1000 Brussels",
        payment_token="tok_visa",
        lines=(OrderLine("WIDGET-1", 2),),
    )


def test_field_to_consumer_map() -> None:
    assert SEALED_FIELDS == {
        "payment_token": "payment",
        "shipping_address": "fulfill",
        "email": "notify",
        "customer_name": "notify",
    }
    assert {seal_key(s) for s in SEALED_FIELDS.values()} == set(SEAL_KEYS)
    with pytest.raises(KeyError, match="validate"):
        seal_key("validate")


async def test_seal_then_each_consumer_opens_its_own_fields() -> None:
    transit = InMemoryTransit(*SEAL_KEYS)
    sealed = await seal_order(order(), transit)
    assert is_sealed_order(sealed)
    assert not is_sealed_order(order())
    assert (sealed.order_id, sealed.customer_id, sealed.lines) == ("ord-1", "cust-1", order().lines)
    check_sealed_order(sealed)  # validate accepts it as given
    for field, service in SEALED_FIELDS.items():
        opened = await open_field(
            transit, service, getattr(sealed, field), order_id="ord-1", field=field
        )
        assert opened == getattr(order(), field)
    # sealed to payment, it does not open with the notify key
    with pytest.raises(SealedFieldError, match="orders-seal-notify"):
        await open_field(transit, "notify", sealed.payment_token, order_id="ord-1", field="email")
    # a field is opened only by its own consumer
    with pytest.raises(SealedFieldError, match="not sealed to the notify"):
        await open_field(
            transit, "notify", sealed.payment_token, order_id="ord-1", field="payment_token"
        )
    # bound to its order: copied into another order, it does not open
    with pytest.raises(SealedFieldError, match="another service, order or field"):
        await open_field(
            transit, "payment", sealed.payment_token, order_id="ord-2", field="payment_token"
        )
    # sealing twice keeps what is sealed already
    assert await seal_order(sealed, transit) == sealed


async def test_plain_or_invalid_orders_are_refused_by_validate() -> None:
    with pytest.raises(OrderInputError) as info:
        check_sealed_order(order())
    assert info.value.field == "payment_token"
    assert "must be sealed to the payment service" in info.value.rule
    sealed = await seal_order(order(), InMemoryTransit(*SEAL_KEYS))
    with pytest.raises(OrderInputError, match="lines"):
        check_sealed_order(dataclasses.replace(sealed, lines=()))
    with pytest.raises(OrderInputError, match="quantity"):
        await seal_order(
            dataclasses.replace(order(), lines=(OrderLine("A-1", 0),)), InMemoryTransit(*SEAL_KEYS)
        )


async def test_open_in_activity_errors() -> None:
    transit = InMemoryTransit(*SEAL_KEYS)
    with pytest.raises(ApplicationError) as info:
        await open_in_activity(
            transit, "payment", "tok_visa", order_id="ord-1", field="payment_token"
        )
    assert info.value.type == SEALED_FIELD_INVALID
    assert info.value.non_retryable
    assert "tok_visa" not in str(info.value)
    sealed = await seal_order(order(), transit)
    transit.denied.add(("decrypt", "orders-seal-payment"))
    with pytest.raises(TransitDenied):  # a policy problem: retried, not a business outcome
        await open_in_activity(
            transit, "payment", sealed.payment_token, order_id="ord-1", field="payment_token"
        )


def test_is_sealed() -> None:
    assert is_sealed("vault:v1:QUJD")
    assert is_sealed("vault:v12:QUJDRA==")
    for value in (
        "tok_visa",
        "vault:v0:QUJD",
        "vault:v1:",
        "vault:v1:QU JD",
        "x" + "vault:v1:QUJD",
    ):
        assert not is_sealed(value), value


async def test_an_opened_field_must_follow_the_order_rules() -> None:
    # whoever may seal can seal anything: the consumer checks what it opened
    transit = InMemoryTransit(*SEAL_KEYS)
    injected = await transit.encrypt(
        "orders-seal-notify",
        b"a@example.com\r\nBcc: all@example.com",
        seal_context("ord-1", "email"),
    )
    with pytest.raises(ApplicationError) as info:
        await open_in_activity(transit, "notify", injected, order_id="ord-1", field="email")
    assert info.value.type == SEALED_FIELD_INVALID and info.value.non_retryable
    assert "Bcc" not in str(info.value)  # the message names the rule, not the value
    fine = await transit.encrypt(
        "orders-seal-notify", b"a@example.com", seal_context("ord-1", "email")
    )
    opened = await open_in_activity(transit, "notify", fine, order_id="ord-1", field="email")
    assert opened == "a@example.com"


# --------------------------------------------------------------------------- per-field context


async def test_a_sealed_email_does_not_open_as_the_customer_name() -> None:
    transit = InMemoryTransit(*SEAL_KEYS)
    sealed = await seal_order(order(), transit)
    assert seal_context("ord-1", "email") == b"order:ord-1:email"
    swapped = dataclasses.replace(sealed, customer_name=sealed.email)
    for accept_legacy in (True, False):
        with pytest.raises(SealedFieldError, match="customer_name does not open"):
            await open_field(
                transit,
                "notify",
                swapped.customer_name,
                order_id="ord-1",
                field="customer_name",
                accept_legacy=accept_legacy,
            )
    with pytest.raises(KeyError, match="not a sealed field"):
        seal_context("ord-1", "customer_id")


async def test_values_sealed_before_per_field_contexts_open_during_the_transition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    transit = InMemoryTransit(*SEAL_KEYS)
    old = await transit.encrypt("orders-seal-notify", b"ada@example.com", b"order:ord-1")
    assert legacy_seal_context("ord-1") == b"order:ord-1"
    opened = await open_field(transit, "notify", old, order_id="ord-1", field="email")
    assert opened == "ada@example.com"
    # still bound to its order
    with pytest.raises(SealedFieldError):
        await open_field(transit, "notify", old, order_id="ord-2", field="email")
    # after the transition: refused
    monkeypatch.setenv("ORDERS_SEAL_ACCEPT_LEGACY", "false")
    with pytest.raises(SealedFieldError, match="email does not open"):
        await open_field(transit, "notify", old, order_id="ord-1", field="email")
    monkeypatch.setenv("ORDERS_SEAL_ACCEPT_LEGACY", "sometimes")
    with pytest.raises(ValueError, match="ORDERS_SEAL_ACCEPT_LEGACY"):
        await open_field(transit, "notify", old, order_id="ord-1", field="email")
