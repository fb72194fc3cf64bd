"""The boilerplate every worker shares: config, identity, credentials, Temporal, shutdown.

A service's ``worker.py`` is three lines: it names itself and hands over its
activities (or workflows). Everything a worker is given comes from its own
identity: it logs in to Vault with its identity token, gets credentials only
for its own database roles, and polls only its own task queue.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import structlog
from temporalio.client import Client
from temporalio.worker import Worker

from orders_shared.catalog import service as lookup_service
from orders_shared.config import ConfigError, WorkerConfig
from orders_shared.db import ConnectionSource
from orders_shared.identity import VaultLoginError, VaultSession
from orders_shared.leases import CredentialError, LeasedPools
from orders_shared.logging import configure_logging

log = structlog.get_logger(__name__)

ActivityFactory = Callable[[ConnectionSource], Sequence[Callable[..., Any]]]

GRACEFUL_SHUTDOWN = timedelta(seconds=20)


async def serve(
    service: str,
    *,
    activities: ActivityFactory | None = None,
    workflows: Sequence[type] = (),
    stop: asyncio.Event | None = None,
) -> None:
    """Run one service's worker until ``stop`` is set (SIGTERM/SIGINT set it)."""
    config = WorkerConfig.from_env(service)
    spec = lookup_service(service)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    vault = VaultSession(config.vault)
    await vault.login()
    vault.start()
    pools = LeasedPools(vault, config.database, spec.db_roles)
    try:
        await pools.open()
        client = await Client.connect(config.temporal.address, namespace=config.temporal.namespace)
        worker = Worker(
            client,
            task_queue=spec.task_queue,
            activities=list(activities(pools)) if activities else [],
            workflows=list(workflows),
            graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        )
        log.info(
            "worker.started",
            task_queue=spec.task_queue,
            db_roles=list(spec.db_roles),
            vault_policies=list(vault.policies),
        )
        async with worker:
            await stop.wait()
            log.info("worker.stopping", grace_seconds=GRACEFUL_SHUTDOWN.total_seconds())
    finally:
        await pools.close()
        await vault.close()
        log.info("worker.stopped")


def run_service(
    service: str,
    *,
    activities: ActivityFactory | None = None,
    workflows: Sequence[type] = (),
) -> None:
    """Entry point for ``orders-<service>-worker``: exit 0 on SIGTERM, 2 on bad config."""
    configure_logging(service)
    try:
        asyncio.run(serve(service, activities=activities, workflows=workflows))
    except ConfigError as exc:
        print(f"orders-{service}-worker: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (VaultLoginError, CredentialError) as exc:
        log.error("worker.start_failed", error=str(exc))
        sys.exit(3)
