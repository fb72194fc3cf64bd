"""Who may be whom: the local identity issuer, JWT and Kubernetes login, and the
per-identity policy matrix, against the real OpenBao of the local stack.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import jwt
import pytest
import tokenreview  # ops/tests is on pytest's pythonpath
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from orders_ops import issuer
from orders_ops.policies import PAYLOAD_KEY, SEALED_SERVICES, creds_path, seal_key
from orders_ops.settings import StackSettings
from orders_ops.stack import Stack
from orders_ops.vault_bootstrap import (
    KubernetesAuthConfig,
    TokenTTLs,
    ensure_kubernetes_auth,
    root_client,
)
from orders_shared.catalog import DB_ROLES, SERVICES

ADMIN_PATHS = (
    "sys/policies/acl",
    "sys/policies/acl/orders-validate",
    "auth/jwt/config",
    "auth/jwt/role/orders-validate",
    "database/config/orders",
    "database/roles/order-validate",
    "transit/keys/orders-payload",
    "transit/encrypt/orders-payload",
    "sys/leases/renew",
    "sys/leases/revoke",
    "sys/audit",
    "sys/mounts",
)


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def local_settings(tmp_path: Path) -> StackSettings:
    """Settings with a state folder of their own: for issuer tests that need no servers."""
    return dataclasses.replace(StackSettings.from_env(), state_dir=tmp_path / "state")


@pytest.fixture(scope="module")
def root(stack: Stack) -> Iterator[hvac.Client]:
    client = root_client(stack.settings)
    yield client
    client.adapter.close()


def _anon(settings: StackSettings) -> hvac.Client:
    return hvac.Client(url=settings.vault_addr, timeout=10)


def _jwt_login(settings: StackSettings, role: str, token: str) -> dict[str, Any]:
    result: dict[str, Any] = _anon(settings).auth.jwt.jwt_login(role=role, jwt=token, path="jwt")
    return result


def _login_client(settings: StackSettings, service_name: str) -> hvac.Client:
    token = settings.token_file(service_name).read_text().strip()
    auth = _jwt_login(settings, f"orders-{service_name}", token)["auth"]
    return hvac.Client(url=settings.vault_addr, token=auth["client_token"], timeout=10)


def _capabilities(root: hvac.Client, token: str, paths: list[str]) -> dict[str, list[str]]:
    """The token's capabilities on ``paths``, asked by root.

    Workers get no ``default`` policy, so they cannot ask ``sys/capabilities-self``.
    """
    response = root.write_data("sys/capabilities", data={"token": token, "paths": paths})
    data: dict[str, list[str]] = response["data"]
    return data


# --------------------------------------------------------------------------- issuer, no servers


def test_minted_token_has_the_serviceaccount_shape(local_settings: StackSettings) -> None:
    assert issuer.ensure_signing_key(local_settings) is True
    assert issuer.ensure_signing_key(local_settings) is False  # created once
    assert stat.S_IMODE(local_settings.issuer_key_file.stat().st_mode) == 0o600

    token = issuer.mint(local_settings, "inventory", ttl=120)
    key = issuer.load_signing_key(local_settings)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
    assert header["kid"] == issuer.key_id(key)
    claims = jwt.decode(
        token, key.public_key(), algorithms=["RS256"], audience="vault", issuer=issuer.ISSUER
    )
    ns = local_settings.namespace
    assert claims["sub"] == f"system:serviceaccount:{ns}:orders-inventory"
    assert claims["aud"] == ["vault"]
    assert claims["exp"] - claims["iat"] == 120
    assert claims["nbf"] == claims["iat"]
    sa = claims["kubernetes.io"]
    assert sa["namespace"] == ns
    assert sa["serviceaccount"]["name"] == "orders-inventory"
    # stable per service, distinct between services
    again = jwt.decode(
        issuer.mint(local_settings, "inventory"), options={"verify_signature": False}
    )
    other = jwt.decode(issuer.mint(local_settings, "payment"), options={"verify_signature": False})
    uid = sa["serviceaccount"]["uid"]
    assert again["kubernetes.io"]["serviceaccount"]["uid"] == uid
    assert other["kubernetes.io"]["serviceaccount"]["uid"] != uid


def test_unknown_service_is_a_clear_error(local_settings: StackSettings) -> None:
    issuer.ensure_signing_key(local_settings)
    with pytest.raises(issuer.IssuerError, match="unknown service 'billing'; known services:"):
        issuer.mint(local_settings, "billing")


def test_serve_refuses_to_start_without_a_key(local_settings: StackSettings) -> None:
    with pytest.raises(issuer.IssuerError, match="run 'orders-bootstrap'"):
        issuer.public_key_pem(local_settings)


def test_write_tokens_is_private_and_fresh(local_settings: StackSettings) -> None:
    issuer.ensure_signing_key(local_settings)
    assert issuer.tokens_fresh(local_settings) is False  # nothing written yet
    paths = issuer.write_tokens(local_settings, ttl=100)
    assert sorted(paths) == sorted(local_settings.token_file(s) for s in (*SERVICES, "client"))
    assert stat.S_IMODE(local_settings.identity_dir.stat().st_mode) == 0o700
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in local_settings.identity_dir.rglob(".*")] == []
    assert issuer.tokens_fresh(local_settings) is True

    later = time.time() + 95  # 5% of the lifetime left: overdue for re-minting
    assert issuer.token_share_left(local_settings, "validate", now=later) < 0.1
    # a token signed by a key Vault no longer trusts is not fresh
    local_settings.issuer_key_file.unlink()
    issuer.ensure_signing_key(local_settings)
    assert issuer.tokens_fresh(local_settings) is False


def _cli(settings: StackSettings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orders_ops.issuer", *args],
        env={**os.environ, "ORDERS_STATE_DIR": str(settings.state_dir), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_cli_mint_public_key_and_errors(local_settings: StackSettings) -> None:
    missing = _cli(local_settings, "public-key")
    assert missing.returncode == 2
    assert "no identity signing key" in missing.stderr

    issuer.ensure_signing_key(local_settings)
    pem = _cli(local_settings, "public-key")
    assert pem.returncode == 0
    assert pem.stdout == issuer.public_key_pem(local_settings)
    assert "PRIVATE" not in pem.stdout

    minted = _cli(local_settings, "mint", "notify")
    assert minted.returncode == 0
    claims = jwt.decode(minted.stdout.strip(), options={"verify_signature": False})
    assert claims["sub"].endswith(":orders-notify")

    unknown = _cli(local_settings, "mint", "billing")
    assert unknown.returncode == 2
    assert "unknown service 'billing'" in unknown.stderr

    bad_ttl = _cli(local_settings, "mint", "notify", ORDERS_IDENTITY_TOKEN_TTL="soon")
    assert bad_ttl.returncode == 2
    assert "ORDERS_IDENTITY_TOKEN_TTL" in bad_ttl.stderr


def test_serve_remints_before_expiry_and_stops_on_sigterm(local_settings: StackSettings) -> None:
    issuer.ensure_signing_key(local_settings)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orders_ops.issuer", "serve"],
        env={
            **os.environ,
            "ORDERS_STATE_DIR": str(local_settings.state_dir),
            "ORDERS_IDENTITY_TOKEN_TTL": "3",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        token_file = local_settings.token_file("payment")

        def times() -> tuple[int, int] | None:
            try:
                text = token_file.read_text().strip()
            except OSError:
                return None
            claims = jwt.decode(text, options={"verify_signature": False})
            return int(claims["iat"]), int(claims["exp"])

        seen: list[tuple[int, int]] = []
        for _ in range(300):  # bounded by count; each round sleeps 0.05 s
            current = times()
            if current is not None and current not in seen:
                seen.append(current)
            if len(seen) >= 3:
                break
            assert proc.poll() is None, "serve exited"
            time.sleep(0.05)
        assert len(seen) >= 3, "serve did not re-mint (3 s tokens, refresh at 80%)"
        # each token was replaced before it expired (read from the tokens, not a clock)
        for (_, expires), (issued, _) in itertools.pairwise(seen):
            assert issued < expires, f"re-minted at {issued}, after expiry at {expires}"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "stopped" in out
    for name in SERVICES:  # what it logs never carries a token
        assert local_settings.token_file(name).read_text().strip() not in out


# --------------------------------------------------------------------------- the running stack


@pytest.mark.stack
def test_token_files_after_up(stack: Stack) -> None:
    s = stack.settings
    assert issuer.tokens_fresh(s)
    # as root: passable, not listable; each identity's folder is its own (test_isolation)
    shared = os.geteuid() == 0
    assert stat.S_IMODE(s.identity_dir.stat().st_mode) == (0o711 if shared else 0o700)
    for name in SERVICES:
        assert stat.S_IMODE(s.token_file(name).stat().st_mode) == (0o640 if shared else 0o600)
        folder_mode = stat.S_IMODE(s.token_dir(name).stat().st_mode)
        assert folder_mode == (0o2750 if shared else 0o700)
    assert stack.identity.healthy()


@pytest.mark.stack
def test_root_token_never_reaches_a_worker_file(stack: Stack) -> None:
    s = stack.settings
    root_token = s.root_token()
    files = [p for p in s.identity_dir.rglob("*") if p.is_file()]
    assert {s.token_file(n) for n in SERVICES} <= set(files)
    for path in files:
        assert root_token not in path.read_text(errors="replace"), path
    assert not s.identity_dir.is_relative_to(s.secrets_dir)
    # nor does the issuer key (the secret that could forge every identity)
    assert not any(p.name.endswith(".pem") for p in files)


@pytest.mark.stack
@pytest.mark.parametrize("service_name", list(SERVICES))
def test_each_identity_logs_in_only_as_itself(stack: Stack, service_name: str) -> None:
    s = stack.settings
    token = s.token_file(service_name).read_text().strip()
    auth = _jwt_login(s, f"orders-{service_name}", token)["auth"]
    assert auth["token_policies"] == [f"orders-{service_name}"]
    assert auth["policies"] == [f"orders-{service_name}"]  # no "default"
    assert auth["lease_duration"] == TokenTTLs.from_env().ttl
    assert auth["renewable"] is True
    for other in SERVICES:
        if other == service_name:
            continue
        with pytest.raises(hvac.exceptions.InvalidRequest, match="invalid subject"):
            _jwt_login(s, f"orders-{other}", token)


@pytest.mark.stack
@pytest.mark.parametrize("service_name", list(SERVICES))
def test_policy_matrix(stack: Stack, root: hvac.Client, service_name: str) -> None:
    s = stack.settings
    client = _login_client(s, service_name)
    own = set(SERVICES[service_name].db_roles)
    creds = [creds_path(r) for r in DB_ROLES]
    seals = [f"transit/decrypt/{seal_key(x)}" for x in SEALED_SERVICES]
    keys = [f"orders-payload-{x}" for x in SERVICES]
    payload = [
        f"transit/{op}/{k}" for k in (PAYLOAD_KEY, *keys) for op in ("datakey/plaintext", "decrypt")
    ]
    caps = _capabilities(root, client.token, [*creds, *seals, *payload, *ADMIN_PATHS])

    for role in DB_ROLES:
        expected = ["read"] if role in own else ["deny"]
        assert caps[creds_path(role)] == expected, role
    for sealed in SEALED_SERVICES:
        expected = ["update"] if sealed == service_name else ["deny"]
        assert caps[f"transit/decrypt/{seal_key(sealed)}"] == expected, sealed
    for key in keys:  # per-service payload keys: its own (the orchestrator: all)
        mine = service_name == "orchestrator" or key == f"orders-payload-{service_name}"
        for op in ("datakey/plaintext", "decrypt"):
            assert caps[f"transit/{op}/{key}"] == (["update"] if mine else ["deny"]), key
    # the old single key: nothing (a worker never decodes orders-envelope/1)
    assert caps[f"transit/decrypt/{PAYLOAD_KEY}"] == ["deny"]
    assert caps[f"transit/datakey/plaintext/{PAYLOAD_KEY}"] == ["deny"]
    for path in ADMIN_PATHS:
        assert caps[path] == ["deny"], path

    # a real request to another service's credentials is refused by policy
    for role in DB_ROLES:
        if role not in own:
            with pytest.raises(hvac.exceptions.Forbidden):
                client.read(creds_path(role))
    # and the worker's own token housekeeping works
    assert client.auth.token.lookup_self()["data"]["policies"] == [f"orders-{service_name}"]
    assert client.auth.token.renew_self()["auth"]["client_token"] == client.token


@pytest.mark.stack
def test_orchestrator_has_no_database_path_at_all(stack: Stack, root: hvac.Client) -> None:
    client = _login_client(stack.settings, "orchestrator")
    paths = [creds_path(r) for r in DB_ROLES] + ["database/creds/anything", "database/"]
    caps = _capabilities(root, client.token, paths)
    assert all(v == ["deny"] for v in caps.values()), caps


@pytest.mark.stack
def test_leases_renew_and_revoke_only_own_prefix(stack: Stack, root: hvac.Client) -> None:
    """Workers renew/revoke in the URL form, scoped to their own roles' lease prefix."""
    client = _login_client(stack.settings, "inventory")
    own = "database/creds/order-reserve-inventory/abc"
    foreign = "database/creds/order-process-payment/abc"
    allowed = [f"sys/leases/renew/{own}", f"sys/leases/revoke/{own}"]
    denied = [
        f"sys/leases/renew/{foreign}",
        f"sys/leases/revoke/{foreign}",
        "sys/leases/renew",
        "sys/leases/revoke",
        "sys/leases/lookup",
        "sys/leases/revoke-prefix/database/creds/order-reserve-inventory",
        "sys/leases/revoke-force/database/creds/order-reserve-inventory",
    ]
    caps = _capabilities(root, client.token, allowed + denied)
    for path in allowed:
        assert caps[path] == ["update"], path
    for path in denied:
        assert caps[path] == ["deny"], path

    # hvac's read() answers None for a 404: no engine or no role is a bootstrap failure
    creds = client.read("database/creds/order-reserve-inventory")
    assert creds is not None, (
        "database/creds/order-reserve-inventory is not there: the bootstrap did not "
        "configure Vault's database engine (see orders-stack up's bootstrap output)"
    )
    lease_id = creds["lease_id"]
    renewed = client.adapter.put(f"/v1/sys/leases/renew/{lease_id}", json={"increment": 60})
    assert renewed["lease_id"] == lease_id
    with pytest.raises(hvac.exceptions.Forbidden):
        client.sys.renew_lease(lease_id)  # hvac's body form carries no scope: refused
    other = _login_client(stack.settings, "payment")
    with pytest.raises(hvac.exceptions.Forbidden):
        other.adapter.put(f"/v1/sys/leases/revoke/{lease_id}")
    client.adapter.put(f"/v1/sys/leases/revoke/{lease_id}")
    with pytest.raises(hvac.exceptions.InvalidRequest):
        root.sys.read_lease(lease_id)


