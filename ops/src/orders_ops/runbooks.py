"""``orders-runbook``: the operator runbooks of docs/runbooks.md, as commands.

    orders-runbook revoke <service>     cut a compromised service off Vault and Postgres
    orders-runbook reenable <service>   restore its auth roles as the bootstrap defines them
    orders-runbook status <service>     is it disabled; how many Vault tokens it holds
    orders-runbook rotate-db-root       Vault rotates vault_admin's password (rotate-root)
    orders-runbook rotate-transit       rotate payload and seal keys; raise
                                        min_decryption_version only as far as is safe
    orders-runbook rotate-issuer-key [--finish [--overlap-over]]
    orders-runbook rotate-intermediate-ca [--finish [--overlap-over]]
                                        a new intermediate CA with overlap (runbook_pki)
    orders-runbook revoke-certificates <service>
                                        revoke its client certificates by serial, new CRL
    orders-runbook backup [--out DIR]   one archive (0600): raft snapshot, order database
                                        with its roles, Temporal's database, issuer public
                                        keys, and a manifest (runbook_backup)
    orders-runbook restore ARCHIVE [--keep-running]
                                        rebuild a stopped stack from it in a fresh
                                        ORDERS_STATE_DIR

Each prints what it did and how to verify it. Each first identifies the stack
(its state folder, the root token there, Vault answering to that token) and
refuses, in one line, when it cannot. They act with the root token, as the
bootstrap does: these are operator actions, never a worker's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import hvac
import hvac.exceptions

from orders_ops import issuer, runbook_backup
from orders_ops.policies import TRANSIT_MOUNT, seal_keys, transit_keys
from orders_ops.runbook_pki import (
    PKIRunbookError,
    finish_rotation,
    revoke_certificates,
    rotate_intermediate,
)
from orders_ops.settings import SettingsError, StackSettings
from orders_ops.vault_bootstrap import (
    CLIENT_SPEC,
    JWT_MOUNT,
    KUBERNETES_MOUNT,
    TokenTTLs,
    VaultBootstrapError,
    jwt_role,
    kubernetes_role,
    root_client,
)
from orders_ops.vault_database import CONNECTION
from orders_shared.catalog import SERVICES, ServiceSpec
from orders_shared.codec import (
    META_KEY_ID,
    META_WRAPPED_KEY,
    TokenTransit,
    TransitEnvelopeCodec,
    legacy_reading_enabled,
    parse_wrapped_key,
    rewrap_history_json,
)
from orders_shared.contracts.orchestrator import ORDER_WORKFLOW
from orders_shared.sealing import SEALED_FIELDS
from orders_shared.sealing import seal_key as sealed_field_key

DISABLED_SUBJECT = "revoked-by-orders-runbook"
"""The bound subject / ServiceAccount name a disabled auth role waits for: no token has it."""


class RunbookError(RuntimeError):
    """The runbook cannot run or did not finish; the message names what and the fix."""


# --------------------------------------------------------------------------- the stack


def identify(settings: StackSettings) -> hvac.Client:
    """A root client for the stack of ``settings``; RunbookError when it is not one."""
    if not settings.state_dir.is_dir():
        raise RunbookError(
            f"no orders stack state at {settings.state_dir}: set ORDERS_STATE_DIR to the "
            "stack's folder (or start one with 'orders-stack up')"
        )
    try:
        return root_client(settings)
    except VaultBootstrapError as exc:
        raise RunbookError(str(exc)) from None
    except OSError as exc:  # the secrets folder is root-only
        raise RunbookError(
            f"cannot read the root token in {settings.secrets_dir} ({exc.strerror}): run "
            "this as the stack's user (root)"
        ) from None


def _spec(name: str) -> ServiceSpec:
    if name in SERVICES:
        return SERVICES[name]
    if name == CLIENT_SPEC.name:
        return CLIENT_SPEC
    raise RunbookError(f"unknown service {name!r}; known: {', '.join([*SERVICES, 'client'])}")


def _auth_mounts(client: hvac.Client) -> dict[str, str]:
    """Auth mounts the bootstrap owns and that exist here: mount -> type."""
    methods = client.sys.list_auth_methods()["data"]
    return {
        m: methods[f"{m}/"]["type"] for m in (JWT_MOUNT, KUBERNETES_MOUNT) if f"{m}/" in methods
    }


def _read_role(client: hvac.Client, path: str) -> dict[str, Any] | None:
    try:
        response = client.read(path)
    except hvac.exceptions.InvalidPath:
        return None
    return None if not response else dict(response.get("data") or {})


def bootstrap_roles(settings: StackSettings, spec: ServiceSpec) -> dict[str, dict[str, Any]]:
    """auth mount -> the role exactly as the bootstrap writes it."""
    ttls = TokenTTLs.from_env()
    return {
        JWT_MOUNT: {**jwt_role(settings, spec, ttls), "allowed_redirect_uris": []},
        KUBERNETES_MOUNT: kubernetes_role(settings, spec, ttls),
    }


def role_disabled(client: hvac.Client, spec: ServiceSpec) -> dict[str, bool]:
    """auth mount -> whether the service's role there is disabled by :func:`revoke`."""
    out = {}
    for mount in _auth_mounts(client):
        role = _read_role(client, f"auth/{mount}/role/{spec.identity}") or {}
        bound = role.get("bound_subject") if mount == JWT_MOUNT else None
        names = role.get("bound_service_account_names") or []
        out[mount] = bound == DISABLED_SUBJECT or DISABLED_SUBJECT in names
    return out


