"""Short-lived database credentials from Vault, one lease per (process, database role).

Each database role a service may use gets a :class:`RolePool`: one credential
issued by Vault's database secrets engine and one asyncpg pool logged in with
it. Never one credential per activity call: that would cost a Vault round trip
and a Postgres role creation for every step.

Lifecycle of a credential:

* renewed at two thirds of its lease, which moves the role's ``VALID UNTIL``;
* rotated (a new credential is issued, the pool switches to it with
  ``set_connect_args`` + ``expire_connections``: connections in use finish their
  work, idle ones are replaced on next use, and the old lease is revoked once no
  query that started on it is still running, or after the drain window) when:
  Vault caps a renewal (the lease nears its max TTL); the Vault session logged
  in again (a lease dies with the token that created it); Postgres refuses the
  credential or kills a connection of it (``AdminShutdown``, connection gone:
  revoked out of band); or the lease is gone at renewal;
* a rotation that fails (Vault unreachable, token refused) stays requested and
  is retried with backoff until it succeeds
  (``orders_db_lease_rotation_failures_total`` counts the failures);
* while Vault is unreachable, the current credential keeps serving (Postgres
  checks ``VALID UNTIL`` only at login) and renewal is retried with backoff;
* on :meth:`LeasedPools.close` every pool is closed and every lease revoked; a
  revoke that fails is logged and never stops the others (the Vault token's
  revocation, which follows, ends any lease it created).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
import hvac.exceptions
import structlog

from orders_shared.config import DatabaseConfig
from orders_shared.db import Connection, ConnectionSource
from orders_shared.identity import (
    DEFAULT_DRAIN_WINDOW,
    VAULT_UNAVAILABLE,
    Backoff,
    TokenLife,
    VaultSession,
)
from orders_shared.metrics import (
    DB_CREDENTIALS_ISSUED,
    DB_LEASE_RENEWALS,
    DB_LEASE_ROTATION_FAILURES,
    DB_LEASE_ROTATIONS,
    DB_LEASE_SECONDS_LEFT,
)

log = structlog.get_logger(__name__)


# What a pooled connection raises when its credential is no longer good: refused at
# login (revoked, or VALID UNTIL passed while Vault was away), or the session killed
# by a revocation (Vault's revoke terminates the role's backends).
CREDENTIAL_GONE: tuple[type[BaseException], ...] = (
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.AdminShutdownError,
    asyncpg.ConnectionDoesNotExistError,
)


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
    expires_at: float  # time.monotonic() deadline of the lease itself
    token: TokenLife | None = field(default=None, repr=False)  # the Vault token it hangs on

    @property
    def lease_seconds_left(self) -> float:
        return max(0.0, self.expires_at - time.monotonic())

    @property
    def seconds_left(self) -> float:
        """Until the credential dies: its lease's end or its Vault token's, the earlier."""
        left = self.lease_seconds_left
        if self.token is not None:
            left = min(left, self.token.seconds_left)
        return left


class RolePool:
    """One Vault database role: its current credential and its asyncpg pool."""

    def __init__(
        self,
        vault: VaultSession,
        db: DatabaseConfig,
        db_role: str,
        *,
        drain_timeout: float = DEFAULT_DRAIN_WINDOW,
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
        self._rotate_lock = asyncio.Lock()
        # a rotation request stays pending until a rotation that started after it succeeds
        self._rotation_pending = False
        self._rotation_seq = 0
        self.issued = 0
        self.renewals = 0
        self.rotations = 0
        self.rotation_failures = 0
        for counter in (
            DB_CREDENTIALS_ISSUED,
            DB_LEASE_RENEWALS,
            DB_LEASE_ROTATIONS,
            DB_LEASE_ROTATION_FAILURES,
        ):
            counter.labels(db_role)  # exported at 0 from the start, not only once it moves
        DB_LEASE_SECONDS_LEFT.labels(db_role).set_function(
            lambda: self._cred.seconds_left if self._cred else 0.0
        )

    # -- public ------------------------------------------------------------------------
    @property
    def rotation_pending(self) -> bool:
        return self._rotation_pending

    def request_rotation(self, reason: str) -> None:
        """Ask for a new credential now; kept until a rotation succeeds."""
        self._rotation_seq += 1
        if not self._rotation_pending:
            log.info("db.rotation_requested", db_role=self.db_role, reason=reason)
        self._rotation_pending = True
        self._wake.set()

    @property
    def credential(self) -> Credential:
        if self._cred is None:
            raise RuntimeError(f"pool for {self.db_role} is not open")
        return self._cred

    async def open(self) -> None:
        cred = await self._issue()
        self._pool = await asyncpg.create_pool(
            min_size=0, max_size=self.db.pool_max, **self._connect_args(cred)
        )
        self._cred = cred
        self.vault.add_login_listener(self._on_vault_login)
        self._task = asyncio.create_task(self._maintain(), name=f"lease-{self.db_role}")

    def _connect_args(self, cred: Credential) -> dict[str, Any]:
        """Every argument a connection of ``cred`` opens with, at open and at each rotation."""
        return {
            "host": self.db.host,
            "port": self.db.port,
            "database": self.db.name,
            "user": cred.username,
            "password": cred.password,
            # a statement stuck on a paused database must fail (and be retried by
            # Temporal) rather than hold a connection and an activity slot forever
            "command_timeout": self.db.command_timeout,
            "ssl": self.db.ssl_arg(),  # verify-full in TLS mode: CA bundle and host name checked
        }

    def _on_vault_login(self) -> None:
        # A lease dies with the Vault token that created it. After a new login the
        # old token runs out soon, so move to a credential issued under the new one.
        self.request_rotation("vault_login")

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
        except CREDENTIAL_GONE as exc:
            # Postgres refused the credential (revoked out of band, or expired while
            # Vault was away) or killed its session (a revocation terminates the
            # role's backends): ask for a new one now rather than at the next renewal.
            # Only for the current credential: the old one's sessions end on purpose.
            # The caller's error stays an infrastructure error, so Temporal retries it.
            if generation == self._generation and not self._rotation_pending:
                log.warning(
                    "db.credential_rejected", db_role=self.db_role, error=type(exc).__name__
                )
                self.request_rotation("credential_rejected")
            raise
        finally:
            self._in_flight[generation] -= 1
            if self._in_flight[generation] <= 0:
                del self._in_flight[generation]
                async with self._drained:
                    self._drained.notify_all()

    async def rotate(self) -> None:
        """Switch the pool to a new credential; revoke the old lease once drained."""
        async with self._rotate_lock:
            await self._rotate()

    async def _rotate(self) -> None:
        assert self._pool is not None
        new = await self._issue()
        old, old_generation = self._cred, self._generation
        # set_connect_args replaces every connection argument: the same set as at open
        self._pool.set_connect_args(**self._connect_args(new))
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
        """Stop maintenance, close the pool, revoke every lease; the lease revoke always runs."""
        self.vault.remove_login_listener(self._on_vault_login)
        try:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                self._task = None
            if self._revokers:
                await asyncio.gather(*self._revokers, return_exceptions=True)
            if self._pool is not None:
                pool, self._pool = self._pool, None
                try:
                    await asyncio.wait_for(pool.close(), timeout=self.drain_timeout)
                except TimeoutError:
                    pool.terminate()
        finally:
            if self._cred is not None:
                cred, self._cred = self._cred, None
                await self._revoke(cred)

    # -- Vault ---------------------------------------------------------------------------
    async def _issue(self) -> Credential:
        token = self.vault.token_life  # the token this request is made with
        try:
            resp = await self.vault.call(
                self.vault.client.secrets.database.generate_credentials,
                self.db_role,
                mount_point=self.db.mount,
            )
        except hvac.exceptions.Forbidden:
            if not await self._token_alive(token):
                raise  # our token expired or was revoked: the caller logs in again
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
            token=token,
        )

    async def _token_alive(self, token: TokenLife) -> bool:
        """Is the token a request used still good (so a refusal is the policy's, not its)?"""
        if self.vault.token_life is not token:
            return False  # replaced by a new login meanwhile: just try again with that one
        try:
            await self.vault.request("lookup_self", self.vault.client.auth.token.lookup_self)
        except hvac.exceptions.Forbidden:
            return False
        except (*VAULT_UNAVAILABLE, hvac.exceptions.VaultError):
            return self.vault.logged_in
        return True

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
        """Revoke a lease; never raises (a lease left behind ends with its lease or token)."""
        error = "none"
        for attempt in range(5):
            try:
                await self.vault.request(
                    "lease_revoke",
                    self.vault.client.adapter.put,
                    f"/v1/sys/leases/revoke/{cred.lease_id}",
                )
                log.info("db.credential_revoked", db_role=self.db_role)
                return
            except VAULT_UNAVAILABLE as exc:
                error = type(exc).__name__
                await asyncio.sleep(self._backoff.delay(attempt))
            except hvac.exceptions.VaultError as exc:
                error = type(exc).__name__  # refused: retrying will not change that
                break
        # Vault will still revoke it at the lease's (or its token's) end; say so
        log.warning(
            "db.revoke_failed",
            db_role=self.db_role,
            error=error,
            expires_in=round(cred.seconds_left, 1),
        )

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
            if attempt:
                wait = self._backoff.delay(attempt)
            elif self._rotation_pending:
                wait = 0.0
            else:
                # renew at two thirds of the lease (its own end: a token about to end is
                # the session's business, and its next login asks for a rotation)
                wait = max(0.0, cred.lease_seconds_left - cred.ttl / 3)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
            self._wake.clear()
            rotating = self._rotation_pending or not cred.renewable or cred.lease_seconds_left <= 0
            try:
                if rotating:
                    seq = self._rotation_seq
                    await self.rotate()
                    if self._rotation_seq == seq:  # no new request came in meanwhile
                        self._rotation_pending = False
                else:
                    granted = await self._renew(cred)
                    if granted < cred.ttl * 2 / 3:
                        # the lease is near its max TTL: move to a fresh credential now,
                        # while the old one still has time to drain
                        self.request_rotation("lease_max_ttl")
                attempt = 0
                continue
            except VAULT_UNAVAILABLE as exc:
                error = type(exc).__name__
            except hvac.exceptions.Forbidden:
                # our Vault token expired or was revoked: log in again (which asks for a
                # new credential through the login listener), then retry
                error = "Forbidden"
                with contextlib.suppress(Exception):
                    # a revoked token is marked gone (so close() does not try to revoke
                    # it again) and replaced; otherwise log in again as before
                    if not await self.vault.recover_refused():
                        await self.vault.login()
            except hvac.exceptions.InvalidRequest:
                # the lease is gone (revoked out of band, or expired while Vault was
                # away): get a new credential next round
                error = "InvalidRequest"
                self.request_rotation("lease_gone")
            except CredentialError as exc:
                error = "CredentialError"
                log.error("db.issue_failed", db_role=self.db_role, error=str(exc))
            except Exception as exc:  # never let the loop die: the pool would run dry
                error = type(exc).__name__
                self.request_rotation("maintenance_error")  # a fresh credential is safest
            attempt += 1
            if rotating:
                self.rotation_failures += 1
                DB_LEASE_ROTATION_FAILURES.labels(self.db_role).inc()
            log.warning(
                "db.rotation_failed" if rotating else "db.renew_failed",
                db_role=self.db_role,
                error=error,
                lease_seconds_left=round(cred.seconds_left, 1),
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
        drain_timeout: float = DEFAULT_DRAIN_WINDOW,
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
        """Close every pool and revoke every lease; one pool's failure never stops another's."""
        results = await asyncio.gather(
            *(pool.close() for pool in self.pools.values()), return_exceptions=True
        )
        for role, result in zip(self.pools, results, strict=True):
            if isinstance(result, BaseException):
                log.error("db.close_failed", db_role=role, error_type=type(result).__name__)


if TYPE_CHECKING:  # LeasedPools stays a ConnectionSource: activities only know that protocol
    _source: type[ConnectionSource] = LeasedPools
