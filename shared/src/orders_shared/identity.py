"""Workload identity: log in to Vault with the workload's own token and stay logged in.

A worker never holds a static Vault token. It presents its identity token
(a Kubernetes ServiceAccount token in a cluster, the local issuer's JWT in
process mode) at Vault's ``kubernetes`` or ``jwt`` auth method, renews the
Vault token it gets at two thirds of its TTL, and logs in again (re-reading
the token file, which the kubelet or the local issuer rotates) when the token
can no longer be renewed.

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
from dataclasses import dataclass
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


class VaultLoginError(RuntimeError):
    """Vault refused the workload's identity; the message says what to check."""


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
    ) -> None:
        self.config = config
        self._client = hvac.Client(url=config.addr, timeout=config.request_timeout)
        self._executor = ThreadPoolExecutor(executor_threads, thread_name_prefix="vault")
        self._backoff = backoff or Backoff()
        self._login_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.token_ttl: float = 0.0  # TTL granted at the last login or renewal
        self.token_expires_at: float = 0.0  # time.monotonic() deadline
        self.token_renewable = False
        self.policies: tuple[str, ...] = ()
        self.logins = 0
        self.renewals = 0
        self._login_listeners: list[Callable[[], None]] = []
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
    def token_seconds_left(self) -> float:
        return max(0.0, self.token_expires_at - time.monotonic())

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
            self._set_token_state(float(data.get("ttl") or 0), bool(data.get("renewable")))
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
        self._set_token_state(float(auth["lease_duration"]), bool(auth["renewable"]))
        self.policies = tuple(auth.get("token_policies") or auth.get("policies") or ())
        self.logins += 1
        VAULT_LOGINS.inc()
        if self.logins > 1:
            for callback in list(self._login_listeners):
                callback()
        log.info(
            "vault.login",
            method=cfg.auth_method,
            role=cfg.auth_role,
            ttl=self.token_ttl,
            seconds=round(time.monotonic() - started, 4),
        )

    def _set_token_state(self, ttl: float, renewable: bool) -> None:
        self.token_ttl = ttl
        self.token_renewable = renewable
        # ttl 0 means a non-expiring token (root-like; only possible with method=token)
        self.token_expires_at = time.monotonic() + (ttl if ttl > 0 else 10 * 365 * 86400)

    # -- keeping the token valid -------------------------------------------------------
    def start(self) -> None:
        """Start the background renewal loop (after a first :meth:`login`)."""
        if self._task is None:
            self._task = asyncio.create_task(self._maintain(), name="vault-token-renewal")

    async def _maintain(self) -> None:
        attempt = 0
        while True:
            if attempt == 0:
                # renew at two thirds of the TTL we were last granted
                wait = max(0.0, self.token_seconds_left - self.token_ttl / 3)
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
        """Renew the token; log in again when it is not renewable or near its max TTL."""
        if self.config.auth_method == "token" and self.token_ttl == 0:
            return
        if not self.token_renewable or not self.logged_in:
            await self.login()
            return
        try:
            resp = await self.call(self._client.auth.token.renew_self)
        except hvac.exceptions.Forbidden:
            await self.login()  # the token was revoked or expired under us
            return
        auth = resp["auth"]
        granted = float(auth["lease_duration"])
        self.renewals += 1
        VAULT_TOKEN_RENEWALS.inc()
        if granted < self.token_ttl / 3:
            # capped by the token's max TTL: a fresh login costs less than running dry
            await self.login()
            return
        self._set_token_state(granted, bool(auth["renewable"]))

    async def close(self, *, revoke: bool = True) -> None:
        """Stop renewing and (by default) revoke the token, so nothing outlives the process."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if revoke and self.config.auth_method != "token" and self.logged_in:
            try:
                await self.call(self._client.auth.token.revoke_self)
            except (*VAULT_UNAVAILABLE, hvac.exceptions.VaultError) as exc:
                log.warning("vault.revoke_self_failed", error=type(exc).__name__)
        self._executor.shutdown(wait=False, cancel_futures=True)


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
