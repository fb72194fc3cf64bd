"""The order database as code: roles, database, migrations and the grant matrix.

Run by the bootstrap before Vault is configured (Vault's creation statements
grant group roles that must already exist). Every step reads the current state
back first and only changes what differs, so a second run reports nothing and
a drifted privilege is put back.

Who is who in Postgres:

- ``orders_owner`` (LOGIN): owns the database, schema ``app`` and every table;
  only migrations run as it.
- ``vault_admin`` (LOGIN, CREATEROLE): the one role Vault logs in as. It holds
  every group role WITH ADMIN OPTION but INHERIT FALSE and SET FALSE, so it can
  hand out memberships without being able to read a single row itself. It can
  still create a login in any group role: whoever logs in as it holds every
  privilege of the grant matrix (superuser-equivalent for the app's roles). So
  its password is a *one-time* password: the bootstrap sets it and stores it
  only until Vault has taken it over, then Vault rotates it
  (``database/rotate-root``) and the stored copy is deleted; from then on only
  Vault knows it (see :mod:`orders_ops.vault_database`).
- one NOLOGIN group role per Vault database role (``order_reserve_inventory``)
  holding exactly its rows of :data:`orders_ops.grants.GRANT_MATRIX`.

Passwords are sent to Postgres as SCRAM verifiers computed here, never as
plain text, so they cannot end up in a server log; they are kept in
root-only files under ``<state>/secrets`` (the owner's for good, vault_admin's
only until Vault has rotated it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.resources
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TypeAlias

import asyncpg

from orders_ops.grants import GRANT_MATRIX, SCHEMA
from orders_ops.secretfiles import SecretStore, secret_store
from orders_ops.settings import StackSettings
from orders_shared.catalog import DB_ROLES, group_role
from orders_shared.db_tls import client_ssl

OWNER_ROLE = "orders_owner"
VAULT_ADMIN_ROLE = "vault_admin"
MIGRATIONS_TABLE = f"{SCHEMA}.schema_migrations"

# Serialises concurrent bootstraps (two `orders-stack up` at once); any constant will do.
_BOOTSTRAP_LOCK_KEY = 0x6F72_6465_7273  # "orders"

_MIGRATION_NAME = re.compile(r"^(\d+)_([A-Za-z0-9_]+)\.sql$")
# NNNN_demo_*.sql: demo data (catalogue, stock), not schema. Applied by the local stack
# (the demo and the tests expect it) and in a cluster only when asked for
# (ORDERS_SEED_DEMO_DATA=true, the bootstrap chart's bootstrap.seedDemoData; Tilt sets
# it); never in production. A skipped one is not recorded, so turning the flag on later
# applies it then.
_DEMO_MIGRATION = re.compile(r"^\d+_demo_")
SEED_DEMO_DATA_ENV = "ORDERS_SEED_DEMO_DATA"

Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record]"

ROLE_SETTINGS: dict[str, str] = {
    "statement_timeout": "10s",
    "idle_in_transaction_session_timeout": "30s",
}
"""Server-side limits of every app session, set on each group role (and, since Postgres
applies role settings of the *login* role only, on each Vault-issued login by its
creation statement, see :mod:`orders_ops.vault_database`): a statement of a step is a
few rows, so 10 s means something is stuck (a lock held by a hung transaction); a
transaction left idle for 30 s holds locks nobody will release, so Postgres ends it."""

Privilege = tuple[str, str, str | None]
"""(table, privilege, column or None for a table-wide grant)."""


class DatabaseBootstrapError(RuntimeError):
    """The database could not be brought to the described state; the message says why and how."""


class MigrationError(DatabaseBootstrapError):
    """The migration files and what the database says was applied disagree."""


# --------------------------------------------------------------------------- secrets


def owner_password_file(settings: StackSettings) -> Path:
    return settings.secrets_dir / "postgres-owner-password"


def vault_admin_password_file(settings: StackSettings) -> Path:
    return settings.secrets_dir / "postgres-vault-admin-password"


def vault_admin_password(settings: StackSettings, store: SecretStore | None = None) -> str:
    """The one-time password of ``vault_admin`` waiting to be handed over to Vault.

    Set by :func:`bootstrap_database` when it creates or resets the role; deleted
    by :func:`orders_ops.vault_database.configure_database_engine` once Vault holds
    it, after which Vault rotates it. Raises when there is none to hand over."""
    value = (store or secret_store(settings)).read(vault_admin_password_file(settings).name)
    if not value:
        raise DatabaseBootstrapError(
            f"there is no one-time password of {VAULT_ADMIN_ROLE} to hand over: Vault has "
            "rotated it and only Vault knows it. To give Vault a new one (e.g. its "
            "connection was lost), run the database bootstrap with reset_vault_admin=True "
            "('orders-stack up' does it when it starts a fresh dev Vault)"
        )
    return value


def scram_verifier(password: str, *, iterations: int = 4096, salt: bytes | None = None) -> str:
    """A SCRAM-SHA-256 verifier as Postgres stores it (RFC 5802/7677).

    Sending the verifier instead of the password keeps the plain text out of
    Postgres entirely (statement logs, pg_stat_activity).
    """
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def scram_matches(verifier: str | None, password: str) -> bool:
    """True when ``password`` logs in against the stored ``verifier``: checked
    locally, so a run with unchanged passwords needs no extra logins."""
    if not verifier:
        return False
    m = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", verifier)
    if m is None:
        return False
    expected = scram_verifier(
        password, iterations=int(m.group(1)), salt=base64.b64decode(m.group(2))
    )
    return hmac.compare_digest(expected, verifier)


# --------------------------------------------------------------------------- SQL helpers


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def _connect(settings: StackSettings, user: str, password: str, database: str) -> Connection:
    try:
        conn: Connection = await asyncpg.connect(
            host=settings.db_host,
            port=settings.postgres_port,
            user=user,
            password=password,
            database=database,
            timeout=10,
            ssl=client_ssl(settings.db_sslmode, settings.db_sslrootcert),
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseBootstrapError(
            f"cannot log in to Postgres at {settings.db_host}:{settings.postgres_port} as {user} "
            f"(database {database}): {type(exc).__name__}: {exc}. Is the stack up "
            "('orders-stack up')? If the password file under "
            f"{settings.secrets_dir} was replaced, run the bootstrap again to reset it."
        ) from exc
    return conn


# --------------------------------------------------------------------------- migrations


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # the file name, e.g. 0001_orders_schema.sql
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def demo_data(self) -> bool:
        return _DEMO_MIGRATION.match(self.name) is not None


def seed_demo_data_wanted(settings: StackSettings, env: dict[str, str] | None = None) -> bool:
    """Local stack: always. Cluster and external: only with ORDERS_SEED_DEMO_DATA=true."""
    if settings.mode == "local":
        return True
    raw = (os.environ if env is None else env).get(SEED_DEMO_DATA_ENV, "").strip().lower()
    if raw in ("", "false", "0", "no"):
        return False
    if raw in ("true", "1", "yes"):
        return True
    raise DatabaseBootstrapError(
        f"{SEED_DEMO_DATA_ENV}={raw!r}: use true or false (demo data; never true in production)"
    )


def default_migrations_dir() -> Traversable:
    """The SQL files shipped inside the package (works from a wheel, not only a checkout)."""
    return importlib.resources.files("orders_ops") / "migrations"


def load_migrations(source: Traversable | None = None) -> list[Migration]:
    """Every ``NNNN_name.sql`` file, ordered by its number.

    A ``.sql`` file that does not follow the pattern, or two files with one
    number, is an error rather than something silently skipped.
    """
    folder = source if source is not None else default_migrations_dir()
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        if not entry.is_file() or not entry.name.endswith(".sql"):
            continue
        m = _MIGRATION_NAME.match(entry.name)
        if m is None:
            raise MigrationError(
                f"migration file {entry.name} is not named NNNN_description.sql: "
                "rename it so its number says where it goes"
            )
        version = int(m.group(1))
        if version in found:
            raise MigrationError(
                f"migrations {found[version].name} and {entry.name} share number {version}: "
                "give the newer one the next free number"
            )
        found[version] = Migration(version, entry.name, entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def apply_migrations(
    conn: Connection, migrations: Iterable[Migration], *, demo_data: bool = True
) -> list[str]:
    """Apply what is new, each file in its own transaction, as the connected role.

    ``demo_data`` False: a demo-data file (``NNNN_demo_*.sql``) not yet applied is
    skipped and not recorded (an applied one is still checked).

    An applied file whose checksum changed stops everything: re-running it
    could corrupt data and skipping it would leave the schema unlike the
    code, so a human has to decide.
    """
    changes: list[str] = []
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", MIGRATIONS_TABLE)
    if not exists:
        await conn.execute(
            f"""CREATE TABLE {MIGRATIONS_TABLE} (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )"""
        )
        changes.append(f"created table {MIGRATIONS_TABLE}")
    applied = {
        r["version"]: (r["name"], r["checksum"])
        for r in await conn.fetch(f"SELECT version, name, checksum FROM {MIGRATIONS_TABLE}")
    }
    files = list(migrations)
    known = {m.version for m in files}
    missing = sorted(v for v in applied if v not in known)
    if missing:
        names = ", ".join(applied[v][0] for v in missing)
        raise MigrationError(
            f"the database has migration(s) {names} applied but no such file exists: "
            "restore the file(s); applied migrations are never deleted"
        )
    for mig in files:
        if mig.version in applied:
            name, checksum = applied[mig.version]
            if checksum != mig.checksum or name != mig.name:
                raise MigrationError(
                    f"migration {mig.name} was changed after it was applied as {name} "
                    f"(checksum {checksum[:12]} in the database, {mig.checksum[:12]} on disk). "
                    "Applied migrations must never change: restore the file and put the "
                    "change in a new numbered migration (a throwaway local stack can be "
                    "started afresh with 'orders-stack reset')."
                )
            continue
        if mig.demo_data and not demo_data:
            continue
        async with conn.transaction():
            await conn.execute(mig.sql)
            await conn.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum) VALUES ($1, $2, $3)",
                mig.version,
                mig.name,
                mig.checksum,
            )
        changes.append(f"applied migration {mig.name}")
    return changes


# --------------------------------------------------------------------------- roles


@dataclass(frozen=True)
class _RoleSpec:
    name: str
    login: bool
    createrole: bool = False

    def flags(self) -> dict[str, bool]:
        """The ``pg_authid`` columns this spec fixes, and their values."""
        return {
            "rolcanlogin": self.login,
            "rolcreaterole": self.createrole,
            "rolsuper": False,
            "rolcreatedb": False,
            "rolreplication": False,
            "rolbypassrls": False,
            "rolinherit": self.login,
        }

    def attributes(self) -> str:
        return " ".join(
            (
                "LOGIN" if self.login else "NOLOGIN",
                "CREATEROLE" if self.createrole else "NOCREATEROLE",
                "NOSUPERUSER NOCREATEDB NOREPLICATION NOBYPASSRLS",
                "INHERIT" if self.login else "NOINHERIT",
            )
        )


OWNER_SPEC = _RoleSpec(OWNER_ROLE, login=True)
VAULT_ADMIN_SPEC = _RoleSpec(VAULT_ADMIN_ROLE, login=True, createrole=True)


def group_spec(db_role: str) -> _RoleSpec:
    return _RoleSpec(group_role(db_role), login=False)


@dataclass(frozen=True)
class Membership:
    """``GRANT <group> TO <member> WITH ADMIN .., INHERIT .., SET ..`` as the bootstrap makes it."""

    group: str
    member: str
    admin: bool
    inherit: bool
    set_: bool

    def options(self) -> str:
        return ", ".join(
            f"{name} {'TRUE' if on else 'FALSE'}"
            for name, on in (("ADMIN", self.admin), ("INHERIT", self.inherit), ("SET", self.set_))
        )


def login_memberships() -> tuple[Membership, ...]:
    """The built-in roles the bootstrap's own logins are members of."""
    from orders_ops.session_watchdog import WATCHDOG_GRANTS, WATCHDOG_ROLE

    # pg_signal_backend: revocation must end the sessions of the roles it drops
    return (
        Membership("pg_signal_backend", VAULT_ADMIN_ROLE, admin=False, inherit=True, set_=True),
        *(
            Membership(b, WATCHDOG_ROLE, admin=False, inherit=True, set_=False)
            for b in WATCHDOG_GRANTS
        ),
    )


