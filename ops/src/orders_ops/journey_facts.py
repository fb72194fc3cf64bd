"""What ``orders-journey`` reads from the real servers, the same way for both setups.

Each function returns plain data (for ``artifacts/journey.json``); none of them
decides what is right (:mod:`orders_ops.journey` does).
"""

from __future__ import annotations

import contextlib
import pwd
import re
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from temporalio.client import Client

from orders_ops.demo import ACTIVITY_EVIDENCE, clear_by_design, payloads_in
from orders_ops.identities import local_session
from orders_ops.settings import HOST, StackSettings
from orders_ops.vault_bootstrap import root_client
from orders_shared.catalog import SERVICES, group_role
from orders_shared.codec import TransitDenied, VaultTransit
from orders_shared.sealing import SEALED_FIELDS, SealedFieldError, open_field

CLEAR_VALUES = {
    "email": "ada@example.com",
    "payment_token": "tok_visa_4242",
    "customer_name": "Ada Lovelace",
    "shipping_address": "12 Analytical Way",
}
"""The journey's order's sensitive values, looked for in what Temporal stores."""

_URL_PASSWORD = re.compile(r"(://[^:/@]+:)[^@]+@")


def _when(value: datetime | None) -> str:
    return "never expires" if value is None else f"{value:%Y-%m-%d %H:%M:%S %Z}".strip()


async def role_facts(conn: asyncpg.Connection, login: str) -> dict[str, Any]:
    """A login as ``pg_roles`` and ``pg_auth_members`` show it right now."""
    row = await conn.fetchrow(
        """SELECT r.rolcanlogin, r.rolvaliduntil, r.rolsuper,
                  coalesce((SELECT string_agg(g.rolname, ',' ORDER BY g.rolname)
                            FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                            WHERE m.member = r.oid), '') AS groups
           FROM pg_roles r WHERE r.rolname = $1""",
        login,
    )
    if row is None:
        return {"login": login, "exists": False}
    return {
        "login": login,
        "exists": True,
        "can_login": row["rolcanlogin"],
        "superuser": row["rolsuper"],
        "groups": row["groups"].split(",") if row["groups"] else [],
        "valid_until": _when(row["rolvaliduntil"]),
    }


async def step_logins(settings: StackSettings, order_id: str) -> list[dict[str, Any]]:
    """The login that ran each step's SQL: the audit column Postgres itself filled in
    (``DEFAULT current_user`` or a trigger), then that login in ``pg_roles``."""
    conn = await asyncpg.connect(settings.admin_dsn(settings.database))
    try:
        steps = []
        for activity, vault_role, sql in ACTIVITY_EVIDENCE:
            for (login,) in await conn.fetch(sql, order_id):
                if login:
                    facts = await role_facts(conn, login)
                    facts |= {"activity": activity, "vault_role": vault_role}
                    facts["expected_group"] = group_role(vault_role)
                    steps.append(facts)
        return steps
    finally:
        await conn.close()


async def live_sessions(settings: StackSettings, logins: list[str]) -> dict[str, int]:
    """Open sessions per login in ``pg_stat_activity`` (the pools the workers hold)."""
    conn = await asyncpg.connect(settings.admin_dsn(settings.database))
    try:
        rows = await conn.fetch(
            "SELECT usename, count(*) AS n FROM pg_stat_activity "
            "WHERE usename = ANY($1::text[]) GROUP BY usename",
            logins,
        )
        return {r["usename"]: r["n"] for r in rows}
    finally:
        await conn.close()


async def history_facts(
    settings: StackSettings, namespace: str, workflow_id: str
) -> dict[str, Any]:
    """The order's history as Temporal stores it, fetched with no codec."""
    raw = await Client.connect(settings.temporal_address, namespace=namespace)
    events = [e async for e in raw.get_workflow_handle(workflow_id).fetch_history_events()]
    encodings: Counter[str] = Counter()
    by_design = 0  # the outcome search attributes and their patch marker (demo.clear_by_design)
    for event in events:
        designed = clear_by_design(event)
        for payload in payloads_in(event):
            if payload.SerializeToString() in designed:
                by_design += 1
                continue
            encodings[payload.metadata.get("encoding", b"").decode(errors="replace")] += 1
    blob = b"".join(e.SerializeToString() for e in events)
    return {
        "namespace": namespace,
        "workflow_id": workflow_id,
        "events": len(events),
        "payload_encodings": dict(sorted(encodings.items())),
        "outcome_attributes_in_the_clear": by_design,
        "in_the_clear": {f: v.encode() in blob for f, v in CLEAR_VALUES.items()},
    }


def _redact(name: str, value: str) -> str:
    if _URL_PASSWORD.search(value):
        return _URL_PASSWORD.sub(r"\1[redacted]@", value)
    return "[redacted]" if value else ""