def _service_accessors(client: hvac.Client, spec: ServiceSpec) -> list[str]:
    """Accessors of the live tokens created by logging in at the service's auth roles."""
    try:
        keys = client.list("auth/token/accessors")["data"]["keys"]
    except hvac.exceptions.InvalidPath:
        return []
    logins = {f"auth/{m}/login/{spec.identity}" for m in (JWT_MOUNT, KUBERNETES_MOUNT)}
    found = []
    for accessor in keys:
        try:
            data = client.auth.token.lookup_accessor(accessor)["data"]
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden):
            continue  # expired between list and lookup
        role = (data.get("meta") or {}).get("role")
        if data.get("path") in logins or role == spec.identity:
            found.append(accessor)
    return found


# --------------------------------------------------------------------------- revoke


def revoke(settings: StackSettings, service: str) -> list[str]:
    """Cut ``service`` off: auth roles disabled first (it cannot log in again), then every
    token it holds revoked (with the leases they created), then every lease left under
    its database roles. Other services are not touched."""
    spec = _spec(service)
    client = identify(settings)
    lines: list[str] = []
    try:
        roles = bootstrap_roles(settings, spec)
        for mount in _auth_mounts(client):
            disabled = dict(roles[mount])
            if mount == JWT_MOUNT:
                disabled["bound_subject"] = DISABLED_SUBJECT
            else:
                disabled["bound_service_account_names"] = [DISABLED_SUBJECT]
            client.write_data(f"auth/{mount}/role/{spec.identity}", data=disabled)
            lines.append(f"disabled auth/{mount}/role/{spec.identity} (bound to no identity)")
        accessors = _service_accessors(client, spec)
        for accessor in accessors:
            try:
                client.auth.token.revoke_accessor(accessor)
            except hvac.exceptions.InvalidRequest:
                continue  # already gone
        lines.append(f"revoked {len(accessors)} Vault token(s) of {spec.identity} (by accessor)")
        for db_role in spec.db_roles:
            client.sys.revoke_prefix(f"database/creds/{db_role}")
            lines.append(f"revoked every lease under database/creds/{db_role}")
    finally:
        client.adapter.close()
    logins = ", ".join(f"v-{r}-*" for r in spec.db_roles) or "none: it has no database role"
    lines += [
        f"verify: 'orders-runbook status {service}' shows it disabled; its worker logs "
        f"vault.login_failed; no login left in pg_roles ({logins}); orders-audit lists "
        "its refused logins",
        f"restore: 'orders-runbook reenable {service}' once its identity is trusted again",
    ]
    return lines


