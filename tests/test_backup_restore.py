"""``orders-runbook backup`` / ``restore`` on a stack of its own (own state folders, own
ports: the block 500 above the test stack's), never the shared test stack.

Stack A: orders complete; one order is held in flight (the payment provider refuses
its charge with HTTP 500, so the payment step retries); backup; more orders complete
after it; A stops (the bad day). Restore into a fresh state folder on the same ports,
start it with its workers, and check: every order completed before the backup is there
with its rows, the orders after it are not (a point in time), old history decodes
through the restored stack's codec server (the Transit keys came back), the held order
completes or the restore names it for an operator, stock is conserved, no charge
without an order, no duplicate. Damaged archives are refused by name.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import hvac
import pytest

from orders_ops.chaos_checks import (
    Expectation,
    check_money,
    check_rows,
    check_stock,
    read_facts,
    read_stock,
)
from orders_ops.identities import local_session
from orders_ops.provider_sim import ProviderAdmin
from orders_ops.runbook_backup import (
    MANIFEST,
    BackupError,
    backup,
    check_archive,
    clean_leases,
    restore,
)
from orders_ops.settings import StackSettings
from orders_ops.stack import Stack, _port_free, child_env, codec_endpoint
from orders_ops.vault_database import username_prefix
from orders_shared.catalog import DB_ROLES
from orders_shared.client import connect, submit_order
from orders_shared.codec import VaultTransit
from orders_shared.contracts.orchestrator import OrderWorkflowResult
from orders_shared.order_input import parse_order

pytestmark = [pytest.mark.stack]

TEMPORAL = str(Path(sys.executable).parent / "temporal")
OK = Expectation("completed", (None,), charged=True, shipped=True, holds_stock=True)
QUIET = {"echo": lambda _line: None}


def _settings(state: Path) -> StackSettings:
    """Ports 500 above the test stack's block (its Vault port is base + 200)."""
    base = StackSettings.from_env().vault_port - 200 + 500
    s = StackSettings(
        state_dir=state,
        temporal_port=base + 10,
        temporal_ui_port=base + 11,
        temporal_http_port=base + 12,
        temporal_metrics_port=base + 13,
        vault_port=base + 20,
        vault_cluster_port=base + 21,
        postgres_port=base + 30,
        worker_metrics_port=base + 40,
        codec_port=base + 50,
        provider_port=base + 60,
        prometheus_port=base + 70,
    )
    ports = [*range(base + 10, base + 14), base + 20, base + 21, base + 30, base + 50, base + 60]
    busy = [p for p in [*ports, *range(base + 40, base + 46)] if not _port_free(p)]
    if busy:
        pytest.fail(f"ports {busy} (the test stack's block + 500) are taken: free them")
    return s


def _order(oid: str, sku: str, qty: int = 1) -> dict[str, Any]:
    return {
        "order_id": oid,
        "customer_id": "cust-backup",
        "customer_name": "Grace Hopper",
        "email": "grace@example.com",
        "shipping_address": "1 Harbour Street, Arlington",
        "payment_token": "tok_visa_4242",
        "lines": [{"sku": sku, "quantity": qty}],
    }


class Orders:
    """Submits sealed orders to one stack as the client identity."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings

    async def __aenter__(self) -> Orders:
        self.session = await local_session(self.settings, "client")
        self.client = await connect(self.settings.temporal_address, VaultTransit(self.session))
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.session.close()

    async def start(self, data: dict[str, Any]) -> None:
        from orders_shared.sealing import seal_order

        order = await seal_order(parse_order(data), VaultTransit(self.session))
        await submit_order(self.client, order, wait=False)

    async def result(self, oid: str, within: float = 90) -> OrderWorkflowResult:
        handle = self.client.get_workflow_handle(oid, result_type=OrderWorkflowResult)
        return await asyncio.wait_for(handle.result(), within)


async def _product(settings: StackSettings, sku: str, on_hand: int) -> None:
    conn = await asyncpg.connect(settings.admin_dsn(settings.database))
    try:
        await conn.execute(
            "INSERT INTO app.products (sku, name, unit_price_cents) VALUES ($1, 'backup', 1250)",
            sku,
        )
        await conn.execute("INSERT INTO app.inventory (sku, on_hand) VALUES ($1, $2)", sku, on_hand)
    finally:
        await conn.close()


async def _pending_charge(settings: StackSettings, oid: str) -> None:
    timeout = 30.0
    """Until the held order's charge intent is recorded (its provider call refused)."""
    conn = await asyncpg.connect(settings.admin_dsn(settings.database))
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await conn.fetchval(
                "SELECT count(*) FROM app.payments WHERE order_id = $1 AND kind = 'charge'", oid
            ):
                return
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    raise AssertionError(f"{oid}: no charge intent recorded within {timeout}s")


