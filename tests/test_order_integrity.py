"""Order integrity on the real stack: every path ends with a recorded status, a
workflow runs only its own order and only once, a late forward step can never
take effect after its compensation, validate returns what it recorded, hostile
text never reaches a side effect, and a currency is more than a label.

Runs in a Temporal namespace of its own (``orders-tests-integrity``) with
in-process workers built by each service's ``worker.py``, connecting through
:class:`support.GroupRoleSource` (exactly each group role's privileges).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
import support  # tests/ is on pytest's pythonpath
from prometheus_client import REGISTRY
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from orders_fulfill import worker as fulfill_worker
from orders_inventory import worker as inventory_worker
from orders_inventory.activities import InventoryActivities
from orders_ops.database import bootstrap_database
from orders_ops.namespaces import ensure_namespace
from orders_ops.settings import StackSettings
from orders_ops.stack import Stack
from orders_orchestrator import worker as orchestrator_worker
from orders_orchestrator.workflows import WORKFLOW_NOT_BOUND
from orders_payment import worker as payment_worker
from orders_payment.activities import PaymentActivities
from orders_payment.provider import HttpCardProvider
from orders_shared.client import submit_order
from orders_shared.codec import VaultTransit
from orders_shared.contracts import fulfill, inventory, notify, payment, validate
from orders_shared.contracts.common import Order, OrderLine
from orders_shared.contracts.orchestrator import (
    ORDER_WORKFLOW,
    OrderWorkflowInput,
    OrderWorkflowResult,
)
from orders_shared.contracts.orchestrator import TASK_QUEUE as ORCHESTRATOR_QUEUE
from orders_shared.errors import OrderRejected, OrderStateConflict, OutOfStock
from orders_shared.fence import check_not_compensated
from orders_shared.sealing import SEALED_FIELD_INVALID, seal_context, seal_key, seal_order
from orders_validate import worker as validate_worker
from orders_validate.activities import ValidateActivities

GroupRoleSource = support.GroupRoleSource
create_product = support.create_product
unique = support.unique

pytestmark = [pytest.mark.stack]

NAMESPACE = "orders-tests-integrity"


# --------------------------------------------------------------------------- fixtures


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def order_db(stack: Stack) -> str:
    await bootstrap_database(stack.settings)
    return stack.settings.admin_dsn(stack.settings.database)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def source(order_db: str) -> AsyncIterator[GroupRoleSource]:
    src = await GroupRoleSource.create(order_db)
    yield src
    await src.close()


@pytest_asyncio.fixture(loop_scope="session")
async def admin(order_db: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(order_db)
    yield conn
    await conn.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def client(stack: Stack) -> Client:
    await ensure_namespace(stack.settings.temporal_address, NAMESPACE)
    return await Client.connect(stack.settings.temporal_address, namespace=NAMESPACE)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def identities(stack: Stack) -> AsyncIterator[Any]:
    ids = support.Identities(stack.settings)
    yield ids
    await ids.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def sealer(identities: Any) -> VaultTransit:
    transit: VaultTransit = await identities.transit("client")
    return transit


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def opener(identities: Any) -> dict[str, VaultTransit]:
    return {name: await identities.transit(name) for name in ("payment", "fulfill", "notify")}


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def workers(
    client: Client, source: GroupRoleSource, opener: dict[str, VaultTransit]
) -> AsyncIterator[None]:
    services: list[tuple[str, list[Any]]] = [
        (validate.TASK_QUEUE, validate_worker.build_activities(source)),
        (inventory.TASK_QUEUE, inventory_worker.build_activities(source)),
        (
            payment.TASK_QUEUE,
            payment_worker.build_activities(source, opener["payment"], provider=stack_provider()),
        ),
        (fulfill.TASK_QUEUE, fulfill_worker.build_activities(source, opener["fulfill"])),
        (notify.TASK_QUEUE, notify_worker_activities(source, opener["notify"])),
    ]
    async with AsyncExitStack() as stack:
        for queue, activities in services:
            await stack.enter_async_context(Worker(client, task_queue=queue, activities=activities))
        await stack.enter_async_context(
            Worker(client, task_queue=ORCHESTRATOR_QUEUE, workflows=orchestrator_worker.WORKFLOWS)
        )
        yield


def notify_worker_activities(source: GroupRoleSource, transit: VaultTransit) -> list[Any]:
    from orders_notify import worker as notify_worker

    return notify_worker.build_activities(source, transit)


def make_order(
    lines: list[tuple[str, int]],
    *,
    token: str = "tok_visa",  # noqa: S107 (a simulator test card, not a secret)
    address: str = "1 Main Street, 1000 Brussels",
    currency: str = "EUR",
) -> Order:
    return Order(
        order_id=unique("ord"),
        customer_id="cust-1",
        customer_name="Ada Lovelace",
        email="ada@example.com",
        shipping_address=address,
        payment_token=token,
        lines=tuple(OrderLine(sku=s, quantity=q) for s, q in lines),
        currency=currency,
    )


async def stock(admin: asyncpg.Connection, sku: str) -> int:
    value: int = await admin.fetchval("SELECT on_hand FROM app.inventory WHERE sku = $1", sku)
    return value


async def facts(admin: asyncpg.Connection, order_id: str) -> dict[str, Any]:
    """Everything the order left behind, in one comparable value."""
    return {
        "status": await admin.fetchval(
            "SELECT status FROM app.orders WHERE order_id = $1", order_id
        ),
        "payments": [
            tuple(r)
            for r in await admin.fetch(
                "SELECT kind, status, amount_cents, currency FROM app.payments "
                "WHERE order_id = $1 ORDER BY kind",
                order_id,
            )
        ],
        "reservations": [
            tuple(r)
            for r in await admin.fetch(
                "SELECT sku, quantity, status FROM app.reservations WHERE order_id = $1 "
                "ORDER BY sku",
                order_id,
            )
        ],
        "shipments": await admin.fetchval(
            "SELECT count(*) FROM app.shipments WHERE order_id = $1", order_id
        ),
        "notifications": [
            r["kind"]
            for r in await admin.fetch(
                "SELECT kind FROM app.notifications WHERE order_id = $1 ORDER BY kind", order_id
            )
        ],
    }


def counted(outcome: str, cause: str) -> float:
    value = REGISTRY.get_sample_value(
        "orders_status_without_message_total", {"outcome": outcome, "cause": cause}
    )
    return value or 0.0


async def seal_field_for(
    transit: VaultTransit, service: str, value: str, order_id: str, field: str = "email"
) -> str:
    """Seal a value as a (hostile or buggy) client could: bypassing the client's checks."""
    sealed: str = await transit.encrypt(
        seal_key(service), value.encode(), seal_context(order_id, field)
    )
    return sealed


