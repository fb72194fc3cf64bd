"""``orders`` CLI: a bad order file exits 2 with the field and the rule, before any network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orders_ops.cli import main


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    code = info.value.code
    assert isinstance(code, int)
    return code


def test_bad_order_exits_2_naming_field_and_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    order = {
        "order_id": "ord-1",
        "customer_id": "c-1",
        "customer_name": "Ada",
        "email": "ada@example.com",
        "shipping_address": "1 Main Street",
        "payment_token": "tok_visa",
        "lines": [{"sku": "WIDGET-1", "quantity": 0}],
    }
    path = tmp_path / "order.json"
    path.write_text(json.dumps(order))
    assert run(["submit", str(path)]) == 2
    err = capsys.readouterr().err
    assert "lines[0].quantity" in err
    assert "must be from 1 to 1000" in err


def test_not_json_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "order.json"
    path.write_text("{not json")
    assert run(["submit", str(path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["submit", str(tmp_path / "nope.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
