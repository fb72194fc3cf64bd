"""OrderWorkflow: validate -> reserve -> pay -> fulfill -> notify, with compensation.

The workflow holds no credentials and touches no database: it calls each
activity *by name* on its service's task queue with the dataclasses of
:mod:`orders_shared.contracts`, and imports no service code.

Retries and timeouts, per kind of step:

* Forward steps retry infrastructure failures (a database or Vault outage, an
  expired credential) with backoff until their ``schedule_to_close`` deadline,
  and never retry a business refusal (:data:`BUSINESS_ERROR_TYPES`). A step
  that still fails at its deadline ends the order as ``failed`` with reason
  code ``StepFailed``, after compensation; it is never reported as one of the
  business outcomes.
* Compensations (release, refund) and the final notify have no deadline: there
  is no point after which leaving stock reserved, money charged or the order's
  status unrecorded is right, so they retry until the infrastructure is back.
  Each attempt is still bounded by ``start_to_close`` so a hung worker is
  noticed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeVar, cast

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as ActivityTimeoutError

with workflow.unsafe.imports_passed_through():
    from orders_shared.contracts import fulfill, inventory, notify, payment, validate
    from orders_shared.contracts.common import OrderOutcome
    from orders_shared.contracts.orchestrator import (
        CURRENT_STEP_QUERY,
        ORDER_WORKFLOW,
        CurrentStep,
        OrderWorkflowInput,
        OrderWorkflowResult,
    )
    from orders_shared.errors import (
        BUSINESS_ERROR_TYPES,
        OrderRejected,
        OutOfStock,
        PaymentDeclined,
    )

T = TypeVar("T")

STEP_FAILED = "StepFailed"
"""Reason code when a forward step failed for a reason other than a business
refusal (its retries ran out at the deadline)."""

FORWARD_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,  # bounded by schedule_to_close instead
    non_retryable_error_types=list(BUSINESS_ERROR_TYPES),
)
COMPENSATION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=0,  # until it succeeds
)

ATTEMPT_TIMEOUT = timedelta(seconds=30)
"""start_to_close of every activity: each does a few SQL statements (and, for
payment, one provider call); 30 s means something hangs."""

FORWARD_DEADLINE = {
    validate.VALIDATE_ORDER: timedelta(minutes=5),
    inventory.RESERVE_INVENTORY: timedelta(minutes=5),
    payment.PROCESS_PAYMENT: timedelta(minutes=10),
    fulfill.FULFILL_ORDER: timedelta(minutes=30),
}
"""schedule_to_close of the forward steps: how long an outage may hold an order
before it is given up (and compensated)."""


class _StepFailed(Exception):
    """Internal: a forward step ended without a result."""

    def __init__(self, step: str, reason_code: str, reason: str) -> None:
        super().__init__(reason)
        self.step = step
        self.reason_code = reason_code
        self.reason = reason


@workflow.defn(name=ORDER_WORKFLOW)
class OrderWorkflow:
    def __init__(self) -> None:
        self._step = "starting"
        self._path: list[str] = []

    @workflow.query(name=CURRENT_STEP_QUERY)
    def current_step(self) -> CurrentStep:
        return CurrentStep(step=self._step, path=list(self._path))

    @workflow.run
    async def run(self, inp: OrderWorkflowInput) -> OrderWorkflowResult:
        order = inp.order
        order_id = order.order_id
        reserved = False
        charged = False
        total: int | None = None
        try:
            priced = await self._forward(
                validate.VALIDATE_ORDER,
                validate.TASK_QUEUE,
                validate.ValidateOrderInput(order=order),
                validate.ValidateOrderOutput,
            )
            total = priced.total_cents
            # Set before the call: an attempt that timed out may still have
            # committed, and releasing an order that holds nothing is a no-op. Only
            # a definite refusal (all-or-nothing, nothing taken) clears it below.
            reserved = True
            await self._forward(
                inventory.RESERVE_INVENTORY,
                inventory.TASK_QUEUE,
                inventory.ReserveInventoryInput(order_id=order_id, lines=order.lines),
                inventory.ReserveInventoryOutput,
            )
            charged = True  # same reasoning: refund is a no-op without an approved charge
            await self._forward(
                payment.PROCESS_PAYMENT,
                payment.TASK_QUEUE,
                payment.ProcessPaymentInput(order_id=order_id, payment_token=order.payment_token),
                payment.ProcessPaymentOutput,
            )
            shipped = await self._forward(
                fulfill.FULFILL_ORDER,
                fulfill.TASK_QUEUE,
                fulfill.FulfillOrderInput(order_id=order_id),
                fulfill.FulfillOrderOutput,
            )
        except _StepFailed as failure:
            workflow.logger.info(
                "order step failed", extra={"step": failure.step, "reason": failure.reason_code}
            )
            if (failure.step, failure.reason_code) == (
                inventory.RESERVE_INVENTORY,
                OutOfStock.TYPE,
            ):
                reserved = False
            if (failure.step, failure.reason_code) == (
                payment.PROCESS_PAYMENT,
                PaymentDeclined.TYPE,
            ):
                charged = False
            if charged:
                await self._compensate(
                    payment.REFUND_PAYMENT,
                    payment.TASK_QUEUE,
                    payment.RefundPaymentInput(order_id=order_id),
                    payment.RefundPaymentOutput,
                )
            if reserved:
                await self._compensate(
                    inventory.RELEASE_INVENTORY,
                    inventory.TASK_QUEUE,
                    inventory.ReleaseInventoryInput(order_id=order_id),
                    inventory.ReleaseInventoryOutput,
                )
            outcome: OrderOutcome = (
                "rejected" if failure.reason_code == OrderRejected.TYPE else "failed"
            )
            await self._notify(order_id, outcome, failure.reason_code, failure.reason)
            self._step = "done"
            return OrderWorkflowResult(
                order_id=order_id,
                status=outcome,
                path=list(self._path),
                reason_code=failure.reason_code,
                reason=failure.reason,
                total_cents=total,
            )

        await self._notify(order_id, "completed", None, None)
        self._step = "done"
        return OrderWorkflowResult(
            order_id=order_id,
            status="completed",
            path=list(self._path),
            total_cents=total,
            tracking_id=shipped.tracking_id,
        )

    async def _forward(self, name: str, queue: str, arg: Any, result_type: type[T]) -> T:
        self._enter(name)
        try:
            result = await workflow.execute_activity(
                name,
                arg,
                task_queue=queue,
                result_type=result_type,
                start_to_close_timeout=ATTEMPT_TIMEOUT,
                schedule_to_close_timeout=FORWARD_DEADLINE[name],
                retry_policy=FORWARD_RETRY,
            )
            return cast(T, result)
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type in BUSINESS_ERROR_TYPES:
                raise _StepFailed(name, cause.type, cause.message) from err
            # Not a business answer. Say which plainly; never dress it up as a refusal.
            if isinstance(cause, ActivityTimeoutError):
                reason = f"{name} did not complete before its deadline"
            elif isinstance(cause, ApplicationError):
                # a non-retryable error that is no refusal, e.g. a field that cannot be
                # opened: a defect to look at, not an outage and not the customer's fault
                reason = f"{name} failed with {cause.type or 'an application error'}"
            else:
                kind = type(cause).__name__ if cause is not None else "unknown"
                reason = f"{name} failed ({kind})"
            raise _StepFailed(name, STEP_FAILED, reason) from err

    async def _compensate(self, name: str, queue: str, arg: Any, result_type: type[T]) -> T:
        self._enter(name)
        result = await workflow.execute_activity(
            name,
            arg,
            task_queue=queue,
            result_type=result_type,
            start_to_close_timeout=ATTEMPT_TIMEOUT,
            retry_policy=COMPENSATION_RETRY,
        )
        return cast(T, result)

    async def _notify(
        self, order_id: str, outcome: OrderOutcome, reason_code: str | None, reason: str | None
    ) -> None:
        """Retried like a compensation: the order's final status must be recorded."""
        await self._compensate(
            notify.NOTIFY_CUSTOMER,
            notify.TASK_QUEUE,
            notify.NotifyCustomerInput(
                order_id=order_id, outcome=outcome, reason_code=reason_code, reason=reason
            ),
            notify.NotifyCustomerOutput,
        )

    def _enter(self, step: str) -> None:
        self._step = step
        self._path.append(step)