async def run_again(client: Client, order: Order, workflow_id: str) -> OrderWorkflowResult:
    """Start the order's workflow once more, as someone with Temporal access could."""
    handle = await client.start_workflow(
        ORDER_WORKFLOW,
        OrderWorkflowInput(order=order),
        id=workflow_id,
        task_queue=ORCHESTRATOR_QUEUE,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        result_type=OrderWorkflowResult,
    )
    result: OrderWorkflowResult = await handle.result()
    return result


# --------------------------------------------------------------------------- 1. notify


async def test_a_notify_that_cannot_succeed_still_records_the_status_and_says_so(
    client: Client, workers: None, sealer: VaultTransit, admin: asyncpg.Connection
) -> None:
    """The email is sealed for another order, so notify can never open it: the
    customer was charged and the parcel shipped, and the order must say so."""
    sku = await create_product(admin, price_cents=1200, on_hand=5)
    order = await seal_order(make_order([(sku, 1)]), sealer)
    order = dataclasses.replace(
        order, email=await seal_field_for(sealer, "notify", "ada@example.com", "another-order")
    )
    before = counted("completed", SEALED_FIELD_INVALID)

    result = (await submit_order(client, order, wait=True)).result

    assert result is not None
    assert (result.status, result.notified, result.notify_problem, result.recorded_status) == (
        "completed",
        False,
        SEALED_FIELD_INVALID,
        "completed",
    )
    assert result.path[-2:] == [notify.NOTIFY_CUSTOMER, notify.RECORD_ORDER_STATUS]
    assert await facts(admin, order.order_id) == {
        "status": "completed",
        "payments": [("charge", "approved", 1200, "EUR")],
        "reservations": [(sku, 1, "reserved")],
        "shipments": 1,
        "notifications": [],
    }
    assert counted("completed", SEALED_FIELD_INVALID) == before + 1
    status_by = await admin.fetchval(
        "SELECT status_by FROM app.orders WHERE order_id = $1", order.order_id
    )
    assert status_by == "order_notify"


