"""A local card-payment provider: its own process, its own ledger, a fault switch.

The payment worker talks to it over HTTP exactly as it would to a real card
API, so a test can see what the provider holds: a double charge, a refund of a
charge it never took, a charge taken while the worker died. The API has the
shape of a real one (charges and refunds created with an ``Idempotency-Key``
header, looked up by key):

``POST /v1/charges``  ``{"payment_token", "amount_cents", "currency"}``
    200 with the charge (``status`` ``approved`` or ``declined``); the same key
    again answers the first result (header ``Idempotent-Replayed: true``); the
    same key with another amount or currency is refused (409
    ``idempotency_key_reused``).
``GET /v1/charges?idempotency_key=K``
    200 with the charge, or 404 ``unknown_charge``.
``POST /v1/refunds``  ``{"charge_idempotency_key"}``
    200 with the refund of the whole charge; the same key again answers the
    first result. Refused: 404 ``unknown_charge`` (no charge under that key),
    409 ``not_charged`` (the charge was declined), 409 ``already_refunded``
    (refunded under another key).
``GET /v1/refunds?idempotency_key=K``
    200 with the refund, or 404 ``unknown_refund``.

Test cards, decided by the payment token: ``tok_decline...`` is declined,
``tok_transient...`` answers 503 to the first two requests of each key, any
other ``tok_...`` is approved. The token itself is never stored or logged.

The ledger is an append-only journal (``ledger.jsonl``, mode 0600, fsynced
before each answer) replayed at start, so a restart keeps every charge.

Faults, for tests, are set at runtime through ``/admin/faults`` (the bearer
token is written to a 0600 file at each start): ``slow`` (wait, then answer),
``error`` (500, nothing done), ``drop`` (do it, then close the connection
without an answer) and ``hold`` (do it, then hold the answer until the fault
is cleared). A fault applies to one operation (``charge``, ``refund``,
``lookup`` or ``any``) and to idempotency keys starting with ``key_prefix``,
so concurrent tests do not disturb each other. ``GET /admin/ledger`` shows the
records under a key prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import ClientSession, ClientTimeout, web

Operation = Literal["charge", "refund", "lookup"]
FAULT_KINDS = ("slow", "error", "drop", "hold")
OPERATIONS = ("charge", "refund", "lookup", "any")
TRANSIENT_FAILURES = 2
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, like real providers


@dataclass
class Charge:
    id: str
    idempotency_key: str
    status: Literal["approved", "declined"]
    amount_cents: int
    currency: str
    refund_id: str | None = None
    requests: int = 1  # how many times this key was asked to charge (retries included)
    created_at: float = field(default_factory=time.time)


@dataclass
class Refund:
    id: str
    idempotency_key: str
    charge_id: str
    charge_idempotency_key: str
    amount_cents: int
    currency: str
    requests: int = 1
    created_at: float = field(default_factory=time.time)


class Ledger:
    """Charges and refunds by idempotency key, journalled to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.charges: dict[str, Charge] = {}
        self.refunds: dict[str, Refund] = {}
        self.transient_seen: dict[str, int] = {}  # not journalled: test-card behaviour only
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.parent.chmod(0o700)
        self._load()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
        self._fd = fd

    def _load(self) -> None:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                kind = entry.pop("type")
                if kind == "charge":
                    c = Charge(**entry)
                    self.charges[c.idempotency_key] = c
                elif kind == "refund":
                    r = Refund(**entry)
                    self.refunds[r.idempotency_key] = r
            except (ValueError, TypeError, KeyError) as exc:
                if n == len(lines):  # a torn last line from a crash mid-write: drop it
                    break
                raise SystemExit(
                    f"provider-sim: ledger {self.path} line {n} is unreadable "
                    f"({type(exc).__name__}); restore the file or move it away"
                ) from None

    def save(self, *records: Charge | Refund) -> None:
        out = b"".join(
            json.dumps(
                {"type": "charge" if isinstance(r, Charge) else "refund", **asdict(r)}
            ).encode()
            + b"\n"
            for r in records
        )
        os.write(self._fd, out)
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


