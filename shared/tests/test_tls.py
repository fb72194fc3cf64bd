"""CertificateManager (orders_shared.tls) with short TTLs, on the real OpenBao of the test stack.

A service's manager issues under its own role with its own Vault login, renews in the
background at about two thirds of the life (callbacks called, metrics counted), and its
certificate and in-memory key make a working mutual-TLS connection.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import hvac.exceptions
import pytest
from cryptography import x509
from prometheus_client import REGISTRY

from orders_ops import pki
from orders_ops.identities import local_session
from orders_ops.stack import Stack
from orders_ops.testing import free_port
from orders_ops.vault_bootstrap import root_client
from orders_shared.config import ConfigError
from orders_shared.tls import JITTER, RENEW_AT, CertificateManager, TLSSettings, memory_file

pytestmark = pytest.mark.stack
T = TypeVar("T")


class RootSession:
    """The bootstrap's root client in a VaultSession's shape (for a server certificate)."""

    def __init__(self, stack: Stack) -> None:
        self.client = root_client(stack.settings)

    async def request(self, _operation: str, fn: Callable[..., T], /, *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)


def _renewals(role: str) -> float:
    value = REGISTRY.get_sample_value(
        "orders_tls_certificate_renewals_total", {"role": role, "outcome": "ok"}
    )
    return value or 0.0


def test_renews_in_the_background_and_calls_back(stack: Stack) -> None:
    async def run() -> None:
        session = await local_session(stack.settings, "inventory")
        manager = CertificateManager(
            session,
            role="client-inventory",
            common_name="orders-inventory",
            ttl=6,
            ca_file=str(pki.ca_file(stack.settings)),
        )
        renewed: asyncio.Queue[Any] = asyncio.Queue()
        manager.on_renew(renewed.put_nowait)
        before = _renewals("client-inventory")
        try:
            first = await manager.start()
            assert 0 < manager.renew_delay() < first.seconds_left()
            second = await asyncio.wait_for(renewed.get(), timeout=30)
            assert second is manager.current
            assert second.serial != first.serial
            assert manager.renewals >= 1
            assert _renewals("client-inventory") >= before + 1
            left = REGISTRY.get_sample_value(
                "orders_tls_certificate_seconds_left", {"role": "client-inventory"}
            )
            assert left is not None and 0 < left <= 6
            assert b"PRIVATE KEY" not in repr(second).encode()
        finally:
            await manager.stop()
            await session.close()

    asyncio.run(run())


def test_another_role_is_refused_at_start(stack: Stack) -> None:
    async def run() -> None:
        session = await local_session(stack.settings, "inventory")
        manager = CertificateManager(session, role="client-payment", common_name="orders-payment")
        try:
            with pytest.raises(hvac.exceptions.Forbidden):
                await manager.start()
        finally:
            await session.close()

    asyncio.run(run())


def test_mutual_tls_with_keys_from_memory(stack: Stack) -> None:
    """A server context (role server-codec) requiring client certificates, and a client
    context of client-validate: the handshake works, the server sees orders-validate."""

    async def run() -> str:
        ca = str(pki.ca_file(stack.settings))
        server = CertificateManager(
            RootSession(stack),  # type: ignore[arg-type]
            role="server-codec",
            common_name="localhost",
            ca_file=ca,
        )
        await server.start(renew=False)
        session = await local_session(stack.settings, "validate")
        client = CertificateManager(
            session, role="client-validate", common_name="orders-validate", ca_file=ca
        )
        await client.start(renew=False)
        server_ctx = server.ssl_context(server=True)
        server_ctx.verify_mode = ssl.CERT_REQUIRED
        seen: list[str] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peercert")
            seen.append(dict(x[0] for x in peer["subject"])["commonName"])
            writer.close()

        port = free_port()
        srv = await asyncio.start_server(handle, "127.0.0.1", port, ssl=server_ctx)
        try:
            _reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client.ssl_context(server=False), server_hostname="localhost"
            )
            writer.close()
            for _ in range(50):
                if seen:
                    break
                await asyncio.sleep(0.05)
        finally:
            srv.close()
            await session.close()
        return seen[0]

    assert asyncio.run(run()) == "orders-validate"


def test_memory_file_has_no_path_afterwards() -> None:
    with memory_file(b"secret") as path:
        with open(path, "rb") as f:
            assert f.read() == b"secret"
        fd = int(path.rsplit("/", 1)[1])
        assert os.readlink(path).startswith("/memfd:")
    with pytest.raises(OSError):
        os.fstat(fd)


def test_settings_from_env() -> None:
    tls = TLSSettings.from_env("payment", {"ORDERS_TEMPORAL_TLS": "1", "ORDERS_CERT_TTL": "90"})
    assert (tls.temporal_tls, tls.role, tls.common_name, tls.ttl) == (
        True,
        "client-payment",
        "orders-payment",
        90,
    )
    assert TLSSettings.from_env("client", {}).role == "client-operator"
    with pytest.raises(ConfigError, match="ORDERS_TEMPORAL_TLS"):
        TLSSettings.from_env("payment", {"ORDERS_TEMPORAL_TLS": "maybe"})
    with pytest.raises(ConfigError, match="ORDERS_CERT_TTL"):
        TLSSettings.from_env("payment", {"ORDERS_CERT_TTL": "1"})
    with pytest.raises(ConfigError, match="ORDERS_TLS_CA_FILE"):
        TLSSettings.from_env("payment", {"ORDERS_TLS_CA_FILE": "/nonexistent/ca.pem"})


def test_certificate_lifetime_ignores_backdating(stack: Stack) -> None:
    async def run() -> None:
        session = await local_session(stack.settings, "notify")
        manager = CertificateManager(
            session, role="client-notify", common_name="orders-notify", ttl=60
        )
        try:
            cert = await manager.start(renew=False)
            parsed = x509.load_pem_x509_certificate(cert.cert_pem)
            assert parsed.not_valid_before_utc.timestamp() < cert.issued_at - 10  # backdated
            assert cert.lifetime <= 61
            # due at 2/3 of the life counted from the issue (not the backdated not_before),
            # minus up to JITTER; measured from that start, so no wall-clock time enters
            delay = manager.renew_delay(now=cert.issued_at)
            assert cert.lifetime * (RENEW_AT - JITTER) <= delay <= cert.lifetime * RENEW_AT
        finally:
            await session.close()

    asyncio.run(run())
