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

Same id, same content: deduplicated. Same id, other content: refused with
:class:`OrderConflictError`. Each run carries, in its memo (encrypted by the
payload codec like every payload), a digest of the canonical order as
submitted (:func:`order_digest`; sealing is randomised, so the digest is
taken before sealing) and a random submission id. The submission id tells a
retry of our own start (its first attempt reached Temporal but the answer was
lost) from somebody else's earlier submit.

Outages: Vault and Temporal calls are retried with backoff until a deadline
(``ORDERS_CLIENT_DEADLINE``, 60 s); then :class:`ServiceUnavailableError`
names what did not answer. Every wait (these retries, the worker check, the wait
for a result) goes through :func:`orders_shared.progress.waiting`, which says on
stderr what it waits for once it lasts over 2 s, when a program installed a
reporter (the ``orders`` CLI does). A start that may or may not have reached Temporal
is retried under the same workflow id, so it starts the order at most once,
and the caller is told whether it did.

Payload protection: the order's sensitive fields are sealed to their consuming
services before the workflow starts (:mod:`orders_shared.sealing`); a plain
order is never submitted. The client itself runs as the ``orders-client``
identity (:func:`client_vault_config`) and connects with the encrypting data
converter (:func:`connect`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from temporalio.api.enums.v1 import PendingActivityState, TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from orders_shared.catalog import STEP_QUEUES, temporal_identity
from orders_shared.codec import TransitClient, TransitUnavailable, data_converter
from orders_shared.config import ConfigError, VaultConfig, client_deadline, vault_request_timeout
from orders_shared.contracts.common import Order
from orders_shared.contracts.orchestrator import (
    CURRENT_STEP_QUERY,
    ORDER_WORKFLOW,
    TASK_QUEUE,
    CurrentStep,
    OrderWorkflowInput,
    OrderWorkflowResult,
)
from orders_shared.identity import VAULT_UNAVAILABLE, Backoff
from orders_shared.order_input import order_to_json
from orders_shared.progress import waiting
from orders_shared.sealing import SEALED_FIELDS, is_sealed, is_sealed_order, seal_order

T = TypeVar("T")

CLIENT_IDENTITY = "orders-client"
"""The Vault auth role and policy of whoever submits orders (not one of the six workers)."""

MEMO_KEY = "orders.submission"
"""Memo entry of every order run: ``{"digest": ..., "public_digest": ..., "submission": ...}``."""

POLLER_FRESH = 90.0
"""A poller last seen longer ago than this is gone (a long poll lasts at most about 70 s)."""

POLLER_SETTLE = 5.0
"""How long a queue must show no poller before the client says nobody polls it."""

RPC_TIMEOUT = 10.0
"""Longest single Temporal call (a paused frontend must not hold the client forever)."""

START_HINT = "start them with '.venv/bin/orders-stack up --workers' (or 'make demo KEEP=1')"


class OrderNotSealedError(ValueError):
    """An order with plain sensitive fields and no Transit client to seal them with."""


class OrderClientError(RuntimeError):
    """A failure the caller should show as is: the message is one line, names what
    failed and what to do, and quotes no order content."""


class ServiceUnavailableError(OrderClientError):
    """Vault or Temporal did not answer before the deadline."""

    def __init__(self, service: str, address: str, seconds: float, cause: str) -> None:
        super().__init__(
            f"{service} at {address} did not answer within {seconds:g} s ({cause}): check that "
            f"it runs ('orders-stack status' locally) or allow longer with ORDERS_CLIENT_DEADLINE"
        )
        self.service = service
        self.address = address


class OrderConflictError(OrderClientError):
    """The order id was already used for an order with other contents."""

    def __init__(self, order_id: str, why: str) -> None:
        super().__init__(
            f"order id {order_id!r} was already used for an order with {why}; nothing was "
            "started: submit the new order under a new order id"
        )
        self.order_id = order_id


class NoWorkersError(OrderClientError):
    """Nobody polls a task queue the order needs, so waiting would hang."""

    def __init__(
        self, order_id: str, run_id: str | None, queues: list[str], namespace: str = "default"
    ) -> None:
        names = ", ".join(queues)
        super().__init__(
            f"order {order_id!r} was started (run {run_id}) but no worker polls task queue "
            f"{names}: {START_HINT}; then follow it with 'orders status {order_id}' "
            # workers elsewhere (docs/bring-your-own.md) may poll another namespace
            f"(namespace {namespace!r}: the workers' TEMPORAL_NAMESPACE must be the same)"
        )
        self.order_id = order_id
        self.run_id = run_id
        self.queues = queues


class Deadline:
    """A point in time (monotonic) by which an outage must be over."""

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = client_deadline() if seconds is None else seconds
        self.at = time.monotonic() + self.seconds

    def left(self) -> float:
        return self.at - time.monotonic()


OnRetry = Callable[[str, str, float], None]
"""``on_retry(service, cause, seconds_left)``: told once per outage (e.g. to say "retrying")."""


def _timed_out(exc: BaseException) -> bool:
    """The call ran out of its rpc_timeout (the SDK says CANCELLED "Timeout expired")."""
    return isinstance(exc, RPCError) and exc.status in (
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.CANCELLED,
    )


def _temporal_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, RPCError):
        return exc.status in (
            RPCStatusCode.UNAVAILABLE,
            RPCStatusCode.DEADLINE_EXCEEDED,
            RPCStatusCode.CANCELLED,
            RPCStatusCode.RESOURCE_EXHAUSTED,
        )
    return False


