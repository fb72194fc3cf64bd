"""``orders-audit``: who did what in Vault, per identity, from Vault's own audit log.

Reads the JSON lines of Vault's file audit device (``<state>/vault/audit.log``
locally) and reports, per identity (the auth role a token was created by, as
the audit entry's ``auth.metadata.role``; else its display name): logins,
database credentials issued (per role), leases renewed and revoked, Transit
keys used (per operation), and every denied request. It flags:

* every denied request (the policy said no: a service reached outside its role);
* a refused login, and any identity that is not one the bootstrap declares;
* an allowed request outside the identity's declared role (a database role or
  Transit key of another service: the policy itself would be too wide);
* any use of the root token (after the bootstrap, nothing should need it: the
  runbooks of ``orders-runbook`` use it and show up here, as they should).

A denied Transit decrypt by a *probe* token is counted, not flagged: ``orders-demo``
tries every identity on every sealed field, and most must be refused. A probe token
is one whose login JWT carries the claim ``issuer.PROBE_CLAIM``, which Vault's JWT
roles map into the token's metadata (``probe``) and the audit device records on
each request. The claim is inside the signed JWT, so only a holder of the issuer's
signing key can mark a token (a worker's own token file has no such claim, and
Vault fixes a token's metadata at login); a request header or a display name, which
any token holder sets, would not do.

Secrets in the log are HMAC'd by Vault (``log_raw`` off), and so is the role a
login asks for. With the root token (``--resolve``, the default when it is
readable) the report asks Vault for the HMAC of each declared role name
(``sys/audit-hash/file``) to name the role a refused login asked for; those
lookups are the report's own root uses and are not flagged.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orders_ops.policies import PAYLOAD_KEY, SEALED_SERVICES, payload_keys_of, seal_key, seal_keys
from orders_ops.settings import SettingsError, StackSettings
from orders_ops.vault_bootstrap import (
    AUDIT_DEVICE_PATH,
    CLIENT_SPEC,
    PROBE_METADATA,
    READER_ROLE,
)
from orders_shared.catalog import SERVICES
from orders_shared.codec import payload_keys

ROOT = "root"
BOOTSTRAP_LAST_PATHS = (
    f"auth/oidc-readers/role/{READER_ROLE}",
    f"auth/kubernetes/role/{CLIENT_SPEC.identity}",
)
"""What the bootstrap (``configure_vault``) touches last, with the root token: a root use
after the last of these is a root use after the bootstrap."""
OWN_LOOKUPS = "sys/audit-hash/"
"""The report's own root requests (naming refused logins); never flagged."""


def declared() -> dict[str, tuple[set[str], set[str]]]:
    """identity -> (database roles, Transit keys) it is declared to use (the old single
    payload key, decrypt-only for old history, is everyone's)."""
    out: dict[str, tuple[set[str], set[str]]] = {}
    sealed_by = set(SEALED_SERVICES)
    for spec in SERVICES.values():
        keys = {PAYLOAD_KEY, *payload_keys_of(spec.name)}
        if spec.name in sealed_by:
            keys.add(seal_key(spec.name))
        out[spec.identity] = (set(spec.db_roles), keys)
    client_keys = {PAYLOAD_KEY, *payload_keys_of(CLIENT_SPEC.name), *seal_keys()}
    out[CLIENT_SPEC.identity] = (set(), client_keys)
    out[READER_ROLE] = (set(), {PAYLOAD_KEY, *payload_keys()})
    return out


@dataclass
class IdentityReport:
    name: str
    logins: int = 0
    credentials: Counter[str] = field(default_factory=Counter)  # database role -> issued
    renewed: int = 0
    revoked: int = 0
    transit: Counter[str] = field(default_factory=Counter)  # "<op> <key>" -> requests
    denied: Counter[str] = field(default_factory=Counter)  # "<op> <path>" -> requests
    other: Counter[str] = field(default_factory=Counter)  # any other path, by "<op> <path>"
    probed: Counter[str] = field(default_factory=Counter)  # probes' expected denials

    def to_json(self) -> dict[str, Any]:
        return {
            "logins": self.logins,
            "credentials": dict(self.credentials),
            "leases_renewed": self.renewed,
            "leases_revoked": self.revoked,
            "transit": dict(self.transit),
            "denied": dict(self.denied),
            "other": dict(self.other),
            "probe_denied": dict(self.probed),
        }


@dataclass
class AuditReport:
    identities: dict[str, IdentityReport] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    entries: int = 0

    def identity(self, name: str) -> IdentityReport:
        if name not in self.identities:
            self.identities[name] = IdentityReport(name)
        return self.identities[name]

    def to_json(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "identities": {n: r.to_json() for n, r in sorted(self.identities.items())},
            "flags": self.flags,
        }


def read_entries(path: Path, offset: int = 0) -> Iterable[dict[str, Any]]:
    with path.open("rb") as log:
        log.seek(offset)
        for raw in log:
            if not raw.endswith(b"\n"):
                break  # a line Vault is still writing
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict):
                yield entry


