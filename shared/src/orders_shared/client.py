"""Submitting orders and asking about them: the small client API.

The workflow id *is* the order id, started with
``WorkflowIDReusePolicy.REJECT_DUPLICATE`` and ``WorkflowIDConflictPolicy.FAIL``:
an order id is used for exactly one workflow run, ever (within Temporal's
retention). Submitting the same order again, while it runs or after it
finished, starts nothing; :func:`submit_order` reports the original run
(``deduplicated=True``) and, with ``wait``, its outcome. A resubmit therefore
never reserves, charges or ships twice, and a failed order is not retried
under the same id either (the customer submits a new order): its rows
(declined charge, released reservation) are final. Should Temporal forget
the id after retention, the database's idempotency keys (one order row, one
reservation per SKU, one charge per order) still stop a second run from
doing anything twice.

The dedup is by id only: a resubmit with the same id but other content gets
the original order's outcome, not a new order.
"""

from __future__ import annotations

from dataclasses import dataclass

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from orders_shared.contracts.common import Order
from orders_shared.contracts.orchestrator import (
    CURRENT_STEP_QUERY,
    ORDER_WORKFLOW,
    TASK_QUEUE,
    CurrentStep,
    OrderWorkflowInput,
    OrderWorkflowResult,
)


@dataclass(frozen=True)
class SubmittedOrder:
    """What a submit did. ``result`` is set only when waited for."""

    order_id: str
    run_id: str | None
    deduplicated: bool
    result: OrderWorkflowResult | None = None


@dataclass(frozen=True)
class OrderStatus:
    """Where an order is. ``workflow_status`` is Temporal's view (``RUNNING``,
    ``COMPLETED``, ``FAILED``, ``TERMINATED``...); ``step`` and ``path`` come
    from the workflow's query while it runs and from its result once done."""

    order_id: str
    workflow_status: str
    step: str | None
    path: list[str]
    result: OrderWorkflowResult | None


async def submit_order(
    client: Client, order: Order, *, wait: bool, task_queue: str = TASK_QUEUE
) -> SubmittedOrder:
    """Start the order's workflow (once per order id); with ``wait``, return its result too."""
    deduplicated = False
    handle: WorkflowHandle[object, OrderWorkflowResult]
    try:
        handle = await client.start_workflow(
            ORDER_WORKFLOW,
            OrderWorkflowInput(order=order),
            id=order.order_id,
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            result_type=OrderWorkflowResult,
        )
        run_id = handle.result_run_id
    except WorkflowAlreadyStartedError as already:
        deduplicated = True
        run_id = already.run_id
        handle = client.get_workflow_handle(
            order.order_id, run_id=run_id, result_type=OrderWorkflowResult
        )
    result = await handle.result() if wait else None
    return SubmittedOrder(
        order_id=order.order_id, run_id=run_id, deduplicated=deduplicated, result=result
    )


async def order_status(client: Client, order_id: str) -> OrderStatus:
    """The order's workflow status, current step and, once finished, its result.

    Raises ``temporalio.service.RPCError`` (``NOT_FOUND``) for an unknown order id.
    """
    handle = client.get_workflow_handle(order_id, result_type=OrderWorkflowResult)
    desc = await handle.describe()
    status = desc.status
    name = status.name if status is not None else "UNKNOWN"
    if status == WorkflowExecutionStatus.COMPLETED:
        result = await handle.result()
        return OrderStatus(order_id, name, "done", list(result.path), result)
    if status == WorkflowExecutionStatus.RUNNING:
        current = await handle.query(CURRENT_STEP_QUERY, result_type=CurrentStep)
        return OrderStatus(order_id, name, current.step, list(current.path), None)
    return OrderStatus(order_id, name, None, [], None)
