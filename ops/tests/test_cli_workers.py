"""``orders`` with the six worker processes: the sample order completes, the README's
triggers decline a payment and refuse an address, and status reports the outcome."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cli_support import run  # ops/tests is on pytest's pythonpath

from orders_ops.stack import Stack

ROOT = Path(__file__).resolve().parents[2]


def sample(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "examples" / "order.json").read_text())
    data["order_id"] = f"sample-{uuid.uuid4().hex[:10]}"
    data.update(changes)
    return data


def submit_wait(stack: Stack, tmp_path: Path, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    path = tmp_path / f"{data['order_id']}.json"
    path.write_text(json.dumps(data))
    proc = run(stack, "submit", str(path), "--wait")
    assert "Traceback" not in proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.usefixtures("workers")
def test_the_sample_order_completes_and_status_says_done(stack: Stack, tmp_path: Path) -> None:
    data = sample()
    code, out = submit_wait(stack, tmp_path, data)
    assert (code, out["deduplicated"], out["result"]["status"]) == (0, False, "completed")
    status = run(stack, "status", data["order_id"])
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["step"] == "done"


@pytest.mark.usefixtures("workers")
@pytest.mark.parametrize(
    ("changes", "reason_code"),
    [
        ({"payment_token": "tok_decline_insufficient_funds"}, "PaymentDeclined"),
        ({"shipping_address": "1 UNDELIVERABLE Road"}, "FulfillmentFailed"),
    ],
)
def test_the_documented_triggers_end_the_order_as_documented(
    stack: Stack, tmp_path: Path, changes: dict[str, str], reason_code: str
) -> None:
    code, out = submit_wait(stack, tmp_path, sample(**changes))
    assert code == 3
    assert out["result"]["status"] != "completed"
    assert out["result"]["reason_code"] == reason_code


TEMPORAL = Path(sys.executable).with_name("temporal")  # the CLI the stack installs


def workflow_ids(stack: Stack, query: str) -> set[str]:
    """``temporal workflow list --query`` as a user types it."""
    listed = subprocess.run(
        [
            str(TEMPORAL),
            "workflow",
            "list",
            "--address",
            stack.settings.temporal_address,
            "--query",
            query,
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {w["execution"]["workflowId"] for w in json.loads(listed.stdout or "[]")}


@pytest.mark.usefixtures("workers")
def test_each_outcome_is_found_by_temporal_workflow_list_query(
    stack: Stack, tmp_path: Path
) -> None:
    """Issue 25 item 3: a declined or refused order is a Completed workflow; its outcome
    is the OrderOutcome search attribute, found with the query the README shows, and
    stored in the clear, so it holds the outcome word and reason type, nothing else."""
    orders = {
        "completed": sample(),
        "failed": sample(payment_token="tok_decline_insufficient_funds"),
        "rejected": sample(lines=[{"sku": "NOPE-9", "quantity": 1}]),
    }
    for outcome, data in orders.items():
        code, out = submit_wait(stack, tmp_path, data)
        assert (code, out["result"]["status"]) == (0 if outcome == "completed" else 3, outcome)
    ours = {data["order_id"] for data in orders.values()}

    deadline = time.monotonic() + 20  # visibility is written just after the close
    while True:
        found = {o: workflow_ids(stack, f'OrderOutcome="{o}"') & ours for o in orders}
        if all(found.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert found == {o: {data["order_id"]} for o, data in orders.items()}
    declined = orders["failed"]["order_id"]
    assert workflow_ids(stack, 'OrderReason="PaymentDeclined"') & ours == {declined}
    assert workflow_ids(stack, 'OrderOutcome="failed" AND OrderReason="OutOfStock"') & ours == set()

    described = subprocess.run(
        [
            str(TEMPORAL),
            "workflow",
            "describe",
            "--address",
            stack.settings.temporal_address,
            "-w",
            declined,
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    fields = json.loads(described)["workflowExecutionInfo"]["searchAttributes"]["indexedFields"]
    # the rest are the server's own (BuildIds, Temporal*), none of them ours
    ours_only = {k: v for k, v in fields.items() if k != "BuildIds" and k[:8] != "Temporal"}
    values = {k: json.loads(base64.b64decode(v["data"])) for k, v in ours_only.items()}
    assert values == {"OrderOutcome": "failed", "OrderReason": "PaymentDeclined"}
    data = orders["failed"]
    for secret in (data["customer_name"], data["email"], data["shipping_address"]):
        assert secret not in described


@pytest.mark.usefixtures("workers")
def test_status_right_after_the_workers_stopped_says_so_without_a_long_wait(
    stack: Stack, tmp_path: Path
) -> None:
    """A worker that stopped less than POLLER_FRESH (90 s) ago still looks like a poller, so
    `orders status` of a running order asks its query; nobody answers. It retried that
    for the whole 60 s deadline (and, with item 2, said "waiting for Temporal" all along,
    which is how a full run showed it); one timed-out query is the answer."""
    for worker in stack.workers:
        worker.stop()
    try:
        data = sample()
        path = tmp_path / f"{data['order_id']}.json"
        path.write_text(json.dumps(data))
        assert run(stack, "submit", str(path)).returncode == 0
        started = time.monotonic()
        status = run(stack, "status", data["order_id"])
        took = time.monotonic() - started
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["workflow_status"] == "RUNNING"
        assert took < 30, f"orders status took {took:.0f} s"
        warning = "orders: warning: the workflow did not answer its query within 10 s: "
        assert status.stderr.strip().splitlines() == [
            warning + "no worker of task queue orders-orchestrator answered (one that stopped "
            "in the last 90 s still looks like a poller); start them with "
            "'.venv/bin/orders-stack up --workers' (or 'make demo KEEP=1')"
        ]
    finally:
        stack.workers_up(timeout=90, echo=lambda _line: None)  # the order then completes
