"""An order's final status is final (issue 20 item 6), against the real stack.

The attack: notify's Vault-issued login holds UPDATE on ``app.orders (status,
status_reason)`` with no row filter, so it could turn a failed order into a
completed one (or the reverse) at any time. A trigger (migration
``0006_order_status_guard.sql``) lets a status move once, from ``received`` to a
final state, and only by the status writer of the grant matrix (order_notify).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from orders_ops.identities import local_session
from orders_ops.stack import Stack
from orders_shared.config import DatabaseConfig
from orders_shared.db import Connection
from orders_shared.leases import LeasedPools

pytestmark = pytest.mark.stack


def _db(stack: Stack) -> DatabaseConfig:
    s = stack.settings
    return DatabaseConfig(
        host="127.0.0.1",
        port=s.postgres_port,
        name="orders",
        mount="database",
        pool_max=2,
        sslmode=s.db_sslmode,
        sslrootcert=s.db_sslrootcert,
    )


@contextlib.asynccontextmanager
async def login(stack: Stack, service: str, db_role: str) -> AsyncIterator[Connection]:
    """A connection as the service's own Vault-issued login (``v-<db_role>-...``)."""
    session = await local_session(stack.settings, service)
    pools = LeasedPools(session, _db(stack), [db_role])
    try:
        await pools.open()
        try:
            async with pools.connection(db_role) as conn:
                assert (await conn.fetchval("SELECT session_user")).startswith(f"v-{db_role}")
                yield conn
        finally:
            await pools.close()
    finally:
        await session.close()


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.admin_dsn("orders"))
    yield conn
    await conn.close()


async def _order(admin: asyncpg.Connection) -> str:
    oid = f"guard-{uuid.uuid4().hex[:12]}"
    await admin.execute(
        "INSERT INTO app.orders (order_id, customer_id, total_cents) VALUES ($1, 'c', 100)", oid
    )
    return oid


async def _status(admin: asyncpg.Connection, oid: str) -> tuple[str, str | None, str | None]:
    row = await admin.fetchrow(
        "SELECT status, status_reason, status_by FROM app.orders WHERE order_id = $1", oid
    )
    return row["status"], row["status_reason"], row["status_by"]


SET = "UPDATE app.orders SET status = $2, status_reason = $3 WHERE order_id = $1"


async def test_notify_cannot_rewrite_a_final_status(
    stack: Stack, admin: asyncpg.Connection
) -> None:
    failed, completed = await _order(admin), await _order(admin)
    async with login(stack, "notify", "order-notify") as conn:
        me = await conn.fetchval("SELECT session_user")
        # the normal path: received -> final, stamped with the login that did it
        await conn.execute(SET, failed, "failed", "PaymentDeclined: card declined")
        await conn.execute(SET, completed, "completed", None)
        # a retried notify writes what is already there: accepted, nothing changes
        assert await conn.execute(SET, completed, "completed", None) == "UPDATE 1"
        # the attack: failed -> completed, and completed -> failed
        with pytest.raises(
            asyncpg.CheckViolationError,
            match=f"order {failed} is already failed and its status is final: refusing to set "
            "completed",
        ):
            await conn.execute(SET, failed, "completed", None)
        with pytest.raises(asyncpg.CheckViolationError, match=r"already completed .* set failed"):
            await conn.execute(SET, completed, "failed", "forged")
        # nor a new reason under the same final status
        with pytest.raises(asyncpg.CheckViolationError, match="already failed"):
            await conn.execute(SET, failed, "failed", "a nicer reason")
    assert await _status(admin, failed) == ("failed", "PaymentDeclined: card declined", me)
    assert await _status(admin, completed) == ("completed", None, me)


async def test_validate_cannot_record_a_new_order_as_completed(
    stack: Stack, admin: asyncpg.Connection
) -> None:
    oid = f"guard-{uuid.uuid4().hex[:12]}"
    insert = (
        "INSERT INTO app.orders (order_id, customer_id, status, status_reason, total_cents, "
        "currency) VALUES ($1, 'c', $2, NULL, 100, 'EUR')"
    )
    async with login(stack, "validate", "order-validate") as conn:
        for status in ("completed", "failed"):
            with pytest.raises(
                asyncpg.CheckViolationError,
                match=f"order {oid} cannot be recorded as {status}: a new order is received or "
                "rejected",
            ):
                await conn.execute(insert, oid, status)
        await conn.execute(insert, oid, "rejected")  # validate's own refusal still records
    assert (await _status(admin, oid))[0] == "rejected"


async def test_only_the_status_writer_moves_a_received_order(
    stack: Stack, admin: asyncpg.Connection
) -> None:
    """Defence behind the grants: a role given UPDATE by mistake still cannot decide."""
    oid = await _order(admin)
    tr = admin.transaction()
    await tr.start()
    try:
        await admin.execute(
            "GRANT SELECT (order_id), UPDATE (status) ON app.orders TO order_fulfill"
        )
        await admin.execute("SET LOCAL ROLE order_fulfill")
        with pytest.raises(
            asyncpg.InsufficientPrivilegeError,
            match=f"role order_fulfill may not record the final status of order {oid}: only "
            "order_notify does",
        ):
            await admin.execute(
                "UPDATE app.orders SET status = 'completed' WHERE order_id = $1", oid
            )
    finally:
        await tr.rollback()  # the grant goes with it
    assert (await _status(admin, oid))[0] == "received"