def group_membership(db_role: str) -> Membership:
    """vault_admin hands the group out (ADMIN) but cannot use it (no INHERIT, no SET)."""
    return Membership(group_role(db_role), VAULT_ADMIN_ROLE, admin=True, inherit=False, set_=False)


async def _ensure_role(
    conn: Connection, spec: _RoleSpec, password: str | None, password_new: bool
) -> list[str]:
    row = await conn.fetchrow(
        """SELECT rolcanlogin, rolcreaterole, rolsuper, rolcreatedb, rolreplication,
                  rolbypassrls, rolinherit, rolpassword
           FROM pg_authid WHERE rolname = $1""",
        spec.name,
    )
    ident = quote_ident(spec.name)
    pw_clause = ""
    if password is not None:
        pw_clause = f" PASSWORD {_quote_literal(scram_verifier(password))}"
    if row is None:
        await conn.execute(f"CREATE ROLE {ident} {spec.attributes()}{pw_clause}")
        return [f"created role {spec.name}"]
    changes: list[str] = []
    if any(row[k] != v for k, v in spec.flags().items()):
        await conn.execute(f"ALTER ROLE {ident} {spec.attributes()}")
        changes.append(f"reset attributes of role {spec.name} to {spec.attributes()}")
    if password is not None and (password_new or not scram_matches(row["rolpassword"], password)):
        await conn.execute(f"ALTER ROLE {ident}{pw_clause}")
        changes.append(f"set password of role {spec.name} to the one in its secrets file")
    return changes