# --------------------------------------------------------------------------- forged tokens


def _forged(settings: StackSettings, change: str) -> str:
    key = issuer.load_signing_key(settings)
    claims = issuer.claims_for(settings.namespace, "validate", 300)
    if change == "wrong subject":
        claims["sub"] = f"system:serviceaccount:{settings.namespace}:orders-intruder"
    elif change == "wrong namespace":
        claims = issuer.claims_for("someone-else", "validate", 300)
    elif change == "namespace claim disagrees with subject":
        claims["kubernetes.io"]["namespace"] = "someone-else"
    elif change == "wrong audience":
        claims["aud"] = ["not-vault"]
    elif change == "wrong issuer":
        claims["iss"] = "https://kubernetes.default.svc.cluster.local"
    elif change == "wrong signing key":
        foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        # same kid as the real key: the signature alone must give it away
        return jwt.encode(claims, foreign, algorithm="RS256", headers={"kid": issuer.key_id(key)})
    elif change == "ES256 with another key":
        return jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    elif change == "unsigned (alg none)":

        def part(obj: dict[str, Any]) -> str:
            raw = json.dumps(obj, separators=(",", ":")).encode()
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."
    elif change == "expired":
        claims = issuer.claims_for(settings.namespace, "validate", 600, now=time.time() - 7200)
    elif change == "not yet valid":
        claims = issuer.claims_for(settings.namespace, "validate", 600, now=time.time() + 3600)
    else:
        raise AssertionError(change)
    return issuer.sign(key, claims)