def reenable(settings: StackSettings, service: str) -> list[str]:
    """Write the service's auth roles back exactly as the bootstrap defines them."""
    spec = _spec(service)
    client = identify(settings)
    lines: list[str] = []
    try:
        roles = bootstrap_roles(settings, spec)
        for mount in _auth_mounts(client):
            client.write_data(f"auth/{mount}/role/{spec.identity}", data=roles[mount])
            lines.append(f"restored auth/{mount}/role/{spec.identity} as the bootstrap defines it")
    finally:
        client.adapter.close()
    lines.append(
        f"verify: 'orders-runbook status {service}' shows it enabled; its worker logs "
        "vault.login then db.credential_issued; orders held at its step finish"
    )
    return lines


def status(settings: StackSettings, service: str) -> list[str]:
    spec = _spec(service)
    client = identify(settings)
    try:
        states = role_disabled(client, spec)
        tokens = len(_service_accessors(client, spec))
    finally:
        client.adapter.close()
    lines = [
        f"auth/{m}/role/{spec.identity}: {'DISABLED' if off else 'enabled'}"
        for m, off in states.items()
    ]
    lines.append(f"live Vault tokens of {spec.identity}: {tokens}")
    return lines


# --------------------------------------------------------------------------- database root


async def _vault_admin_hash(settings: StackSettings) -> str:
    conn = await asyncpg.connect(settings.admin_dsn(settings.database))
    try:
        value = await conn.fetchval(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'vault_admin'"
        )
    finally:
        await conn.close()
    return str(value or "")


def rotate_db_root(settings: StackSettings, connection: str = CONNECTION) -> list[str]:
    """Vault sets a new password for the database user it logs in as (only Vault knows it),
    then proves it still works by issuing (and revoking) one credential."""
    client = identify(settings)
    lines: list[str] = []
    try:
        before = asyncio.run(_vault_admin_hash(settings))
        try:
            client.write_data(f"database/rotate-root/{connection}", data={})
        except hvac.exceptions.InvalidPath:
            raise RunbookError(
                f"no database connection {connection!r} in Vault: run 'orders-bootstrap'"
            ) from None
        after = asyncio.run(_vault_admin_hash(settings))
        changed = "changed" if after != before else "UNCHANGED"
        lines.append(f"rotated the root credential of database connection {connection!r}")
        lines.append(f"vault_admin's password hash in pg_authid: {changed}")
        role = next(r for s in SERVICES.values() for r in s.db_roles)
        cred = client.secrets.database.generate_credentials(role)
        client.sys.revoke_lease(cred["lease_id"])
        lines.append(f"Vault still issues credentials: one for {role} issued and revoked")
    finally:
        client.adapter.close()
    lines.append(
        "verify: leases already issued keep working (their logins are separate roles); "
        "'.venv/bin/bao read database/creds/<role>' issues; the old password is refused by "
        "Postgres"
    )
    return lines


# --------------------------------------------------------------------------- transit


@dataclass
class KeyUse:
    """Which versions of which Transit key the history still references."""

    versions: dict[str, set[int]] = field(default_factory=dict)  # key -> versions
    histories: int = 0
    unreadable: list[str] = field(default_factory=list)  # why some history was not scanned

    def add(self, key: str, version: int) -> None:
        self.versions.setdefault(key, set()).add(version)


_SEALED_IN_JSON = re.compile(
    rb'"(' + b"|".join(f.encode() for f in SEALED_FIELDS) + rb')"\s*:\s*"'
    # either sealing format: one Transit call (vault:vN:...) or the envelope, whose data
    # key is wrapped by the seal key (orders-seal/1.vault:vN:...)
    rb"(?:orders-seal/1\.)?vault:v([0-9]+):"
)


def _payloads(node: Any) -> Iterable[dict[str, Any]]:
    if isinstance(node, dict):
        meta = node.get("metadata")
        if isinstance(meta, dict) and "encoding" in meta and set(node) <= {"metadata", "data"}:
            yield node
            return
        for value in node.values():
            yield from _payloads(value)
    elif isinstance(node, list):
        for value in node:
            yield from _payloads(value)


def _meta(payload: dict[str, Any], name: str) -> bytes:
    raw = (payload.get("metadata") or {}).get(name)
    return base64.b64decode(raw) if raw else b""


