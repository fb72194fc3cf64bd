"""Workload identity: log in to Vault with the workload's own token and stay logged in.

A worker never holds a static Vault token. It presents its identity token
(a Kubernetes ServiceAccount token in a cluster, the local issuer's JWT in
process mode) at Vault's ``kubernetes`` or ``jwt`` auth method, keeps the
Vault token it gets alive, and logs in again (re-reading the token file, which
the kubelet or the local issuer rotates) before the token reaches its max TTL.

Timing (``T`` is the TTL granted at login, ``M`` the re-login margin):

* the token is renewed (with increment ``T``) when ``L = min(max(T/3, M), 2T/3)``
  seconds of it are left: an outage of up to ``L`` is survived on the old token;
* a renewal granted less than ``T`` has hit the max TTL: the token's end is now
  fixed, and the session logs in again at once, with at least ``L`` seconds of
  the old token left. Database leases are children of the token that created
  them and die with it, so ``M`` is the pools' drain window plus the Vault outage
  to survive (default 60 s + 60 s): after the new login the pools move to new
  credentials, and the old ones get their drain window before the old token ends;
* a refused renewal (token revoked or expired) logs in again at once.

hvac is synchronous (requests). Every Vault call runs on a small thread pool
so it never blocks the event loop, and hvac stays out of workflow modules.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests
import structlog

from orders_shared.config import VaultConfig
from orders_shared.metrics import (
    VAULT_LOGINS,
    VAULT_REQUESTS,
    VAULT_TOKEN_RENEWALS,
    VAULT_TOKEN_SECONDS_LEFT,
)

T = TypeVar("T")
log = structlog.get_logger(__name__)

# Errors that mean "Vault is not answering right now", as opposed to "Vault said no".
VAULT_UNAVAILABLE: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    hvac.exceptions.VaultDown,
    hvac.exceptions.InternalServerError,
    hvac.exceptions.BadGateway,
)


DEFAULT_DRAIN_WINDOW = 60.0
"""Seconds a retired database credential's running queries get before its lease is revoked."""
DEFAULT_OUTAGE_ALLOWANCE = 60.0
"""Seconds of Vault outage the last stretch of a token must survive before it ends."""
DEFAULT_RELOGIN_MARGIN = DEFAULT_DRAIN_WINDOW + DEFAULT_OUTAGE_ALLOWANCE


class VaultLoginError(RuntimeError):
    """Vault refused the workload's identity; the message says what to check."""


