"""``orders-demo``: the main job, end to end on the real local stack.

Brings the stack up and bootstraps it, starts the six workers as separate
processes (each with only its own identity token), runs four orders that take
the four paths of the workflow, and prints a report built from what
PostgreSQL, Vault and the worker processes themselves show. Then it stops
everything it started, unless asked to keep it running.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from google.protobuf import json_format
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from orders_ops import codec_tls, demo_containers
from orders_ops.dockerd import DockerError
from orders_ops.identities import local_session, probe_sessions
from orders_ops.interrupt import one_line_on_interrupt
from orders_ops.issuer import mint_user
from orders_ops.settings import SettingsError, StackSettings
from orders_ops.stack import Stack, StackError
from orders_shared.catalog import SERVICES, group_role
from orders_shared.client import connect, submit_order
from orders_shared.codec import TransitDenied, VaultTransit
from orders_shared.contracts.orchestrator import OrderWorkflowResult
from orders_shared.logging import configure_logging
from orders_shared.order_input import parse_order
from orders_shared.sealing import SEALED_FIELDS, SealedFieldError, is_sealed, open_field
from orders_shared.search_attributes import PATCH_MARKER, written_in_the_clear

V, R, P, F, N = (
    "validate_order",
    "reserve_inventory",
    "process_payment",
    "fulfill_order",
    "notify_customer",
)
RELEASE, REFUND = "release_inventory", "refund_payment"


@dataclass(frozen=True)
class Expected:
    """Everything a scenario must leave behind, compared field by field with what the
    workflow returned and what PostgreSQL holds (not only the final status)."""

    status: str
    path: tuple[str, ...]
    reason_code: str | None
    reservations: str | None  # the one status every reservation row has; None: no rows
    payments: tuple[str, ...]  # "kind status" per payment row, oldest first
    shipped: bool
    notification: str  # the notification kind


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    expect: Expected
    order: dict[str, Any]


def scenarios(run: str) -> list[Scenario]:
    def order(key: str, **fields: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "order_id": f"demo-{run}-{key}",
            "customer_id": "cust-1815",
            "customer_name": "Ada Lovelace",
            "email": "ada@example.com",
            "shipping_address": "12 Analytical Way, London",
            "payment_token": "tok_visa_4242",
            "lines": [{"sku": "WIDGET-1", "quantity": 2}, {"sku": "GIZMO-3", "quantity": 1}],
        }
        base.update(fields)
        return base

    return [
        Scenario(
            "ok",
            "a successful order",
            Expected("completed", (V, R, P, F, N), None, "reserved", ("charge approved",), True,
                     "order_completed"),
            order("ok"),
        ),
        Scenario(
            "nostock",
            "out of stock",
            Expected("failed", (V, R, N), "OutOfStock", None, (), False, "order_failed"),
            order("nostock", lines=[{"sku": "RARE-4", "quantity": 1}]),
        ),
        Scenario(
            "declined",
            "payment declined (reservation released)",
            Expected("failed", (V, R, P, RELEASE, N), "PaymentDeclined", "released",
                     ("charge declined",), False, "order_failed"),
            order("declined", payment_token="tok_decline_insufficient_funds"),  # noqa: S106
        ),
        Scenario(
            "undeliverable",
            "failure after payment (refund and release)",
            Expected("failed", (V, R, P, F, REFUND, RELEASE, N), "FulfillmentFailed", "released",
                     ("charge approved", "refund approved"), False, "order_failed"),
            order("undeliverable", shipping_address="1 UNDELIVERABLE Road, Nowhere"),
        ),
    ]  # fmt: skip


async def outcome_differences(
    conn: asyncpg.Connection, expect: Expected, result: OrderWorkflowResult
) -> list[str]:
    """Every way the order's result and rows differ from what its scenario requires."""
    order_id = result.order_id
    wrong: list[str] = []

    def check(what: str, got: object, want: object) -> None:
        if got != want:
            wrong.append(f"{what}: got {got!r}, wanted {want!r}")

    check("status", result.status, expect.status)
    check("path", tuple(result.path), expect.path)
    check("reason code", result.reason_code, expect.reason_code)
    status = await conn.fetchval("SELECT status FROM app.orders WHERE order_id=$1", order_id)
    check("orders.status", status, expect.status)
    reservations = {
        r[0]
        for r in await conn.fetch("SELECT status FROM app.reservations WHERE order_id=$1", order_id)
    }
    check("reservation statuses", reservations, {expect.reservations} - {None})
    payments = tuple(
        f"{r[0]} {r[1]}"
        for r in await conn.fetch(
            "SELECT kind, status FROM app.payments WHERE order_id=$1 ORDER BY created_at",
            order_id,
        )
    )
    check("payments", payments, expect.payments)
    shipments = await conn.fetchval(
        "SELECT count(*) FROM app.shipments WHERE order_id=$1", order_id
    )
    check("shipments", shipments, 1 if expect.shipped else 0)
    notifications = [
        r[0]
        for r in await conn.fetch("SELECT kind FROM app.notifications WHERE order_id=$1", order_id)
    ]
    check("notifications", notifications, [expect.notification])
    return wrong


