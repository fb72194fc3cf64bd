"""End to end: the six workers as separate processes, each with only its own identity.

Everything is real: Temporal dev server, OpenBao, PostgreSQL, and the worker
processes the stack manager starts (the same way ``make demo`` does). Each
test uses its own SKUs and order ids so tests never depend on each other.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import hvac
import pytest
from temporalio.client import Client

from orders_ops.demo import activity_logins
from orders_ops.identities import local_session
from orders_ops.provider_sim import ProviderAdmin
from orders_ops.stack import Stack, WorkerProcess, wait_gone
from orders_shared.catalog import SERVICES, group_role
from orders_shared.client import connect, submit_order
from orders_shared.codec import VaultTransit
from orders_shared.contracts.orchestrator import OrderWorkflowResult
from orders_shared.order_input import parse_order

pytestmark = pytest.mark.stack


@dataclass
class Orders:
    """A Temporal client as the ``client`` identity, with its Transit access: it seals
    order fields and encrypts payloads exactly as ``orders submit`` does."""

    client: Client
    transit: VaultTransit


@pytest.fixture
async def temporal(workers: Stack) -> AsyncIterator[Orders]:
    session = await local_session(workers.settings, "client")
    transit = VaultTransit(session)
    yield Orders(await connect(workers.settings.temporal_address, transit), transit)
    await session.close()


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.admin_dsn("orders"))
    yield conn
    await conn.close()


async def new_sku(admin: asyncpg.Connection, stock: int, price_cents: int = 1000) -> str:
    sku = f"E2E-{uuid.uuid4().hex[:10].upper()}"
    await admin.execute(
        "INSERT INTO app.products (sku, name, unit_price_cents) VALUES ($1, 'e2e item', $2)",
        sku,
        price_cents,
    )
    await admin.execute("INSERT INTO app.inventory (sku, on_hand) VALUES ($1, $2)", sku, stock)
    return sku


def order(sku: str, quantity: int = 1, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "order_id": f"e2e-{uuid.uuid4().hex[:12]}",
        "customer_id": "cust-e2e",
        "customer_name": "Grace Hopper",
        "email": "grace@example.com",
        "shipping_address": "1 Compiler Lane, Arlington",
        "payment_token": "tok_visa_4242",
        "lines": [{"sku": sku, "quantity": quantity}],
    }
    data.update(fields)
    return data


async def run(temporal: Orders, data: dict[str, Any]) -> OrderWorkflowResult:
    submitted = await submit_order(
        temporal.client, parse_order(data), wait=True, transit=temporal.transit
    )
    assert submitted.result is not None
    return submitted.result


async def rows(admin: asyncpg.Connection, order_id: str) -> dict[str, Any]:
    return {
        "status": await admin.fetchval("SELECT status FROM app.orders WHERE order_id=$1", order_id),
        "reservations": sorted(
            tuple(r)
            for r in await admin.fetch(
                "SELECT sku, quantity, status FROM app.reservations WHERE order_id=$1", order_id
            )
        ),
        "payments": sorted(
            tuple(r)
            for r in await admin.fetch(
                "SELECT kind, status, amount_cents FROM app.payments WHERE order_id=$1", order_id
            )
        ),
        "shipments": await admin.fetchval(
            "SELECT count(*) FROM app.shipments WHERE order_id=$1", order_id
        ),
        "notifications": sorted(
            r[0]
            for r in await admin.fetch(
                "SELECT kind FROM app.notifications WHERE order_id=$1", order_id
            )
        ),
    }


async def stock(admin: asyncpg.Connection, sku: str) -> int:
    return int(await admin.fetchval("SELECT on_hand FROM app.inventory WHERE sku=$1", sku))


# ----------------------------------------------------------------------------- the four paths


async def test_the_four_paths_leave_exactly_these_rows(
    temporal: Orders, admin: asyncpg.Connection
) -> None:
    sku = await new_sku(admin, stock=10, price_cents=1250)
    empty = await new_sku(admin, stock=0)
    ok, nostock, declined, after_payment = await asyncio.gather(
        run(temporal, order(sku, 2)),
        run(temporal, order(empty, 1)),
        run(temporal, order(sku, 3, payment_token="tok_decline_card")),
        run(temporal, order(sku, 1, shipping_address="9 UNDELIVERABLE Street")),
    )
    assert (ok.status, ok.path) == (
        "completed",
        [
            "validate_order",
            "reserve_inventory",
            "process_payment",
            "fulfill_order",
            "notify_customer",
        ],
    )
    assert await rows(admin, ok.order_id) == {
        "status": "completed",
        "reservations": [(sku, 2, "reserved")],
        "payments": [("charge", "approved", 2500)],
        "shipments": 1,
        "notifications": ["order_completed"],
    }
    assert (nostock.status, nostock.reason_code) == ("failed", "OutOfStock")
    assert nostock.path == ["validate_order", "reserve_inventory", "notify_customer"]
    assert await rows(admin, nostock.order_id) == {
        "status": "failed",
        "reservations": [],
        "payments": [],
        "shipments": 0,
        "notifications": ["order_failed"],
    }
    assert (declined.status, declined.reason_code) == ("failed", "PaymentDeclined")
    assert declined.path[-2:] == ["release_inventory", "notify_customer"]
    assert await rows(admin, declined.order_id) == {
        "status": "failed",
        "reservations": [(sku, 3, "released")],
        "payments": [("charge", "declined", 3750)],
        "shipments": 0,
        "notifications": ["order_failed"],
    }
    assert (after_payment.status, after_payment.reason_code) == ("failed", "FulfillmentFailed")
    assert after_payment.path[-4:] == [
        "fulfill_order",
        "refund_payment",
        "release_inventory",
        "notify_customer",
    ]
    assert await rows(admin, after_payment.order_id) == {
        "status": "failed",
        "reservations": [(sku, 1, "released")],
        "payments": [("charge", "approved", 1250), ("refund", "approved", 1250)],
        "shipments": 0,
        "notifications": ["order_failed"],
    }
    assert await stock(admin, sku) == 10 - 2  # only the completed order keeps its stock

    # each step's SQL ran as a login role Vault created for that step's database role
    logins = await activity_logins(admin, [ok.order_id, declined.order_id, after_payment.order_id])
    assert {a for a, *_ in logins} == {
        "validate_order",
        "reserve_inventory",
        "release_inventory",
        "process_payment",
        "refund_payment",
        "fulfill_order",
        "notify_customer",
    }
    for _activity, vault_role, user, how in logins:
        assert user.startswith(f"v-{vault_role}-"), user
        assert how.startswith(f"LOGIN, member of {group_role(vault_role)},"), how


# ----------------------------------------------------------------------------- who ran what


async def test_history_names_the_service_that_ran_each_task(
    temporal: Orders, admin: asyncpg.Connection
) -> None:
    """Temporal records each poller's identity: every activity names the service whose
    worker ran it, every workflow task the orchestrator, the start the client."""
    sku = await new_sku(admin, stock=5)
    result = await run(temporal, order(sku, 1))
    assert result.status == "completed"
    history = await temporal.client.get_workflow_handle(result.order_id).fetch_history()
    host = socket.gethostname()
    identity_of_queue = {spec.task_queue: spec.identity for spec in SERVICES.values()}
    scheduled: dict[int, tuple[str, str]] = {}  # event id -> (activity, its queue's service)
    activities: list[tuple[str, str, str]] = []  # (activity, expected service, identity)
    workflow_tasks: set[str] = set()
    started_by = ""
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            queue = identity_of_queue[attrs.task_queue.name]
            scheduled[event.event_id] = (attrs.activity_type.name, queue)
        elif event.HasField("activity_task_started_event_attributes"):
            started = event.activity_task_started_event_attributes
            activities.append((*scheduled[started.scheduled_event_id], started.identity))
        elif event.HasField("workflow_task_started_event_attributes"):
            workflow_tasks.add(event.workflow_task_started_event_attributes.identity)
        elif event.HasField("workflow_execution_started_event_attributes"):
            started_by = event.workflow_execution_started_event_attributes.identity
    assert activities == [
        ("validate_order", "orders-validate", f"orders-validate@{host}"),
        ("reserve_inventory", "orders-inventory", f"orders-inventory@{host}"),
        ("process_payment", "orders-payment", f"orders-payment@{host}"),
        ("fulfill_order", "orders-fulfill", f"orders-fulfill@{host}"),
        ("notify_customer", "orders-notify", f"orders-notify@{host}"),
    ]
    assert workflow_tasks == {f"orders-orchestrator@{host}"}
    assert started_by == f"orders-client@{host}"


# ----------------------------------------------------------------------------- crashes


async def _wait_blocked(admin: asyncpg.Connection, vault_role: str, within: float = 20) -> None:
    """Wait until a session of ``vault_role``'s Vault-issued login waits on a lock."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        n = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE usename LIKE $1 "
            "AND wait_event_type = 'Lock'",
            f"v-{vault_role}-%",
        )
        if n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {vault_role} session blocked within {within}s")


