"""reserve_inventory and release_inventory: stock taken and given back exactly once.

Reserve runs as ``order-reserve-inventory``, release (the compensation) as
``order-release-inventory``; neither can do the other's job.

Reserve is all-or-nothing in one transaction. For each line, in SKU order (so
two orders never lock the same rows in opposite orders and deadlock), it
first inserts the reservation row with ``ON CONFLICT DO NOTHING`` and only
when that inserted a row decrements stock with a guarded
``UPDATE ... WHERE on_hand >= quantity``. The unique ``(order_id, sku)`` makes
a concurrent duplicate wait on the first one's insert and then insert
nothing, so it never decrements; the guard plus the table's
``CHECK (on_hand >= 0)`` make overselling impossible under any concurrency.
A line that cannot be covered rolls the whole transaction back and raises
:class:`OutOfStock`.

Release flips ``reserved`` -> ``released`` with one ``UPDATE ... RETURNING``
and puts back exactly the rows it flipped, in the same transaction, so a
second release (or a concurrent one) finds nothing left to flip.
"""

from __future__ import annotations

from temporalio import activity

from orders_shared.contracts.common import OrderLine
from orders_shared.contracts.inventory import (
    RELEASE_INVENTORY,
    RESERVE_INVENTORY,
    ReleaseInventoryInput,
    ReleaseInventoryOutput,
    ReserveInventoryInput,
    ReserveInventoryOutput,
)
from orders_shared.db import ConnectionSource
from orders_shared.errors import OutOfStock

RESERVE_ROLE = "order-reserve-inventory"
RELEASE_ROLE = "order-release-inventory"


class _NotEnoughStock(Exception):
    """Internal: raised inside the transaction so it rolls back."""

    def __init__(self, sku: str) -> None:
        super().__init__(sku)
        self.sku = sku


class InventoryActivities:
    def __init__(self, db: ConnectionSource) -> None:
        self.db = db

    @activity.defn(name=RESERVE_INVENTORY)
    async def reserve_inventory(self, inp: ReserveInventoryInput) -> ReserveInventoryOutput:
        """Reserve every line or none. Repeating it for the same order returns
        the existing reservation and takes no more stock."""
        lines = sorted(inp.lines, key=lambda line: line.sku)
        async with self.db.connection(RESERVE_ROLE) as conn:
            try:
                async with conn.transaction():
                    inserted_any = False
                    for line in lines:
                        inserted = await conn.fetchval(
                            """
                            INSERT INTO app.reservations (order_id, sku, quantity)
                            VALUES ($1, $2, $3)
                            ON CONFLICT (order_id, sku) DO NOTHING
                            RETURNING true
                            """,
                            inp.order_id,
                            line.sku,
                            line.quantity,
                        )
                        if not inserted:
                            continue  # reserved by an earlier attempt
                        inserted_any = True
                        taken = await conn.fetchval(
                            """
                            UPDATE app.inventory
                               SET on_hand = on_hand - $2, updated_at = now()
                             WHERE sku = $1 AND on_hand >= $2
                            RETURNING true
                            """,
                            line.sku,
                            line.quantity,
                        )
                        if not taken:
                            raise _NotEnoughStock(line.sku)
                    rows = await conn.fetch(
                        "SELECT sku, quantity FROM app.reservations WHERE order_id = $1 "
                        "ORDER BY sku",
                        inp.order_id,
                    )
            except _NotEnoughStock as short:
                raise OutOfStock(f"not enough stock for SKU {short.sku}") from None
        return ReserveInventoryOutput(
            order_id=inp.order_id,
            lines=tuple(OrderLine(sku=r["sku"], quantity=r["quantity"]) for r in rows),
            already_reserved=not inserted_any,
        )

    @activity.defn(name=RELEASE_INVENTORY)
    async def release_inventory(self, inp: ReleaseInventoryInput) -> ReleaseInventoryOutput:
        """Give back whatever the order still holds; a no-op when it holds nothing."""
        async with self.db.connection(RELEASE_ROLE) as conn, conn.transaction():
            rows = await conn.fetch(
                """
                UPDATE app.reservations
                   SET status = 'released', released_at = now(), released_by = current_user
                 WHERE order_id = $1 AND status = 'reserved'
                RETURNING sku, quantity
                """,
                inp.order_id,
            )
            released = sorted(
                (OrderLine(sku=r["sku"], quantity=r["quantity"]) for r in rows),
                key=lambda line: line.sku,
            )
            for line in released:
                await conn.execute(
                    "UPDATE app.inventory SET on_hand = on_hand + $2, updated_at = now() "
                    "WHERE sku = $1",
                    line.sku,
                    line.quantity,
                )
        return ReleaseInventoryOutput(order_id=inp.order_id, released=tuple(released))
