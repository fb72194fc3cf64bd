"""The codec server over HTTPS (``ORDERS_TLS=1``), against the real servers.

Claims: the stack's codec server answers only over TLS, with a certificate of PKI role
``server-codec`` that it issued itself; the real ``temporal`` CLI decodes a payload
through ``https://`` with ``--codec-auth`` when it trusts the stack's CA (Go reads
``SSL_CERT_FILE``) and refuses the server when it does not; the certificate is renewed
in the running server (new connections get the new one, no restart).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import ssl
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hvac
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from orders_codec_server.app import ServerConfig, start
from orders_codec_server.tls import CodecTLS, ServingCertificate
from orders_ops import codec_tls, issuer
from orders_ops.identities import local_session
from orders_ops.journey_ui import CHROMIUM, CHROMIUM_ARGS
from orders_ops.stack import Stack
from orders_ops.testing import free_port
from orders_shared.client import connect
from orders_shared.codec import VaultTransit

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(
        os.environ.get("ORDERS_TLS") != "1",
        reason="the TLS stack's codec server: run with ORDERS_TLS=1 (make test's TLS pass)",
    ),
]

TEMPORAL = str(Path(sys.executable).with_name("temporal"))


def reader_token(stack: Stack) -> str:
    """A payload reader's Vault token, as a person gets one (user token at oidc-readers)."""
    user = issuer.mint_user(stack.settings, "tls-reader", ttl=300)
    auth = hvac.Client(url=stack.settings.vault_addr).auth.jwt.jwt_login(
        "payload-reader", user, path="oidc-readers"
    )["auth"]
    token: str = auth["client_token"]
    return token


def served_certificate(port: int, ca: Path) -> x509.Certificate:
    """The certificate a fresh TLS handshake gets, verified against ``ca``."""
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


@pytest.fixture
async def encrypted_workflow(stack: Stack) -> AsyncIterator[tuple[str, str, str]]:
    """A workflow whose input (encrypted by the client's codec) names a fresh customer;
    no worker polls its queue, so it only sits in history. (workflow id, customer, run)."""
    session = await local_session(stack.settings, "client")
    client = await connect(stack.settings.temporal_address, VaultTransit(session))
    customer = f"cust-tls-{uuid.uuid4().hex[:10]}"
    handle = await client.start_workflow(
        "OrderWorkflow",
        {"customer_id": customer},
        id=f"tls-codec-{uuid.uuid4().hex[:10]}",
        task_queue=f"tls-codec-unpolled-{uuid.uuid4().hex[:6]}",
    )
    try:
        yield handle.id, customer, handle.result_run_id or ""
    finally:
        await handle.terminate()
        await session.close()