async def test_a_nul_byte_in_the_email_never_fails_the_order_forever(
    client: Client, workers: None, sealer: VaultTransit, admin: asyncpg.Connection
) -> None:
    """A client that seals a NUL byte itself (bypassing order_input) used to get the
    order charged and shipped, then notify retried forever on Postgres (0x00)."""
    sku = await create_product(admin, price_cents=300, on_hand=5)
    order = await seal_order(make_order([(sku, 1)]), sealer)
    order = dataclasses.replace(
        order,
        email=await seal_field_for(sealer, "notify", "ada@example.com\x00", order.order_id),
    )

    result = (await submit_order(client, order, wait=True)).result

    assert result is not None
    assert (result.status, result.notified, result.notify_problem) == (
        "completed",
        False,
        SEALED_FIELD_INVALID,
    )
    assert (await facts(admin, order.order_id))["status"] == "completed"


async def test_a_status_conflict_in_notify_ends_the_workflow_with_the_recorded_status(
    source: GroupRoleSource,
    admin: asyncpg.Connection,
    sealer: VaultTransit,
    opener: dict[str, VaultTransit],
) -> None:
    """record_order_status never refuses: a status already final stays and is returned."""
    from orders_notify.activities import NotifyActivities

    env = ActivityEnvironment()
    sku = await create_product(admin, price_cents=100, on_hand=1)
    order = await seal_order(make_order([(sku, 1)]), sealer)
    await env.run(ValidateActivities(source).validate_order, validate.ValidateOrderInput(order))
    ntf = NotifyActivities(source, opener["notify"])
    await env.run(
        ntf.notify_customer,
        notify.NotifyCustomerInput(order_id=order.order_id, outcome="failed", reason_code="X"),
    )
    with pytest.raises(OrderStateConflict):
        await env.run(
            ntf.notify_customer,
            notify.NotifyCustomerInput(order_id=order.order_id, outcome="completed"),
        )
    out = await env.run(
        ntf.record_order_status,
        notify.RecordOrderStatusInput(
            order_id=order.order_id, outcome="completed", cause="OrderStateConflict"
        ),
    )
    assert (out.status, out.changed) == ("failed", False)
    assert (await facts(admin, order.order_id))["notifications"] == ["order_failed"]


# --------------------------------------------------------------------------- 2. binding


async def test_a_workflow_whose_id_is_not_its_order_id_is_refused(
    client: Client, workers: None, sealer: VaultTransit, admin: asyncpg.Connection
) -> None:
    sku = await create_product(admin, price_cents=100, on_hand=5)
    order = await seal_order(make_order([(sku, 1)]), sealer)
    with pytest.raises(WorkflowFailureError) as info:
        await run_again(client, order, workflow_id=unique("other-id"))
    cause = info.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == WORKFLOW_NOT_BOUND
    assert (await facts(admin, order.order_id))["status"] is None  # nothing recorded
    assert await stock(admin, sku) == 5


async def test_rerunning_a_finished_order_charges_and_ships_nothing(
    client: Client, workers: None, sealer: VaultTransit, admin: asyncpg.Connection
) -> None:
    sku = await create_product(admin, price_cents=800, on_hand=5)
    order = await seal_order(make_order([(sku, 2)]), sealer)
    first = (await submit_order(client, order, wait=True)).result
    assert first is not None and first.status == "completed"
    after_first = await facts(admin, order.order_id)

    again = await run_again(client, order, workflow_id=order.order_id)

    assert (again.status, again.reason_code, again.path) == (
        "rejected",
        OrderStateConflict.TYPE,
        [validate.VALIDATE_ORDER],
    )
    assert await facts(admin, order.order_id) == after_first
    assert await stock(admin, sku) == 3