def _who(auth: Mapping[str, Any]) -> str:
    role = (auth.get("metadata") or {}).get("role")
    if role:
        return str(role)
    return str(auth.get("display_name") or "")


def _login_path(path: str) -> bool:
    parts = path.split("/")
    return len(parts) >= 3 and parts[0] == "auth" and parts[2] == "login"


SINCE_FORMS = (
    "an ISO 8601 time in UTC: 2026-12-07, 2026-12-07T09:30, 2026-12-07T09:30:00Z, "
    "or with an offset, 2026-12-07T10:30:00+01:00"
)


def parse_since(text: str) -> str:
    """``--since`` as the UTC time the report compares with; anything that is not an ISO
    time (``yesterday``, ``1h``) is refused, naming the accepted forms (read as text it
    would sort after every entry and silently report nothing)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a time; use {SINCE_FORMS}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def time_key(when: str) -> str:
    """An ISO UTC time (``...Z``, any number of fraction digits) in a form that sorts as
    text: Vault writes nanoseconds, a person types seconds."""
    when = when.strip().removesuffix("Z").removesuffix("+00:00")
    base, _, fraction = when.partition(".")
    return f"{base}.{fraction.ljust(9, '0')[:9]}"


def _is_root(auth: Mapping[str, Any]) -> bool:
    return auth.get("display_name") == ROOT or ROOT in (auth.get("policies") or [])


def bootstrap_end(entries: Iterable[Mapping[str, Any]]) -> str:
    """The time of the last bootstrap's last root request ("" when none is in the log)."""
    end = ""
    for entry in entries:
        request = entry.get("request") or {}
        if (
            entry.get("type") == "request"
            and request.get("path") in BOOTSTRAP_LAST_PATHS
            and _is_root(entry.get("auth") or {})
        ):
            end = max(end, time_key(str(entry.get("time", ""))))
    return end


def analyse(
    entries: Iterable[Mapping[str, Any]],
    *,
    role_hashes: Mapping[str, str] | None = None,
    since: str | None = None,
    root_allowed_until: str = "",
) -> AuditReport:
    """The report of audit ``entries`` (from ``since``, an ISO time, if given).

    ``role_hashes``: HMAC of a role name -> the name (to name refused logins);
    ``root_allowed_until``: root uses up to this ISO time are the bootstrap's
    (counted, not flagged; see :func:`bootstrap_end`)."""
    hashes = role_hashes or {}
    known = declared()
    report = AuditReport()
    holders: dict[str, str] = {}  # token or accessor (HMAC) -> identity, seen earlier
    for entry in entries:
        request = entry.get("request") or {}
        path = str(request.get("path", ""))
        op = str(request.get("operation", "?"))
        auth = entry.get("auth") or {}
        kind = entry.get("type")
        granted = (entry.get("response") or {}).get("auth") or {}
        for seen in (auth, granted):
            if _who(seen):
                for handle in ("client_token", "accessor"):
                    if seen.get(handle):
                        holders[str(seen[handle])] = _who(seen)
        if since is not None and time_key(str(entry.get("time", ""))) < time_key(since):
            continue
        if not path or path.startswith("sys/health"):
            continue
        if kind == "response" and _login_path(path):
            report.entries += 1
            if granted:
                who = _who(granted)
                report.identity(who).logins += 1
                if who not in known:
                    report.flags.append(f"unknown identity {who!r} logged in at {path}")
            else:
                asked = str((request.get("data") or {}).get("role", ""))
                name = hashes.get(asked, "an unnamed role")
                report.identity("(refused login)").denied[f"login {path} as {name}"] += 1
                report.flags.append(f"{entry.get('time', '?')} refused login at {path} as {name}")
            continue
        if kind != "request" or _login_path(path):
            continue
        report.entries += 1
        who = _who(auth)
        if not who:
            # a token Vault no longer knows (revoked, expired): name its holder if seen
            holder = holders.get(str(request.get("client_token") or "")) or holders.get(
                str(request.get("client_token_accessor") or "")
            )
            who = f"{holder} (revoked or expired token)" if holder else "(no token)"
        allowed = (auth.get("policy_results") or {}).get("allowed", True)
        error = str(entry.get("error") or "")
        if not allowed or "permission denied" in error:
            probe = str((auth.get("metadata") or {}).get(PROBE_METADATA) or "")
            if probe and path.startswith("transit/decrypt/"):
                report.identity(who).probed[f"{op} {path} ({probe})"] += 1
                continue
            report.identity(who).denied[f"{op} {path}"] += 1
            report.flags.append(f"{entry.get('time', '?')} DENIED {who}: {op} {path}")
            continue
        if _is_root(auth):
            if path.startswith(OWN_LOOKUPS):
                continue
            when = str(entry.get("time", "?"))
            if root_allowed_until and time_key(when) <= time_key(root_allowed_until):
                report.identity(who).other["(bootstrap)"] += 1
            else:
                report.identity(who).other[f"{op} {path}"] += 1
                report.flags.append(f"{when} root token used after the bootstrap: {op} {path}")
            continue
        mine = report.identity(who)
        roles, keys = known.get(who, (None, None))
        if roles is None and who not in ("(no token)",):
            report.flags.append(f"unknown identity {who!r}: {op} {path}")
        parts = path.split("/")
        if path.startswith("database/creds/"):
            role = parts[2] if len(parts) > 2 else "?"
            mine.credentials[role] += 1
            if roles is not None and role not in roles:
                report.flags.append(f"{who} got a credential of another role: {role}")
        elif path.startswith(("sys/leases/renew", "sys/renew")):
            mine.renewed += 1
        elif path.startswith(("sys/leases/revoke", "sys/revoke")):
            mine.revoked += 1
        elif path.startswith("transit/") and len(parts) >= 3:
            key = parts[-1]
            mine.transit[f"{parts[1]} {key}"] += 1
            if keys is not None and key not in keys:
                report.flags.append(f"{who} used another identity's Transit key: {parts[1]} {key}")
        else:
            mine.other[f"{op} {path}"] += 1
    return report


