"""A Temporal namespace of the caller's own (tests, the bench, the journey), usable on return.

Registering a namespace is not enough: the frontend serves namespaced calls from a cache
that learns of a new namespace only at its next refresh (seconds later), so the first
``StartWorkflowExecution`` may answer "Namespace ... is not found" (a suite run failed on
exactly that). :func:`ensure_namespace` registers it (or finds it registered) and waits
until a namespaced call succeeds.
"""

from __future__ import annotations

import asyncio
import time

from google.protobuf.duration_pb2 import Duration
from temporalio.api.workflowservice.v1 import (
    ListOpenWorkflowExecutionsRequest,
    RegisterNamespaceRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from orders_shared.search_attributes import register_search_attributes

RETENTION_SECONDS = 24 * 3600


async def ensure_namespace(address: str, namespace: str, *, wait_seconds: float = 60.0) -> None:
    """Register ``namespace`` (one day's retention) unless it exists, then wait until the
    frontend serves it; :class:`TimeoutError` naming it after ``wait_seconds``. It gets
    the order workflow's search attributes too (``OrderOutcome``, ``OrderReason``)."""
    root = await Client.connect(address)
    try:
        await root.workflow_service.register_namespace(
            RegisterNamespaceRequest(
                namespace=namespace,
                workflow_execution_retention_period=Duration(seconds=RETENTION_SECONDS),
            )
        )
    except RPCError as exc:
        if exc.status != RPCStatusCode.ALREADY_EXISTS:
            raise
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            await root.workflow_service.list_open_workflow_executions(
                ListOpenWorkflowExecutionsRequest(namespace=namespace, maximum_page_size=1)
            )
            await register_search_attributes(root, namespace)
            return
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Temporal at {address} registered namespace {namespace!r} but did not "
                    f"serve it within {wait_seconds:.0f} s: check the server's log"
                ) from exc
            await asyncio.sleep(0.25)