async def _membership(conn: Connection, group: str, member: str) -> list[tuple[bool, bool, bool]]:
    rows = await conn.fetch(
        """SELECT m.admin_option, m.inherit_option, m.set_option
           FROM pg_auth_members m
           WHERE m.roleid = (SELECT oid FROM pg_roles WHERE rolname = $1)
             AND m.member = (SELECT oid FROM pg_roles WHERE rolname = $2)""",
        group,
        member,
    )
    return [(r[0], r[1], r[2]) for r in rows]


async def _ensure_membership(
    conn: Connection, group: str, member: str, *, admin: bool, inherit: bool, set_: bool
) -> list[str]:
    """Exactly one grant of ``group`` to ``member`` with exactly these options.

    Only ever GRANTs (which sets INHERIT/SET and adds ADMIN): revoking
    ``vault_admin``'s membership would cascade to every membership it handed
    out, i.e. cut every live Vault credential, so a mismatch GRANT cannot fix
    is reported for a human instead.
    """
    want = (admin, inherit, set_)
    if await _membership(conn, group, member) == [want]:
        return []
    opts = (
        f"ADMIN {'TRUE' if admin else 'FALSE'}, INHERIT {'TRUE' if inherit else 'FALSE'}, "
        f"SET {'TRUE' if set_ else 'FALSE'}"
    )
    await conn.execute(f"GRANT {quote_ident(group)} TO {quote_ident(member)} WITH {opts}")
    after = await _membership(conn, group, member)
    if after != [want]:
        raise DatabaseBootstrapError(
            f"membership of {member} in {group} is (admin, inherit, set) = {after} after "
            f"GRANT ... WITH {opts}; a grant by another grantor or an ADMIN OPTION to drop "
            f"remains. Fix it by hand as a superuser (REVOKE [ADMIN OPTION FOR] {group} "
            f"FROM {member} GRANTED BY <grantor>), then run the bootstrap again."
        )
    return [f"granted {group} to {member} with {opts}"]