async def test_rerunning_a_refunded_order_charges_and_ships_nothing(
    client: Client, workers: None, sealer: VaultTransit, admin: asyncpg.Connection
) -> None:
    sku = await create_product(admin, price_cents=900, on_hand=5)
    order = await seal_order(
        make_order([(sku, 1)], address="9 UNDELIVERABLE Road, Nowhere"), sealer
    )
    first = (await submit_order(client, order, wait=True)).result
    assert first is not None and (first.status, first.reason_code) == (
        "failed",
        "FulfillmentFailed",
    )
    after_first = await facts(admin, order.order_id)
    assert after_first["payments"] == [
        ("charge", "approved", 900, "EUR"),
        ("refund", "approved", 900, "EUR"),
    ]

    again = await run_again(client, order, workflow_id=order.order_id)

    assert (again.status, again.reason_code) == ("rejected", OrderStateConflict.TYPE)
    assert await facts(admin, order.order_id) == after_first
    assert await stock(admin, sku) == 5


async def test_a_compensated_order_whose_status_was_never_recorded_is_not_charged_again(
    client: Client,
    workers: None,
    source: GroupRoleSource,
    sealer: VaultTransit,
    opener: dict[str, VaultTransit],
    admin: asyncpg.Connection,
) -> None:
    """The first run was compensated but ended before notify (terminated, say):
    the order is still ``received``. A new run must be stopped by the fence."""
    env = ActivityEnvironment()
    sku = await create_product(admin, price_cents=400, on_hand=5)
    order = await seal_order(make_order([(sku, 1)]), sealer)
    oid = order.order_id
    inv = InventoryActivities(source)
    pay = PaymentActivities(source, stack_provider(), opener["payment"])
    await env.run(ValidateActivities(source).validate_order, validate.ValidateOrderInput(order))
    await env.run(inv.reserve_inventory, inventory.ReserveInventoryInput(oid, order.lines))
    await env.run(pay.process_payment, payment.ProcessPaymentInput(oid, order.payment_token))
    await env.run(pay.refund_payment, payment.RefundPaymentInput(oid))
    await env.run(inv.release_inventory, inventory.ReleaseInventoryInput(oid))
    before = await facts(admin, oid)
    assert before["status"] == "received"

    again = await run_again(client, order, workflow_id=oid)

    assert (again.status, again.reason_code) == ("failed", OrderStateConflict.TYPE)
    assert inventory.RELEASE_INVENTORY not in again.path  # nothing of this run to give back
    assert payment.PROCESS_PAYMENT not in again.path
    after = await facts(admin, oid)
    assert {k: v for k, v in after.items() if k not in ("status", "notifications")} == {
        k: v for k, v in before.items() if k not in ("status", "notifications")
    }
    assert (after["status"], after["notifications"]) == ("failed", ["order_failed"])
    assert await stock(admin, sku) == 5


async def test_reserve_does_not_take_a_released_reservation_for_a_live_one(
    source: GroupRoleSource, admin: asyncpg.Connection, sealer: VaultTransit
) -> None:
    env = ActivityEnvironment()
    sku = await create_product(admin, price_cents=100, on_hand=5)
    order = await seal_order(make_order([(sku, 2)]), sealer)
    await env.run(ValidateActivities(source).validate_order, validate.ValidateOrderInput(order))
    inv = InventoryActivities(source)
    reserve = inventory.ReserveInventoryInput(order.order_id, order.lines)
    await env.run(inv.reserve_inventory, reserve)
    # released out of band (no compensation marker): reserve must still not call it live
    await admin.execute(
        "UPDATE app.reservations SET status = 'released' WHERE order_id = $1", order.order_id
    )
    with pytest.raises(OrderStateConflict, match="released"):
        await env.run(inv.reserve_inventory, reserve)


# --------------------------------------------------------------------------- 3. the fence


class HeldSource:
    """A connection source that holds the next checkout for one role until released:
    an activity attempt that is stuck (GC pause, slow network) past its deadline."""

    def __init__(self, inner: GroupRoleSource, role: str) -> None:
        self.inner = inner
        self.role = role
        self.waiting = asyncio.Event()
        self.go = asyncio.Event()

    @asynccontextmanager
    async def connection(self, db_role: str) -> AsyncIterator[Any]:
        if db_role == self.role and not self.go.is_set():
            self.waiting.set()
            await self.go.wait()
        async with self.inner.connection(db_role) as conn:
            yield conn

    async def close(self) -> None:
        pass


