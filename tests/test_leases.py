"""Credential leases against the real stack: issue, renew, rotate, survive a Vault pause, revoke.

Every worker-side call here goes through the service's own identity (JWT login
with the token the local issuer wrote), so the policies are exercised too. The
root token is used only to shorten a role's TTLs for the test and to observe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator

import asyncpg
import hvac
import pytest
from support import short_ttl

from orders_ops.stack import Stack
from orders_shared.catalog import group_role
from orders_shared.config import DatabaseConfig, VaultConfig
from orders_shared.identity import Backoff, VaultSession
from orders_shared.leases import LeasedPools, RolePool

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def root(stack: Stack) -> hvac.Client:
    return hvac.Client(url=stack.settings.vault_addr, token=stack.settings.root_token())


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.admin_dsn("orders"))
    yield conn
    await conn.close()


def _db(stack: Stack) -> DatabaseConfig:
    return DatabaseConfig(
        host="127.0.0.1",
        port=stack.settings.postgres_port,
        name="orders",
        mount="database",
        pool_max=5,
    )


@contextlib.asynccontextmanager
async def session(
    stack: Stack, service: str, request_timeout: float = 5.0
) -> AsyncIterator[VaultSession]:
    cfg = VaultConfig(
        addr=stack.settings.vault_addr,
        auth_method="jwt",
        auth_mount="jwt",
        auth_role=f"orders-{service}",
        token_file=stack.settings.token_file(service),
        request_timeout=request_timeout,
    )
    vault = VaultSession(cfg, backoff=Backoff(first=0.2, cap=1.0))
    await vault.login()
    try:
        yield vault
    finally:
        await vault.close()


async def _valid_until(admin: asyncpg.Connection, username: str) -> float | None:
    row = await admin.fetchval(
        "SELECT extract(epoch FROM rolvaliduntil) FROM pg_roles WHERE rolname = $1", username
    )
    return None if row is None else float(row)


async def _role_exists(admin: asyncpg.Connection, username: str) -> bool:
    return bool(await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", username))


async def test_one_lease_per_role_not_per_call(stack: Stack, root: hvac.Client) -> None:
    async with session(stack, "inventory") as vault:
        pools = LeasedPools(
            vault, _db(stack), ["order-reserve-inventory", "order-release-inventory"]
        )
        await pools.open()
        try:
            users = set()
            for _ in range(25):
                async with pools.connection("order-reserve-inventory") as conn:
                    users.add(await conn.fetchval("SELECT session_user"))
            assert users == {pools.pools["order-reserve-inventory"].credential.username}
            assert [p.issued for p in pools.pools.values()] == [1, 1]
            assert next(iter(users)).startswith("v-order-reserve-inventory")
        finally:
            await pools.close()


async def test_a_role_outside_the_service_is_refused(stack: Stack) -> None:
    async with session(stack, "inventory") as vault:
        pools = LeasedPools(vault, _db(stack), ["order-reserve-inventory"])
        with pytest.raises(PermissionError, match="'order-process-payment' is not one of"):
            pools.connection("order-process-payment")


async def test_renewal_moves_valid_until_forward(
    stack: Stack, root: hvac.Client, admin: asyncpg.Connection
) -> None:
    with short_ttl(root, "order-validate", ttl=6, max_ttl=120):
        async with session(stack, "validate") as vault:
            pool = RolePool(vault, _db(stack), "order-validate")
            await pool.open()
            try:
                user = pool.credential.username
                first = await _valid_until(admin, user)
                assert first is not None
                await asyncio.sleep(5.0)  # renewal is due at 2/3 of 6 s
                assert pool.renewals >= 1
                second = await _valid_until(admin, user)
                assert second is not None and second > first
                assert pool.credential.username == user  # renewed, not replaced
            finally:
                await pool.close()


async def test_rotation_under_a_query_loop_loses_no_query(
    stack: Stack, root: hvac.Client, admin: asyncpg.Connection
) -> None:
    # max TTL 6 s: every renewal is capped soon, forcing rotations under load
    with short_ttl(root, "order-fulfill", ttl=3, max_ttl=6):
        async with session(stack, "fulfill") as vault:
            pool = RolePool(vault, _db(stack), "order-fulfill", drain_timeout=5)
            await pool.open()
            seen: set[str] = set()
            failures: list[BaseException] = []
            done = 0
            stop = time.monotonic() + 12

            async def loop() -> None:
                nonlocal done
                while time.monotonic() < stop:
                    try:
                        async with pool.connection() as conn:
                            seen.add(await conn.fetchval("SELECT current_user"))
                            await conn.fetchval("SELECT count(*) FROM app.shipments")
                        done += 1
                    except Exception as exc:
                        failures.append(exc)
                    await asyncio.sleep(0.01)

            try:
                await asyncio.gather(*(loop() for _ in range(4)))
                assert failures == []
                assert done > 100
                assert pool.rotations >= 1
                assert len(seen) >= 2, "queries ran under more than one credential"
                await asyncio.sleep(0.5)  # let the last drain-then-revoke finish
                old = seen - {pool.credential.username}
                for user in old:
                    assert not await _role_exists(admin, user), f"{user} was not revoked"
            finally:
                await pool.close()


async def test_revoke_drops_the_role_and_the_old_password_fails(
    stack: Stack, admin: asyncpg.Connection
) -> None:
    async with session(stack, "notify") as vault:
        pool = RolePool(vault, _db(stack), "order-notify")
        await pool.open()
        cred = pool.credential
        async with pool.connection() as conn:
            assert await conn.fetchval("SELECT current_user") == cred.username
        assert await _role_exists(admin, cred.username)
        await pool.close()
    assert not await _role_exists(admin, cred.username)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host="127.0.0.1",
            port=stack.settings.postgres_port,
            database="orders",
            user=cred.username,
            password=cred.password,
        )


async def test_vault_paused_queries_go_on_and_renewal_recovers(
    stack: Stack, root: hvac.Client, admin: asyncpg.Connection
) -> None:
    vault_pid = stack.vault.pid()
    assert vault_pid is not None
    # lease 30 s: renewal falls due at 20 s, inside a pause from 2 s to 21 s, which
    # leaves 9 s after Vault returns for the retried renewal (a loaded CI machine
    # needs the margin)
    with short_ttl(root, "order-process-payment", ttl=30, max_ttl=300):
        async with session(stack, "payment", request_timeout=1.0) as vault:
            pool = RolePool(vault, _db(stack), "order-process-payment")
            await pool.open()
            user = pool.credential.username
            before = await _valid_until(admin, user)
            failures: list[BaseException] = []
            ok = 0

            async def loop(seconds: float) -> None:
                nonlocal ok
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    try:
                        async with pool.connection() as conn:
                            await conn.fetchval("SELECT count(*) FROM app.payments")
                        ok += 1
                    except Exception as exc:
                        failures.append(exc)
                    await asyncio.sleep(0.02)

            try:
                queries = asyncio.create_task(loop(24))
                await asyncio.sleep(2)
                os.kill(vault_pid, signal.SIGSTOP)
                try:
                    await asyncio.sleep(19)
                    assert pool.renewals == 0  # Vault really was unreachable
                finally:
                    os.kill(vault_pid, signal.SIGCONT)
                await queries
                assert failures == []
                assert ok > 100
                for _ in range(40):  # the lease still has > 5 s: the retried renewal lands
                    if pool.renewals:
                        break
                    await asyncio.sleep(0.1)
                assert pool.renewals >= 1, "renewal recovered after Vault came back"
                assert pool.credential.username == user
                after = await _valid_until(admin, user)
                assert before is not None and after is not None and after > before
            finally:
                await pool.close()


async def test_graceful_close_leaves_no_login_role(stack: Stack, admin: asyncpg.Connection) -> None:
    services = {
        "validate": ["order-validate"],
        "inventory": ["order-reserve-inventory", "order-release-inventory"],
        "payment": ["order-process-payment"],
        "fulfill": ["order-fulfill"],
        "notify": ["order-notify"],
    }
    groups = [group_role(r) for roles in services.values() for r in roles]
    query = """
        SELECT count(*) FROM pg_auth_members m
        JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
        WHERE g.rolname = ANY($1::text[]) AND u.rolcanlogin
    """
    baseline = await admin.fetchval(query, groups)
    async with contextlib.AsyncExitStack() as stack_cm:
        all_pools = []
        for service, roles in services.items():
            vault = await stack_cm.enter_async_context(session(stack, service))
            pools = LeasedPools(vault, _db(stack), roles)
            await pools.open()
            all_pools.append(pools)
        assert await admin.fetchval(query, groups) == baseline + 6
        for pools in all_pools:
            await pools.close()
    assert await admin.fetchval(query, groups) == baseline


async def test_token_renewal_and_login_again_after_revocation(
    stack: Stack, root: hvac.Client
) -> None:
    async with session(stack, "validate") as vault:
        assert vault.policies and "orders-validate" in vault.policies
        await vault.renew_or_login()
        assert (vault.logins, vault.renewals) == (1, 1)
        root.auth.token.revoke(vault.client.token)  # e.g. an operator revoked it
        await vault.renew_or_login()
        assert vault.logins == 2  # it logged in again with its identity token
        info = await vault.call(vault.client.auth.token.lookup_self)
        assert info["data"]["ttl"] > 0


async def test_after_a_new_login_the_pool_moves_to_a_credential_of_the_new_token(
    stack: Stack, root: hvac.Client, admin: asyncpg.Connection
) -> None:
    # A lease dies with the token that created it: revoking the worker's token
    # (as an operator might) kills its database role too. The worker must log in
    # again and move its pool to a credential issued under the new token.
    async with session(stack, "fulfill") as vault:
        pool = RolePool(vault, _db(stack), "order-fulfill")
        await pool.open()
        try:
            first = pool.credential.username
            root.auth.token.revoke(vault.client.token)
            await asyncio.sleep(0.3)
            assert not await _role_exists(admin, first)  # revoked with its token
            await vault.renew_or_login()
            for _ in range(50):
                if pool.credential.username != first:
                    break
                await asyncio.sleep(0.1)
            assert pool.credential.username != first
            async with pool.connection() as conn:
                assert await conn.fetchval("SELECT current_user") == pool.credential.username
        finally:
            await pool.close()


async def test_a_credential_revoked_out_of_band_is_replaced_on_first_refusal(
    stack: Stack, root: hvac.Client, admin: asyncpg.Connection
) -> None:
    async with session(stack, "validate") as vault:
        pool = RolePool(vault, _db(stack), "order-validate")
        await pool.open()
        try:
            first = pool.credential
            root.sys.revoke_lease(first.lease_id)  # drops the role, ends its sessions
            assert not await _role_exists(admin, first.username)
            # the first use after revocation fails (an infrastructure error,
            # which Temporal retries)...
            with pytest.raises(
                (
                    asyncpg.InvalidPasswordError,
                    asyncpg.ConnectionDoesNotExistError,
                    asyncpg.AdminShutdownError,
                )
            ):
                async with pool.connection() as conn:
                    await conn.fetchval("SELECT 1")
            # ...and the pool moves to a new credential without waiting for renewal time
            for _ in range(50):
                if pool.credential.username != first.username:
                    break
                await asyncio.sleep(0.1)
            assert pool.credential.username != first.username
            async with pool.connection() as conn:
                assert await conn.fetchval("SELECT current_user") == pool.credential.username
        finally:
            await pool.close()
