"""Shape rules of a submitted order: each rule named, with the field, and no value echoed."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from orders_shared.contracts.common import Order, OrderLine
from orders_shared.order_input import (
    MAX_LINES,
    UNCARRIABLE_RULE,
    OrderInputError,
    check_order,
    order_to_json,
    parse_order,
)

GOOD: dict[str, Any] = {
    "order_id": "ord-1001",
    "customer_id": "cust-42",
    "customer_name": "Ada Lovelace",
    "email": "ada@example.com",
    "shipping_address": "1 Main Street\n1000 Brussels",
    "payment_token": "tok_visa",
    "lines": [{"sku": "WIDGET-1", "quantity": 2}, {"sku": "GIZMO-3", "quantity": 1}],
}


def with_(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return data


def refusal(data: Any) -> tuple[str, str]:
    with pytest.raises(OrderInputError) as info:
        parse_order(data)
    return info.value.field, info.value.rule


def test_a_good_order_parses() -> None:
    assert parse_order(GOOD) == Order(
        order_id="ord-1001",
        customer_id="cust-42",
        customer_name="Ada Lovelace",
        email="ada@example.com",
        shipping_address="1 Main Street\n1000 Brussels",
        payment_token="tok_visa",
        lines=(OrderLine("WIDGET-1", 2), OrderLine("GIZMO-3", 1)),
        currency="EUR",
    )


def test_round_trip_through_json_shape() -> None:
    order = parse_order(with_(currency="USD"))
    assert parse_order(order_to_json(order)) == order
    check_order(order)  # no exception


@pytest.mark.parametrize(
    ("data", "field", "rule"),
    [
        ([], "order", "must be an object"),
        (with_(email=...), "email", "is required"),
        (with_(discount=10), "discount", "is not a known field"),
        (with_(emial="a@b.io"), "emial", "is not a known field; did you mean 'email'?"),
        (with_(curency="EUR"), "curency", "is not a known field; did you mean 'currency'?"),
        (with_(order_id="-bad"), "order_id", None),
        (with_(order_id="x" * 65), "order_id", None),
        (with_(customer_id=""), "customer_id", None),
        (with_(customer_name="   "), "customer_name", "must not be empty"),
        (with_(customer_name="A" * 201), "customer_name", "must be at most 200 characters"),
        (
            with_(customer_name="Ada\nLovelace"),
            "customer_name",
            UNCARRIABLE_RULE,
        ),
        (with_(customer_name=42), "customer_name", "must be a string"),
        (with_(email="ada@example"), "email", "must be an email address like name@example.com"),
        (
            with_(email="ada @example.com"),
            "email",
            "must be an email address like name@example.com",
        ),
        (with_(email="a@@example.com"), "email", "must be an email address like name@example.com"),
        (with_(email="a" * 250 + "@x.io"), "email", "must be at most 254 characters"),
        (with_(shipping_address="x" * 501), "shipping_address", "must be at most 500 characters"),
        (
            with_(shipping_address="a\x00b"),
            "shipping_address",
            UNCARRIABLE_RULE,
        ),
        (with_(payment_token="4111111111111111"), "payment_token", None),
        (with_(currency="eur"), "currency", "must be 3 upper-case letters (ISO 4217)"),
        (with_(lines={}), "lines", "must be a list"),
        (with_(lines=[]), "lines", "must have at least one line"),
        (
            with_(lines=[{"sku": f"SKU-{i}", "quantity": 1} for i in range(MAX_LINES + 1)]),
            "lines",
            f"must have at most {MAX_LINES} lines",
        ),
        (with_(lines=["WIDGET-1"]), "lines[0]", "must be an object"),
        (with_(lines=[{"sku": "WIDGET-1"}]), "lines[0].quantity", "is required"),
        (
            with_(lines=[{"sku": "WIDGET-1", "quantity": 1, "price": 1}]),
            "lines[0].price",
            "is not a known field",
        ),
        (
            with_(lines=[{"sku": "WIDGET-1", "quantiy": 1}]),
            "lines[0].quantiy",
            "is not a known field; did you mean 'quantity'?",
        ),
        (with_(lines=[{"sku": "widget-1", "quantity": 1}]), "lines[0].sku", None),
        (with_(lines=[{"sku": "W", "quantity": 1}]), "lines[0].sku", None),
        (with_(lines=[{"sku": "W" * 33, "quantity": 1}]), "lines[0].sku", None),
        (
            with_(lines=[{"sku": "WIDGET-1", "quantity": 0}]),
            "lines[0].quantity",
            "must be from 1 to 1000",
        ),
        (
            with_(lines=[{"sku": "WIDGET-1", "quantity": -3}]),
            "lines[0].quantity",
            "must be from 1 to 1000",
        ),
        (
            with_(lines=[{"sku": "WIDGET-1", "quantity": 1001}]),
            "lines[0].quantity",
            "must be from 1 to 1000",
        ),
        (
            with_(lines=[{"sku": "WIDGET-1", "quantity": 1.5}]),
            "lines[0].quantity",
            "must be an integer",
        ),
        (
            with_(lines=[{"sku": "WIDGET-1", "quantity": "2"}]),
            "lines[0].quantity",
            "must be an integer",
        ),
        (
            with_(lines=[{"sku": "WIDGET-1", "quantity": True}]),
            "lines[0].quantity",
            "must be an integer",
        ),
        (
            with_(lines=[{"sku": "WIDGET-1", "quantity": 1}, {"sku": "WIDGET-1", "quantity": 2}]),
            "lines[1].sku",
            "must not repeat a SKU of an earlier line",
        ),
    ],
)
def test_each_rule_names_field_and_rule(data: Any, field: str, rule: str | None) -> None:
    got_field, got_rule = refusal(data)
    assert got_field == field
    if rule is not None:
        assert got_rule == rule


def test_the_error_never_echoes_the_value() -> None:
    secret_token = "card-4111-1111-1111-1111"
    with pytest.raises(OrderInputError) as info:
        parse_order(with_(payment_token=secret_token))
    assert secret_token not in str(info.value)
    assert str(info.value).startswith("payment_token: ")


def test_check_order_refuses_an_order_built_around_the_parser() -> None:
    order = parse_order(GOOD)
    bad = Order(**{**order.__dict__, "lines": (OrderLine("WIDGET-1", 0),)})
    with pytest.raises(OrderInputError, match=r"lines\[0\]\.quantity"):
        check_order(bad)
