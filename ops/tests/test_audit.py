"""``orders-audit``: the report from Vault's real audit log after a run of orders, and
the flag rules on planted entries (each rule shown to fire)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest

from orders_ops.audit import (
    analyse,
    bootstrap_end,
    declared,
    parse_since,
    read_entries,
    render,
    role_hashes,
    time_key,
)
from orders_ops.chaos import Harness, Options
from orders_ops.identities import local_session, probe_sessions
from orders_ops.policies import seal_key
from orders_ops.stack import Stack
from orders_shared.catalog import SERVICES

INJECTED = "DENIED orders-notify: read database/creds/order-process-payment"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def _orders(stack: Stack) -> None:
    harness = Harness(stack, Options(json_path=None), say=lambda _line: None)
    try:
        await harness.open()
        await harness.warm_up()  # one order of each scenario, as the client identity
    finally:
        await harness.close()


async def _out_of_role(stack: Stack) -> None:
    session = await local_session(stack.settings, "notify")
    try:
        with pytest.raises(hvac.exceptions.Forbidden):
            await session.call(
                session.client.secrets.database.generate_credentials, "order-process-payment"
            )
    finally:
        await session.close()


@pytest.mark.stack
async def test_the_report_after_orders_shows_each_service_only_in_its_role(stack: Stack) -> None:
    s = stack.settings
    path = s.state_dir / "vault" / "audit.log"
    were_running = any(w.pid() is not None for w in stack.workers)
    # fresh workers: their logins, credentials and data keys all fall in the window (and
    # the shutdown of workers an earlier test may have disturbed falls before it)
    await asyncio.to_thread(stack.workers_down, lambda _line: None)
    since = _now()
    await asyncio.to_thread(stack.workers_up, 90, lambda _line: None)
    try:
        await _orders(stack)
        await _out_of_role(stack)
    finally:
        if not were_running:
            await asyncio.to_thread(stack.workers_down, lambda _line: None)
    hashes = await asyncio.to_thread(role_hashes, s)
    report = analyse(
        read_entries(path),
        role_hashes=hashes,
        since=since,
        root_allowed_until=bootstrap_end(read_entries(path)),
    )
    print(render(report))
    roles = declared()
    for spec in SERVICES.values():
        mine = report.identities.get(spec.identity)
        assert mine is not None, f"{spec.identity} missing from the report"
        assert mine.logins >= 1
        assert set(mine.credentials) == set(spec.db_roles)  # all its own, nothing else
        assert {k.split()[1] for k in mine.transit} <= roles[spec.identity][1]
    assert report.identities["orders-client"].transit  # seals and data keys of the client
    # the one thing flagged is the injected out-of-role request
    assert len(report.flags) == 1, report.flags
    assert INJECTED in report.flags[0]
    assert report.identities["orders-notify"].denied == {
        "read database/creds/order-process-payment": 1
    }


# ------------------------------------------------------------------ the rules, on planted entries


def _req(who: str, path: str, *, op: str = "read", allowed: bool = True, when: str = "T2") -> Any:
    auth: dict[str, Any] = {
        "client_token": f"tok-{who}",
        "accessor": f"acc-{who}",
        "policy_results": {"allowed": allowed},
    }
    if who == "root":
        auth.update(display_name="root", policies=["root"])
    elif who:
        auth.update(display_name=f"jwt-{who}", metadata={"role": who})
    return {
        "time": when,
        "type": "request",
        "auth": auth,
        "request": {"path": path, "operation": op},
    }


def test_a_credential_of_another_role_is_flagged() -> None:
    report = analyse([_req("orders-notify", "database/creds/order-fulfill")])
    assert report.flags == ["orders-notify got a credential of another role: order-fulfill"]
    assert analyse([_req("orders-notify", "database/creds/order-notify")]).flags == []


def test_another_services_transit_key_is_flagged() -> None:
    entry = _req("orders-notify", "transit/decrypt/orders-seal-payment", op="update")
    assert "another identity's Transit key" in analyse([entry]).flags[0]


def test_an_unknown_identity_is_flagged() -> None:
    report = analyse([_req("orders-billing", "database/creds/order-notify")])
    assert any("unknown identity 'orders-billing'" in f for f in report.flags)


def test_root_is_flagged_only_after_the_bootstrap() -> None:
    entries = [
        _req("root", "auth/oidc-readers/role/payload-reader", when="T1"),
        _req("root", "database/rotate-root/orders", op="update", when="T2"),
    ]
    end = bootstrap_end(entries)
    assert end == time_key("T1")
    report = analyse(entries, root_allowed_until=end)
    assert report.flags == [
        "T2 root token used after the bootstrap: update database/rotate-root/orders"
    ]


def test_a_refused_login_is_flagged_and_named_by_its_hash() -> None:
    entry = {
        "time": "T3",
        "type": "response",
        "auth": {},
        "request": {"path": "auth/jwt/login", "operation": "update", "data": {"role": "h1"}},
        "response": {"data": {"error": "hmac"}},
    }
    report = analyse([entry], role_hashes={"h1": "orders-payment"})
    assert report.flags == ["T3 refused login at auth/jwt/login as orders-payment"]


def test_a_revoked_tokens_requests_are_named_by_its_accessor() -> None:
    seen = _req("orders-fulfill", "auth/token/lookup-self", when="T1")
    later = {
        "time": "T2",
        "type": "request",
        "auth": {"policy_results": {"allowed": False}},
        "request": {
            "path": "database/creds/order-fulfill",
            "client_token": "tok-orders-fulfill",
        },
        "error": "permission denied",
    }
    report = analyse([seen, later], since="T2")
    assert "orders-fulfill (revoked or expired token)" in report.identities


def test_times_compare_whatever_their_precision() -> None:
    # a person types seconds, Vault writes nanoseconds: 11:23:30.86 is after 11:23:30
    assert time_key("2026-12-01T11:23:30.860000001Z") > time_key("2026-12-01T11:23:30Z")
    late = _req("orders-notify", "database/creds/order-payment", when="2026-12-01T11:23:30.86Z")
    assert analyse([late], since="2026-12-01T11:23:30Z").flags != []
    assert analyse([late], since="2026-12-01T11:23:31Z").flags == []


# ------------------------------------------------------- the demo's probes, and genuine denials


def _audit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("orders-audit")
    return subprocess.run(
        [str(cli), *args], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )


async def _decrypt(session: Any, key: str) -> None:
    # a sealed-looking value of another service's key: the policy refuses before the data
    with pytest.raises(hvac.exceptions.Forbidden):
        await session.call(session.client.secrets.transit.decrypt_data, key, "vault:v1:" + "A" * 44)


@pytest.mark.stack
async def test_probe_denials_audit_clean_and_a_workers_own_denial_still_flags(
    stack: Stack,
) -> None:
    s = stack.settings
    since = _now()
    # the demo's probes: each identity tries another's seal key, with a marked probe token
    async with probe_sessions(s, ["notify", "fulfill"], "orders-demo") as sessions:
        for session in sessions.values():
            await _decrypt(session, seal_key("payment"))
    clean = _audit_cli("--since", since, "--strict")
    assert clean.returncode == 0, clean.stdout[-3000:] + clean.stderr
    assert "denied to a probe (expected, not flagged): 1" in clean.stdout
    assert "flags: 0" in clean.stdout
    # the same request with the worker's own token (no probe claim) is a genuine denial
    mark = _now()
    session = await local_session(s, "notify")
    try:
        await _decrypt(session, seal_key("payment"))
    finally:
        await session.close()
    flagged = _audit_cli("--since", mark, "--strict")
    assert flagged.returncode == 3, flagged.stdout[-3000:] + flagged.stderr
    assert f"DENIED orders-notify: update transit/decrypt/{seal_key('payment')}" in flagged.stdout


def test_a_probe_is_excused_only_for_a_denied_transit_decrypt() -> None:
    def probe(path: str, **kw: Any) -> Any:
        entry = _req("orders-notify", path, allowed=False, **kw)
        entry["auth"]["metadata"]["probe"] = "orders-demo"
        return entry

    decrypt = probe("transit/decrypt/orders-seal-payment", op="update")
    report = analyse([decrypt])
    assert report.flags == []
    assert report.identities["orders-notify"].probed == {
        "update transit/decrypt/orders-seal-payment (orders-demo)": 1
    }
    # anything else a probe token is denied is flagged like any other denial
    assert analyse([probe("database/creds/order-payment")]).flags != []
    # and the same decrypt without the mark is a genuine denial
    unmarked = _req("orders-notify", "transit/decrypt/orders-seal-payment", allowed=False)
    assert analyse([unmarked]).flags != []


@pytest.mark.parametrize("given", ["yesterday", "1h", "2026-13-01", ""])
def test_since_refuses_what_is_not_a_time_naming_the_forms(given: str) -> None:
    with pytest.raises(ValueError, match="2026-12-07T09:30:00Z"):
        parse_since(given)


def test_since_reads_dates_offsets_and_seconds_as_utc() -> None:
    assert parse_since("2026-12-07") == "2026-12-07T00:00:00.000000Z"
    assert parse_since("2026-12-07T10:30:00+01:00") == "2026-12-07T09:30:00.000000Z"
    assert parse_since("2026-12-07 09:30:05Z") == "2026-12-07T09:30:05.000000Z"


def test_the_cli_refuses_since_yesterday_naming_the_forms(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(json.dumps(_req("orders-notify", "database/creds/order-payment")) + "\n")
    # read as text, "yesterday" sorted after every entry: an empty report, exit 0
    done = _audit_cli("--since", "yesterday", "--log", str(log), "--no-resolve", "--strict")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "'yesterday' is not a time" in done.stderr
    assert "2026-12-07T09:30:00Z" in done.stderr
