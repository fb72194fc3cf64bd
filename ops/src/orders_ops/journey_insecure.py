"""INSECURE: the usual setup ``orders-journey`` compares the product with. Never deploy it.

What many teams run before they adopt this design, rebuilt on the real local
stack for the journey's "before" half (and nowhere else; the benchmark's
``plain`` mode is its in-process cousin, :mod:`orders_ops.bench_configs`):

* one static PostgreSQL login, ``orders_insecure_static``, created for the
  occasion with a password, holding every privilege on every table of the
  ``app`` schema, valid forever; dropped again by :func:`drop_static_login`;
* that password in every worker's environment (``ORDERS_INSECURE_DATABASE_URL``);
* no payload codec: Temporal stores every payload as plain JSON;
* no field sealing: the product's activity code, with its two sealing checks
  (validate's "every sensitive field is sealed", each consumer's "open the field
  sealed to me") replaced by pass-throughs in these processes only;
* six worker processes (``python -m orders_ops.journey_insecure <service>``) in
  a Temporal namespace of their own, so they never take the product's tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
from temporalio.client import Client
from temporalio.worker import Worker

from orders_ops.bench_configs import _activities
from orders_ops.database import quote_ident, scram_verifier
from orders_ops.namespaces import ensure_namespace
from orders_ops.settings import HOST, StackSettings
from orders_ops.stack import Server, child_env
from orders_shared.catalog import SERVICES
from orders_shared.db import Connection

STATIC_LOGIN = "orders_insecure_static"
"""The one shared database login of the insecure setup."""
URL_ENV = "ORDERS_INSECURE_DATABASE_URL"
NAMESPACE = "orders-journey-insecure"
READY = "insecure worker polling"
SERVICE_ORDER = ("orchestrator", "validate", "inventory", "payment", "fulfill", "notify")


def static_url(settings: StackSettings, password: str) -> str:
    return (
        f"postgresql://{STATIC_LOGIN}:{password}@{HOST}:{settings.postgres_port}/"
        f"{settings.database}"
    )


async def create_static_login(settings: StackSettings) -> str:
    """(Re)create the static login with a fresh password; returns its database URL.

    The password reaches Postgres only as a SCRAM verifier (never in a statement a
    server log could quote)."""
    password = secrets.token_urlsafe(24)
    conn = await asyncpg.connect(settings.admin_dsn(settings.database))
    try:
        await _drop(conn, settings.database)
        who, schema = quote_ident(STATIC_LOGIN), "app"
        verifier = scram_verifier(password)
        await conn.execute(f"CREATE ROLE {who} LOGIN PASSWORD '{verifier}'")
        for sql in (
            f"GRANT CONNECT ON DATABASE {quote_ident(settings.database)} TO {who}",
            f"GRANT USAGE ON SCHEMA {schema} TO {who}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {who}",
            f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {who}",
            # the status guard (migration 0006) lets only order_notify's members record
            # an order's final status; the one login of the usual setup does every step
            f"GRANT order_notify TO {who}",
        ):
            await conn.execute(sql)
    finally:
        await conn.close()
    return static_url(settings, password)


async def _drop(conn: asyncpg.Connection, database: str) -> bool:
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname=$1", STATIC_LOGIN)
    if not exists:
        return False
    await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename=$1", STATIC_LOGIN
    )
    await conn.execute(f"DROP OWNED BY {quote_ident(STATIC_LOGIN)}")  # its grants, here and
    await conn.execute(f"DROP ROLE {quote_ident(STATIC_LOGIN)}")  # on the database itself
    return True


async def drop_static_login(settings: StackSettings) -> bool:
    """Drop the static login and its grants (True when it existed)."""
    conn = await asyncpg.connect(settings.admin_dsn(settings.database))
    try:
        return await _drop(conn, settings.database)
    finally:
        await conn.close()


class InsecureWorker(Server):
    """One INSECURE worker process, started with the static database URL in its environment."""

    def __init__(self, settings: StackSettings, service: str, url: str) -> None:
        super().__init__(f"journey-insecure-{service}", settings, {}, expect=__name__)
        self.service = service
        self.url = url

    def _launch(self) -> None:
        env = child_env(
            PYTHONUNBUFFERED="1",
            TEMPORAL_ADDRESS=self.settings.temporal_address,
            ORDERS_INSECURE_NAMESPACE=NAMESPACE,
            ORDERS_PAYMENT_PROVIDER_URL=self.settings.provider_url,
            **{URL_ENV: self.url},  # the usual setup: every worker gets the same password
        )
        self._spawn([sys.executable, "-m", __name__, self.service], env)

    def healthy(self) -> bool:
        try:
            return READY in self.log_file.read_text(errors="replace")
        except OSError:
            return False


def stop_all(servers: Sequence[Server]) -> None:
    """SIGTERM all at once, then wait for each (workers drain and revoke their leases)."""
    for server in servers:
        pid = server.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
    for server in servers:
        server.stop()


@contextlib.asynccontextmanager
async def insecure_workers(
    settings: StackSettings, url: str
) -> AsyncIterator[list[InsecureWorker]]:
    """The six INSECURE worker processes, polling; stopped (by PID) on exit."""
    await ensure_namespace(settings.temporal_address, NAMESPACE)
    workers = [InsecureWorker(settings, s, url) for s in SERVICE_ORDER]
    await asyncio.to_thread(stop_all, workers)  # any left by a run that was killed
    try:
        for worker in workers:
            worker._launch()
        for worker in workers:
            await asyncio.to_thread(worker.wait_ready, 90)
        yield workers
    finally:
        await asyncio.to_thread(stop_all, workers)


# ------------------------------------------------------------------ inside a worker process


class StaticSource:
    """INSECURE: every step's SQL runs as the one static login (no ``SET ROLE``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @contextlib.asynccontextmanager
    async def connection(self, db_role: str) -> AsyncIterator[Connection]:
        async with self.pool.acquire() as conn:
            yield conn

    async def close(self) -> None:
        await self.pool.close()