@dataclass(eq=False)  # identity, so a fault can sit in a set
class Fault:
    id: str
    kind: str
    on: str
    key_prefix: str
    remaining: int | None  # None: until cleared
    delay_seconds: float
    released: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "on": self.on,
            "key_prefix": self.key_prefix,
            "remaining": self.remaining,
            "delay_seconds": self.delay_seconds,
        }


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


def _log(event: str, **fields: Any) -> None:
    """One JSON line per ledger change: keys, statuses, amounts; never a token."""
    print(json.dumps({"event": event, "ts": round(time.time(), 3), **fields}), file=sys.stderr)


class ProviderSimulator:
    def __init__(self, ledger: Ledger, admin_token: str) -> None:
        self.ledger = ledger
        self.admin_token = admin_token
        self.faults: list[Fault] = []
        self.holding: set[Fault] = set()  # hold faults with an answer waiting (used up or not)

    # -- faults --------------------------------------------------------------------
    def _fault_for(self, op: Operation, key: str) -> Fault | None:
        for fault in self.faults:
            if fault.on in (op, "any") and key.startswith(fault.key_prefix):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self.faults.remove(fault)
                return fault
        return None

    async def _with_faults(
        self,
        request: web.Request,
        op: Operation,
        key: str,
        handle: Callable[[], Awaitable[web.Response]],
    ) -> web.StreamResponse:
        fault = self._fault_for(op, key)
        if fault is None:
            return await handle()
        _log("fault", kind=fault.kind, operation=op, idempotency_key=key)
        if fault.kind == "error":
            return _error(500, "simulated_error", "simulated provider error (fault switch)")
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay_seconds)
            return await handle()
        response = await handle()  # the ledger is written before anything below
        if fault.kind == "hold":
            self.holding.add(fault)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fault.released.wait(), fault.delay_seconds)
            finally:
                self.holding.discard(fault)
            return response
        # drop: the work is done and journalled, the caller never hears of it
        if request.transport is not None:
            request.transport.abort()
        return response

    # -- public API ----------------------------------------------------------------
    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid_request", "the body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "invalid_request", "the body must be a JSON object")
        return body

    @staticmethod
    def _idempotency_key(request: web.Request) -> str | web.Response:
        key = request.headers.get("Idempotency-Key", "")
        if not _KEY.match(key):
            return _error(400, "invalid_request", "an Idempotency-Key header is required")
        return key

    async def create_charge(self, request: web.Request) -> web.StreamResponse:
        key = self._idempotency_key(request)
        if isinstance(key, web.Response):
            return key
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        token, amount, currency = (
            body.get("payment_token"),
            body.get("amount_cents"),
            body.get("currency"),
        )
        if not isinstance(token, str) or not token.startswith("tok_"):
            return _error(400, "invalid_request", "payment_token must be a tok_... token")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            return _error(400, "invalid_request", "amount_cents must be a positive integer")
        if not isinstance(currency, str) or not _CURRENCY.match(currency):
            return _error(400, "invalid_request", "currency must be three capital letters")

        async def handle() -> web.Response:
            existing = self.ledger.charges.get(key)
            if existing is not None:
                if (existing.amount_cents, existing.currency) != (amount, currency):
                    return _error(
                        409,
                        "idempotency_key_reused",
                        "this idempotency key was used for another amount or currency",
                    )
                existing.requests += 1
                self.ledger.save(existing)
                return web.json_response(asdict(existing), headers={"Idempotent-Replayed": "true"})
            if token.startswith("tok_transient"):
                seen = self.ledger.transient_seen.get(key, 0)
                if seen < TRANSIENT_FAILURES:
                    self.ledger.transient_seen[key] = seen + 1
                    return _error(503, "unavailable", "temporarily unavailable (test card)")
            charge = Charge(
                id=f"ch_{secrets.token_hex(12)}",
                idempotency_key=key,
                status="declined" if token.startswith("tok_decline") else "approved",
                amount_cents=amount,
                currency=currency,
            )
            self.ledger.charges[key] = charge
            self.ledger.save(charge)
            _log("charge", idempotency_key=key, status=charge.status, amount_cents=amount)
            return web.json_response(asdict(charge))

        return await self._with_faults(request, "charge", key, handle)

    async def get_charge(self, request: web.Request) -> web.StreamResponse:
        key = request.query.get("idempotency_key", "")

        async def handle() -> web.Response:
            charge = self.ledger.charges.get(key)
            if charge is None:
                return _error(404, "unknown_charge", "no charge under this idempotency key")
            return web.json_response(asdict(charge))

        return await self._with_faults(request, "lookup", key, handle)

    async def create_refund(self, request: web.Request) -> web.StreamResponse:
        key = self._idempotency_key(request)
        if isinstance(key, web.Response):
            return key
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        charge_key = body.get("charge_idempotency_key")
        if not isinstance(charge_key, str) or not charge_key:
            return _error(400, "invalid_request", "charge_idempotency_key is required")

        async def handle() -> web.Response:
            existing = self.ledger.refunds.get(key)
            if existing is not None:
                if existing.charge_idempotency_key != charge_key:
                    return _error(
                        409,
                        "idempotency_key_reused",
                        "this idempotency key was used to refund another charge",
                    )
                existing.requests += 1
                self.ledger.save(existing)
                return web.json_response(asdict(existing), headers={"Idempotent-Replayed": "true"})
            charge = self.ledger.charges.get(charge_key)
            if charge is None:
                _log("refund_refused", idempotency_key=key, reason="unknown_charge")
                return _error(404, "unknown_charge", "no charge under this idempotency key")
            if charge.status != "approved":
                _log("refund_refused", idempotency_key=key, reason="not_charged")
                return _error(409, "not_charged", "the charge was declined: nothing was taken")
            if charge.refund_id is not None:
                _log("refund_refused", idempotency_key=key, reason="already_refunded")
                return _error(409, "already_refunded", "the charge is already refunded")
            refund = Refund(
                id=f"re_{secrets.token_hex(12)}",
                idempotency_key=key,
                charge_id=charge.id,
                charge_idempotency_key=charge_key,
                amount_cents=charge.amount_cents,
                currency=charge.currency,
            )
            charge.refund_id = refund.id
            self.ledger.refunds[key] = refund
            self.ledger.save(refund, charge)
            _log("refund", idempotency_key=key, amount_cents=refund.amount_cents)
            return web.json_response(asdict(refund))

        return await self._with_faults(request, "refund", key, handle)

    async def get_refund(self, request: web.Request) -> web.StreamResponse:
        key = request.query.get("idempotency_key", "")

        async def handle() -> web.Response:
            refund = self.ledger.refunds.get(key)
            if refund is None:
                return _error(404, "unknown_refund", "no refund under this idempotency key")
            return web.json_response(asdict(refund))

        return await self._with_faults(request, "lookup", key, handle)

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    # -- admin (tests) -------------------------------------------------------------
    def _authorised(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.admin_token}".encode())

    @web.middleware
    async def admin_guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.startswith("/admin") and not self._authorised(request):
            return _error(401, "unauthorised", "the admin endpoints need the per-start token")
        return await handler(request)

    async def add_fault(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        kind, on = body.get("kind"), body.get("on", "any")
        times = body.get("times")
        delay = body.get("delay_seconds", 300.0 if kind == "hold" else 2.0)
        if kind not in FAULT_KINDS:
            return _error(400, "invalid_request", f"kind must be one of {', '.join(FAULT_KINDS)}")
        if on not in OPERATIONS:
            return _error(400, "invalid_request", f"on must be one of {', '.join(OPERATIONS)}")
        if times is not None and (not isinstance(times, int) or times < 1):
            return _error(400, "invalid_request", "times must be a positive integer or absent")
        if not isinstance(delay, int | float) or not 0 <= delay <= 3600:
            return _error(400, "invalid_request", "delay_seconds must be from 0 to 3600")
        prefix = body.get("key_prefix", "")
        if not isinstance(prefix, str):
            return _error(400, "invalid_request", "key_prefix must be a string")
        fault = Fault(
            id=f"flt_{secrets.token_hex(6)}",
            kind=kind,
            on=on,
            key_prefix=prefix,
            remaining=times,
            delay_seconds=float(delay),
        )
        self.faults.append(fault)
        return web.json_response(fault.public())

    async def list_faults(self, _request: web.Request) -> web.Response:
        return web.json_response([f.public() for f in self.faults])

    async def clear_faults(self, request: web.Request) -> web.Response:
        prefix = request.query.get("key_prefix")
        cleared = [f for f in self.faults if prefix is None or f.key_prefix == prefix]
        for fault in cleared:
            self.faults.remove(fault)
        for fault in [*cleared, *self.holding]:
            if prefix is None or fault.key_prefix == prefix:
                fault.released.set()  # a held answer goes out now
        return web.json_response({"cleared": len(cleared)})

    async def show_ledger(self, request: web.Request) -> web.Response:
        prefix = request.query.get("key_prefix", "")
        return web.json_response(
            {
                "charges": [
                    asdict(c) for k, c in self.ledger.charges.items() if k.startswith(prefix)
                ],
                "refunds": [
                    asdict(r) for k, r in self.ledger.refunds.items() if k.startswith(prefix)
                ],
            }
        )

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.admin_guard])
        app.router.add_post("/v1/charges", self.create_charge)
        app.router.add_get("/v1/charges", self.get_charge)
        app.router.add_post("/v1/refunds", self.create_refund)
        app.router.add_get("/v1/refunds", self.get_refund)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_post("/admin/faults", self.add_fault)
        app.router.add_get("/admin/faults", self.list_faults)
        app.router.add_delete("/admin/faults", self.clear_faults)
        app.router.add_get("/admin/ledger", self.show_ledger)

        async def release_all(_app: web.Application) -> None:
            for fault in [*self.faults, *self.holding]:
                fault.released.set()

        app.on_shutdown.append(release_all)
        return app


