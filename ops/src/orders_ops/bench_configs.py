"""The three configurations ``orders-bench`` compares, side by side in one process.

Each configuration runs the six services' real activity and workflow code
(``build_activities`` and ``WORKFLOWS`` of each service) as in-process
workers, one Temporal ``Client`` per identity with that identity's own data
converter, in a Temporal namespace of its own on the same Temporal server.
Only what the issue says differs: the connection source, the payload codec
and how fields are sealed.

* ``plain`` -- THE INSECURE BASELINE, bench code only: no payload codec, one
  static database login (the Postgres superuser, ``SET ROLE`` to the
  service's group role), fields "sealed" with keys in process memory
  (:class:`orders_shared.codec.InMemoryTransit`: no Vault call; the workers
  refuse unsealed fields, so something must seal them).
* ``per-call`` -- bench code only: for every activity call a Vault login and a
  new database credential (revoked with the login's token after the call);
  one Transit call per payload encode and per decode (codec mode
  ``per-call`` on the old ``orders-payload`` key, through a bench-only
  overlay policy); each field sealed with one Transit ``encrypt`` and opened
  with one ``decrypt`` (the format before ``orders-seal/1``).
* ``secured`` -- the product as shipped: :class:`orders_shared.leases.LeasedPools`,
  the envelope codec, envelope sealing, each identity logged in once.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import hvac
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.worker import Worker

from orders_fulfill import worker as fulfill_worker
from orders_inventory import worker as inventory_worker
from orders_notify import worker as notify_worker
from orders_ops.identities import local_session
from orders_ops.namespaces import ensure_namespace
from orders_ops.policies import seal_keys
from orders_ops.settings import StackSettings
from orders_ops.vault_bootstrap import root_client
from orders_orchestrator import worker as orchestrator_worker
from orders_payment import worker as payment_worker
from orders_payment.provider import HttpCardProvider
from orders_shared.catalog import SERVICES, group_role
from orders_shared.client import submit_order
from orders_shared.codec import (
    LEGACY_PAYLOAD_KEY,
    InMemoryTransit,
    TokenTransit,
    TransitClient,
    VaultTransit,
    data_converter,
)
from orders_shared.config import DatabaseConfig
from orders_shared.contracts.common import Order
from orders_shared.contracts.orchestrator import OrderWorkflowResult
from orders_shared.db import Connection, ConnectionSource
from orders_shared.leases import LeasedPools
from orders_shared.sealing import SEALED_FIELDS, seal_context, seal_key, seal_order
from orders_validate import worker as validate_worker

CONFIGS: tuple[str, ...] = ("plain", "per-call", "secured")
SERVICE_ORDER: tuple[str, ...] = (
    "orchestrator",
    "validate",
    "inventory",
    "payment",
    "fulfill",
    "notify",
)
PER_CALL_POLICY = "orders-bench-per-call"
"""Bench-only overlay: Transit encrypt/decrypt on the old single key for codec mode per-call."""
PER_CALL_POLICY_HCL = (
    f'path "transit/encrypt/{LEGACY_PAYLOAD_KEY}" {{ capabilities = ["update"] }}\n'
    f'path "transit/decrypt/{LEGACY_PAYLOAD_KEY}" {{ capabilities = ["update"] }}\n'
)


class PlainSource:
    """INSECURE BASELINE (bench only): one static superuser login, ``SET ROLE`` per checkout."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def create(cls, settings: StackSettings) -> PlainSource:
        return cls(await asyncpg.create_pool(settings.admin_dsn(settings.database), max_size=30))

    @contextlib.asynccontextmanager
    async def connection(self, db_role: str) -> AsyncIterator[Connection]:
        async with self.pool.acquire() as conn:
            await conn.execute(f'SET ROLE "{group_role(db_role)}"')
            try:
                yield conn
            finally:
                await conn.execute("RESET ROLE")

    async def close(self) -> None:
        await self.pool.close()


class PerCallSource:
    """Bench only: a Vault login and a new database credential for every checkout; the
    login's token is revoked after the call (which revokes the lease: the role is dropped)."""

    def __init__(self, settings: StackSettings, service: str) -> None:
        self.settings = settings
        self.service = service

    @contextlib.asynccontextmanager
    async def connection(self, db_role: str) -> AsyncIterator[Connection]:
        session = await local_session(self.settings, self.service)
        try:
            creds = await session.call(
                session.client.secrets.database.generate_credentials, db_role
            )
            conn = await asyncpg.connect(
                host="127.0.0.1",
                port=self.settings.postgres_port,
                database=self.settings.database,
                user=creds["data"]["username"],
                password=creds["data"]["password"],
            )
            try:
                yield conn
            finally:
                await conn.close()
        finally:
            await session.close()

    async def close(self) -> None:
        return None


async def legacy_seal(order: Order, transit: TransitClient) -> Order:
    """Each field sealed with one Transit ``encrypt`` (the format before orders-seal/1)."""
    changes: dict[str, Any] = {}
    for field, service in SEALED_FIELDS.items():
        changes[field] = await transit.encrypt(
            seal_key(service), getattr(order, field).encode(), seal_context(order.order_id, field)
        )
    return dataclasses.replace(order, **changes)


class OrderFailed(RuntimeError):
    """A benchmark order did not complete: the message names the order and its reason."""


