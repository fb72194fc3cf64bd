"""``orders-bootstrap plan``: the diff of what the code declares and what the servers hold.

Unit tests of the pure diff, then the real stack: a fresh bootstrap plans clean; a change
made by hand in Vault or PostgreSQL shows in ``plan`` with its diff and ``apply`` undoes
it; what someone else made is reported and left alone. Every test puts the shared stack
back as the bootstrap defines it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import hvac
import hvac.exceptions
import pytest

from orders_ops import pki
from orders_ops import plan as plan_mod
from orders_ops.bootstrap import bootstrap
from orders_ops.plan import (
    EXIT_DRIFT,
    EXIT_IN_SYNC,
    EXIT_UNMANAGED,
    POLICY,
    TRANSIT_KEY,
    Item,
    _vault_read,
    declared,
    diff,
    plan,
)
from orders_ops.policies import (
    all_policies,
    body_hash,
    service_policy,
    split_hash_header,
    transit_keys,
    with_hash_header,
)
from orders_ops.settings import StackSettings
from orders_ops.stack import Stack
from orders_shared.catalog import SERVICES

# --------------------------------------------------------------------------- the pure diff


def _desc(*items: Item) -> dict[tuple[str, str], Item]:
    return {(i.kind, i.name): i for i in items}


def test_diff_names_each_kind_of_difference() -> None:
    want = _desc(
        Item("k", "same", {"a": 1}),
        Item("k", "missing", {"a": 1}),
        Item("k", "changed", {"a": 1, "list": ["x", "y"]}),
    )
    have = _desc(
        Item("k", "same", {"a": 1}),
        Item("k", "changed", {"a": 2, "list": ["x", "z"]}),
        Item("k", "ours-undeclared", {}, owned=True),
        Item("k", "theirs", {}, owned=False, note="made by hand"),
    )
    result = diff(want, have)
    by_name = {e.name: e for e in result.entries}
    assert result.in_sync == [("k", "same")]
    assert by_name["missing"].action == "missing"
    assert by_name["changed"].action == "changed"
    assert by_name["changed"].lines == (
        "a: declared 1, server has 2",
        "list:",
        '  - "y" (declared, not on the server)',
        '  + "z" (on the server, not declared)',
    )
    assert by_name["ours-undeclared"].action == "removed"
    assert by_name["theirs"].action == "unmanaged"
    assert by_name["theirs"].lines == ("made by hand",)
    assert result.exit_code() == EXIT_DRIFT


def test_exit_codes_in_sync_and_strict() -> None:
    same = _desc(Item("k", "a", {"x": 1}))
    assert diff(same, same).exit_code() == EXIT_IN_SYNC
    foreign = {**same, **_desc(Item("k", "b", {}, owned=False))}
    assert diff(same, foreign).exit_code() == EXIT_IN_SYNC
    assert diff(same, foreign).exit_code(strict=True) == EXIT_UNMANAGED


def test_policy_hash_header_names_the_version_and_a_hand_edit() -> None:
    text = all_policies()["orders-validate"]
    header, body = split_hash_header(text)
    assert header == body_hash(body) and text.startswith("# orders-policy-sha256: ")
    edited = text + 'path "sys/*" {\n  capabilities = ["sudo"]\n}\n'
    result = diff(
        _desc(Item(POLICY, "p", {"policy": text})), _desc(Item(POLICY, "p", {"policy": edited}))
    )
    (entry,) = result.entries
    assert '  +path "sys/*" {' in entry.lines
    assert f"in force: sha256 {header[:12]} (header)" in entry.lines
    assert any(line.startswith("edited by hand: the body hashes to") for line in entry.lines)
    # a policy rewritten with a fresh header is not "edited by hand", only another version
    rewritten = diff(
        _desc(Item(POLICY, "p", {"policy": text})),
        _desc(Item(POLICY, "p", {"policy": with_hash_header(body + "# more\n")})),
    )
    assert not any("edited by hand" in line for line in rewritten.entries[0].lines)


def test_every_declared_policy_carries_its_hash_header() -> None:
    for name, text in all_policies().items():
        header, body = split_hash_header(text)
        assert header == body_hash(body), name


def test_declared_comes_from_the_declarations_apply_writes(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = stack.settings  # the local issuer's public key is declared: needs the stack
    want = declared(settings)
    assert {n for k, n in want if k == POLICY} == set(all_policies())
    assert {n.rsplit("/", 1)[1] for k, n in want if k == TRANSIT_KEY} == set(transit_keys())
    # a key added to the declarations is planned too, with no change to plan
    monkeypatch.setattr(
        "orders_ops.policies.transit_keys", lambda: (*transit_keys(), "orders-new-key")
    )
    assert (TRANSIT_KEY, "transit/keys/orders-new-key") in declared(settings)


# --------------------------------------------------------------------------- the real stack


@pytest.fixture(scope="module")
def root(stack: Stack) -> hvac.Client:
    client = hvac.Client(url=stack.settings.vault_addr, token=stack.settings.root_token())
    assert client.is_authenticated()
    return client


@pytest.fixture
def converged(stack: Stack) -> Iterator[StackSettings]:
    """The stack as the bootstrap defines it, before and after the test."""
    bootstrap(stack.settings)
    yield stack.settings
    bootstrap(stack.settings)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("orders-bootstrap")), *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
        check=False,
    )


def _sql(settings: StackSettings, *statements: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(settings.admin_dsn(settings.database))
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def _entry(result: plan_mod.Plan, kind: str, name: str) -> plan_mod.Entry:
    found = [e for e in result.entries if (e.kind, e.name) == (kind, name)]
    assert found, f"{kind} {name} not in the plan:\n{result.render()}"
    return found[0]


@pytest.mark.stack
def test_fresh_bootstrap_plans_clean_and_a_widened_policy_is_planned_then_undone(
    converged: StackSettings, root: hvac.Client
) -> None:
    clean = _cli("plan")
    assert clean.returncode == EXIT_IN_SYNC, clean.stdout + clean.stderr
    assert clean.stdout.startswith("in sync: "), clean.stdout

    declared_text = service_policy(SERVICES["validate"])
    widened = declared_text + 'path "sys/*" {\n  capabilities = ["sudo"]\n}\n'
    root.sys.create_or_update_policy("orders-validate", policy=widened)
    drift = _cli("plan")
    assert drift.returncode == EXIT_DRIFT, drift.stdout + drift.stderr
    out = drift.stdout
    assert "~ vault policy orders-validate: changed" in out, out
    assert '+path "sys/*" {' in out and '+  capabilities = ["sudo"]' in out, out
    assert "edited by hand: the body hashes to" in out, out
    assert out.rstrip().endswith("1 to change, 0 not made by the code"), out

    applied = _cli("apply", "-v")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    header = split_hash_header(declared_text)[0]
    assert f"vault: wrote policy orders-validate (sha256 {header})" in applied.stdout
    assert root.sys.read_policy("orders-validate")["data"]["rules"] == declared_text
    assert plan(converged).exit_code() == EXIT_IN_SYNC


@pytest.mark.stack
def test_a_grant_added_by_hand_is_planned_and_revoked(converged: StackSettings) -> None:
    _sql(converged, "GRANT DELETE ON app.orders TO order_notify")
    entry = _entry(plan(converged), "postgres group role", "order_notify")
    assert entry.action == "changed"
    assert '  + "DELETE on app.orders" (on the server, not declared)' in entry.lines, entry.lines
    bootstrap(converged)
    assert plan(converged).exit_code() == EXIT_IN_SYNC


@pytest.mark.stack
def test_a_membership_granted_by_hand_to_a_bootstrap_login_is_planned_and_revoked(
    converged: StackSettings,
) -> None:
    _sql(
        converged,
        "GRANT pg_read_all_data TO vault_admin",
        "GRANT pg_read_all_data TO order_fulfill",
    )
    result = plan(converged)
    for kind, name, inherit in (
        ("postgres role", "vault_admin", "TRUE"),
        ("postgres group role", "order_fulfill", "FALSE"),  # a NOINHERIT role's default
    ):
        assert _entry(result, kind, name).lines == (
            "memberships:",
            f'  + "pg_read_all_data (ADMIN FALSE, INHERIT {inherit}, SET TRUE)" (on the server, '
            "not declared)",
        )
    report = bootstrap(converged)
    assert "revoked pg_read_all_data from vault_admin (not declared)" in report.changes
    assert "revoked pg_read_all_data from order_fulfill (not declared)" in report.changes
    assert plan(converged).exit_code() == EXIT_IN_SYNC


@pytest.mark.stack
def test_transit_deletion_protection_turned_off_is_planned_and_turned_on(
    converged: StackSettings, root: hvac.Client
) -> None:
    key = "orders-payload-payment"
    root.secrets.transit.update_key_configuration(key, deletion_allowed=True)
    entry = _entry(plan(converged), TRANSIT_KEY, f"transit/keys/{key}")
    assert entry.lines == ("deletion_allowed: declared false, server has true",)
    report = bootstrap(converged)
    assert f"vault: transit key {key} protected from deletion again" in report.changes
    assert root.secrets.transit.read_key(key)["data"]["deletion_allowed"] is False
    assert plan(converged).exit_code() == EXIT_IN_SYNC


FOREIGN_VAULT_ROLE = "auth/jwt/role/hand-made-reporting"
FOREIGN_PG_ROLE = "hand_made_reporting"


@pytest.mark.stack
def test_roles_someone_else_made_are_reported_and_left_alone(
    converged: StackSettings, root: hvac.Client
) -> None:
    root.write_data(
        FOREIGN_VAULT_ROLE,
        data={
            "role_type": "jwt",
            "bound_audiences": ["reporting"],
            "user_claim": "sub",
            "token_policies": ["orders-payment"],
            "allowed_redirect_uris": [],
        },
    )
    _sql(
        converged,
        f"CREATE ROLE {FOREIGN_PG_ROLE} NOLOGIN",
        f"GRANT SELECT (order_id, status) ON app.orders TO {FOREIGN_PG_ROLE}",
    )
    try:
        result = plan(converged)
        vault_entry = _entry(result, "vault auth role", FOREIGN_VAULT_ROLE)
        assert vault_entry.action == "unmanaged"
        assert vault_entry.lines == ("grants policies: orders-payment",)
        pg_entry = _entry(result, "postgres role", FOREIGN_PG_ROLE)
        assert pg_entry.action == "unmanaged"
        assert pg_entry.lines == (
            "holds SELECT on app.orders(order_id), SELECT on app.orders(status)",
        )
        assert result.exit_code() == EXIT_IN_SYNC and result.exit_code(strict=True) == 3
        strict = _cli("plan", "--strict")
        assert strict.returncode == EXIT_UNMANAGED, strict.stdout + strict.stderr
        assert f"? vault auth role {FOREIGN_VAULT_ROLE}: not made by the code" in strict.stdout

        bootstrap(converged)  # apply leaves both alone
        assert root.read(FOREIGN_VAULT_ROLE)["data"]["token_policies"] == ["orders-payment"]
        still = plan(converged)
        assert _entry(still, "postgres role", FOREIGN_PG_ROLE).action == "unmanaged"
    finally:
        root.delete(FOREIGN_VAULT_ROLE)
        _sql(
            converged,
            f"REVOKE ALL ON app.orders FROM {FOREIGN_PG_ROLE}",
            f"REVOKE SELECT (order_id, status) ON app.orders FROM {FOREIGN_PG_ROLE}",
            f"DROP ROLE {FOREIGN_PG_ROLE}",
        )


@pytest.mark.stack
def test_what_the_code_made_and_no_longer_declares_is_deleted(
    converged: StackSettings, root: hvac.Client
) -> None:
    """A retired service: its policy (with the code's hash header) and its login role
    (named after it, granting only it) are deleted by apply; nothing else is."""
    retired = "orders-retired"
    root.sys.create_or_update_policy(retired, policy=with_hash_header("# retired\n"))
    jwt = root.read("auth/jwt/role/orders-validate")["data"]
    root.write_data(
        f"auth/jwt/role/{retired}",
        data={**_writable(jwt), "token_policies": [retired], "allowed_redirect_uris": []},
    )
    client_role = {**pki.roles()["client-validate"], "allowed_domains": [retired]}
    root.write_data(f"pki-orders/roles/client-{retired.removeprefix('orders-')}", data=client_role)
    try:
        result = plan(converged)
        assert _entry(result, "vault pki role", "pki-orders/roles/client-retired").action == (
            "removed"
        )
        assert _entry(result, POLICY, retired).action == "removed"
        assert _entry(result, "vault auth role", f"auth/jwt/role/{retired}").action == "removed"
        report = bootstrap(converged)
        assert f"vault: deleted policy {retired} (written by this code, no longer declared)" in (
            report.changes
        )
        assert f"vault: deleted auth/jwt/role/{retired} (no longer declared)" in report.changes
        assert "vault: deleted pki-orders/roles/client-retired (no longer declared)" in (
            report.changes
        )
        with pytest.raises(hvac.exceptions.InvalidPath):
            root.sys.read_policy(retired)
        for path in (f"auth/jwt/role/{retired}", "pki-orders/roles/client-retired"):
            assert _vault_read(root, path) is None, path
        assert plan(converged).exit_code() == EXIT_IN_SYNC
    finally:
        for path in (f"auth/jwt/role/{retired}", "pki-orders/roles/client-retired"):
            root.delete(path)
        root.sys.delete_policy(retired)


def _writable(role: dict[str, Any]) -> dict[str, Any]:
    return {
        k: role[k]
        for k in ("role_type", "bound_audiences", "user_claim", "bound_subject", "token_ttl")
    }


def test_plan_without_a_stack_says_what_is_missing_and_exits_1(tmp_path: Path) -> None:
    env = {**os.environ, "ORDERS_STATE_DIR": str(tmp_path)}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("orders-bootstrap")), "plan"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    # one line naming what is missing and the fix, no traceback
    assert done.stderr.startswith("orders-bootstrap plan: error: no identity signing key at "), (
        done.stderr
    )
    assert done.stderr.count("\n") == 1 and "orders-stack up" in done.stderr
