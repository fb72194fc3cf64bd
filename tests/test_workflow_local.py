"""The order workflow end to end on the real stack: real Temporal dev server, real
PostgreSQL, in-process workers (one per task queue, as the services would run).

Each activity connects through :class:`support.GroupRoleSource`, i.e. with
exactly its group role's privileges, so a statement a role may not run fails
here as it would in production. Each test creates its own SKUs and order ids
and asserts the exact rows it leaves behind. Everything runs in a Temporal
namespace of its own (``orders-tests``), so real workers that may be polling
the same queues in ``default`` never pick up a test's tasks.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
import support  # tests/ is on pytest's pythonpath
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from orders_fulfill import worker as fulfill_worker
from orders_fulfill.activities import FulfillActivities, tracking_id_for
from orders_inventory import worker as inventory_worker
from orders_inventory.activities import InventoryActivities
from orders_notify import worker as notify_worker
from orders_notify.activities import NotifyActivities
from orders_ops.database import bootstrap_database
from orders_ops.namespaces import ensure_namespace
from orders_ops.stack import Stack
from orders_orchestrator import worker as orchestrator_worker
from orders_payment import worker as payment_worker
from orders_payment.activities import PaymentActivities
from orders_payment.provider import HttpCardProvider
from orders_shared.client import OrderNotSealedError, order_status, submit_order
from orders_shared.codec import VaultTransit
from orders_shared.contracts import fulfill, inventory, notify, payment, validate
from orders_shared.contracts.common import Order, OrderLine
from orders_shared.contracts.orchestrator import TASK_QUEUE as ORCHESTRATOR_QUEUE
from orders_shared.errors import OutOfStock, PaymentDeclined
from orders_shared.sealing import is_sealed, seal_order
from orders_validate import worker as validate_worker
from orders_validate.activities import ValidateActivities

GroupRoleSource = support.GroupRoleSource
Identities = support.Identities
create_product = support.create_product
unique = support.unique

pytestmark = [pytest.mark.stack]

NAMESPACE = "orders-tests"
HAPPY_PATH = [
    validate.VALIDATE_ORDER,
    inventory.RESERVE_INVENTORY,
    payment.PROCESS_PAYMENT,
    fulfill.FULFILL_ORDER,
    notify.NOTIFY_CUSTOMER,
]


# --------------------------------------------------------------------------- fixtures


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def order_db(stack: Stack) -> str:
    """The bootstrapped order database; returns the superuser DSN to it."""
    await bootstrap_database(stack.settings)
    return stack.settings.admin_dsn(stack.settings.database)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def source(order_db: str) -> AsyncIterator[GroupRoleSource]:
    src = await GroupRoleSource.create(order_db)
    yield src
    await src.close()


@pytest.fixture(autouse=True)
def no_fault_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A fault injected with ``fail_next`` is consumed by its own test or cleared: a test
    that failed before its activity ran once handed it on and failed three more."""
    yield
    if "source" in request.fixturenames:
        left = request.getfixturevalue("source").take_unused_faults()
        assert not left, f"injected faults never consumed: {left}"


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
    """Vault sessions of the client and the services that open sealed fields."""
    ids = Identities(stack.settings)
    yield ids
    await ids.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def sealer(identities: Any) -> VaultTransit:
    """Transit as the client identity: seals order fields to their consumers."""
    transit: VaultTransit = await identities.transit("client")
    return transit


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def opener(identities: Any) -> dict[str, VaultTransit]:
    """Transit as each consuming service's own identity."""
    return {name: await identities.transit(name) for name in ("payment", "fulfill", "notify")}


