"""fulfill_order: ship the order to the address on file, once, as ``order-fulfill``.

The address is read from ``app.customer_contacts`` (the only column of
customer data the role may read), not taken from the workflow input. There is
no real carrier: the shipment is a row whose tracking id is derived from the
order id, so a retry or a duplicate computes the same row and the table's
``UNIQUE (order_id)`` keeps exactly one.

An address containing ``UNDELIVERABLE`` is refused with
:class:`FulfillmentFailed`: the simulated carrier will not take it. It comes
after payment, so it drives the refund path.

The shipment is recorded under the per-order fence (:mod:`orders_shared.fence`):
once the order was compensated, a late attempt ships nothing
(:class:`OrderStateConflict`). The address is opened before, holding no
database connection across the Vault call.

Fulfill ships only a **paid** order: in the same transaction as the shipment it
reads ``app.payments`` (columns ``order_id, kind, status`` only) and refuses with
:class:`OrderStateConflict` unless the order has an approved charge and no refund.
The orchestrator schedules every step, so a compromised orchestrator could call
``fulfill_order`` without a payment (or with a forged payment result); this check
is made by fulfill's own database login, so it can stall orders but not ship them
unpaid.

The address on file is sealed to this service (Transit key
``orders-seal-fulfill``); it is opened with the service's own identity.
"""

from __future__ import annotations

import hashlib

from temporalio import activity

from orders_shared.codec import TransitClient
from orders_shared.contracts.fulfill import FULFILL_ORDER, FulfillOrderInput, FulfillOrderOutput
from orders_shared.db import Connection, ConnectionSource
from orders_shared.errors import FulfillmentFailed, OrderStateConflict
from orders_shared.fence import check_not_compensated
from orders_shared.sealing import open_in_activity

DB_ROLE = "order-fulfill"
CARRIER = "sim-post"
UNDELIVERABLE_MARKER = "UNDELIVERABLE"


def tracking_id_for(order_id: str) -> str:
    """Deterministic, so every attempt for an order computes the same shipment."""
    return "SIM" + hashlib.sha256(order_id.encode()).hexdigest()[:20].upper()


async def check_paid(conn: Connection, order_id: str) -> None:
    """Refuse to ship an order without an approved charge, or with a refund row."""
    rows = await conn.fetch("SELECT kind, status FROM app.payments WHERE order_id = $1", order_id)
    kinds = {(r["kind"], r["status"]) for r in rows}
    if ("charge", "approved") not in kinds or any(kind == "refund" for kind, _ in kinds):
        raise OrderStateConflict(
            "order has no approved charge on file (or is being refunded): fulfill ships "
            "only a paid order; the payment step must have approved it first"
        )


class FulfillActivities:
    def __init__(self, db: ConnectionSource, transit: TransitClient) -> None:
        self.db = db
        self.transit = transit  # opens the address sealed to this service

    @activity.defn(name=FULFILL_ORDER)
    async def fulfill_order(self, inp: FulfillOrderInput) -> FulfillOrderOutput:
        async with self.db.connection(DB_ROLE) as conn:
            shipped = await conn.fetchrow(
                "SELECT carrier, tracking_id FROM app.shipments WHERE order_id = $1",
                inp.order_id,
            )
            sealed = None
            if shipped is None:
                sealed = await conn.fetchval(
                    "SELECT shipping_address FROM app.customer_contacts WHERE order_id = $1",
                    inp.order_id,
                )
        if shipped is None:
            if sealed is None:
                raise OrderStateConflict("order has no shipping address on file")
            # the Vault call holds no database connection
            address = await open_in_activity(
                self.transit, "fulfill", sealed, order_id=inp.order_id, field="shipping_address"
            )
            if UNDELIVERABLE_MARKER in address.upper():
                raise FulfillmentFailed("the carrier cannot deliver to the address on file")
            async with self.db.connection(DB_ROLE) as conn, conn.transaction():
                # the order fence: an attempt that outlived its deadline ships nothing
                # once the order was refunded and released
                await check_not_compensated(conn, inp.order_id, FULFILL_ORDER)
                await check_paid(conn, inp.order_id)
                await conn.execute(
                    """
                    INSERT INTO app.shipments (order_id, carrier, tracking_id)
                    VALUES ($1, $2, $3)
                    ON CONFLICT DO NOTHING
                    """,
                    inp.order_id,
                    CARRIER,
                    tracking_id_for(inp.order_id),
                )
                shipped = await conn.fetchrow(
                    "SELECT carrier, tracking_id FROM app.shipments WHERE order_id = $1",
                    inp.order_id,
                )
            if shipped is None:
                raise RuntimeError("shipment row missing right after insert")
        return FulfillOrderOutput(
            order_id=inp.order_id, carrier=shipped["carrier"], tracking_id=shipped["tracking_id"]
        )
