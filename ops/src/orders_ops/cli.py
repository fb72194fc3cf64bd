"""``orders``: submit an order and ask for its status, from a shell.

    orders submit order.json [--wait]
    orders status <order-id>

Temporal's address comes from ``TEMPORAL_ADDRESS`` (default 127.0.0.1:7233).
Exit codes: 0 ok, 1 the order or Temporal could not be reached or found,
2 bad input (the message names the field and the rule), 3 with ``--wait``:
the order finished but was not completed (rejected or failed).
Output is JSON on stdout; the order's sensitive fields are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from orders_shared.client import order_status, submit_order
from orders_shared.contracts.common import Order
from orders_shared.order_input import OrderInputError, parse_order

DEFAULT_TEMPORAL_ADDRESS = "127.0.0.1:7233"
EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_NOT_COMPLETED = 0, 1, 2, 3


def _fail(code: int, message: str) -> int:
    print(f"orders: error: {message}", file=sys.stderr)
    return code


async def _connect() -> Client:
    address = os.environ.get("TEMPORAL_ADDRESS") or DEFAULT_TEMPORAL_ADDRESS
    return await Client.connect(address)


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _load_order(path: str) -> Order | int:
    """The parsed order, or the exit code after printing what is wrong with it."""
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as exc:
        return _fail(EXIT_BAD_INPUT, f"cannot read {path}: {exc.strerror}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _fail(EXIT_BAD_INPUT, f"{path} is not valid JSON ({exc})")
    try:
        return parse_order(raw)
    except OrderInputError as bad:
        return _fail(EXIT_BAD_INPUT, f"invalid order: field '{bad.field}' {bad.rule}")


async def _submit(order: Order, wait: bool) -> int:
    try:
        client = await _connect()
        submitted = await submit_order(client, order, wait=wait)
    except RuntimeError as exc:  # connection failures surface as RuntimeError
        return _fail(EXIT_ERROR, f"cannot reach Temporal: {exc}")
    _print(dataclasses.asdict(submitted))
    if submitted.result is not None and submitted.result.status != "completed":
        return EXIT_NOT_COMPLETED
    return EXIT_OK


async def _status(order_id: str) -> int:
    try:
        client = await _connect()
        status = await order_status(client, order_id)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return _fail(EXIT_ERROR, f"no order with id {order_id!r}")
        return _fail(EXIT_ERROR, f"Temporal refused the request: {exc.message}")
    except RuntimeError as exc:
        return _fail(EXIT_ERROR, f"cannot reach Temporal: {exc}")
    _print(dataclasses.asdict(status))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="orders",
        description="Submit orders to the order workflow and ask for their status.",
        epilog=f"TEMPORAL_ADDRESS selects the Temporal frontend ({DEFAULT_TEMPORAL_ADDRESS}).",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    submit = sub.add_parser("submit", help="submit the order in a JSON file")
    submit.add_argument("file", help="order JSON (see orders_shared.order_input)")
    submit.add_argument("--wait", action="store_true", help="wait for and print the outcome")
    status = sub.add_parser("status", help="the status, current step and outcome of an order")
    status.add_argument("order_id")
    args = parser.parse_args(argv)  # argparse itself exits 2 on bad usage

    if args.cmd == "submit":
        order = _load_order(args.file)
        code = order if isinstance(order, int) else asyncio.run(_submit(order, args.wait))
    else:
        code = asyncio.run(_status(args.order_id))
    sys.exit(code)


if __name__ == "__main__":
    main()