@dataclass
class TokenLife:
    """One Vault token of a session: when it ends. Renewals move ``expires_at``."""

    serial: int  # 1 for the first login, +1 per login
    expires_at: float  # time.monotonic() deadline
    capped: bool = False  # a renewal hit the max TTL: this end is final
    token: str = field(default="", repr=False)  # kept only to revoke it at close

    @property
    def seconds_left(self) -> float:
        return max(0.0, self.expires_at - time.monotonic())


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, capped; shared by every retry loop here."""

    first: float = 0.5
    cap: float = 15.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.first * 2**attempt))  # noqa: S311


class VaultSession:
    """An authenticated hvac client for one workload identity, kept valid in the background."""

    def __init__(
        self,
        config: VaultConfig,
        *,
        backoff: Backoff | None = None,
        executor_threads: int = 4,
        relogin_margin: float = DEFAULT_RELOGIN_MARGIN,
    ) -> None:
        self.config = config
        self.relogin_margin = relogin_margin
        self._client = hvac.Client(url=config.addr, timeout=config.request_timeout)
        self._executor = ThreadPoolExecutor(executor_threads, thread_name_prefix="vault")
        self._backoff = backoff or Backoff()
        self._login_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.token_ttl: float = 0.0  # TTL granted at the last login (the renewal increment)
        self.token_renewable = False
        self._life = TokenLife(serial=0, expires_at=0.0)
        self._retired: list[TokenLife] = []  # tokens replaced by a new login, revoked at close
        self.policies: tuple[str, ...] = ()
        self.logins = 0
        self.renewals = 0
        self._login_listeners: list[Callable[[], None]] = []
        self._refusal_checked = -1.0e9  # monotonic time of the last recover_refused check
        VAULT_TOKEN_SECONDS_LEFT.set_function(lambda: self.token_seconds_left)

    @classmethod
    async def open(cls, config: VaultConfig, **options: Any) -> VaultSession:
        """A session already logged in (closed again, without revoking, if login fails)."""
        session = cls(config, **options)
        try:
            await session.login()
        except BaseException:
            await session.close(revoke=False)
            raise
        return session

    # -- calls ---------------------------------------------------------------------
    async def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a blocking hvac call on the Vault thread pool (metrics label: its name)."""
        return await self.request(getattr(fn, "__name__", "call"), fn, *args, **kwargs)

    async def request(
        self, operation: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> T:
        """Like :meth:`call`, with an explicit operation name for the metrics."""
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                self._executor, functools.partial(fn, *args, **kwargs)
            )
        except BaseException as exc:
            VAULT_REQUESTS.labels(operation, _outcome(exc)).inc()
            raise
        VAULT_REQUESTS.labels(operation, "ok").inc()
        return result

    @property
    def client(self) -> hvac.Client:
        """The hvac client; use it only through :meth:`call`."""
        return self._client

    @property
    def token_life(self) -> TokenLife:
        """The current token's life; a lease issued now dies no later than it."""
        return self._life

    @property
    def token_expires_at(self) -> float:
        return self._life.expires_at

    @token_expires_at.setter
    def token_expires_at(self, value: float) -> None:
        self._life.expires_at = value

    @property
    def token_seconds_left(self) -> float:
        return self._life.seconds_left

    @property
    def renew_lead(self) -> float:
        """Seconds before the token's end at which it is renewed (or replaced)."""
        ttl = self.token_ttl
        return min(max(ttl / 3, self.relogin_margin), ttl * 2 / 3)

    @property
    def logged_in(self) -> bool:
        return self.token_seconds_left > 0

    def add_login_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every login but the first (a new token replaced the old)."""
        self._login_listeners.append(callback)

    def remove_login_listener(self, callback: Callable[[], None]) -> None:
        if callback in self._login_listeners:
            self._login_listeners.remove(callback)

    # -- login -----------------------------------------------------------------------
    async def login(self) -> None:
        """Log in with the identity token (re-read from its file every time)."""
        async with self._login_lock:
            await self._login()

    async def _login(self) -> None:
        cfg = self.config
        started = time.monotonic()
        if cfg.auth_method == "token":
            assert cfg.static_token is not None
            self._client.token = cfg.static_token
            info = await self.call(self._client.auth.token.lookup_self)
            data = info["data"]
            self._new_token(float(data.get("ttl") or 0), bool(data.get("renewable")))
            self.policies = tuple(data.get("policies") or ())
            log.warning("vault.static_token_in_use", reason="VAULT_AUTH_METHOD=token (dev only)")
            self.logins += 1
            return
        try:
            jwt = cfg.token_file.read_text().strip()
        except OSError as exc:
            raise VaultLoginError(
                f"cannot read the identity token {cfg.token_file}: {exc.strerror}"
            ) from None
        try:
            if cfg.auth_method == "kubernetes":
                resp = await self.call(
                    self._client.auth.kubernetes.login,
                    cfg.auth_role,
                    jwt,
                    mount_point=cfg.auth_mount,
                )
            else:
                resp = await self.call(
                    self._client.auth.jwt.jwt_login, cfg.auth_role, jwt, path=cfg.auth_mount
                )
        except (
            hvac.exceptions.InvalidRequest,
            hvac.exceptions.Forbidden,
            hvac.exceptions.InvalidPath,  # the auth mount is missing (Vault not bootstrapped)
        ) as exc:
            raise VaultLoginError(
                f"Vault refused login at auth/{cfg.auth_mount} as role {cfg.auth_role!r}: "
                f"{_first_error(exc)}. Check that the token in {cfg.token_file} belongs to "
                f"this service's identity and that the auth role exists (orders-bootstrap)."
            ) from None
        auth = resp["auth"]
        previous = self._life
        self._client.token = auth["client_token"]
        self._new_token(float(auth["lease_duration"]), bool(auth["renewable"]))
        self._life.token = auth["client_token"]
        if previous.token and previous.seconds_left > 0:
            self._retired.append(previous)
        self._retired = [life for life in self._retired if life.seconds_left > 0]
        self.policies = tuple(auth.get("token_policies") or auth.get("policies") or ())
        self.logins += 1
        VAULT_LOGINS.inc()
        log.info(
            "vault.login",
            method=cfg.auth_method,
            role=cfg.auth_role,
            ttl=self.token_ttl,
            previous_seconds_left=round(previous.seconds_left, 1),
            seconds=round(time.monotonic() - started, 4),
        )
        if self.relogin_margin > self.token_ttl * 2 / 3:
            log.warning(
                "vault.relogin_margin_not_met",
                ttl=self.token_ttl,
                relogin_margin=self.relogin_margin,
                fix="give the auth role a token TTL of at least 1.5x the margin",
            )
        if self.logins > 1:
            for callback in list(self._login_listeners):
                callback()

    async def recover_refused(self) -> bool:
        """A request was refused (403). When the token itself is gone (an operator revoked
        it, e.g. ``orders-runbook revoke``), log in again now instead of at the next
        renewal, minutes away; True when a new login happened. A token that is still
        valid (the policy said no) is left alone. At most one check per second."""
        now = time.monotonic()
        if self.config.auth_method == "token" or now - self._refusal_checked < 1.0:
            return False
        self._refusal_checked = now
        life = self._life
        try:
            await self.request("lookup_self", self._client.auth.token.lookup_self)
            return False  # the token is fine: the refusal was the policy's
        except hvac.exceptions.Forbidden:
            pass
        except Exception:  # Vault away: the renewal loop deals with that
            return False
        async with self._login_lock:
            if self._life is not life:
                return True  # another task logged in meanwhile
            life.expires_at = 0.0  # revoked under us: nothing left to revoke
            try:
                await self._login()
            except VaultLoginError as exc:
                log.error("vault.login_failed", error=str(exc), reason="token_refused")
                return False
        return True

    def _new_token(self, ttl: float, renewable: bool) -> None:
        self.token_ttl = ttl
        self.token_renewable = renewable
        # ttl 0 means a non-expiring token (root-like; only possible with method=token)
        end = time.monotonic() + (ttl if ttl > 0 else 10 * 365 * 86400)
        self._life = TokenLife(serial=self._life.serial + 1, expires_at=end)

    # -- keeping the token valid -------------------------------------------------------
    def start(self) -> None:
        """Start the background renewal loop (after a first :meth:`login`)."""
        if self._task is None:
            self._task = asyncio.create_task(self._maintain(), name="vault-token-renewal")

    async def _maintain(self) -> None:
        attempt = 0
        while True:
            if attempt == 0:
                # act when renew_lead seconds are left (see the module docstring)
                wait = max(0.0, self.token_seconds_left - self.renew_lead)
            else:
                wait = self._backoff.delay(attempt)
            await asyncio.sleep(wait)
            try:
                await self.renew_or_login()
                attempt = 0
            except VAULT_UNAVAILABLE as exc:
                attempt += 1
                log.warning(
                    "vault.renew_failed",
                    error=type(exc).__name__,
                    token_seconds_left=round(self.token_seconds_left, 1),
                    attempt=attempt,
                )
            except VaultLoginError as exc:
                attempt += 1
                log.error("vault.login_failed", error=str(exc), attempt=attempt)
            except Exception as exc:  # never let the loop die: a dead loop means a dead token
                attempt += 1
                log.error("vault.renewal_error", error_type=type(exc).__name__, attempt=attempt)

    async def renew_or_login(self) -> None:
        """Renew the token; log in again when it is not renewable or at its max TTL."""
        if self.config.auth_method == "token" and self.token_ttl == 0:
            return
        life = self._life
        if not self.token_renewable or not self.logged_in or life.capped:
            await self.login()
            return
        try:
            resp = await self.call(
                self._client.auth.token.renew_self, increment=max(1, int(self.token_ttl))
            )
        except hvac.exceptions.Forbidden:
            life.expires_at = 0.0  # revoked or expired under us: nothing left to revoke
            await self.login()
            return
        auth = resp["auth"]
        granted = float(auth["lease_duration"])
        self.renewals += 1
        VAULT_TOKEN_RENEWALS.inc()
        life.expires_at = time.monotonic() + granted
        self.token_renewable = bool(auth["renewable"])
        if granted < int(self.token_ttl):
            # capped by the max TTL: the token's end is fixed. Log in now, while the
            # old token still has renew_lead seconds for the pools to move and drain.
            life.capped = True
            log.info("vault.token_at_max_ttl", token_seconds_left=round(granted, 1))
            await self.login()

    async def close(self, *, revoke: bool = True) -> None:
        """Stop renewing and (by default) revoke the token, so nothing outlives the process."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if revoke and self.config.auth_method != "token":
            # the current token and any a re-login replaced: revoking a token revokes
            # every lease it created, so this also ends leases whose own revoke failed
            for life in [*self._retired, self._life]:
                if life.token and life.seconds_left > 0:
                    await self._revoke_token(life)
            self._retired.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _revoke_token(self, life: TokenLife, attempts: int = 3) -> None:
        client = hvac.Client(
            url=self.config.addr, token=life.token, timeout=self.config.request_timeout
        )
        error = "none"
        for attempt in range(attempts):
            try:
                await self.request("revoke_self", client.auth.token.revoke_self)
                log.info("vault.token_revoked", serial=life.serial)
                return
            except VAULT_UNAVAILABLE as exc:
                error = type(exc).__name__
                if attempt + 1 < attempts:
                    await asyncio.sleep(self._backoff.delay(attempt))
            except hvac.exceptions.Forbidden:
                log.info("vault.token_already_gone", serial=life.serial)
                return
            except hvac.exceptions.VaultError as exc:
                error = type(exc).__name__
                break
        log.warning(
            "vault.revoke_self_failed",
            error=error,
            serial=life.serial,
            token_seconds_left=round(life.seconds_left, 1),
        )


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, VAULT_UNAVAILABLE):
        return "unavailable"
    if isinstance(exc, hvac.exceptions.Forbidden):
        return "denied"
    if isinstance(exc, hvac.exceptions.InvalidRequest):
        return "invalid"
    return "error"


def _first_error(exc: hvac.exceptions.VaultError) -> str:
    errors = getattr(exc, "errors", None)
    if errors:
        return "; ".join(str(e) for e in errors)
    return str(exc) or type(exc).__name__