@pytest.fixture(scope="session")
def card_provider(stack: Stack) -> HttpCardProvider:
    """The stack's payment provider simulator (its own process and ledger)."""
    return HttpCardProvider(stack.settings.provider_url)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def workers(
    client: Client,
    source: GroupRoleSource,
    opener: dict[str, VaultTransit],
    card_provider: HttpCardProvider,
) -> AsyncIterator[None]:
    """One worker per task queue, built by each service's own ``worker.py``."""
    services: list[tuple[str, list[Any]]] = [
        (validate.TASK_QUEUE, validate_worker.build_activities(source)),
        (inventory.TASK_QUEUE, inventory_worker.build_activities(source)),
        (
            payment.TASK_QUEUE,
            payment_worker.build_activities(source, opener["payment"], card_provider),
        ),
        (fulfill.TASK_QUEUE, fulfill_worker.build_activities(source, opener["fulfill"])),
        (notify.TASK_QUEUE, notify_worker.build_activities(source, opener["notify"])),
    ]
    async with AsyncExitStack() as stack:
        for queue, activities in services:
            await stack.enter_async_context(Worker(client, task_queue=queue, activities=activities))
        await stack.enter_async_context(
            Worker(client, task_queue=ORCHESTRATOR_QUEUE, workflows=orchestrator_worker.WORKFLOWS)
        )
        yield


def make_order(
    lines: list[tuple[str, int]],
    *,
    token: str = "tok_visa",  # noqa: S107 (a simulator test card, not a secret)
    address: str = "1 Main Street, 1000 Brussels",
) -> Order:
    return Order(
        order_id=unique("ord"),
        customer_id="cust-1",
        customer_name="Ada Lovelace",
        email="ada@example.com",
        shipping_address=address,
        payment_token=token,
        lines=tuple(OrderLine(sku=s, quantity=q) for s, q in lines),
    )


async def rows(admin: asyncpg.Connection, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await admin.fetch(sql, *args)]


async def stock(admin: asyncpg.Connection, sku: str) -> int:
    value: int = await admin.fetchval("SELECT on_hand FROM app.inventory WHERE sku = $1", sku)
    return value


async def order_row(admin: asyncpg.Connection, order_id: str) -> tuple[Any, ...]:
    row = await admin.fetchrow(
        "SELECT status, status_reason, total_cents, currency, created_by, status_by "
        "FROM app.orders WHERE order_id = $1",
        order_id,
    )
    assert row is not None
    return tuple(row)


async def payments(admin: asyncpg.Connection, order_id: str) -> list[tuple[Any, ...]]:
    return await rows(
        admin,
        "SELECT kind, status, amount_cents, currency, idempotency_key, db_user "
        "FROM app.payments WHERE order_id = $1 ORDER BY kind",
        order_id,
    )


async def reservations(admin: asyncpg.Connection, order_id: str) -> list[tuple[Any, ...]]:
    return await rows(
        admin,
        "SELECT sku, quantity, status, reserved_by, released_by "
        "FROM app.reservations WHERE order_id = $1 ORDER BY sku",
        order_id,
    )


async def notifications(admin: asyncpg.Connection, order_id: str) -> list[tuple[Any, ...]]:
    return await rows(
        admin,
        "SELECT kind, recipient, db_user FROM app.notifications WHERE order_id = $1",
        order_id,
    )


async def shipments(admin: asyncpg.Connection, order_id: str) -> list[tuple[Any, ...]]:
    return await rows(
        admin,
        "SELECT carrier, tracking_id, db_user FROM app.shipments WHERE order_id = $1",
        order_id,
    )


# --------------------------------------------------------------------------- workflow paths