async def _sealed_versions(
    codec: TransitEnvelopeCodec, payload: dict[str, Any], use: KeyUse, where: str
) -> None:
    """Seal key versions inside one (encrypted) order input payload."""
    from temporalio.api.common.v1 import Payload

    proto = Payload(
        metadata={k: base64.b64decode(v) for k, v in (payload.get("metadata") or {}).items()},
        data=base64.b64decode(payload.get("data") or ""),
    )
    try:
        [plain] = await codec.decode([proto])
    except Exception as exc:
        use.unreadable.append(f"{where}: input not decodable ({type(exc).__name__})")
        return
    for field_name, version in _SEALED_IN_JSON.findall(plain.data):
        use.add(sealed_field_key(SEALED_FIELDS[field_name.decode()]), int(version))


async def scan_histories(settings: StackSettings, token: str, namespace: str = "default") -> KeyUse:
    """Every workflow history Temporal still holds: the payload key version each
    envelope's wrapped key uses, and the seal key version of each sealed field of
    each workflow's input."""
    from temporalio.client import Client

    use = KeyUse()
    client = await Client.connect(settings.temporal_address, namespace=namespace)
    transit = TokenTransit(settings.vault_addr, token)
    # plain payloads (a workflow started without the codec) are read as they are
    codec = TransitEnvelopeCodec(
        transit, allow_plaintext=True, accept_legacy=legacy_reading_enabled()
    )
    try:
        async for wf in client.list_workflows():
            where = f"{wf.id}/{wf.run_id}"
            try:
                history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
            except Exception as exc:
                use.unreadable.append(f"{where}: {type(exc).__name__}")
                continue
            use.histories += 1
            doc = history.to_json_dict()
            for payload in _payloads(doc):
                key = _meta(payload, META_KEY_ID).decode(errors="replace")
                wrapped = _meta(payload, META_WRAPPED_KEY)
                if key and wrapped:
                    use.add(key, parse_wrapped_key(wrapped)[0])
            events = doc.get("events") or []
            started = events[0].get("workflowExecutionStartedEventAttributes", {}) if events else {}
            if wf.workflow_type != ORDER_WORKFLOW:
                continue  # only an order's input carries sealed fields
            for payload in _payloads(started.get("input") or {}):
                await _sealed_versions(codec, payload, use, where)
    finally:
        transit.close()
    return use


def safe_min_versions(
    current_min: dict[str, int], latest: dict[str, int], use: KeyUse, *, retention_over: bool
) -> tuple[dict[str, int], list[str]]:
    """key -> the min_decryption_version to set (only raises), and why each key stays.

    Never past the oldest version history references. When some history could not be
    scanned, nothing is raised unless ``retention_over`` (the operator says no history
    older than the rotation is kept any more: then up to the latest version)."""
    raise_to: dict[str, int] = {}
    notes: list[str] = []
    if use.unreadable and not retention_over:
        notes.append(
            f"refused to raise min_decryption_version: {len(use.unreadable)} history item(s) "
            f"could not be scanned (first: {use.unreadable[0]}); fix that, or pass "
            "--retention-over once no history older than the rotation is retained"
        )
        return {}, notes
    for key, newest in sorted(latest.items()):
        referenced = use.versions.get(key, set())
        target = newest if retention_over else min(referenced, default=newest)
        if target > current_min.get(key, 1):
            raise_to[key] = target
        else:
            notes.append(
                f"{key}: min_decryption_version stays {current_min.get(key, 1)} "
                f"(history references v{min(referenced)})"
                if referenced
                else f"{key}: min_decryption_version stays {current_min.get(key, 1)}"
            )
    return raise_to, notes


