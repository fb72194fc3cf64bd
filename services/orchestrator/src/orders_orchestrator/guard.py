"""The orchestrator's guard: a workflow that an activity answer of zero or two payloads
stopped is reset to before that answer.

Anyone who can reach Temporal can complete an activity task. A completion whose
``Payloads`` holds zero payloads, or more than one, fails inside the SDK's core
(Rust: ``Not exactly one payload in activity result``) while it replays the
history, before any Python code of the worker runs; every later workflow task fails
the same way, so the workflow never moves again and nothing is compensated. The
workflow cannot see that answer, so the guard acts from outside it:

1. every :data:`GUARD_INTERVAL_ENV` seconds (default 2) it lists the running order
   workflows of its namespace and describes each; one whose workflow task has failed
   (attempt >= 2) is read;
2. when its newest ``WorkflowTaskFailed`` names that core error and the history holds
   an ``ActivityTaskCompleted`` whose result is not exactly one payload, the guard
   sends the workflow the signal :data:`ANSWER_REFUSED_SIGNAL` with the activity's
   type (encrypted under the orchestrator's key, like every workflow payload: no one
   without that key can send one the workflow accepts), then
3. resets the run to the workflow task that scheduled that activity (Temporal's
   ``ResetWorkflowExecution``; the signal is re-applied in the new run). The new run
   schedules the step again; the workflow counts the signal as one refused answer,
   so after ``REFUSED_ANSWER_LIMIT`` of them the step fails and is compensated, as
   for any other refused answer (:mod:`orders_orchestrator.workflows`).

A reset terminates the old run; the order's id now names the new one, which
``orders status`` and a handle without a run id follow.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable

import structlog
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import Client
from temporalio.service import RPCError

from orders_shared.contracts.orchestrator import ANSWER_REFUSED_SIGNAL, ORDER_WORKFLOW

log = structlog.get_logger("orders.orchestrator.guard")

GUARD_INTERVAL_ENV = "ORDERS_GUARD_INTERVAL_SECONDS"
DEFAULT_INTERVAL = 2.0
CORE_PAYLOAD_COUNT_ERROR = "Not exactly one payload in activity result"
"""What the SDK's core says when an activity result holds zero or several payloads."""

RESET_REASON = (
    "orders guard: an activity answer of zero or several payloads stopped every workflow "
    "task; reset to before it so the step runs again"
)


def guard_interval() -> float:
    raw = os.environ.get(GUARD_INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{GUARD_INTERVAL_ENV}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{GUARD_INTERVAL_ENV}={value} must be a positive number of seconds")
    return value


def bad_answer(events: list[HistoryEvent]) -> tuple[str, int] | None:
    """(activity type, the scheduling workflow task's completed event id) of the newest
    completion whose result is not exactly one payload, if the newest failed workflow
    task names the core's error; else None."""
    failures = [e for e in events if e.HasField("workflow_task_failed_event_attributes")]
    if not failures:
        return None
    message = failures[-1].workflow_task_failed_event_attributes.failure.message
    if CORE_PAYLOAD_COUNT_ERROR not in message:
        return None
    by_id = {e.event_id: e for e in events}
    for event in reversed(events):
        if not event.HasField("activity_task_completed_event_attributes"):
            continue
        completed = event.activity_task_completed_event_attributes
        if not completed.HasField("result") or len(completed.result.payloads) == 1:
            continue
        scheduled = by_id.get(completed.scheduled_event_id)
        if scheduled is None:
            return None
        attrs = scheduled.activity_task_scheduled_event_attributes
        return attrs.activity_type.name, attrs.workflow_task_completed_event_id
    return None


async def heal(client: Client, workflow_id: str, run_id: str) -> bool:
    """Reset one stopped run if a bad answer stopped it; whether it did."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    events = list((await handle.fetch_history()).events)
    found = bad_answer(events)
    if found is None:
        return False
    activity_type, reset_to = found
    await handle.signal(ANSWER_REFUSED_SIGNAL, activity_type)
    await client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
            reason=RESET_REASON,
            workflow_task_finish_event_id=reset_to,
            request_id=str(uuid.uuid4()),
        )
    )
    log.warning(
        "guard.reset",
        workflow_id=workflow_id,
        run_id=run_id,
        activity_type=activity_type,
        reset_to_event=reset_to,
    )
    return True


async def sweep(client: Client) -> int:
    """One pass over the running order workflows; how many runs were reset."""
    query = f'WorkflowType="{ORDER_WORKFLOW}" AND ExecutionStatus="Running"'
    healed = 0
    async for info in client.list_workflows(query):
        try:
            described = await client.get_workflow_handle(info.id, run_id=info.run_id).describe()
            if described.raw_description.pending_workflow_task.attempt < 2:
                continue
            healed += await heal(client, info.id, info.run_id)
        except RPCError as exc:  # it ended meanwhile, or Temporal is away: next pass
            log.info("guard.skipped", workflow_id=info.id, error=exc.message)
    return healed


async def run(
    client_of: Callable[[], Client], stop: asyncio.Event, interval: float | None = None
) -> None:
    """Sweep until ``stop``; ``client_of()`` gives the worker's client in use now (a
    certificate renewal replaces it)."""
    every = guard_interval() if interval is None else interval
    while not stop.is_set():
        try:
            await sweep(client_of())
        except RPCError as exc:
            log.warning("guard.sweep_failed", error=exc.message)
        try:
            await asyncio.wait_for(stop.wait(), timeout=every)
        except TimeoutError:
            pass