# ------------------------------------------------------------------------ what Postgres shows

# (activity, Vault database role, SQL giving the login role that ran that step's SQL)
ACTIVITY_EVIDENCE: tuple[tuple[str, str, str], ...] = (
    ("validate_order", "order-validate", "SELECT created_by FROM app.orders WHERE order_id=$1"),
    (
        "reserve_inventory",
        "order-reserve-inventory",
        "SELECT DISTINCT reserved_by FROM app.reservations WHERE order_id=$1",
    ),
    (
        "release_inventory",
        "order-release-inventory",
        "SELECT DISTINCT released_by FROM app.reservations "
        "WHERE order_id=$1 AND released_by IS NOT NULL",
    ),
    (
        "process_payment",
        "order-process-payment",
        "SELECT db_user FROM app.payments WHERE order_id=$1 AND kind='charge'",
    ),
    (
        "refund_payment",
        "order-process-payment",
        "SELECT db_user FROM app.payments WHERE order_id=$1 AND kind='refund'",
    ),
    ("fulfill_order", "order-fulfill", "SELECT db_user FROM app.shipments WHERE order_id=$1"),
    (
        "notify_customer",
        "order-notify",
        "SELECT db_user FROM app.notifications WHERE order_id=$1",
    ),
)


async def order_rows(conn: asyncpg.Connection, order_id: str) -> dict[str, list[str]]:
    """The rows each step left, as short readable lines."""
    out: dict[str, list[str]] = {}
    o = await conn.fetchrow(
        "SELECT status, status_reason, total_cents FROM app.orders WHERE order_id=$1", order_id
    )
    out["order"] = (
        [f"status={o['status']} total={o['total_cents'] / 100:.2f} reason={o['status_reason']}"]
        if o
        else []
    )
    out["reservations"] = [
        f"{r['sku']} x{r['quantity']} {r['status']}"
        for r in await conn.fetch(
            "SELECT sku, quantity, status FROM app.reservations WHERE order_id=$1 ORDER BY sku",
            order_id,
        )
    ]
    out["payments"] = [
        f"{r['kind']} {r['status']} {r['amount_cents'] / 100:.2f} {r['currency']}"
        for r in await conn.fetch(
            "SELECT kind, status, amount_cents, currency FROM app.payments "
            "WHERE order_id=$1 ORDER BY created_at",
            order_id,
        )
    ]
    out["shipments"] = [
        f"{r['carrier']} {r['tracking_id']}"
        for r in await conn.fetch(
            "SELECT carrier, tracking_id FROM app.shipments WHERE order_id=$1", order_id
        )
    ]
    out["notifications"] = [
        f"{r['kind']}: {r['subject']}"
        for r in await conn.fetch(
            "SELECT kind, subject FROM app.notifications WHERE order_id=$1", order_id
        )
    ]
    return out


