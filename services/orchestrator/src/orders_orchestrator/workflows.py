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
* The release and the final notify have no deadline: there is no point after
  which leaving stock reserved or the order's status unrecorded is right, so they
  retry until the infrastructure is back. The refund depends on a provider, which
  may refuse or stay away: it runs beside the release (never before it) and is
  bounded by ``REFUND_DEADLINE``; past it, or on a refusal, the order still ends,
  with ``compensation_problem`` set, an error logged and the customer told the
  refund is being handled. Each attempt is bounded by ``start_to_close`` so a hung
  worker is noticed.
* A notify that fails for good (a non-retryable error: the contact does not
  open, or the order already holds another final status) must neither undo nor
  hide what happened: the workflow then records the final status without a
  message (``record_order_status``, which logs an error and counts it for an
  alert) and says so in its result (``notified=False``, ``notify_problem``).
* An answer that is not a result of the service that owns the activity (anyone who
  reaches Temporal can complete a task: another key, an old ``/1`` payload, a plain
  or corrupt payload, the wrong type, no result at all) arrives as a
  :class:`~orders_shared.refused.RefusedResult` and is never acted on: the step is
  run again (a new activity, the rest of its deadline), at most
  :data:`REFUSED_ANSWER_LIMIT` times, then it is an infrastructure failure
  (``StepFailed``) and is compensated; a compensation runs again until it has a
  valid result. A failure whose type is not proven by its service's encrypted
  attributes (``UnauthenticatedOutcome``, :mod:`orders_shared.outcomes`) counts the
  same: a forged ``PaymentDeclined`` is a refused answer, never a decline.

Binding: a workflow runs exactly one order, the one its id names. A workflow
whose id is not ``order.order_id`` is refused before any step runs, so the
same order cannot be run twice at once under two ids; a rerun of a finished
order (same id, new run) is refused by validate (``OrderStateConflict``) before
any side effect, and the per-order fence refuses a reserve or a charge after a
compensation (:mod:`orders_shared.fence`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
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
        ANSWER_REFUSED_SIGNAL,
        CURRENT_STEP_QUERY,
        ORDER_WORKFLOW,
        CurrentStep,
        OrderWorkflowInput,
        OrderWorkflowResult,
    )
    from orders_shared.errors import (
        BUSINESS_ERROR_TYPES,
        OrderRejected,
        OrderStateConflict,
        OutOfStock,
        PaymentDeclined,
    )
    from orders_shared.outcomes import UNAUTHENTICATED_OUTCOME
    from orders_shared.refused import NO_RESULT, UNCONVERTIBLE, RefusedResult
    from orders_shared.search_attributes import ORDER_OUTCOME, ORDER_REASON, OUTCOME_PATCH

T = TypeVar("T")

WORKFLOW_NOT_BOUND = "WorkflowNotBoundToOrder"
"""Error type of a workflow started with an id other than its order's id."""

REFUND_UNFINISHED = "RefundUnfinished"
"""``compensation_problem`` when the refund did not finish before its deadline."""

STEP_FAILED = "StepFailed"
"""Reason code when a forward step failed for a reason other than a business
refusal (its retries ran out at the deadline)."""

REFUSED_ANSWER_LIMIT = 3
"""How many refused answers (not a result of the owning service, see the module doc) a
forward step or the refund takes, each followed by a fresh attempt, before it fails."""

REFUSED_ANSWER_BACKOFF = timedelta(seconds=1)
"""Pause before a step that got a refused answer runs again (doubles, up to 2 min)."""

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

REFUND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=0,  # bounded by REFUND_DEADLINE instead
    # the provider refused the refund for a reason other than "no such charge": a person
    # must look (it would refuse again)
    non_retryable_error_types=[payment.REFUND_REFUSED],
)
REFUND_DEADLINE = timedelta(minutes=30)
"""schedule_to_close of the refund: a provider may refuse or be away for good, and that
must not hold the reservation's release and the final status forever. Past it the order
ends with ``compensation_problem`` set, an error logged and the refund row left pending
(counted by the payment service), for a person to settle."""

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


