"""The Vault CA the charts mount (global.vault.caSecret) is really used: a TLS server with
a private CA on 127.0.0.1 stands in for Vault, and the clients the images run (hvac in
the workers and the bootstrap, aiohttp in the codec server) verify it with exactly the
environment the charts set, and refuse it without."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HVAC = (
    "import hvac, os; c = hvac.Client(url=os.environ['PROBE_URL']);"
    "print(c.sys.read_health_status(method='GET'))"
)
AIOHTTP = (
    "import aiohttp, asyncio, os\n"
    "async def main():\n"
    "    async with aiohttp.ClientSession() as s:\n"
    "        async with s.get(os.environ['PROBE_URL'] + '/v1/sys/health') as r:\n"
    "            print(r.status)\n"
    "asyncio.run(main())\n"
)


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
    signer: ec.EllipticCurvePrivateKey, ca: bool,
) -> x509.Certificate:  # fmt: skip
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def vault_like(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on 127.0.0.1 with a certificate from a private CA: (URL, ca.crt)."""
    folder = tmp_path_factory.mktemp("tls")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("orders test CA", ca_key, None, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert("127.0.0.1", key, ca.subject, ca_key, ca=False)
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"initialized": true, "sealed": false}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "tls.crt", folder / "tls.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", folder / "ca.crt"
    finally:
        server.shutdown()
        server.server_close()


def _chart_tls_env(chart_dir: Path, chart: str, ca_file: Path) -> dict[str, str]:
    """The chart's TLS variables, with the mounted path replaced by the test CA file."""
    with helm.Chart.load(chart_dir / chart) as loaded:
        files = loaded.render(
            {"global": {"vault": {"caSecret": "vault-ca"}}}, name=chart, namespace="orders"
        )
    docs = [d for body in files.values() for d in yaml.safe_load_all(body) if d]
    # the chart's workload; the bootstrap chart's session watchdog is tested on its own
    # (tests/deploy/test_charts.py, test_tls_profile.py)
    (workload,) = [
        d
        for d in docs
        if d["kind"] in ("Deployment", "Job") and d["metadata"]["name"] != "orders-session-watchdog"
    ]
    env = workload["spec"]["template"]["spec"]["containers"][0]["env"]
    wanted = {e["name"]: e["value"] for e in env if e["name"] in ("VAULT_CACERT", "SSL_CERT_FILE")}
    assert wanted, chart
    assert set(wanted.values()) == {"/etc/orders/tls/vault-ca/ca.crt"}
    return {name: str(ca_file) for name in wanted}


def _probe(code: str, url: str, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VAULT_", "REQUESTS_", "SSL_CERT_", "CURL_"))
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **extra, "PROBE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("chart", ["payment", "bootstrap", "codec-server"])
def test_hvac_verifies_vault_with_the_charts_ca(
    chart_dir: Path, vault_like: tuple[str, Path], chart: str
) -> None:
    url, ca = vault_like
    env = _chart_tls_env(chart_dir, chart, ca)
    trusted = _probe(HVAC, url, env)
    assert trusted.returncode == 0, trusted.stderr[-2000:]
    assert "'sealed': False" in trusted.stdout
    untrusted = _probe(HVAC, url, {})
    assert untrusted.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr


def test_the_codec_servers_aiohttp_verifies_vault_with_the_charts_ca(
    chart_dir: Path, vault_like: tuple[str, Path]
) -> None:
    url, ca = vault_like
    env = _chart_tls_env(chart_dir, "codec-server", ca)
    assert "SSL_CERT_FILE" in env
    trusted = _probe(AIOHTTP, url, env)
    assert trusted.returncode == 0, trusted.stderr[-2000:]
    assert trusted.stdout.strip() == "200"
    untrusted = _probe(AIOHTTP, url, {})
    assert untrusted.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
