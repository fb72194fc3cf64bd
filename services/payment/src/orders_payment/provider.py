"""The payment provider behind a small interface, and a deterministic simulator.

Real providers take an idempotency key with every charge and refund and return
the first result for a repeated key; the activities rely on that, so a retry
after a crash between "provider charged" and "row recorded" does not charge
twice. The simulator honours the same contract by being a pure function of
the request: the same key always yields the same reference and outcome.

Simulator behaviour is chosen by the payment token (test cards, as real
providers have them):

* ``tok_decline...``   -> declined
* ``tok_transient...`` -> :class:`ProviderUnavailable` on the first
  ``transient_failures`` attempts of the activity, then approved
* any other ``tok_...`` -> approved
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from temporalio import activity


class ProviderUnavailable(Exception):
    """The provider could not be reached or answered 5xx: retryable, the
    outcome is unknown and the idempotency key makes the retry safe."""


@dataclass(frozen=True)
class ChargeRequest:
    idempotency_key: str
    payment_token: str
    amount_cents: int
    currency: str


@dataclass(frozen=True)
class ChargeResult:
    status: Literal["approved", "declined"]
    provider_ref: str


@dataclass(frozen=True)
class RefundRequest:
    """Refund what was charged under ``charge_idempotency_key``. ``charge_ref`` is
    None when our record of the charge is still pending (we crashed or lost the
    database between the provider's answer and our record): the provider is then
    asked by key, as real providers allow, and refunds whatever it charged."""

    idempotency_key: str
    charge_idempotency_key: str
    charge_ref: str | None
    amount_cents: int
    currency: str


@dataclass(frozen=True)
class RefundResult:
    provider_ref: str


class PaymentProvider(Protocol):
    async def charge(self, request: ChargeRequest) -> ChargeResult: ...

    async def refund(self, request: RefundRequest) -> RefundResult: ...


def _activity_attempt() -> int:
    """The current activity attempt (1 outside an activity, e.g. in unit tests)."""
    return activity.info().attempt if activity.in_activity() else 1


def _ref(prefix: str, key: str) -> str:
    return f"{prefix}_{hashlib.sha256(key.encode()).hexdigest()[:24]}"


class SimulatedProvider:
    """Deterministic stand-in for a card provider; no network, no state."""

    def __init__(
        self, *, transient_failures: int = 2, attempt: Callable[[], int] = _activity_attempt
    ) -> None:
        self._transient_failures = transient_failures
        self._attempt = attempt

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        if request.amount_cents <= 0:
            raise ValueError("a charge needs a positive amount")
        token = request.payment_token
        if token.startswith("tok_transient") and self._attempt() <= self._transient_failures:
            raise ProviderUnavailable("payment provider temporarily unavailable (simulated)")
        status: Literal["approved", "declined"] = (
            "declined" if token.startswith("tok_decline") else "approved"
        )
        return ChargeResult(status=status, provider_ref=_ref("ch", request.idempotency_key))

    async def refund(self, request: RefundRequest) -> RefundResult:
        if request.amount_cents <= 0:
            raise ValueError("a refund needs a positive amount")
        return RefundResult(provider_ref=_ref("re", request.idempotency_key))