async def _acl_of(conn: Connection, sql: str, *args: object) -> set[tuple[str, bool]]:
    return {(r["privilege_type"], r["is_grantable"]) for r in await conn.fetch(sql, *args)}


async def _converge_database(conn: Connection, database: str) -> list[str]:
    changes: list[str] = []
    row = await conn.fetchrow(
        "SELECT oid, pg_get_userbyid(datdba) AS owner FROM pg_database WHERE datname = $1",
        database,
    )
    db = quote_ident(database)
    if row is None:
        await conn.execute(f"CREATE DATABASE {db} OWNER {quote_ident(OWNER_ROLE)}")
        changes.append(f"created database {database} owned by {OWNER_ROLE}")
    elif row["owner"] != OWNER_ROLE:
        await conn.execute(f"ALTER DATABASE {db} OWNER TO {quote_ident(OWNER_ROLE)}")
        changes.append(f"changed owner of database {database} to {OWNER_ROLE}")

    acl_sql = """SELECT a.privilege_type, a.is_grantable
                 FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
                 WHERE d.datname = $1 AND a.grantee = $2"""
    public = await _acl_of(conn, acl_sql, database, 0)
    if public:
        await conn.execute(f"REVOKE ALL ON DATABASE {db} FROM PUBLIC")
        changes.append(
            f"revoked {', '.join(sorted(p for p, _ in public))} on {database} from PUBLIC"
        )
    admin_oid = await conn.fetchval("SELECT oid FROM pg_roles WHERE rolname = $1", VAULT_ADMIN_ROLE)
    if await _acl_of(conn, acl_sql, database, admin_oid) != {("CONNECT", False)}:
        await conn.execute(f"REVOKE ALL ON DATABASE {db} FROM {quote_ident(VAULT_ADMIN_ROLE)}")
        await conn.execute(f"GRANT CONNECT ON DATABASE {db} TO {quote_ident(VAULT_ADMIN_ROLE)}")
        changes.append(f"granted CONNECT on database {database} to {VAULT_ADMIN_ROLE}")

    setting = f"search_path={SCHEMA}"
    current = await conn.fetchval(
        """SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
           WHERE d.datname = $1 AND s.setrole = 0""",
        database,
    )
    if not current or setting not in current:
        await conn.execute(f"ALTER DATABASE {db} SET search_path = {quote_ident(SCHEMA)}")
        changes.append(f"set search_path of database {database} to {SCHEMA}")
    return changes


