"""Vault's ``database`` secrets engine for the order database, as code.

One connection (``orders``, logging in as ``vault_admin``) and one Vault role
per catalog database role. An issued credential is a short-lived LOGIN role
whose only privilege is membership of its NOLOGIN group role (see
:mod:`orders_ops.database`); revoking the lease ends its sessions and drops it.

Idempotency: every setting is read back and compared; only what differs is
written.

The ``vault_admin`` password is Vault's alone. ``vault_admin`` can create a
login in any group role, so it is superuser-equivalent for the app's roles, and
no person or file should hold a working password of it. The database bootstrap
sets a *one-time* password when it creates the role (or when a fresh Vault must
be given one) and stores it until it is handed over; here it is written into
the connection, the stored copy is deleted, and Vault rotates it
(``database/rotate-root/orders``). The connection records that in a field of
our own (``connection_details.orders_root_rotated``, stored and returned by the
plugin but not used), so a run interrupted between hand-over and rotation
rotates on the next run, and a rotated connection is never written with a
password again: updating other settings without ``password`` keeps Vault's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import hvac
import hvac.exceptions

from orders_ops.database import (
    ROLE_SETTINGS,
    VAULT_ADMIN_ROLE,
    quote_ident,
    vault_admin_password_file,
)
from orders_ops.secretfiles import SecretStore, secret_store
from orders_ops.settings import SettingsError, StackSettings
from orders_shared.catalog import DB_ROLES, group_role

MOUNT = "database"
CONNECTION = "orders"
PLUGIN = "postgresql-database-plugin"
ROTATED_FIELD = "orders_root_rotated"
"""Our field in the connection: ``"true"`` once Vault has rotated vault_admin's password."""

# The Vault role name leads the username, so pg_stat_activity and audit rows
# ("db_user") say which step a login belongs to. Longest: 2 + 23 + 1 + 20 + 1 +
# 10 = 57 characters, inside Postgres's 63; lowercase so it is easy to type.
USERNAME_TEMPLATE = (
    '{{ printf "v-%s-%s-%s" .RoleName (random 20) (unix_time) | truncate 63 | lowercase }}'
)

TTL_ENV = "ORDERS_DB_CRED_TTL"
MAX_TTL_ENV = "ORDERS_DB_CRED_MAX_TTL"
DEFAULT_TTL = 300
DEFAULT_MAX_TTL = 1800