async def test_a_reserve_released_after_its_compensation_takes_nothing(
    source: GroupRoleSource, admin: asyncpg.Connection, sealer: VaultTransit
) -> None:
    env = ActivityEnvironment()
    sku = await create_product(admin, price_cents=100, on_hand=10)
    order = await seal_order(make_order([(sku, 4)]), sealer)
    oid = order.order_id
    await env.run(ValidateActivities(source).validate_order, validate.ValidateOrderInput(order))
    held = HeldSource(source, "order-reserve-inventory")
    late = asyncio.create_task(
        ActivityEnvironment().run(
            InventoryActivities(held).reserve_inventory,  # type: ignore[arg-type]
            inventory.ReserveInventoryInput(oid, order.lines),
        )
    )
    await held.waiting.wait()  # the attempt is stuck; its deadline passes
    # the workflow gives up on reserve and compensates
    released = await env.run(
        InventoryActivities(source).release_inventory, inventory.ReleaseInventoryInput(oid)
    )
    assert released.released == ()
    held.go.set()  # now the stuck attempt goes on

    with pytest.raises(OrderStateConflict, match="compensated"):
        await late
    assert await stock(admin, sku) == 10
    assert (await facts(admin, oid))["reservations"] == []
    marker = await admin.fetchrow(
        "SELECT step, db_user FROM app.order_compensations WHERE order_id = $1", oid
    )
    assert tuple(marker) == ("release_inventory", "order_release_inventory")


async def test_an_earlier_reserve_attempt_takes_nothing_after_an_out_of_stock_refusal(
    source: GroupRoleSource, admin: asyncpg.Connection, sealer: VaultTransit
) -> None:
    """Attempt 1 is stuck; attempt 2 is refused (out of stock), so the workflow gives up
    without a release. Stock arrives, then attempt 1 goes on: it must take nothing."""
    env = ActivityEnvironment()
    sku = await create_product(admin, price_cents=100, on_hand=1)
    order = await seal_order(make_order([(sku, 3)]), sealer)
    oid = order.order_id
    await env.run(ValidateActivities(source).validate_order, validate.ValidateOrderInput(order))
    held = HeldSource(source, "order-reserve-inventory")
    reserve = inventory.ReserveInventoryInput(oid, order.lines)
    stuck = asyncio.create_task(
        ActivityEnvironment().run(
            InventoryActivities(held).reserve_inventory,  # type: ignore[arg-type]
            reserve,
        )
    )
    await held.waiting.wait()
    with pytest.raises(OutOfStock):
        await env.run(InventoryActivities(source).reserve_inventory, reserve)
    await admin.execute("UPDATE app.inventory SET on_hand = 10 WHERE sku = $1", sku)
    held.go.set()

    with pytest.raises(OrderStateConflict, match="reserve_refused"):
        await stuck
    assert await stock(admin, sku) == 10
    assert (await facts(admin, oid))["reservations"] == []


async def test_a_reserve_that_commits_first_is_given_back_by_the_compensation(
    order_db: str, source: GroupRoleSource, admin: asyncpg.Connection, sealer: VaultTransit
) -> None:
    """The other order of events: the late reserve commits first, holding the order's
    lock; the release waits for it and then gives its stock back."""
    env = ActivityEnvironment()
    sku = await create_product(admin, price_cents=100, on_hand=10)
    order = await seal_order(make_order([(sku, 4)]), sealer)
    oid = order.order_id
    await env.run(ValidateActivities(source).validate_order, validate.ValidateOrderInput(order))
    locker = await asyncpg.connect(order_db)
    try:
        # hold the order's fence as a reserve transaction in flight would
        tr = locker.transaction()
        await tr.start()
        await locker.execute("SET LOCAL ROLE order_reserve_inventory")
        await check_not_compensated(locker, oid, "reserve_inventory")
        release = asyncio.create_task(
            ActivityEnvironment().run(
                InventoryActivities(source).release_inventory,
                inventory.ReleaseInventoryInput(oid),
            )
        )
        await _until_waiting_on_advisory_lock(admin)
        await locker.execute(
            "INSERT INTO app.reservations (order_id, sku, quantity) VALUES ($1, $2, 4)", oid, sku
        )
        await locker.execute("UPDATE app.inventory SET on_hand = on_hand - 4 WHERE sku = $1", sku)
        await tr.commit()
        out = await release
    finally:
        await locker.close()
    assert out.released == (OrderLine(sku, 4),)
    assert await stock(admin, sku) == 10