# --------------------------------------------------------------------------- privileges


def expected_privileges(db_role: str) -> set[Privilege]:
    """What :data:`GRANT_MATRIX` says the group role of ``db_role`` holds, one item per column."""
    expected: set[Privilege] = set()
    for g in GRANT_MATRIX:
        if g.db_role != db_role:
            continue
        if g.columns is None:
            expected.add((g.table, g.privilege, None))
        else:
            expected.update((g.table, g.privilege, c) for c in g.columns)
    return expected


async def read_privileges(conn: Connection, group_role: str) -> set[Privilege]:
    """The table and column privileges ``group_role`` really holds on schema ``app``.

    Read from the catalog ACLs, not from ``has_*_privilege`` (which also counts
    PUBLIC and memberships), so this is exactly what was granted to it. A
    grant WITH GRANT OPTION comes back as e.g. ``"SELECT WITH GRANT OPTION"``
    so it never compares equal to the matrix.
    """
    rows = await conn.fetch(
        """
        WITH grantee AS (SELECT oid FROM pg_roles WHERE rolname = $1)
        SELECT c.relname AS tbl, a.privilege_type, a.is_grantable, NULL::text AS col
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace,
             aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
        WHERE n.nspname = $2 AND a.grantee = (SELECT oid FROM grantee)
        UNION ALL
        SELECT c.relname, a.privilege_type, a.is_grantable, att.attname::text
        FROM pg_attribute att
        JOIN pg_class c ON c.oid = att.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace,
             aclexplode(att.attacl) a
        WHERE n.nspname = $2 AND att.attnum > 0 AND NOT att.attisdropped
          AND a.grantee = (SELECT oid FROM grantee)
        """,
        group_role,
        SCHEMA,
    )
    return {
        (
            r["tbl"],
            r["privilege_type"] + (" WITH GRANT OPTION" if r["is_grantable"] else ""),
            r["col"],
        )
        for r in rows
    }


def _grant_statements(db_role: str) -> list[str]:
    group = quote_ident(group_role(db_role))
    out = []
    for g in GRANT_MATRIX:
        if g.db_role != db_role:
            continue
        cols = (
            "" if g.columns is None else " (" + ", ".join(quote_ident(c) for c in g.columns) + ")"
        )
        out.append(
            f"GRANT {g.privilege}{cols} ON {quote_ident(SCHEMA)}.{quote_ident(g.table)} TO {group}"
        )
    return out


