"""The payment simulator: its answer is decided by the token and repeats for the same key."""

from __future__ import annotations

import pytest

from orders_payment.provider import (
    ChargeRequest,
    ProviderUnavailable,
    RefundRequest,
    SimulatedProvider,
)


def charge(token: str, key: str = "ord-1:charge") -> ChargeRequest:
    return ChargeRequest(
        idempotency_key=key, payment_token=token, amount_cents=1234, currency="EUR"
    )


async def test_an_ordinary_token_is_approved_and_repeatable() -> None:
    provider = SimulatedProvider()
    first = await provider.charge(charge("tok_visa"))
    again = await provider.charge(charge("tok_visa"))
    assert first.status == "approved"
    assert first == again  # same idempotency key, same reference
    other = await provider.charge(charge("tok_visa", key="ord-2:charge"))
    assert other.provider_ref != first.provider_ref


async def test_a_decline_token_is_declined() -> None:
    result = await SimulatedProvider().charge(charge("tok_decline_stolen"))
    assert result.status == "declined"


async def test_a_transient_token_fails_until_the_given_attempt() -> None:
    attempt = 0

    def current() -> int:
        return attempt

    provider = SimulatedProvider(transient_failures=2, attempt=current)
    for attempt in (1, 2):  # noqa: B007 (read by current())
        with pytest.raises(ProviderUnavailable):
            await provider.charge(charge("tok_transient"))
    attempt = 3
    assert (await provider.charge(charge("tok_transient"))).status == "approved"


async def test_refund_is_deterministic_per_key() -> None:
    provider = SimulatedProvider()
    req = RefundRequest(
        idempotency_key="ord-1:refund",
        charge_idempotency_key="ord-1:charge",
        charge_ref="ch_x",
        amount_cents=1234,
        currency="EUR",
    )
    assert await provider.refund(req) == await provider.refund(req)


async def test_non_positive_amounts_are_a_bug_not_a_decline() -> None:
    with pytest.raises(ValueError, match="positive"):
        await SimulatedProvider().charge(
            ChargeRequest(
                idempotency_key="k", payment_token="tok_visa", amount_cents=0, currency="EUR"
            )
        )
