"""``orders-bootstrap plan``: what the code declares against what the servers hold.

Two descriptions of the same objects are built and compared:

- :func:`declared`: from the very declarations ``apply`` (the bootstrap) writes
  (:func:`orders_ops.policies.all_policies`, the auth roles of
  :mod:`orders_ops.vault_bootstrap`, the database roles of
  :mod:`orders_ops.vault_database`, :func:`orders_ops.pki.roles`, the role specs,
  memberships and :data:`orders_ops.grants.GRANT_MATRIX` of :mod:`orders_ops.database`),
  so whatever is added there is planned too;
- :func:`read_vault` and :func:`read_postgres`: what Vault and PostgreSQL hold now, read
  with the bootstrap's own identity (nothing is written).

:func:`diff` compares two descriptions and knows no server: each object is *in sync*,
*missing* (apply creates it), *changed* (apply puts the code's settings back; the diff
says how), *removed* (made by this code, no longer declared: apply deletes it) or *not
made by the code* (found where the code manages things, never touched: reported for a
person to look at).

Exit codes of ``orders-bootstrap plan``: 0 in sync; 2 drift (something apply would
change); 3 only with ``--strict``: no drift, but objects the code did not make; 1 the
servers could not be read.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import hvac
import hvac.exceptions

from orders_ops import pki
from orders_ops.database import (
    OWNER_SPEC,
    ROLE_SETTINGS,
    VAULT_ADMIN_ROLE,
    VAULT_ADMIN_SPEC,
    VAULT_ISSUED_PREFIXES,
    Connection,
    Membership,
    _connect,
    _RoleSpec,
    declared_memberships,
    expected_privileges,
    group_membership,
    group_spec,
    read_privileges,
    read_role_settings,
    watchdog_spec,
)
from orders_ops.grants import SCHEMA
from orders_ops.policies import (
    PKI_MOUNT,
    TRANSIT_MOUNT,
    all_policies,
    body_hash,
    split_hash_header,
)
from orders_ops.settings import StackSettings
from orders_ops.vault_bootstrap import (
    JWT_MOUNT,
    KUBERNETES_MOUNT,
    POLICY_PREFIXES,
    READER_MOUNT,
    READER_ROLE,
    KubernetesAuthConfig,
    ReaderAuthConfig,
    TokenTTLs,
    jwt_role,
    kubernetes_role,
    list_names,
    login_specs,
    owned_login_role,
    transit_key_settings,
)
from orders_ops.vault_database import CONNECTION, MOUNT, _connection_current, _desired
from orders_shared.catalog import DB_ROLES, group_role

EXIT_IN_SYNC, EXIT_ERROR, EXIT_DRIFT, EXIT_UNMANAGED = 0, 1, 2, 3

POLICY = "vault policy"
AUTH_ROLE = "vault auth role"
AUTH_CONFIG = "vault auth config"
DB_CONNECTION = "vault database connection"
DB_ROLE = "vault database role"
TRANSIT_KEY = "vault transit key"
PKI_ROLE = "vault pki role"
PG_ROLE = "postgres role"
PG_GROUP = "postgres group role"
PG_DATABASE = "postgres database"

Key = tuple[str, str]
Action = Literal["missing", "changed", "removed", "unmanaged"]


@dataclass(frozen=True)
class Item:
    """One object: its kind, name and the settings the code fixes (normalised)."""

    kind: str
    name: str
    settings: Mapping[str, Any]
    owned: bool = True
    """Read from a server: made by this code (``apply`` may delete it once undeclared)."""
    note: str = ""


Description = dict[Key, Item]


@dataclass(frozen=True)
class Entry:
    action: Action
    kind: str
    name: str
    lines: tuple[str, ...] = ()


@dataclass
class Plan:
    entries: list[Entry] = field(default_factory=list)
    in_sync: list[Key] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def drift(self) -> list[Entry]:
        return [e for e in self.entries if e.action != "unmanaged"]

    @property
    def unmanaged(self) -> list[Entry]:
        return [e for e in self.entries if e.action == "unmanaged"]

    def exit_code(self, *, strict: bool = False) -> int:
        if self.drift:
            return EXIT_DRIFT
        if strict and self.unmanaged:
            return EXIT_UNMANAGED
        return EXIT_IN_SYNC

    def render(self, *, verbose: bool = False) -> str:
        marks = {"missing": "+", "changed": "~", "removed": "-", "unmanaged": "?"}
        words = {
            "missing": "missing (apply creates it)",
            "changed": "changed (apply puts the code's settings back)",
            "removed": "removed from the code (apply deletes it)",
            "unmanaged": "not made by the code (left alone; a person should look)",
        }
        out = []
        for e in sorted(self.entries, key=lambda e: (e.action != "changed", e.kind, e.name)):
            out.append(f"{marks[e.action]} {e.kind} {e.name}: {words[e.action]}")
            out.extend(f"    {line}" for line in e.lines)
        if verbose:
            out.extend(f"= {kind} {name}" for kind, name in sorted(self.in_sync))
        out.extend(f"note: {n}" for n in self.notes)
        n = len(self.drift)
        summary = (
            f"{len(self.in_sync)} in sync, {n} to change"
            f", {len(self.unmanaged)} not made by the code"
        )
        out.append(("drift: " if n else "in sync: ") + summary)
        return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the pure diff


def _text_diff(want: str, have: str) -> list[str]:
    return [
        line.rstrip("\n")
        for line in difflib.unified_diff(
            want.splitlines(keepends=True),
            have.splitlines(keepends=True),
            fromfile="declared",
            tofile="server",
            n=1,
        )
    ]


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _field_lines(name: str, want: Any, have: Any) -> list[str]:
    if isinstance(want, str) and isinstance(have, str) and ("\n" in want or "\n" in have):
        return [f"{name}:", *(f"  {line}" for line in _text_diff(want, have))]
    if isinstance(want, list) and isinstance(have, list):
        extra = [x for x in have if x not in want]
        lacking = [x for x in want if x not in have]
        if not extra and not lacking:
            return [f"{name}: same items, another order: declared {_show(want)}"]
        return [
            f"{name}:",
            *(f"  - {_show(x)} (declared, not on the server)" for x in lacking),
            *(f"  + {_show(x)} (on the server, not declared)" for x in extra),
        ]
    return [f"{name}: declared {_show(want)}, server has {_show(have)}"]


def _policy_notes(text: str | None, want: str | None) -> list[str]:
    """Which version of a policy is in force, by its hash header."""
    if text is None:
        return []
    header, body = split_hash_header(text)
    if header is None:
        return ["in force: no hash header (not written by this code)"]
    lines = [f"in force: sha256 {header[:12]} (header)"]
    if body_hash(body) != header:
        lines.append(
            f"edited by hand: the body hashes to sha256 {body_hash(body)[:12]}, not to its header"
        )
    if want is not None:
        lines.append(f"declared: sha256 {(split_hash_header(want)[0] or '')[:12]}")
    return lines


def diff(declared: Mapping[Key, Item], live: Mapping[Key, Item]) -> Plan:
    """Compare what the code declares with what a server holds; knows no server."""
    plan = Plan()
    for key, want in sorted(declared.items()):
        have = live.get(key)
        if have is None:
            plan.entries.append(Entry("missing", *key))
            continue
        lines: list[str] = []
        for name, value in want.settings.items():
            if have.settings.get(name) != value:
                lines += _field_lines(name, value, have.settings.get(name))
        if lines:
            if want.kind == POLICY:
                lines += _policy_notes(have.settings.get("policy"), want.settings.get("policy"))
            plan.entries.append(Entry("changed", *key, tuple(lines)))
        else:
            plan.in_sync.append(key)
    for key, have in sorted(live.items()):
        if key in declared:
            continue
        lines = [have.note] if have.note else []
        if have.kind == POLICY:
            lines += _policy_notes(have.settings.get("policy"), None)
        plan.entries.append(Entry("removed" if have.owned else "unmanaged", *key, tuple(lines)))
    return plan


# --------------------------------------------------------------------------- normalising


def _norm(value: Any, *, ordered: bool = False) -> Any:
    """Strings stripped, lists sorted (unless their order matters), dicts recursively: how
    the bootstrap compares, so what it leaves alone plans in sync."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, Mapping):
        return {k: _norm(v, ordered=ordered) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        items = [_norm(v, ordered=ordered) for v in value]
        return items if ordered else sorted(items, key=_show)
    return value


def _item(kind: str, name: str, settings: Mapping[str, Any], *, ordered: bool = False) -> Item:
    return Item(kind, name, {k: _norm(v, ordered=ordered) for k, v in settings.items()})


def _restrict(
    kind: str, name: str, have: Mapping[str, Any], want: Item, *, ordered: bool = False
) -> Item:
    """What the server holds of the settings the code declares (Vault adds many more)."""
    return _item(kind, name, {k: have.get(k) for k in want.settings}, ordered=ordered)


# --------------------------------------------------------------------------- declared


def _auth_mounts(settings: StackSettings) -> dict[str, dict[str, dict[str, Any]]]:
    """Auth mount -> role name -> settings, as :func:`configure_vault` writes them."""
    ttls = TokenTTLs.from_env()
    mounts: dict[str, dict[str, dict[str, Any]]] = {}
    if settings.local_issuer:  # local or external: workers log in at auth/jwt
        mounts[JWT_MOUNT] = {s.identity: jwt_role(settings, s, ttls) for s in login_specs()}
    if settings.mode != "external":  # external mode has no cluster to review tokens with
        mounts[KUBERNETES_MOUNT] = {
            s.identity: kubernetes_role(settings, s, ttls) for s in login_specs()
        }
    if _reader_auth_wanted(settings):
        mounts[READER_MOUNT] = {READER_ROLE: ReaderAuthConfig.from_env(settings).reader_role()}
    return mounts


def _reader_auth_wanted(settings: StackSettings) -> bool:
    return settings.local_issuer or bool(os.environ.get("ORDERS_READER_OIDC_DISCOVERY_URL"))


def _auth_configs(settings: StackSettings) -> dict[str, dict[str, Any]]:
    from orders_ops import issuer

    configs: dict[str, dict[str, Any]] = {}
    if settings.local_issuer:
        configs[JWT_MOUNT] = {
            "jwt_validation_pubkeys": issuer.public_key_pems(settings),
            "bound_issuer": issuer.ISSUER,
            "jwt_supported_algs": [issuer.ALGORITHM],
        }
    elif settings.mode == "cluster":
        # in a cluster, where Vault sends TokenReviews and which issuer it expects; locally
        # it is left unset (process mode logs in with jwt), so not planned
        configs[KUBERNETES_MOUNT] = KubernetesAuthConfig.from_env().as_data()
    if _reader_auth_wanted(settings):
        configs[READER_MOUNT] = ReaderAuthConfig.from_env(settings).as_config()
    return configs


def _role_flags(spec: _RoleSpec) -> dict[str, Any]:
    return {"attributes": spec.flags()}


def _membership_text(m: Membership) -> str:
    return f"{m.group} ({m.options()})"


def declared(settings: StackSettings) -> Description:
    """Everything ``apply`` makes, from the declarations it writes."""
    out: Description = {}

    def add(item: Item) -> None:
        out[(item.kind, item.name)] = item

    for name, text in all_policies().items():
        add(Item(POLICY, name, {"policy": text}))
    for mount, config in _auth_configs(settings).items():
        add(_item(AUTH_CONFIG, f"auth/{mount}/config", config))
    for mount, roles in _auth_mounts(settings).items():
        for name, role in roles.items():
            add(_item(AUTH_ROLE, f"auth/{mount}/role/{name}", role))
    want = _desired(settings)
    add(_item(DB_CONNECTION, f"{MOUNT}/config/{CONNECTION}", want.connection, ordered=True))
    for name, role in want.roles.items():
        add(_item(DB_ROLE, f"{MOUNT}/roles/{name}", role, ordered=True))
    from orders_ops.policies import transit_keys

    for name in transit_keys():
        add(_item(TRANSIT_KEY, f"{TRANSIT_MOUNT}/keys/{name}", transit_key_settings(name)))
    for name, role in pki.roles().items():
        add(_item(PKI_ROLE, f"{PKI_MOUNT}/roles/{name}", role))

    for spec in (OWNER_SPEC, VAULT_ADMIN_SPEC, watchdog_spec()):
        memberships = [_membership_text(m) for m in declared_memberships(spec.name)]
        add(_item(PG_ROLE, spec.name, {**_role_flags(spec), "memberships": memberships}))
    for db_role in DB_ROLES:
        m = group_membership(db_role)
        add(
            _item(
                PG_GROUP,
                group_role(db_role),
                {
                    **_role_flags(group_spec(db_role)),
                    "memberships": [_membership_text(m) for m in declared_memberships(m.group)],
                    "database privileges": ["CONNECT"],
                    "schema privileges": ["USAGE"],
                    "settings": dict(ROLE_SETTINGS),
                    f"{m.member} membership": m.options(),
                    "privileges": [_privilege(p) for p in expected_privileges(db_role)],
                },
            )
        )
    add(
        _item(
            PG_DATABASE,
            settings.database,
            {
                "owner": OWNER_SPEC.name,
                "PUBLIC privileges": [],
                f"{VAULT_ADMIN_ROLE} privileges": ["CONNECT"],
                "search_path": SCHEMA,
            },
        )
    )
    return out


def _privilege(p: tuple[str, str, str | None]) -> str:
    table, priv, col = p
    return f"{priv} on {SCHEMA}.{table}" + (f"({col})" if col else "")


# --------------------------------------------------------------------------- Vault reader


def _vault_read(client: hvac.Client, path: str) -> dict[str, Any] | None:
    try:
        response = client.read(path)
    except hvac.exceptions.InvalidPath:
        return None
    if not response:
        return None
    data: dict[str, Any] = response.get("data") or {}
    return data


def _listing(client: hvac.Client, path: str, notes: list[str]) -> list[str]:
    try:
        return list_names(client, path)
    except hvac.exceptions.Forbidden:
        notes.append(
            f"may not list {path}: objects there that the code did not make are not "
            "reported (re-run 'orders-bootstrap admin-setup' to grant list)"
        )
        return []


def read_vault(
    client: hvac.Client, settings: StackSettings, want: Mapping[Key, Item], notes: list[str]
) -> Description:
    """What Vault holds now, of the kinds ``want`` has, and what else is in the places the
    code manages (its policy names, its auth mounts, its engines). Read only."""
    from orders_ops.bootstrap_identity import BOOTSTRAP_IDENTITY, BOOTSTRAP_POLICY

    out: Description = {}

    def add(item: Item) -> None:
        out[(item.kind, item.name)] = item

    # policies: the code's names only (a shared Vault holds other teams' too)
    names = set(_listing(client, "sys/policies/acl", notes))
    names |= {name for kind, name in want if kind == POLICY}
    for name in sorted(names):
        if not name.startswith(POLICY_PREFIXES) or name == BOOTSTRAP_POLICY:
            continue
        data = _vault_read(client, f"sys/policies/acl/{name}")
        if data is None:
            continue
        text = str(data.get("policy") or "")
        owned = split_hash_header(text)[0] is not None
        add(Item(POLICY, name, {"policy": text}, owned=owned))

    for (kind, name), item in want.items():
        if kind == AUTH_CONFIG:
            data = _vault_read(client, name)
            if data is not None:
                add(_restrict(kind, name, data, item))

    # auth roles: every role on the code's own mounts; on kubernetes (often shared), orders-*
    mounts = {name.split("/")[1] for kind, name in want if kind == AUTH_ROLE}
    for mount in sorted(mounts):
        listed = set(_listing(client, f"auth/{mount}/role", notes))
        listed |= {n.rsplit("/", 1)[1] for k, n in want if k == AUTH_ROLE and f"/{mount}/" in n}
        for role in sorted(listed):
            if mount == KUBERNETES_MOUNT and (
                not role.startswith("orders-") or role == BOOTSTRAP_IDENTITY
            ):
                continue
            path = f"auth/{mount}/role/{role}"
            data = _vault_read(client, path)
            if data is None:
                continue
            declared_item = want.get((AUTH_ROLE, path))
            if declared_item is not None:
                add(_restrict(AUTH_ROLE, path, data, declared_item))
            else:
                owned = owned_login_role(role, data)
                policies = ", ".join(data.get("token_policies") or []) or "none"
                add(
                    Item(
                        AUTH_ROLE,
                        path,
                        {"token_policies": data.get("token_policies")},
                        owned=owned,
                        note=f"grants policies: {policies}",
                    )
                )

    connection = f"{MOUNT}/config/{CONNECTION}"
    current = _connection_current(_vault_read(client, connection))
    if current is not None and (DB_CONNECTION, connection) in want:
        add(_restrict(DB_CONNECTION, connection, current, want[(DB_CONNECTION, connection)]))
    for role in _listing(client, f"{MOUNT}/roles", notes):
        path = f"{MOUNT}/roles/{role}"
        data = _vault_read(client, path)
        if data is None:
            continue
        if (DB_ROLE, path) in want:
            add(_restrict(DB_ROLE, path, data, want[(DB_ROLE, path)], ordered=True))
        else:
            ours = data.get("db_name") == CONNECTION
            add(
                Item(
                    DB_ROLE,
                    path,
                    {"db_name": data.get("db_name")},
                    owned=ours,
                    note=f"issues logins on connection {data.get('db_name')}",
                )
            )

    keys = set(_listing(client, f"{TRANSIT_MOUNT}/keys", notes))
    keys |= {n.rsplit("/", 1)[1] for k, n in want if k == TRANSIT_KEY}
    for key in sorted(keys):
        path = f"{TRANSIT_MOUNT}/keys/{key}"
        data = _vault_read(client, path)
        if data is None:
            continue
        if (TRANSIT_KEY, path) in want:
            add(_restrict(TRANSIT_KEY, path, data, want[(TRANSIT_KEY, path)]))
        else:
            add(
                Item(
                    TRANSIT_KEY,
                    path,
                    {"type": data.get("type")},
                    owned=False,
                    note="apply never deletes a Transit key: what it encrypted would be lost",
                )
            )

    roles = set(_listing(client, f"{PKI_MOUNT}/roles", notes))
    roles |= {n.rsplit("/", 1)[1] for k, n in want if k == PKI_ROLE}
    for role in sorted(roles):
        path = f"{PKI_MOUNT}/roles/{role}"
        data = _vault_read(client, path)
        if data is None:
            continue
        if (PKI_ROLE, path) in want:
            add(_restrict(PKI_ROLE, path, data, want[(PKI_ROLE, path)]))
        else:
            domains = ", ".join(data.get("allowed_domains") or []) or "none"
            add(
                Item(
                    PKI_ROLE,
                    path,
                    {"allowed_domains": data.get("allowed_domains")},
                    owned=pki.owned_client_role(role, data),
                    note=f"issues certificates for: {domains}",
                )
            )
    return out


# --------------------------------------------------------------------------- PostgreSQL reader


async def _role_item(conn: Connection, kind: str, name: str, want: Item) -> Item | None:
    row = await conn.fetchrow("SELECT * FROM pg_authid WHERE rolname = $1", name)
    if row is None:
        return None
    flags = {k: row[k] for k in want.settings["attributes"]}
    rows = await conn.fetch(
        """SELECT g.rolname AS grp, m.admin_option, m.inherit_option, m.set_option
           FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
           WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = $1)""",
        name,
    )
    memberships = [
        _membership_text(
            Membership(r["grp"], name, r["admin_option"], r["inherit_option"], r["set_option"])
        )
        for r in rows
        # vault_admin is ADMIN of each login it created for Vault: Vault's, not the code's
        if not str(r["grp"]).startswith(VAULT_ISSUED_PREFIXES)
    ]
    return _item(kind, name, {"attributes": flags, "memberships": memberships})


async def _acl(conn: Connection, sql: str, *args: object) -> list[str]:
    return [
        r["privilege_type"] + (" WITH GRANT OPTION" if r["is_grantable"] else "")
        for r in await conn.fetch(sql, *args)
    ]


_DB_ACL = """SELECT a.privilege_type, a.is_grantable
             FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
             WHERE d.datname = $1 AND a.grantee = $2"""
_SCHEMA_ACL = """SELECT a.privilege_type, a.is_grantable
                 FROM pg_namespace n,
                      aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
                 WHERE n.nspname = $1 AND a.grantee = $2"""


async def _oid(conn: Connection, role: str) -> int:
    return int(await conn.fetchval("SELECT oid FROM pg_roles WHERE rolname = $1", role) or -1)


async def _group_item(conn: Connection, database: str, db_role: str, want: Item) -> Item | None:
    name = group_role(db_role)
    base = await _role_item(conn, PG_GROUP, name, want)
    if base is None:
        return None
    oid = await _oid(conn, name)
    m = group_membership(db_role)
    rows = await conn.fetch(
        """SELECT admin_option, inherit_option, set_option FROM pg_auth_members
           WHERE roleid = $1 AND member = (SELECT oid FROM pg_roles WHERE rolname = $2)""",
        oid,
        m.member,
    )
    options = (
        "; ".join(Membership(name, m.member, r[0], r[1], r[2]).options() for r in rows) or "none"
    )
    role_settings = await read_role_settings(conn, name)
    return _item(
        PG_GROUP,
        name,
        {
            **base.settings,
            "database privileges": await _acl(conn, _DB_ACL, database, oid),
            "schema privileges": await _acl(conn, _SCHEMA_ACL, SCHEMA, oid),
            "settings": {k: role_settings.get(k) for k in ROLE_SETTINGS},
            f"{m.member} membership": options,
            "privileges": [_privilege(p) for p in await read_privileges(conn, name)],
        },
    )


async def _database_item(conn: Connection, database: str, want: Item) -> Item | None:
    owner = await conn.fetchval(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", database
    )
    if owner is None:
        return None
    config = await conn.fetchval(
        """SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
           WHERE d.datname = $1 AND s.setrole = 0""",
        database,
    )
    search_path = dict(c.split("=", 1) for c in (config or [])).get("search_path")
    return _item(
        PG_DATABASE,
        database,
        {
            "owner": owner,
            "PUBLIC privileges": await _acl(conn, _DB_ACL, database, 0),
            f"{VAULT_ADMIN_ROLE} privileges": await _acl(
                conn, _DB_ACL, database, await _oid(conn, VAULT_ADMIN_ROLE)
            ),
            "search_path": search_path,
        },
    )


async def _other_roles(conn: Connection, database: str, known: Iterable[str]) -> list[Item]:
    """Roles the code did not make that can reach the order data: an ACL entry on the
    database, schema ``app`` or anything in it, or a membership of an order group role.
    Vault-issued logins (``v-<role>-…``, members of their group) are Vault's, not listed."""
    groups = [group_role(r) for r in DB_ROLES]
    rows = await conn.fetch(
        """
        WITH acl AS (
            SELECT a.grantee, 'database ' || d.datname AS what, a.privilege_type
            FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = $1
            UNION ALL
            SELECT a.grantee, 'schema ' || n.nspname, a.privilege_type
            FROM pg_namespace n, aclexplode(n.nspacl) a WHERE n.nspname = $2
            UNION ALL
            SELECT a.grantee, $2 || '.' || c.relname, a.privilege_type
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                 aclexplode(c.relacl) a WHERE n.nspname = $2
            UNION ALL
            SELECT a.grantee, $2 || '.' || c.relname || '(' || att.attname || ')',
                   a.privilege_type
            FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace,
                 aclexplode(att.attacl) a
            WHERE n.nspname = $2 AND att.attnum > 0 AND NOT att.attisdropped
            UNION ALL
            SELECT m.member, 'member of ' || g.rolname, 'MEMBER'
            FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
            WHERE g.rolname = ANY($3::text[])
        )
        SELECT r.rolname, array_agg(DISTINCT acl.privilege_type || ' on ' || acl.what) AS what
        FROM acl JOIN pg_roles r ON r.oid = acl.grantee
        WHERE NOT (r.rolname = ANY($4::text[])) AND r.rolname NOT LIKE 'pg\\_%'
        GROUP BY r.rolname ORDER BY r.rolname
        """,
        database,
        SCHEMA,
        groups,
        [*known, "postgres"],
    )
    out = []
    for r in rows:
        if r["rolname"].startswith(VAULT_ISSUED_PREFIXES):
            continue
        what = sorted(r["what"])
        shown = ", ".join(what[:6]) + (f" and {len(what) - 6} more" if len(what) > 6 else "")
        out.append(
            Item(PG_ROLE, r["rolname"], {"reaches": what}, owned=False, note=f"holds {shown}")
        )
    return out


async def read_postgres(settings: StackSettings, want: Mapping[Key, Item]) -> Description:
    """What PostgreSQL holds of the roles, grants and database the code declares, and the
    other roles that can reach the order data. Read only, as the bootstrap's superuser."""
    out: Description = {}
    conn = await _connect(settings, "postgres", settings.pg_superuser_password(), settings.database)
    try:
        for (kind, name), item in want.items():
            found: Item | None = None
            if kind == PG_ROLE:
                found = await _role_item(conn, kind, name, item)
            elif kind == PG_GROUP:
                db_role = next(r for r in DB_ROLES if group_role(r) == name)
                found = await _group_item(conn, settings.database, db_role, item)
            elif kind == PG_DATABASE:
                found = await _database_item(conn, name, item)
            if found is not None:
                out[(kind, name)] = found
        known = [name for kind, name in want if kind in (PG_ROLE, PG_GROUP)]
        for other in await _other_roles(conn, settings.database, known):
            out[(other.kind, other.name)] = other
    finally:
        await conn.close()
    return out


# --------------------------------------------------------------------------- the command


def plan(settings: StackSettings) -> Plan:
    """Declared against live, for the stack ``settings`` names."""
    import asyncio

    from orders_ops.bootstrap_identity import bootstrap_vault_client

    want = declared(settings)
    notes: list[str] = []
    client = bootstrap_vault_client(settings)
    try:
        live = read_vault(client, settings, want, notes)
    finally:
        client.adapter.close()
    live.update(asyncio.run(read_postgres(settings, want)))
    result = diff(want, live)
    result.notes += notes
    return result
