"""Credentials under stress, against the real OpenBao and PostgreSQL.

* the Vault token reaches its max TTL under a query load, with and without a
  Vault outage at the moment it must be replaced: the session logs in again
  early enough that the pool's new credential is in use, and the old one
  drained, before the old token (and every lease it created) ends;
* a rotation that fails while Vault is unreachable is retried, not forgotten;
* a connection killed by an out-of-band ``lease revoke -prefix`` brings a new
  credential at once;
* shutdown revokes the Vault token even when a lease revoke fails;
* a credential really expires (Vault stopped past the role's ``VALID UNTIL``),
  and the pool recovers when Vault is back, with every operation retried
  afterwards succeeding.

Workers' calls go through the service's own identity (JWT login with the token
the local issuer wrote). The root token only shapes roles for a test and observes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg
import hvac
import hvac.exceptions
import pytest
from support import short_ttl

from orders_ops.stack import Stack
from orders_shared.config import DatabaseConfig, VaultConfig
from orders_shared.identity import Backoff, VaultSession
from orders_shared.leases import CREDENTIAL_GONE, LeasedPools, RolePool
from orders_shared.metrics import DB_LEASE_ROTATION_FAILURES
from orders_shared.runtime import shutdown

pytestmark = pytest.mark.stack

FAST = Backoff(first=0.2, cap=1.0)


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


def _vault_config(
    stack: Stack, service: str, auth_role: str | None = None, request_timeout: float = 1.0
) -> VaultConfig:
    return VaultConfig(
        addr=stack.settings.vault_addr,
        auth_method="jwt",
        auth_mount="jwt",
        auth_role=auth_role or f"orders-{service}",
        token_file=stack.settings.token_file(service),
        request_timeout=request_timeout,
    )


@contextlib.contextmanager
def short_token_role(root: hvac.Client, service: str, ttl: int, max_ttl: int) -> Iterator[str]:
    """A JWT auth role of the test's own: ``service``'s identity and policy, short token TTLs."""
    source = root.read(f"auth/jwt/role/orders-{service}")["data"]
    name = f"test-{service}-{uuid.uuid4().hex[:8]}"
    root.write(f"auth/jwt/role/{name}", **{**source, "token_ttl": ttl, "token_max_ttl": max_ttl})
    try:
        yield name
    finally:
        root.delete(f"auth/jwt/role/{name}")


@contextlib.contextmanager
def vault_stopped(stack: Stack) -> Iterator[None]:
    """SIGSTOP this stack's own Vault (its PID from the stack's pid file); always SIGCONT."""
    pid = stack.vault.pid()
    assert pid is not None, "the stack's Vault is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def _role_exists(admin: asyncpg.Connection, username: str) -> bool:
    return bool(await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", username))


async def _eventually(
    check: Callable[[], bool], timeout_polls: int = 100, every: float = 0.1
) -> bool:
    for _ in range(timeout_polls):
        if check():
            return True
        await asyncio.sleep(every)
    return False


class QueryLoad:
    """Tasks that keep queries of ``seconds_each`` running on a pool, recording failures."""

    def __init__(self, pool: RolePool, tasks: int = 4, seconds_each: float = 0.3) -> None:
        self.pool = pool
        self.seconds_each = seconds_each
        self.failures: list[str] = []
        self.done = 0
        self.users: set[str] = set()
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run()) for _ in range(tasks)]

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                async with self.pool.connection() as conn:
                    user = await conn.fetchval(
                        "SELECT current_user FROM pg_sleep($1)", self.seconds_each
                    )
                self.users.add(user)
                self.done += 1
            except Exception as exc:
                self.failures.append(type(exc).__name__)
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


# ---------------------------------------------------------------------------- item 1


async def _through_token_generations(
    stack: Stack,
    root: hvac.Client,
    admin: asyncpg.Connection,
    *,
    ttl: int,
    drain: float,
    outage_allowance: float,
    pause: float,
    query_seconds: float,
) -> None:
    """Run queries while the session's token reaches its max TTL twice.

    The role's max TTL is set so that each token's final (capped) renewal falls
    due with the least time left the session's own schedule allows: the worst
    case. With ``pause`` > 0, Vault is stopped for ``pause`` seconds just as that
    final renewal falls due.
    """
    with short_token_role(root, "fulfill", ttl=ttl, max_ttl=10 * ttl) as auth_role:
        vault = VaultSession(
            _vault_config(stack, "fulfill", auth_role),
            backoff=FAST,
            relogin_margin=drain + outage_allowance,
        )
        await vault.login()
        # renewals fall due every ttl - lead seconds; the first one must be granted in
        # full and the second one capped, with just over `lead` seconds left
        max_ttl = math.ceil(2 * ttl - vault.renew_lead + 0.5)
        path = f"auth/jwt/role/{auth_role}"
        root.write(path, **{**root.read(path)["data"], "token_max_ttl": max_ttl})
        vault.start()
        pool = RolePool(vault, _db(stack), "order-fulfill", drain_timeout=drain, backoff=FAST)
        await pool.open()
        load = QueryLoad(pool, seconds_each=query_seconds)
        pauses = 0
        try:
            while vault.logins < 3:
                # this token's hard end, as the test (not the session) knows it
                serial = vault.token_life.serial
                hard_end = time.monotonic() + max_ttl - (ttl - vault.token_seconds_left)
                while vault.token_life.serial == serial:
                    next_action = vault.token_life.expires_at - vault.renew_lead
                    final = next_action + ttl > hard_end
                    if pause and final and next_action - time.monotonic() < 0.5:
                        await asyncio.sleep(max(0.0, next_action - time.monotonic() - 0.1))
                        with vault_stopped(stack):
                            await asyncio.sleep(pause)
                        pauses += 1
                        await _eventually(lambda s=serial: vault.token_life.serial != s)
                        break
                    await asyncio.sleep(0.1)
            # the last generation's move and drain
            await _eventually(lambda: not pool.rotation_pending and not pool._revokers)
            await load.stop()
            assert load.failures == [], "queries failed while the token was replaced"
            assert load.done > 20
            assert vault.logins >= 3 and pool.rotations >= 2
            assert len(load.users) >= 3, "queries ran under each token's credential"
            if pause:
                assert pauses >= 2, "Vault was stopped at each final renewal"
            for user in load.users - {pool.credential.username}:
                assert not await _role_exists(admin, user), f"{user} outlived its token"
        finally:
            with contextlib.suppress(Exception):
                await load.stop()
            await pool.close()
            await vault.close()


async def test_token_max_ttl_under_load_loses_no_query(
    stack: Stack, root: hvac.Client, admin: asyncpg.Connection
) -> None:
    # token TTL 6 s; drain 1.5 s + outage 1.5 s = re-login margin 3 s
    await _through_token_generations(
        stack, root, admin, ttl=6, drain=1.5, outage_allowance=1.5, pause=0, query_seconds=0.3
    )


async def test_token_max_ttl_with_vault_down_at_the_last_renewal(
    stack: Stack, root: hvac.Client, admin: asyncpg.Connection
) -> None:
    # Vault stops for 6 s just as the token's last renewal falls due, with ~8.5 s of
    # the token left (its re-login margin: drain 2 s + outage 6 s). The re-login comes
    # late, but early enough for the old credential's queries to finish before the old
    # token ends. (A schedule with a third of the TTL, 5 s, as its margin fails here.)
    await _through_token_generations(
        stack, root, admin, ttl=15, drain=2.0, outage_allowance=6.0, pause=6.0, query_seconds=0.5
    )


# ---------------------------------------------------------------------------- item 2


async def _backend_running(admin: asyncpg.Connection, username: str) -> bool:
    return bool(
        await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state = 'active'",
            username,
        )
    )


async def _long_query(pool: RolePool) -> BaseException | None:
    try:
        async with pool.connection() as conn:
            await conn.fetchval("SELECT pg_sleep(30)")
    except Exception as exc:
        return exc
    return None


def _rotation_failures_metric(db_role: str) -> float:
    return float(DB_LEASE_ROTATION_FAILURES.labels(db_role)._value.get())


async def test_a_rotation_that_fails_while_vault_is_away_is_retried(
    stack: Stack, admin: asyncpg.Connection
) -> None:
    vault = VaultSession(_vault_config(stack, "validate"), backoff=FAST)
    await vault.login()
    pool = RolePool(vault, _db(stack), "order-validate", drain_timeout=1, backoff=FAST)
    await pool.open()
    try:
        first = pool.credential.username
        metric_before = _rotation_failures_metric("order-validate")
        query = asyncio.create_task(_long_query(pool))
        for _ in range(100):
            if await _backend_running(admin, first):
                break
            await asyncio.sleep(0.05)
        with vault_stopped(stack):
            # the credential's session is killed (as a revocation would) while Vault
            # cannot issue a new one: the rotation it asks for fails...
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                first,
            )
            assert isinstance(await query, CREDENTIAL_GONE)
            assert await _eventually(lambda: pool.rotation_failures >= 1)
            assert pool.rotation_pending, "the failed rotation is still wanted"
        # ...and is retried once Vault is back, without anything else asking again
        assert await _eventually(lambda: pool.credential.username != first)
        assert not pool.rotation_pending
        assert _rotation_failures_metric("order-validate") > metric_before
        async with pool.connection() as conn:
            assert await conn.fetchval("SELECT current_user") == pool.credential.username
    finally:
        await pool.close()
        await vault.close()


async def test_a_lease_revoke_prefix_kills_a_query_and_brings_a_new_credential_at_once(
    stack: Stack, root: hvac.Client, admin: asyncpg.Connection
) -> None:
    vault = VaultSession(_vault_config(stack, "notify"), backoff=FAST)
    await vault.login()
    pool = RolePool(vault, _db(stack), "order-notify", drain_timeout=1, backoff=FAST)
    await pool.open()
    try:
        first = pool.credential.username
        query = asyncio.create_task(_long_query(pool))
        for _ in range(100):
            if await _backend_running(admin, first):
                break
            await asyncio.sleep(0.05)
        # an operator: vault lease revoke -prefix database/creds/order-notify
        root.sys.revoke_prefix("database/creds/order-notify")
        error = await query
        assert isinstance(error, (asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError))
        # nothing uses the pool now: the killed query alone brings the new credential
        assert await _eventually(lambda: pool.credential.username != first)
        assert not await _role_exists(admin, first)
        async with pool.connection() as conn:  # the retried operation succeeds
            assert await conn.fetchval("SELECT current_user") == pool.credential.username
    finally:
        await pool.close()
        await vault.close()


async def test_shutdown_revokes_the_token_even_when_a_lease_revoke_fails(
    stack: Stack, root: hvac.Client, admin: asyncpg.Connection
) -> None:
    vault = VaultSession(_vault_config(stack, "fulfill"), backoff=FAST)
    await vault.login()
    token = vault.client.token
    pools = LeasedPools(vault, _db(stack), ["order-fulfill"], drain_timeout=1, backoff=FAST)
    await pools.open()
    cred = pools.pools["order-fulfill"].credential
    real_lease, username = cred.lease_id, cred.username
    # a revoke Vault refuses (this identity may not touch another role's leases)
    cred.lease_id = real_lease.replace("order-fulfill", "order-validate")
    try:

        class Broken:
            """A second source whose close fails outright."""

            def connection(self, db_role: str) -> contextlib.AbstractAsyncContextManager[object]:
                raise NotImplementedError

            async def close(self) -> None:
                await pools.close()
                raise RuntimeError("pool close failed")

        await shutdown(vault, Broken())  # type: ignore[arg-type]
        with pytest.raises(hvac.exceptions.VaultError):
            root.auth.token.lookup(token)  # the token is gone...
        # ...and with it the lease whose own revoke was refused
        for _ in range(50):
            if not await _role_exists(admin, username):
                break
            await asyncio.sleep(0.1)
        assert not await _role_exists(admin, username)
    finally:
        cred.lease_id = real_lease
        with contextlib.suppress(Exception):
            root.sys.revoke_lease(real_lease)


# ---------------------------------------------------------------------------- item 3


async def _valid_until_passed(admin: asyncpg.Connection, username: str) -> bool:
    return bool(
        await admin.fetchval(
            "SELECT rolvaliduntil < now() FROM pg_roles WHERE rolname = $1", username
        )
    )


@pytest.mark.parametrize("token_expires", [False, True], ids=["lease", "lease-and-token"])
async def test_a_credential_that_really_expires_recovers_when_vault_returns(
    stack: Stack, root: hvac.Client, admin: asyncpg.Connection, token_expires: bool
) -> None:
    """Vault stopped past the credential's VALID UNTIL (and, in one run, past the Vault
    token's end): operations fail meanwhile, and every one, retried, succeeds after."""
    with contextlib.ExitStack() as roles:
        roles.enter_context(short_ttl(root, "order-process-payment", ttl=3, max_ttl=120))
        auth_role = None
        if token_expires:
            auth_role = roles.enter_context(short_token_role(root, "payment", ttl=5, max_ttl=120))
        vault = VaultSession(
            _vault_config(stack, "payment", auth_role), backoff=FAST, relogin_margin=2
        )
        await vault.login()
        vault.start()
        pool = RolePool(vault, _db(stack), "order-process-payment", drain_timeout=1, backoff=FAST)
        await pool.open()
        cred = pool.credential
        attempts: dict[int, int] = {}
        results: dict[int, int] = {}

        async def operation(n: int) -> None:
            """One unit of work, retried (as Temporal retries an activity) until it succeeds."""
            while True:
                attempts[n] = attempts.get(n, 0) + 1
                try:
                    async with pool.connection() as conn:
                        results[n] = await conn.fetchval(
                            "SELECT $1::int + 0 * count(*) FROM app.payments", n
                        )
                    return
                except (*CREDENTIAL_GONE, asyncpg.InterfaceError, asyncpg.InternalClientError):
                    # infrastructure errors are retried (a connection killed while idle can
                    # surface as InternalClientError); anything else fails the test
                    await asyncio.sleep(0.3)

        try:
            await asyncio.gather(*(operation(n) for n in range(5)))  # all fine before
            with vault_stopped(stack):
                assert await _eventually(
                    lambda: (
                        cred.lease_seconds_left == 0
                        and (not token_expires or vault.token_seconds_left == 0)
                    ),
                    timeout_polls=200,
                )
                for _ in range(50):  # Postgres's clock, not ours, decides
                    if await _valid_until_passed(admin, cred.username):
                        break
                    await asyncio.sleep(0.1)
                # the credential really is dead for new logins...
                with pytest.raises(asyncpg.InvalidPasswordError):
                    await asyncpg.connect(
                        host="127.0.0.1",
                        port=stack.settings.postgres_port,
                        database="orders",
                        user=cred.username,
                        password=cred.password,
                    )
                # ...and the pool must open new connections (its sessions are recycled)
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                    cred.username,
                )
                work = asyncio.gather(*(operation(n) for n in range(5, 25)))
                await asyncio.sleep(2)  # operations fail and retry while Vault is away
                failed_meanwhile = sum(attempts[n] - 1 for n in range(5, 25) if n in attempts)
                assert failed_meanwhile > 0, "the expired credential did stop the work"
                assert results.keys() == set(range(5)), "no operation got through meanwhile"
            await asyncio.wait_for(work, timeout=60)
            assert results == {n: n for n in range(25)}, "every operation succeeded in the end"
            assert pool.credential.username != cred.username
            if token_expires:
                assert vault.logins >= 2
            async with pool.connection() as conn:
                assert await conn.fetchval("SELECT current_user") == pool.credential.username
        finally:
            await pool.close()
            await vault.close()