def _kill(worker: WorkerProcess) -> None:
    pid = worker.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, 10), f"{worker.name} survived SIGKILL"


def _worker(stack: Stack, service: str) -> WorkerProcess:
    return next(w for w in stack.workers if w.service == service)


async def test_inventory_worker_killed_mid_reservation(workers: Stack, temporal: Orders) -> None:
    admin = await asyncpg.connect(workers.settings.admin_dsn("orders"))
    locker = await asyncpg.connect(workers.settings.admin_dsn("orders"))
    try:
        sku = await new_sku(admin, stock=5)
        data = order(sku, 2)
        # hold the stock row so the reservation stops half-way, inside its transaction
        tx = locker.transaction()
        await tx.start()
        await locker.execute("SELECT on_hand FROM app.inventory WHERE sku=$1 FOR UPDATE", sku)
        result_task = asyncio.create_task(run(temporal, data))
        await _wait_blocked(admin, "order-reserve-inventory")
        _kill(_worker(workers, "inventory"))
        await tx.rollback()
        workers.workers_up(timeout=60, echo=lambda _line: None)  # as a supervisor would
        result = await asyncio.wait_for(result_task, timeout=120)
        assert result.status == "completed"
        assert await rows(admin, data["order_id"]) == {
            "status": "completed",
            "reservations": [(sku, 2, "reserved")],
            "payments": [("charge", "approved", 2000)],
            "shipments": 1,
            "notifications": ["order_completed"],
        }
        assert await stock(admin, sku) == 3  # reserved once, not twice
    finally:
        await locker.close()
        await admin.close()