async def test_success(
    client: Client, workers: None, sealer: VaultTransit, admin: asyncpg.Connection
) -> None:
    a = await create_product(admin, price_cents=1250, on_hand=10)
    b = await create_product(admin, price_cents=499, on_hand=5)
    order = make_order([(a, 2), (b, 1)])

    submitted = await submit_order(client, order, wait=True, transit=sealer)

    result = submitted.result
    assert result is not None
    assert (result.status, result.path, result.reason_code, result.total_cents) == (
        "completed",
        HAPPY_PATH,
        None,
        2999,
    )
    assert result.tracking_id == tracking_id_for(order.order_id)
    oid = order.order_id
    assert await order_row(admin, oid) == (
        "completed",
        None,
        2999,
        "EUR",
        "order_validate",
        "order_notify",
    )
    assert await rows(
        admin,
        "SELECT sku, quantity, unit_price_cents FROM app.order_items WHERE order_id = $1 "
        "ORDER BY sku",
        oid,
    ) == sorted([(a, 2, 1250), (b, 1, 499)])
    assert await reservations(admin, oid) == sorted(
        [
            (a, 2, "reserved", "order_reserve_inventory", None),
            (b, 1, "reserved", "order_reserve_inventory", None),
        ]
    )
    assert (await stock(admin, a), await stock(admin, b)) == (8, 4)
    assert await payments(admin, oid) == [
        ("charge", "approved", 2999, "EUR", f"{oid}:charge", "order_process_payment")
    ]
    assert await shipments(admin, oid) == [("sim-post", tracking_id_for(oid), "order_fulfill")]
    assert await notifications(admin, oid) == [
        ("order_completed", "ada@example.com", "order_notify")
    ]
    # validate stored the contact fields as given: sealed, not readable in the database
    contact = await admin.fetchrow(
        "SELECT customer_name, email, shipping_address FROM app.customer_contacts "
        "WHERE order_id = $1",
        oid,
    )
    assert contact is not None
    assert all(is_sealed(value) for value in contact.values())

    status = await order_status(client, oid)
    assert (status.workflow_status, status.step, status.path) == ("COMPLETED", "done", HAPPY_PATH)


async def test_plain_order_is_not_submitted(client: Client) -> None:
    with pytest.raises(OrderNotSealedError, match="not sealed"):
        await submit_order(client, make_order([("WIDGET-1", 1)]), wait=False)


async def test_resubmit_is_deduplicated(
    client: Client, workers: None, sealer: VaultTransit, admin: asyncpg.Connection
) -> None:
    sku = await create_product(admin, price_cents=100, on_hand=5)
    order = make_order([(sku, 1)])
    first = await submit_order(client, order, wait=True, transit=sealer)
    again = await submit_order(client, order, wait=True, transit=sealer)
    assert (first.deduplicated, again.deduplicated) == (False, True)
    assert again.run_id == first.run_id
    assert again.result == first.result
    assert await stock(admin, sku) == 4
    assert len(await payments(admin, order.order_id)) == 1


async def test_unknown_sku_is_rejected(
    client: Client, workers: None, sealer: VaultTransit, admin: asyncpg.Connection
) -> None:
    known = await create_product(admin, price_cents=100, on_hand=5)
    missing = unique("NOPE")
    order = make_order([(known, 1), (missing, 1)])

    result = (await submit_order(client, order, wait=True, transit=sealer)).result

    assert result is not None
    assert (result.status, result.reason_code, result.path) == (
        "rejected",
        "OrderRejected",
        [validate.VALIDATE_ORDER, notify.NOTIFY_CUSTOMER],
    )
    oid = order.order_id
    assert await order_row(admin, oid) == (
        "rejected",
        f"unknown SKU: {missing}",
        0,
        "EUR",
        "order_validate",
        "order_notify",
    )
    assert await rows(admin, "SELECT 1 FROM app.order_items WHERE order_id = $1", oid) == []
    assert await reservations(admin, oid) == []
    assert await stock(admin, known) == 5
    assert await notifications(admin, oid) == [("order_failed", "ada@example.com", "order_notify")]


async def test_out_of_stock(
    client: Client, workers: None, sealer: VaultTransit, admin: asyncpg.Connection
) -> None:
    plenty = await create_product(admin, price_cents=100, on_hand=50)
    scarce = await create_product(admin, price_cents=100, on_hand=1)
    order = make_order([(plenty, 3), (scarce, 2)])

    result = (await submit_order(client, order, wait=True, transit=sealer)).result

    assert result is not None
    assert (result.status, result.reason_code, result.path) == (
        "failed",
        "OutOfStock",
        [validate.VALIDATE_ORDER, inventory.RESERVE_INVENTORY, notify.NOTIFY_CUSTOMER],
    )
    oid = order.order_id
    # all or nothing: the line that could be covered was not kept either
    assert await reservations(admin, oid) == []
    assert (await stock(admin, plenty), await stock(admin, scarce)) == (50, 1)
    assert await payments(admin, oid) == []
    status, reason, *_ = await order_row(admin, oid)
    assert (status, reason) == ("failed", f"OutOfStock: not enough stock for SKU {scarce}")
    assert await notifications(admin, oid) == [("order_failed", "ada@example.com", "order_notify")]