def render(report: AuditReport) -> str:
    out = [f"{report.entries} audited requests"]
    for name, r in sorted(report.identities.items()):
        out.append(f"{name}:")
        out.append(f"  logins {r.logins}; leases renewed {r.renewed}, revoked {r.revoked}")
        if r.credentials:
            out.append(
                "  credentials: " + ", ".join(f"{k} x{v}" for k, v in sorted(r.credentials.items()))
            )
        if r.transit:
            out.append("  transit: " + ", ".join(f"{k} x{v}" for k, v in sorted(r.transit.items())))
        if r.other:
            out.append("  other: " + ", ".join(f"{k} x{v}" for k, v in sorted(r.other.items())))
        for what, n in sorted(r.denied.items()):
            out.append(f"  DENIED {what} x{n}")
        if r.probed:
            out.append(
                f"  denied to a probe (expected, not flagged): {sum(r.probed.values())} "
                f"({', '.join(f'{k} x{v}' for k, v in sorted(r.probed.items()))})"
            )
    out.append(f"flags: {len(report.flags)}")
    out += [f"  FLAG {f}" for f in report.flags]
    return "\n".join(out)


def role_hashes(settings: StackSettings) -> dict[str, str]:
    """HMAC (as the audit device writes it) -> role name, for every declared role."""
    import hvac

    client = hvac.Client(url=settings.vault_addr, token=settings.root_token(), timeout=10)
    try:
        out = {}
        for name in declared():
            resp = client.write_data(f"sys/audit-hash/{AUDIT_DEVICE_PATH}", data={"input": name})
            value = (resp or {}).get("data", resp or {}).get("hash")
            if value:
                out[str(value)] = name
        return out
    finally:
        client.adapter.close()


def _since_arg(text: str) -> str:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="orders-audit", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--log", type=Path, help="the audit log (default: the stack's)")
    parser.add_argument(
        "--since", type=_since_arg, help=f"only entries at or after this time: {SINCE_FORMS}"
    )
    parser.add_argument("--offset", type=int, default=0, help="start at this byte of the log")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--no-resolve", action="store_true", help="do not ask Vault to name refused logins' roles"
    )
    parser.add_argument(
        "--bootstrap-end",
        help="root uses up to this ISO time are the bootstrap's (default: found in the log)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 3 when anything is flagged")
    args = parser.parse_args(argv)
    try:
        settings = StackSettings.from_env()
    except SettingsError as exc:
        print(f"orders-audit: error: {exc}", file=sys.stderr)
        sys.exit(1)
    path = args.log or settings.state_dir / "vault" / "audit.log"
    if not path.is_file():
        print(
            f"orders-audit: error: no audit log at {path}: give --log, or set ORDERS_STATE_DIR "
            "to the stack's folder",
            file=sys.stderr,
        )
        sys.exit(1)
    hashes: dict[str, str] = {}
    if not args.no_resolve:
        try:
            hashes = role_hashes(settings)
        except Exception as exc:  # naming refused logins is a nicety: say why it is off
            print(
                f"orders-audit: note: refused logins stay unnamed ({type(exc).__name__}: "
                "no root token or Vault down)",
                file=sys.stderr,
            )
    try:
        until = args.bootstrap_end or bootstrap_end(read_entries(path))
        report = analyse(
            read_entries(path, args.offset),
            role_hashes=hashes,
            since=args.since,
            root_allowed_until=until,
        )
    except OSError as exc:
        print(f"orders-audit: error: cannot read {path}: {exc.strerror}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(report.to_json(), indent=2) if args.json else render(report))
    if args.strict and report.flags:
        sys.exit(3)


if __name__ == "__main__":
    main()