def _vault_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, (TransitUnavailable, *VAULT_UNAVAILABLE))


async def until_answered(
    service: str,
    address: str,
    call: Callable[[], Awaitable[T]],
    deadline: Deadline,
    *,
    unavailable: Callable[[BaseException], bool],
    on_retry: OnRetry | None = None,
    backoff: Backoff = Backoff(first=0.25, cap=4.0),  # noqa: B008 (frozen)
) -> T:
    """``call()``, retried with backoff while ``unavailable(error)`` says the service
    did not answer, until ``deadline``; then :class:`ServiceUnavailableError`.

    Each attempt is also cut off at the deadline (a paused server accepts a
    connection and never answers)."""
    attempt = 0
    async with waiting(f"{service} at {address}", deadline.left) as wait:
        while True:
            left = deadline.left()
            try:
                return await asyncio.wait_for(call(), timeout=max(left, 0.05))
            except TimeoutError:
                cause = "no answer"
            except Exception as exc:
                if not unavailable(exc):
                    raise
                cause = getattr(exc, "brief", None) or type(exc).__name__
            wait.cause = cause
            attempt += 1
            left = deadline.left()
            if left <= 0:
                raise ServiceUnavailableError(service, address, deadline.seconds, cause) from None
            if attempt == 1 and on_retry is not None:
                on_retry(service, cause, left)
            await asyncio.sleep(min(left, backoff.delay(attempt)))


def client_vault_config(
    env: Mapping[str, str] | None = None,
    *,
    default_addr: str | None = None,
    default_token_file: Path | None = None,
) -> VaultConfig:
    """How the client logs in to Vault, from the environment.

    ``VAULT_ADDR``, ``VAULT_AUTH_METHOD`` [jwt], ``VAULT_AUTH_MOUNT`` [the method],
    ``VAULT_AUTH_ROLE`` [orders-client], ``VAULT_TOKEN_FILE`` (the client's identity
    token; locally ``<state>/identity/client/token.jwt``), ``VAULT_TOKEN`` (method token only),
    ``VAULT_REQUEST_TIMEOUT`` [5 s per request; outages are retried up to the deadline].
    """
    e = os.environ if env is None else env
    addr = (e.get("VAULT_ADDR") or default_addr or "").strip()
    if not addr:
        raise ConfigError("VAULT_ADDR is not set: the client seals order fields with Vault")
    method = (e.get("VAULT_AUTH_METHOD") or "jwt").strip()
    if method not in ("jwt", "kubernetes", "token"):
        raise ConfigError(f"VAULT_AUTH_METHOD={method!r} is not supported: use jwt, kubernetes")
    raw_file = (e.get("VAULT_TOKEN_FILE") or "").strip()
    token_file = Path(raw_file) if raw_file else default_token_file
    if method != "token" and (token_file is None or not token_file.is_file()):
        raise ConfigError(
            f"VAULT_TOKEN_FILE={str(token_file) if token_file else ''!r} does not exist: point "
            "it at the client's identity token (locally 'orders-stack up' writes "
            "<state>/identity/client/token.jwt)"
        )
    static = (e.get("VAULT_TOKEN") or "").strip() or None if method == "token" else None
    if method == "token" and static is None:
        raise ConfigError("VAULT_TOKEN is not set (VAULT_AUTH_METHOD=token)")
    return VaultConfig(
        addr=addr.rstrip("/"),
        auth_method=method,  # type: ignore[arg-type]
        auth_mount=(e.get("VAULT_AUTH_MOUNT") or method).strip(),
        auth_role=(e.get("VAULT_AUTH_ROLE") or CLIENT_IDENTITY).strip(),
        token_file=token_file or Path("/nonexistent"),
        request_timeout=vault_request_timeout(e),
        static_token=static,
    )