async def activity_logins(
    conn: asyncpg.Connection, order_ids: Sequence[str]
) -> list[tuple[str, str, str, str]]:
    """(activity, Vault role, Postgres login, how Postgres knows it) for every step that ran."""
    rows: list[tuple[str, str, str, str]] = []
    for activity, vault_role, sql in ACTIVITY_EVIDENCE:
        users: set[str] = set()
        for order_id in order_ids:
            users.update(r[0] for r in await conn.fetch(sql, order_id) if r[0])
        for user in sorted(users):
            member = await conn.fetchval(
                """SELECT g.rolname FROM pg_auth_members m
                   JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
                   WHERE u.rolname = $1""",
                user,
            )
            valid = await conn.fetchval(
                "SELECT rolvaliduntil FROM pg_roles WHERE rolname=$1 AND rolcanlogin", user
            )
            if member == group_role(vault_role) and valid is not None:
                how = f"LOGIN, member of {member}, valid until {valid:%H:%M:%S}"
            elif member is None and valid is None:
                how = "already revoked by Vault"
            else:
                how = f"UNEXPECTED: member of {member}"
            rows.append((activity, vault_role, user, how))
    return rows


# ------------------------------------------------------------------------ what workers hold


def static_secrets(settings: StackSettings) -> dict[str, bytes]:
    """Every long-lived secret of the stack, to look for in the workers."""
    found = {"Vault root token": settings.root_token().encode()}
    if settings.vault_unseal_key_file.exists():
        found["Vault unseal key"] = settings.vault_unseal_key_file.read_text().strip().encode()
    for path in sorted(settings.secrets_dir.glob("postgres-*password")):
        found[f"static database password ({path.name})"] = path.read_text().strip().encode()
    return found


def _scan_memory(pid: int, needles: Sequence[bytes]) -> set[bytes]:
    hits: set[bytes] = set()
    overlap = max(len(n) for n in needles)
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5].startswith("[v")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            tail = b""
            pos = start
            while pos < end:
                size = min(4 << 20, end - pos)
                try:
                    mem.seek(pos)
                    chunk = tail + mem.read(size)
                except (OSError, OverflowError, ValueError):
                    break
                hits.update(n for n in needles if n in chunk)
                tail = chunk[-overlap:]
                pos += size
    return hits


def worker_secret_audit(stack: Stack, pids: dict[str, int | None] | None = None) -> list[str]:
    """Look for every static secret in each worker's environment, arguments and memory
    (``pids``: name -> PID of workers run otherwise, e.g. as containers)."""
    secrets = static_secrets(stack.settings)
    lines = []
    if pids is None:
        pids = {worker.name: worker.pid() for worker in stack.workers}
    for name, pid in pids.items():
        if pid is None:
            lines.append(f"{name}: NOT RUNNING")
            continue
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        in_env = {n for n, v in secrets.items() if v in environ or v in cmdline}
        try:
            in_mem = _scan_memory(pid, list(secrets.values()))
            mem_names = {n for n, v in secrets.items() if v in in_mem}
            scanned = "environment, arguments and memory"
        except PermissionError:
            mem_names = set()
            scanned = "environment and arguments (memory not readable without root)"
        names = sorted(k.split("=", 1)[0] for k in environ.decode().split("\0") if k)
        bad = in_env | mem_names
        verdict = "FOUND " + ", ".join(sorted(bad)) if bad else "none found"
        lines.append(f"{name:<20} {verdict} in {scanned}; env: {' '.join(names)}")
    return lines


# ------------------------------------------------------------------------ the run


def _say(message: str) -> None:
    print(message, flush=True)


async def run_orders(
    settings: StackSettings, run: str, say: Callable[[str], None]
) -> list[tuple[Scenario, OrderWorkflowResult]]:
    # the demo submits as the client identity: it seals the sensitive fields to their
    # consumers and encrypts every payload, exactly as 'orders submit' does
    session = await local_session(settings, "client")
    try:
        return await _run_orders(settings, run, say, VaultTransit(session))
    finally:
        await session.close()


