"""process_payment and refund_payment, as Vault database role ``order-process-payment``.

The amount charged is ``app.orders.total_cents`` as the validate step recorded
it, never a figure from the workflow input. Exactly-once comes from two keys:
the provider's idempotency key (``<order>:charge`` / ``<order>:refund``) and
the table's ``UNIQUE (order_id, kind)``. The provider is called *outside* any
database transaction, so no connection is held across a network call; if the
worker dies after the provider call, the retry calls the provider again with
the same key, gets the same answer and records it.

The payment token arrives sealed to this service (Transit key
``orders-seal-payment``): it is opened with the service's own identity right
before the provider call and goes nowhere else.
"""

from __future__ import annotations

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from temporalio import activity

from orders_payment.provider import ChargeRequest, PaymentProvider, RefundRequest
from orders_shared.codec import TransitClient
from orders_shared.contracts.payment import (
    PROCESS_PAYMENT,
    REFUND_PAYMENT,
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


class PaymentActivities:
    def __init__(
        self, db: ConnectionSource, provider: PaymentProvider, transit: TransitClient
    ) -> None:
        self.db = db
        self.provider = provider
        self.transit = transit  # opens the payment token sealed to this service

    async def _recorded(
        self, conn: asyncpg.Connection | PoolConnectionProxy, order_id: str, kind: str
    ) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await conn.fetchrow(_SELECT_PAYMENT, order_id, kind)
        return row

    @activity.defn(name=PROCESS_PAYMENT)
    async def process_payment(self, inp: ProcessPaymentInput) -> ProcessPaymentOutput:
        """Charge the order's recorded total once. A repeated call returns the
        recorded outcome: the same approval, or the same refusal.

        The charge is recorded as ``pending`` before the provider is called and
        set to its answer after, so no crash or outage can leave a charge the
        refund does not know about."""
        key = _key(inp.order_id, "charge")
        async with self.db.connection(DB_ROLE) as conn:
            charge = await self._recorded(conn, inp.order_id, "charge")
            if charge is None:
                async with conn.transaction():
                    # the order fence: no charge intent after a compensation, and only
                    # for an order still received, with no refund
                    await check_not_compensated(conn, inp.order_id, PROCESS_PAYMENT)
                    refusal = await charge_refusal(conn, inp.order_id)
                    if refusal is not None:
                        raise OrderStateConflict(f"not charged: {refusal}")
                    order = await conn.fetchrow(
                        "SELECT total_cents, currency FROM app.orders WHERE order_id = $1",
                        inp.order_id,
                    )
                    if order is None or order["total_cents"] <= 0:
                        raise OrderStateConflict(
                            "order is not recorded as an accepted order; nothing to charge"
                        )
                    await conn.execute(
                        _INSERT_PAYMENT,
                        inp.order_id,
                        "charge",
                        "pending",
                        order["total_cents"],
                        order["currency"],
                        None,
                        key,
                    )
                charge = await self._recorded(conn, inp.order_id, "charge")
                if charge is None:
                    raise RuntimeError("charge row missing right after insert")
            if charge["status"] == "pending":
                if await self._recorded(conn, inp.order_id, "refund") is not None:
                    # compensation already ran (this attempt outlived its deadline):
                    # charging now would take money the workflow has given back
                    raise OrderStateConflict("the order was compensated; it is not charged")
                payment_token = await open_in_activity(
                    self.transit,
                    "payment",
                    inp.payment_token,
                    order_id=inp.order_id,
                    field="payment_token",
                )
                # Outside a transaction: no lock is held while we wait for the provider.
                result = await self.provider.charge(
                    ChargeRequest(
                        idempotency_key=key,
                        payment_token=payment_token,
                        amount_cents=charge["amount_cents"],
                        currency=charge["currency"],
                    )
                )
                await conn.execute(
                    "UPDATE app.payments SET status = $3, provider_ref = $4 "
                    "WHERE order_id = $1 AND kind = $2 AND status = 'pending'",
                    inp.order_id,
                    "charge",
                    result.status,
                    result.provider_ref,
                )
                # Read back what is recorded: a concurrent duplicate may have answered first.
                charge = await self._recorded(conn, inp.order_id, "charge")
                if charge is None:
                    raise RuntimeError("charge row missing right after update")
        if charge["status"] == "declined":
            raise PaymentDeclined("the payment provider declined the charge")
        return ProcessPaymentOutput(
            order_id=inp.order_id,
            amount_cents=charge["amount_cents"],
            currency=charge["currency"],
            provider_ref=charge["provider_ref"],
        )

    @activity.defn(name=REFUND_PAYMENT)
    async def refund_payment(self, inp: RefundPaymentInput) -> RefundPaymentOutput:
        """Refund the charge in full, once. Without a charge (declined, or the
        provider never called) there is nothing to refund and that is a success:
        compensation must be safe to run whatever happened before. A charge still
        pending is refunded by its idempotency key; a late charge attempt then sees
        the refund row and does not charge."""
        async with self.db.connection(DB_ROLE) as conn:
            async with conn.transaction():
                # the order fence: from here on no charge intent can be recorded
                await mark_compensated(conn, inp.order_id, "refund_payment")
            refund = await self._recorded(conn, inp.order_id, "refund")
            if refund is None:
                charge = await self._recorded(conn, inp.order_id, "charge")
                # No row: the provider was never called (the intent is recorded first).
                # Declined: nothing was taken. Pending: we do not know, so ask by key.
                if charge is None or charge["status"] == "declined":
                    return RefundPaymentOutput(
                        order_id=inp.order_id, refunded=False, amount_cents=0, provider_ref=None
                    )
                key = _key(inp.order_id, "refund")
                result = await self.provider.refund(
                    RefundRequest(
                        idempotency_key=key,
                        charge_idempotency_key=_key(inp.order_id, "charge"),
                        charge_ref=charge["provider_ref"],
                        amount_cents=charge["amount_cents"],
                        currency=charge["currency"],
                    )
                )
                await conn.execute(
                    _INSERT_PAYMENT,
                    inp.order_id,
                    "refund",
                    "approved",
                    charge["amount_cents"],
                    charge["currency"],
                    result.provider_ref,
                    key,
                )
                refund = await self._recorded(conn, inp.order_id, "refund")
                if refund is None:
                    raise RuntimeError("refund row missing right after insert")
        return RefundPaymentOutput(
            order_id=inp.order_id,
            refunded=True,
            amount_cents=refund["amount_cents"],
            provider_ref=refund["provider_ref"],
        )
