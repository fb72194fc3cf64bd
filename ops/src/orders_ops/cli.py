"""``orders``: submit an order and ask for its status, from a shell.

    orders submit order.json [--wait]
    orders status <order-id>

Temporal's address comes from ``TEMPORAL_ADDRESS`` (default 127.0.0.1:7233).
The CLI runs as the ``orders-client`` identity: it logs in to Vault
(``VAULT_ADDR``, default the local stack's; ``VAULT_TOKEN_FILE``, default
``<ORDERS_STATE_DIR>/identity/client/token.jwt``), seals the order's sensitive fields
to their consuming services and encrypts every payload it sends and reads.
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

from orders_ops.settings import SettingsError, StackSettings
from orders_shared.client import client_vault_config, connect, order_status, submit_order
from orders_shared.codec import TransitError, VaultTransit
from orders_shared.config import ConfigError
from orders_shared.contracts.common import Order
from orders_shared.identity import VaultLoginError, VaultSession
from orders_shared.logging import configure_logging
from orders_shared.order_input import OrderInputError, parse_order

DEFAULT_TEMPORAL_ADDRESS = "127.0.0.1:7233"
EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_NOT_COMPLETED = 0, 1, 2, 3


def _fail(code: int, message: str) -> int:
    print(f"orders: error: {message}", file=sys.stderr)
    return code


async def _vault_session() -> VaultSession:
    """Logged in as the client identity (defaults: the local stack's Vault and token file)."""
    settings = StackSettings.from_env()
    config = client_vault_config(
        default_addr=settings.vault_addr, default_token_file=settings.token_file("client")
    )
    return await VaultSession.open(config)


async def _connect(transit: VaultTransit) -> Client:
    address = os.environ.get("TEMPORAL_ADDRESS") or DEFAULT_TEMPORAL_ADDRESS
    return await connect(address, transit)


async def _with_identity(run: Any) -> int:
    """Run ``run(transit)`` logged in as the client; identity problems exit 1, clearly."""
    try:
        session = await _vault_session()
    except (ConfigError, SettingsError, VaultLoginError) as exc:
        return _fail(EXIT_ERROR, f"cannot log in to Vault as the client: {exc}")
    try:
        code: int = await run(VaultTransit(session))
        return code
    except TransitError as exc:
        return _fail(EXIT_ERROR, f"Vault refused or did not answer: {exc}")
    finally:
        await session.close()


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


async def _submit(order: Order, wait: bool, transit: VaultTransit) -> int:
    try:
        client = await _connect(transit)
        submitted = await submit_order(client, order, wait=wait, transit=transit)
    except RuntimeError as exc:  # connection failures surface as RuntimeError
        return _fail(EXIT_ERROR, f"cannot reach Temporal: {exc}")
    # the order travels sealed; print the outcome, never the sealed fields either
    _print(dataclasses.asdict(submitted))
    if submitted.result is not None and submitted.result.status != "completed":
        return EXIT_NOT_COMPLETED
    return EXIT_OK


async def _status(order_id: str, transit: VaultTransit) -> int:
    try:
        client = await _connect(transit)
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
    configure_logging("orders-cli", "WARNING")  # stdout is for JSON results only

    if args.cmd == "submit":
        order = _load_order(args.file)
        code = (
            order
            if isinstance(order, int)
            else asyncio.run(_with_identity(lambda t: _submit(order, args.wait, t)))
        )
    else:
        code = asyncio.run(_with_identity(lambda t: _status(args.order_id, t)))
    sys.exit(code)


if __name__ == "__main__":
    main()
