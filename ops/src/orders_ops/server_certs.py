"""Server certificates of the local TLS stack (``ORDERS_TLS=1``), issued from Vault PKI.

PostgreSQL (and the Temporal TLS terminator) read their certificate and key from
files, so these two servers' keys are the only PKI keys on disk: under
``<state>/tls``, 0600 and owned by the user that runs the server. The stack's
root token issues them (role ``server-<name>``); the bundle every client trusts,
``ca.pem`` (intermediate + root), is written beside them, readable by all.

A certificate is issued again when two thirds of its life have passed, at each
``orders-stack up``; the server then reloads it (PostgreSQL re-reads its TLS
files on SIGHUP).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import hvac
import hvac.exceptions
from cryptography import x509

from orders_ops.settings import HOST, StackSettings

PKI_MOUNT = os.environ.get("ORDERS_PKI_MOUNT") or "pki-orders"
SERVER_NAME = "localhost"  # every local server role issues CN/SAN localhost + IP 127.0.0.1


class ServerCertError(RuntimeError):
    """A server certificate could not be issued or written; the message says what to do."""


@dataclass(frozen=True)
class ServerFiles:
    cert: Path
    key: Path
    ca: Path


def server_files(settings: StackSettings, name: str) -> ServerFiles:
    d = settings.tls_dir
    return ServerFiles(cert=d / f"{name}.crt", key=d / f"{name}.key", ca=settings.ca_file)


def _fresh(path: Path) -> bool:
    """The certificate in ``path`` has more than a third of its life left."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    return time.time() < start + (end - start) * 2 / 3


def _write(path: Path, data: str, mode: int, owner: tuple[int, int] | None) -> None:
    """Replace ``path`` atomically, with ``mode`` (and ``owner``) from the first byte on."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, data.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def issue_server_files(
    client: hvac.Client,
    settings: StackSettings,
    *,
    role: str,
    name: str,
    owner: tuple[int, int] | None = None,
    ttl: str | None = None,
) -> bool:
    """Issue ``role``'s certificate for ``localhost`` / 127.0.0.1 unless the one on disk is
    still fresh; write ``<name>.crt`` (leaf + intermediate), ``<name>.key`` (0600, ``owner``) and
    ``ca.pem``. True when new files were written (the server must reload them)."""
    files = server_files(settings, name)
    if _fresh(files.cert) and files.key.exists() and files.ca.exists():
        return False
    body: dict[str, str] = {"common_name": SERVER_NAME, "ip_sans": HOST}
    if ttl or os.environ.get("ORDERS_CERT_TTL"):
        body["ttl"] = ttl or os.environ["ORDERS_CERT_TTL"]
    try:
        resp = client.write_data(f"{PKI_MOUNT}/issue/{role}", data=body)
    except hvac.exceptions.VaultError as exc:
        raise ServerCertError(
            f"Vault refused to issue a certificate from {PKI_MOUNT}/issue/{role} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Run the bootstrap ('orders-stack up' does) so the PKI mounts and roles exist."
        ) from None
    data = resp["data"]
    chain = data.get("ca_chain") or [data["issuing_ca"]]
    os.makedirs(settings.tls_dir, mode=0o711, exist_ok=True)
    os.chmod(settings.tls_dir, 0o711)  # servers' users pass through; nobody lists it
    _write(files.ca, "\n".join(chain) + "\n", 0o644, None)
    _write(files.key, data["private_key"] + "\n", 0o600, owner)
    # the server sends its leaf and the intermediate; clients hold the root
    _write(files.cert, data["certificate"] + "\n" + data["issuing_ca"] + "\n", 0o600, owner)
    return True