async def _run_orders(
    settings: StackSettings, run: str, say: Callable[[str], None], transit: VaultTransit
) -> list[tuple[Scenario, OrderWorkflowResult]]:
    client = await connect(settings.temporal_address, transit)
    results: list[tuple[Scenario, OrderWorkflowResult]] = []

    async def one(s: Scenario) -> None:
        t0 = time.monotonic()
        submitted = await submit_order(client, parse_order(s.order), wait=True, transit=transit)
        assert submitted.result is not None
        results.append((s, submitted.result))
        say(
            f"  {s.order['order_id']:<28} {submitted.result.status:<10} "
            f"{time.monotonic() - t0:5.2f}s  ({s.title})"
        )

    for s in scenarios(run):
        say(f"  submitted {s.order['order_id']}: {s.title}")
    await asyncio.gather(*(one(s) for s in scenarios(run)))
    order = {s.key: i for i, s in enumerate(scenarios(run))}
    return sorted(results, key=lambda pair: order[pair[0].key])


async def report(
    stack: Stack,
    results: list[tuple[Scenario, OrderWorkflowResult]],
    say: Callable[[str], None],
    pids: dict[str, int | None] | None = None,
) -> bool:
    ok = True
    conn = await asyncpg.connect(stack.settings.admin_dsn(stack.settings.database))
    try:
        say("\n== Orders ==")
        for s, result in results:
            wrong = await outcome_differences(conn, s.expect, result)
            ok &= not wrong
            mark = "ok" if not wrong else "WRONG"
            say(f"\n{result.order_id}: {s.title} -> {result.status} [{mark}]")
            say(f"  path:    {' -> '.join(result.path)}")
            if result.reason_code:
                say(f"  reason:  {result.reason_code}: {result.reason}")
            for table, rows in (await order_rows(conn, result.order_id)).items():
                say(f"  {table + ':':<15}{'; '.join(rows) if rows else '(none)'}")
            for line in wrong:
                say(f"  WRONG {line}")

        say("\n== Who ran each step's SQL (from PostgreSQL itself) ==")
        logins = await activity_logins(conn, [r.order_id for _, r in results])
        say(f"{'activity':<19}{'Vault database role':<26}{'PostgreSQL login (Vault-issued)':<58}")
        for activity, vault_role, user, how in logins:
            say(f"{activity:<19}{vault_role:<26}{user:<58}{how}")
        distinct = {user for _, _, user, _ in logins}
        generated = all(re.match(r"^v-order-[a-z-]+-[a-z0-9]+-\d+$", u) for u in distinct)
        by_role: dict[str, set[str]] = {}
        for _, vault_role, user, _ in logins:
            by_role.setdefault(vault_role, set()).add(user)
        shared = [u for u in distinct if sum(u in users for users in by_role.values()) > 1]
        ok &= generated and not shared and not any("UNEXPECTED" in h for *_, h in logins)
        say(
            f"{len(distinct)} distinct logins for {len(by_role)} database roles; "
            f"all Vault-generated: {'yes' if generated else 'NO'}; "
            f"shared between roles: {'none' if not shared else 'YES: ' + ', '.join(shared)}"
        )
    finally:
        await conn.close()

    say("\n== Static secrets in worker processes ==")
    audit = worker_secret_audit(stack, pids)
    for line in audit:
        say(f"  {line}")
    if len(audit) != len(stack.workers):  # a scan of fewer processes proves nothing of the rest
        say(f"  SCANNED {len(audit)} worker processes of {len(stack.workers)}")
    clean = len(audit) == len(stack.workers) and all("none found" in line for line in audit)
    ok &= clean
    say(
        "No worker process holds a static database password, the root token or the unseal key."
        if clean
        else "A WORKER HOLDS A STATIC SECRET OR WAS NOT SCANNED (see above)."
    )
    return ok


# ------------------------------------------------------------------------ what history holds

SAMPLE_VALUES = ("Ada Lovelace", "ada@example.com", "12 Analytical Way", "tok_visa_4242")


PLAINTEXT_MARKERS = (*SAMPLE_VALUES, '"customer_id"', "cust-1815", "WIDGET-1", '"lines"')