async def _plain_field(_transit: Any, _service: str, value: str, **_where: str) -> str:
    """INSECURE stand-in for ``open_in_activity``: the field was never sealed."""
    return value


def _drop_sealing() -> None:
    """Replace the product's sealing checks by pass-throughs, in this process only."""
    from orders_fulfill import activities as fulfill
    from orders_notify import activities as notify
    from orders_payment import activities as payment
    from orders_shared.order_input import check_order
    from orders_validate import activities as validate

    validate.check_sealed_order = check_order  # type: ignore[attr-defined]
    for module in (fulfill, notify, payment):
        module.open_in_activity = _plain_field  # type: ignore[attr-defined]


async def _serve(service: str) -> None:
    from orders_orchestrator import worker as orchestrator_worker
    from orders_payment.provider import HttpCardProvider

    _drop_sealing()
    # no data converter given: payloads are stored as plain JSON
    client = await Client.connect(
        os.environ["TEMPORAL_ADDRESS"], namespace=os.environ["ORDERS_INSECURE_NAMESPACE"]
    )
    queue = SERVICES[service].task_queue
    pool = None
    if service == "orchestrator":
        worker = Worker(client, task_queue=queue, workflows=orchestrator_worker.WORKFLOWS)
    else:
        pool = await asyncpg.create_pool(os.environ[URL_ENV], min_size=1, max_size=4)
        provider = HttpCardProvider(os.environ["ORDERS_PAYMENT_PROVIDER_URL"])
        acts = _activities(service, StaticSource(pool), None, provider)  # type: ignore[arg-type]
        worker = Worker(client, task_queue=queue, activities=list(acts))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        print(f"{READY}: {service} on {queue}", flush=True)
        await stop.wait()
    if pool is not None:
        await pool.close()


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in SERVICE_ORDER:
        sys.exit(f"usage: python -m {__name__} <{'|'.join(SERVICE_ORDER)}> (INSECURE)")
    if not re.fullmatch(r"postgresql://[^@]+@[^/]+/\w+", os.environ.get(URL_ENV, "")):
        sys.exit(f"{__name__}: {URL_ENV} is not set (orders-journey sets it)")
    asyncio.run(_serve(sys.argv[1]))


if __name__ == "__main__":
    main()
