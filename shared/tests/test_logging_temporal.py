"""Lines the Temporal SDK logs from workflow code, on a real Temporal server: they name the
service and carry the workflow's details as fields, never inside the message text."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
import structlog
from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from orders_ops.stack import Stack
from orders_shared.logging import configure_logging


@workflow.defn(name="LoggingProbe")
class LoggingProbe:
    @workflow.run
    async def run(self, step: str) -> str:
        # the orchestrator's own form: a short message, the data in extra
        workflow.logger.info("order step failed", extra={"step": step, "reason": "OutOfStock"})
        return step


async def test_workflow_log_lines_carry_service_and_fields_not_message_text(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    queue = f"logging-probe-{uuid.uuid4().hex[:8]}"
    workflow_id = f"probe-{uuid.uuid4().hex[:8]}"
    client = await Client.connect(stack.settings.temporal_address)
    try:
        configure_logging("orchestrator")
        capsys.readouterr()
        async with Worker(
            client,
            task_queue=queue,
            workflows=[LoggingProbe],
            workflow_runner=UnsandboxedWorkflowRunner(),
        ):
            await client.execute_workflow(
                LoggingProbe.run, "reserve_inventory", id=workflow_id, task_queue=queue
            )
        lines: list[dict[str, Any]] = []
        for text in capsys.readouterr().err.splitlines():
            entry = json.loads(text)
            if entry.get("event", "").startswith("order step failed"):
                lines.append(entry)
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    assert len(lines) == 1
    line = lines[0]
    assert line["event"] == "order step failed"
    assert line["service"] == "orchestrator"
    assert (line["workflow_id"], line["workflow_type"], line["task_queue"]) == (
        workflow_id,
        "LoggingProbe",
        queue,
    )
    assert (line["step"], line["reason"]) == ("reserve_inventory", "OutOfStock")