def payloads_in(message: Message) -> Iterator[Payload]:
    """Every Payload inside a protobuf message (nested, repeated and map fields)."""
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            items = [v for v in value.values() if isinstance(v, Message)]
        elif field.is_repeated:
            items = list(value)
        else:
            items = [value]
        for item in items:
            if isinstance(item, Payload):
                yield item
            else:
                yield from payloads_in(item)


def clear_by_design(event: HistoryEvent) -> set[bytes]:
    """The event's payloads the order workflow stores unencrypted on purpose (serialized):
    its outcome search attributes and their patch marker, each only with the value it may
    hold (:func:`orders_shared.search_attributes.written_in_the_clear`)."""
    found: list[tuple[str, Payload]] = []
    if event.HasField("upsert_workflow_search_attributes_event_attributes"):
        fields = event.upsert_workflow_search_attributes_event_attributes
        found += list(fields.search_attributes.indexed_fields.items())
    if event.HasField("marker_recorded_event_attributes"):
        marker = event.marker_recorded_event_attributes
        if marker.marker_name == PATCH_MARKER:
            found += [(PATCH_MARKER, p) for d in marker.details.values() for p in d.payloads]
    return {p.SerializeToString() for name, p in found if written_in_the_clear(name, p)}


def unprotected_payloads(events: Sequence[HistoryEvent]) -> list[str]:
    """Each way the stored history shows data in the clear: a payload whose encoding is not
    ``binary/encrypted`` (except the outcome search attributes and their patch marker, which
    are in the clear by design and hold only the outcome word, reason type and patch id),
    or plaintext order content anywhere in the serialized events."""
    problems: list[str] = []
    count = 0
    for event in events:
        designed = clear_by_design(event)
        for payload in payloads_in(event):
            count += 1
            encoding = payload.metadata.get("encoding", b"").decode(errors="replace")
            if encoding != "binary/encrypted" and payload.SerializeToString() not in designed:
                problems.append(f"event {event.event_id}: a payload stored as {encoding!r}")
        raw = event.SerializeToString()
        problems.extend(
            f"event {event.event_id}: plaintext {m!r}"
            for m in PLAINTEXT_MARKERS
            if m.encode() in raw
        )
    if count == 0:
        problems.append("no payload found in the history (nothing was checked)")
    return problems


async def _history(settings: StackSettings, order_id: str) -> list[HistoryEvent]:
    """The order's history exactly as Temporal stores it (a client with no codec)."""
    raw = await Client.connect(settings.temporal_address)
    return [e async for e in raw.get_workflow_handle(order_id).fetch_history_events()]


async def _stored_input(settings: StackSettings, order_id: str) -> Payload:
    """The workflow input exactly as Temporal stores it (a client with no codec)."""
    raw = await Client.connect(settings.temporal_address)
    async for event in raw.get_workflow_handle(order_id).fetch_history_events():
        if event.HasField("workflow_execution_started_event_attributes"):
            payload: Payload = event.workflow_execution_started_event_attributes.input.payloads[0]
            return payload
    raise RuntimeError(f"no start event in the history of {order_id}")


def codec_decode(settings: StackSettings, payload: Payload, bearer: str) -> dict[str, Any]:
    """The payload as the stack's codec server decodes it for ``bearer`` (the demo's and the
    journey's reader). Over https (``ORDERS_TLS=1``) the server's certificate is verified
    against the stack's own CA (``codec_tls.client_context``), never the system store."""
    body = json.dumps({"payloads": [json.loads(json_format.MessageToJson(payload))]}).encode()
    request = urllib.request.Request(  # noqa: S310 (the stack's loopback codec server)
        f"{settings.codec_url}/decode",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Namespace": "default",
            "Authorization": f"Bearer {bearer}",
        },
    )
    with urllib.request.urlopen(  # noqa: S310
        request, timeout=10, context=codec_tls.client_context(settings)
    ) as resp:
        decoded = json.loads(resp.read())["payloads"][0]
    result: dict[str, Any] = json.loads(base64.b64decode(decoded["data"]))
    return result


PROBE_PURPOSE = "orders-demo"
"""The probe mark of the demo's "who can unseal which field" tokens (``issuer.PROBE_CLAIM``)."""


