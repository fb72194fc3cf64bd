"""Rotating the local identity issuer's key: the new key signs, both verify (Vault's
JWT auth lists both public keys) until the rotation is finished; lifetimes are capped."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import hvac
import hvac.exceptions
import jwt
import pytest

from orders_ops import issuer
from orders_ops.settings import SettingsError, StackSettings
from orders_ops.stack import Stack, rotate_issuer_key
from orders_ops.testing import isolated_settings
from orders_ops.vault_bootstrap import root_client


def _login(s: StackSettings, token: str) -> str:
    client = hvac.Client(url=s.vault_addr, timeout=10)
    try:
        auth = client.auth.jwt.jwt_login(role="orders-validate", jwt=token, path="jwt")
        return str(auth["auth"]["client_token"])
    finally:
        client.adapter.close()


def _trusted_keys(s: StackSettings) -> list[str]:
    client = root_client(s)
    try:
        keys = client.read("auth/jwt/config")["data"]["jwt_validation_pubkeys"]
        return [str(k).strip() for k in keys]
    finally:
        client.adapter.close()


@pytest.fixture(scope="module")
def own_stack() -> Iterator[Stack]:
    state = Path(tempfile.mkdtemp(prefix="orders-rotation-test-"))
    stack = Stack(isolated_settings(state))
    try:
        stack.up(timeout=90, echo=lambda _line: None)
        yield stack
    finally:
        stack.down(echo=lambda _line: None)
        shutil.rmtree(state, ignore_errors=True)


@pytest.mark.stack
def test_rotation_new_key_signs_both_verify_until_finished(own_stack: Stack) -> None:
    s = own_stack.settings
    old_kid = issuer.key_id(issuer.load_signing_key(s))
    old_token = issuer.mint(s, "validate")
    assert _login(s, old_token)
    assert len(_trusted_keys(s)) == 1

    rotate_issuer_key(s)
    new_kid = issuer.key_id(issuer.load_signing_key(s))
    assert new_kid != old_kid
    assert len(_trusted_keys(s)) == 2
    assert set(_trusted_keys(s)) == {k.strip() for k in issuer.public_key_pems(s)}
    assert _login(s, old_token), "a token signed before the rotation must still work"
    new_token = issuer.mint(s, "validate")
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert _login(s, new_token)
    # every token file was re-signed at once, and the running issuer keeps them fresh
    for name in issuer.IDENTITIES:
        file_token = s.token_file(name).read_text().strip()
        assert jwt.get_unverified_header(file_token)["kid"] == new_kid, name
    assert own_stack.identity.healthy()
    codec_token = own_stack.codec.reader_token_file.read_text().strip()
    assert jwt.get_unverified_header(codec_token)["kid"] == new_kid

    rotate_issuer_key(s, finish=True)
    assert _trusted_keys(s) == [issuer.public_key_pem(s).strip()]
    with pytest.raises(hvac.exceptions.InvalidRequest, match="no known key"):
        _login(s, old_token)
    assert _login(s, issuer.mint(s, "validate"))
    assert not s.issuer_previous_key_file.exists()


def test_workload_tokens_live_at_most_an_hour(tmp_path: Path) -> None:
    s = isolated_settings(tmp_path / "state")
    issuer.ensure_signing_key(s)
    assert issuer.mint(s, "validate", ttl=issuer.MAX_TTL)
    with pytest.raises(issuer.IssuerError, match="use 1 to 3600 seconds"):
        issuer.mint(s, "validate", ttl=issuer.MAX_TTL + 1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(issuer.TTL_ENV, "7200")
        with pytest.raises(SettingsError, match="too long: use at most 3600"):
            issuer.ttl_from_env()


def test_user_tokens_live_at_most_twelve_hours(tmp_path: Path) -> None:
    s = isolated_settings(tmp_path / "state")
    issuer.ensure_signing_key(s)
    assert issuer.mint_user(s, "ada", ttl=12 * 3600)
    with pytest.raises(issuer.IssuerError, match="use 1 to 43200 seconds"):
        issuer.mint_user(s, "ada", ttl=12 * 3600 + 1)
    cli = subprocess.run(
        [sys.executable, "-m", "orders_ops.issuer", "mint-user", "ada", "--ttl", "86400"],
        env={"PATH": "/usr/bin:/bin", "ORDERS_STATE_DIR": str(s.state_dir)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert cli.returncode == 2
    assert "use 1 to 43200 seconds" in cli.stderr
    assert cli.stdout == ""


def test_serve_keeps_the_local_readers_token_fresh(tmp_path: Path) -> None:
    """The local codec server's reader token is a 1 h user token: the issuer re-mints
    it with the others, or the UI would stop decoding an hour after 'make up'."""
    s = isolated_settings(tmp_path / "state")
    issuer.ensure_signing_key(s)
    issuer.local_reader_token_file(s).parent.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orders_ops.issuer", "serve"],
        env={
            "PATH": "/usr/bin:/bin",
            "ORDERS_STATE_DIR": str(s.state_dir),
            issuer.TTL_ENV: "2",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen: set[str] = set()
    try:
        for _ in range(200):  # bounded by count, not by time: each round waits 0.1 s
            try:
                token = issuer.local_reader_token_file(s).read_text().strip()
            except FileNotFoundError:
                token = ""
            if token:
                seen.add(token)
            if len(seen) >= 2:
                break
            assert proc.poll() is None, "serve exited"
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert len(seen) >= 2, "the reader token was not re-minted"
    claims = jwt.decode(sorted(seen)[0], options={"verify_signature": False})
    assert claims["sub"] == issuer.LOCAL_READER
