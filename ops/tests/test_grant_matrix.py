"""The grant matrix is what Postgres really enforces, for logins Vault really issues."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from orders_ops.database import (
    VAULT_ADMIN_ROLE,
    bootstrap_database,
    expected_privileges,
    read_privileges,
    vault_admin_password,
)
from orders_ops.grants import GRANT_MATRIX
from orders_ops.settings import HOST, StackSettings
from orders_ops.vault_database import configure_database_engine, username_prefix
from orders_shared.catalog import DB_ROLES, group_role

pytestmark = pytest.mark.stack


@pytest.mark.parametrize("db_role", DB_ROLES)
async def test_privileges_read_back_equal_the_matrix(admin_conn: Any, db_role: str) -> None:
    expected = expected_privileges(db_role)
    rows = [g for g in GRANT_MATRIX if g.db_role == db_role]
    assert len(expected) == sum(len(g.columns) if g.columns else 1 for g in rows)
    assert await read_privileges(admin_conn, group_role(db_role)) == expected


async def test_group_roles_cannot_log_in_and_vault_admin_only_administers_them(
    admin_conn: Any,
) -> None:
    groups = [group_role(r) for r in DB_ROLES]
    rows = await admin_conn.fetch(
        "SELECT rolname, rolcanlogin, rolsuper FROM pg_roles WHERE rolname = ANY($1::text[])",
        groups,
    )
    assert {r["rolname"]: (r["rolcanlogin"], r["rolsuper"]) for r in rows} == {
        g: (False, False) for g in groups
    }
    grants = await admin_conn.fetch(
        """SELECT g.rolname, m.admin_option, m.inherit_option, m.set_option
           FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
           WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = $1)""",
        VAULT_ADMIN_ROLE,
    )
    held = {r["rolname"]: tuple(r)[1:] for r in grants}
    # every login vault_admin created is also held ADMIN-only (Postgres 16+ gives a
    # CREATEROLE creator that grant, which is what lets revocation drop the login)
    created = {k: v for k, v in held.items() if k.startswith("v-")}
    assert set(created.values()) <= {(True, False, False)}
    assert {k: v for k, v in held.items() if k not in created} == {
        **{g: (True, False, False) for g in groups},
        "pg_signal_backend": (False, True, True),
    }
    attrs = await admin_conn.fetchrow(
        "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = $1",
        VAULT_ADMIN_ROLE,
    )
    assert tuple(attrs) == (False, True, False)


async def test_vault_admin_can_read_no_order_data(
    database_ready: StackSettings, vault: Any
) -> None:
    """Vault's own login hands out memberships but holds none of their rights.

    Only Vault knows its password, so the test has a one-time password set (as
    for a fresh Vault), logs in with it, then hands it to Vault to rotate."""
    await bootstrap_database(database_ready, reset_vault_admin=True)
    try:
        conn = await asyncpg.connect(
            host=HOST,
            port=database_ready.postgres_port,
            user=VAULT_ADMIN_ROLE,
            password=vault_admin_password(database_ready),
            database=database_ready.database,
        )
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.fetch("SELECT * FROM app.orders")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute("SET ROLE order_process_payment")
        finally:
            await conn.close()
    finally:
        configure_database_engine(vault, database_ready)


async def test_public_cannot_connect_to_the_order_database(admin_conn: Any) -> None:
    assert (
        await admin_conn.fetchval(
            """SELECT count(*) FROM pg_database d,
                      aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
               WHERE d.datname = current_database() AND a.grantee = 0"""
        )
        == 0
    )


@pytest.mark.parametrize("db_role", DB_ROLES)
async def test_issued_username_and_membership(issuer: Any, admin_conn: Any, db_role: str) -> None:
    login = issuer.issue(db_role)
    assert login.username.startswith(username_prefix(db_role))
    assert len(login.username) <= 63
    row = await admin_conn.fetchrow(
        "SELECT rolcanlogin, rolinherit, rolvaliduntil, rolsuper, rolcreaterole "
        "FROM pg_roles WHERE rolname = $1",
        login.username,
    )
    assert row is not None
    assert (row["rolcanlogin"], row["rolinherit"], row["rolsuper"], row["rolcreaterole"]) == (
        True,
        True,
        False,
        False,
    )
    assert row["rolvaliduntil"] is not None
    groups = await admin_conn.fetch(
        """SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
           WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = $1)""",
        login.username,
    )
    assert [r["rolname"] for r in groups] == [group_role(db_role)]
    # and not a single direct grant: everything comes through the group
    assert await read_privileges(admin_conn, login.username) == set()


# --------------------------------------------------------------------------- what a login can do


@dataclass(frozen=True)
class Fixture:
    sku: str
    order_id: str


@pytest_asyncio.fixture(loop_scope="session")
async def order_rows(admin_conn: Any) -> AsyncIterator[Fixture]:
    """One product, its stock, an order with a line, contacts and a reservation."""
    tag = secrets.token_hex(4)
    f = Fixture(sku=f"GM-{tag.upper()}", order_id=f"gm-{tag}")
    await admin_conn.execute(
        "INSERT INTO app.products VALUES ($1, 'grant matrix test', 100)", f.sku
    )
    await admin_conn.execute("INSERT INTO app.inventory (sku, on_hand) VALUES ($1, 10)", f.sku)
    await admin_conn.execute(
        "INSERT INTO app.orders (order_id, customer_id, total_cents) VALUES ($1, 'c-1', 200)",
        f.order_id,
    )
    await admin_conn.execute(
        "INSERT INTO app.order_items VALUES ($1, $2, 2, 100)", f.order_id, f.sku
    )
    await admin_conn.execute(
        "INSERT INTO app.customer_contacts VALUES ($1, 'Ada', 'ada@example.test', '1 Road')",
        f.order_id,
    )
    await admin_conn.execute(
        "INSERT INTO app.reservations (order_id, sku, quantity) VALUES ($1, $2, 2)",
        f.order_id,
        f.sku,
    )
    yield f
    for table in ("reservations", "customer_contacts", "order_items"):
        await admin_conn.execute(f"DELETE FROM app.{table} WHERE order_id = $1", f.order_id)
    await admin_conn.execute("DELETE FROM app.orders WHERE order_id = $1", f.order_id)
    await admin_conn.execute("DELETE FROM app.inventory WHERE sku = $1", f.sku)
    await admin_conn.execute("DELETE FROM app.products WHERE sku = $1", f.sku)


# (sql, expected command status or first value); {o} is the order id, {s} the sku. Writes are
# rolled back, so the checks leave no rows behind and can run in any order.
ALLOWED: dict[str, list[tuple[str, object]]] = {
    "order-validate": [
        ("SELECT unit_price_cents FROM app.products WHERE sku = '{s}'", 100),
        (
            "INSERT INTO app.orders (order_id, customer_id, total_cents) "
            "VALUES ('{o}' || '-x', 'c-2', 100)",
            "INSERT 0 1",
        ),
        (
            "INSERT INTO app.order_items VALUES ('{o}', '{s}', 1, 100) ON CONFLICT DO NOTHING",
            "INSERT 0 0",
        ),
    ],
    "order-reserve-inventory": [
        (
            "UPDATE app.inventory SET on_hand = on_hand - 1, updated_at = now() "
            "WHERE sku = '{s}' AND on_hand >= 1",
            "UPDATE 1",
        ),
        (
            "SELECT quantity FROM app.reservations WHERE order_id = '{o}' AND sku = '{s}'",
            2,
        ),
    ],
    "order-release-inventory": [
        (
            "UPDATE app.reservations SET status = 'released' "
            "WHERE order_id = '{o}' AND sku = '{s}' AND status = 'reserved'",
            "UPDATE 1",
        ),
        (
            "UPDATE app.inventory SET on_hand = on_hand + 2 WHERE sku = '{s}'",
            "UPDATE 1",
        ),
    ],
    "order-process-payment": [
        (
            "SELECT total_cents FROM app.orders WHERE order_id = '{o}' AND currency = 'EUR'",
            200,
        ),
        (
            "INSERT INTO app.payments (order_id, kind, status, amount_cents, currency, "
            "provider_ref, idempotency_key) VALUES ('{o}', 'charge', 'approved', 200, 'EUR', "
            "'ref', '{o}' || '{s}')",
            "INSERT 0 1",
        ),
    ],
    "order-fulfill": [
        ("SELECT shipping_address FROM app.customer_contacts WHERE order_id = '{o}'", "1 Road"),
        (
            "INSERT INTO app.shipments (order_id, carrier, tracking_id) "
            "VALUES ('{o}', 'post', '{o}' || '{s}')",
            "INSERT 0 1",
        ),
    ],
    "order-notify": [
        ("SELECT email FROM app.customer_contacts WHERE order_id = '{o}'", "ada@example.test"),
        (
            "UPDATE app.orders SET status = 'completed', status_reason = NULL "
            "WHERE order_id = '{o}' AND status = 'received'",
            "UPDATE 1",
        ),
        (
            "INSERT INTO app.notifications (order_id, kind, recipient, subject, body) "
            "VALUES ('{o}', 'order_completed', 'ada@example.test', 's', '{s}')",
            "INSERT 0 1",
        ),
    ],
}

DENIED: dict[str, list[str]] = {
    "order-validate": [
        "SELECT * FROM app.payments WHERE order_id = '{o}'",
        "SELECT created_by FROM app.orders WHERE order_id = '{o}'",
        "UPDATE app.inventory SET on_hand = 0 WHERE sku = '{s}'",
        "INSERT INTO app.orders (order_id, customer_id, total_cents, created_by) "
        "VALUES ('{o}' || '-f', 'c-2', 100, 'someone-else')",
    ],
    "order-reserve-inventory": [
        "SELECT * FROM app.orders WHERE order_id = '{o}'",
        "UPDATE app.inventory SET sku = sku WHERE sku = '{s}'",
        "DELETE FROM app.reservations WHERE order_id = '{o}'",
        "INSERT INTO app.reservations (order_id, sku, quantity, reserved_by) "
        "VALUES ('{o}' || '-f', '{s}', 1, 'someone-else')",
    ],
    "order-release-inventory": [
        "INSERT INTO app.reservations (order_id, sku, quantity) VALUES ('{o}', '{s}', 1)",
        "UPDATE app.reservations SET quantity = 99 WHERE order_id = '{o}'",
        "SELECT * FROM app.customer_contacts WHERE order_id = '{o}'",
        "UPDATE app.reservations SET released_by = 'someone-else' WHERE order_id = '{o}'",
    ],
    "order-process-payment": [
        "SELECT customer_id FROM app.orders WHERE order_id = '{o}'",
        "SELECT email FROM app.customer_contacts WHERE order_id = '{o}'",
        "UPDATE app.orders SET total_cents = 1 WHERE order_id = '{o}'",
        "INSERT INTO app.payments (order_id, kind, status, amount_cents, currency, "
        "provider_ref, idempotency_key, db_user) VALUES ('{o}', 'charge', 'approved', 200, "
        "'EUR', 'ref', '{o}' || '{s}', 'someone-else')",
    ],
    "order-fulfill": [
        "SELECT email FROM app.customer_contacts WHERE order_id = '{o}'",
        "SELECT * FROM app.payments WHERE order_id = '{o}'",
        # it sees whether a charge was approved, not its amount or provider reference
        "SELECT amount_cents FROM app.payments WHERE order_id = '{o}'",
        "SELECT provider_ref FROM app.payments WHERE order_id = '{o}'",
        "UPDATE app.shipments SET carrier = 'x' WHERE order_id = '{o}'",
        "INSERT INTO app.shipments (order_id, carrier, tracking_id, db_user) "
        "VALUES ('{o}', 'post', '{o}' || '{s}', 'someone-else')",
    ],
    "order-notify": [
        "UPDATE app.inventory SET on_hand = on_hand + 1 WHERE sku = '{s}'",
        "SELECT shipping_address FROM app.customer_contacts WHERE order_id = '{o}'",
        "UPDATE app.orders SET total_cents = 1 WHERE order_id = '{o}'",
        "DELETE FROM app.notifications WHERE order_id = '{o}'",
        "UPDATE app.orders SET status_by = 'someone-else' WHERE order_id = '{o}'",
        "INSERT INTO app.notifications (order_id, kind, recipient, subject, body, db_user) "
        "VALUES ('{o}', 'order_completed', 'a@b.test', 's', 'b', 'someone-else')",
    ],
}


def _sql(template: str, f: Fixture) -> str:
    return template.format(o=f.order_id, s=f.sku)  # test-made values: [a-zA-Z0-9-] only


def test_samples_cover_every_role() -> None:
    assert set(ALLOWED) == set(DB_ROLES) == set(DENIED)


@pytest.mark.parametrize("db_role", DB_ROLES)
async def test_issued_login_can_do_what_the_matrix_allows(
    issuer: Any, order_rows: Fixture, db_role: str
) -> None:
    conn = await issuer.connect(issuer.issue(db_role))
    try:
        for sql, expected in ALLOWED[db_role]:
            tr = conn.transaction()
            await tr.start()
            try:
                if sql.lstrip().upper().startswith("SELECT"):
                    got: object = await conn.fetchval(_sql(sql, order_rows))
                else:
                    got = await conn.execute(_sql(sql, order_rows))
            finally:
                await tr.rollback()
            assert got == expected, sql
    finally:
        await conn.close()


@pytest.mark.parametrize("db_role", DB_ROLES)
async def test_issued_login_is_refused_what_the_matrix_does_not_allow(
    issuer: Any, order_rows: Fixture, db_role: str
) -> None:
    conn = await issuer.connect(issuer.issue(db_role))
    try:
        for sql in DENIED[db_role]:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                async with conn.transaction():
                    await conn.execute(_sql(sql, order_rows))
    finally:
        await conn.close()


AUDIT_COLUMNS = {
    "orders": {"created_at", "updated_at", "created_by", "status_by"},
    "reservations": {"reservation_id", "reserved_at", "reserved_by", "released_at", "released_by"},
    "payments": {"payment_id", "created_at", "db_user"},
    "shipments": {"shipment_id", "created_at", "db_user"},
    "notifications": {"notification_id", "created_at", "sent_at", "db_user"},
    "order_compensations": {"compensated_at", "db_user"},
}


@pytest.mark.parametrize("db_role", DB_ROLES)
async def test_no_role_may_write_an_audit_column(admin_conn: Any, db_role: str) -> None:
    """INSERT and UPDATE are granted per column; the audit columns are filled by
    defaults and triggers, never by the role that writes (read back from Postgres)."""
    held = await read_privileges(admin_conn, group_role(db_role))
    writes = {
        (table, column)
        for table, privilege, column in held
        if privilege in {"INSERT", "UPDATE"} and table in AUDIT_COLUMNS
    }
    assert all(column is not None for _, column in writes), "a table-wide write grant"
    forged = sorted((table, column) for table, column in writes if column in AUDIT_COLUMNS[table])
    assert forged == []


async def test_the_database_stamps_who_changed_a_status_or_released_stock(
    admin_conn: Any, order_rows: Fixture
) -> None:
    tr = admin_conn.transaction()
    await tr.start()
    try:
        await admin_conn.execute(f"SET LOCAL ROLE {group_role('order-notify')}")
        await admin_conn.execute(
            "UPDATE app.orders SET status = 'failed' WHERE order_id = $1", order_rows.order_id
        )
        await admin_conn.execute(f"SET LOCAL ROLE {group_role('order-release-inventory')}")
        await admin_conn.execute(
            "UPDATE app.reservations SET status = 'released' WHERE order_id = $1",
            order_rows.order_id,
        )
        with pytest.raises(asyncpg.RaiseError, match="cannot be reserved again"):
            async with admin_conn.transaction():
                await admin_conn.execute(
                    "UPDATE app.reservations SET status = 'reserved' WHERE order_id = $1",
                    order_rows.order_id,
                )
        await admin_conn.execute("RESET ROLE")
        stamps = await admin_conn.fetchrow(
            "SELECT o.status_by, r.released_by, r.released_at IS NOT NULL AS released "
            "FROM app.orders o JOIN app.reservations r USING (order_id) WHERE order_id = $1",
            order_rows.order_id,
        )
        assert tuple(stamps) == (
            group_role("order-notify"),
            group_role("order-release-inventory"),
            True,
        )
    finally:
        await tr.rollback()