async def _converge_group(conn: Connection, database: str, db_role: str) -> list[str]:
    """One group role: exists, NOLOGIN, may connect and use the schema, holds exactly its rows."""
    group = group_role(db_role)
    ident = quote_ident(group)
    changes = await _ensure_role(conn, group_spec(db_role), None, False)

    db_acl = await _acl_of(
        conn,
        """SELECT a.privilege_type, a.is_grantable
           FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
           WHERE d.datname = $1 AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $2)""",
        database,
        group,
    )
    if db_acl != {("CONNECT", False)}:
        await conn.execute(f"REVOKE ALL ON DATABASE {quote_ident(database)} FROM {ident}")
        await conn.execute(f"GRANT CONNECT ON DATABASE {quote_ident(database)} TO {ident}")
        changes.append(f"granted CONNECT on database {database} to {group}")
    schema_acl = await _acl_of(
        conn,
        """SELECT a.privilege_type, a.is_grantable
           FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
           WHERE n.nspname = $1 AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $2)""",
        SCHEMA,
        group,
    )
    if schema_acl != {("USAGE", False)}:
        await conn.execute(f"REVOKE ALL ON SCHEMA {quote_ident(SCHEMA)} FROM {ident}")
        await conn.execute(f"GRANT USAGE ON SCHEMA {quote_ident(SCHEMA)} TO {ident}")
        changes.append(f"granted USAGE on schema {SCHEMA} to {group}")

    m = group_membership(db_role)
    changes += await _ensure_membership(
        conn, m.group, m.member, admin=m.admin, inherit=m.inherit, set_=m.set_
    )
    changes += await _ensure_role_settings(conn, group)
    changes += await _ensure_memberships(conn, group)  # a group is a member of nothing

    expected = expected_privileges(db_role)
    actual = await read_privileges(conn, group)
    if actual != expected:
        schema = quote_ident(SCHEMA)
        async with conn.transaction():  # the role never sits between "none" and "all"
            await conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {ident}")
            await conn.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {ident}")
            for stmt in _grant_statements(db_role):
                await conn.execute(stmt)
            after = await read_privileges(conn, group)
            if after != expected:
                raise DatabaseBootstrapError(
                    f"privileges of {group} still differ from the grant matrix after "
                    f"re-granting: extra {sorted(after - expected, key=str)}, missing "
                    f"{sorted(expected - after, key=str)}. A table in the matrix is probably "
                    "missing from the migrations."
                )
        extra = sorted(actual - expected, key=str)
        missing = sorted(expected - actual, key=str)
        detail = []
        if missing:
            detail.append(f"{len(missing)} granted")
        if extra:
            detail.append(f"{len(extra)} revoked ({', '.join(_fmt(p) for p in extra)})")
        changes.append(f"converged privileges of {group} to the grant matrix: {'; '.join(detail)}")
    return changes


async def read_role_settings(conn: Connection, role: str) -> dict[str, str]:
    """The settings ``ALTER ROLE <role> SET`` gave ``role`` (in every database)."""
    config = await conn.fetchval(
        """SELECT s.setconfig FROM pg_db_role_setting s
           JOIN pg_roles r ON r.oid = s.setrole
           WHERE r.rolname = $1 AND s.setdatabase = 0""",
        role,
    )
    return dict(item.split("=", 1) for item in (config or []))


async def _ensure_role_settings(conn: Connection, role: str) -> list[str]:
    current = await read_role_settings(conn, role)
    changes = []
    for name, value in ROLE_SETTINGS.items():
        if current.get(name) != value:
            await conn.execute(
                f"ALTER ROLE {quote_ident(role)} SET {name} = {_quote_literal(value)}"
            )
            changes.append(f"set {name} of role {role} to {value}")
    return changes


def _fmt(p: Privilege) -> str:
    table, priv, col = p
    return f"{priv} on {table}" + (f"({col})" if col else "")


# --------------------------------------------------------------------------- orphans


async def find_orphan_candidates(conn: Connection) -> list[str]:
    """LOGIN roles that are members of an order group role: what Vault issued.

    ``vault_admin`` is a member of every group (ADMIN only), and is never a
    candidate, nor is the owner or any superuser.
    """
    rows = await conn.fetch(
        """SELECT DISTINCT u.rolname
           FROM pg_auth_members m
           JOIN pg_roles g ON g.oid = m.roleid
           JOIN pg_roles u ON u.oid = m.member
           WHERE g.rolname = ANY($1::text[]) AND u.rolcanlogin AND NOT u.rolsuper
             AND u.rolname <> ALL($2::text[])
           ORDER BY u.rolname""",
        [group_role(r) for r in DB_ROLES],
        [VAULT_ADMIN_ROLE, OWNER_ROLE],
    )
    return [r["rolname"] for r in rows]