class _Told:
    """Internal: how the final notify went."""

    def __init__(self, notified: bool, problem: str | None, recorded_status: str | None) -> None:
        self.notified = notified
        self.problem = problem
        self.recorded_status = recorded_status


@workflow.defn(name=ORDER_WORKFLOW)
class OrderWorkflow:
    def __init__(self) -> None:
        self._step = "starting"
        self._path: list[str] = []
        # answers refused outside the workflow (the guard's signal), per activity type
        self._refused_elsewhere: dict[str, int] = {}

    @workflow.query(name=CURRENT_STEP_QUERY)
    def current_step(self) -> CurrentStep:
        return CurrentStep(step=self._step, path=list(self._path))

    @workflow.signal(name=ANSWER_REFUSED_SIGNAL)
    def answer_refused(self, activity_type: str) -> None:
        """The guard reset this run past an answer of zero or several payloads to
        ``activity_type`` (orders_orchestrator.guard): one more refused answer."""
        self._refused_elsewhere[activity_type] = self._refused_elsewhere.get(activity_type, 0) + 1

    @workflow.run
    async def run(self, inp: OrderWorkflowInput) -> OrderWorkflowResult:
        order = inp.order
        order_id = order.order_id
        if workflow.info().workflow_id != order_id:
            raise ApplicationError(
                f"the workflow id must be the order id {order_id!r}: one workflow per order "
                "(start it with id=order.order_id, as orders_shared.client does)",
                type=WORKFLOW_NOT_BOUND,
                non_retryable=True,
            )
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
            if failure.step == validate.VALIDATE_ORDER and (
                failure.reason_code == OrderStateConflict.TYPE
            ):
                # The order was already finished by an earlier run: nothing was done
                # now, and its recorded status and message belong to that run.
                self._show_outcome("rejected", failure.reason_code)
                self._step = "done"
                return OrderWorkflowResult(
                    order_id=order_id,
                    status="rejected",
                    path=list(self._path),
                    reason_code=failure.reason_code,
                    reason=failure.reason,
                    notified=False,
                )
            # A refusal of these steps took nothing (all-or-nothing, or the fence
            # refused a late or repeated attempt): nothing of theirs to compensate.
            if failure.step == inventory.RESERVE_INVENTORY and failure.reason_code in (
                OutOfStock.TYPE,
                OrderStateConflict.TYPE,
            ):
                reserved = False
            if failure.step == payment.PROCESS_PAYMENT and failure.reason_code in (
                PaymentDeclined.TYPE,
                OrderStateConflict.TYPE,
            ):
                charged = False
            # The compensations run side by side: a refund the provider holds up must
            # not hold the stock too.
            compensations: list[Awaitable[str | None]] = []
            if charged:
                compensations.append(self._refund(order_id))
            if reserved:
                compensations.append(self._release(order_id))
            problems = [p for p in await asyncio.gather(*compensations) if p is not None]
            problem = problems[0] if problems else None
            outcome: OrderOutcome = (
                "rejected" if failure.reason_code == OrderRejected.TYPE else "failed"
            )
            told = await self._notify(
                order_id, outcome, failure.reason_code, failure.reason, refund_unfinished=problem
            )
            self._show_outcome(outcome, failure.reason_code)
            self._step = "done"
            return OrderWorkflowResult(
                order_id=order_id,
                status=outcome,
                path=list(self._path),
                reason_code=failure.reason_code,
                reason=failure.reason,
                total_cents=total,
                notified=told.notified,
                notify_problem=told.problem,
                recorded_status=told.recorded_status,
                compensation_problem=problem,
            )

        told = await self._notify(order_id, "completed", None, None)
        self._show_outcome("completed", None)
        self._step = "done"
        return OrderWorkflowResult(
            order_id=order_id,
            status="completed",
            path=list(self._path),
            total_cents=total,
            tracking_id=shipped.tracking_id,
            notified=told.notified,
            notify_problem=told.problem,
            recorded_status=told.recorded_status,
        )

    def _show_outcome(self, outcome: OrderOutcome, reason_code: str | None) -> None:
        """The outcome where people look: search attributes ``OrderOutcome`` and
        ``OrderReason`` (stored in the clear, so only the outcome word and the reason's
        type, never order data; :mod:`orders_shared.search_attributes`) and the run's
        current details in the UI. Patched: a run whose history ended before this code
        replays without it."""
        if not workflow.patched(OUTCOME_PATCH):
            return
        updates = [ORDER_OUTCOME.value_set(outcome)]
        if reason_code is not None:
            updates.append(ORDER_REASON.value_set(reason_code))
        workflow.upsert_search_attributes(updates)
        workflow.set_current_details(f"{outcome}: {reason_code}" if reason_code else outcome)

    async def _forward(self, name: str, queue: str, arg: Any, result_type: type[T]) -> T:
        self._enter(name)
        deadline = workflow.now() + FORWARD_DEADLINE[name]
        refused = 0
        try:
            while True:
                elsewhere = self._refused_elsewhere.get(name, 0)
                if refused + elsewhere >= REFUSED_ANSWER_LIMIT:
                    raise _StepFailed(
                        name,
                        STEP_FAILED,
                        f"{name} was answered {refused + elsewhere} times with no result of "
                        f"its service ({elsewhere} of them with zero or several payloads)",
                    )
                result = await self._attempt(
                    name,
                    arg,
                    task_queue=queue,
                    result_type=result_type,
                    start_to_close_timeout=ATTEMPT_TIMEOUT,
                    schedule_to_close_timeout=max(deadline - workflow.now(), timedelta(seconds=1)),
                    retry_policy=FORWARD_RETRY,
                )
                refusal = _refusal(result, result_type)
                if refusal is None:
                    return cast(T, result)
                refused += 1
                self._log_refusal(name, refusal, refused)
                if refused + elsewhere >= REFUSED_ANSWER_LIMIT or workflow.now() >= deadline:
                    raise _StepFailed(
                        name,
                        STEP_FAILED,
                        f"{name} was answered {refused} times with no result of its "
                        f"service (last: {refusal.message})",
                    )
                await workflow.sleep(_backoff(refused))
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
        """Until it has a valid result: a refused answer is followed by a fresh attempt."""
        self._enter(name)
        refused = 0
        while True:
            result = await self._attempt(
                name,
                arg,
                task_queue=queue,
                result_type=result_type,
                start_to_close_timeout=ATTEMPT_TIMEOUT,
                retry_policy=COMPENSATION_RETRY,
            )
            refusal = _refusal(result, result_type)
            if refusal is None:
                return cast(T, result)
            refused += 1
            self._log_refusal(name, refusal, refused)
            await workflow.sleep(_backoff(refused))

    async def _attempt(self, name: str, arg: Any, **options: Any) -> Any:
        """One run of an activity: its result, or a :class:`RefusedResult` for a failure
        without proof of its service (``UnauthenticatedOutcome``: a type anyone who reaches
        Temporal could have written, never acted on); any other failure is raised."""
        try:
            return await workflow.execute_activity(name, arg, **options)
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == UNAUTHENTICATED_OUTCOME:
                return RefusedResult(UNAUTHENTICATED_OUTCOME, cause.message)
            raise

    def _log_refusal(self, step: str, refusal: RefusedResult, count: int) -> None:
        workflow.logger.warning(
            "activity answer refused: not a result of the service that owns the step; "
            "running the step again",
            extra={"step": step, "cause": refusal.cause, "refused": count},
        )

    async def _refund(self, order_id: str) -> str | None:
        """Refund, bounded by :data:`REFUND_DEADLINE`; the problem's type if it could not
        finish (``None`` when it did)."""
        self._enter(payment.REFUND_PAYMENT)
        deadline = workflow.now() + REFUND_DEADLINE
        refused = 0
        try:
            while True:
                elsewhere = self._refused_elsewhere.get(payment.REFUND_PAYMENT, 0)
                if refused + elsewhere >= REFUSED_ANSWER_LIMIT:
                    workflow.logger.error(
                        "refund could not finish; the order needs a person",
                        extra={"cause": REFUND_UNFINISHED},
                    )
                    return REFUND_UNFINISHED
                result = await self._attempt(
                    payment.REFUND_PAYMENT,
                    payment.RefundPaymentInput(order_id=order_id),
                    task_queue=payment.TASK_QUEUE,
                    result_type=payment.RefundPaymentOutput,
                    start_to_close_timeout=ATTEMPT_TIMEOUT,
                    schedule_to_close_timeout=max(deadline - workflow.now(), timedelta(seconds=1)),
                    retry_policy=REFUND_RETRY,
                )
                refusal = _refusal(result, payment.RefundPaymentOutput)
                if refusal is None:
                    return None
                refused += 1
                self._log_refusal(payment.REFUND_PAYMENT, refusal, refused)
                if refused + elsewhere >= REFUSED_ANSWER_LIMIT or workflow.now() >= deadline:
                    workflow.logger.error(
                        "refund could not finish; the order needs a person",
                        extra={"cause": REFUND_UNFINISHED},
                    )
                    return REFUND_UNFINISHED
                await workflow.sleep(_backoff(refused))
        except ActivityError as err:
            cause = err.cause
            problem = (
                cause.type
                if isinstance(cause, ApplicationError) and cause.type
                else REFUND_UNFINISHED
            )
            workflow.logger.error(
                "refund could not finish; the order needs a person",
                extra={"cause": problem},
            )
            return problem

    async def _release(self, order_id: str) -> None:
        await self._compensate(
            inventory.RELEASE_INVENTORY,
            inventory.TASK_QUEUE,
            inventory.ReleaseInventoryInput(order_id=order_id),
            inventory.ReleaseInventoryOutput,
        )
        return None

    async def _notify(
        self,
        order_id: str,
        outcome: OrderOutcome,
        reason_code: str | None,
        reason: str | None,
        *,
        refund_unfinished: str | None = None,
    ) -> _Told:
        """Retried like a compensation: the order's final status must be recorded.

        A notify that fails for good (non-retryable) does not fail the workflow:
        the status is recorded without a message and the result says so."""
        try:
            await self._compensate(
                notify.NOTIFY_CUSTOMER,
                notify.TASK_QUEUE,
                notify.NotifyCustomerInput(
                    order_id=order_id,
                    outcome=outcome,
                    reason_code=reason_code,
                    reason=reason,
                    refund_unfinished=refund_unfinished is not None,
                ),
                notify.NotifyCustomerOutput,
            )
        except ActivityError as err:
            cause = err.cause
            if not isinstance(cause, ApplicationError) or not cause.non_retryable:
                raise
            problem = cause.type or "ApplicationError"
            workflow.logger.error(
                "customer could not be notified; recording the final status without a message",
                extra={"outcome": outcome, "cause": problem},
            )
            recorded = await self._compensate(
                notify.RECORD_ORDER_STATUS,
                notify.TASK_QUEUE,
                notify.RecordOrderStatusInput(
                    order_id=order_id,
                    outcome=outcome,
                    cause=problem,
                    reason_code=reason_code,
                    reason=reason,
                ),
                notify.RecordOrderStatusOutput,
            )
            return _Told(notified=False, problem=problem, recorded_status=recorded.status)
        return _Told(notified=True, problem=None, recorded_status=None)

    def _enter(self, step: str) -> None:
        self._step = step
        self._path.append(step)


def _refusal(result: object, result_type: type) -> RefusedResult | None:
    """``None`` when ``result`` is a ``result_type``; else why it is not acted on."""
    if isinstance(result, result_type):
        return None
    if isinstance(result, RefusedResult):
        return result
    if result is None:
        return RefusedResult(NO_RESULT, "a completion without a result")
    return RefusedResult(UNCONVERTIBLE, f"a {type(result).__name__}, not a {result_type.__name__}")


def _backoff(refused: int) -> timedelta:
    seconds = REFUSED_ANSWER_BACKOFF.total_seconds() * 2 ** (refused - 1)
    return timedelta(seconds=min(seconds, 120.0))
