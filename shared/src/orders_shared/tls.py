"""Certificates in process: issued from Vault PKI with the service's own identity, renewed
in place, the private key kept in memory only.

:class:`CertificateManager` issues a certificate under the service's PKI role
(``pki-orders/issue/client-<service>``; its Vault policy allows that role and no
other) when :meth:`~CertificateManager.start` is awaited, then renews it in the
background at two thirds of its life (a little earlier, at random, so replicas do
not all ask at once). Each renewal calls the ``on_renew`` callbacks: a worker
connects a new Temporal client with the new certificate and hands it to its worker
(:mod:`orders_shared.runtime`), so new calls use the new certificate while calls in
flight finish on the old connection.

The key never touches a disk: the Temporal SDK takes it as bytes, and
:meth:`~CertificateManager.ssl_context` loads it into an :class:`ssl.SSLContext`
through an anonymous memory file (``memfd_create``), which has no path in any
file system and is closed at once.

Metrics: ``orders_tls_certificate_seconds_left{role}`` and
``orders_tls_certificate_renewals_total{role,outcome}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from prometheus_client import Counter, Gauge
from temporalio.service import TLSConfig

from orders_shared.config import ConfigError
from orders_shared.identity import VaultSession

log = structlog.get_logger(__name__)

CERT_SECONDS_LEFT = Gauge(
    "orders_tls_certificate_seconds_left",
    "Seconds until this process's TLS certificate expires",
    ["role"],
)
CERT_RENEWALS = Counter(
    "orders_tls_certificate_renewals_total",
    "Renewals of this process's TLS certificate, by outcome",
    ["role", "outcome"],
)

RENEW_AT = 2 / 3
"""Fraction of a certificate's life after which it is renewed."""
JITTER = 0.1
"""Renewal happens up to this fraction of the life earlier, at random."""


class CertificateError(RuntimeError):
    """A certificate could not be issued or loaded; the message names the cause and fix."""


