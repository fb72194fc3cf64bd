"""``orders`` with hostile input: exit 2 naming the field and the rule, before any network;
nothing an attacker wrote reaches the terminal unquoted or in full."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orders_ops.cli import main


def good() -> dict[str, Any]:
    return {
        "order_id": "ord-1",
        "customer_id": "c-1",
        "customer_name": "Ada",
        "email": "ada@example.com",
        "shipping_address": "1 Main Street",
        "payment_token": "tok_visa",
        "lines": [{"sku": "WIDGET-1", "quantity": 1}],
    }


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    code = info.value.code
    assert isinstance(code, int)
    return code


def submit_text(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> str:
    path = tmp_path / "order.json"
    path.write_text(text, encoding="utf-8")
    assert run(["submit", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_a_lone_surrogate_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = json.dumps(good()).replace('"Ada"', '"A\\ud800da"')
    line = submit_text(tmp_path, text, capsys)
    assert "field 'customer_name'" in line
    assert "valid Unicode" in line


def test_a_5000_digit_number_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = json.dumps(good()).replace('"quantity": 1', '"quantity": ' + "7" * 5000)
    line = submit_text(tmp_path, text, capsys)
    assert "field 'lines[0].quantity'" in line
    assert "at most 20 digits (5000 given)" in line


def test_deep_nesting_is_refused_unparsed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = submit_text(tmp_path, '{"lines": ' + "[" * 100_000 + "]" * 100_000 + "}", capsys)
    assert "must not nest deeper than 8 levels" in line


def test_nan_is_not_a_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = json.dumps(good()).replace('"quantity": 1', '"quantity": NaN')
    assert "NaN is not a JSON number" in submit_text(tmp_path, text, capsys)


def test_an_unknown_field_name_is_quoted_and_cut_short(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = good()
    data["\x1b]0;pwned\x07\x1b[2J" + "k" * 100_000] = 1
    line = submit_text(tmp_path, json.dumps(data), capsys)
    assert "\x1b" not in line and "\x07" not in line
    # a name that is not a plain field name is not echoed at all (order_input's rule)
    assert "pwned" not in line and "is not a known field" in line
    assert len(line) < 300


def test_a_huge_file_is_refused_unread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = good()
    data["k" * 10_000_000] = 1
    line = submit_text(tmp_path, json.dumps(data), capsys)
    assert "is larger than 1048576 bytes" in line


def test_status_refuses_an_order_id_that_is_not_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["status", "\x1b[31m" + "x" * 500]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "is not an order id" in err
    assert "(505 characters)" in err


def test_submit_help_points_at_the_sample_order_and_the_seeded_skus() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "orders_ops.cli", "submit", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "examples/order.json" in proc.stdout
    assert "WIDGET-1" in proc.stdout
    root = Path(__file__).resolve().parents[2]
    sample = json.loads((root / "examples" / "order.json").read_text())
    from orders_shared.order_input import parse_order

    assert parse_order(sample).order_id == sample["order_id"]