_DURATION = re.compile(r"^(\d+)([smh]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600}


class VaultDatabaseError(RuntimeError):
    """Vault's database engine could not be configured; the message says why and how."""


def username_prefix(db_role: str) -> str:
    """How every username Vault issues for ``db_role`` starts."""
    return f"v-{db_role}-"


def _duration(name: str, env: Mapping[str, str], default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    m = _DURATION.match(raw)
    if m is None or int(m.group(1)) == 0:
        raise SettingsError(
            f"{name}={raw!r} is not a positive duration: use seconds ('300') or "
            "a number with s, m or h ('5m', '1h')"
        )
    return int(m.group(1)) * _UNIT[m.group(2)]


def credential_ttls(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(default_ttl, max_ttl) in seconds from ORDERS_DB_CRED_TTL / ORDERS_DB_CRED_MAX_TTL."""
    env = os.environ if env is None else env
    ttl = _duration(TTL_ENV, env, DEFAULT_TTL)
    max_ttl = _duration(MAX_TTL_ENV, env, DEFAULT_MAX_TTL)
    if ttl > max_ttl:
        raise SettingsError(
            f"{TTL_ENV} ({ttl}s) is longer than {MAX_TTL_ENV} ({max_ttl}s): a lease can "
            f"never outlive its max TTL; lower {TTL_ENV} or raise {MAX_TTL_ENV}"
        )
    return ttl, max_ttl


def creation_statements(db_role: str) -> list[str]:
    """Membership of the group role only, never per-table grants (they bloat the catalog),
    plus the session limits of :data:`orders_ops.database.ROLE_SETTINGS` (Postgres applies
    the settings of the login role, not those of the groups it is a member of)."""
    return [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
        "VALID UNTIL '{{expiration}}' INHERIT",
        *(f"ALTER ROLE \"{{{{name}}}}\" SET {k} = '{v}'" for k, v in ROLE_SETTINGS.items()),
        f'GRANT {quote_ident(group_role(db_role))} TO "{{{{name}}}}"',
    ]


def revocation_statements(db_role: str) -> list[str]:
    """End the login for good, including sessions a pool already holds.

    NOLOGIN comes first so a pool cannot reconnect between the terminate and
    the drop (DROP ROLE does not end sessions, and a session that outlived
    its role would keep running).
    """
    return [
        'ALTER ROLE "{{name}}" NOLOGIN',
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}'",
        f'REVOKE {quote_ident(group_role(db_role))} FROM "{{{{name}}}}"',
        'DROP ROLE IF EXISTS "{{name}}"',
    ]


def renew_statements() -> list[str]:
    return ["ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}'"]


def _connection_url(settings: StackSettings) -> str:
    return (
        f"postgresql://{{{{username}}}}:{{{{password}}}}@{settings.db_host}:"
        f"{settings.postgres_port}/{settings.database}{settings.db_ssl_query(for_vault=True)}"
    )


@dataclass(frozen=True)
class _Desired:
    connection: dict[str, Any]  # what read_connection returns, minus what Vault adds
    roles: dict[str, dict[str, Any]]


def _desired(settings: StackSettings) -> _Desired:
    ttl, max_ttl = credential_ttls()
    return _Desired(
        connection={
            "plugin_name": PLUGIN,
            "allowed_roles": sorted(DB_ROLES),
            "connection_details": {
                "connection_url": _connection_url(settings),
                "username": VAULT_ADMIN_ROLE,
                "password_authentication": "scram-sha-256",
                "username_template": USERNAME_TEMPLATE,
                ROTATED_FIELD: "true",
            },
        },
        roles={
            r: {
                "db_name": CONNECTION,
                "creation_statements": creation_statements(r),
                "revocation_statements": revocation_statements(r),
                "renew_statements": renew_statements(),
                "rollback_statements": [],
                "default_ttl": ttl,
                "max_ttl": max_ttl,
            }
            for r in DB_ROLES
        },
    )


def _read(client: hvac.Client, path: str) -> dict[str, Any] | None:
    try:
        resp = client.read(path)
    except hvac.exceptions.InvalidPath:
        return None
    if not resp:
        return None
    data: dict[str, Any] = resp["data"]
    return data


def _connection_current(current: dict[str, Any] | None) -> dict[str, Any] | None:
    if current is None:
        return None
    details = current.get("connection_details") or {}
    return {
        "plugin_name": current.get("plugin_name"),
        "allowed_roles": sorted(current.get("allowed_roles") or []),
        "connection_details": {
            k: details.get(k)
            for k in (
                "connection_url",
                "username",
                "password_authentication",
                "username_template",
                ROTATED_FIELD,
            )
        },
    }


def _write_connection(
    client: hvac.Client,
    settings: StackSettings,
    details: dict[str, Any],
    allowed_roles: list[str],
    password: str | None,
) -> None:
    extra = {} if password is None else {"password": password}
    try:
        client.secrets.database.configure(
            CONNECTION,
            PLUGIN,
            verify_connection=True,
            allowed_roles=allowed_roles,
            mount_point=MOUNT,
            **details,
            **extra,
        )
    except hvac.exceptions.VaultError as exc:
        raise VaultDatabaseError(
            f"Vault could not configure connection {CONNECTION} to Postgres at "
            f"{settings.db_host}:{settings.postgres_port} as {VAULT_ADMIN_ROLE}: {exc}. "
            "Run the database bootstrap first (it creates vault_admin and its one-time "
            "password); if Vault lost the password, run it with reset_vault_admin=True."
        ) from exc


def _configure_connection(
    client: hvac.Client, settings: StackSettings, desired: _Desired, store: SecretStore
) -> list[str]:
    """Hand a one-time password over (if one waits), rotate it, align the other settings."""
    changes: list[str] = []
    want = desired.connection
    details = dict(want["connection_details"])
    handover_name = vault_admin_password_file(settings).name
    handover = store.read(handover_name)
    current = _connection_current(_read(client, f"{MOUNT}/config/{CONNECTION}"))
    if handover is not None:
        _write_connection(
            client,
            settings,
            {**details, ROTATED_FIELD: "false"},
            want["allowed_roles"],
            handover,
        )
        store.delete(handover_name)  # Vault holds it now; rotated right below
        verb = "configured" if current is None else "updated"
        changes.append(
            f"{verb} Vault database connection {CONNECTION} (as {VAULT_ADMIN_ROLE}) with its "
            "one-time password"
        )
        current = _connection_current(_read(client, f"{MOUNT}/config/{CONNECTION}"))
    if current is None:
        raise VaultDatabaseError(
            f"Vault has no database connection {CONNECTION} and there is no one-time password "
            f"of {VAULT_ADMIN_ROLE} to give it (Vault rotated it earlier): run the database "
            "bootstrap with reset_vault_admin=True ('orders-stack up' does it for a fresh "
            "dev Vault), then this again"
        )
    if current["connection_details"].get(ROTATED_FIELD) != "true":
        try:
            client.write_data(f"{MOUNT}/rotate-root/{CONNECTION}")
        except hvac.exceptions.VaultError as exc:
            raise VaultDatabaseError(
                f"Vault could not rotate the password of {VAULT_ADMIN_ROLE} "
                f"({MOUNT}/rotate-root/{CONNECTION}): {exc}. Run the bootstrap again; until "
                "then the one-time password Vault was given still works"
            ) from exc
        changes.append(f"Vault rotated the password of {VAULT_ADMIN_ROLE}: only Vault knows it now")
        current = None  # record the rotation below
    if current != want:
        # no password: Vault keeps the one it holds (the rotated one)
        _write_connection(client, settings, details, want["allowed_roles"], None)
        if not changes:
            changes.append(f"updated Vault database connection {CONNECTION} settings")
    return changes


def configure_database_engine(
    client: hvac.Client, settings: StackSettings, store: SecretStore | None = None
) -> list[str]:
    """Mount, connection and one role per catalog DB role; returns the changes made.

    Needs the database bootstrap to have run (vault_admin, its password file
    and the group roles): Vault verifies the connection when it is written.
    """
    desired = _desired(settings)
    store = store or secret_store(settings)
    changes: list[str] = []

    mounts = client.sys.list_mounted_secrets_engines()
    mounts = mounts.get("data", mounts)
    mount = mounts.get(f"{MOUNT}/")
    if mount is None:
        client.sys.enable_secrets_engine(
            "database", path=MOUNT, description="short-lived Postgres logins for the order steps"
        )
        changes.append(f"enabled the database secrets engine at {MOUNT}/")
    elif mount.get("type") != "database":
        raise VaultDatabaseError(
            f"{MOUNT}/ is already mounted as a {mount.get('type')!r} engine, not 'database': "
            f"disable it ('bao secrets disable {MOUNT}') or move it, then bootstrap again"
        )

    changes += _configure_connection(client, settings, desired, store)

    for db_role, want in desired.roles.items():
        have = _read(client, f"{MOUNT}/roles/{db_role}")
        if have is not None and {k: have.get(k) for k in want} == want:
            continue
        client.write_data(f"{MOUNT}/roles/{db_role}", data=want)
        verb = "created" if have is None else "updated"
        changes.append(
            f"{verb} Vault database role {db_role} -> group {group_role(db_role)} "
            f"(ttl {want['default_ttl']}s, max {want['max_ttl']}s)"
        )

    # roles on our connection that the catalog no longer knows would still issue logins
    try:
        listed = client.list(f"{MOUNT}/roles")
    except hvac.exceptions.InvalidPath:
        listed = None
    for name in sorted((listed or {}).get("data", {}).get("keys", [])):
        if name in desired.roles:
            continue
        role = _read(client, f"{MOUNT}/roles/{name}")
        if role is not None and role.get("db_name") == CONNECTION:
            client.delete(f"{MOUNT}/roles/{name}")
            changes.append(f"deleted Vault database role {name} (not in the catalog)")
    return changes
