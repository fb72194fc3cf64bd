"""Vault PKI as code: a root CA, an intermediate CA and one issuing role per identity.

- ``pki-root``: the root CA ("orders local root CA", 10 years). It has no role: it
  signs intermediates (here, by the bootstrap and the rotation runbook) and nothing else.
- ``pki-orders``: the intermediate CA ("orders intermediate CA", at most 1 year),
  signed by the root, with the roles of :func:`roles`: ``client-<service>`` for each
  worker, ``client-operator`` for whoever submits orders, ``server-temporal``,
  ``server-postgres`` and ``server-codec`` for the local servers. No role allows a
  wildcard or a name of another identity; each identity's policy grants
  ``pki-orders/issue/<its role>`` and nothing else under ``pki-*``
  (:func:`orders_ops.policies.pki_rules`).

Every step reads what is there and writes only the difference (a second run changes
nothing). Locally it also writes ``<state>/tls/ca.pem`` (every intermediate of
``pki-orders`` that is still valid, then the root) and, for the servers that need
files, ``<state>/tls/<server>.crt|.key`` (0600), reissued when a third of their life
is left or the issuer changed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
from cryptography import x509

from orders_ops.policies import (
    PKI_MOUNT,
    PKI_ROOT_MOUNT,
    SERVER_ROLES,
    client_role_names,
)
from orders_ops.settings import SettingsError, StackSettings

ROOT_CN = "orders local root CA"
INTERMEDIATE_CN = "orders intermediate CA"
ROOT_TTL = 87600 * 3600
INTERMEDIATE_TTL = 8760 * 3600
LEAF_MAX_TTL = 72 * 3600
"""The servers' roles (the local stack's Temporal terminator and PostgreSQL)."""
CLIENT_MAX_TTL = 3600
"""Every service's client role: about its Vault token's life (TokenTTLs.max_ttl, 1 h).
A client certificate is not leased, so revoking the token leaves it valid: it must not
outlive the token by much (revoke earlier by serial: ``orders-runbook revoke-certificates``)."""
DEFAULT_CERT_TTL = 24 * 3600
KEY_TYPE, KEY_BITS = "ec", 256
SERVER_NAME = "localhost"
SERVER_IP = "127.0.0.1"
LOCAL_SERVER_CERTS = ("server-temporal", "server-postgres")
"""Server certificates the bootstrap issues with its own token for the local stack."""


class PKIError(RuntimeError):
    """The PKI cannot be configured; the message names the problem and the fix."""


def cert_ttl() -> int:
    """``ORDERS_CERT_TTL``: seconds a service certificate lives by default [86400]."""
    raw = os.environ.get("ORDERS_CERT_TTL", "").strip()
    if not raw:
        return DEFAULT_CERT_TTL
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"ORDERS_CERT_TTL={raw!r} is not a whole number of seconds") from None
    if not 60 <= value <= LEAF_MAX_TTL:
        raise SettingsError(f"ORDERS_CERT_TTL={value} is out of range: use 60 to {LEAF_MAX_TTL}")
    return value


def _common(ttl: int, max_ttl: int = LEAF_MAX_TTL) -> dict[str, Any]:
    return {
        "allow_bare_domains": True,
        "allow_subdomains": False,
        "allow_glob_domains": False,
        "allow_wildcard_certificates": False,
        "allow_any_name": False,
        "enforce_hostnames": True,
        "key_type": KEY_TYPE,
        "key_bits": KEY_BITS,
        "ttl": min(ttl, max_ttl),
        "max_ttl": max_ttl,
        "no_store": False,
        "require_cn": True,
    }


def roles(ttl: int | None = None) -> dict[str, dict[str, Any]]:
    """Role name -> its definition on ``pki-orders``."""
    ttl = cert_ttl() if ttl is None else ttl
    out: dict[str, dict[str, Any]] = {}
    for role, name in client_role_names().items():
        out[role] = {
            **_common(ttl, CLIENT_MAX_TTL),
            "allowed_domains": [name],
            "allow_localhost": False,
            "allow_ip_sans": False,
            "server_flag": False,
            "client_flag": True,
        }
    for role in SERVER_ROLES:
        out[role] = {
            **_common(ttl),
            "allowed_domains": [SERVER_NAME],
            "allow_localhost": True,
            "allow_ip_sans": True,
            "server_flag": True,
            "client_flag": False,
        }
    return out


# --------------------------------------------------------------------------- Vault helpers


def _read(client: hvac.Client, path: str) -> dict[str, Any] | None:
    try:
        response = client.read(path)
    except hvac.exceptions.InvalidPath:
        return None
    data: dict[str, Any] | None = (response or {}).get("data")
    return data


def _ensure_mount(client: hvac.Client, mount: str, max_ttl: int) -> list[str]:
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    existing = mounts.get(f"{mount}/")
    changes = []
    if existing is None:
        client.sys.enable_secrets_engine("pki", path=mount, config={"max_lease_ttl": f"{max_ttl}s"})
        return [f"vault: enabled pki secrets engine at {mount}/ (max ttl {max_ttl}s)"]
    if existing["type"] != "pki":
        raise PKIError(
            f"secrets engine at {mount}/ is {existing['type']!r}, not 'pki'; disable it "
            f"('bao secrets disable {mount}') and bootstrap again"
        )
    if int(existing.get("config", {}).get("max_lease_ttl") or 0) != max_ttl:
        client.sys.tune_mount_configuration(mount, max_lease_ttl=f"{max_ttl}s")
        changes.append(f"vault: {mount}/ max ttl now {max_ttl}s")
    return changes


def issuer_ids(client: hvac.Client, mount: str) -> list[str]:
    try:
        keys = client.list(f"{mount}/issuers")
    except hvac.exceptions.InvalidPath:
        return []
    return list(((keys or {}).get("data") or {}).get("keys") or [])


def issuer_pem(client: hvac.Client, mount: str, issuer: str) -> str:
    data = _read(client, f"{mount}/issuer/{issuer}") or {}
    return str(data["certificate"]).strip() + "\n"


def default_issuer(client: hvac.Client, mount: str) -> str | None:
    data = _read(client, f"{mount}/config/issuers") or {}
    return str(data.get("default") or "") or None


def _ensure_root(client: hvac.Client) -> list[str]:
    if issuer_ids(client, PKI_ROOT_MOUNT):
        return []
    client.write_data(
        f"{PKI_ROOT_MOUNT}/root/generate/internal",
        data={
            "common_name": ROOT_CN,
            "issuer_name": "root",
            "ttl": f"{ROOT_TTL}s",
            "key_type": KEY_TYPE,
            "key_bits": KEY_BITS,
        },
    )
    return [f"vault: generated root CA '{ROOT_CN}' in {PKI_ROOT_MOUNT}/"]


def new_intermediate(client: hvac.Client, issuer_name: str) -> str:
    """A new intermediate key in ``pki-orders``, signed by the root; returns its issuer id
    (not yet the default: the caller decides)."""
    csr = client.write_data(
        f"{PKI_MOUNT}/intermediate/generate/internal",
        data={"common_name": INTERMEDIATE_CN, "key_type": KEY_TYPE, "key_bits": KEY_BITS},
    )["data"]["csr"]
    signed = client.write_data(
        f"{PKI_ROOT_MOUNT}/root/sign-intermediate",
        data={
            "csr": csr,
            "common_name": INTERMEDIATE_CN,
            "ttl": f"{INTERMEDIATE_TTL}s",
            "format": "pem",
            "use_csr_values": False,
        },
    )["data"]["certificate"]
    imported = client.write_data(
        f"{PKI_MOUNT}/intermediate/set-signed", data={"certificate": signed}
    )["data"]["imported_issuers"]
    if not imported:
        raise PKIError(f"{PKI_MOUNT}/intermediate/set-signed imported no issuer")
    issuer = str(imported[0])
    client.write_data(f"{PKI_MOUNT}/issuer/{issuer}", data={"issuer_name": issuer_name})
    return issuer


def set_default_issuer(client: hvac.Client, issuer: str) -> None:
    client.write_data(f"{PKI_MOUNT}/config/issuers", data={"default": issuer})


def _ensure_intermediate(client: hvac.Client) -> list[str]:
    if issuer_ids(client, PKI_MOUNT):
        return []
    issuer = new_intermediate(client, "intermediate-1")
    set_default_issuer(client, issuer)
    return [f"vault: intermediate CA '{INTERMEDIATE_CN}' in {PKI_MOUNT}/ signed by the root"]


def owned_client_role(name: str, role: dict[str, Any]) -> bool:
    """Whether a role on ``pki-orders`` has the shape :func:`roles` gives an identity's
    client role (``client-<x>`` issuing only ``orders-<x>``): one this code made. Any
    other role is never deleted, only reported by ``orders-bootstrap plan``."""
    identity = name.removeprefix("client-")
    return (
        name.startswith("client-")
        and list(role.get("allowed_domains") or []) == [f"orders-{identity}"]
        and role.get("client_flag") is True
        and role.get("server_flag") is False
    )


def _ensure_roles(client: hvac.Client) -> list[str]:
    changes = []
    declared = roles()
    for name, desired in declared.items():
        path = f"{PKI_MOUNT}/roles/{name}"
        have = _read(client, path)
        diff = [k for k, v in desired.items() if have is None or _norm(have.get(k)) != _norm(v)]
        if diff:
            client.write_data(path, data=desired)
            changes.append(f"vault: wrote {path} ({', '.join(sorted(diff))})")
    # the client role of an identity the code no longer declares (a removed service)
    try:
        listed = client.list(f"{PKI_MOUNT}/roles") or {}
    except (hvac.exceptions.InvalidPath, hvac.exceptions.Forbidden):
        listed = {}
    for name in sorted((listed.get("data") or {}).get("keys") or []):
        if name in declared:
            continue
        have = _read(client, f"{PKI_MOUNT}/roles/{name}") or {}
        if owned_client_role(name, have):
            client.delete(f"{PKI_MOUNT}/roles/{name}")
            changes.append(f"vault: deleted {PKI_MOUNT}/roles/{name} (no longer declared)")
    return changes


def _norm(value: Any) -> Any:
    return sorted(value) if isinstance(value, list) else value


def ensure_pki(client: hvac.Client, settings: StackSettings) -> list[str]:
    """Mounts, CAs and roles; locally also the CA bundle and the servers' files."""
    changes = _ensure_mount(client, PKI_ROOT_MOUNT, ROOT_TTL)
    changes += _ensure_mount(client, PKI_MOUNT, INTERMEDIATE_TTL)
    changes += _ensure_root(client)
    changes += _ensure_intermediate(client)
    changes += _ensure_roles(client)
    if settings.mode == "local":
        changes += write_ca_bundle(client, settings)
        for role in LOCAL_SERVER_CERTS:
            changes += ensure_server_cert(client, settings, role)
    return changes