async def who_can_unseal(
    settings: StackSettings, order: dict[str, Any]
) -> list[tuple[str, dict[str, str]]]:
    """For each sealed field, which identity Vault lets open it (tried for real, with probe
    tokens of each identity: ``orders-audit`` counts their denials as the probe's, not as
    flags)."""
    names = [*SERVICES, "client"]
    async with probe_sessions(settings, names, PROBE_PURPOSE) as sessions:
        rows = []
        for field, consumer in SEALED_FIELDS.items():
            verdicts: dict[str, str] = {}
            for name, session in sessions.items():
                try:
                    await open_field(
                        VaultTransit(session),
                        consumer,
                        order[field],
                        order_id=order["order_id"],
                        field=field,
                    )
                    verdicts[name] = "opens"
                except TransitDenied:
                    verdicts[name] = "403"
                except SealedFieldError:
                    verdicts[name] = "refused"
            rows.append((field, verdicts))
        return rows


async def payload_report(stack: Stack, order_id: str, say: Callable[[str], None]) -> bool:
    settings = stack.settings
    stored = await _stored_input(settings, order_id)
    say(f"\n== What Temporal stores for {order_id}'s input ==")
    meta = {
        k: v.decode(errors="replace")
        for k, v in stored.metadata.items()
        if k in ("encoding", "encryption-key-id")
    }
    say(f"  metadata: {meta}")
    say(f"  data:     {base64.b64encode(stored.data).decode()[:72]}... ({len(stored.data)} bytes)")
    history_bytes = stored.SerializeToString()
    leaked = [v for v in SAMPLE_VALUES if v.encode() in history_bytes]
    say(f"  sample personal values found in it: {leaked or 'none'}")
    events = await _history(settings, order_id)
    clear = unprotected_payloads(events)
    n_payloads = sum(1 for e in events for _ in payloads_in(e))
    say(
        f"  the whole history: {len(events)} events, {n_payloads} payloads; "
        + (
            "every payload encrypted but the outcome search attributes (outcome word and "
            "reason type, in the clear by design), no order content in the clear"
            if not clear
            else "IN THE CLEAR:"
        )
    )
    for line in clear[:10]:
        say(f"    {line}")

    reader = mint_user(settings, "ada-auditor")
    decoded = await asyncio.to_thread(codec_decode, settings, stored, reader)
    order = decoded["order"]
    say("\n== What the codec server shows an authorised reader (payload-reader policy) ==")
    shown = {
        k: (v[:32] + "..." if isinstance(v, str) and is_sealed(v) else v) for k, v in order.items()
    }
    say(f"  {json.dumps(shown)}")
    say("  the order is readable; its sensitive fields stay sealed to the services that use them")

    say("\n== Who can unseal which field (each tried against Vault) ==")
    rows = await who_can_unseal(settings, order)
    names = list(rows[0][1])
    say(f"  {'field':<18}" + "".join(f"{n:<13}" for n in names))
    ok = (
        not leaked
        and not clear
        and all(isinstance(v, str) and is_sealed(v) for f, v in order.items() if f in SEALED_FIELDS)
    )
    for field, verdicts in rows:
        say(f"  {field:<18}" + "".join(f"{verdicts[n]:<13}" for n in names))
        ok &= [n for n, v in verdicts.items() if v == "opens"] == [SEALED_FIELDS[field]]
    return ok


