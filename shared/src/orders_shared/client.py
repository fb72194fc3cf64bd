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

Payload protection: the order's sensitive fields are sealed to their consuming
services before the workflow starts (:mod:`orders_shared.sealing`); a plain
order is never submitted. The client itself runs as the ``orders-client``
identity (:func:`client_vault_config`) and connects with the encrypting data
converter (:func:`connect`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from orders_shared.codec import TransitClient, data_converter
from orders_shared.config import ConfigError, VaultConfig
from orders_shared.contracts.common import Order
from orders_shared.contracts.orchestrator import (
    CURRENT_STEP_QUERY,
    ORDER_WORKFLOW,
    TASK_QUEUE,
    CurrentStep,
    OrderWorkflowInput,
    OrderWorkflowResult,
)
from orders_shared.sealing import is_sealed_order, seal_order

CLIENT_IDENTITY = "orders-client"
"""The Vault auth role and policy of whoever submits orders (not one of the six workers)."""


class OrderNotSealedError(ValueError):
    """An order with plain sensitive fields and no Transit client to seal them with."""


def client_vault_config(
    env: Mapping[str, str] | None = None,
    *,
    default_addr: str | None = None,
    default_token_file: Path | None = None,
) -> VaultConfig:
    """How the client logs in to Vault, from the environment.

    ``VAULT_ADDR``, ``VAULT_AUTH_METHOD`` [jwt], ``VAULT_AUTH_MOUNT`` [the method],
    ``VAULT_AUTH_ROLE`` [orders-client], ``VAULT_TOKEN_FILE`` (the client's identity
    token; locally ``<state>/identity/client/token.jwt``), ``VAULT_TOKEN`` (method token only).
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
        request_timeout=5.0,
        static_token=static,
    )


async def connect(
    address: str, transit: TransitClient, *, namespace: str = "default", **options: Any
) -> Client:
    """A Temporal client whose payloads and failures are encrypted (see orders_shared.codec)."""
    return await Client.connect(
        address, namespace=namespace, data_converter=data_converter(transit, **options)
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
    client: Client,
    order: Order,
    *,
    wait: bool,
    task_queue: str = TASK_QUEUE,
    transit: TransitClient | None = None,
) -> SubmittedOrder:
    """Start the order's workflow (once per order id); with ``wait``, return its result too.

    Plain sensitive fields are sealed first with ``transit`` (the client's
    identity); without it only an already sealed order is accepted.
    """
    if not is_sealed_order(order):
        if transit is None:
            raise OrderNotSealedError(
                "the order's sensitive fields are not sealed: pass transit= (the client's "
                "Transit access) or seal it with orders_shared.sealing.seal_order"
            )
        order = await seal_order(order, transit)
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