# --------------------------------------------------------------------------- local files


def write_private_bytes(path: Path, content: bytes, *, mode: int) -> None:
    """Replace ``path`` atomically, with ``mode`` from its first byte (folder 0755: the CA
    bundle is public; each key file is 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o755)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    os.replace(tmp, path)


def tls_dir(settings: StackSettings) -> Path:
    return settings.state_dir / "tls"


def ca_file(settings: StackSettings) -> Path:
    return tls_dir(settings) / "ca.pem"


def server_files(settings: StackSettings, role: str) -> tuple[Path, Path]:
    """``<state>/tls/<server>.crt`` and ``.key`` for a role ``server-<server>``."""
    server = role.removeprefix("server-")
    return tls_dir(settings) / f"{server}.crt", tls_dir(settings) / f"{server}.key"


def ca_bundle(client: hvac.Client) -> str:
    """Every still-valid intermediate of ``pki-orders`` (default first), then the root."""
    default = default_issuer(client, PKI_MOUNT)
    ids = sorted(issuer_ids(client, PKI_MOUNT), key=lambda i: i != default)
    now = time.time()
    pems = []
    for issuer in ids:
        pem = issuer_pem(client, PKI_MOUNT, issuer)
        cert = x509.load_pem_x509_certificate(pem.encode())
        if cert.not_valid_after_utc.timestamp() > now and cert.issuer != cert.subject:
            pems.append(pem)
    pems += [issuer_pem(client, PKI_ROOT_MOUNT, i) for i in issuer_ids(client, PKI_ROOT_MOUNT)]
    return "".join(pems)


def write_ca_bundle(client: hvac.Client, settings: StackSettings) -> list[str]:
    bundle = ca_bundle(client)
    path = ca_file(settings)
    if path.is_file() and path.read_text() == bundle:
        return []
    write_private_bytes(path, bundle.encode(), mode=0o644)
    return [f"tls: wrote CA bundle {path}"]


def _needs_reissue(cert_path: Path, bundle: str) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return True
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    if time.time() > end - (end - start) / 3:
        return True
    # every intermediate has the same name: the issuer is told by its key identifier
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    keys = [
        c.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        for c in x509.load_pem_x509_certificates(bundle.encode())
    ]
    return aki.key_identifier not in keys


def ensure_server_cert(client: hvac.Client, settings: StackSettings, role: str) -> list[str]:
    """A server's certificate and key files (0600), issued with the bootstrap's token."""
    crt, key = server_files(settings, role)
    if crt.is_file() and key.is_file() and not _needs_reissue(crt, ca_file(settings).read_text()):
        return []
    data = client.write_data(
        f"{PKI_MOUNT}/issue/{role}",
        data={"common_name": SERVER_NAME, "ip_sans": SERVER_IP},
    )["data"]
    write_private_bytes(key, str(data["private_key"]).encode() + b"\n", mode=0o600)
    write_private_bytes(crt, str(data["certificate"]).encode() + b"\n", mode=0o600)
    return [f"tls: issued {role} certificate {crt}"]