def log_scan(stack: Stack, say: Callable[[str], None]) -> bool:
    """Every log line the workers, the codec server and the payment provider wrote: no personal
    sample value, no static secret, nothing that looks like a Vault token."""
    forbidden = [*SAMPLE_VALUES, *(v.decode() for v in static_secrets(stack.settings).values())]
    token_like = re.compile(r"\b(hvs|hvb|s)\.[A-Za-z0-9]{20,}")
    lines = 0
    hits: dict[str, int] = {}
    # every log file in the stack's log folder: workers, codec server and the servers
    # themselves (Vault, Temporal, PostgreSQL, the identity issuer)
    logs = sorted(p for p in stack.settings.log_dir.rglob("*") if p.is_file())
    for log in logs:
        try:
            text = log.read_text(errors="replace")
        except OSError as exc:
            say(f"  cannot read {log.name}: {type(exc).__name__}")
            hits[log.name] = hits.get(log.name, 0) + 1
            continue
        for line in text.splitlines():
            lines += 1
            if any(value in line for value in forbidden) or token_like.search(line):
                hits[log.name] = hits.get(log.name, 0) + 1
    found = ", ".join(f"{name}: {n}" for name, n in hits.items())
    say(
        f"\n== Logs ==\n  {lines} lines from {len(logs)} log files scanned: "
        + (
            f"line(s) with a personal value, a static secret or a token in {found}"
            if hits
            else "no line with a personal value, a static secret or a token"
        )
    )
    return not hits and lines > 0


def keep_hints(settings: StackSettings) -> list[str]:
    """What ``make demo KEEP=1`` ends with: where the UI is and what to try next."""
    return [
        "",
        "KEEP=1: stack and workers left running.",
        f"  Temporal UI: {settings.temporal_ui_url} (payloads decoded by the local codec "
        "server, sealed fields stay sealed)",
        "  try next:",
        '    eval "$(make -s env)"                                 # addresses, root token',
        "    .venv/bin/orders submit examples/order.json --wait    # an order of your own",
        "    .venv/bin/orders status example-0001                  # its step or outcome",
        "    .venv/bin/temporal workflow list                      # every order the demo ran",
        "    make status; make logs; .venv/bin/orders-audit        # servers, logs, Vault audit",
        "  'make down' stops them ('make up METRICS=1' adds Prometheus).",
    ]


@one_line_on_interrupt("orders-demo")
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="orders-demo", description=__doc__)
    parser.add_argument(
        "--keep", action="store_true", help="leave the stack and workers running afterwards"
    )
    parser.add_argument(
        "--containers",
        action="store_true",
        help="run the six workers as containers of their images (make images; CONTAINERS=1)",
    )
    args = parser.parse_args(argv)
    containers = args.containers or os.environ.get("CONTAINERS") == "1"
    fleet = None
    configure_logging("demo", "WARNING")  # the report is the output; library chatter is not
    started = time.monotonic()
    try:
        stack = Stack(StackSettings.from_env())
    except SettingsError as exc:
        sys.exit(f"orders-demo: error: {exc}")
    already = {s.name for s in stack.servers if s.pid() is not None}
    ok = False
    try:
        _say("[1/4] local stack: Temporal, OpenBao, PostgreSQL on 127.0.0.1, then bootstrap")
        stack.up(timeout=90)
        pids = None
        if containers:
            _say("[2/4] six workers, each a container of its image under its chart's contract")
            fleet = demo_containers.start(stack, _say)
            pids = demo_containers.pids(fleet)
        else:
            _say("[2/4] six workers, each a process with only its own identity token")
            stack.workers_up(timeout=90)
        run = time.strftime("%H%M%S")
        _say("[3/4] four orders")
        results = asyncio.run(run_orders(stack.settings, run, _say))
        _say("[4/4] report")
        ok = asyncio.run(report(stack, results, _say, pids))
        ok &= asyncio.run(payload_report(stack, results[0][1].order_id, _say))
        if fleet is not None:
            fleet.save_logs(stack.settings.log_dir)  # scanned below like every other log
        ok &= log_scan(stack, _say)
    except (StackError, DockerError) as exc:
        _say(f"orders-demo: error: {exc}")
    finally:
        if args.keep or os.environ.get("KEEP") == "1":
            for line in keep_hints(stack.settings):
                _say(line)
        else:
            _say("\nstopping what the demo started")
            if fleet is not None:
                demo_containers.stop(fleet)
            if not already:
                stack.down(echo=lambda _line: None)
            else:
                for server in reversed(stack.servers):
                    if server.name not in already:
                        server.stop()
    _say(f"demo {'passed' if ok else 'FAILED'} in {time.monotonic() - started:.1f}s")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
