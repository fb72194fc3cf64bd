"""A compensation that cannot finish never blocks the others, and the order still ends.

The workflow runs on the real Temporal dev server, in a namespace of its own, with
stand-in activities under the real names and task queues: the claim is about the
workflow's logic (what it does when the provider refuses a refund), which the real
activities cannot be made to show on demand. The real refund's refusals are proven
against the provider simulator in tests/test_payment_provider.py.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from orders_ops.namespaces import ensure_namespace
from orders_ops.stack import Stack
from orders_orchestrator.workflows import OrderWorkflow
from orders_shared.contracts import fulfill, inventory, notify, payment, validate
from orders_shared.contracts.common import Order, OrderLine
from orders_shared.contracts.orchestrator import (
    ORDER_WORKFLOW,
    OrderWorkflowInput,
    OrderWorkflowResult,
)
from orders_shared.errors import FulfillmentFailed

pytestmark = pytest.mark.stack

NAMESPACE = "orders-compensation-test"


class Stand_ins:
    """The activities of every service, recording what the workflow asked for."""

    def __init__(self, refund_error: ApplicationError | None) -> None:
        self.refund_error = refund_error
        self.calls: list[str] = []
        self.notified: list[notify.NotifyCustomerInput] = []
        self.release_started = asyncio.Event()

    @activity.defn(name=validate.VALIDATE_ORDER)
    async def validate_order(
        self, inp: validate.ValidateOrderInput
    ) -> validate.ValidateOrderOutput:
        self.calls.append(validate.VALIDATE_ORDER)
        return validate.ValidateOrderOutput(inp.order.order_id, 500, "EUR", ())

    @activity.defn(name=inventory.RESERVE_INVENTORY)
    async def reserve(
        self, inp: inventory.ReserveInventoryInput
    ) -> inventory.ReserveInventoryOutput:
        self.calls.append(inventory.RESERVE_INVENTORY)
        return inventory.ReserveInventoryOutput(inp.order_id, inp.lines, False)

    @activity.defn(name=inventory.RELEASE_INVENTORY)
    async def release(
        self, inp: inventory.ReleaseInventoryInput
    ) -> inventory.ReleaseInventoryOutput:
        self.calls.append(inventory.RELEASE_INVENTORY)
        self.release_started.set()
        return inventory.ReleaseInventoryOutput(inp.order_id, ())

    @activity.defn(name=payment.PROCESS_PAYMENT)
    async def charge(self, inp: payment.ProcessPaymentInput) -> payment.ProcessPaymentOutput:
        self.calls.append(payment.PROCESS_PAYMENT)
        return payment.ProcessPaymentOutput(inp.order_id, 500, "EUR", "ch_1")

    @activity.defn(name=payment.REFUND_PAYMENT)
    async def refund(self, inp: payment.RefundPaymentInput) -> payment.RefundPaymentOutput:
        self.calls.append(payment.REFUND_PAYMENT)
        # the release must not wait for the refund: it runs while the refund is stuck
        await asyncio.wait_for(self.release_started.wait(), 20)
        if self.refund_error is not None:
            raise self.refund_error
        return payment.RefundPaymentOutput(inp.order_id, True, 500, "re_1")

    @activity.defn(name=fulfill.FULFILL_ORDER)
    async def fulfill(self, inp: fulfill.FulfillOrderInput) -> fulfill.FulfillOrderOutput:
        self.calls.append(fulfill.FULFILL_ORDER)
        raise FulfillmentFailed("the carrier cannot deliver")

    @activity.defn(name=notify.NOTIFY_CUSTOMER)
    async def notify_customer(self, inp: notify.NotifyCustomerInput) -> notify.NotifyCustomerOutput:
        self.calls.append(notify.NOTIFY_CUSTOMER)
        self.notified.append(inp)
        return notify.NotifyCustomerOutput(inp.order_id, True, False)

    def by_queue(self) -> dict[str, list[Any]]:
        return {
            validate.TASK_QUEUE: [self.validate_order],
            inventory.TASK_QUEUE: [self.reserve, self.release],
            payment.TASK_QUEUE: [self.charge, self.refund],
            fulfill.TASK_QUEUE: [self.fulfill],
            notify.TASK_QUEUE: [self.notify_customer],
        }


async def _run(stack: Stack, stand_ins: Stand_ins) -> OrderWorkflowResult:
    await ensure_namespace(stack.settings.temporal_address, NAMESPACE)
    client = await Client.connect(stack.settings.temporal_address, namespace=NAMESPACE)
    workers = [
        Worker(client, task_queue=queue, activities=acts)
        for queue, acts in stand_ins.by_queue().items()
    ]
    workers.append(Worker(client, task_queue="orders-orchestrator", workflows=[OrderWorkflow]))
    order_id = f"comp-{uuid.uuid4().hex[:10]}"
    order = Order(order_id, "c-1", "n", "e", "a", "t", (OrderLine("SKU-1", 1),))
    async with asyncio.timeout(60):
        await asyncio.gather(*(w.__aenter__() for w in workers))
        try:
            result: OrderWorkflowResult = await client.execute_workflow(
                ORDER_WORKFLOW,
                OrderWorkflowInput(order=order),
                id=order_id,
                task_queue="orders-orchestrator",
                result_type=OrderWorkflowResult,
            )
        finally:
            await asyncio.gather(*(w.__aexit__(None, None, None) for w in workers))
    return result


async def test_a_refused_refund_does_not_block_release_or_the_final_status(stack: Stack) -> None:
    refused = ApplicationError(
        "the provider refused the refund: already_refunded",
        type=payment.REFUND_REFUSED,
        non_retryable=True,
    )
    stand_ins = Stand_ins(refused)
    result = await _run(stack, stand_ins)
    assert (result.status, result.reason_code) == ("failed", FulfillmentFailed.TYPE)
    assert result.compensation_problem == payment.REFUND_REFUSED
    # the release ran (while the refund was still stuck), then the customer was told,
    # with a message that does not claim the refund
    assert stand_ins.calls.count(inventory.RELEASE_INVENTORY) == 1
    assert stand_ins.calls[-1] == notify.NOTIFY_CUSTOMER
    (told,) = stand_ins.notified
    assert told.refund_unfinished is True


async def test_a_refund_that_finishes_leaves_no_problem(stack: Stack) -> None:
    stand_ins = Stand_ins(None)
    result = await _run(stack, stand_ins)
    assert (result.status, result.compensation_problem) == ("failed", None)
    assert stand_ins.notified[0].refund_unfinished is False
    assert result.path[-3:] == [
        payment.REFUND_PAYMENT,
        inventory.RELEASE_INVENTORY,
        notify.NOTIFY_CUSTOMER,
    ]
