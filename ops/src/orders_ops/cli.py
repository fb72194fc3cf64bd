"""``orders``: submit an order and ask for its status, from a shell.

    orders submit order.json [--wait]
    orders status <order-id>

Every address comes from the same settings as the local stack's
(:class:`orders_ops.settings.StackSettings`): Temporal from ``TEMPORAL_ADDRESS``,
else ``127.0.0.1:$ORDERS_TEMPORAL_PORT`` [7233]; Vault from ``VAULT_ADDR``,
else ``http://127.0.0.1:$ORDERS_VAULT_PORT`` [8200]; the Temporal namespace from
``TEMPORAL_NAMESPACE`` [default], as the workers read it. The CLI runs as the
``orders-client`` identity: it logs in to Vault (``VAULT_TOKEN_FILE``, default
``<ORDERS_STATE_DIR>/identity/client/token.jwt``), seals the order's sensitive fields
to their consuming services and encrypts every payload it sends and reads.

While Vault or Temporal does not answer it retries, with backoff, for up to
``ORDERS_CLIENT_DEADLINE`` seconds [60], then says which did not answer. Any wait
over 2 s (an outage, ``--wait`` for the outcome) says on stderr what it waits for,
for how long so far and how much longer: one line redrawn in place on a terminal,
a plain line every 5 s into a pipe, a log or a ``TERM=dumb`` terminal
(:mod:`orders_shared.progress`).
Exit codes: 0 ok, 1 a server did not answer, refused, or the order was not
found or conflicts with an earlier order of the same id, 2 bad input (the
message names the field and the rule), 3 with ``--wait``: the order finished
but was not completed (rejected or failed).
Output is JSON on stdout; errors are one line on stderr (after any progress lines);
the order's sensitive fields are never printed, and every echoed input is quoted and
cut short.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from orders_ops.settings import SettingsError, StackSettings
from orders_shared.client import (
    Deadline,
    OrderClientError,
    client_vault_config,
    connect,
    order_status,
    submit_order,
    until_answered,
)
from orders_shared.codec import TransitError, VaultTransit
from orders_shared.config import ConfigError, TemporalConfig, client_deadline
from orders_shared.contracts.common import Order
from orders_shared.identity import VAULT_UNAVAILABLE, VaultLoginError, VaultSession
from orders_shared.logging import configure_logging
from orders_shared.order_input import (
    ORDER_ID_RE,
    OrderInputError,
    json_depth_exceeded,
    parse_order,
)
from orders_shared.progress import WaitReporter
from orders_shared.tls import client_temporal_tls

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_NOT_COMPLETED = 0, 1, 2, 3
MAX_FILE_BYTES = 1 << 20
"""An order is a few hundred bytes; a bigger file is refused before it is parsed."""
MAX_DEPTH = 8
"""An order nests three levels (order, lines, line); deeper JSON is refused unparsed."""
MAX_NUMBER_DIGITS = 20
MAX_ECHO = 60

HELP_EPILOG = """\
an order file: see examples/order.json in the repository. The local stack seeds
the SKUs WIDGET-1, GADGET-2, GIZMO-3 (in stock) and RARE-4 (never in stock). A
payment_token starting with tok_decline is declined; a shipping_address containing
UNDELIVERABLE cannot be delivered (README.md, "Submitting orders by hand").
order_id must be new for each order: the same id with the same content is
deduplicated, with other content refused.
"""


class _Failed(Exception):
    """Stop with ``code`` after ``message`` (one line on stderr)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def quoted(value: object, limit: int = MAX_ECHO) -> str:
    """``value`` safe to print: cut to ``limit`` characters (saying how long it was),
    then quoted with every control, format or lone surrogate character escaped."""
    text = str(value)
    if len(text) > limit:
        return f"{text[:limit]!r}... ({len(text)} characters)"
    return repr(text)


def _fail(code: int, message: str) -> int:
    print(f"orders: error: {message}", file=sys.stderr)
    return code


# -------------------------------------------------------------------- reading the order file


def _too_deep(text: str) -> int | None:
    """Offset where ``text`` (JSON) nests deeper than :data:`MAX_DEPTH`, else ``None``:
    checked before parsing (``json.loads`` recurses; deep input exhausts the stack)."""
    return json_depth_exceeded(text, MAX_DEPTH)


