"""Session limits a login cannot switch off (issue 20 item 4), against the real stack.

The attack: ``statement_timeout`` and ``idle_in_transaction_session_timeout`` are role
defaults, so a Vault-issued login ran ``SET statement_timeout = 0`` and a statement
past the limit, and held rows ``FOR UPDATE`` idle past the idle limit. The session
watchdog (:mod:`orders_ops.session_watchdog`) ends such sessions from outside.
Tests run one watchdog in process with short limits, and check the stack's own
(default limits) ends a ``SET`` bypass too. Bounds are generous: "ended", not "when".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import hvac
import pytest
from structlog.testing import capture_logs

from orders_ops.database import watchdog_password_file
from orders_ops.session_watchdog import WATCHDOG_ROLE, Limits, run
from orders_ops.stack import Stack
from orders_shared.config import DatabaseConfig

pytestmark = pytest.mark.stack

SHORT = Limits(statement=1.5, idle_in_transaction=2.0, transaction=60.0, period=0.3)
BOUND = 30.0  # seconds: "ended within a generous bound", never a timing claim


def _db(stack: Stack) -> DatabaseConfig:
    s = stack.settings
    return DatabaseConfig(
        host=s.db_host,
        port=s.postgres_port,
        name="orders",
        mount="database",
        pool_max=1,
        sslmode=s.db_sslmode,
        sslrootcert=s.db_sslrootcert,
    )


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn = await asyncpg.connect(stack.settings.admin_dsn("orders"))
    yield conn
    await conn.close()


@contextlib.asynccontextmanager
async def notify_login(stack: Stack) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A session of a Vault-issued ``v-order-notify-...`` login (issued with the root
    token only to keep the test short; the watchdog cannot tell)."""
    s = stack.settings
    root = hvac.Client(url=s.vault_addr, token=s.root_token())
    cred = root.read("database/creds/order-notify")
    db = _db(stack)
    try:
        conn = await asyncpg.connect(
            host=db.host,
            port=db.port,
            database="orders",
            user=cred["data"]["username"],
            password=cred["data"]["password"],
            ssl=db.ssl_arg(),
        )
        try:
            yield conn
        finally:
            conn.terminate()
    finally:
        root.sys.revoke_lease(cred["lease_id"])


@contextlib.asynccontextmanager
async def watchdog(stack: Stack, limits: Limits) -> AsyncIterator[list[dict[str, Any]]]:
    """A watchdog in this process, logged in as the stack's watchdog login; yields its
    log events (the stack's own watchdog, at 12 s, must not be the one that acted)."""
    password = watchdog_password_file(stack.settings).read_text().strip()
    stop = asyncio.Event()
    with capture_logs() as events:
        task = asyncio.create_task(run(_db(stack), password, limits, stop=stop))
        try:
            yield events
        finally:
            stop.set()
            await task


def _ended_by(events: list[dict[str, Any]], pid: int) -> list[str]:
    return [e["reason"] for e in events if e["event"] == "db.session_ended" and e["pid"] == pid]


async def _ended(admin: asyncpg.Connection[Any], pid: int) -> None:
    deadline = time.monotonic() + BOUND
    while await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
        assert time.monotonic() < deadline, f"session {pid} was not ended"
        await asyncio.sleep(0.2)


async def test_the_stack_runs_the_watchdog_as_its_own_least_privileged_login(
    stack: Stack, admin: asyncpg.Connection[Any]
) -> None:
    assert stack.watchdog.pid() is not None and stack.watchdog.healthy()
    assert (
        await admin.fetchval(
            "SELECT usename FROM pg_stat_activity WHERE application_name = "
            "'orders-session-watchdog' AND pid <> pg_backend_pid() LIMIT 1"
        )
        == WATCHDOG_ROLE
    )
    role = await admin.fetchrow(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles "
        "WHERE rolname = $1",
        WATCHDOG_ROLE,
    )
    assert tuple(role) == (False, False, False, False)
    groups = await admin.fetch(
        "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
        "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1",
        WATCHDOG_ROLE,
    )
    assert sorted(r[0] for r in groups) == ["pg_read_all_stats", "pg_signal_backend"]
    readable = await admin.fetchval(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'app' AND has_any_column_privilege($1, c.oid, 'SELECT')",
        WATCHDOG_ROLE,
    )
    assert readable == 0


async def test_a_statement_past_the_limit_is_ended_although_the_session_set_it_off(
    stack: Stack,
) -> None:
    async with notify_login(stack) as bad, watchdog(stack, SHORT) as events:
        await bad.execute("SET statement_timeout = 0")
        assert await bad.fetchval("SHOW statement_timeout") == "0"
        pid = await bad.fetchval("SELECT pg_backend_pid()")
        with pytest.raises((asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError)):
            await asyncio.wait_for(bad.execute(f"SELECT pg_sleep({BOUND * 2})"), BOUND)
    assert _ended_by(events, pid) == ["statement"]


async def test_an_idle_transaction_holding_rows_past_the_limit_is_ended(
    stack: Stack, admin: asyncpg.Connection[Any]
) -> None:
    oid = f"wd-{time.time_ns()}"
    await admin.execute(
        "INSERT INTO app.orders (order_id, customer_id, total_cents) VALUES ($1, 'c', 1)", oid
    )
    async with notify_login(stack) as bad, watchdog(stack, SHORT) as events:
        await bad.execute("SET idle_in_transaction_session_timeout = 0")
        pid = await bad.fetchval("SELECT pg_backend_pid()")
        await bad.execute("BEGIN")
        await bad.fetchval("SELECT status FROM app.orders WHERE order_id = $1 FOR UPDATE", oid)
        await _ended(admin, pid)  # idle in transaction, holding the row lock
    assert _ended_by(events, pid) == ["idle_in_transaction"]
    # the lock went with it: the row can be locked again at once
    async with admin.transaction():
        await admin.execute("SET LOCAL lock_timeout = '1s'")
        await admin.fetchval("SELECT 1 FROM app.orders WHERE order_id = $1 FOR UPDATE", oid)


async def test_a_well_behaved_session_is_untouched(stack: Stack) -> None:
    async with notify_login(stack) as good, watchdog(stack, SHORT) as events:
        pid = await good.fetchval("SELECT pg_backend_pid()")
        stop = time.monotonic() + 4 * SHORT.idle_in_transaction  # many sweeps
        while time.monotonic() < stop:
            async with good.transaction():  # short transactions, short statements
                await good.fetchval("SELECT pg_sleep(0.3)")
                await asyncio.sleep(0.3)
            await asyncio.sleep(1.0)  # idle, not in a transaction: never a limit
        assert await good.fetchval("SELECT pg_backend_pid()") == pid
    assert _ended_by(events, pid) == []
    assert [e for e in events if e["event"] == "watchdog.sweep_failed"] == []


async def test_the_stacks_watchdog_ends_a_set_bypass_at_its_default_limit(
    stack: Stack,
) -> None:
    """The supervised process with its default limits (12 s, a little above the role's
    10 s): the role's own limit is switched off, the statement is still ended."""
    assert stack.watchdog.pid() is not None
    async with notify_login(stack) as bad:
        user = await bad.fetchval("SELECT session_user")
        await bad.execute("SET statement_timeout = 0")
        t0 = time.monotonic()
        with pytest.raises((asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError)):
            await asyncio.wait_for(bad.execute("SELECT pg_sleep(120)"), 60)
        # past the role's 10 s limit, which the session had switched off
        assert time.monotonic() - t0 > 10
    log = stack.watchdog.log_file.read_text()
    assert f'"login": "{user}", "reason": "statement"' in log