async def connect(
    address: str,
    transit: TransitClient,
    *,
    namespace: str = "default",
    deadline: Deadline | None = None,
    on_retry: OnRetry | None = None,
    identity: str | None = None,
    tls: TLSConfig | bool = False,
    **options: Any,
) -> Client:
    """A Temporal client whose payloads and failures are encrypted (see orders_shared.codec).

    Temporal records ``identity`` (default ``orders-client@<host>``) on every workflow
    this client starts. ``tls``: the SDK's TLS settings (with a client certificate, see
    :func:`orders_shared.tls.client_temporal_tls`), or False for plaintext.

    Connection failures are retried until ``deadline`` (default
    ``ORDERS_CLIENT_DEADLINE``), then :class:`ServiceUnavailableError`."""

    async def attempt() -> Client:
        try:
            return await Client.connect(
                address,
                namespace=namespace,
                identity=identity or temporal_identity(CLIENT_IDENTITY),
                data_converter=data_converter(transit, **options),
                tls=tls,
            )
        except RuntimeError:  # the SDK reports a failed connect as RuntimeError
            raise _ConnectFailed from None

    return await until_answered(
        "Temporal",
        address,
        attempt,
        deadline or Deadline(),
        unavailable=lambda exc: isinstance(exc, _ConnectFailed),
        on_retry=on_retry,
    )


class _ConnectFailed(Exception):
    brief = "cannot connect"


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
    from the workflow's query while it runs and from its result once done.
    ``problem`` says why a running order's step is unknown (no worker polls)."""

    order_id: str
    workflow_status: str
    step: str | None
    path: list[str]
    result: OrderWorkflowResult | None
    problem: str | None = None
    # the step Temporal is retrying, when it has failed at least once
    retrying: PendingStep | None = None


@dataclass(frozen=True)
class PendingStep:
    """A pending activity that has failed: its attempt, the last failure's type and the
    message the product wrote (opened with the reader's codec; ``sealed`` when it could
    not be), and when Temporal tries next (ISO 8601, UTC)."""

    activity: str
    attempt: int
    failure_type: str | None
    failure_message: str | None
    sealed: bool
    next_attempt: str | None  # None while an attempt runs (``state`` STARTED)
    state: str


async def _pending_step(client: Client, raw: Any) -> PendingStep | None:
    for info in raw.pending_activities:
        if info.attempt < 2 and not info.last_failure.ByteSize():
            continue
        failure = info.last_failure
        kind = failure.application_failure_info.type or None
        message: str | None = None
        sealed = False
        if failure.ByteSize():
            try:  # the failure converter encrypts messages: the reader's codec opens them
                error = await client.data_converter.decode_failure(failure)
                message = str(error.message if hasattr(error, "message") else error)
                kind = getattr(error, "type", None) or kind or type(error).__name__
            except Exception:  # not this reader's to open (its policy): type only
                sealed = True
        # the backoff's end (next_attempt_schedule_time), else when the queued try was
        # scheduled; neither while it runs
        nxt = next(
            (
                getattr(info, f)
                for f in ("next_attempt_schedule_time", "scheduled_time")
                if info.HasField(f)
                and info.state != PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            ),
            None,
        )
        return PendingStep(
            activity=info.activity_type.name,
            attempt=info.attempt,
            failure_type=kind,
            failure_message=message,
            sealed=sealed,
            next_attempt=nxt.ToDatetime().isoformat() + "Z" if nxt is not None else None,
            state=PendingActivityState.Name(info.state).removeprefix("PENDING_ACTIVITY_STATE_"),
        )
    return None


