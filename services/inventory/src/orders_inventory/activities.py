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

Both take the order's fence (:mod:`orders_shared.fence`) first, in their own
transaction: release marks the order compensated, and reserve refuses an order
so marked, or one whose reservation was already released
(:class:`OrderStateConflict`, taking nothing). A reserve attempt that outlived
its deadline therefore either committed before the release (which gives its
stock back) or changes nothing: it never takes stock after the release ran.
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
from orders_shared.errors import OrderStateConflict, OutOfStock
from orders_shared.fence import check_not_compensated, mark_compensated

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
                    await check_not_compensated(conn, inp.order_id, RESERVE_INVENTORY)
                    released = await conn.fetchval(
                        "SELECT count(*) FROM app.reservations "
                        "WHERE order_id = $1 AND status = 'released'",
                        inp.order_id,
                    )
                    if released:
                        # a released reservation is no live reservation, and a
                        # released order is not reserved again
                        raise OrderStateConflict(
                            "the order's reservation was already released; it is not reserved again"
                        )
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
                # A definitive refusal: the workflow will not release after it, so fence
                # any earlier attempt of this step that may still be in flight.
                async with conn.transaction():
                    await mark_compensated(conn, inp.order_id, "reserve_refused")
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
            # the fence first: a late reserve waits for this transaction, then refuses
            await mark_compensated(conn, inp.order_id, "release_inventory")
            rows = await conn.fetch(
                """
                UPDATE app.reservations
                   SET status = 'released'  -- a trigger stamps released_by, released_at
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