async def _until_waiting_on_advisory_lock(admin: asyncpg.Connection) -> None:
    """Wait (by state, not by time) until some session waits on an advisory lock."""
    for _ in range(2000):
        waiting = await admin.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the release never waited for the order's lock")


def stack_provider() -> HttpCardProvider:
    """The stack's payment provider simulator (its own process and ledger)."""
    return HttpCardProvider(StackSettings.from_env().provider_url)


class CountingProvider(HttpCardProvider):
    def __init__(self) -> None:
        super().__init__(StackSettings.from_env().provider_url)
        self.charges = 0

    async def charge(self, request: Any) -> Any:
        self.charges += 1
        return await super().charge(request)


async def test_a_charge_attempt_after_the_refund_ran_charges_nothing(
    source: GroupRoleSource,
    admin: asyncpg.Connection,
    sealer: VaultTransit,
    opener: dict[str, VaultTransit],
) -> None:
    """The charge attempt was stuck before it recorded its intent; the workflow gave up
    and refunded (nothing recorded, nothing to refund). The stuck attempt then goes on."""
    env = ActivityEnvironment()
    sku = await create_product(admin, price_cents=500, on_hand=1)
    order = await seal_order(make_order([(sku, 1)]), sealer)
    oid = order.order_id
    await env.run(ValidateActivities(source).validate_order, validate.ValidateOrderInput(order))
    provider = CountingProvider()
    pay = PaymentActivities(source, provider, opener["payment"])
    refund = await env.run(pay.refund_payment, payment.RefundPaymentInput(oid))
    assert refund.refunded is False

    with pytest.raises(OrderStateConflict, match="compensated"):
        await env.run(pay.process_payment, payment.ProcessPaymentInput(oid, order.payment_token))
    assert provider.charges == 0
    # no charge row; the refund recorded that there was nothing to give back
    assert (await facts(admin, oid))["payments"] == [("refund", "not_charged", 500, "EUR")]


@pytest.mark.parametrize("status", ["completed", "failed", "rejected"])
async def test_process_payment_charges_only_an_order_still_received(
    source: GroupRoleSource,
    admin: asyncpg.Connection,
    sealer: VaultTransit,
    opener: dict[str, VaultTransit],
    status: str,
) -> None:
    env = ActivityEnvironment()
    sku = await create_product(admin, price_cents=500, on_hand=1)
    order = await seal_order(make_order([(sku, 1)]), sealer)
    oid = order.order_id
    await env.run(ValidateActivities(source).validate_order, validate.ValidateOrderInput(order))
    await admin.execute("UPDATE app.orders SET status = $2 WHERE order_id = $1", oid, status)
    provider = CountingProvider()
    pay = PaymentActivities(source, provider, opener["payment"])
    with pytest.raises(OrderStateConflict, match=f"already {status}"):
        await env.run(pay.process_payment, payment.ProcessPaymentInput(oid, order.payment_token))
    assert provider.charges == 0
    assert (await facts(admin, oid))["payments"] == []


async def test_a_fulfill_attempt_after_the_compensation_ships_nothing(
    source: GroupRoleSource,
    admin: asyncpg.Connection,
    sealer: VaultTransit,
    opener: dict[str, VaultTransit],
) -> None:
    env = ActivityEnvironment()
    sku = await create_product(admin, price_cents=500, on_hand=1)
    order = await seal_order(make_order([(sku, 1)]), sealer)
    oid = order.order_id
    await env.run(ValidateActivities(source).validate_order, validate.ValidateOrderInput(order))
    held = HeldSource(source, "order-fulfill")
    from orders_fulfill.activities import FulfillActivities

    late = asyncio.create_task(
        ActivityEnvironment().run(
            FulfillActivities(held, opener["fulfill"]).fulfill_order,  # type: ignore[arg-type]
            fulfill.FulfillOrderInput(oid),
        )
    )
    await held.waiting.wait()
    await env.run(
        InventoryActivities(source).release_inventory, inventory.ReleaseInventoryInput(oid)
    )
    held.go.set()
    with pytest.raises(OrderStateConflict, match="compensated"):
        await late
    assert (await facts(admin, oid))["shipments"] == 0