def _canonical(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def order_digest(order: Order) -> tuple[str | None, str]:
    """``(digest, public_digest)`` of the canonical order.

    ``digest`` covers every field, the sensitive ones in plain text; it is
    ``None`` for an order handed over already sealed (sealing is randomised, so
    sealed text says nothing about content). ``public_digest`` covers every
    field but the sealed ones. Both are SHA-256 under a fixed label and are only
    ever stored encrypted (the memo goes through the payload codec)."""
    data = order_to_json(order)
    public = {k: v for k, v in data.items() if k not in SEALED_FIELDS}
    public_digest = hashlib.sha256(b"orders.public.v1\0" + _canonical(public)).hexdigest()
    if any(is_sealed(getattr(order, f)) for f in SEALED_FIELDS):
        return None, public_digest
    return hashlib.sha256(b"orders.order.v1\0" + _canonical(data)).hexdigest(), public_digest


def _same_order(stored: Any, digest: str | None, public_digest: str, order_id: str) -> None:
    """Raise :class:`OrderConflictError` unless the stored memo says the same content."""
    if not isinstance(stored, Mapping) or not isinstance(stored.get("public_digest"), str):
        raise OrderConflictError(order_id, "content this client cannot compare (no digest)")
    if stored["public_digest"] != public_digest:
        raise OrderConflictError(order_id, "other contents")
    theirs = stored.get("digest")
    if digest is not None and isinstance(theirs, str) and theirs != digest:
        raise OrderConflictError(order_id, "other contents")


async def live_pollers(
    client: Client, task_queue: str, kind: str = "workflow", *, rpc_seconds: float = 5.0
) -> int:
    """How many pollers Temporal saw on ``task_queue`` within :data:`POLLER_FRESH` s
    (DescribeTaskQueue; ``kind`` is ``workflow`` or ``activity``)."""
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=task_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
        task_queue_type=(
            TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW
            if kind == "workflow"
            else TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
        ),
    )
    response = await client.workflow_service.describe_task_queue(
        request, timeout=timedelta(seconds=rpc_seconds)
    )
    now = datetime.now(UTC)
    fresh = 0
    for poller in response.pollers:
        seen = poller.last_access_time.ToDatetime(tzinfo=UTC)
        if (now - seen).total_seconds() <= POLLER_FRESH:
            fresh += 1
    return fresh


async def queues_without_workers(
    client: Client,
    task_queue: str = TASK_QUEUE,
    *,
    activities: bool = True,
    settle: float = POLLER_SETTLE,
) -> list[str]:
    """The task queues an order needs that no worker polls: the workflow's own queue,
    then (when it is the standard one) each activity service's.

    A queue counts as unpolled only if it stays so for ``settle`` seconds:
    DescribeTaskQueue reports the pollers its root partition has seen, and a
    worker that just started may not have polled (or been forwarded to) it yet."""
    needed = [(task_queue, "workflow")]
    if activities and task_queue == TASK_QUEUE:
        needed += [(queue, "activity") for queue in STEP_QUEUES]
    until = time.monotonic() + settle
    # bounded and followed by its own message: said on a terminal only
    async with waiting(
        f"a worker to poll task queue {task_queue}",
        lambda: until - time.monotonic(),
        tty_only=True,
    ):
        while True:
            counts = await asyncio.gather(*(live_pollers(client, q, k) for q, k in needed))
            needed = [(q, k) for (q, k), n in zip(needed, counts, strict=True) if n == 0]
            if not needed or time.monotonic() >= until:
                return [q for q, _ in needed]
            await asyncio.sleep(0.5)


