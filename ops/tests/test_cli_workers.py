"""``orders`` with the six worker processes: the sample order completes, the README's
triggers decline a payment and refuse an address, and status reports the outcome."""

from __future__ import annotations

import json
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
