"""The database bootstrap: idempotent, drift-repairing, strict about migrations; and the
life of a Vault-issued login (renew moves VALID UNTIL, revoke ends it for good)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import hvac
import pytest
import pytest_asyncio

from orders_ops.database import (
    OWNER_ROLE,
    VAULT_ADMIN_ROLE,
    MigrationError,
    apply_migrations,
    bootstrap_database,
    default_migrations_dir,
    expected_privileges,
    find_orphan_candidates,
    load_migrations,
    owner_password_file,
    quote_ident,
    read_privileges,
    reap_orphan_logins,
    scram_matches,
    scram_verifier,
    vault_admin_password_file,
)
from orders_ops.settings import HOST, SettingsError, StackSettings
from orders_ops.vault_database import (
    configure_database_engine,
    credential_ttls,
    username_prefix,
)

# --------------------------------------------------------------------------- no server needed


def _copy_packaged(dst: Path) -> Path:
    src = default_migrations_dir()
    dst.mkdir()
    for entry in src.iterdir():
        if entry.name.endswith(".sql"):
            (dst / entry.name).write_text(entry.read_text(encoding="utf-8"), encoding="utf-8")
    return dst


def test_packaged_migrations_load_in_numeric_order() -> None:
    names = [m.name for m in load_migrations()]
    assert names[:6] == [
        "0001_orders_schema.sql",
        "0002_demo_seed.sql",
        "0003_payment_intent.sql",
        "0004_order_integrity.sql",
        "0005_payment_refund_outcome.sql",
        "0006_order_status_guard.sql",
    ]
    assert names == sorted(names)


def test_migrations_are_ordered_by_number_not_by_name(tmp_path: Path) -> None:
    (tmp_path / "10_later.sql").write_text("SELECT 10")
    (tmp_path / "9_earlier.sql").write_text("SELECT 9")
    (tmp_path / "README.txt").write_text("not a migration")
    assert [m.version for m in load_migrations(tmp_path)] == [9, 10]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["0001_a.sql", "001_b.sql"], "share number 1"),
        (["latest.sql"], "latest.sql is not named NNNN_description.sql"),
    ],
)
def test_badly_named_migrations_are_refused(tmp_path: Path, files: list[str], message: str) -> None:
    for name in files:
        (tmp_path / name).write_text("SELECT 1")
    with pytest.raises(MigrationError, match=message):
        load_migrations(tmp_path)


def test_scram_verifier_checks_the_password() -> None:
    verifier = scram_verifier("correct horse")
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    assert scram_matches(verifier, "correct horse")
    assert not scram_matches(verifier, "correct horse ")
    assert not scram_matches(None, "correct horse")
    assert not scram_matches("md5abc", "correct horse")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (300, 1800)),
        ({"ORDERS_DB_CRED_TTL": "60", "ORDERS_DB_CRED_MAX_TTL": "2m"}, (60, 120)),
        ({"ORDERS_DB_CRED_TTL": "1h", "ORDERS_DB_CRED_MAX_TTL": "3600s"}, (3600, 3600)),
    ],
)
def test_credential_ttls(env: dict[str, str], expected: tuple[int, int]) -> None:
    assert credential_ttls(env) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ORDERS_DB_CRED_TTL": "five"}, "ORDERS_DB_CRED_TTL='five' is not a positive duration"),
        ({"ORDERS_DB_CRED_MAX_TTL": "0"}, "ORDERS_DB_CRED_MAX_TTL='0' is not a positive"),
        ({"ORDERS_DB_CRED_TTL": "-5"}, "ORDERS_DB_CRED_TTL='-5'"),
        ({"ORDERS_DB_CRED_TTL": "3000"}, "ORDERS_DB_CRED_TTL \\(3000s\\) is longer than"),
    ],
)
def test_bad_credential_ttls_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        credential_ttls(env)


# --------------------------------------------------------------------------- against the stack


@pytest.mark.stack
async def test_second_bootstrap_changes_nothing(database_ready: StackSettings) -> None:
    await bootstrap_database(database_ready)  # whatever an earlier test left, converge
    assert await bootstrap_database(database_ready) == []


@pytest.mark.stack
def test_second_vault_configuration_changes_nothing(
    vault: hvac.Client, database_ready: StackSettings
) -> None:
    configure_database_engine(vault, database_ready)
    assert configure_database_engine(vault, database_ready) == []


@pytest.mark.stack
def test_vault_configuration_puts_a_changed_role_back(
    vault: hvac.Client, database_ready: StackSettings
) -> None:
    vault.write_data(
        "database/roles/order-fulfill",
        data={
            "db_name": "orders",
            "creation_statements": ['CREATE ROLE "{{name}}" LOGIN SUPERUSER'],
            "default_ttl": 99999,
        },
    )
    changes = configure_database_engine(vault, database_ready)
    assert changes == [
        "updated Vault database role order-fulfill -> group order_fulfill (ttl 300s, max 1800s)"
    ]
    role = vault.read("database/roles/order-fulfill")["data"]
    assert role["creation_statements"][-1] == 'GRANT "order_fulfill" TO "{{name}}"'
    assert configure_database_engine(vault, database_ready) == []


@pytest.mark.stack
async def test_bootstrap_repairs_a_drifted_privilege(
    database_ready: StackSettings, admin_conn: Any
) -> None:
    await admin_conn.execute("GRANT DELETE ON app.payments TO order_notify")
    await admin_conn.execute("REVOKE SELECT (email) ON app.customer_contacts FROM order_notify")
    changes = await bootstrap_database(database_ready)
    assert changes == [
        "converged privileges of order_notify to the grant matrix: 1 granted; "
        "1 revoked (DELETE on payments)"
    ]
    assert await read_privileges(admin_conn, "order_notify") == expected_privileges("order-notify")
    assert await bootstrap_database(database_ready) == []


@pytest.mark.stack
async def test_changed_applied_migration_is_a_clear_error(
    database_ready: StackSettings, admin_conn: Any, tmp_path: Path
) -> None:
    folder = _copy_packaged(tmp_path / "migrations")
    seed = folder / "0002_demo_seed.sql"
    seed.write_text(seed.read_text() + "\n-- an innocent-looking edit\n")
    before = await admin_conn.fetch("SELECT * FROM app.schema_migrations ORDER BY version")
    with pytest.raises(MigrationError, match=r"migration 0002_demo_seed\.sql was changed"):
        await bootstrap_database(database_ready, migrations_dir=folder)
    after = await admin_conn.fetch("SELECT * FROM app.schema_migrations ORDER BY version")
    assert [tuple(r) for r in after] == [tuple(r) for r in before]


@pytest.mark.stack
async def test_deleted_applied_migration_is_a_clear_error(
    database_ready: StackSettings, tmp_path: Path
) -> None:
    folder = _copy_packaged(tmp_path / "migrations")
    (folder / "0002_demo_seed.sql").unlink()
    with pytest.raises(MigrationError, match=r"0002_demo_seed\.sql applied but no such file"):
        await bootstrap_database(database_ready, migrations_dir=folder)


@pytest_asyncio.fixture(loop_scope="session")
async def scratch_owner_conn(database_ready: StackSettings, admin_conn: Any) -> AsyncIterator[Any]:
    """An empty database owned by orders_owner, to watch migrations apply from nothing."""
    name = f"orders_scratch_{secrets.token_hex(4)}"
    await admin_conn.execute(f"CREATE DATABASE {name} OWNER {OWNER_ROLE}")
    conn = await asyncpg.connect(
        host=HOST,
        port=database_ready.postgres_port,
        user=OWNER_ROLE,
        password=owner_password_file(database_ready).read_text().strip(),
        database=name,
    )
    try:
        await conn.execute("CREATE SCHEMA app")
        yield conn
    finally:
        await conn.close()
        await admin_conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.mark.stack
async def test_migrations_apply_once_each_in_order(scratch_owner_conn: Any, tmp_path: Path) -> None:
    folder = _copy_packaged(tmp_path / "migrations")
    packaged = load_migrations(folder)
    changes = await apply_migrations(scratch_owner_conn, packaged)
    assert changes == ["created table app.schema_migrations"] + [
        f"applied migration {m.name}" for m in packaged
    ]
    assert await scratch_owner_conn.fetchval("SELECT count(*) FROM app.products") == 4
    assert await apply_migrations(scratch_owner_conn, load_migrations(folder)) == []

    # a failing migration leaves nothing behind: its own transaction, no record
    (folder / "0099_broken.sql").write_text(
        "CREATE TABLE app.half_done (id int);\nSELECT no_such_function();\n"
    )
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await apply_migrations(scratch_owner_conn, load_migrations(folder))
    assert await scratch_owner_conn.fetchval("SELECT to_regclass('app.half_done')") is None
    assert await scratch_owner_conn.fetchval(
        "SELECT max(version) FROM app.schema_migrations"
    ) == max(m.version for m in packaged)
    rows = await scratch_owner_conn.fetch(
        "SELECT name, checksum FROM app.schema_migrations ORDER BY version"
    )
    assert [(r["name"], r["checksum"]) for r in rows] == [(m.name, m.checksum) for m in packaged]


# --------------------------------------------------------------------------- lease life


async def _closed_by_server(conn: Any) -> bool:
    """The server ended the session: asyncpg notices once the loop reads the socket."""
    for _ in range(250):  # up to 5 s
        if conn.is_closed():
            return True
        await asyncio.sleep(0.02)
    return bool(conn.is_closed())


async def _valid_until(admin_conn: Any, username: str) -> Any:
    return await admin_conn.fetchval(
        "SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1", username
    )


@pytest.mark.stack
async def test_renew_moves_valid_until_forward(
    issuer: Any, vault: hvac.Client, admin_conn: Any
) -> None:
    login = issuer.issue("order-fulfill")
    before = await _valid_until(admin_conn, login.username)
    now = await admin_conn.fetchval("SELECT now()")
    assert 250 <= (before - now).total_seconds() <= 310  # default_ttl 300s
    vault.sys.renew_lease(login.lease_id, increment=1200)
    after = await _valid_until(admin_conn, login.username)
    assert 1150 <= (after - now).total_seconds() <= 1210
    conn = await issuer.connect(login)  # the password still works after renewal
    try:
        assert await conn.fetchval("SELECT current_user") == login.username
    finally:
        await conn.close()


@pytest.mark.stack
async def test_revoke_drops_the_role_ends_its_session_and_the_password(
    issuer: Any, vault: hvac.Client, admin_conn: Any
) -> None:
    login = issuer.issue("order-notify")
    assert login.username.startswith(username_prefix("order-notify"))
    live = await issuer.connect(login)
    try:
        assert await live.fetchval("SELECT current_user") == login.username
        vault.sys.revoke_lease(login.lease_id)
        exists = await admin_conn.fetchval(
            "SELECT count(*) FROM pg_roles WHERE rolname = $1", login.username
        )
        assert exists == 0
        sessions = await admin_conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", login.username
        )
        assert sessions == 0
        assert await _closed_by_server(live)
        with pytest.raises(asyncpg.InterfaceError, match="connection is closed"):
            await live.fetchval("SELECT 1")
    finally:
        await live.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await issuer.connect(login)


@pytest.mark.stack
async def test_reaper_drops_orphan_logins_and_ends_their_sessions(
    database_ready: StackSettings, admin_conn: Any
) -> None:
    """What a restarted in-memory Vault leaves behind: a login nobody can revoke."""
    name = f"v-order-notify-orphan{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    await admin_conn.execute(
        f"CREATE ROLE {quote_ident(name)} LOGIN PASSWORD '{scram_verifier(password)}' "
        f"VALID UNTIL 'infinity'"
    )
    await admin_conn.execute(f"GRANT order_notify TO {quote_ident(name)}")
    session = await asyncpg.connect(
        host=HOST,
        port=database_ready.postgres_port,
        user=name,
        password=password,
        database=database_ready.database,
    )
    try:
        candidates = await find_orphan_candidates(admin_conn)
        assert name in candidates
        assert "vault_admin" not in candidates
        assert OWNER_ROLE not in candidates
        changes = await reap_orphan_logins(admin_conn, names=[name])
        assert changes == [
            f"dropped orphan login {name} left by a previous Vault (1 session(s) ended)"
        ]
        assert await _closed_by_server(session)
        with pytest.raises(asyncpg.InterfaceError, match="connection is closed"):
            await session.fetchval("SELECT 1")
    finally:
        await session.close()
    assert name not in await find_orphan_candidates(admin_conn)
    assert await admin_conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", name) == 0


@pytest.mark.stack
async def test_only_vault_knows_the_vault_admin_password_and_bootstrap_stays_idempotent(
    database_ready: StackSettings, vault: hvac.Client, issuer: Any
) -> None:
    """A one-time password is handed to Vault, which rotates it; no file keeps one."""
    # as for a fresh Vault (or one that lost its connection): a new one-time password
    assert await bootstrap_database(database_ready, reset_vault_admin=True) == [
        "set password of role vault_admin to the one in its secrets file"
    ]
    one_time = vault_admin_password_file(database_ready).read_text().strip()
    assert configure_database_engine(vault, database_ready) == [
        "updated Vault database connection orders (as vault_admin) with its one-time password",
        "Vault rotated the password of vault_admin: only Vault knows it now",
    ]
    assert not vault_admin_password_file(database_ready).exists()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host=HOST,
            port=database_ready.postgres_port,
            user=VAULT_ADMIN_ROLE,
            password=one_time,
            database=database_ready.database,
        )
    # Vault still issues working logins with the password only it knows
    conn = await issuer.connect(issuer.issue("order-validate"))
    try:
        assert await conn.fetchval("SELECT count(*) > 0 FROM app.products")
    finally:
        await conn.close()
    # and a rerun of both bootstraps changes nothing (never resets the rotated password)
    assert await bootstrap_database(database_ready) == []
    assert configure_database_engine(vault, database_ready) == []


@pytest.mark.stack
async def test_an_interrupted_hand_over_is_rotated_on_the_next_run(
    database_ready: StackSettings, vault: hvac.Client
) -> None:
    from orders_ops.vault_database import ROTATED_FIELD

    current = vault.read("database/config/orders")["data"]
    details = current["connection_details"]
    vault.secrets.database.configure(
        "orders",
        current["plugin_name"],
        verify_connection=False,
        allowed_roles=current["allowed_roles"],
        **{**details, ROTATED_FIELD: "false"},
    )
    assert configure_database_engine(vault, database_ready) == [
        "Vault rotated the password of vault_admin: only Vault knows it now"
    ]
    assert configure_database_engine(vault, database_ready) == []


@pytest.mark.stack
async def test_without_a_connection_or_a_one_time_password_the_error_says_what_to_do(
    database_ready: StackSettings, vault: hvac.Client
) -> None:
    from orders_ops.vault_database import VaultDatabaseError

    saved = vault.read("database/config/orders")["data"]
    vault.delete("database/config/orders")
    try:
        with pytest.raises(VaultDatabaseError, match="reset_vault_admin=True"):
            configure_database_engine(vault, database_ready)
    finally:
        await bootstrap_database(database_ready, reset_vault_admin=True)
        assert configure_database_engine(vault, database_ready)[0].startswith(
            "configured Vault database connection orders"
        )
    assert saved["connection_details"]["username"] == VAULT_ADMIN_ROLE
