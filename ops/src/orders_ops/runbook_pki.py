"""``orders-runbook rotate-intermediate-ca [--finish [--overlap-over]]``: rotate the local CA.

Rotate: a new intermediate key is generated in ``pki-orders`` and signed by the root;
it becomes the default issuer (every certificate issued from now on is its), the old
one is kept. The CA bundle ``<state>/tls/ca.pem`` then holds both intermediates and
the root, so leaves of either verify during the overlap; the local Temporal
terminator is told to re-read it (SIGHUP to its own PID).

Finish (after the longest leaf life, 72 h, or ``--overlap-over`` when every holder is
known to have renewed): every issuer but the default is deleted, the bundle is
rewritten without it, the servers' certificates are reissued by the new intermediate
where they still came from the old one, and the terminator reloads.
"""

from __future__ import annotations

import os
import signal
import time

import hvac

from orders_ops import pki
from orders_ops.policies import PKI_MOUNT
from orders_ops.settings import StackSettings


class PKIRunbookError(RuntimeError):
    """The rotation cannot run; the message names why and the fix."""


def _x509(client: hvac.Client, issuer: str) -> float:
    from cryptography import x509

    pem = pki.issuer_pem(client, PKI_MOUNT, issuer).encode()
    return x509.load_pem_x509_certificate(pem).not_valid_before_utc.timestamp()


def _reload_terminator(settings: StackSettings) -> list[str]:
    from orders_ops.tls_proxy import TemporalTLSProxy

    proxy = TemporalTLSProxy(settings)
    pid = proxy.pid()  # ours only: the PID file of this stack, checked against its prefix
    if pid is None:
        return []
    os.kill(pid, signal.SIGHUP)
    return [f"reloaded the Temporal TLS terminator (PID {pid}): it trusts the new bundle"]


def _reload_postgres(settings: StackSettings) -> list[str]:
    """A TLS-mode PostgreSQL of this stack takes its new key (its own user's) and reloads."""
    from orders_ops.stack import Stack

    if Stack(settings).postgres.renew_certificate():
        return ["PostgreSQL reloaded its certificate from the new intermediate"]
    return []


def rotate_intermediate(client: hvac.Client, settings: StackSettings) -> list[str]:
    old = pki.default_issuer(client, PKI_MOUNT)
    if old is None:
        raise PKIRunbookError(
            f"{PKI_MOUNT}/ has no default issuer: the PKI is not bootstrapped; run "
            "'orders-bootstrap' first"
        )
    new = pki.new_intermediate(client, f"intermediate-{time.strftime('%Y%m%d-%H%M%S')}")
    pki.set_default_issuer(client, new)
    lines = [
        f"new intermediate CA {new} signed by the root is the default issuer of {PKI_MOUNT}/",
        f"old intermediate CA {old} kept: its certificates stay valid until they expire",
    ]
    if settings.mode == "local":
        pki.write_ca_bundle(client, settings)
        lines.append(f"{pki.ca_file(settings)} holds both intermediates and the root")
        lines += _reload_terminator(settings)
    lines += [
        "verify: '.venv/bin/bao read pki-orders/config/issuers' names the new default; a "
        "certificate issued now and one issued before both pass "
        f"'openssl verify -CAfile {pki.ca_file(settings)} <leaf.pem>'",
        f"then: after {pki.LEAF_MAX_TTL // 3600} h (the longest leaf life; every service "
        "renews at 2/3 of its 24 h before that) run 'orders-runbook rotate-intermediate-ca "
        "--finish' to delete the old issuer",
    ]
    return lines


def finish_rotation(
    client: hvac.Client, settings: StackSettings, *, overlap_over: bool
) -> list[str]:
    default = pki.default_issuer(client, PKI_MOUNT)
    old = [i for i in pki.issuer_ids(client, PKI_MOUNT) if i != default]
    if default is None or not old:
        return ["nothing to finish: pki-orders/ has one issuer"]
    age = time.time() - _x509(client, default)
    if age < pki.LEAF_MAX_TTL and not overlap_over:
        raise PKIRunbookError(
            f"the new intermediate was made {age:.0f}s ago: a leaf of the old one may live "
            f"{pki.LEAF_MAX_TTL}s; finish after that, or pass --overlap-over when every "
            "service is known to have renewed its certificate"
        )
    lines = []
    for issuer in old:
        client.delete(f"{PKI_MOUNT}/issuer/{issuer}")
        lines.append(f"deleted old issuer {issuer} from {PKI_MOUNT}/")
    if settings.mode == "local":
        pki.write_ca_bundle(client, settings)
        lines.append(f"{pki.ca_file(settings)} holds the new intermediate and the root only")
        for role in pki.LOCAL_SERVER_CERTS:
            lines += pki.ensure_server_cert(client, settings, role)
        lines += _reload_terminator(settings)
        lines += _reload_postgres(settings)
    lines.append(
        "verify: a leaf of the old intermediate now fails 'openssl verify -CAfile "
        f"{pki.ca_file(settings)}'; services still on a certificate of the old one are "
        "refused at their next connection (they renew at 2/3 of their life)"
    )
    return lines


def revoke_certificates(client: hvac.Client, service: str) -> list[str]:
    """``orders-runbook revoke-certificates <service>``: revoke every unexpired, unrevoked
    client certificate of ``service`` by serial, then publish a new CRL.

    A certificate is not leased: revoking a service's token (``orders-runbook revoke``)
    leaves the certificates it issued valid until they expire (at most
    :data:`orders_ops.pki.CLIENT_MAX_TTL`). This lists ``pki-orders/certs``, keeps the
    serials whose subject CN is ``orders-<service>``, revokes each
    (``pki-orders/revoke``) and rotates the CRL (``pki-orders/crl/rotate``), so a
    verifier that checks the CRL refuses them at once.
    """
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from orders_shared.catalog import SERVICES

    if service not in (*SERVICES, "client"):
        raise PKIRunbookError(
            f"unknown service {service!r}: one of {', '.join((*SERVICES, 'client'))}"
        )
    cn = f"orders-{service}"
    try:
        serials = client.list(f"{PKI_MOUNT}/certs")["data"]["keys"]
    except (hvac.exceptions.InvalidPath, TypeError):
        serials = []
    now = time.time()
    revoked: list[str] = []
    for serial in serials:
        data = client.read(f"{PKI_MOUNT}/cert/{serial}")["data"]
        if data.get("revocation_time"):
            continue  # already revoked
        cert = x509.load_pem_x509_certificate(data["certificate"].encode())
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [n.value for n in names] != [cn] or cert.not_valid_after_utc.timestamp() < now:
            continue
        client.write(f"{PKI_MOUNT}/revoke", serial_number=serial)
        revoked.append(serial)
    client.read(f"{PKI_MOUNT}/crl/rotate")
    lines = [f"revoked {cn}'s certificate {s}" for s in revoked]
    lines.append(f"{len(revoked)} certificate(s) of {cn} revoked; CRL published at {PKI_MOUNT}/crl")
    lines.append(
        f"verify: '.venv/bin/bao read {PKI_MOUNT}/cert/<serial>' shows a revocation_time; "
        f"'orders-runbook revoke {service}' as well stops new ones being issued"
    )
    return lines