FORGERIES = {
    # change -> why OpenBao refuses it (so a test cannot pass for the wrong reason)
    "wrong subject": r"invalid subject \(sub\) claim",
    "wrong namespace": r"invalid subject \(sub\) claim",
    "namespace claim disagrees with subject": r'claim "/kubernetes.io/namespace" does not match',
    "wrong audience": r"invalid audience \(aud\) claim",
    "wrong issuer": r"invalid issuer \(iss\) claim",
    "wrong signing key": "no known key successfully validated the token signature",
    "ES256 with another key": "no known key successfully validated the token signature",
    "unsigned (alg none)": "no known key successfully validated the token signature",
    "expired": "token is expired",
    "not yet valid": "token not yet valid",
}


@pytest.mark.stack
@pytest.mark.parametrize("change", list(FORGERIES))
def test_forged_token_is_refused_at_login(stack: Stack, change: str) -> None:
    s = stack.settings
    # the control: an honest token for the same role logs in
    assert _jwt_login(s, "orders-validate", issuer.mint(s, "validate"))["auth"]["client_token"]
    with pytest.raises(hvac.exceptions.InvalidRequest, match=FORGERIES[change]):
        _jwt_login(s, "orders-validate", _forged(s, change))


# --------------------------------------------------------------------------- kubernetes auth