def environment_facts(name: str, pid: int | None, secrets: dict[str, str]) -> dict[str, Any]:
    """What one worker process's environment holds (``/proc/<pid>/environ``), values
    redacted; ``secrets`` (label -> value) says which of them are in it."""
    if pid is None:
        return {"worker": name, "running": False}
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    pairs = [item.split("=", 1) for item in raw.split("\0") if "=" in item]
    found = sorted(label for label, value in secrets.items() if value and value in raw)
    holders = sorted(k for k, v in pairs if any(s and s in v for s in secrets.values()))
    return {
        "worker": name,
        "running": True,
        "pid": pid,
        "user": pwd.getpwuid(Path(f"/proc/{pid}").stat().st_uid).pw_name,
        "variables": {k: _redact(k, v) for k, v in sorted(pairs)},
        "secrets_found": found,
        "held_in": holders,
    }


async def _try_read(conn: asyncpg.Connection, sql: str, *args: Any) -> dict[str, Any]:
    try:
        value = await conn.fetchval(sql, *args)
    except asyncpg.PostgresError as exc:
        return {"allowed": False, "error": type(exc).__name__}
    return {"allowed": True, "value": value}


READS = {
    "payments": "SELECT count(*) FROM app.payments",
    "customer_emails": "SELECT count(email) FROM app.customer_contacts",
}
ORDER_EMAIL = "SELECT email FROM app.customer_contacts WHERE order_id=$1"


async def _connect_as(settings: StackSettings, user: str, password: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=HOST,
        port=settings.postgres_port,
        database=settings.database,
        user=user,
        password=password,
    )


async def what_it_reaches(
    settings: StackSettings, user: str, password: str, order_id: str
) -> dict[str, Any]:
    conn = await _connect_as(settings, user, password)
    try:
        reach = {what: await _try_read(conn, sql) for what, sql in READS.items()}
        reach["this_order_email"] = await _try_read(conn, ORDER_EMAIL, order_id)
        return reach
    finally:
        await conn.close()


async def _login_refused(settings: StackSettings, user: str, password: str) -> str | None:
    """None when the login works, else the error Postgres answered with."""
    try:
        conn = await _connect_as(settings, user, password)
    except (asyncpg.PostgresError, OSError) as exc:
        return type(exc).__name__
    await conn.close()
    return None


async def stolen_static(settings: StackSettings, url: str, order_id: str) -> dict[str, Any]:
    """What the static login reaches, taken from any worker's environment."""
    user, password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)
    facts = await what_it_reaches(settings, user, password, order_id)
    conn = await asyncpg.connect(settings.admin_dsn(settings.database))
    try:
        facts["role"] = await role_facts(conn, user)
    finally:
        await conn.close()
    return facts


async def stolen_vault(
    settings: StackSettings, service: str, db_role: str, order_id: str
) -> dict[str, Any]:
    """What one Vault-issued login reaches: a credential issued to ``service``'s identity
    for ``db_role`` (as its worker holds one), then revoked as an operator would."""
    # the session stays open until the end: revoking its token would revoke the lease too
    session = await local_session(settings, service)
    conn = await asyncpg.connect(settings.admin_dsn(settings.database))
    try:
        cred = await session.call(session.client.secrets.database.generate_credentials, db_role)
        user, password = cred["data"]["username"], cred["data"]["password"]
        facts: dict[str, Any] = {"service": service, "vault_role": db_role}
        facts["lease_ttl_s"] = cred["lease_duration"]
        facts["renewable"] = cred["renewable"]
        facts["role"] = await role_facts(conn, user)
        facts |= await what_it_reaches(settings, user, password, order_id)
        root = root_client(settings)
        try:
            root.sys.revoke_lease(cred["lease_id"])
        finally:
            root.adapter.close()
        facts["after_revoke"] = {
            "login": await _login_refused(settings, user, password) or "ACCEPTED",
            "role": await role_facts(conn, user),
        }
        return facts
    finally:
        await conn.close()
        await session.close()


async def who_opens(settings: StackSettings, order: dict[str, Any]) -> dict[str, list[str]]:
    """For each sealed field of ``order``, the identities Vault lets open it (each of the six
    services and the client tries, with its own login)."""
    names = [*SERVICES, "client"]
    opened: dict[str, list[str]] = {f: [] for f in SEALED_FIELDS}
    for name in names:
        session = await local_session(settings, name)
        try:
            transit = VaultTransit(session)
            for field, consumer in SEALED_FIELDS.items():
                with contextlib.suppress(SealedFieldError, TransitDenied):
                    await open_field(
                        transit, consumer, order[field], order_id=order["order_id"], field=field
                    )
                    opened[field].append(name)
        finally:
            await session.close()
    return opened
