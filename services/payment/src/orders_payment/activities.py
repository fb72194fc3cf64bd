"""process_payment and refund_payment, as Vault database role ``order-process-payment``.

The amount charged is ``app.orders.total_cents`` as the validate step recorded
it, never a figure from the workflow input. Exactly-once comes from two keys:
the provider's idempotency key (``<order>:charge`` / ``<order>:refund``) and
the table's ``UNIQUE (order_id, kind)``. The provider is called *outside* any
database transaction; if the worker dies after the provider call, the retry
calls the provider again with the same key, gets the same answer and records it.

Order of work, so no record claims more than happened:

* a charge opens the payment token and checks the order *before* it records
  its intent (``pending``), so an input that can never be charged leaves no
  intent a refund would chase;
* a refund records its intent (``pending`` refund row) first, then asks the
  provider what it holds under the charge key and refunds only that; a charge
  the provider does not hold (never reached it, or declined) ends the refund
  as ``not_charged``, with nothing more to try;
* a charge attempt that finds the refund intent does not charge; one that was
  already at the provider when the refund began sees the intent afterwards and
  refunds what it just took, so a late charge is never kept.

The payment token arrives sealed to this service (Transit key
``orders-seal-payment``): it is opened with the service's own identity and
goes nowhere but the provider.
"""

from __future__ import annotations

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy
from prometheus_client import Counter
from temporalio import activity
from temporalio.exceptions import ApplicationError

from orders_payment.provider import (
    ChargeRequest,
    PaymentProvider,
    ProviderProtocolError,
    ProviderUnavailable,
    RefundRefused,
    RefundRequest,
)
from orders_shared.codec import TransitClient
from orders_shared.contracts.payment import (
    PROCESS_PAYMENT,
    REFUND_PAYMENT,
    REFUND_REFUSED,
    ProcessPaymentInput,
    ProcessPaymentOutput,
    RefundPaymentInput,
    RefundPaymentOutput,
)
from orders_shared.db import ConnectionSource
from orders_shared.errors import OrderStateConflict, PaymentDeclined
from orders_shared.fence import charge_refusal, check_not_compensated, mark_compensated
from orders_shared.sealing import open_in_activity

DB_ROLE = "order-process-payment"

log = structlog.get_logger(__name__)

CHARGES = Counter(
    "orders_payment_charges_total",
    "Calls to the payment provider to charge, by outcome: approved, declined, "
    "unavailable (retried) or late_refunded (charged after compensation began, refunded)",
    ["outcome"],
)
REFUNDS = Counter(
    "orders_payment_refunds_total",
    "Refund attempts by outcome: refunded, not_charged (the provider holds no charge: "
    "nothing to refund), refused (the provider refused; not retried) or unfinished "
    "(the provider could not be asked or answer; retried)",
    ["outcome"],
)

Conn = asyncpg.Connection | PoolConnectionProxy

_SELECT_PAYMENT = """
    SELECT status, amount_cents, currency, provider_ref
      FROM app.payments WHERE order_id = $1 AND kind = $2
"""
_INSERT_PAYMENT = """
    INSERT INTO app.payments
        (order_id, kind, status, amount_cents, currency, provider_ref, idempotency_key)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT DO NOTHING
"""


def _key(order_id: str, kind: str) -> str:
    return f"{order_id}:{kind}"


