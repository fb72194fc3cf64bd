"""validate_order: check, price and record a submitted order, as ``order-validate``.

The role may read the catalogue, INSERT the order, its lines and its contact
data (only the columns that are not filled by defaults), and read back the
order's status, total and lines. Idempotency is ``INSERT ... ON CONFLICT DO
NOTHING`` in one transaction: the first attempt records everything or nothing,
a retry or duplicate changes nothing. Every attempt returns what is *recorded*
(the first attempt's prices and total), never a fresh pricing, so a price
change between attempts changes neither what is returned nor what is charged.

An order already recorded is not priced again: ``received`` returns the
recorded order (a retry), ``rejected`` is refused again with its recorded
reason, and a finished order (``completed``, ``failed``) is refused with
:class:`OrderStateConflict` before any side effect: running an order twice
charges and ships nothing twice.

An order naming an unknown SKU, or in a currency other than the one a product
is priced in, is recorded as ``rejected`` (total 0, no lines, the contact kept
so the customer can be told) and refused with :class:`OrderRejected`: a price
is in a currency, and an order is never charged a figure under another
currency's label. An order that breaks a shape rule (possible only when
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
from orders_shared.errors import OrderRejected, OrderStateConflict
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


async def _recorded(
    conn: asyncpg.Connection | PoolConnectionProxy, order_id: str
) -> ValidateOrderOutput | None:
    """What an earlier attempt recorded, or None; refuses an order that is not
    (or no longer) one to run."""
    row = await conn.fetchrow(
        "SELECT status, status_reason, total_cents, currency FROM app.orders WHERE order_id = $1",
        order_id,
    )
    if row is None:
        return None
    if row["status"] == "rejected":
        raise OrderRejected(row["status_reason"] or "the order was rejected")
    if row["status"] != "received":
        raise OrderStateConflict(
            f"the order is already {row['status']}; a finished order is not run again"
        )
    items = await conn.fetch(
        "SELECT sku, quantity, unit_price_cents FROM app.order_items WHERE order_id = $1 "
        "ORDER BY sku",
        order_id,
    )
    return ValidateOrderOutput(
        order_id=order_id,
        total_cents=row["total_cents"],
        currency=row["currency"],
        lines=tuple(
            PricedLine(sku=r["sku"], quantity=r["quantity"], unit_price_cents=r["unit_price_cents"])
            for r in items
        ),
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
            earlier = await _recorded(conn, order.order_id)
            if earlier is not None:
                return earlier
            rows = await conn.fetch(
                "SELECT sku, unit_price_cents, currency FROM app.products "
                "WHERE sku = ANY($1::text[])",
                skus,
            )
            prices: dict[str, int] = {r["sku"]: r["unit_price_cents"] for r in rows}
            other_currency = sorted(r["sku"] for r in rows if r["currency"] != order.currency)
            # the currencies the shop prices those SKUs in: the refusal names what to use
            shop_currencies = sorted(
                {r["currency"] for r in rows if r["currency"] != order.currency}
            )
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
            elif other_currency:
                takes = " or ".join(shop_currencies)
                reason = (
                    f"the order is in {order.currency} but SKU {', '.join(other_currency)} "
                    f"is priced in {takes}: the shop takes {takes} for it (set the order's "
                    "currency field to that)"
                )
            elif total > MAX_TOTAL_CENTS:
                reason = "order total is larger than a single order may be"
            if reason is not None:
                await _record_order(
                    conn, order, status="rejected", reason=reason, total_cents=0, lines=[]
                )
                # a concurrent first attempt may have recorded the order: its answer stands
                earlier = await _recorded(conn, order.order_id)
                if earlier is not None:
                    return earlier
                raise OrderRejected(reason)

            await _record_order(
                conn, order, status="received", reason=None, total_cents=total, lines=priced
            )
            # Return what is recorded: a concurrent duplicate may have recorded first.
            recorded = await _recorded(conn, order.order_id)
        if recorded is None:
            raise RuntimeError("order row missing right after insert")
        return recorded
