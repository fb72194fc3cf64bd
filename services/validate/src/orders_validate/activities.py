"""validate_order: check, price and record a submitted order, as ``order-validate``.

The role may read the catalogue and INSERT the order, its lines and its
contact data, and nothing else (no SELECT on ``orders``), so idempotency is
``INSERT ... ON CONFLICT DO NOTHING`` in one transaction: the first attempt
records everything or nothing, a retry or duplicate changes nothing. The
prices returned by a retry are read from the catalogue again; the payment step
charges the total *recorded* by the first attempt, so a price change between
attempts can never change what is charged.

An order naming an unknown SKU is recorded as ``rejected`` (total 0, no lines,
the contact kept so the customer can be told) and refused with
:class:`OrderRejected`. An order that breaks a shape rule (possible only when
the workflow was started around the client's checks) is refused without being
recorded: its fields may not fit the table's constraints.

The sensitive fields (name, email, address, payment token) arrive sealed to
the services that consume them (:mod:`orders_shared.sealing`): this service
cannot read them, checks only that they are sealed, and stores the contact
fields as given. A plain (unsealed) order is refused.
"""

from __future__ import annotations

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from temporalio import activity

from orders_shared.contracts.common import Order
from orders_shared.contracts.validate import (
    VALIDATE_ORDER,
    PricedLine,
    ValidateOrderInput,
    ValidateOrderOutput,
)
from orders_shared.db import ConnectionSource
from orders_shared.errors import OrderRejected
from orders_shared.order_input import OrderInputError
from orders_shared.sealing import check_sealed_order

DB_ROLE = "order-validate"

MAX_TOTAL_CENTS = 2**31 - 1
"""``orders.total_cents`` is an integer column; a larger total is refused, not retried."""


async def _record_order(
    conn: asyncpg.Connection | PoolConnectionProxy,
    order: Order,
    *,
    status: str,
    reason: str | None,
    total_cents: int,
    lines: list[PricedLine],
) -> None:
    async with conn.transaction():
        await conn.execute(
            """
            INSERT INTO app.orders
                (order_id, customer_id, status, status_reason, total_cents, currency)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT DO NOTHING
            """,
            order.order_id,
            order.customer_id,
            status,
            reason,
            total_cents,
            order.currency,
        )
        if lines:
            await conn.executemany(
                """
                INSERT INTO app.order_items (order_id, sku, quantity, unit_price_cents)
                VALUES ($1, $2, $3, $4)
                ON CONFLICT DO NOTHING
                """,
                [(order.order_id, li.sku, li.quantity, li.unit_price_cents) for li in lines],
            )
        await conn.execute(
            """
            INSERT INTO app.customer_contacts
                (order_id, customer_name, email, shipping_address)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT DO NOTHING
            """,
            order.order_id,
            order.customer_name,
            order.email,
            order.shipping_address,
        )


class ValidateActivities:
    def __init__(self, db: ConnectionSource) -> None:
        self.db = db

    @activity.defn(name=VALIDATE_ORDER)
    async def validate_order(self, inp: ValidateOrderInput) -> ValidateOrderOutput:
        order = inp.order
        try:
            check_sealed_order(order)
        except OrderInputError as bad:
            raise OrderRejected(f"invalid order: {bad}") from None

        skus = [line.sku for line in order.lines]
        async with self.db.connection(DB_ROLE) as conn:
            rows = await conn.fetch(
                "SELECT sku, unit_price_cents FROM app.products WHERE sku = ANY($1::text[])",
                skus,
            )
            prices: dict[str, int] = {r["sku"]: r["unit_price_cents"] for r in rows}
            unknown = sorted(set(skus) - prices.keys())
            priced = [
                PricedLine(sku=li.sku, quantity=li.quantity, unit_price_cents=prices[li.sku])
                for li in order.lines
                if li.sku in prices
            ]
            total = sum(li.quantity * li.unit_price_cents for li in priced)

            reason: str | None = None
            if unknown:
                reason = f"unknown SKU: {', '.join(unknown)}"
            elif total > MAX_TOTAL_CENTS:
                reason = "order total is larger than a single order may be"
            if reason is not None:
                await _record_order(
                    conn, order, status="rejected", reason=reason, total_cents=0, lines=[]
                )
                raise OrderRejected(reason)

            await _record_order(
                conn, order, status="received", reason=None, total_cents=total, lines=priced
            )
        return ValidateOrderOutput(
            order_id=order.order_id,
            total_cents=total,
            currency=order.currency,
            lines=tuple(priced),
        )
