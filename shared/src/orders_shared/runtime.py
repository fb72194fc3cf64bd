"""The boilerplate every worker shares: config, identity, credentials, Temporal, operations.

A service's ``worker.py`` only names itself and hands over its activities (or
workflows). Everything a worker is given comes from its own identity: it logs
in to Vault with its identity token, gets credentials only for its own
database roles, and polls only its own task queue.

Shutdown (SIGTERM or SIGINT): stop polling, give in-flight activities the
grace period to finish, close the pools and revoke every lease, revoke the
Vault token, exit 0. Each shutdown step runs even when one before it failed:
the token is revoked (which ends every lease it created) even if a lease
revoke failed.

Start-up waits for Temporal: the connect is retried with capped exponential backoff,
one log line per failed attempt (``temporal.connect_failed``: address, attempt, next
try, error), for at most ``ORDERS_TEMPORAL_CONNECT_DEADLINE`` seconds [120]; then the
worker logs ``worker.start_failed`` and exits 4 (no traceback). A signal during the
wait stops it at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import requests
import structlog
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

from orders_shared.allocator import tune_allocator
from orders_shared.catalog import service as lookup_service
from orders_shared.catalog import temporal_identity
from orders_shared.codec import TransitClient, VaultTransit, data_converter
from orders_shared.config import ConfigError, WorkerConfig
from orders_shared.db import ConnectionSource
from orders_shared.health import HealthServer
from orders_shared.identity import (
    DEFAULT_DRAIN_WINDOW,
    DEFAULT_OUTAGE_ALLOWANCE,
    VaultLoginError,
    VaultSession,
)
from orders_shared.interceptors import ObservabilityInterceptor
from orders_shared.leases import CredentialError, LeasedPools
from orders_shared.logging import configure_logging
from orders_shared.tls import CertificateManager, TLSSettings

log = structlog.get_logger(__name__)

TEMPORAL_CONNECT_DEADLINE_ENV = "ORDERS_TEMPORAL_CONNECT_DEADLINE"
DEFAULT_TEMPORAL_CONNECT_DEADLINE = 120.0
VAULT_CONNECT_DEADLINE_ENV = "ORDERS_VAULT_CONNECT_DEADLINE"
DEFAULT_VAULT_CONNECT_DEADLINE = 120.0
T = TypeVar("T")


class TemporalUnavailableError(RuntimeError):
    """Temporal did not accept a connection within the start-up deadline."""


class VaultUnavailableError(RuntimeError):
    """Vault did not answer the first login within the start-up deadline."""


def _seconds_from_env(name: str, default: float, env: dict[str, str] | None = None) -> float:
    raw = (os.environ if env is None else env).get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if not 1 <= value <= 3600:
        raise ConfigError(f"{name}={value} is out of range: use 1 to 3600")
    return value


def temporal_connect_deadline(env: dict[str, str] | None = None) -> float:
    return _seconds_from_env(TEMPORAL_CONNECT_DEADLINE_ENV, DEFAULT_TEMPORAL_CONNECT_DEADLINE, env)


def vault_connect_deadline(env: dict[str, str] | None = None) -> float:
    return _seconds_from_env(VAULT_CONNECT_DEADLINE_ENV, DEFAULT_VAULT_CONNECT_DEADLINE, env)


async def retry_at_start(
    call: Callable[[], Awaitable[T]],
    *,
    server: str,
    address: str,
    fix: str,
    deadline: float,
    stop: asyncio.Event,
    retriable: tuple[type[BaseException], ...],
    gave_up: type[RuntimeError],
    first_delay: float = 1.0,
    max_delay: float = 10.0,
) -> T:
    """``call()`` until it succeeds, ``deadline`` seconds pass, or ``stop`` is set; only
    ``retriable`` errors are retried (a refusal is not an outage).

    Each failure is one warning line; giving up raises ``gave_up`` with one line naming
    the server, its address, the time waited, the last error and the fix.
    """
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except retriable as exc:
            error = " ".join(str(exc).split())[:300] or type(exc).__name__
            left = deadline - (time.monotonic() - started)
            if left <= 0 or stop.is_set():
                raise gave_up(
                    f"{server} at {address} did not answer within {deadline:g} s "
                    f"({attempt} attempts; last error: {error}): {fix}"
                ) from None
            delay = min(max_delay, first_delay * 2 ** (attempt - 1), left)
            log.warning(
                f"{server.lower()}.connect_failed",
                server=address,  # ("address" is a redacted key: personal data)
                attempt=attempt,
                retry_in=round(delay, 1),
                seconds_left=round(left, 1),
                error=error,
            )
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                continue
            raise gave_up(f"stopped while waiting for {server} at {address}") from None


async def connect_temporal(
    connect: Callable[[], Awaitable[Client]],
    address: str,
    *,
    deadline: float,
    stop: asyncio.Event,
    first_delay: float = 1.0,
    max_delay: float = 10.0,
) -> Client:
    """``connect()`` to Temporal at start, retried to ``deadline`` (see
    :func:`retry_at_start`); giving up raises :class:`TemporalUnavailableError`."""
    return await retry_at_start(
        connect,
        server="Temporal",
        address=address,
        fix=f"start it or fix TEMPORAL_ADDRESS ({TEMPORAL_CONNECT_DEADLINE_ENV} sets the wait)",
        deadline=deadline,
        stop=stop,
        # temporalio raises RuntimeError; anything else is the same outage
        retriable=(Exception,),
        gave_up=TemporalUnavailableError,
        first_delay=first_delay,
        max_delay=max_delay,
    )


Companion = Callable[[Callable[[], Client], asyncio.Event], Coroutine[Any, Any, None]]
"""A task run beside a worker: ``companion(client_of, stop)`` (see :func:`serve`)."""

ActivityFactory = Callable[[ConnectionSource, TransitClient], Sequence[Callable[..., Any]]]
"""``build_activities(db, transit)``: a service's activities, bound to its database roles
and to Transit as its own identity (to open the sealed fields that are its to read)."""


def readiness_checks(
    vault: VaultSession,
    source: ConnectionSource,
    client: Client | Callable[[], Client],
    db_roles: Iterable[str] | None = None,
) -> dict[str, Callable[[], Any]]:
    """What /readyz asks: can this worker do its job right now?

    ``client``: the Temporal client, or a callable giving the one in use now (after a
    certificate renewal the worker calls through a new connection, and readiness must
    ask that one, not the first). ``db_roles`` defaults to the roles of a
    :class:`LeasedPools`; any other :class:`ConnectionSource` names the roles it serves.
    """
    current = client if callable(client) else lambda: client
    if db_roles is None:
        db_roles = source.pools if isinstance(source, LeasedPools) else ()

    async def temporal() -> None:
        if not await current().service_client.check_health(timeout=timedelta(seconds=2)):
            raise RuntimeError("Temporal frontend reports not serving")

    async def vault_check() -> None:
        if not vault.logged_in:
            raise RuntimeError("no valid Vault token")
        # the token is checked with Vault itself: a paused or sealed Vault is not ready
        await vault.request("readiness", vault.client.auth.token.lookup_self)

    checks: dict[str, Callable[[], Any]] = {"temporal": temporal, "vault": vault_check}
    for role in db_roles:

        async def database(role: str = role) -> None:
            async with source.connection(role) as conn:
                await conn.fetchval("SELECT 1")

        checks[f"database:{role}"] = database
    return checks


async def serve(
    service: str,
    *,
    activities: ActivityFactory | None = None,
    workflows: Sequence[type] = (),
    companions: Sequence[Companion] = (),
    stop: asyncio.Event | None = None,
) -> None:
    """Run one service's worker until ``stop`` is set (SIGTERM/SIGINT set it).

    ``companions``: tasks run beside the worker, each ``companion(client_of, stop)``
    with ``client_of()`` the worker's client in use now (the orchestrator's guard)."""
    config = WorkerConfig.from_env(service)
    connect_deadline = temporal_connect_deadline()
    ops = config.operations
    spec = lookup_service(service)
    identity = temporal_identity(spec.identity)  # history names the service: orders-<svc>@host
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    runtime = Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(bind_address=f"127.0.0.1:{ops.sdk_metrics_port}"),
            global_tags={"service": service},
        )
    )
    # the last re-login leaves the old token enough life for a Vault outage plus the
    # pools' drain window (leases die with the token that created them)
    vault = VaultSession(
        config.vault, relogin_margin=DEFAULT_DRAIN_WINDOW + DEFAULT_OUTAGE_ALLOWANCE
    )
    pools = LeasedPools(vault, config.database, spec.db_roles, drain_timeout=DEFAULT_DRAIN_WINDOW)
    tls = TLSSettings.from_env(service)
    certs: CertificateManager | None = None
    health: HealthServer | None = None
    try:
        # Vault may still be starting (or briefly away): wait for it, bounded; a refused
        # identity (VaultLoginError) is no outage and ends the start at once
        await retry_at_start(
            vault.login,
            server="Vault",
            address=config.vault.addr,
            fix=f"start it or fix VAULT_ADDR ({VAULT_CONNECT_DEADLINE_ENV} sets the wait)",
            deadline=vault_connect_deadline(),
            stop=stop,
            retriable=(requests.exceptions.ConnectionError, requests.exceptions.Timeout),
            gave_up=VaultUnavailableError,
        )
        vault.start()
        if tls.temporal_tls:  # a client certificate of this service's own PKI role
            certs = tls.manager(vault)
            await certs.start()
        await pools.open()
        transit = VaultTransit(vault)

        def temporal_client() -> Awaitable[Client]:
            # every payload and failure this worker writes to history is encrypted
            return Client.connect(
                config.temporal.address,
                namespace=config.temporal.namespace,
                identity=identity,
                runtime=runtime,
                # the workflow's side turns an activity answer that is not its service's
                # into a failed attempt instead of an endless workflow-task failure
                data_converter=data_converter(transit, workflow_side=bool(workflows)),
                tls=certs.temporal_tls(tls.server_name) if certs is not None else False,
            )

        client = await connect_temporal(
            temporal_client,
            config.temporal.address,
            deadline=connect_deadline,
            stop=stop,
        )
        worker = Worker(
            client,
            task_queue=spec.task_queue,
            identity=identity,
            activities=list(activities(pools, transit)) if activities else [],
            workflows=list(workflows),
            interceptors=[ObservabilityInterceptor()],
            graceful_shutdown_timeout=timedelta(seconds=ops.shutdown_grace),
        )
        health = HealthServer(
            ops.metrics_host,
            ops.metrics_port,
            # the client in use now: a certificate renewal replaces it (swap_client)
            readiness_checks(vault, pools, lambda: worker.client),
            sdk_metrics_url=f"http://127.0.0.1:{ops.sdk_metrics_port}/metrics",
        )
        await health.start()
        if certs is not None:
            certs.on_renew(lambda _cert: swap_client(worker, temporal_client))
        log.info(
            "worker.started",
            task_queue=spec.task_queue,
            temporal_identity=identity,
            db_roles=list(spec.db_roles),
            vault_policies=list(vault.policies),
            metrics_port=ops.metrics_port,
        )
        async with worker:
            beside = [
                asyncio.create_task(companion(lambda: worker.client, stop))
                for companion in companions
            ]
            await stop.wait()
            log.info("worker.stopping", grace_seconds=ops.shutdown_grace)
            for task in beside:
                task.cancel()
            await asyncio.gather(*beside, return_exceptions=True)
    finally:
        if certs is not None:
            await certs.stop()
        await shutdown(vault, pools, health)
        log.info("worker.stopped")


async def swap_client(worker: Worker, connect: Callable[[], Awaitable[Client]]) -> None:
    """After a certificate renewal: a new connection with the new certificate; the worker
    makes its next calls on it, calls in flight finish on the old one."""
    worker.client = await connect()
    log.info("temporal.client_replaced", reason="certificate renewed")


async def shutdown(
    vault: VaultSession, source: ConnectionSource, health: HealthServer | None = None
) -> None:
    """Stop serving health, close the connection source (revoking its leases), then revoke
    the Vault token. Every step runs whatever the one before it did; failures are logged."""
    steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
    if health is not None:
        steps.append(("health", health.stop))
    steps += [("database", source.close), ("vault", vault.close)]
    for name, step in steps:
        try:
            await step()
        except Exception as exc:
            log.error("worker.shutdown_step_failed", step=name, error_type=type(exc).__name__)


def run_service(
    service: str,
    *,
    activities: ActivityFactory | None = None,
    workflows: Sequence[type] = (),
    companions: Sequence[Companion] = (),
) -> None:
    """Entry point for ``orders-<service>-worker``: exit 0 on SIGTERM, 2 on bad config,
    3 when Vault or the database refuses it, 4 when Temporal does not answer in time,
    5 when Vault does not answer in time."""
    try:
        level = WorkerConfig.from_env(service).operations.log_level
        TLSSettings.from_env(service)
        temporal_connect_deadline()
        vault_connect_deadline()
    except ConfigError as exc:
        print(f"orders-{service}-worker: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(service, level)
    tune_allocator()  # payload-sized buffers from the heap, not mmap (orders_shared.allocator)
    try:
        asyncio.run(
            serve(service, activities=activities, workflows=workflows, companions=companions)
        )
    except (VaultLoginError, CredentialError) as exc:
        log.error("worker.start_failed", error=str(exc))
        sys.exit(3)
    except TemporalUnavailableError as exc:
        log.error("worker.start_failed", error=str(exc))
        sys.exit(4)
    except VaultUnavailableError as exc:
        log.error("worker.start_failed", error=str(exc))
        sys.exit(5)