async def submit_order(
    client: Client,
    order: Order,
    *,
    wait: bool,
    task_queue: str = TASK_QUEUE,
    transit: TransitClient | None = None,
    deadline: Deadline | None = None,
    on_retry: OnRetry | None = None,
    vault_address: str = "Vault",
    check_workers: bool = True,
) -> SubmittedOrder:
    """Start the order's workflow (once per order id); with ``wait``, return its result too.

    Plain sensitive fields are sealed first with ``transit`` (the client's
    identity); without it only an already sealed order is accepted. Vault and
    Temporal outages are retried until ``deadline``
    (:class:`ServiceUnavailableError` then). The same id with other content
    raises :class:`OrderConflictError`. With ``wait`` and ``check_workers``,
    :class:`NoWorkersError` when nobody polls a queue the order needs.
    """
    deadline = deadline or Deadline()
    digest, public_digest = order_digest(order)
    if not is_sealed_order(order):
        if transit is None:
            raise OrderNotSealedError(
                "the order's sensitive fields are not sealed: pass transit= (the client's "
                "Transit access) or seal it with orders_shared.sealing.seal_order"
            )
        sealer = transit
        plain = order
        order = await until_answered(
            "Vault",
            vault_address,
            lambda: seal_order(plain, sealer),
            deadline,
            unavailable=_vault_unavailable,
            on_retry=on_retry,
        )
    submission = uuid.uuid4().hex
    memo = {MEMO_KEY: {"digest": digest, "public_digest": public_digest, "submission": submission}}
    address = client.service_client.config.target_host

    async def start() -> tuple[str | None, bool]:
        try:
            handle = await client.start_workflow(
                ORDER_WORKFLOW,
                OrderWorkflowInput(order=order),
                id=order.order_id,
                task_queue=task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                memo=memo,
                result_type=OrderWorkflowResult,
                rpc_timeout=timedelta(seconds=max(1.0, min(RPC_TIMEOUT, deadline.left()))),
            )
            return handle.result_run_id, False
        except WorkflowAlreadyStartedError as already:
            return already.run_id, True

    try:
        run_id, exists = await until_answered(
            "Temporal",
            address,
            start,
            deadline,
            unavailable=_temporal_unavailable,
            on_retry=on_retry,
        )
    except ServiceUnavailableError as exc:
        # a start that timed out may have reached Temporal: say so, and how to find out
        raise OrderClientError(
            f"{exc}; order {order.order_id!r} may or may not have started: "
            f"'orders status {order.order_id}' tells, and submitting the same order again is "
            "safe (the order id starts it at most once)"
        ) from None
    deduplicated = False
    if exists:
        existing = client.get_workflow_handle(
            order.order_id, run_id=run_id, result_type=OrderWorkflowResult
        )
        desc = await until_answered(
            "Temporal",
            address,
            lambda: existing.describe(rpc_timeout=timedelta(seconds=RPC_TIMEOUT)),
            deadline,
            unavailable=_temporal_unavailable,
            on_retry=on_retry,
        )
        stored = (await desc.memo()).get(MEMO_KEY)
        ours = isinstance(stored, Mapping) and stored.get("submission") == submission
        if not ours:
            _same_order(stored, digest, public_digest, order.order_id)
            deduplicated = True
    handle = client.get_workflow_handle(
        order.order_id, run_id=run_id, result_type=OrderWorkflowResult
    )
    result = None
    if wait:
        result = await _wait_for_result(
            client, handle, run_id, task_queue, deadline.seconds, check_workers, on_retry
        )
    return SubmittedOrder(
        order_id=order.order_id, run_id=run_id, deduplicated=deduplicated, result=result
    )


async def _wait_for_result(
    client: Client,
    handle: WorkflowHandle[Any, OrderWorkflowResult],
    run_id: str | None,
    task_queue: str,
    outage_seconds: float,
    check_workers: bool,
    on_retry: OnRetry | None,
    recheck: float = 15.0,
) -> OrderWorkflowResult:
    """The order's result. Nobody polling a needed queue (checked first, then every
    ``recheck`` s) raises :class:`NoWorkersError`; a Temporal outage longer than
    ``outage_seconds`` raises :class:`ServiceUnavailableError`."""
    address = client.service_client.config.target_host
    outage: Deadline | None = None
    checked = False
    async with waiting(
        f"order {handle.id} to finish",
        no_limit=f"no time limit (Ctrl-C stops the waiting, not the order: "
        f"'orders status {handle.id}' follows it)",
    ) as wait:
        while True:
            if check_workers and not checked:
                missing = await until_answered(
                    "Temporal",
                    address,
                    lambda: queues_without_workers(client, task_queue),
                    Deadline(outage_seconds),
                    unavailable=_temporal_unavailable,
                    on_retry=on_retry,
                )
                if missing:
                    raise NoWorkersError(handle.id, run_id, missing, client.namespace)
                checked = True
            try:
                return await asyncio.wait_for(handle.result(), timeout=recheck)
            except TimeoutError:
                checked = False  # still running: are the workers still there?
                outage = None
                wait.cause = None
            except RPCError as exc:
                if not _temporal_unavailable(exc):
                    raise
                wait.cause = f"Temporal {exc.status.name if exc.status is not None else 'error'}"
                outage = outage or Deadline(outage_seconds)
                if outage.left() <= 0:
                    raise ServiceUnavailableError(
                        "Temporal", address, outage_seconds, type(exc).__name__
                    ) from None
                await asyncio.sleep(1.0)


