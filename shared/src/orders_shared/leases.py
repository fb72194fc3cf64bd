"""Short-lived database credentials from Vault, one lease per (process, database role).

Each database role a service may use gets a :class:`RolePool`: one credential
issued by Vault's database secrets engine and one asyncpg pool logged in with
it. Never one credential per activity call: that would cost a Vault round trip
and a Postgres role creation for every step.

Lifecycle of a credential:

* renewed at two thirds of its lease, which moves the role's ``VALID UNTIL``;
* when Vault caps a renewal (the lease nears its max TTL), a new credential is
  issued, the pool switches to it (``set_connect_args`` + ``expire_connections``:
  connections in use finish their work, idle ones are replaced on next use) and
  the old lease is revoked once no query that started on it is still running;
* while Vault is unreachable, the current credential keeps serving (Postgres
  checks ``VALID UNTIL`` only at login) and renewal is retried with backoff;
* on :meth:`LeasedPools.close` every pool is closed and every lease revoked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import asyncpg
import hvac.exceptions
import structlog

from orders_shared.config import DatabaseConfig
from orders_shared.db import Connection
from orders_shared.identity import VAULT_UNAVAILABLE, Backoff, VaultSession
from orders_shared.metrics import (
    DB_CREDENTIALS_ISSUED,
    DB_LEASE_RENEWALS,
    DB_LEASE_ROTATIONS,
    DB_LEASE_SECONDS_LEFT,
)

log = structlog.get_logger(__name__)


class CredentialError(RuntimeError):
    """Vault would not issue a database credential; the message says which and why."""


@dataclass
class Credential:
    db_role: str
    username: str
    password: str = field(repr=False)
    lease_id: str
    ttl: float  # the lease duration Vault granted at issue
    renewable: bool
    expires_at: float  # time.monotonic() deadline

    @property
    def seconds_left(self) -> float:
        return max(0.0, self.expires_at - time.monotonic())


class RolePool:
    """One Vault database role: its current credential and its asyncpg pool."""

    def __init__(
        self,
        vault: VaultSession,
        db: DatabaseConfig,
        db_role: str,
        *,
        drain_timeout: float = 60.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.vault = vault
        self.db = db
        self.db_role = db_role
        self.drain_timeout = drain_timeout
        self._backoff = backoff or Backoff()
        self._pool: asyncpg.Pool | None = None
        self._cred: Credential | None = None
        self._generation = 0
        self._in_flight: Counter[int] = Counter()
        self._drained = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._revokers: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._rotate_requested = False
        self.issued = 0
        self.renewals = 0
        self.rotations = 0
        for counter in (DB_CREDENTIALS_ISSUED, DB_LEASE_RENEWALS, DB_LEASE_ROTATIONS):
            counter.labels(db_role)  # exported at 0 from the start, not only once it moves
        DB_LEASE_SECONDS_LEFT.labels(db_role).set_function(
            lambda: self._cred.seconds_left if self._cred else 0.0
        )

    # -- public ------------------------------------------------------------------------
    @property
    def credential(self) -> Credential:
        if self._cred is None:
            raise RuntimeError(f"pool for {self.db_role} is not open")
        return self._cred

    async def open(self) -> None:
        cred = await self._issue()
        self._pool = await asyncpg.create_pool(
            host=self.db.host,
            port=self.db.port,
            database=self.db.name,
            user=cred.username,
            password=cred.password,
            min_size=0,
            max_size=self.db.pool_max,
            # a statement stuck on a paused database must fail (and be retried by
            # Temporal) rather than hold a connection and an activity slot forever
            command_timeout=self.db.command_timeout,
        )
        self._cred = cred
        self.vault.add_login_listener(self._on_vault_login)
        self._task = asyncio.create_task(self._maintain(), name=f"lease-{self.db_role}")

    def _on_vault_login(self) -> None:
        # A lease dies with the Vault token that created it. After a new login the
        # old token runs out soon, so move to a credential issued under the new one.
        self._rotate_requested = True
        self._wake.set()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        if self._pool is None:
            raise RuntimeError(f"pool for {self.db_role} is not open")
        generation = self._generation
        self._in_flight[generation] += 1
        try:
            async with self._pool.acquire() as conn:
                with structlog.contextvars.bound_contextvars(db_role=self.db_role):
                    yield conn
        except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError):
            # Postgres refused the credential (revoked out of band, or expired while
            # Vault was away): ask for a new one now rather than at the next renewal.
            # The caller's error stays an infrastructure error, so Temporal retries it.
            if generation == self._generation and not self._rotate_requested:
                log.warning("db.credential_rejected", db_role=self.db_role)
                self._rotate_requested = True
                self._wake.set()
            raise
        finally:
            self._in_flight[generation] -= 1
            if self._in_flight[generation] <= 0:
                del self._in_flight[generation]
                async with self._drained:
                    self._drained.notify_all()

    async def rotate(self) -> None:
        """Switch the pool to a new credential; revoke the old lease once drained."""
        assert self._pool is not None
        new = await self._issue()
        old, old_generation = self._cred, self._generation
        self._pool.set_connect_args(
            host=self.db.host,
            port=self.db.port,
            database=self.db.name,
            user=new.username,
            password=new.password,
            command_timeout=self.db.command_timeout,
        )
        await self._pool.expire_connections()
        self._cred = new
        self._generation += 1
        self.rotations += 1
        DB_LEASE_ROTATIONS.labels(self.db_role).inc()
        log.info("db.credential_rotated", db_role=self.db_role, lease_ttl=new.ttl)
        if old is not None:
            task = asyncio.create_task(self._drain_then_revoke(old, old_generation))
            self._revokers.add(task)
            task.add_done_callback(self._revokers.discard)

    async def close(self) -> None:
        self.vault.remove_login_listener(self._on_vault_login)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._revokers:
            await asyncio.gather(*self._revokers, return_exceptions=True)
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), timeout=self.drain_timeout)
            except TimeoutError:
                self._pool.terminate()
            self._pool = None
        if self._cred is not None:
            await self._revoke(self._cred)
            self._cred = None

    # -- Vault ---------------------------------------------------------------------------
    async def _issue(self) -> Credential:
        try:
            resp = await self.vault.call(
                self.vault.client.secrets.database.generate_credentials,
                self.db_role,
                mount_point=self.db.mount,
            )
        except hvac.exceptions.Forbidden:
            raise CredentialError(
                f"Vault denied database/creds/{self.db_role} to this identity "
                f"(policies {', '.join(self.vault.policies) or 'none'}): this service may "
                f"not use that role, or its policy is missing it (orders-bootstrap)"
            ) from None
        except hvac.exceptions.InvalidRequest as exc:
            raise CredentialError(
                f"Vault could not issue a credential for {self.db_role}: {exc}"
            ) from None
        self.issued += 1
        DB_CREDENTIALS_ISSUED.labels(self.db_role).inc()
        ttl = float(resp["lease_duration"])
        log.info("db.credential_issued", db_role=self.db_role, lease_ttl=ttl)
        return Credential(
            db_role=self.db_role,
            username=resp["data"]["username"],
            password=resp["data"]["password"],
            lease_id=resp["lease_id"],
            ttl=ttl,
            renewable=bool(resp["renewable"]),
            expires_at=time.monotonic() + ttl,
        )

    async def _renew(self, cred: Credential) -> float:
        # The URL form (sys/leases/renew/<lease id>) lets the policy scope renewal to
        # this role's own leases; the body form would need renew rights on every lease.
        resp = await self.vault.request(
            "lease_renew",
            self.vault.client.adapter.put,
            f"/v1/sys/leases/renew/{cred.lease_id}",
            json={"increment": int(cred.ttl)},
        )
        granted = float(resp["lease_duration"])
        cred.expires_at = time.monotonic() + granted
        self.renewals += 1
        DB_LEASE_RENEWALS.labels(self.db_role).inc()
        return granted

    async def _revoke(self, cred: Credential) -> None:
        for attempt in range(5):
            try:
                await self.vault.request(
                    "lease_revoke",
                    self.vault.client.adapter.put,
                    f"/v1/sys/leases/revoke/{cred.lease_id}",
                )
                log.info("db.credential_revoked", db_role=self.db_role)
                return
            except VAULT_UNAVAILABLE:
                await asyncio.sleep(self._backoff.delay(attempt))
        # Vault will still revoke it at the lease's expiry; say so instead of hanging
        log.warning("db.revoke_failed", db_role=self.db_role, expires_in=cred.seconds_left)

    async def _drain_then_revoke(self, old: Credential, generation: int) -> None:
        deadline = min(self.drain_timeout, old.seconds_left)
        async with self._drained:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._drained.wait_for(lambda: self._in_flight[generation] <= 0),
                    timeout=deadline,
                )
        await self._revoke(old)

    # -- background maintenance -------------------------------------------------------------
    async def _maintain(self) -> None:
        attempt = 0
        while True:
            cred = self.credential
            if attempt == 0:
                wait = max(0.0, cred.seconds_left - cred.ttl / 3)
            else:
                wait = self._backoff.delay(attempt)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            self._wake.clear()
            try:
                if self._rotate_requested or not cred.renewable or cred.seconds_left <= 0:
                    self._rotate_requested = False
                    await self.rotate()
                else:
                    granted = await self._renew(cred)
                    if granted < cred.ttl * 2 / 3:
                        # the lease is near its max TTL: move to a fresh credential now,
                        # while the old one still has time to drain
                        await self.rotate()
                attempt = 0
            except VAULT_UNAVAILABLE as exc:
                attempt += 1
                log.warning(
                    "db.renew_failed",
                    db_role=self.db_role,
                    error=type(exc).__name__,
                    lease_seconds_left=round(cred.seconds_left, 1),
                    attempt=attempt,
                )
            except hvac.exceptions.Forbidden:
                # our Vault token expired or was revoked: log in again (which asks for a
                # new credential through the login listener), then retry
                attempt += 1
                with contextlib.suppress(Exception):
                    await self.vault.login()
            except hvac.exceptions.InvalidRequest:
                # the lease is gone (revoked out of band): get a new credential next round
                attempt += 1
                self._rotate_requested = True
            except CredentialError as exc:
                attempt += 1
                log.error("db.issue_failed", db_role=self.db_role, error=str(exc))
            except Exception as exc:  # never let the loop die: the pool would run dry
                attempt += 1
                self._rotate_requested = True  # whatever it was, a fresh credential is safest
                log.error(
                    "db.maintenance_error",
                    db_role=self.db_role,
                    error_type=type(exc).__name__,
                    attempt=attempt,
                )


class LeasedPools:
    """The production :class:`~orders_shared.db.ConnectionSource`: Vault-leased pools per role."""

    def __init__(
        self,
        vault: VaultSession,
        db: DatabaseConfig,
        db_roles: Iterable[str],
        *,
        drain_timeout: float = 60.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.vault = vault
        self.pools = {
            role: RolePool(vault, db, role, drain_timeout=drain_timeout, backoff=backoff)
            for role in db_roles
        }

    async def open(self) -> None:
        """Issue every role's credential now, so a worker is only ready when it can work."""
        opened: list[RolePool] = []
        try:
            for pool in self.pools.values():
                await pool.open()
                opened.append(pool)
        except BaseException:
            for pool in opened:
                await pool.close()
            raise

    def connection(self, db_role: str) -> contextlib.AbstractAsyncContextManager[Connection]:
        try:
            pool = self.pools[db_role]
        except KeyError:
            raise PermissionError(
                f"database role {db_role!r} is not one of this service's roles "
                f"({', '.join(self.pools) or 'none'})"
            ) from None
        return pool.connection()

    async def close(self) -> None:
        await asyncio.gather(*(pool.close() for pool in self.pools.values()))