@pytest.fixture(scope="module")
def kubernetes_mount(stack: Stack, root: hvac.Client) -> Iterator[tuple[str, Any]]:
    """A separate kubernetes auth mount pointed at the TokenReview stand-in.

    A mount of its own, so the cluster-mode config at ``auth/kubernetes`` (and
    the bootstrap's idempotency) is left alone.
    """
    s = stack.settings
    mount = "kubernetes-test"
    public = issuer.load_signing_key(s).public_key()
    with tokenreview.TokenReviewServer(public, issuer.ISSUER) as server:
        config = KubernetesAuthConfig(
            host=server.url,
            ca_pem=tokenreview.any_ca_pem(),
            issuer=issuer.ISSUER,
            disable_local_ca_jwt=True,
        )
        try:
            changes = ensure_kubernetes_auth(root, s, TokenTTLs.from_env(), config, mount=mount)
            assert f"vault: enabled kubernetes auth at auth/{mount}/" in changes
            assert ensure_kubernetes_auth(root, s, TokenTTLs.from_env(), config, mount=mount) == []
            yield mount, server
        finally:
            root.sys.disable_auth_method(mount)


def _k8s_login(settings: StackSettings, mount: str, role: str, token: str) -> dict[str, Any]:
    result: dict[str, Any] = _anon(settings).auth.kubernetes.login(role, token, mount_point=mount)
    return result


