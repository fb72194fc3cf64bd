"""HTTPS for the codec server: its own certificate, issued in process from Vault PKI.

Callers send the codec server Vault tokens (``--codec-auth``) and the Temporal UI
sends its OIDC token only to an ``https://`` endpoint, so with ``ORDERS_CODEC_TLS=1``
the server listens with TLS. Its certificate comes from PKI role ``server-codec``,
issued with the codec server's OWN Vault identity (policy ``orders-codec-server``:
that one role, nothing else; never a caller's token). The key stays in memory
(:class:`orders_shared.tls.CertificateManager`); at two thirds of its life a new
certificate is loaded into the listening socket's context, so new connections get it
and the server never restarts.

Variables:

``ORDERS_CODEC_TLS``                1: serve HTTPS [0]
``ORDERS_CODEC_TLS_TOKEN_FILE``     a Vault token of the codec server's identity (locally
                                    the stack writes one, policy orders-codec-server)
``ORDERS_CODEC_TLS_AUTH_METHOD`` / ``ORDERS_CODEC_TLS_AUTH_ROLE`` / ``ORDERS_CODEC_TLS_JWT_FILE``
                                    else log in as that identity (kubernetes or jwt auth)
                                    [kubernetes / orders-codec-server /
                                    /var/run/secrets/vault/token]
``ORDERS_CODEC_TLS_NAME``           DNS name in the certificate [localhost]
``ORDERS_CODEC_TLS_IP_SANS``        IP addresses in it [127.0.0.1; empty for none]
``ORDERS_PKI_MOUNT`` / ``ORDERS_CERT_TTL`` / ``ORDERS_TLS_CA_FILE``
                                    as for the workers (orders_shared.tls.TLSSettings)
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from orders_shared.config import AUTH_METHODS, AuthMethod, ConfigError, VaultConfig
from orders_shared.identity import VaultSession
from orders_shared.tls import Certificate, CertificateManager, TLSSettings, load_chain

ROLE = "server-codec"
IDENTITY = "orders-codec-server"


@dataclass(frozen=True)
class CodecTLS:
    """Where the codec server's certificate comes from, read once at start."""

    vault: VaultConfig
    name: str
    ip_sans: str | None
    pki: TLSSettings

    @classmethod
    def from_env(cls, vault_addr: str, env: Mapping[str, str] | None = None) -> CodecTLS | None:
        e = os.environ if env is None else env
        if e.get("ORDERS_CODEC_TLS", "").strip().lower() not in ("1", "true", "yes", "on"):
            return None
        token_file = e.get("ORDERS_CODEC_TLS_TOKEN_FILE", "").strip()
        method = e.get("ORDERS_CODEC_TLS_AUTH_METHOD", "").strip() or "kubernetes"
        if token_file:
            try:
                token = Path(token_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"ORDERS_CODEC_TLS_TOKEN_FILE={token_file!r} cannot be read "
                    f"({exc.strerror}): 'orders-stack up' writes it with ORDERS_TLS=1"
                ) from None
            method, static = "token", token
        elif method not in AUTH_METHODS or method == "token":
            raise ConfigError(
                f"ORDERS_CODEC_TLS_AUTH_METHOD={method!r}: use kubernetes or jwt, or set "
                "ORDERS_CODEC_TLS_TOKEN_FILE"
            )
        else:
            static = None
        vault = VaultConfig(
            addr=vault_addr,
            auth_method=cast(AuthMethod, method),
            auth_mount=e.get("ORDERS_CODEC_TLS_AUTH_MOUNT", "").strip() or method,
            auth_role=e.get("ORDERS_CODEC_TLS_AUTH_ROLE", "").strip() or IDENTITY,
            token_file=Path(
                e.get("ORDERS_CODEC_TLS_JWT_FILE", "").strip() or "/var/run/secrets/vault/token"
            ),
            request_timeout=5.0,
            static_token=static,
        )
        ips = e.get("ORDERS_CODEC_TLS_IP_SANS")
        return cls(
            vault=vault,
            name=e.get("ORDERS_CODEC_TLS_NAME", "").strip() or "localhost",
            ip_sans="127.0.0.1" if ips is None else (ips.strip() or None),
            pki=TLSSettings.from_env("codec-server", {**e, "ORDERS_PKI_ROLE": ROLE}),
        )


class ServingCertificate:
    """The codec server's certificate, held in memory, loaded into ``context``."""

    def __init__(self, tls: CodecTLS) -> None:
        self.tls = tls
        self.session: VaultSession | None = None
        self.manager: CertificateManager | None = None
        self.context: ssl.SSLContext | None = None

    async def start(self) -> ssl.SSLContext:
        self.session = await VaultSession.open(self.tls.vault)
        pki = self.tls.pki
        self.manager = CertificateManager(
            self.session,
            mount=pki.mount,
            role=ROLE,
            common_name=self.tls.name,
            ttl=pki.ttl,
            ca_file=pki.ca_file,
            ip_sans=self.tls.ip_sans,
        )
        await self.manager.start()
        context = self.manager.ssl_context(server=True)
        self.manager.on_renew(self._reload)
        self.context = context
        return context

    def _reload(self, cert: Certificate) -> None:
        # the listening socket keeps this context: new handshakes use the new certificate
        if self.context is not None:
            load_chain(self.context, cert)

    async def stop(self) -> None:
        if self.manager is not None:
            await self.manager.stop()
        if self.session is not None:
            await self.session.close()
