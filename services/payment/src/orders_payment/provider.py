"""The card-payment provider behind a small interface, and its HTTP adapter.

What the activities need from any provider (a real adapter must honour all of
it; see the service README):

* **charge** with an idempotency key: a repeated key returns the first result,
  never a second charge;
* **lookup** of a charge by that key: what the provider actually holds (the
  refund asks before refunding, and refunds only that);
* **refund** of a whole charge, named by the charge's idempotency key, with an
  idempotency key of its own; a refund of an unknown, declined or
  already-refunded charge is *refused* (:class:`RefundRefused`), never done;
* bounded time: every call has a timeout; a timeout, a dropped connection or a
  5xx is :class:`ProviderUnavailable` (the outcome is unknown, the key makes
  the retry safe).

The adapter is chosen by configuration (``ORDERS_PAYMENT_PROVIDER``):
``simulator`` is the local provider of ``orders_ops.provider_sim`` (started by
the stack), spoken to with :class:`HttpCardProvider` over HTTP.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiohttp

from orders_shared.config import ConfigError


class ProviderUnavailable(Exception):
    """The provider could not be reached in time, dropped the answer or answered 5xx:
    retryable, the outcome is unknown and the idempotency key makes the retry safe."""


class ProviderProtocolError(Exception):
    """The provider answered something this adapter does not understand (a 4xx it
    should not send, a body without the fields it must have): a defect on one side
    or the other; retried like an outage so nothing is concluded from it."""


RefusalReason = Literal["unknown_charge", "not_charged", "already_refunded"]


class RefundRefused(Exception):
    """The provider refused the refund: no charge under the key (``unknown_charge``),
    the charge was declined (``not_charged``), or it is already refunded under another
    key (``already_refunded``). An answer, not an outage: retrying cannot change it."""

    def __init__(self, reason: RefusalReason) -> None:
        super().__init__(f"the provider refused the refund: {reason}")
        self.reason: RefusalReason = reason


@dataclass(frozen=True)
class ChargeRequest:
    idempotency_key: str
    payment_token: str
    amount_cents: int
    currency: str

    def __repr__(self) -> str:  # the token never reaches a log or a failure message
        return (
            f"ChargeRequest(idempotency_key={self.idempotency_key!r}, "
            f"amount_cents={self.amount_cents}, currency={self.currency!r})"
        )


@dataclass(frozen=True)
class ChargeResult:
    status: Literal["approved", "declined"]
    provider_ref: str


@dataclass(frozen=True)
class ProviderCharge:
    """A charge as the provider holds it (the answer to a lookup)."""

    provider_ref: str
    idempotency_key: str
    status: Literal["approved", "declined"]
    amount_cents: int
    currency: str
    refunded: bool


@dataclass(frozen=True)
class RefundRequest:
    """Refund, in full, what was charged under ``charge_idempotency_key``."""

    idempotency_key: str
    charge_idempotency_key: str


@dataclass(frozen=True)
class RefundResult:
    provider_ref: str
    amount_cents: int
    currency: str


class PaymentProvider(Protocol):
    async def charge(self, request: ChargeRequest) -> ChargeResult: ...

    async def lookup_charge(self, idempotency_key: str) -> ProviderCharge | None: ...

    async def refund(self, request: RefundRequest) -> RefundResult: ...


# --------------------------------------------------------------------------- configuration

PROVIDERS = ("simulator",)


@dataclass(frozen=True)
class ProviderConfig:
    """``ORDERS_PAYMENT_PROVIDER`` (``simulator``), ``ORDERS_PAYMENT_PROVIDER_URL`` and
    ``ORDERS_PAYMENT_PROVIDER_TIMEOUT`` (seconds per call, default 10; well under the
    activity's 30 s attempt timeout, so a slow provider fails the attempt, not the worker)."""

    kind: str
    url: str
    timeout: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProviderConfig:
        e = os.environ if env is None else env
        kind = e.get("ORDERS_PAYMENT_PROVIDER", "").strip()
        if kind not in PROVIDERS:
            shown = f"={kind!r}" if kind else " is not set"
            raise ConfigError(
                f"ORDERS_PAYMENT_PROVIDER{shown}: set it to the payment provider adapter "
                f"to use ({', '.join(PROVIDERS)})"
            )
        url = e.get("ORDERS_PAYMENT_PROVIDER_URL", "").strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                "ORDERS_PAYMENT_PROVIDER_URL must be the provider's http(s):// base URL "
                f"(got {url!r})"
            )
        raw = e.get("ORDERS_PAYMENT_PROVIDER_TIMEOUT", "").strip() or "10"
        try:
            timeout = float(raw)
        except ValueError:
            raise ConfigError(
                f"ORDERS_PAYMENT_PROVIDER_TIMEOUT={raw!r} is not a number of seconds"
            ) from None
        if not 0.5 <= timeout <= 25:
            raise ConfigError(
                f"ORDERS_PAYMENT_PROVIDER_TIMEOUT={timeout} is out of range: use 0.5 to 25 "
                "(below the activity's 30 s attempt timeout)"
            )
        return cls(kind=kind, url=url, timeout=timeout)