async def _wait_charged(sim: ProviderAdmin, order_id: str, within: float = 60) -> None:
    """Wait until the provider's ledger holds a charge for ``order_id``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if (await sim.ledger(f"{order_id}:"))["charges"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the provider did not charge {order_id} within {within}s")


async def test_payment_worker_killed_after_the_provider_charged(
    workers: Stack, temporal: Orders
) -> None:
    """SIGKILL the payment worker after the provider charged (the charge is in the
    provider's ledger) and before the worker recorded it: the retry completes the
    order and the provider holds exactly one charge for it."""
    sim = ProviderAdmin(workers.settings.provider_url, workers.settings.provider_admin_token_file)
    admin = await asyncpg.connect(workers.settings.admin_dsn("orders"))
    sku = await new_sku(admin, stock=5)
    data = order(sku, 1)
    oid = data["order_id"]
    try:
        # the provider charges, journals the charge, then holds its answer
        await sim.fault("hold", on="charge", key_prefix=f"{oid}:", times=1)
        result_task = asyncio.create_task(run(temporal, data))
        await _wait_charged(sim, oid)
        # charged at the provider, only an intent on our side: kill here
        assert (await rows(admin, oid))["payments"] == [("charge", "pending", 1000)]
        _kill(_worker(workers, "payment"))
        await sim.clear(f"{oid}:")
        workers.workers_up(timeout=60, echo=lambda _line: None)  # as a supervisor would
        result = await asyncio.wait_for(result_task, timeout=180)
        assert result.status == "completed"
        ledger = await sim.ledger(f"{oid}:")
        [charge] = ledger["charges"]  # exactly one charge for the order
        assert (charge["status"], charge["amount_cents"], charge["refund_id"]) == (
            "approved",
            1000,
            None,
        )
        assert charge["requests"] >= 2  # the retry did ask the provider again, by the same key
        assert ledger["refunds"] == []
        got = await rows(admin, oid)
        assert got["payments"] == [("charge", "approved", 1000)]
        assert (
            await admin.fetchval(
                "SELECT provider_ref FROM app.payments WHERE order_id=$1 AND kind='charge'", oid
            )
            == charge["id"]
        )
        assert got["reservations"] == [(sku, 1, "reserved")]
        assert await stock(admin, sku) == 4
    finally:
        await sim.clear(f"{oid}:")  # never leave a held answer behind
        await admin.close()


# ----------------------------------------------------------------------------- contention


async def test_fifty_concurrent_orders_on_a_stock_of_twenty(
    temporal: Orders, admin: asyncpg.Connection
) -> None:
    sku = await new_sku(admin, stock=20)
    results = await asyncio.gather(*(run(temporal, order(sku, 1)) for _ in range(50)))
    outcomes = sorted((r.status, r.reason_code) for r in results)
    assert outcomes.count(("completed", None)) == 20
    assert outcomes.count(("failed", "OutOfStock")) == 30
    assert await stock(admin, sku) == 0
    assert (
        await admin.fetchval(
            "SELECT sum(quantity) FROM app.reservations WHERE sku=$1 AND status='reserved'", sku
        )
        == 20
    )


# ----------------------------------------------------------------------------- infrastructure


async def _reserve_attempts(temporal: Orders, order_id: str) -> int:
    handle = temporal.client.get_workflow_handle(order_id)
    attempts = 0
    async for event in handle.fetch_history_events():
        if event.HasField("activity_task_started_event_attributes"):
            attempts = max(attempts, event.activity_task_started_event_attributes.attempt)
    return attempts


async def test_revoked_credential_is_retried_not_refused(
    workers: Stack, temporal: Orders, admin: asyncpg.Connection
) -> None:
    root = hvac.Client(url=workers.settings.vault_addr, token=workers.settings.root_token())
    sku = await new_sku(admin, stock=5)
    warm = await run(temporal, order(sku, 1))  # the reserve pool has a live credential
    before = await admin.fetchval(
        "SELECT reserved_by FROM app.reservations WHERE order_id=$1", warm.order_id
    )
    # an operator (or an incident) revokes every credential of the reserve role
    root.sys.revoke_prefix("database/creds/order-reserve-inventory")
    assert not await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname=$1", before)
    data = order(sku, 1)
    result = await run(temporal, data)
    assert result.status == "completed"  # never OutOfStock or declined
    after = await admin.fetchval(
        "SELECT reserved_by FROM app.reservations WHERE order_id=$1", data["order_id"]
    )
    assert after != before and after.startswith("v-order-reserve-inventory-")
    assert await _reserve_attempts(temporal, data["order_id"]) >= 2  # it failed, then retried
    assert await stock(admin, sku) == 3


async def test_postgres_down_for_seconds_is_retried(workers: Stack, temporal: Orders) -> None:
    admin = await asyncpg.connect(workers.settings.admin_dsn("orders"))
    sku = await new_sku(admin, stock=5)
    await admin.close()
    data = order(sku, 1)
    workers.postgres.stop()
    try:
        task = asyncio.create_task(run(temporal, data))
        await asyncio.sleep(4)
        assert not task.done()
    finally:
        workers.postgres.start(timeout=60)
    result = await asyncio.wait_for(task, timeout=120)
    assert result.status == "completed"
    admin = await asyncpg.connect(workers.settings.admin_dsn("orders"))
    try:
        assert (await rows(admin, data["order_id"]))["payments"] == [("charge", "approved", 1000)]
        assert await stock(admin, sku) == 4
    finally:
        await admin.close()
