"""``orders-runbook rotate-intermediate-ca`` on the real OpenBao of the test stack.

A leaf issued before the rotation and one issued after both verify against the CA
bundle during the overlap (openssl, the library nginx uses); the bootstrap run again
changes nothing; finishing deletes the old intermediate, after which only new leaves
verify; an unidentifiable stack is refused.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import hvac
import pytest
from cryptography import x509

from orders_ops import pki, runbooks
from orders_ops.policies import PKI_MOUNT
from orders_ops.runbook_pki import PKIRunbookError
from orders_ops.runbooks import RunbookError
from orders_ops.settings import StackSettings
from orders_ops.stack import Stack
from orders_ops.testing import isolated_settings
from orders_ops.vault_bootstrap import configure_vault, root_client

pytestmark = pytest.mark.stack


def _leaf(client: hvac.Client, path: Path) -> x509.Certificate:
    data = client.write_data(
        f"{PKI_MOUNT}/issue/client-validate", data={"common_name": "orders-validate", "ttl": "5m"}
    )["data"]
    path.write_text(data["certificate"] + "\n")
    return x509.load_pem_x509_certificate(data["certificate"].encode())


def _verifies(settings: StackSettings, leaf: Path) -> bool:
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki.ca_file(settings)), str(leaf)],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0


def test_rotate_intermediate_ca_with_overlap(stack: Stack, tmp_path: Path) -> None:
    settings = stack.settings
    client = root_client(settings)
    # a stack rotated before (this state folder kept from an earlier run) starts clean
    runbooks.rotate_ca(settings, finish=True, overlap_over=True)
    old_issuer = pki.default_issuer(client, PKI_MOUNT)
    old_leaf = tmp_path / "old.pem"
    old = _leaf(client, old_leaf)
    assert _verifies(settings, old_leaf)

    lines = runbooks.rotate_ca(settings, finish=False, overlap_over=False)
    assert any("verify:" in line for line in lines)
    assert any("--finish" in line for line in lines)

    new_issuer = pki.default_issuer(client, PKI_MOUNT)
    assert new_issuer != old_issuer
    assert old_issuer in pki.issuer_ids(client, PKI_MOUNT)  # kept
    new_leaf = tmp_path / "new.pem"
    new = _leaf(client, new_leaf)
    aki = x509.AuthorityKeyIdentifier
    assert (
        old.extensions.get_extension_for_class(aki).value.key_identifier
        != new.extensions.get_extension_for_class(aki).value.key_identifier
    )
    bundle = x509.load_pem_x509_certificates(pki.ca_file(settings).read_bytes())
    assert [c.subject.rfc4514_string() for c in bundle].count(f"CN={pki.INTERMEDIATE_CN}") == 2
    assert _verifies(settings, old_leaf)
    assert _verifies(settings, new_leaf)

    assert configure_vault(client, settings) == []  # the bootstrap keeps the rotation

    with pytest.raises(PKIRunbookError):
        runbooks.rotate_ca(settings, finish=True, overlap_over=False)  # overlap not over
    runbooks.rotate_ca(settings, finish=True, overlap_over=True)
    assert pki.issuer_ids(client, PKI_MOUNT) == [new_issuer]
    assert _verifies(settings, new_leaf)
    assert not _verifies(settings, old_leaf)
    # the servers' certificates now come from the new intermediate
    for role in pki.LOCAL_SERVER_CERTS:
        crt, _key = pki.server_files(settings, role)
        assert _verifies(settings, crt)
    assert configure_vault(client, settings) == []


def test_refuses_a_stack_it_cannot_identify(tmp_path: Path) -> None:
    with pytest.raises(RunbookError, match="no orders stack state"):
        runbooks.rotate_ca(isolated_settings(tmp_path / "none"), finish=False, overlap_over=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunbookError, match="root token"):
        runbooks.rotate_ca(isolated_settings(tmp_path / "empty"), finish=False, overlap_over=False)


def _serial_int(serial: str) -> int:
    return int(serial.replace(":", "").replace("-", ""), 16)


def test_revoke_certificates_revokes_a_services_serials_and_publishes_the_crl(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 20 item 7: a client certificate is not leased, so revoking notify's token
    left its certificates valid; this runbook revokes them by serial."""
    import urllib.request

    client = root_client(stack.settings)
    try:

        def issue(service: str) -> str:
            data = client.write(
                f"{PKI_MOUNT}/issue/client-{service}", common_name=f"orders-{service}"
            )["data"]
            return str(data["serial_number"])

        notify = [issue("notify"), issue("notify")]
        payment = issue("payment")
        runbooks.main(["revoke-certificates", "notify"])
        out = capsys.readouterr().out
        for serial in notify:
            assert f"revoked orders-notify's certificate {serial}" in out
            assert client.read(f"{PKI_MOUNT}/cert/{serial}")["data"]["revocation_time"] > 0
        assert not client.read(f"{PKI_MOUNT}/cert/{payment}")["data"]["revocation_time"]
        assert payment not in out
        # the CRL anyone can fetch (unauthenticated) lists notify's serials, not payment's
        with urllib.request.urlopen(  # noqa: S310 (the stack's loopback Vault)
            f"{stack.settings.vault_addr}/v1/{PKI_MOUNT}/crl/pem", timeout=5
        ) as resp:
            crl = x509.load_pem_x509_crl(resp.read())
        for serial in notify:
            assert crl.get_revoked_certificate_by_serial_number(_serial_int(serial)) is not None
        assert crl.get_revoked_certificate_by_serial_number(_serial_int(payment)) is None
        # a second run finds nothing left to revoke
        runbooks.main(["revoke-certificates", "notify"])
        assert "0 certificate(s) of orders-notify revoked" in capsys.readouterr().out
    finally:
        client.adapter.close()


def test_revoke_certificates_refuses_an_unknown_service(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        runbooks.main(["revoke-certificates", "nobody"])
    assert "unknown service 'nobody'" in capsys.readouterr().err