# --------------------------------------------------------------------------- test client


class ProviderAdmin:
    """What a test uses to set faults and read the ledger (with the per-start token)."""

    def __init__(self, url: str, token_file: Path) -> None:
        self.url = url.rstrip("/")
        self.token_file = token_file

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token_file.read_text().strip()}"}
        async with (
            ClientSession(timeout=ClientTimeout(total=10)) as session,
            session.request(method, f"{self.url}{path}", headers=headers, **kwargs) as resp,
        ):
            if resp.status != 200:
                raise RuntimeError(f"provider admin {method} {path}: HTTP {resp.status}")
            return await resp.json()

    async def fault(
        self,
        kind: str,
        *,
        on: str = "any",
        key_prefix: str = "",
        times: int | None = None,
        delay_seconds: float | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": kind, "on": on, "key_prefix": key_prefix}
        if times is not None:
            body["times"] = times
        if delay_seconds is not None:
            body["delay_seconds"] = delay_seconds
        result: dict[str, Any] = await self._call("POST", "/admin/faults", json=body)
        return result

    async def clear(self, key_prefix: str | None = None) -> int:
        params = {} if key_prefix is None else {"key_prefix": key_prefix}
        result = await self._call("DELETE", "/admin/faults", params=params)
        return int(result["cleared"])

    async def ledger(self, key_prefix: str) -> dict[str, list[dict[str, Any]]]:
        result: dict[str, list[dict[str, Any]]] = await self._call(
            "GET", "/admin/ledger", params={"key_prefix": key_prefix}
        )
        return result


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m orders_ops.provider_sim",
        description="Local card-payment provider with a persistent ledger and a fault switch.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--state-dir", type=Path, required=True, help="holds ledger.jsonl")
    parser.add_argument(
        "--admin-token-file", type=Path, required=True, help="written (0600) at each start"
    )
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        parser.error("the simulator listens on loopback only (--host 127.0.0.1)")

    from orders_ops.secretfiles import write_secret

    token = secrets.token_urlsafe(24)
    write_secret(args.admin_token_file, token)
    ledger = Ledger(args.state_dir / "ledger.jsonl")
    sim = ProviderSimulator(ledger, token)
    _log(
        "started",
        port=args.port,
        charges=len(ledger.charges),
        refunds=len(ledger.refunds),
    )
    try:
        web.run_app(
            sim.app(),
            host=args.host,
            port=args.port,
            print=None,
            access_log=None,
            shutdown_timeout=2,
        )
    finally:
        ledger.close()


if __name__ == "__main__":
    main()