async def test_rare_sku_of_the_demo_seed_is_out_of_stock(
    client: Client, workers: None, sealer: VaultTransit, admin: asyncpg.Connection
) -> None:
    order = make_order([("RARE-4", 1)])
    result = (await submit_order(client, order, wait=True, transit=sealer)).result
    assert result is not None
    assert (result.status, result.reason_code) == ("failed", "OutOfStock")
    assert await stock(admin, "RARE-4") == 0


async def test_declined_payment_releases_the_reservation(
    client: Client, workers: None, sealer: VaultTransit, admin: asyncpg.Connection
) -> None:
    sku = await create_product(admin, price_cents=700, on_hand=10)
    order = make_order([(sku, 3)], token="tok_decline_insufficient_funds")

    result = (await submit_order(client, order, wait=True, transit=sealer)).result

    assert result is not None
    assert (result.status, result.reason_code, result.path) == (
        "failed",
        "PaymentDeclined",
        [
            validate.VALIDATE_ORDER,
            inventory.RESERVE_INVENTORY,
            payment.PROCESS_PAYMENT,
            inventory.RELEASE_INVENTORY,
            notify.NOTIFY_CUSTOMER,
        ],
    )
    oid = order.order_id
    assert await reservations(admin, oid) == [
        (sku, 3, "released", "order_reserve_inventory", "order_release_inventory")
    ]
    assert await stock(admin, sku) == 10
    # the declined charge is recorded (so a retry gets the same answer); nothing to refund
    assert await payments(admin, oid) == [
        ("charge", "declined", 2100, "EUR", f"{oid}:charge", "order_process_payment")
    ]
    assert (await order_row(admin, oid))[0] == "failed"
    assert await notifications(admin, oid) == [("order_failed", "ada@example.com", "order_notify")]


async def test_failure_after_payment_refunds_and_releases(
    client: Client, workers: None, sealer: VaultTransit, admin: asyncpg.Connection
) -> None:
    sku = await create_product(admin, price_cents=1500, on_hand=4)
    order = make_order([(sku, 2)], address="42 UNDELIVERABLE Lane, Nowhere")

    result = (await submit_order(client, order, wait=True, transit=sealer)).result

    assert result is not None
    assert (result.status, result.reason_code, result.path) == (
        "failed",
        "FulfillmentFailed",
        [
            validate.VALIDATE_ORDER,
            inventory.RESERVE_INVENTORY,
            payment.PROCESS_PAYMENT,
            fulfill.FULFILL_ORDER,
            payment.REFUND_PAYMENT,
            inventory.RELEASE_INVENTORY,
            notify.NOTIFY_CUSTOMER,
        ],
    )
    oid = order.order_id
    assert await payments(admin, oid) == [
        ("charge", "approved", 3000, "EUR", f"{oid}:charge", "order_process_payment"),
        ("refund", "approved", 3000, "EUR", f"{oid}:refund", "order_process_payment"),
    ]
    assert await reservations(admin, oid) == [
        (sku, 2, "released", "order_reserve_inventory", "order_release_inventory")
    ]
    assert await stock(admin, sku) == 4
    assert await shipments(admin, oid) == []
    assert (await order_row(admin, oid))[:3] == (
        "failed",
        "FulfillmentFailed: the carrier cannot deliver to the address on file",
        3000,
    )
    assert await notifications(admin, oid) == [("order_failed", "ada@example.com", "order_notify")]
    body = await admin.fetchval("SELECT body FROM app.notifications WHERE order_id = $1", oid)
    assert "refunded" in body


