"""The payment provider as a real process with a ledger, and the payment activities
against it: what the provider *holds* is asserted, not what our rows say.

Runs against the stack's provider simulator (``orders_ops.provider_sim``) over
HTTP, real PostgreSQL (through :class:`support.GroupRoleSource`, i.e. the payment
group role's privileges) and real Vault Transit for the sealed payment token.
Each test uses its own order ids, and scopes every fault to its own keys.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
import support
from prometheus_client import REGISTRY
from structlog.testing import capture_logs
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from orders_ops.database import bootstrap_database
from orders_ops.provider_sim import ProviderAdmin
from orders_ops.stack import Stack, worker_env
from orders_payment.activities import PaymentActivities
from orders_payment.provider import (
    ChargeRequest,
    HttpCardProvider,
    ProviderUnavailable,
    RefundRefused,
    RefundRequest,
)
from orders_shared.contracts import payment, validate
from orders_shared.contracts.common import Order, OrderLine
from orders_shared.errors import OrderStateConflict, PaymentDeclined
from orders_shared.sealing import SEALED_FIELD_INVALID, seal_order
from orders_validate.activities import ValidateActivities

pytestmark = [pytest.mark.stack]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def provider(stack: Stack) -> HttpCardProvider:
    return HttpCardProvider(stack.settings.provider_url, timeout=3)


@pytest.fixture(scope="session")
def sim(stack: Stack) -> ProviderAdmin:
    return ProviderAdmin(stack.settings.provider_url, stack.settings.provider_admin_token_file)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def source(stack: Stack) -> AsyncIterator[support.GroupRoleSource]:
    await bootstrap_database(stack.settings)
    src = await support.GroupRoleSource.create(stack.settings.admin_dsn(stack.settings.database))
    yield src
    await src.close()


@pytest_asyncio.fixture(loop_scope="session")
async def admin(stack: Stack, source: support.GroupRoleSource) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.admin_dsn(stack.settings.database))
    yield conn
    await conn.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def identities(stack: Stack) -> AsyncIterator[support.Identities]:
    ids = support.Identities(stack.settings)
    yield ids
    await ids.close()


@pytest_asyncio.fixture(loop_scope="session")
async def pay(
    source: support.GroupRoleSource, provider: HttpCardProvider, identities: support.Identities
) -> PaymentActivities:
    return PaymentActivities(source, provider, await identities.transit("payment"))


def key(order_id: str, kind: str = "charge") -> str:
    return f"{order_id}:{kind}"


def new_id() -> str:
    return f"pay-{uuid.uuid4().hex[:12]}"


def charge_req(
    order_id: str,
    token: str = "tok_visa",  # noqa: S107 (a simulator test card)
    amount: int = 1234,
) -> ChargeRequest:
    return ChargeRequest(
        idempotency_key=key(order_id), payment_token=token, amount_cents=amount, currency="EUR"
    )


async def accepted_order(
    admin: asyncpg.Connection,
    source: support.GroupRoleSource,
    identities: support.Identities,
    *,
    token: str = "tok_visa",  # noqa: S107 (a simulator test card)
    price: int = 900,
) -> Order:
    """An order the validate step has recorded (so it has a total), its token sealed."""
    sku = await support.create_product(admin, price_cents=price, on_hand=5, prefix="PAY")
    order = Order(
        order_id=support.unique("ord"),
        customer_id="cust-pay",
        customer_name="Ada Lovelace",
        email="ada@example.com",
        shipping_address="1 Main Street, 1000 Brussels",
        payment_token=token,
        lines=(OrderLine(sku=sku, quantity=1),),
    )
    sealed = await seal_order(order, await identities.transit("client"))
    await ActivityEnvironment().run(
        ValidateActivities(source).validate_order, validate.ValidateOrderInput(order=sealed)
    )
    return sealed


async def payment_rows(admin: asyncpg.Connection, order_id: str) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in await admin.fetch(
            "SELECT kind, status, amount_cents FROM app.payments WHERE order_id = $1 ORDER BY kind",
            order_id,
        )
    ]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --------------------------------------------------------------------------- the provider


async def test_a_repeated_charge_key_is_one_charge_in_the_ledger(
    provider: HttpCardProvider, sim: ProviderAdmin
) -> None:
    oid = new_id()
    first = await provider.charge(charge_req(oid))
    again = await provider.charge(charge_req(oid))
    other = await provider.charge(charge_req(new_id()))
    assert first.status == "approved"
    assert again == first
    assert other.provider_ref != first.provider_ref
    ledger = await sim.ledger(oid)
    assert [(c["idempotency_key"], c["requests"]) for c in ledger["charges"]] == [(key(oid), 2)]
    held = await provider.lookup_charge(key(oid))
    assert held is not None
    assert (held.provider_ref, held.amount_cents) == (first.provider_ref, 1234)
    assert not held.refunded
    assert await provider.lookup_charge(key(new_id())) is None


async def test_refunds_of_unknown_declined_or_refunded_charges_are_refused(
    provider: HttpCardProvider, sim: ProviderAdmin
) -> None:
    unknown = new_id()
    with pytest.raises(RefundRefused) as info:
        await provider.refund(RefundRequest(key(unknown, "refund"), key(unknown)))
    assert info.value.reason == "unknown_charge"

    declined = new_id()
    assert (await provider.charge(charge_req(declined, "tok_decline_card"))).status == "declined"
    with pytest.raises(RefundRefused) as info:
        await provider.refund(RefundRequest(key(declined, "refund"), key(declined)))
    assert info.value.reason == "not_charged"

    oid = new_id()
    await provider.charge(charge_req(oid))
    refund = await provider.refund(RefundRequest(key(oid, "refund"), key(oid)))
    assert refund.amount_cents == 1234
    assert await provider.refund(RefundRequest(key(oid, "refund"), key(oid))) == refund  # replay
    with pytest.raises(RefundRefused) as info:
        await provider.refund(RefundRequest(key(oid, "refund-again"), key(oid)))
    assert info.value.reason == "already_refunded"
    ledger = await sim.ledger(oid)
    assert [r["idempotency_key"] for r in ledger["refunds"]] == [key(oid, "refund")]
    assert (await sim.ledger(unknown))["refunds"] == []


async def test_test_cards_decline_and_fail_transiently(provider: HttpCardProvider) -> None:
    assert (await provider.charge(charge_req(new_id(), "tok_decline_x"))).status == "declined"
    oid = new_id()
    for _ in range(2):
        with pytest.raises(ProviderUnavailable, match="HTTP 503"):
            await provider.charge(charge_req(oid, "tok_transient_gateway"))
    assert (await provider.charge(charge_req(oid, "tok_transient_gateway"))).status == "approved"


async def test_the_ledger_survives_a_restart_and_is_private(
    stack: Stack, provider: HttpCardProvider, sim: ProviderAdmin
) -> None:
    oid = new_id()
    charged = await provider.charge(charge_req(oid))
    token_before = stack.settings.provider_admin_token_file.read_text()
    stack.provider.stop()
    assert stack.provider.start(timeout=30)
    held = await provider.lookup_charge(key(oid))
    assert held is not None and held.provider_ref == charged.provider_ref
    assert await provider.charge(charge_req(oid)) == charged  # still one charge
    ledger_file = stack.settings.provider_dir / "ledger.jsonl"
    assert ledger_file.stat().st_mode & 0o777 == 0o600
    assert stack.settings.provider_admin_token_file.stat().st_mode & 0o777 == 0o600
    assert stack.settings.provider_admin_token_file.read_text() != token_before  # per start
    assert b"tok_" not in ledger_file.read_bytes()  # the card token is never stored
    # the fault switch needs the current token
    stale = ProviderAdmin(stack.settings.provider_url, stack.settings.provider_admin_token_file)
    stack.settings.provider_admin_token_file.write_text(token_before)
    try:
        with pytest.raises(RuntimeError, match="HTTP 401"):
            await stale.fault("error", key_prefix=oid)
    finally:
        stack.provider.stop()  # a fresh token again, for the other tests
        assert stack.provider.start(timeout=30)
    assert (await sim.ledger(oid))["charges"][0]["id"] == charged.provider_ref


async def test_faults_error_slow_and_drop(provider: HttpCardProvider, sim: ProviderAdmin) -> None:
    errored, slow, dropped = new_id(), new_id(), new_id()
    await sim.fault("error", on="charge", key_prefix=errored, times=1)
    with pytest.raises(ProviderUnavailable, match="HTTP 500"):
        await provider.charge(charge_req(errored))
    assert (await sim.ledger(errored))["charges"] == []  # an error takes nothing

    await sim.fault("slow", on="charge", key_prefix=slow, times=1, delay_seconds=6)
    with pytest.raises(ProviderUnavailable, match="in time"):
        await provider.charge(charge_req(slow))  # the adapter's timeout is 3 s here

    await sim.fault("drop", on="charge", key_prefix=dropped, times=1)
    with pytest.raises(ProviderUnavailable, match="no answer"):
        await provider.charge(charge_req(dropped))
    # the provider charged although we never heard: the retry gets that same charge
    [held] = (await sim.ledger(dropped))["charges"]
    assert (await provider.charge(charge_req(dropped))).provider_ref == held["id"]
    assert [c["requests"] for c in (await sim.ledger(dropped))["charges"]] == [2]


async def test_a_held_answer_goes_out_when_the_fault_is_cleared(
    stack: Stack, sim: ProviderAdmin
) -> None:
    provider = HttpCardProvider(stack.settings.provider_url, timeout=25)  # outlasts the hold
    oid = new_id()
    await sim.fault("hold", on="charge", key_prefix=oid, times=1)  # used up at once
    charging = asyncio.create_task(provider.charge(charge_req(oid)))
    # the charge is journalled while its answer is held
    while not (await sim.ledger(oid))["charges"]:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    assert not charging.done()
    assert await sim.clear(oid) == 0  # no fault left to clear, but the held answer goes
    [held] = (await sim.ledger(oid))["charges"]
    assert (await charging).provider_ref == held["id"]


def test_the_stack_gives_the_payment_worker_the_simulator(stack: Stack) -> None:
    env = worker_env(stack.settings, "payment")
    assert env["ORDERS_PAYMENT_PROVIDER"] == "simulator"
    assert env["ORDERS_PAYMENT_PROVIDER_URL"] == stack.settings.provider_url
    assert "ORDERS_PAYMENT_PROVIDER_URL" not in worker_env(stack.settings, "fulfill")
    assert stack.provider.healthy()


# --------------------------------------------------------------------------- the activities


async def test_a_token_that_cannot_be_opened_records_no_intent_and_nothing_is_refunded(
    admin: asyncpg.Connection,
    source: support.GroupRoleSource,
    identities: support.Identities,
    pay: PaymentActivities,
    sim: ProviderAdmin,
) -> None:
    order = await accepted_order(admin, source, identities)
    other = await accepted_order(admin, source, identities)
    env = ActivityEnvironment()
    # a token sealed for another order does not open for this one
    with pytest.raises(ApplicationError) as info:
        await env.run(
            pay.process_payment,
            payment.ProcessPaymentInput(order.order_id, payment_token=other.payment_token),
        )
    assert (info.value.type, info.value.non_retryable) == (SEALED_FIELD_INVALID, True)
    assert await payment_rows(admin, order.order_id) == []  # no intent recorded

    refund = await env.run(pay.refund_payment, payment.RefundPaymentInput(order.order_id))
    assert (refund.refunded, refund.amount_cents) == (False, 0)
    assert await payment_rows(admin, order.order_id) == [("refund", "not_charged", 900)]
    assert await sim.ledger(order.order_id) == {"charges": [], "refunds": []}
    # and a late attempt with the right token does not charge a compensated order
    with pytest.raises(OrderStateConflict):
        await env.run(
            pay.process_payment,
            payment.ProcessPaymentInput(order.order_id, payment_token=order.payment_token),
        )
    assert (await sim.ledger(order.order_id))["charges"] == []


async def test_a_charge_that_never_reached_the_provider_is_nothing_to_refund(
    admin: asyncpg.Connection,
    source: support.GroupRoleSource,
    identities: support.Identities,
    pay: PaymentActivities,
    sim: ProviderAdmin,
) -> None:
    order = await accepted_order(admin, source, identities)
    env = ActivityEnvironment()
    charge = payment.ProcessPaymentInput(order.order_id, payment_token=order.payment_token)
    await sim.fault("error", on="charge", key_prefix=order.order_id, times=1)
    with pytest.raises(ProviderUnavailable):
        await env.run(pay.process_payment, charge)
    assert await payment_rows(admin, order.order_id) == [("charge", "pending", 900)]

    before = metric("orders_payment_refunds_total", outcome="not_charged")
    for _ in range(2):  # decided once, and not retried forever
        refund = await env.run(pay.refund_payment, payment.RefundPaymentInput(order.order_id))
        assert refund.refunded is False
    assert metric("orders_payment_refunds_total", outcome="not_charged") == before + 1
    assert await payment_rows(admin, order.order_id) == [
        ("charge", "pending", 900),
        ("refund", "not_charged", 900),
    ]
    assert await sim.ledger(order.order_id) == {"charges": [], "refunds": []}


async def test_a_charge_the_record_missed_is_refunded_by_its_key(
    admin: asyncpg.Connection,
    source: support.GroupRoleSource,
    identities: support.Identities,
    pay: PaymentActivities,
    sim: ProviderAdmin,
) -> None:
    order = await accepted_order(admin, source, identities, price=700)
    env = ActivityEnvironment()
    charge = payment.ProcessPaymentInput(order.order_id, payment_token=order.payment_token)
    await sim.fault("drop", on="charge", key_prefix=order.order_id, times=1)
    with pytest.raises(ProviderUnavailable):
        await env.run(pay.process_payment, charge)
    # the provider took the money; our record says only that a charge was attempted
    [held] = (await sim.ledger(order.order_id))["charges"]
    assert held["status"] == "approved"
    assert await payment_rows(admin, order.order_id) == [("charge", "pending", 700)]

    refund = await env.run(pay.refund_payment, payment.RefundPaymentInput(order.order_id))
    assert (refund.refunded, refund.amount_cents) == (True, 700)
    ledger = await sim.ledger(order.order_id)
    assert [(r["charge_id"], r["amount_cents"]) for r in ledger["refunds"]] == [(held["id"], 700)]

    # an attempt that outlived its deadline does not charge again afterwards
    with pytest.raises(OrderStateConflict, match="compensated"):
        await env.run(pay.process_payment, charge)
    assert [c["requests"] for c in (await sim.ledger(order.order_id))["charges"]] == [1]
    assert await payment_rows(admin, order.order_id) == [
        ("charge", "pending", 700),
        ("refund", "approved", 700),
    ]


async def test_a_refund_the_provider_cannot_take_is_retried_and_visible(
    admin: asyncpg.Connection,
    source: support.GroupRoleSource,
    identities: support.Identities,
    pay: PaymentActivities,
    sim: ProviderAdmin,
) -> None:
    order = await accepted_order(admin, source, identities, price=450)
    env = ActivityEnvironment()
    await env.run(
        pay.process_payment,
        payment.ProcessPaymentInput(order.order_id, payment_token=order.payment_token),
    )
    await sim.fault("error", on="refund", key_prefix=order.order_id)
    before = metric("orders_payment_refunds_total", outcome="unfinished")
    with capture_logs() as logs, pytest.raises(ProviderUnavailable):
        await env.run(pay.refund_payment, payment.RefundPaymentInput(order.order_id))
    # stuck in compensation, and it shows: the row, the metric, one log line
    assert await payment_rows(admin, order.order_id) == [
        ("charge", "approved", 450),
        ("refund", "pending", 450),
    ]
    assert metric("orders_payment_refunds_total", outcome="unfinished") == before + 1
    [line] = [e for e in logs if e["event"] == "payment.refund_unfinished"]
    assert (line["log_level"], line["order_id"]) == ("warning", order.order_id)
    assert "tok_" not in json.dumps(logs, default=str)

    await sim.clear(order.order_id)
    refund = await env.run(pay.refund_payment, payment.RefundPaymentInput(order.order_id))
    assert (refund.refunded, refund.amount_cents) == (True, 450)
    assert len((await sim.ledger(order.order_id))["refunds"]) == 1


async def test_a_refund_refused_as_already_refunded_is_not_retried(
    admin: asyncpg.Connection,
    source: support.GroupRoleSource,
    identities: support.Identities,
    pay: PaymentActivities,
    provider: HttpCardProvider,
) -> None:
    order = await accepted_order(admin, source, identities)
    env = ActivityEnvironment()
    await env.run(
        pay.process_payment,
        payment.ProcessPaymentInput(order.order_id, payment_token=order.payment_token),
    )
    # someone refunded it at the provider under another key (a person, a dispute)
    await provider.refund(RefundRequest(f"by-hand-{new_id()}", key(order.order_id)))
    with pytest.raises(ApplicationError) as info:
        await env.run(pay.refund_payment, payment.RefundPaymentInput(order.order_id))
    assert (info.value.type, info.value.non_retryable) == (payment.REFUND_REFUSED, True)
    assert await payment_rows(admin, order.order_id) == [
        ("charge", "approved", 900),
        ("refund", "pending", 900),
    ]


async def test_a_declined_charge_stays_declined_and_needs_no_refund(
    admin: asyncpg.Connection,
    source: support.GroupRoleSource,
    identities: support.Identities,
    pay: PaymentActivities,
    sim: ProviderAdmin,
) -> None:
    order = await accepted_order(admin, source, identities, token="tok_decline_card")
    env = ActivityEnvironment()
    charge = payment.ProcessPaymentInput(order.order_id, payment_token=order.payment_token)
    for _ in range(2):
        with pytest.raises(PaymentDeclined):
            await env.run(pay.process_payment, charge)
    refund = await env.run(pay.refund_payment, payment.RefundPaymentInput(order.order_id))
    assert refund.refunded is False
    assert await payment_rows(admin, order.order_id) == [("charge", "declined", 900)]
    ledger = await sim.ledger(order.order_id)
    assert [(c["status"], c["requests"]) for c in ledger["charges"]] == [("declined", 1)]
    assert ledger["refunds"] == []


async def test_a_charge_racing_its_refund_is_never_kept(
    admin: asyncpg.Connection,
    source: support.GroupRoleSource,
    identities: support.Identities,
    pay: PaymentActivities,
    sim: ProviderAdmin,
    provider: HttpCardProvider,
) -> None:
    """A charge attempt already on its way to the provider when compensation begins:
    whichever way they interleave, the provider keeps no charge for the order."""
    order = await accepted_order(admin, source, identities)
    # the provider takes 2 s before it charges: the refund runs meanwhile
    await sim.fault("slow", on="charge", key_prefix=order.order_id, times=1, delay_seconds=2)
    charging = asyncio.create_task(
        ActivityEnvironment().run(
            pay.process_payment,
            payment.ProcessPaymentInput(order.order_id, payment_token=order.payment_token),
        )
    )
    # wait until the charge intent is recorded (a row in another process's database)
    while not await payment_rows(admin, order.order_id):  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    await ActivityEnvironment().run(pay.refund_payment, payment.RefundPaymentInput(order.order_id))
    with pytest.raises(OrderStateConflict):
        await charging
    held = await provider.lookup_charge(key(order.order_id))
    assert held is None or held.refunded  # nothing is kept
    rows = dict((k, s) for k, s, _ in await payment_rows(admin, order.order_id))
    assert rows["refund"] == ("approved" if held else "not_charged")