async def test_fulfill_ships_only_an_order_with_an_approved_charge(
    source: GroupRoleSource,
    admin: asyncpg.Connection,
    sealer: VaultTransit,
    opener: dict[str, VaultTransit],
) -> None:
    """A compromised orchestrator schedules every step: it can call fulfill_order for an
    order it never had charged (or with a forged payment result). Fulfill checks the
    charge with its own login (app.payments: order_id, kind, status) and ships nothing."""
    from orders_fulfill.activities import FulfillActivities

    env = ActivityEnvironment()
    sku = await create_product(admin, price_cents=500, on_hand=2)
    order = await seal_order(make_order([(sku, 1)]), sealer)
    oid = order.order_id
    await env.run(ValidateActivities(source).validate_order, validate.ValidateOrderInput(order))
    await env.run(
        InventoryActivities(source).reserve_inventory,
        inventory.ReserveInventoryInput(oid, order.lines),
    )
    ful = FulfillActivities(source, opener["fulfill"])
    with pytest.raises(OrderStateConflict, match="no approved charge"):
        await env.run(ful.fulfill_order, fulfill.FulfillOrderInput(oid))
    assert (await facts(admin, oid))["shipments"] == 0
    # a declined charge is no charge either
    await admin.execute(
        "INSERT INTO app.payments (order_id, kind, status, amount_cents, currency, "
        "provider_ref, idempotency_key) VALUES ($1, 'charge', 'declined', 500, 'EUR', "
        "'ref-d', $1 || ':charge')",
        oid,
    )
    with pytest.raises(OrderStateConflict, match="no approved charge"):
        await env.run(ful.fulfill_order, fulfill.FulfillOrderInput(oid))
    assert (await facts(admin, oid))["shipments"] == 0
    # approved: it ships
    await admin.execute(
        "UPDATE app.payments SET status = 'approved' WHERE order_id = $1 AND kind = 'charge'",
        oid,
    )
    shipped = await env.run(ful.fulfill_order, fulfill.FulfillOrderInput(oid))
    assert shipped.order_id == oid and (await facts(admin, oid))["shipments"] == 1


# --------------------------------------------------------------------------- 4. validate


async def test_validate_returns_what_it_recorded_not_a_new_price(
    source: GroupRoleSource, admin: asyncpg.Connection, sealer: VaultTransit
) -> None:
    env = ActivityEnvironment()
    sku = await create_product(admin, price_cents=1000, on_hand=10)
    order = await seal_order(make_order([(sku, 2)]), sealer)
    v = ValidateActivities(source)
    first = await env.run(v.validate_order, validate.ValidateOrderInput(order))
    await admin.execute("UPDATE app.products SET unit_price_cents = 1 WHERE sku = $1", sku)
    again = await env.run(v.validate_order, validate.ValidateOrderInput(order))
    assert again == first
    assert (again.total_cents, again.lines[0].unit_price_cents) == (2000, 1000)


async def test_a_rejected_order_is_rejected_again_with_its_recorded_reason(
    source: GroupRoleSource, admin: asyncpg.Connection, sealer: VaultTransit
) -> None:
    env = ActivityEnvironment()
    missing = unique("NOPE")
    order = await seal_order(make_order([(missing, 1)]), sealer)
    v = ValidateActivities(source)
    for _ in range(2):
        with pytest.raises(OrderRejected, match=f"unknown SKU: {missing}"):
            await env.run(v.validate_order, validate.ValidateOrderInput(order))


# --------------------------------------------------------------------------- 5. hostile text


