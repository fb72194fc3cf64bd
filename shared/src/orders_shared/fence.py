"""The per-order fence between forward steps and their compensation.

A forward step (reserve, charge) whose attempt outlived its deadline may still
be running when the workflow compensates (release, refund). Without a fence it
can commit *after* the compensation and keep stock or money the workflow has
given back. The fence makes that impossible:

* a **compensation** calls :func:`mark_compensated` inside the transaction that
  does its work: it takes the order's advisory lock and records a row in
  ``app.order_compensations``;
* a **forward step** calls :func:`check_not_compensated` inside the transaction
  that does its work: it takes the same lock and raises
  :class:`~orders_shared.errors.OrderStateConflict` (non-retryable) when the
  marker exists.

The lock is transaction-scoped (``pg_advisory_xact_lock``), so it is released by
the commit or rollback of the step's own transaction and never held across a
network call. Either the forward step commits first (and the compensation then
undoes it), or it sees the marker and changes nothing.

Privileges: a forward role needs ``SELECT`` on ``app.order_compensations``; a
compensating role also ``INSERT (order_id, step)``. Advisory locks need no
privilege.

:func:`charge_refusal` answers "may this order be charged now?" for the payment
step (it needs ``SELECT (status)`` on ``app.orders`` and ``SELECT`` on
``app.payments``).
"""

from __future__ import annotations

from typing import Literal

from orders_shared.db import Connection
from orders_shared.errors import OrderStateConflict

LOCK_NAMESPACE = 0x4F52  # first key of pg_advisory_xact_lock(int, int): "OR"(ders)

CompensationStep = Literal["release_inventory", "refund_payment", "reserve_refused"]
"""What closed the order's forward path: a compensation, or a definitive refusal of
reserve (out of stock; the workflow releases nothing after it, so the refusal
fences an earlier attempt of the same step that may still be in flight)."""


def _require_transaction(conn: Connection) -> None:
    if not conn.is_in_transaction():
        raise RuntimeError(
            "the order fence must be taken inside the transaction that does the step's work "
            "(async with conn.transaction(): ...)"
        )


async def lock_order(conn: Connection, order_id: str) -> None:
    """Take the order's advisory lock until the current transaction ends."""
    _require_transaction(conn)
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_NAMESPACE, order_id)


async def compensated_by(conn: Connection, order_id: str) -> str | None:
    """The compensation step recorded for the order, or None (no lock taken)."""
    step: str | None = await conn.fetchval(
        "SELECT step FROM app.order_compensations WHERE order_id = $1", order_id
    )
    return step


async def check_not_compensated(conn: Connection, order_id: str, step: str) -> None:
    """Forward steps: lock the order and refuse if a compensation already ran.

    Raises :class:`OrderStateConflict` naming ``step`` and the compensation."""
    await lock_order(conn, order_id)
    done = await compensated_by(conn, order_id)
    if done is not None:
        raise OrderStateConflict(
            f"{step} refused: the order was already compensated ({done}); "
            "a late attempt must not take effect"
        )


async def mark_compensated(conn: Connection, order_id: str, step: CompensationStep) -> None:
    """Compensations: lock the order and record that it is compensated (idempotent)."""
    await lock_order(conn, order_id)
    await conn.execute(
        "INSERT INTO app.order_compensations (order_id, step) VALUES ($1, $2) "
        "ON CONFLICT (order_id) DO NOTHING",
        order_id,
        step,
    )


async def charge_refusal(conn: Connection, order_id: str) -> str | None:
    """Why the order may not be charged now, or None when it may.

    Refused: an order not recorded, not in status ``received`` (finished,
    rejected or failed), with a refund recorded, or compensated. Call it under
    :func:`lock_order` (or :func:`check_not_compensated`) so the answer holds
    until the caller's transaction ends.
    """
    row = await conn.fetchrow(
        """
        SELECT o.status,
               EXISTS (SELECT 1 FROM app.payments p
                        WHERE p.order_id = o.order_id AND p.kind = 'refund') AS refunded
          FROM app.orders o WHERE o.order_id = $1
        """,
        order_id,
    )
    if row is None:
        return "the order is not recorded"
    if row["refunded"]:
        return "the order already has a refund"
    if row["status"] != "received":
        return f"the order is already {row['status']}"
    done = await compensated_by(conn, order_id)
    if done is not None:
        return f"the order was compensated ({done})"
    return None