async def test_transient_provider_error_is_retried(
    client: Client, workers: None, sealer: VaultTransit, admin: asyncpg.Connection
) -> None:
    sku = await create_product(admin, price_cents=250, on_hand=3)
    order = make_order([(sku, 1)], token="tok_transient_gateway")

    result = (await submit_order(client, order, wait=True, transit=sealer)).result

    assert result is not None
    assert (result.status, result.path) == ("completed", HAPPY_PATH)
    assert await payments(admin, order.order_id) == [
        ("charge", "approved", 250, "EUR", f"{order.order_id}:charge", "order_process_payment")
    ]


async def test_expired_credential_is_retried_not_a_business_outcome(
    client: Client,
    workers: None,
    sealer: VaultTransit,
    source: GroupRoleSource,
    admin: asyncpg.Connection,
) -> None:
    """An InvalidPasswordError (a revoked or expired credential) is an infrastructure
    failure: the activity is retried and the order completes, it is never declined."""
    sku = await create_product(admin, price_cents=300, on_hand=3)
    order = make_order([(sku, 1)])
    for role in ("order-reserve-inventory", "order-process-payment"):
        source.fail_next(
            role,
            asyncpg.InvalidPasswordError('password authentication failed for user "v-expired"'),
            times=2,
        )

    result = (await submit_order(client, order, wait=True, transit=sealer)).result

    assert result is not None
    assert (result.status, result.path, result.reason_code) == ("completed", HAPPY_PATH, None)
    assert await stock(admin, sku) == 2
    assert len(await payments(admin, order.order_id)) == 1


# --------------------------------------------------------------------------- idempotency


async def test_every_activity_called_twice_changes_nothing_the_second_time(
    source: GroupRoleSource,
    admin: asyncpg.Connection,
    sealer: VaultTransit,
    opener: dict[str, VaultTransit],
    card_provider: HttpCardProvider,
) -> None:
    """A retry after a worker died after committing, or a duplicate delivery,
    must not double anything: call each activity twice directly."""
    env = ActivityEnvironment()
    sku = await create_product(admin, price_cents=1000, on_hand=10)
    order = await seal_order(make_order([(sku, 3)]), sealer)
    oid = order.order_id
    v = ValidateActivities(source)
    inv = InventoryActivities(source)
    pay = PaymentActivities(source, card_provider, opener["payment"])
    ful = FulfillActivities(source, opener["fulfill"])
    ntf = NotifyActivities(source, opener["notify"])

    for _ in range(2):
        priced = await env.run(v.validate_order, validate.ValidateOrderInput(order=order))
        assert priced.total_cents == 3000
    assert await rows(admin, "SELECT count(*) FROM app.order_items WHERE order_id = $1", oid) == [
        (1,)
    ]

    reserve = inventory.ReserveInventoryInput(order_id=oid, lines=order.lines)
    first = await env.run(inv.reserve_inventory, reserve)
    second = await env.run(inv.reserve_inventory, reserve)
    assert (first.already_reserved, second.already_reserved) == (False, True)
    assert first.lines == second.lines == (OrderLine(sku, 3),)
    assert await stock(admin, sku) == 7

    charge = payment.ProcessPaymentInput(order_id=oid, payment_token=order.payment_token)
    c1 = await env.run(pay.process_payment, charge)
    c2 = await env.run(pay.process_payment, charge)
    assert c1 == c2
    assert c1.amount_cents == 3000

    s1 = await env.run(ful.fulfill_order, fulfill.FulfillOrderInput(order_id=oid))
    s2 = await env.run(ful.fulfill_order, fulfill.FulfillOrderInput(order_id=oid))
    assert s1 == s2
    assert len(await shipments(admin, oid)) == 1

    r1 = await env.run(pay.refund_payment, payment.RefundPaymentInput(order_id=oid))
    r2 = await env.run(pay.refund_payment, payment.RefundPaymentInput(order_id=oid))
    assert (r1.refunded, r1.amount_cents) == (True, 3000)
    assert r1 == r2
    assert [p[:3] for p in await payments(admin, oid)] == [
        ("charge", "approved", 3000),
        ("refund", "approved", 3000),
    ]

    rel1 = await env.run(inv.release_inventory, inventory.ReleaseInventoryInput(order_id=oid))
    rel2 = await env.run(inv.release_inventory, inventory.ReleaseInventoryInput(order_id=oid))
    assert (rel1.released, rel2.released) == ((OrderLine(sku, 3),), ())
    assert await stock(admin, sku) == 10

    note = notify.NotifyCustomerInput(order_id=oid, outcome="failed", reason_code="Test")
    n1 = await env.run(ntf.notify_customer, note)
    n2 = await env.run(ntf.notify_customer, note)
    assert (n1.already_notified, n2.already_notified) == (False, True)
    assert len(await notifications(admin, oid)) == 1
    assert (await order_row(admin, oid))[0] == "failed"