@dataclass(frozen=True, repr=False)
class Certificate:
    """One issued certificate with its key (PEM bytes) and the CA bundle to trust."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    not_before: float
    not_after: float
    serial: str
    issued_at: float = 0.0

    def __repr__(self) -> str:  # never the key
        return f"Certificate(serial={self.serial!r}, not_after={self.not_after:.0f})"

    @property
    def lifetime(self) -> float:
        """Seconds from issue to expiry (Vault backdates ``not_before`` for clock skew,
        which is no part of the life to plan renewals with)."""
        return self.not_after - max(self.not_before, self.issued_at)

    def seconds_left(self, now: float | None = None) -> float:
        return self.not_after - (time.time() if now is None else now)


RenewCallback = Callable[[Certificate], Awaitable[None] | None]


@contextlib.contextmanager
def memory_file(data: bytes, name: str = "orders-tls") -> Iterator[str]:
    """A path (``/proc/self/fd/N``) to ``data`` held in an anonymous memory file.

    Nothing is written to a file system; the file disappears when it is closed on
    leaving the block. Linux only (``os.memfd_create``), like the stack.
    """
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def load_chain(context: ssl.SSLContext, cert: Certificate) -> None:
    """Load ``cert`` and its key into ``context`` without a file on disk."""
    with memory_file(cert.cert_pem) as crt, memory_file(cert.key_pem) as key:
        context.load_cert_chain(crt, key)


def ca_bundle(path: str | None, issued: dict[str, Any]) -> bytes:
    """The CA bundle to trust: the file ``path`` (ORDERS_TLS_CA_FILE: every intermediate
    and the root) when given, else the chain Vault returned with the certificate."""
    if path:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise CertificateError(
                f"ORDERS_TLS_CA_FILE={path!r} cannot be read ({exc.strerror}): point it at "
                "the CA bundle (locally <state>/tls/ca.pem, written by the bootstrap)"
            ) from None
    chain = issued.get("ca_chain") or [issued.get("issuing_ca", "")]
    return "".join(f"{c.strip()}\n" for c in chain if c).encode()


class CertificateManager:
    """The service's certificate: issued at start, renewed in the background."""

    def __init__(
        self,
        session: VaultSession,
        *,
        mount: str = "pki-orders",
        role: str,
        common_name: str,
        ttl: int | None = None,
        ca_file: str | None = None,
        ip_sans: str | None = None,
        retry_delay: float = 5.0,
    ) -> None:
        self._session = session
        self.mount = mount
        self.role = role
        self.common_name = common_name
        self.ttl = ttl
        self.ca_file = ca_file
        self.ip_sans = ip_sans
        self.retry_delay = retry_delay
        self._current: Certificate | None = None
        self._callbacks: list[RenewCallback] = []
        self._task: asyncio.Task[None] | None = None
        self.renewals = 0
        CERT_SECONDS_LEFT.labels(role).set_function(self._seconds_left)

    def _seconds_left(self) -> float:
        return max(0.0, self._current.seconds_left()) if self._current else 0.0

    @property
    def current(self) -> Certificate:
        if self._current is None:
            raise CertificateError("no certificate yet: await CertificateManager.start() first")
        return self._current

    def on_renew(self, callback: RenewCallback) -> None:
        """Call ``callback(new_certificate)`` (sync or async) after each renewal."""
        self._callbacks.append(callback)

    async def issue(self) -> Certificate:
        """A new certificate from Vault (does not replace :attr:`current`)."""
        data: dict[str, Any] = {"common_name": self.common_name}
        if self.ttl is not None:
            data["ttl"] = f"{int(self.ttl)}s"
        if self.ip_sans:
            data["ip_sans"] = self.ip_sans
        path = f"{self.mount}/issue/{self.role}"
        response = await self._session.request(
            "pki.issue", lambda: self._session.client.write_data(path, data=data)
        )
        issued: dict[str, Any] = response["data"]
        cert_pem = f"{issued['certificate'].strip()}\n".encode()
        parsed = x509.load_pem_x509_certificate(cert_pem)
        return Certificate(
            cert_pem=cert_pem,
            key_pem=f"{issued['private_key'].strip()}\n".encode(),
            ca_pem=ca_bundle(self.ca_file, issued),
            not_before=parsed.not_valid_before_utc.timestamp(),
            not_after=parsed.not_valid_after_utc.timestamp(),
            serial=str(issued.get("serial_number", "")),
            issued_at=time.time(),
        )

    async def start(self, *, renew: bool = True) -> Certificate:
        """Issue the first certificate and (unless ``renew`` is false: a short-lived
        command) start renewing it in the background."""
        self._current = await self.issue()
        log.info(
            "tls.certificate_issued",
            role=self.role,
            serial=self._current.serial,
            seconds_left=round(self._current.seconds_left()),
        )
        if renew:
            self._task = asyncio.create_task(self._renew_forever(), name=f"tls-renew-{self.role}")
        return self._current

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def renew_delay(self, now: float | None = None) -> float:
        """Seconds from ``now`` until the current certificate is due for renewal."""
        cert = self.current
        start = max(cert.not_before, cert.issued_at)
        due = start + cert.lifetime * (RENEW_AT - random.uniform(0, JITTER))  # noqa: S311
        return max(0.0, due - (time.time() if now is None else now))

    async def renew(self) -> Certificate:
        """Issue a new certificate now, make it current, and call the callbacks."""
        try:
            new = await self.issue()
        except Exception:
            CERT_RENEWALS.labels(self.role, "failed").inc()
            raise
        old, self._current = self._current, new
        self.renewals += 1
        CERT_RENEWALS.labels(self.role, "ok").inc()
        log.info(
            "tls.certificate_renewed",
            role=self.role,
            serial=new.serial,
            old_serial=old.serial if old else None,
            seconds_left=round(new.seconds_left()),
        )
        for callback in self._callbacks:
            try:
                result = callback(new)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                log.error(
                    "tls.renew_callback_failed", role=self.role, error_type=type(exc).__name__
                )
        return new

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.renew_delay())
            try:
                await self.renew()
            except Exception as exc:
                left = self.current.seconds_left()
                delay = max(0.5, min(self.retry_delay, left / 10))
                log.warning(
                    "tls.renew_failed",
                    role=self.role,
                    error_type=type(exc).__name__,
                    error=" ".join(str(exc).split())[:200],
                    seconds_left=round(left),
                    retry_in=round(delay, 1),
                )
                await asyncio.sleep(delay)

    # ------------------------------------------------------------------ uses

    def ssl_context(self, server: bool) -> ssl.SSLContext:
        """A context holding the current certificate and trusting the CA bundle. A client
        context verifies the server's certificate and name; a server context asks for no
        client certificate unless the caller sets ``verify_mode = ssl.CERT_REQUIRED``.
        Build a new one after a renewal (a context keeps the certificate it loaded)."""
        cert = self.current
        purpose = ssl.Purpose.CLIENT_AUTH if server else ssl.Purpose.SERVER_AUTH
        context = ssl.create_default_context(purpose, cadata=cert.ca_pem.decode())
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        load_chain(context, cert)
        return context

    def temporal_tls(self, server_name: str | None = None) -> TLSConfig:
        """The Temporal client's TLS settings from the current certificate. The frontend
        is verified with ``ORDERS_TLS_CA_FILE`` when set, else with the system's roots
        (Temporal Cloud: a public CA; the namespace trusts our CA for the client side)."""
        cert = self.current
        return TLSConfig(
            server_root_ca_cert=cert.ca_pem if self.ca_file else None,
            domain=server_name,
            client_cert=cert.cert_pem,
            client_private_key=cert.key_pem,
        )