def provider_from_config(config: ProviderConfig) -> PaymentProvider:
    if config.kind == "simulator":
        return HttpCardProvider(config.url, timeout=config.timeout)
    raise ConfigError(f"no payment provider adapter named {config.kind!r}")  # pragma: no cover


# --------------------------------------------------------------------------- HTTP adapter


class HttpCardProvider:
    """A card API over HTTP (the shape of ``orders_ops.provider_sim``): ``POST
    /v1/charges`` and ``/v1/refunds`` with an ``Idempotency-Key`` header, ``GET
    /v1/charges?idempotency_key=``.

    One short-lived client session per call: no connection outlives an activity
    attempt or crosses event loops, and there is nothing to close at shutdown.
    """

    def __init__(self, base_url: str, *, timeout: float = 10.0, connect_timeout: float = 3.0):
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(connect_timeout, timeout))

    async def _call(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Idempotency-Key": key} if key is not None else {}
        what = f"payment provider {method} {path}"
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.request(
                    method, f"{self.base_url}{path}", json=body, params=params, headers=headers
                ) as resp,
            ):
                if resp.status >= 500:
                    raise ProviderUnavailable(f"{what}: HTTP {resp.status}; will retry")
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    raise ProviderProtocolError(
                        f"{what}: HTTP {resp.status} without a JSON body"
                    ) from None
                if not isinstance(data, dict):
                    raise ProviderProtocolError(f"{what}: the answer is not a JSON object")
                return resp.status, data
        except TimeoutError:
            raise ProviderUnavailable(f"{what}: no answer in time; will retry") from None
        except aiohttp.ClientError as exc:
            raise ProviderUnavailable(
                f"{what}: {type(exc).__name__} (no answer); will retry"
            ) from None

    @staticmethod
    def _rejected(path: str, status: int, data: dict[str, Any]) -> ProviderProtocolError:
        return ProviderProtocolError(
            f"payment provider {path}: HTTP {status} {data.get('error', 'error')}"
        )

    @staticmethod
    def _charge(data: dict[str, Any]) -> ProviderCharge:
        try:
            status = data["status"]
            if status not in ("approved", "declined"):
                raise ValueError(status)
            return ProviderCharge(
                provider_ref=str(data["id"]),
                idempotency_key=str(data["idempotency_key"]),
                status=status,
                amount_cents=int(data["amount_cents"]),
                currency=str(data["currency"]),
                refunded=data.get("refund_id") is not None,
            )
        except (KeyError, ValueError, TypeError):
            raise ProviderProtocolError(
                "payment provider: a charge without id, status, amount or currency"
            ) from None

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        if request.amount_cents <= 0:
            raise ValueError("a charge needs a positive amount")
        status, data = await self._call(
            "POST",
            "/v1/charges",
            key=request.idempotency_key,
            body={
                "payment_token": request.payment_token,
                "amount_cents": request.amount_cents,
                "currency": request.currency,
            },
        )
        if status != 200:
            raise self._rejected("/v1/charges", status, data)
        charge = self._charge(data)
        if (charge.amount_cents, charge.currency) != (request.amount_cents, request.currency):
            raise ProviderProtocolError("payment provider: charged another amount than asked")
        return ChargeResult(status=charge.status, provider_ref=charge.provider_ref)

    async def lookup_charge(self, idempotency_key: str) -> ProviderCharge | None:
        status, data = await self._call(
            "GET", "/v1/charges", params={"idempotency_key": idempotency_key}
        )
        if status == 404 and data.get("error") == "unknown_charge":
            return None
        if status != 200:
            raise self._rejected("/v1/charges", status, data)
        return self._charge(data)

    async def refund(self, request: RefundRequest) -> RefundResult:
        status, data = await self._call(
            "POST",
            "/v1/refunds",
            key=request.idempotency_key,
            body={"charge_idempotency_key": request.charge_idempotency_key},
        )
        error = data.get("error")
        if status in (404, 409) and error in ("unknown_charge", "not_charged", "already_refunded"):
            raise RefundRefused(error)
        if status != 200:
            raise self._rejected("/v1/refunds", status, data)
        try:
            return RefundResult(
                provider_ref=str(data["id"]),
                amount_cents=int(data["amount_cents"]),
                currency=str(data["currency"]),
            )
        except (KeyError, ValueError, TypeError):
            raise ProviderProtocolError(
                "payment provider: a refund without id, amount or currency"
            ) from None