class _BigNumber:
    """A number too long to be an order value; reported with its field, never parsed."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _parse_int(text: str) -> int | _BigNumber:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        return _BigNumber(len(text))
    return int(text)


def _parse_float(text: str) -> float | _BigNumber:
    if len(text) > MAX_NUMBER_DIGITS + 8:
        return _BigNumber(len(text))
    return float(text)


def _refuse_constant(name: str) -> Any:
    raise _Failed(EXIT_BAD_INPUT, f"invalid order: {name} is not a JSON number (RFC 8259)")


def _scan(value: Any, where: str) -> None:
    """Refuse what the JSON layer let through but no order field may hold:
    over-long numbers and text that is not valid Unicode (lone surrogates)."""
    field = where or "order"
    if isinstance(value, _BigNumber):
        raise OrderInputError(
            field, f"must be a number of at most {MAX_NUMBER_DIGITS} digits ({value.digits} given)"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise OrderInputError(field, "must be a finite number")
    if isinstance(value, str) and not _valid_unicode(value):
        raise OrderInputError(field, "must be valid Unicode text (no lone surrogates)")
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if not _valid_unicode(key):
                raise OrderInputError(path, "must be a field name in valid Unicode")
            _scan(item, path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _scan(item, f"{where}[{index}]")


def _valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _load_order(path: str) -> Order:
    """The parsed order; :class:`_Failed` (exit 2) saying what is wrong with the file."""
    name = quoted(path)
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise _Failed(EXIT_BAD_INPUT, f"cannot read {name}: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise _Failed(
            EXIT_BAD_INPUT, f"{name} is larger than {MAX_FILE_BYTES} bytes: not an order file"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Failed(
            EXIT_BAD_INPUT, f"{name} is not UTF-8 text (byte {exc.start} is not valid)"
        ) from None
    offset = _too_deep(text)
    if offset is not None:
        raise _Failed(
            EXIT_BAD_INPUT,
            f"invalid order: field 'order' must not nest deeper than {MAX_DEPTH} levels "
            f"(character {offset})",
        )
    try:
        data = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_refuse_constant,
        )
    except json.JSONDecodeError as exc:
        raise _Failed(
            EXIT_BAD_INPUT,
            f"{name} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
        ) from None
    try:
        _scan(data, "")
        return parse_order(data)
    except OrderInputError as bad:
        raise _Failed(
            EXIT_BAD_INPUT, f"invalid order: field {quoted(bad.field)} {bad.rule}"
        ) from None


# -------------------------------------------------------------------- talking to the stack


@dataclasses.dataclass(frozen=True)
class _Addresses:
    settings: StackSettings
    temporal: str
    vault: str
    namespace: str = "default"


def _addresses() -> _Addresses:
    """Every address from one place: the stack settings, each overridable by its
    standard variable (TEMPORAL_ADDRESS, VAULT_ADDR)."""
    settings = StackSettings.from_env()
    temporal = TemporalConfig.from_env(default_address=settings.temporal_address)
    vault = (os.environ.get("VAULT_ADDR") or settings.vault_addr).strip().rstrip("/")
    return _Addresses(settings, temporal.address, vault, temporal.namespace)


Run = Callable[[Client, VaultTransit, _Addresses, Deadline], Awaitable[int]]


async def _with_client(run: Run) -> int:
    """Log in to Vault as the client and connect to Temporal (both retried until the
    deadline), then ``run``; every failure becomes one line and an exit code. A wait
    over 2 s says on stderr what it waits for (:mod:`orders_shared.progress`)."""
    WaitReporter("orders", sys.stderr).install()
    try:
        where = _addresses()
        config = client_vault_config(
            default_addr=where.vault, default_token_file=where.settings.token_file("client")
        )
        deadline = Deadline(client_deadline())
    except (ConfigError, SettingsError) as exc:
        return _fail(EXIT_ERROR, f"configuration: {exc}")
    try:
        session = await until_answered(
            "Vault",
            where.vault,
            lambda: VaultSession.open(config),
            deadline,
            unavailable=lambda exc: isinstance(exc, VAULT_UNAVAILABLE),
        )
    except VaultLoginError as exc:
        return _fail(EXIT_ERROR, f"cannot log in to Vault as the client: {exc}")
    except OrderClientError as exc:
        return _fail(EXIT_ERROR, str(exc))
    try:
        transit = VaultTransit(session)
        tls = await client_temporal_tls(session)  # ORDERS_TEMPORAL_TLS=1: mTLS
        client = await connect(
            where.temporal,
            transit,
            namespace=where.namespace,  # TEMPORAL_NAMESPACE, as the workers read it
            deadline=deadline,
            tls=tls,
        )
        return await run(client, transit, where, deadline)
    except OrderClientError as exc:
        return _fail(EXIT_ERROR, str(exc))
    except TransitError as exc:
        return _fail(EXIT_ERROR, f"Vault refused or did not answer: {exc}")
    except RPCError as exc:
        code = exc.status.name if exc.status is not None else "error"
        return _fail(
            EXIT_ERROR,
            f"Temporal at {where.temporal} refused the request ({code}): "
            f"{quoted(exc.message, 200)}",
        )
    finally:
        await session.close()


def _print(data: Any) -> None:
    """Write the JSON result; a reader that went away (``| head``) is a clear error."""
    try:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # nothing more can go to stdout: point it at /dev/null so exit does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise _Failed(
            EXIT_ERROR,
            "stdout was closed before the whole result was written (the reading end of "
            "the pipe exited); read the whole output, e.g. save it to a file first",
        ) from None


async def _submit(
    order: Order,
    wait: bool,
    client: Client,
    transit: VaultTransit,
    where: _Addresses,
    deadline: Deadline,
) -> int:
    try:
        submitted = await submit_order(
            client,
            order,
            wait=wait,
            transit=transit,
            deadline=deadline,
            vault_address=where.vault,
        )
    except WorkflowFailureError as exc:
        cause = type(exc.cause).__name__ if exc.cause is not None else "no result"
        return _fail(
            EXIT_NOT_COMPLETED,
            f"order {quoted(order.order_id)} ended without a result ({cause}): "
            f"'orders status {order.order_id}' shows how",
        )
    # the order travels sealed; print the outcome, never the sealed fields either
    _print(dataclasses.asdict(submitted))
    if submitted.result is not None and submitted.result.status != "completed":
        return EXIT_NOT_COMPLETED
    return EXIT_OK


async def _status(
    order_id: str, client: Client, _transit: VaultTransit, where: _Addresses, deadline: Deadline
) -> int:
    try:
        status = await order_status(client, order_id, deadline=deadline)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return _fail(
                EXIT_ERROR, f"no order with id {quoted(order_id)} in Temporal at {where.temporal}"
            )
        raise
    _print(dataclasses.asdict(status))
    if status.problem:
        print(f"orders: warning: {status.problem}", file=sys.stderr)
    if status.retrying is not None:
        r = status.retrying
        why = (
            f"{r.failure_type}: {r.failure_message}"
            if not r.sealed
            else f"{r.failure_type} (its message is sealed: this identity may not open it)"
        )
        print(
            f"orders: {r.activity} is on attempt {r.attempt}, last failed with {why}; "
            + (f"next try at {r.next_attempt}" if r.next_attempt else f"attempt is {r.state}"),
            file=sys.stderr,
        )
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orders",
        description="Submit orders to the order workflow and ask for their status.",
        epilog="Addresses: TEMPORAL_ADDRESS and VAULT_ADDR, else the local stack's ports "
        "(ORDERS_TEMPORAL_PORT, ORDERS_VAULT_PORT). ORDERS_CLIENT_DEADLINE: seconds to "
        "ride out an outage [60].",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    submit = sub.add_parser(
        "submit",
        help="submit the order in a JSON file",
        description="Submit the order in a JSON file (at most once per order id).",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    submit.add_argument("file", help="order JSON, e.g. examples/order.json")
    submit.add_argument("--wait", action="store_true", help="wait for and print the outcome")
    status = sub.add_parser("status", help="the status, current step and outcome of an order")
    status.add_argument("order_id")
    return parser


def _run(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)  # argparse itself exits 2 on bad usage
    # stdout is for JSON results, stderr for one error line: only errors are logged
    configure_logging("orders-cli", "ERROR")
    if args.cmd == "submit":
        order = _load_order(args.file)
        return asyncio.run(_with_client(lambda c, t, w, d: _submit(order, args.wait, c, t, w, d)))
    if not ORDER_ID_RE.fullmatch(args.order_id):
        raise _Failed(
            EXIT_BAD_INPUT,
            f"{quoted(args.order_id)} is not an order id (1-64 characters of A-Z, a-z, 0-9, "
            "'_', '.', ':', '-')",
        )
    return asyncio.run(_with_client(lambda c, t, w, d: _status(args.order_id, c, t, w, d)))


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = _run(argv)
    except _Failed as failed:
        code = _fail(failed.code, failed.message)
    except KeyboardInterrupt:
        code = _fail(130, "interrupted")
    except Exception as exc:  # never a traceback (it can quote order data): type only
        code = _fail(
            EXIT_ERROR,
            f"unexpected {type(exc).__name__}: a bug in the orders CLI; please report it "
            "with the command that caused it",
        )
    sys.exit(code)


if __name__ == "__main__":
    main()