# --------------------------------------------------------------------------- configuration


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name}={raw!r} is not a boolean: use 1 or 0")


@dataclass(frozen=True)
class TLSSettings:
    """Transport security of one identity (a service, or ``client`` for whoever submits
    orders), from the environment:

    ``ORDERS_TEMPORAL_TLS``              1: connect to Temporal with TLS and a client
                                         certificate from Vault PKI [0]
    ``ORDERS_TEMPORAL_TLS_SERVER_NAME``  name the Temporal frontend's certificate carries
                                         [the host of TEMPORAL_ADDRESS]
    ``ORDERS_TLS_CA_FILE``               CA bundle to trust [the chain Vault returns]
    ``ORDERS_PKI_MOUNT``                 [pki-orders]
    ``ORDERS_PKI_ROLE``                  [client-<service>; client-operator for the client]
    ``ORDERS_CERT_TTL``                  seconds a certificate lives [the role's, 1 h: its max]
    """

    temporal_tls: bool
    server_name: str | None
    ca_file: str | None
    mount: str
    role: str
    common_name: str
    ttl: int | None

    @classmethod
    def from_env(cls, identity: str, env: Mapping[str, str] | None = None) -> TLSSettings:
        e = os.environ if env is None else env
        default_role = "client-operator" if identity == "client" else f"client-{identity}"
        ca_file = e.get("ORDERS_TLS_CA_FILE", "").strip() or None
        if ca_file is not None and not Path(ca_file).is_file():
            raise ConfigError(
                f"ORDERS_TLS_CA_FILE={ca_file!r} does not exist: point it at the CA bundle "
                "(locally <state>/tls/ca.pem, written by the bootstrap)"
            )
        raw_ttl = e.get("ORDERS_CERT_TTL", "").strip()
        if raw_ttl and not (raw_ttl.isdigit() and 10 <= int(raw_ttl) <= 72 * 3600):
            raise ConfigError(f"ORDERS_CERT_TTL={raw_ttl!r}: use whole seconds, 10 to 259200")
        return cls(
            temporal_tls=_flag(e, "ORDERS_TEMPORAL_TLS"),
            server_name=e.get("ORDERS_TEMPORAL_TLS_SERVER_NAME", "").strip() or None,
            ca_file=ca_file,
            mount=e.get("ORDERS_PKI_MOUNT", "").strip() or "pki-orders",
            role=e.get("ORDERS_PKI_ROLE", "").strip() or default_role,
            common_name=f"orders-{identity}",
            ttl=int(raw_ttl) if raw_ttl else None,
        )

    def manager(self, session: VaultSession) -> CertificateManager:
        return CertificateManager(
            session,
            mount=self.mount,
            role=self.role,
            common_name=self.common_name,
            ttl=self.ttl,
            ca_file=self.ca_file,
        )


async def client_temporal_tls(
    session: VaultSession, env: Mapping[str, str] | None = None
) -> TLSConfig | bool:
    """For a short-lived client (the ``orders`` CLI): with ``ORDERS_TEMPORAL_TLS=1`` a
    certificate of the client's role (``client-operator``), issued once; else False."""
    settings = TLSSettings.from_env("client", env)
    if not settings.temporal_tls:
        return False
    manager = settings.manager(session)
    await manager.start(renew=False)
    return manager.temporal_tls(settings.server_name)