@dataclasses.dataclass
class Configuration:
    """One configuration's six workers and its client, running in this process."""

    name: str
    namespace: str
    client: Client
    submit: Callable[[Order], Any]

    async def run_one(self, order: Order) -> None:
        submitted = await self.submit(order)
        result: OrderWorkflowResult | None = submitted.result
        if result is None or result.status != "completed":
            raise OrderFailed(
                f"{self.name}: order {order.order_id} did not complete: "
                + (f"{result.status}, {result.reason_code}" if result else "no result")
            )


def _activities(service: str, db: ConnectionSource, transit: TransitClient, provider: Any) -> Any:
    if service == "validate":
        return validate_worker.build_activities(db, transit)
    if service == "inventory":
        return inventory_worker.build_activities(db, transit)
    if service == "payment":
        return payment_worker.build_activities(db, transit, provider)
    if service == "fulfill":
        return fulfill_worker.build_activities(db, transit)
    return notify_worker.build_activities(db, transit)


@contextlib.asynccontextmanager
async def configuration(
    name: str, settings: StackSettings, *, namespace_prefix: str = "orders-bench", replicas: int = 1
) -> AsyncIterator[Configuration]:
    """Start configuration ``name`` (one of :data:`CONFIGS`); stop and clean up after.

    ``replicas``: workers per service, each replica with a Temporal connection of its
    own, polling the same task queue (in this process: they share its CPU and its
    Vault sessions and pools, so they show Temporal's dispatch, not more CPU)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown configuration {name!r}; use one of {', '.join(CONFIGS)}")
    namespace = f"{namespace_prefix}-{name}"
    address = settings.temporal_address
    await ensure_namespace(address, namespace)
    base = await Client.connect(address, namespace=namespace)
    provider = HttpCardProvider(settings.provider_url)
    db = DatabaseConfig(
        host="127.0.0.1",
        port=settings.postgres_port,
        name=settings.database,
        mount="database",
        pool_max=10,
    )
    async with AsyncExitStack() as exits:
        converters: dict[str, DataConverter] = {}
        sources: dict[str, ConnectionSource] = {}
        openers: dict[str, TransitClient] = {}
        if name == "plain":
            memory = InMemoryTransit(*seal_keys())
            plain_source = await PlainSource.create(settings)
            exits.push_async_callback(plain_source.close)
            for svc in (*SERVICE_ORDER, "client"):
                converters[svc] = DataConverter.default
                sources[svc] = plain_source
                openers[svc] = memory

            async def seal(order: Order) -> Order:
                return await seal_order(order, memory)

        elif name == "per-call":
            root: hvac.Client = root_client(settings)
            root.sys.create_or_update_policy(PER_CALL_POLICY, policy=PER_CALL_POLICY_HCL)
            exits.callback(root.adapter.close)
            exits.callback(root.sys.delete_policy, PER_CALL_POLICY)
            for svc in (*SERVICE_ORDER, "client"):
                token = root.auth.token.create(
                    policies=[f"orders-{svc}", PER_CALL_POLICY], no_default_policy=True, ttl="2h"
                )["auth"]["client_token"]
                codec_transit = TokenTransit(settings.vault_addr, token)
                exits.callback(codec_transit.close)
                converters[svc] = data_converter(codec_transit, mode="per-call")
                session = await local_session(settings, svc)
                exits.push_async_callback(session.close)
                openers[svc] = VaultTransit(session)
                sources[svc] = PerCallSource(settings, svc)
            client_transit = openers["client"]

            async def seal(order: Order) -> Order:
                return await legacy_seal(order, client_transit)

        else:
            for svc in (*SERVICE_ORDER, "client"):
                session = await local_session(settings, svc)
                session.start()
                exits.push_async_callback(session.close)
                transit = VaultTransit(session)
                converters[svc] = data_converter(transit, workflow_side=svc == "orchestrator")
                openers[svc] = transit
                if svc in SERVICES and SERVICES[svc].db_roles:
                    pools = LeasedPools(session, db, SERVICES[svc].db_roles)
                    await pools.open()
                    exits.push_async_callback(pools.close)
                    sources[svc] = pools
            secured_transit = openers["client"]

            async def seal(order: Order) -> Order:
                return order  # submit_order seals with the client's transit (as shipped)

        bases = [base] + [
            await Client.connect(address, namespace=namespace) for _ in range(replicas - 1)
        ]

        def client_for(svc: str, replica: int = 0) -> Client:
            config = bases[replica].config()
            config["data_converter"] = converters[svc]
            return Client(**config)

        for svc, replica in ((s, r) for s in SERVICE_ORDER for r in range(replicas)):
            spec = SERVICES[svc]
            worker_client = client_for(svc, replica)
            if svc == "orchestrator":
                worker = Worker(
                    worker_client,
                    task_queue=spec.task_queue,
                    workflows=orchestrator_worker.WORKFLOWS,
                )
            else:
                acts: Sequence[Any] = _activities(svc, sources[svc], openers[svc], provider)
                worker = Worker(worker_client, task_queue=spec.task_queue, activities=list(acts))
            await exits.enter_async_context(worker)
        client = client_for("client")

        async def submit(order: Order) -> Any:
            sealed = await seal(order)
            if name == "secured":
                return await submit_order(client, sealed, wait=True, transit=secured_transit)
            return await submit_order(client, sealed, wait=True)

        yield Configuration(name, namespace, client, submit)


__all__ = [
    "CONFIGS",
    "Configuration",
    "OrderFailed",
    "PerCallSource",
    "PlainSource",
    "configuration",
]