def rotate_transit(
    settings: StackSettings,
    *,
    keys: Sequence[str] = (),
    rotate: bool = True,
    raise_min: bool = False,
    retention_over: bool = False,
    rewrap: Sequence[Path] = (),
) -> list[str]:
    """Rotate payload and seal keys; rewrap exported histories; raise
    ``min_decryption_version`` only as far as :func:`safe_min_versions` allows."""
    names = list(keys) or list(transit_keys())
    unknown = [k for k in names if k not in transit_keys()]
    if unknown:
        raise RunbookError(
            f"unknown transit key(s) {', '.join(unknown)}; known: {', '.join(transit_keys())}"
        )
    client = identify(settings)
    lines: list[str] = []
    try:
        for name in names if rotate else ():
            client.secrets.transit.rotate_key(name, mount_point=TRANSIT_MOUNT)
        info = {
            n: client.secrets.transit.read_key(n, mount_point=TRANSIT_MOUNT)["data"] for n in names
        }
        if rotate:
            lines.append(
                "rotated "
                + ", ".join(f"{n} -> v{info[n]['latest_version']}" for n in names)
                + " (new data keys and seals use it; old versions still decrypt)"
            )
        token = str(client.token)
        for path in rewrap:
            lines.append(_rewrap_export(settings, token, path))
        if raise_min:
            use = asyncio.run(scan_histories(settings, token))
            lines.append(
                f"scanned {use.histories} histories: "
                + (
                    ", ".join(f"{k} v{min(v)}..v{max(v)}" for k, v in sorted(use.versions.items()))
                    or "no encrypted payloads"
                )
            )
            current = {n: int(info[n].get("min_decryption_version") or 1) for n in names}
            latest = {n: int(info[n]["latest_version"]) for n in names}
            raise_to, notes = safe_min_versions(current, latest, use, retention_over=retention_over)
            for name, version in raise_to.items():
                client.secrets.transit.update_key_configuration(
                    name, min_decryption_version=version, mount_point=TRANSIT_MOUNT
                )
                lines.append(f"{name}: min_decryption_version raised to {version}")
            lines += notes
    finally:
        client.adapter.close()
    lines.append(
        "verify: '.venv/bin/bao read transit/keys/<key>' shows latest_version and "
        "min_decryption_version; the codec server still shows the oldest order's input"
    )
    if any(k in seal_keys() for k in names):
        lines.append(
            "note: sealed fields inside exported histories keep their seal key version "
            "(rewrap moves payload keys only); keep seal keys' min_decryption_version at or "
            "below the oldest export you must still open"
        )
    return lines


def _rewrap_export(settings: StackSettings, token: str, path: Path) -> str:
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise RunbookError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise RunbookError(
            f"{path} is not JSON ({exc}); give a 'temporal workflow show -o json' export"
        ) from None
    transit = TokenTransit(settings.vault_addr, token)
    try:
        report = asyncio.run(rewrap_history_json(document, transit))
    finally:
        transit.close()
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=2))
    tmp.replace(path)
    return (
        f"rewrapped {path}: {report.rewrapped} payload(s) moved to the latest key version, "
        f"{report.unchanged} already there, {report.skipped} not envelopes"
    )


# --------------------------------------------------------------------------- issuer key


def rotate_issuer(settings: StackSettings, *, finish: bool, overlap_over: bool) -> list[str]:
    """Start a rotation (both keys trusted) or finish it (only the new one), refusing to
    finish before the longest token lifetime has passed since the rotation."""
    from orders_ops.stack import StackError, issuer_finish_hint, rotate_issuer_key

    identify(settings).adapter.close()
    if finish and not overlap_over:
        if settings.issuer_previous_key_file.exists():
            # the current key file was written at the rotation
            age = time.time() - settings.issuer_key_file.stat().st_mtime
            if age < issuer.MAX_TTL:
                raise RunbookError(
                    f"the previous issuer key was replaced {age:.0f}s ago: a token it signed may "
                    f"live {issuer.MAX_TTL}s; finish after that, or pass --overlap-over when "
                    "every holder is known to have re-read its token file"
                )
    try:
        lines = rotate_issuer_key(settings, finish=finish)
    except StackError as exc:
        raise RunbookError(str(exc)) from None
    if finish:
        lines.append("verify: a token signed by the previous key is refused at auth/jwt/login")
    else:
        lines.append(issuer_finish_hint("orders-runbook rotate-issuer-key"))
        lines.append(
            "verify: workers keep logging in (their token files were re-signed); "
            "a token signed by the previous key still logs in until --finish"
        )
    return lines


def rotate_ca(settings: StackSettings, *, finish: bool, overlap_over: bool) -> list[str]:
    """Rotate the intermediate CA (both trusted) or finish (the old one deleted)."""
    client = identify(settings)
    try:
        if finish:
            return finish_rotation(client, settings, overlap_over=overlap_over)
        return rotate_intermediate(client, settings)
    finally:
        client.adapter.close()


