"""`orders status` says why an order is stuck: with the payment provider down, the
pending step's attempt, its last failure (type and the product's message, opened with
the reader's codec) and when Temporal tries next. Real stack, real workers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from orders_ops.stack import Stack
from orders_shared.client import order_status, submit_order
from orders_shared.order_input import parse_order
from tests.test_e2e_workers import Orders, admin, new_sku, order, temporal  # noqa: F401

pytestmark = pytest.mark.stack


async def test_status_shows_the_retried_step_its_failure_and_the_next_try(
    workers: Stack,
    temporal: Orders,  # noqa: F811
    admin: asyncpg.Connection,  # noqa: F811
) -> None:
    sku = await new_sku(admin, stock=5)
    data = order(sku)
    workers.provider.stop()
    try:
        await submit_order(temporal.client, parse_order(data), wait=False, transit=temporal.transit)
        for _ in range(120):  # a bound on polls, not a timing claim
            status = await order_status(temporal.client, data["order_id"])
            if status.retrying is not None and status.retrying.attempt >= 2:
                break
            await asyncio.sleep(0.5)
        assert status.retrying is not None and status.retrying.attempt >= 2, status
        cli = await asyncio.to_thread(
            subprocess.run,
            [str(Path(sys.executable).with_name("orders")), "status", data["order_id"]],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
            timeout=120,
        )
    finally:
        assert workers.provider.start(timeout=30)
    assert cli.returncode == 0, cli.stderr
    shown = json.loads(cli.stdout)
    retrying = shown["retrying"]
    assert shown["step"] == "process_payment", shown
    assert retrying["activity"] == "process_payment", retrying
    assert retrying["attempt"] >= 2, retrying
    # the client identity may not open the payment service's failure messages
    # (least privilege): type only, said to be sealed
    assert retrying["failure_type"] == "ProviderUnavailable", retrying
    assert retrying["sealed"] is True and retrying["failure_message"] is None, retrying
    assert "process_payment is on attempt" in cli.stderr, cli.stderr
    assert "ProviderUnavailable (its message is sealed" in cli.stderr, cli.stderr
    # when Temporal tries next, or that the try runs now
    assert retrying["next_attempt"] or retrying["state"] == "STARTED", retrying
    assert "next try at " in cli.stderr or "attempt is STARTED" in cli.stderr, cli.stderr
    assert data["payment_token"] not in cli.stdout  # the failure, never payload data
    handle = temporal.client.get_workflow_handle(data["order_id"])
    await handle.result()  # the provider is back: the order goes on