async def _recorded(conn: Conn, order_id: str, kind: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(_SELECT_PAYMENT, order_id, kind)
    return row


def _must(row: asyncpg.Record | None, what: str) -> asyncpg.Record:
    if row is None:
        raise RuntimeError(f"{what} row missing right after it was written")
    return row


class PaymentActivities:
    def __init__(
        self, db: ConnectionSource, provider: PaymentProvider, transit: TransitClient
    ) -> None:
        self.db = db
        self.provider = provider
        self.transit = transit  # opens the payment token sealed to this service

    async def _open_token(self, inp: ProcessPaymentInput) -> str:
        return await open_in_activity(
            self.transit, "payment", inp.payment_token, order_id=inp.order_id, field="payment_token"
        )

    # ----------------------------------------------------------------------- charge

    @activity.defn(name=PROCESS_PAYMENT)
    async def process_payment(self, inp: ProcessPaymentInput) -> ProcessPaymentOutput:
        """Charge the order's recorded total once. A repeated call returns the
        recorded outcome: the same approval, or the same refusal."""
        oid = inp.order_id
        async with self.db.connection(DB_ROLE) as conn:
            charge = await _recorded(conn, oid, "charge")
            token: str | None = None
            if charge is None or charge["status"] == "pending":
                if await _recorded(conn, oid, "refund") is not None:
                    # compensation already began (this attempt outlived its deadline):
                    # charging now would take money the workflow is giving back
                    raise OrderStateConflict("the order was compensated; it is not charged")
            if charge is None:
                # inputs are opened and checked before any intent is recorded: a token
                # that cannot be opened leaves nothing for a refund to chase (and no
                # transaction is open while Vault answers)
                token = await self._open_token(inp)
                async with conn.transaction():
                    # the order fence: no charge intent after a compensation, and only
                    # for an order still received, with no refund
                    await check_not_compensated(conn, oid, PROCESS_PAYMENT)
                    refusal = await charge_refusal(conn, oid)
                    if refusal is not None:
                        raise OrderStateConflict(f"not charged: {refusal}")
                    order = await conn.fetchrow(
                        "SELECT total_cents, currency FROM app.orders WHERE order_id = $1", oid
                    )
                    if order is None or order["total_cents"] <= 0:
                        raise OrderStateConflict(
                            "order is not recorded as an accepted order; nothing to charge"
                        )
                    await conn.execute(
                        _INSERT_PAYMENT,
                        oid,
                        "charge",
                        "pending",
                        order["total_cents"],
                        order["currency"],
                        None,
                        _key(oid, "charge"),
                    )
                charge = _must(await _recorded(conn, oid, "charge"), "charge")
            elif charge["status"] == "pending":
                token = await self._open_token(inp)
            if token is not None:  # our intent is recorded and the provider not yet answered
                charge = await self._charge_at_provider(conn, oid, token, charge)
        if charge["status"] == "declined":
            raise PaymentDeclined("the payment provider declined the charge")
        return ProcessPaymentOutput(
            order_id=oid,
            amount_cents=charge["amount_cents"],
            currency=charge["currency"],
            provider_ref=charge["provider_ref"],
        )

    async def _charge_at_provider(
        self, conn: Conn, oid: str, token: str, charge: asyncpg.Record
    ) -> asyncpg.Record:
        # our intent is visible now: a refund that began meanwhile wins
        if await _recorded(conn, oid, "refund") is not None:
            raise OrderStateConflict("the order was compensated; it is not charged")
        try:
            result = await self.provider.charge(
                ChargeRequest(
                    idempotency_key=_key(oid, "charge"),
                    payment_token=token,
                    amount_cents=charge["amount_cents"],
                    currency=charge["currency"],
                )
            )
        except (ProviderUnavailable, ProviderProtocolError):
            CHARGES.labels("unavailable").inc()
            raise
        CHARGES.labels(result.status).inc()
        await conn.execute(
            "UPDATE app.payments SET status = $3, provider_ref = $4 "
            "WHERE order_id = $1 AND kind = $2 AND status = 'pending'",
            oid,
            "charge",
            result.status,
            result.provider_ref,
        )
        if result.status == "approved" and await _recorded(conn, oid, "refund") is not None:
            # compensation began while the provider was charging: give it back now
            # rather than leave a charge the refund concluded was never taken
            await self._settle_refund(conn, oid)
            CHARGES.labels("late_refunded").inc()
            log.warning("payment.late_charge_refunded", order_id=oid)
            raise OrderStateConflict(
                "the order was compensated while it was being charged; the charge was refunded"
            )
        # read back what is recorded: a concurrent duplicate may have answered first
        return _must(await _recorded(conn, oid, "charge"), "charge")

    # ----------------------------------------------------------------------- refund

    @activity.defn(name=REFUND_PAYMENT)
    async def refund_payment(self, inp: RefundPaymentInput) -> RefundPaymentOutput:
        """Refund, once, what the provider actually charged for the order.

        Safe to run whatever happened before: no charge recorded, a declined charge,
        or a charge the provider does not hold all end as "nothing refunded". A
        provider that cannot be reached is retried (the workflow bounds how long);
        a refusal other than "no such charge" is not retried: it needs a person."""
        oid = inp.order_id
        async with self.db.connection(DB_ROLE) as conn:
            async with conn.transaction():
                # the order fence: from here on no forward step of this order takes effect
                await mark_compensated(conn, oid, "refund_payment")
            refund = await _recorded(conn, oid, "refund")
            if refund is None:
                charge = await _recorded(conn, oid, "charge")
                if charge is not None and charge["status"] == "declined":
                    return self._output(oid, None)  # decided, and nothing was taken
                if charge is not None:
                    amount, currency = charge["amount_cents"], charge["currency"]
                else:
                    order = await conn.fetchrow(
                        "SELECT total_cents, currency FROM app.orders WHERE order_id = $1", oid
                    )
                    if order is None or order["total_cents"] <= 0:
                        return self._output(oid, None)  # such an order is never charged
                    amount, currency = order["total_cents"], order["currency"]
                # the intent first: from now on no charge attempt starts
                await conn.execute(
                    _INSERT_PAYMENT,
                    oid,
                    "refund",
                    "pending",
                    amount,
                    currency,
                    None,
                    _key(oid, "refund"),
                )
                refund = _must(await _recorded(conn, oid, "refund"), "refund")
            if refund["status"] == "pending":
                refund = await self._settle_refund(conn, oid)
        return self._output(oid, refund)

    @staticmethod
    def _output(oid: str, refund: asyncpg.Record | None) -> RefundPaymentOutput:
        if refund is None or refund["status"] != "approved":
            return RefundPaymentOutput(
                order_id=oid, refunded=False, amount_cents=0, provider_ref=None
            )
        return RefundPaymentOutput(
            order_id=oid,
            refunded=True,
            amount_cents=refund["amount_cents"],
            provider_ref=refund["provider_ref"],
        )

    async def _settle_refund(self, conn: Conn, oid: str) -> asyncpg.Record:
        """Ask the provider what it holds under the charge key and refund exactly that;
        record ``approved`` or ``not_charged`` on the refund row (which exists)."""
        charge = await _recorded(conn, oid, "charge")  # re-read: our intent is visible now
        try:
            if charge is None or charge["status"] == "declined":
                # no charge attempt recorded an intent before ours, and none will now
                await self._record_not_charged(conn, oid, "no charge was sent to the provider")
            else:
                await self._refund_what_was_charged(conn, oid)
        except (ProviderUnavailable, ProviderProtocolError) as exc:
            REFUNDS.labels("unfinished").inc()
            attempt = activity.info().attempt if activity.in_activity() else 0
            log.warning(
                "payment.refund_unfinished",
                order_id=oid,
                attempt=attempt,
                error_type=type(exc).__name__,
                fix="the provider could not be asked; the refund is retried until the "
                "workflow's refund deadline, then the order is left for a person",
            )
            raise
        return _must(await _recorded(conn, oid, "refund"), "refund")

    async def _refund_what_was_charged(self, conn: Conn, oid: str) -> None:
        held = await self.provider.lookup_charge(_key(oid, "charge"))
        if held is None or held.status != "approved":
            await self._record_not_charged(
                conn,
                oid,
                "the provider holds no charge under the key"
                if held is None
                else "the provider declined the charge",
            )
            return
        try:
            result = await self.provider.refund(
                RefundRequest(
                    idempotency_key=_key(oid, "refund"),
                    charge_idempotency_key=_key(oid, "charge"),
                )
            )
        except RefundRefused as refused:
            if refused.reason in ("unknown_charge", "not_charged"):
                await self._record_not_charged(conn, oid, f"the provider said {refused.reason}")
                return
            REFUNDS.labels("refused").inc()
            log.error(
                "payment.refund_refused",
                order_id=oid,
                reason=refused.reason,
                fix="the charge was refunded under another key: reconcile with the provider",
            )
            raise ApplicationError(
                f"the payment provider refused the refund ({refused.reason})",
                type=REFUND_REFUSED,
                non_retryable=True,
            ) from None
        if result.amount_cents != held.amount_cents:
            log.error("payment.refund_amount_differs", order_id=oid)
        await conn.execute(
            "UPDATE app.payments SET status = 'approved', provider_ref = $2 "
            "WHERE order_id = $1 AND kind = 'refund' AND status IN ('pending', 'not_charged')",
            oid,
            result.provider_ref,
        )
        REFUNDS.labels("refunded").inc()
        log.info("payment.refunded", order_id=oid, amount_cents=result.amount_cents)

    @staticmethod
    async def _record_not_charged(conn: Conn, oid: str, why: str) -> None:
        await conn.execute(
            "UPDATE app.payments SET status = 'not_charged' "
            "WHERE order_id = $1 AND kind = 'refund' AND status = 'pending'",
            oid,
        )
        REFUNDS.labels("not_charged").inc()
        log.info("payment.nothing_to_refund", order_id=oid, why=why)