async def reap_orphan_logins(conn: Connection, names: Iterable[str] | None = None) -> list[str]:
    """End the sessions of, and drop, Vault-issued logins no Vault knows any more.

    Only correct when the Vault that issued them is gone (the dev Vault keeps
    leases in memory): nobody can revoke them any more, yet their passwords
    work until VALID UNTIL. ``names`` limits the reaping to those candidates
    (a test must not reap the live credentials of a shared stack).
    """
    candidates = await find_orphan_candidates(conn)
    if names is not None:
        wanted = set(names)
        candidates = [c for c in candidates if c in wanted]
    changes: list[str] = []
    for name in candidates:
        ident = quote_ident(name)
        await conn.execute(f"ALTER ROLE {ident} NOLOGIN")  # no new session in between
        killed = await conn.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
            "FROM pg_stat_activity WHERE usename = $1",
            name,
        )
        await conn.execute(f"DROP ROLE IF EXISTS {ident}")
        changes.append(
            f"dropped orphan login {name} left by a previous Vault ({killed} session(s) ended)"
        )
    return changes


# --------------------------------------------------------------------------- entry point


def watchdog_password_file(settings: StackSettings) -> Path:
    """The session watchdog's password: ``ORDERS_WATCHDOG_PASSWORD_FILE`` when set (a
    cluster: the Secret both the bootstrap Job and the watchdog mount), else the store's."""
    from orders_ops.session_watchdog import PASSWORD_FILE_ENV, PASSWORD_SECRET

    named = os.environ.get(PASSWORD_FILE_ENV, "").strip()
    return Path(named) if named else settings.secrets_dir / PASSWORD_SECRET


def _watchdog_password(store: SecretStore) -> tuple[str, bool]:
    """The watchdog's password (and whether it is new): the named file when
    ``ORDERS_WATCHDOG_PASSWORD_FILE`` is set, else the store's (created once)."""
    from orders_ops.session_watchdog import PASSWORD_FILE_ENV, PASSWORD_SECRET

    named = os.environ.get(PASSWORD_FILE_ENV, "").strip()
    if not named:
        return store.read_or_create(PASSWORD_SECRET)
    try:
        password = Path(named).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise DatabaseBootstrapError(
            f"{PASSWORD_FILE_ENV}: cannot read {named} ({exc.strerror}); mount the "
            f"watchdog's password Secret there or unset it"
        ) from None
    if not password:
        raise DatabaseBootstrapError(f"{PASSWORD_FILE_ENV}: {named} is empty")
    return password, False


async def _ensure_watchdog_login(su: Connection, store: SecretStore) -> list[str]:
    """The session watchdog's own login (:mod:`orders_ops.session_watchdog`): it may read
    every session's activity and end a non-superuser session, and nothing else."""
    from orders_ops.session_watchdog import WATCHDOG_ROLE

    password, new = _watchdog_password(store)
    changes = await _ensure_role(su, watchdog_spec(), password, new)
    changes += await _ensure_memberships(su, WATCHDOG_ROLE)
    return changes


def watchdog_spec() -> _RoleSpec:
    from orders_ops.session_watchdog import WATCHDOG_ROLE

    return _RoleSpec(WATCHDOG_ROLE, login=True)


VAULT_ISSUED_PREFIXES: tuple[str, ...] = tuple(f"v-{r}-" for r in DB_ROLES)
"""How the logins Vault issues are named (``orders_ops.vault_database.username_prefix``)."""


def declared_memberships(member: str) -> tuple[Membership, ...]:
    """Every role the bootstrap's login ``member`` is a member of, and nothing else."""
    groups = tuple(group_membership(r) for r in DB_ROLES) if member == VAULT_ADMIN_ROLE else ()
    return (*(m for m in login_memberships() if m.member == member), *groups)