def _show(settings: StackSettings, workflow_id: str, *extra: str) -> str:
    """``temporal workflow show -o json``, payload data base64-decoded."""
    out = subprocess.run(
        [
            *(TEMPORAL, "workflow", "show", "-o", "json", "-w", workflow_id),
            *("--address", settings.temporal_address, *extra),
        ],
        capture_output=True,
        timeout=60,
        check=True,
        env=child_env(HOME=tempfile.gettempdir()),
    ).stdout
    texts: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and "metadata" in node:
                texts.append(base64.b64decode(node["data"]).decode("utf-8", "replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(out))
    return "\n".join(texts)


@dataclasses.dataclass
class Scenario:
    archive: Path
    restored: StackSettings
    lines: list[str]
    before: list[str]
    after: list[str]
    held: str
    sku: str
    stock: int
    backup_seconds: float
    restore_seconds: float
    stack: Stack
    backup_said: list[str]


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    root = Path(tempfile.mkdtemp(prefix="orders-backup-test-"))  # /tmp: searchable by all
    root.chmod(0o711)
    a = _settings(root / "a")
    b = dataclasses.replace(a, state_dir=root / "b")
    stack_a, stack_b = Stack(a), Stack(b)
    tag = f"{time.strftime('%H%M%S')}{os.getpid() % 1000}"
    sku, stock = f"BACKUP-{tag}", 1000
    before = [f"bk-{tag}-before-{i}" for i in range(3)]
    after = [f"bk-{tag}-after-{i}" for i in range(2)]
    held = f"bk-{tag}-held"
    try:
        stack_a.up(timeout=90, **QUIET)
        stack_a.workers_up(timeout=120, **QUIET)

        said: list[str] = []

        async def phase_a() -> tuple[Path, float]:
            await _product(a, sku, stock)
            sim = ProviderAdmin(a.provider_url, a.provider_admin_token_file)
            async with Orders(a) as orders:
                for oid in before:
                    await orders.start(_order(oid, sku, 2))
                for oid in before:
                    assert (await orders.result(oid)).status == "completed"
                # held in flight: every charge of this order is refused (HTTP 500)
                await sim.fault("error", on="charge", key_prefix=f"{held}:")
                await orders.start(_order(held, sku, 3))
                await _pending_charge(a, held)
                t0 = time.monotonic()
                archive = backup(a, root / "backups", say=said.append)
                took = time.monotonic() - t0
                for oid in after:
                    await orders.start(_order(oid, sku, 1))
                for oid in after:
                    assert (await orders.result(oid)).status == "completed"
            return archive, took

        archive, backup_seconds = asyncio.run(phase_a())
        stack_a.down(**QUIET)  # the bad day: stack A is gone
        t0 = time.monotonic()
        # kept running: the test goes on with it (a stopped restored stack starting again
        # is what restore itself does once, and test_stack_hardening's down/up test)
        lines = restore(b, archive, say=lambda _line: None, keep_running=True)
        restore_seconds = time.monotonic() - t0
        print("\n".join(["", *said, *lines]))
        print(
            f"\nbackup {backup_seconds:.2f}s ({archive.stat().st_size} bytes), "
            f"restore {restore_seconds:.2f}s"
        )
        stack_b.up(timeout=90, **QUIET)
        stack_b.workers_up(timeout=120, **QUIET)
        yield Scenario(
            archive,
            b,
            lines,
            before,
            after,
            held,
            sku,
            stock,
            backup_seconds,
            restore_seconds,
            stack_b,
            said,
        )
    finally:
        stack_a.down(**QUIET)
        stack_b.down(**QUIET)
        shutil.rmtree(root, ignore_errors=True)


def test_restore_brings_back_every_order_before_the_backup(scenario: Scenario) -> None:
    s = scenario.restored

    async def check() -> None:
        async with Orders(s) as orders:
            held = await orders.result(scenario.held, within=120)
            held_named = any(scenario.held in line for line in scenario.lines)
            assert held.status == "completed" or held_named, (held, scenario.lines)
        conn = await asyncpg.connect(s.admin_dsn(s.database))
        try:
            ids = [*scenario.before, scenario.held, *scenario.after]
            facts = await read_facts(conn, ids)
            problems = [
                p for oid in scenario.before for p in check_rows(facts[oid], OK, "completed")
            ]
            if held.status == "completed":
                problems += check_rows(facts[scenario.held], OK, "completed")
            # a point in time: what came after the backup is not there
            assert [facts[o].status for o in scenario.after] == [None] * len(scenario.after)
            problems += check_money(facts.values())
            on_hand, reserved = await read_stock(conn, [scenario.sku])
            problems += check_stock({scenario.sku: scenario.stock}, on_hand, reserved)
            # no charge without an order: in the database and at the restored provider
            orphans = await conn.fetch(
                "SELECT p.order_id FROM app.payments p LEFT JOIN app.orders o USING (order_id) "
                "WHERE o.order_id IS NULL"
            )
            assert not orphans, orphans
            ledger = await ProviderAdmin(s.provider_url, s.provider_admin_token_file).ledger("bk-")
            charged = {c["idempotency_key"].split(":")[0] for c in ledger.get("charges", [])}
            assert charged <= {o for o in ids if facts[o].status is not None}, charged
        finally:
            await conn.close()
        assert not problems, "\n".join(map(str, problems))

    asyncio.run(check())


def test_old_history_decodes_through_the_restored_codec_server(scenario: Scenario) -> None:
    s = scenario.restored
    oid = scenario.before[0]
    assert scenario.sku not in _show(s, oid)  # encrypted as Temporal stores it
    assert scenario.sku in _show(s, oid, "--codec-endpoint", codec_endpoint(s))


def test_restore_reports_what_it_did(scenario: Scenario) -> None:
    text = "\n".join(scenario.lines)
    assert "sha256 of each checked" in text
    assert "raft snapshot restored" in text
    assert "leases:" in text and "revoked" in text
    assert "took " in text
    assert scenario.archive.stat().st_mode & 0o777 == 0o600
    said = "\n".join(scenario.backup_said)
    assert f"wrote {scenario.archive}" in said and "mode 0600" in said
    assert "vault.snap" in said and "SECRET" in said and "took temporal" in said
    with tarfile.open(scenario.archive, "r:gz") as tar:
        f = tar.extractfile(MANIFEST)
        assert f is not None
        manifest = json.load(f)
    assert {m["name"]: m["secret"] for m in manifest["members"]}["issuer-public-keys.pem"] is False
    assert set(manifest["versions"]) == {"openbao", "postgresql", "temporal", "orders-ops"}
    # the held order was in flight at backup time: named for an operator
    assert scenario.held in text
    print(f"backup {scenario.backup_seconds:.2f}s, restore {scenario.restore_seconds:.2f}s")


def _rewrite(src: Path, dest: Path, change: Any, extra: dict[str, bytes] | None = None) -> Path:
    """A copy of the archive with its members passed through ``change(name, data)``
    (returning None drops the member)."""
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dest, "w:gz") as tout:
        for member in tin:
            f = tin.extractfile(member)
            assert f is not None
            data = change(member.name, f.read())
            if data is None:
                continue
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    return dest


@pytest.mark.parametrize(
    ("case", "refusal"),
    [
        ("sha", "sha256 mismatch: postgres-orders.dump"),
        ("truncated", "truncated or damaged"),
        ("cut", "not a complete gzip tar archive"),
        ("manifest", "bad manifest"),
        ("missing", "truncated: vault.snap listed but not in the archive"),
        ("extra", "mismatched archive: member 'extra.txt'"),
        ("partial", "a half-written archive"),
        ("traversal", "bad manifest: it lists unknown member(s) '../escaped'"),
    ],
)
def test_a_damaged_archive_is_refused_by_name(
    scenario: Scenario, tmp_path: Path, case: str, refusal: str
) -> None:
    src = scenario.archive
    bad = tmp_path / f"{src.name}"
    if case == "sha":
        _rewrite(src, bad, lambda n, d: d[:-1] + b"x" if n == "postgres-orders.dump" else d)
    elif case == "truncated":
        data = src.read_bytes()
        bad.write_bytes(data[: len(data) * 2 // 3])
    elif case == "cut":
        bad.write_bytes(src.read_bytes()[:20])
    elif case == "manifest":
        _rewrite(src, bad, lambda n, d: b"{not json" if n == MANIFEST else d)
    elif case == "missing":
        _rewrite(src, bad, lambda n, d: None if n == "vault.snap" else d)
    elif case == "extra":
        _rewrite(src, bad, lambda n, d: d)
        with tarfile.open(bad, "r:gz") as t:
            members = [(m, (t.extractfile(m) or open(os.devnull, "rb")).read()) for m in t]
        with tarfile.open(bad, "w:gz") as t:
            for m, d in members:
                t.addfile(m, io.BytesIO(d))
            extra = tarfile.TarInfo("extra.txt")
            extra.size = 2
            t.addfile(extra, io.BytesIO(b"hi"))
    elif case == "traversal":  # a member (and its manifest entry) named to escape

        def escape(name: str, data: bytes) -> bytes:
            if name != MANIFEST:
                return data
            manifest = json.loads(data)
            digest = hashlib.sha256(b"hi").hexdigest()
            manifest["members"].append({"name": "../escaped", "bytes": 2, "sha256": digest})
            return json.dumps(manifest).encode()

        _rewrite(src, bad, escape, extra={"../escaped": b"hi"})
    else:
        bad = tmp_path / f"{src.name}.partial"
        shutil.copyfile(src, bad)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BackupError) as err:
        check_archive(bad, out)
    assert refusal in str(err.value)
    assert "nothing was restored" in str(err.value)
    # and restore refuses it before it makes any state folder
    target = dataclasses.replace(scenario.restored, state_dir=tmp_path / "fresh")
    with pytest.raises(BackupError):
        restore(target, bad, say=lambda _line: None)
    assert not target.state_dir.exists()
    assert not (tmp_path / "escaped").exists()


def test_leases_whose_login_is_gone_are_force_revoked_and_unleased_logins_dropped(
    scenario: Scenario,
) -> None:
    """What restore does with the snapshot's leases, shown on planted ones: a lease whose
    login the database lacks (issued after the dump), a lease whose login is there (its
    holder is gone), and a ``v-*`` login no lease names (issued after the snapshot)."""
    s = scenario.restored
    scenario.stack.workers_down(**QUIET)  # as at restore time: no worker holds a lease
    root = hvac.Client(url=s.vault_addr, token=s.root_token())
    role = sorted(DB_ROLES)[0]
    gone = root.secrets.database.generate_credentials(role)
    kept = root.secrets.database.generate_credentials(role)
    stray = f"{username_prefix(role)}planted{os.getpid()}-1"

    async def plant() -> None:
        conn = await asyncpg.connect(s.admin_dsn(s.database))
        try:
            await conn.execute(f'DROP ROLE "{gone["data"]["username"]}"')
            await conn.execute(f'CREATE ROLE "{stray}" LOGIN')
        finally:
            await conn.close()

    asyncio.run(plant())
    lines = clean_leases(s)
    text = "\n".join(lines)
    assert f"force-revoked {gone['lease_id']}: its login is not in the restored database" in text
    assert f"dropped login {stray}" in text
    assert "1 force-revoked" in text, text
    left = root.list(f"sys/leases/lookup/database/creds/{role}")
    assert not (left or {}).get("data", {}).get("keys"), left
    root.adapter.close()

    async def logins() -> set[str]:
        conn = await asyncpg.connect(s.admin_dsn(s.database))
        try:
            rows = await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%'")
        finally:
            await conn.close()
        return {r["rolname"] for r in rows}

    assert not {kept["data"]["username"], stray} & asyncio.run(logins())


def test_the_cli_refuses_a_damaged_archive_in_one_line(
    scenario: Scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from orders_ops.runbooks import main

    bad = tmp_path / scenario.archive.name
    bad.write_bytes(scenario.archive.read_bytes()[:-100])
    monkeypatch.setenv("ORDERS_STATE_DIR", str(tmp_path / "fresh"))
    with pytest.raises(SystemExit) as exit_:
        main(["restore", str(bad)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 1
    assert err.startswith(f"orders-runbook: error: {bad}: ") and "\n" not in err, err
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize("what", ["backup", "restore"])
def test_tls_and_cluster_mode_are_refused_in_one_line(tmp_path: Path, what: str) -> None:
    plain = StackSettings(tmp_path / "state", 1, 2, 3, 4, 5, 6)
    for settings, says in (
        (dataclasses.replace(plain, tls=True), "not supported with ORDERS_TLS=1"),
        (dataclasses.replace(plain, mode="cluster"), "works on the local process stack"),
    ):
        with pytest.raises(BackupError) as err:
            if what == "backup":
                backup(settings, tmp_path / "out", say=lambda _line: None)
            else:
                restore(settings, tmp_path / "x.tar.gz", say=lambda _line: None)
        assert says in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "state").exists() and not (tmp_path / "out").exists()


def test_a_dump_that_does_not_load_stops_the_restore_half_way_and_says_so(
    scenario: Scenario, tmp_path: Path
) -> None:
    """A consistent archive (every sha256 right) whose database dump PostgreSQL refuses:
    the restore stops what it started and names the folder to remove."""
    from orders_ops.testing import isolated_settings

    root = Path(tempfile.mkdtemp(prefix="orders-backup-test-"))  # searchable by all
    root.chmod(0o711)
    target = isolated_settings(root / "c")
    junk = b"PGDMP this is not a dump"

    def corrupt(name: str, data: bytes) -> bytes:
        if name == "postgres-orders.dump":
            return junk
        if name != MANIFEST:
            return data
        manifest = json.loads(data)
        # from a stack on the target's ports (the restored stack B runs on the archive's)
        manifest["ports"]["postgres"] = target.postgres_port
        for m in manifest["members"]:
            if m["name"] == "postgres-orders.dump":
                m["bytes"], m["sha256"] = len(junk), hashlib.sha256(junk).hexdigest()
        return json.dumps(manifest).encode()

    bad = _rewrite(scenario.archive, tmp_path / scenario.archive.name, corrupt)
    try:
        with pytest.raises(BackupError) as err:
            restore(target, bad, say=lambda _line: None)
        message = str(err.value)
        assert "pg_restore failed" in message, message
        assert f"restore stopped half way: what it started is stopped; remove {root / 'c'}" in (
            message
        )
        assert "\n" not in message
        assert all(server.pid() is None for server in Stack(target).servers)
    finally:
        Stack(target).down(**QUIET)
        shutil.rmtree(root, ignore_errors=True)


def test_the_archives_postgres_port_in_use_is_refused_before_anything_starts(
    scenario: Scenario, tmp_path: Path
) -> None:
    """Restored on other ports while a PostgreSQL still answers on the archive's (here the
    restored stack B): the restored Vault would reach it before the bootstrap re-points
    it, so restore refuses before it makes a state folder."""
    from orders_ops.testing import isolated_settings

    target = isolated_settings(tmp_path / "d")
    with pytest.raises(BackupError) as err:
        restore(target, scenario.archive, say=lambda _line: None)
    assert f"the archive's PostgreSQL port {scenario.restored.postgres_port} is in use" in str(
        err.value
    )
    assert not target.state_dir.exists()