async def test_declined_charge_stays_declined_on_retry(
    source: GroupRoleSource,
    admin: asyncpg.Connection,
    sealer: VaultTransit,
    opener: dict[str, VaultTransit],
    card_provider: HttpCardProvider,
) -> None:
    env = ActivityEnvironment()
    sku = await create_product(admin, price_cents=100, on_hand=1)
    order = await seal_order(make_order([(sku, 1)], token="tok_decline"), sealer)
    await env.run(ValidateActivities(source).validate_order, validate.ValidateOrderInput(order))
    pay = PaymentActivities(source, card_provider, opener["payment"])
    for _ in range(2):
        with pytest.raises(PaymentDeclined):
            await env.run(
                pay.process_payment,
                payment.ProcessPaymentInput(
                    order_id=order.order_id, payment_token=order.payment_token
                ),
            )
    assert [p[:2] for p in await payments(admin, order.order_id)] == [("charge", "declined")]


async def test_concurrent_duplicate_reservations_take_stock_once(
    source: GroupRoleSource, admin: asyncpg.Connection, sealer: VaultTransit
) -> None:
    sku = await create_product(admin, price_cents=100, on_hand=10)
    order = await seal_order(make_order([(sku, 4)]), sealer)
    await ActivityEnvironment().run(
        ValidateActivities(source).validate_order, validate.ValidateOrderInput(order)
    )
    inv = InventoryActivities(source)
    inp = inventory.ReserveInventoryInput(order_id=order.order_id, lines=order.lines)
    results = await asyncio.gather(
        *(ActivityEnvironment().run(inv.reserve_inventory, inp) for _ in range(10))
    )
    assert sorted(r.already_reserved for r in results) == [False] + [True] * 9
    assert await stock(admin, sku) == 6
    assert len(await reservations(admin, order.order_id)) == 1


async def test_fifty_concurrent_orders_on_a_stock_of_twenty(
    source: GroupRoleSource, admin: asyncpg.Connection
) -> None:
    sku = await create_product(admin, price_cents=100, on_hand=20)
    batch = uuid.uuid4().hex[:8]
    order_ids = [f"conc-{batch}-{i}" for i in range(50)]
    await admin.executemany(
        "INSERT INTO app.orders (order_id, customer_id, total_cents) VALUES ($1, 'cust', 100)",
        [(oid,) for oid in order_ids],
    )
    inv = InventoryActivities(source)

    async def reserve(order_id: str) -> bool:
        try:
            await ActivityEnvironment().run(
                inv.reserve_inventory,
                inventory.ReserveInventoryInput(order_id=order_id, lines=(OrderLine(sku, 1),)),
            )
        except OutOfStock:
            return False
        return True

    outcomes = await asyncio.gather(*(reserve(oid) for oid in order_ids))

    assert outcomes.count(True) == 20
    assert outcomes.count(False) == 30
    assert await stock(admin, sku) == 0
    assert await rows(
        admin, "SELECT count(*), sum(quantity) FROM app.reservations WHERE sku = $1", sku
    ) == [(20, 20)]