async def order_status(
    client: Client,
    order_id: str,
    *,
    deadline: Deadline | None = None,
    on_retry: OnRetry | None = None,
) -> OrderStatus:
    """The order's workflow status, current step and, once finished, its result.

    Raises ``temporalio.service.RPCError`` (``NOT_FOUND``) for an unknown order id
    and :class:`ServiceUnavailableError` when Temporal does not answer in time.
    A running order whose workflow queue nobody polls is reported at once, with
    ``problem`` saying so, instead of waiting for a query nobody will answer.
    """
    deadline = deadline or Deadline()
    address = client.service_client.config.target_host
    handle = client.get_workflow_handle(order_id, result_type=OrderWorkflowResult)

    def retried(call: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        return until_answered(
            "Temporal",
            address,
            call,
            deadline,
            unavailable=_temporal_unavailable,
            on_retry=on_retry,
        )

    rpc = timedelta(seconds=RPC_TIMEOUT)
    desc = await retried(lambda: handle.describe(rpc_timeout=rpc))
    status = desc.status
    name = status.name if status is not None else "UNKNOWN"
    if status == WorkflowExecutionStatus.COMPLETED:
        try:
            result = await retried(lambda: handle.result(rpc_timeout=rpc))
        except WorkflowFailureError:  # completed per describe: not expected
            return OrderStatus(order_id, name, None, [], None)
        return OrderStatus(order_id, name, "done", list(result.path), result)
    if status == WorkflowExecutionStatus.RUNNING:
        queue = desc.task_queue
        if await retried(lambda: queues_without_workers(client, queue, activities=False)):
            return OrderStatus(
                order_id,
                name,
                None,
                [],
                None,
                problem=f"no worker polls task queue {queue}: {START_HINT}",
            )

        async def query() -> CurrentStep:
            # bounded and followed by its own message: said on a terminal only
            until = time.monotonic() + RPC_TIMEOUT
            async with waiting(
                f"a worker of task queue {queue} to answer order {order_id}'s query",
                lambda: until - time.monotonic(),
                tty_only=True,
            ):
                step: CurrentStep = await handle.query(
                    CURRENT_STEP_QUERY, result_type=CurrentStep, rpc_timeout=rpc
                )
                return step

        try:
            # Temporal away: retried; the query timed out: no worker answered (one that
            # stopped less than POLLER_FRESH ago still counts as polling), said at once
            current = await until_answered(
                "Temporal",
                address,
                query,
                deadline,
                unavailable=lambda e: _temporal_unavailable(e) and not _timed_out(e),
                on_retry=on_retry,
            )
        except ServiceUnavailableError:
            return OrderStatus(
                order_id, name, None, [], None, problem="the workflow did not answer its query"
            )
        except RPCError as exc:
            if not _timed_out(exc):
                raise
            return OrderStatus(
                order_id,
                name,
                None,
                [],
                None,
                problem=f"the workflow did not answer its query within {RPC_TIMEOUT:.0f} s: "
                f"no worker of task queue {queue} answered (one that stopped in the last "
                f"{POLLER_FRESH:.0f} s still looks like a poller); {START_HINT}",
            )
        retrying = await _pending_step(client, desc.raw_description)
        return OrderStatus(
            order_id, name, current.step, list(current.path), None, retrying=retrying
        )
    return OrderStatus(order_id, name, None, [], None)