def revoke_service_certificates(settings: StackSettings, service: str) -> list[str]:
    """Revoke every client certificate of ``service`` by serial and publish the CRL."""
    client = identify(settings)
    try:
        return revoke_certificates(client, service)
    finally:
        client.adapter.close()


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="orders-runbook", description=(__doc__ or "").split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, text in (
        ("revoke", "revoke every token and lease of a service and disable its auth roles"),
        ("reenable", "restore a revoked service's auth roles as the bootstrap defines them"),
        ("status", "is a service's auth role disabled, and how many tokens it holds"),
        ("revoke-certificates", "revoke a service's client certificates by serial, new CRL"),
    ):
        sub.add_parser(name, help=text).add_argument("service")
    db = sub.add_parser("rotate-db-root", help="Vault rotates its database login's password")
    db.add_argument("--connection", default=CONNECTION)
    tr = sub.add_parser("rotate-transit", help="rotate payload and seal keys (Transit)")
    tr.add_argument("--key", action="append", default=[], help="only this key (repeatable)")
    tr.add_argument("--no-rotate", action="store_true", help="skip the rotation itself")
    tr.add_argument(
        "--raise-min",
        action="store_true",
        help="raise min_decryption_version up to the oldest version history references",
    )
    tr.add_argument(
        "--retention-over",
        action="store_true",
        help="no history older than the rotation is retained: raise to the latest version",
    )
    tr.add_argument(
        "--rewrap", action="append", default=[], type=Path, help="an exported history (JSON)"
    )
    iss = sub.add_parser("rotate-issuer-key", help="rotate the identity issuer key with overlap")
    iss.add_argument("--finish", action="store_true", help="retire the previous key")
    iss.add_argument(
        "--overlap-over", action="store_true", help="finish before the 1 h overlap has passed"
    )
    ca = sub.add_parser(
        "rotate-intermediate-ca", help="a new intermediate CA becomes the default, with overlap"
    )
    ca.add_argument("--finish", action="store_true", help="delete the old intermediate")
    ca.add_argument(
        "--overlap-over", action="store_true", help="finish before the 72 h overlap has passed"
    )
    bk = sub.add_parser("backup", help="write one backup archive of the stack (mode 0600)")
    bk.add_argument(
        "--out", type=Path, default=Path("."), help="folder for the archive (default: here)"
    )
    rs = sub.add_parser("restore", help="rebuild a stopped stack from an archive, fresh folder")
    rs.add_argument("archive", type=Path)
    rs.add_argument(
        "--keep-running", action="store_true", help="leave the rebuilt stack up (no workers)"
    )
    args = parser.parse_args(argv)
    try:
        settings = StackSettings.from_env()
        if args.cmd in ("backup", "restore"):
            from orders_ops.stack import StackError

            try:
                if args.cmd == "backup":
                    runbook_backup.backup(settings, args.out)
                else:
                    runbook_backup.restore(settings, args.archive, keep_running=args.keep_running)
            except StackError as exc:
                raise RunbookError(str(exc)) from None
            return
        if args.cmd == "revoke":
            lines = revoke(settings, args.service)
        elif args.cmd == "reenable":
            lines = reenable(settings, args.service)
        elif args.cmd == "status":
            lines = status(settings, args.service)
        elif args.cmd == "revoke-certificates":
            lines = revoke_service_certificates(settings, args.service)
        elif args.cmd == "rotate-db-root":
            lines = rotate_db_root(settings, args.connection)
        elif args.cmd == "rotate-transit":
            lines = rotate_transit(
                settings,
                keys=args.key,
                rotate=not args.no_rotate,
                raise_min=args.raise_min,
                retention_over=args.retention_over,
                rewrap=args.rewrap,
            )
        elif args.cmd == "rotate-intermediate-ca":
            lines = rotate_ca(settings, finish=args.finish, overlap_over=args.overlap_over)
        else:
            lines = rotate_issuer(settings, finish=args.finish, overlap_over=args.overlap_over)
    except (RunbookError, SettingsError, PKIRunbookError, runbook_backup.BackupError) as exc:
        print(f"orders-runbook: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except hvac.exceptions.VaultError as exc:
        print(f"orders-runbook: error: Vault refused: {str(exc).splitlines()[0]}", file=sys.stderr)
        sys.exit(1)
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