async def show(stack: Stack, workflow_id: str, env: dict[str, str], *extra: str) -> tuple[int, str]:
    """``temporal workflow show -o json`` with the payloads decoded into plain text."""
    proc = await asyncio.create_subprocess_exec(
        TEMPORAL,
        "workflow",
        "show",
        "-o",
        "json",
        "-w",
        workflow_id,
        "--address",
        stack.settings.temporal_address,
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp", **env},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    decoded = list(_payload_data(json.loads(out))) if proc.returncode == 0 else []
    return proc.returncode, "\n".join([out.decode(), err.decode(), *decoded])


def _payload_data(node: object) -> Iterator[str]:
    """Every payload's ``data`` (base64 in the CLI's JSON), decoded."""
    if isinstance(node, dict):
        if isinstance(node.get("data"), str) and "metadata" in node:
            yield base64.b64decode(node["data"]).decode("utf-8", "replace")
        for value in node.values():
            yield from _payload_data(value)
    elif isinstance(node, list):
        for value in node:
            yield from _payload_data(value)


def test_the_codec_server_serves_https_with_its_own_pki_certificate(stack: Stack) -> None:
    s = stack.settings
    assert s.codec_url == f"https://127.0.0.1:{s.codec_port}"
    cert = served_certificate(s.codec_port, s.ca_file)
    issuer_cn = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert (issuer_cn, names.get_values_for_type(x509.DNSName)) == (
        "orders intermediate CA",
        ["localhost"],
    )
    with pytest.raises(OSError):  # plain HTTP to the TLS port: the connection is dropped
        urllib.request.urlopen(f"http://127.0.0.1:{s.codec_port}/healthz", timeout=5)
    # no key of it on disk: the stack's TLS folder holds only the file-reading servers'
    assert not [p.name for p in s.tls_dir.iterdir() if "codec" in p.name]


async def test_the_temporal_cli_decodes_through_https_with_codec_auth(
    stack: Stack, encrypted_workflow: tuple[str, str, str]
) -> None:
    workflow_id, customer, _run = encrypted_workflow
    s = stack.settings
    codec = ["--codec-endpoint", s.codec_url, "--codec-auth", f"Bearer {reader_token(stack)}"]

    code, text = await show(stack, workflow_id, {})
    assert (code, customer in text) == (0, False)  # encrypted in history

    code, text = await show(stack, workflow_id, {"SSL_CERT_FILE": str(s.ca_file)}, *codec)
    assert (code, customer in text) == (0, True)  # decoded by the codec server over TLS

    # a CLI that does not trust the stack's CA refuses the server (the token is never sent):
    # it retries the handshake until its deadline and shows nothing
    untrusting = {"SSL_CERT_FILE": "/dev/null"}
    code, text = await show(stack, workflow_id, untrusting, *codec, "--command-timeout", "3s")
    assert (code, customer in text) == (1, False), text[-600:]


async def test_the_certificate_is_renewed_in_the_running_server(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = stack.settings
    monkeypatch.setenv("ORDERS_CERT_TTL", "12")  # renewed about 8 s after issue
    tls = CodecTLS.from_env(
        s.vault_addr,
        {
            **os.environ,
            "ORDERS_CODEC_TLS": "1",
            "ORDERS_CODEC_TLS_TOKEN_FILE": str(codec_tls.write_token(s)),
            "ORDERS_TLS_CA_FILE": str(s.ca_file),
        },
    )
    assert tls is not None
    certificate = ServingCertificate(tls)
    port = free_port()
    server = await start(
        ServerConfig(vault_addr=s.vault_addr, port=port), await certificate.start()
    )
    try:
        first = (await asyncio.to_thread(served_certificate, port, s.ca_file)).serial_number
        for _ in range(60):  # until the renewal (about 8 s); fails after 30 s
            await asyncio.sleep(0.5)
            if certificate.manager is not None and certificate.manager.renewals:
                break
        assert certificate.manager is not None and certificate.manager.renewals >= 1
        renewed = await asyncio.to_thread(served_certificate, port, s.ca_file)
        assert renewed.serial_number != first
        assert renewed.serial_number == int(certificate.manager.current.serial.replace(":", ""), 16)
    finally:
        await server.stop()
        await certificate.stop()


@pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"),
    reason="chromium: ops/scripts/install-browser.sh (in CI a missing browser fails instead)",
)
async def test_the_ui_decodes_through_the_https_codec_endpoint(
    stack: Stack, encrypted_workflow: tuple[str, str, str]
) -> None:
    """The stack's UI is given the https endpoint; a browser that trusts the server's key
    (pinned by its SPKI hash: Chromium here has no tool to import a CA) shows the
    decoded input. The UI sends a token only over https, and only with OIDC on, which
    the dev server lacks: this proves the https path, not the token."""
    from playwright.async_api import async_playwright

    workflow_id, customer, run_id = encrypted_workflow
    s = stack.settings
    spki = (
        served_certificate(s.codec_port, s.ca_file)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    args = [*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={pin}"]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = await (await browser.new_context()).new_page()
            ui = s.temporal_ui_url
            settings = await (await page.request.get(f"{ui}/api/v1/settings")).text()
            assert f"https://127.0.0.1:{s.codec_port}/" in settings
            url = f"{ui}/namespaces/default/workflows/{workflow_id}/{run_id}/history"
            await page.goto(url, wait_until="domcontentloaded")
            text = ""
            for _ in range(30):  # decoded content appears a few seconds after load
                await asyncio.sleep(1)
                text = await page.content()
                if customer in text:
                    break
            assert customer in text
        finally:
            await browser.close()