@pytest.mark.stack
def test_kubernetes_login_via_tokenreview(stack: Stack, kubernetes_mount: tuple[str, Any]) -> None:
    mount, server = kubernetes_mount
    s = stack.settings
    auth = _k8s_login(s, mount, "orders-validate", issuer.mint(s, "validate"))["auth"]
    assert auth["token_policies"] == ["orders-validate"]
    assert auth["policies"] == ["orders-validate"]
    assert auth["metadata"]["service_account_name"] == "orders-validate"
    assert auth["metadata"]["service_account_namespace"] == s.namespace
    assert (True, f"system:serviceaccount:{s.namespace}:orders-validate") in server.outcomes


@pytest.mark.stack
@pytest.mark.parametrize(
    ("token_of", "exc"),
    [
        pytest.param(
            lambda s: issuer.mint(s, "payment"), hvac.exceptions.Forbidden, id="other service"
        ),
        pytest.param(
            lambda s: issuer.mint(s, "validate", now=time.time() - 7200),
            hvac.exceptions.Forbidden,
            id="expired",
        ),
        pytest.param(
            lambda s: _forged(s, "wrong signing key"),
            hvac.exceptions.Forbidden,
            id="foreign-signed",
        ),
        pytest.param(
            lambda s: _forged(s, "wrong issuer"), hvac.exceptions.Forbidden, id="wrong issuer"
        ),
    ],
)
def test_kubernetes_login_refused(
    stack: Stack,
    kubernetes_mount: tuple[str, Any],
    token_of: Callable[[StackSettings], str],
    exc: type[Exception],
) -> None:
    mount, _server = kubernetes_mount
    with pytest.raises(exc):
        _k8s_login(stack.settings, mount, "orders-validate", token_of(stack.settings))


def test_tokenreview_stand_in_checks_tokens_itself(local_settings: StackSettings) -> None:
    issuer.ensure_signing_key(local_settings)
    public = issuer.load_signing_key(local_settings).public_key()
    with tokenreview.TokenReviewServer(public, issuer.ISSUER) as server:
        good = server.review({"spec": {"token": issuer.mint(local_settings, "notify")}})
        assert good["status"]["authenticated"] is True
        assert good["status"]["user"]["username"].endswith(":orders-notify")
        expired = issuer.mint(local_settings, "notify", now=time.time() - 7200)
        assert server.review({"spec": {"token": expired}})["status"]["authenticated"] is False
        wrong_aud = server.review(
            {"spec": {"token": issuer.mint(local_settings, "notify"), "audiences": ["other"]}}
        )
        assert wrong_aud["status"]["authenticated"] is False