@pytest.mark.parametrize(
    ("table", "column", "value"),
    [
        ("notifications", "recipient", "ada@example.com\x01"),
        ("notifications", "subject", "Your order\u2028Bcc: x@y.z"),
        ("notifications", "body", "Hello \u202eevil"),
        ("notifications", "body", "Hello \x85"),
    ],
)
async def test_the_database_refuses_text_it_should_not_carry(
    admin: asyncpg.Connection, table: str, column: str, value: str
) -> None:
    oid = unique("ord")
    await admin.execute(
        "INSERT INTO app.orders (order_id, customer_id, total_cents) VALUES ($1, 'c', 1)", oid
    )
    row = {"recipient": "a@b.test", "subject": "s", "body": "Hello\nthere"}
    row[column] = value
    with pytest.raises(asyncpg.CheckViolationError):
        await admin.execute(
            "INSERT INTO app.notifications (order_id, kind, recipient, subject, body) "
            "VALUES ($1, 'order_completed', $2, $3, $4)",
            oid,
            row["recipient"],
            row["subject"],
            row["body"],
        )
    # the same row with clean text is stored (the constraint is not too strict)
    await admin.execute(
        "INSERT INTO app.notifications (order_id, kind, recipient, subject, body) "
        "VALUES ($1, 'order_completed', 'a@b.test', 'Zoë', 'Hello Zoë\nthere')",
        oid,
    )


async def test_a_refused_row_is_not_quoted_into_the_server_log(
    stack: Stack, admin: asyncpg.Connection
) -> None:
    """PostgreSQL's DETAIL line quotes a row a constraint refused ("Failing row contains
    (..., ada@example.com, ...)"): the stack's server logs tersely, so the error is in
    the log and the personal value is not."""
    oid = unique("ord")
    marker = f"{unique('leak')}@example.com\x01"  # refused: a control character
    await admin.execute(
        "INSERT INTO app.orders (order_id, customer_id, total_cents) VALUES ($1, 'c', 1)", oid
    )
    with pytest.raises(asyncpg.CheckViolationError):
        await admin.execute(
            "INSERT INTO app.notifications (order_id, kind, recipient, subject, body) "
            "VALUES ($1, 'order_completed', $2, 's', 'b')",
            oid,
            marker,
        )
    log = stack.postgres.log_file.read_text(errors="replace")
    assert 'violates check constraint "notifications_' in log
    assert marker.rstrip("\x01") not in log


async def test_the_database_refuses_a_bidi_control_in_a_stored_contact(
    admin: asyncpg.Connection,
) -> None:
    oid = unique("ord")
    await admin.execute(
        "INSERT INTO app.orders (order_id, customer_id, total_cents) VALUES ($1, 'c', 1)", oid
    )
    with pytest.raises(asyncpg.CheckViolationError):
        await admin.execute(
            "INSERT INTO app.customer_contacts VALUES ($1, 'Ada \u202e', 'a@b.test', 'x')", oid
        )


# --------------------------------------------------------------------------- 6. currency


async def test_an_order_in_another_currency_is_refused_not_charged_euro_prices(
    client: Client, workers: None, sealer: VaultTransit, admin: asyncpg.Connection
) -> None:
    sku = await create_product(admin, price_cents=1000, on_hand=5)  # priced in EUR
    order = make_order([(sku, 1)], currency="USD")

    result = (await submit_order(client, order, wait=True, transit=sealer)).result

    assert result is not None
    assert (result.status, result.reason_code) == ("rejected", OrderRejected.TYPE)
    assert result.reason is not None and "USD" in result.reason and sku in result.reason
    # it names the currency the shop takes, not only the one it refuses
    assert "the shop takes EUR" in result.reason
    got = await facts(admin, order.order_id)
    assert (got["status"], got["payments"], got["reservations"]) == ("rejected", [], [])
    assert await stock(admin, sku) == 5


async def test_an_order_in_the_products_currency_is_charged_in_it(
    client: Client, workers: None, sealer: VaultTransit, admin: asyncpg.Connection
) -> None:
    sku = await create_product(admin, price_cents=1000, on_hand=5)
    await admin.execute("UPDATE app.products SET currency = 'USD' WHERE sku = $1", sku)
    order = make_order([(sku, 1)], currency="USD")

    result = (await submit_order(client, order, wait=True, transit=sealer)).result

    assert result is not None and result.status == "completed"
    assert (await facts(admin, order.order_id))["payments"] == [("charge", "approved", 1000, "USD")]