async def _ensure_memberships(su: Connection, member: str) -> list[str]:
    """The login's built-in memberships (its group ones: :func:`_converge_group`); a
    membership nobody declared (granted by hand) is revoked: the login is the bootstrap's."""
    changes: list[str] = []
    for m in login_memberships():
        if m.member == member:
            changes += await _ensure_membership(
                su, m.group, m.member, admin=m.admin, inherit=m.inherit, set_=m.set_
            )
    wanted = {m.group for m in declared_memberships(member)}
    rows = await su.fetch(
        """SELECT g.rolname AS grp, pg_get_userbyid(m.grantor) AS grantor
           FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
           WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = $1)""",
        member,
    )
    for r in rows:
        # PostgreSQL makes vault_admin ADMIN of every login it creates (Vault's v-<role>-…):
        # it needs that to end them, so those are never revoked
        if r["grp"] in wanted or str(r["grp"]).startswith(VAULT_ISSUED_PREFIXES):
            continue
        await su.execute(
            f"REVOKE {quote_ident(r['grp'])} FROM {quote_ident(member)} "
            f"GRANTED BY {quote_ident(r['grantor'])}"
        )
        changes.append(f"revoked {r['grp']} from {member} (not declared)")
    return changes


async def bootstrap_database(
    settings: StackSettings,
    *,
    vault_is_new: bool = False,
    reset_vault_admin: bool = False,
    migrations_dir: Traversable | None = None,
    store: SecretStore | None = None,
    seed_demo_data: bool | None = None,
) -> list[str]:
    """Bring roles, database, schema and privileges to the described state.

    Returns one human-readable line per change (never a secret); an
    already-bootstrapped database returns ``[]``. ``vault_is_new`` says the dev
    Vault was just (re)started empty, so logins it issued earlier are orphans
    to drop, and that it no longer holds vault_admin's password: a new one-time
    password is set for it to take over. ``reset_vault_admin`` does the same for
    a Vault that lost its database connection. ``migrations_dir`` replaces the
    packaged SQL files (tests). ``seed_demo_data`` None: :func:`seed_demo_data_wanted`.
    """
    if seed_demo_data is None:
        seed_demo_data = seed_demo_data_wanted(settings)
    migrations = load_migrations(migrations_dir)  # a bad file fails before anything changes
    store = store or secret_store(settings)
    owner_pw, owner_new = store.read_or_create(owner_password_file(settings).name)
    handover = vault_admin_password_file(settings).name
    database = settings.database
    changes: list[str] = []

    su = await _connect(settings, "postgres", settings.pg_superuser_password(), "postgres")
    try:
        await su.execute("SELECT pg_advisory_lock($1)", _BOOTSTRAP_LOCK_KEY)
        changes += await _ensure_role(su, OWNER_SPEC, owner_pw, owner_new)
        admin_exists = await su.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", VAULT_ADMIN_ROLE
        )
        admin_pw: str | None = store.read(handover)
        admin_new = False
        if not admin_exists or vault_is_new or reset_vault_admin:
            if admin_pw is None:  # else: a one-time password not yet handed over, reuse it
                admin_pw, admin_new = store.read_or_create(handover)
        # admin_pw None: Vault has rotated the password; it is Vault's, leave it alone
        changes += await _ensure_role(su, VAULT_ADMIN_SPEC, admin_pw, admin_new)
        changes += await _ensure_memberships(su, VAULT_ADMIN_ROLE)
        changes += await _ensure_watchdog_login(su, store)
        changes += await _converge_database(su, database)

        owner = await _connect(settings, OWNER_ROLE, owner_pw, database)
        try:
            if not await owner.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", SCHEMA
            ):
                await owner.execute(f"CREATE SCHEMA {quote_ident(SCHEMA)}")
                changes.append(f"created schema {SCHEMA} owned by {OWNER_ROLE}")
            schema_owner = await owner.fetchval(
                "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1", SCHEMA
            )
            if schema_owner != OWNER_ROLE:
                raise DatabaseBootstrapError(
                    f"schema {SCHEMA} in database {database} is owned by {schema_owner}, not "
                    f"{OWNER_ROLE}: ALTER SCHEMA {SCHEMA} OWNER TO {OWNER_ROLE} (as a superuser)"
                )
            changes += await apply_migrations(owner, migrations, demo_data=seed_demo_data)
        finally:
            await owner.close()

        su_db = await _connect(settings, "postgres", settings.pg_superuser_password(), database)
        try:
            for db_role in DB_ROLES:
                changes += await _converge_group(su_db, database, db_role)
            if vault_is_new:
                changes += await reap_orphan_logins(su_db)
        finally:
            await su_db.close()
    finally:
        await su.close()  # also releases the advisory lock
    return changes
