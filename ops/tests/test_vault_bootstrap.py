"""The Vault bootstrap: idempotent, repairs drift, and creates exactly the policies,
keys and auth roles the design names."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import hvac
import hvac.exceptions
import pytest
import tokenreview  # ops/tests is on pytest's pythonpath

from orders_ops.bootstrap import bootstrap
from orders_ops.policies import (
    CLIENT_POLICY,
    PAYLOAD_KEY,
    PAYLOAD_READER_POLICY,
    SEALED_SERVICES,
    all_policies,
    payload_reader_policy,
    seal_key,
    service_policy,
    split_hash_header,
    transit_keys,
)
from orders_ops.settings import SettingsError, StackSettings
from orders_ops.stack import Stack
from orders_ops.vault_bootstrap import (
    KubernetesAuthConfig,
    TokenTTLs,
    audit_config_hcl,
    audit_log_file,
    auto_rotate_period,
    configure_vault,
    ensure_kubernetes_auth,
    root_client,
)
from orders_shared.catalog import SERVICES
from orders_shared.codec import payload_key, payload_keys


@pytest.fixture(scope="module")
def root(stack: Stack) -> Iterator[hvac.Client]:
    client = root_client(stack.settings)
    yield client
    client.adapter.close()


# --------------------------------------------------------------------------- policies as code


def _paths(policy: str) -> set[str]:
    return {line.split('"')[1] for line in policy.splitlines() if line.startswith("path ")}


def test_orchestrator_policy_has_no_database_and_no_lease_paths() -> None:
    paths = _paths(service_policy(SERVICES["orchestrator"]))
    assert not any(p.startswith(("database/", "sys/leases")) for p in paths)
    assert paths == {
        *(f"transit/datakey/plaintext/{k}" for k in payload_keys()),
        *(f"transit/decrypt/{k}" for k in payload_keys()),
        # no grant at all on the old single key: a worker never decodes orders-envelope/1
        "pki-orders/issue/client-orchestrator",  # its own TLS client certificate
        "auth/token/lookup-self",
        "auth/token/renew-self",
        "auth/token/revoke-self",
    }


@pytest.mark.parametrize("name", list(SERVICES))
def test_service_policy_names_exactly_its_own_paths(name: str) -> None:
    spec = SERVICES[name]
    paths = _paths(service_policy(spec))
    assert {p for p in paths if p.startswith("database/")} == {
        f"database/creds/{r}" for r in spec.db_roles
    }
    seals = {p for p in paths if p.startswith("transit/decrypt/orders-seal-")}
    assert seals == ({f"transit/decrypt/{seal_key(name)}"} if name in SEALED_SERVICES else set())
    leases = {p for p in paths if p.startswith("sys/leases/")}
    assert leases == {
        f"sys/leases/{op}/database/creds/{r}/*" for r in spec.db_roles for op in ("renew", "revoke")
    }
    assert not any("*" in p for p in paths - leases)  # no wildcard other than own lease ids
    # its own TLS certificate role and nothing else under pki-*
    assert {p for p in paths if p.startswith("pki")} == {f"pki-orders/issue/client-{name}"}
    payload = {p for p in paths if p.startswith(("transit/datakey/", "transit/decrypt/orders-pa"))}
    if name != "orchestrator":  # its own payload key; nothing on the old single key
        own = payload_key(name)
        assert payload == {f"transit/datakey/plaintext/{own}", f"transit/decrypt/{own}"}


@pytest.mark.parametrize("told", ["", "true", "false"])
def test_old_payload_key_only_for_readers(monkeypatch: pytest.MonkeyPatch, told: str) -> None:
    """No worker and no client may decrypt the old single key, whatever the environment
    says; the reader may (the codec server decides whether to read /1 at all)."""
    monkeypatch.setenv("ORDERS_CODEC_ACCEPT_LEGACY", told)
    legacy = f'"transit/decrypt/{PAYLOAD_KEY}"'
    holders = {name for name, text in all_policies().items() if legacy in text}
    assert holders == {PAYLOAD_READER_POLICY}


def test_client_and_reader_policies() -> None:
    assert _paths(all_policies()[CLIENT_POLICY]) == {
        "transit/encrypt/orders-seal-*",
        "transit/datakey/plaintext/orders-payload-orchestrator",
        "transit/decrypt/orders-payload-orchestrator",
        "pki-orders/issue/client-operator",
        "auth/token/lookup-self",
        "auth/token/renew-self",
        "auth/token/revoke-self",
    }
    # readers name every key they may read, one by one
    assert _paths(all_policies()[PAYLOAD_READER_POLICY]) == {
        f"transit/decrypt/{k}" for k in (PAYLOAD_KEY, *payload_keys())
    }
    narrow = payload_reader_policy((payload_key("inventory"),))
    assert _paths(narrow) == {
        "transit/decrypt/orders-payload-inventory",
        f"transit/decrypt/{PAYLOAD_KEY}",
    }


def test_auto_rotate_period_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert auto_rotate_period() == 30 * 24 * 3600
    monkeypatch.setenv("ORDERS_TRANSIT_AUTO_ROTATE_PERIOD", "600")
    with pytest.raises(SettingsError, match="under one hour"):
        auto_rotate_period()
    monkeypatch.setenv("ORDERS_TRANSIT_AUTO_ROTATE_PERIOD", "30d")
    with pytest.raises(SettingsError, match="ORDERS_TRANSIT_AUTO_ROTATE_PERIOD='30d'"):
        auto_rotate_period()


def test_token_ttls_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TokenTTLs.from_env() == TokenTTLs(900, 3600)
    monkeypatch.setenv("ORDERS_VAULT_TOKEN_TTL", "120")
    monkeypatch.setenv("ORDERS_VAULT_TOKEN_MAX_TTL", "60")
    with pytest.raises(SettingsError, match="ORDERS_VAULT_TOKEN_MAX_TTL=60 is shorter"):
        TokenTTLs.from_env()
    monkeypatch.setenv("ORDERS_VAULT_TOKEN_TTL", "15m")
    with pytest.raises(SettingsError, match="ORDERS_VAULT_TOKEN_TTL='15m'"):
        TokenTTLs.from_env()


def test_missing_ca_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_KUBERNETES_CA_FILE", "/nonexistent/ca.crt")
    with pytest.raises(SettingsError, match=r"ORDERS_KUBERNETES_CA_FILE='/nonexistent/ca\.crt'"):
        KubernetesAuthConfig.from_env()


# --------------------------------------------------------------------------- the running stack


@pytest.mark.stack
def test_second_bootstrap_changes_nothing(stack: Stack, root: hvac.Client) -> None:
    assert configure_vault(root, stack.settings) == []
    report = bootstrap(stack.settings)
    assert report.changes == [], report.changes
    assert report.summary() == "no changes (already configured)"


def _header(service: str) -> str | None:
    return split_hash_header(service_policy(SERVICES[service]))[0]


@pytest.mark.stack
def test_drift_is_repaired_and_reported(stack: Stack, root: hvac.Client) -> None:
    s = stack.settings
    root.sys.create_or_update_policy(
        "orders-validate", policy='path "*" { capabilities = ["sudo"] }'
    )
    jwt_role = {"role_type": "jwt", "allowed_redirect_uris": []}  # needed on every write
    root.write_data("auth/jwt/role/orders-payment", data={**jwt_role, "token_ttl": 3000})
    root.write_data("auth/jwt/role/orders-notify", data={**jwt_role, "token_policies": ["root"]})
    changes = configure_vault(root, s)
    assert changes == [
        # the audit trail of a write names the version in force (the policy's hash header)
        f"vault: wrote policy orders-validate (sha256 {_header('validate')})",
        "vault: wrote auth/jwt/role/orders-payment (token_ttl)",
        "vault: wrote auth/jwt/role/orders-notify (token_policies)",
    ]
    assert configure_vault(root, s) == []
    assert root.sys.read_policy("orders-validate")["data"]["rules"] == service_policy(
        SERVICES["validate"]
    )


@pytest.mark.stack
def test_transit_keys(root: hvac.Client) -> None:
    for name in transit_keys():
        key = root.secrets.transit.read_key(name)["data"]
        assert key["type"] == "aes256-gcm96", name
        assert key["deletion_allowed"] is False
        assert key["exportable"] is False
        assert key["derived"] is name.startswith("orders-seal-"), name
        assert key["auto_rotate_period"] == 30 * 24 * 3600, name  # read back from OpenBao
    assert set(transit_keys()) == {
        "orders-payload",
        *(f"orders-payload-{s}" for s in SERVICES),
        "orders-seal-payment",
        "orders-seal-fulfill",
        "orders-seal-notify",
    }


@pytest.mark.stack
def test_auto_rotate_period_is_repaired_and_configurable(
    stack: Stack, root: hvac.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = payload_key("payment")
    root.secrets.transit.update_key_configuration(name, auto_rotate_period="0")  # off
    assert root.secrets.transit.read_key(name)["data"]["auto_rotate_period"] == 0
    assert configure_vault(root, stack.settings) == [
        f"vault: transit key {name} now rotates every 2592000s"
    ]
    assert root.secrets.transit.read_key(name)["data"]["auto_rotate_period"] == 2592000
    monkeypatch.setenv("ORDERS_TRANSIT_AUTO_ROTATE_PERIOD", str(7 * 24 * 3600))
    try:
        changes = configure_vault(root, stack.settings)
        assert len(changes) == len(transit_keys())
        for key in transit_keys():
            assert root.secrets.transit.read_key(key)["data"]["auto_rotate_period"] == 604800
        assert configure_vault(root, stack.settings) == []  # idempotent
    finally:
        monkeypatch.delenv("ORDERS_TRANSIT_AUTO_ROTATE_PERIOD")
        configure_vault(root, stack.settings)
    assert configure_vault(root, stack.settings) == []


def _token_with(root: hvac.Client, policy: str, settings_addr: str) -> hvac.Client:
    created = root.auth.token.create(policies=[policy], no_default_policy=True, ttl="5m")
    return hvac.Client(url=settings_addr, token=created["auth"]["client_token"], timeout=10)


def _worker(stack: Stack, service_name: str) -> hvac.Client:
    s = stack.settings
    token = s.token_file(service_name).read_text().strip()
    auth = hvac.Client(url=s.vault_addr).auth.jwt.jwt_login(
        role=f"orders-{service_name}", jwt=token, path="jwt"
    )["auth"]
    return hvac.Client(url=s.vault_addr, token=auth["client_token"], timeout=10)


@pytest.mark.stack
def test_sealed_field_opens_only_for_its_consumer(stack: Stack, root: hvac.Client) -> None:
    client = _token_with(root, CLIENT_POLICY, stack.settings.vault_addr)
    plaintext = base64.b64encode(b"tok_visa_4242").decode()
    order_a = base64.b64encode(b"order:A").decode()  # seal keys are derived: bound to an order
    sealed = client.secrets.transit.encrypt_data("orders-seal-payment", plaintext, context=order_a)[
        "data"
    ]["ciphertext"]
    with pytest.raises(hvac.exceptions.Forbidden):  # the client seals, it cannot open
        client.secrets.transit.decrypt_data("orders-seal-payment", sealed, context=order_a)
    payment = _worker(stack, "payment").secrets.transit
    opened = payment.decrypt_data("orders-seal-payment", sealed, context=order_a)
    assert opened["data"]["plaintext"] == plaintext
    with pytest.raises(hvac.exceptions.InvalidRequest):  # replayed into order B: no
        payment.decrypt_data(
            "orders-seal-payment", sealed, context=base64.b64encode(b"order:B").decode()
        )
    for other in ("orchestrator", "validate", "fulfill"):
        with pytest.raises(hvac.exceptions.Forbidden):
            _worker(stack, other).secrets.transit.decrypt_data(
                "orders-seal-payment", sealed, context=order_a
            )


@pytest.mark.stack
def test_payload_keys_for_workers_client_and_reader(stack: Stack, root: hvac.Client) -> None:
    orchestrator = _worker(stack, "orchestrator").secrets.transit
    reader = _token_with(root, PAYLOAD_READER_POLICY, stack.settings.vault_addr).secrets.transit
    client = _token_with(root, CLIENT_POLICY, stack.settings.vault_addr).secrets.transit
    workers = {name: _worker(stack, name).secrets.transit for name in SERVICES}
    for owner in SERVICES:
        key = payload_key(owner)
        datakey = orchestrator.generate_data_key(key, "plaintext")["data"]
        for name, transit in workers.items():
            if name in (owner, "orchestrator"):
                opened = transit.decrypt_data(key, datakey["ciphertext"])["data"]["plaintext"]
                assert opened == datakey["plaintext"]
                transit.generate_data_key(key, "plaintext")
            else:  # another service's payload key: neither read nor write
                with pytest.raises(hvac.exceptions.Forbidden):
                    transit.decrypt_data(key, datakey["ciphertext"])
                with pytest.raises(hvac.exceptions.Forbidden):
                    transit.generate_data_key(key, "plaintext")
        opened = reader.decrypt_data(key, datakey["ciphertext"])["data"]["plaintext"]
        assert opened == datakey["plaintext"]
        with pytest.raises(hvac.exceptions.Forbidden):  # a reader makes no new data keys
            reader.generate_data_key(key, "plaintext")
        if owner == "orchestrator":  # the client starts workflows and reads their results
            client.generate_data_key(key, "plaintext")
            client.decrypt_data(key, datakey["ciphertext"])
        else:
            with pytest.raises(hvac.exceptions.Forbidden):
                client.decrypt_data(key, datakey["ciphertext"])
    old = root.secrets.transit.generate_data_key(PAYLOAD_KEY, "plaintext")["data"]
    # old history: no worker and no client may even decrypt it (a worker never decodes
    # orders-envelope/1); the reader decrypts only; nobody makes data keys
    assert (
        reader.decrypt_data(PAYLOAD_KEY, old["ciphertext"])["data"]["plaintext"]
        == (old["plaintext"])
    )
    for transit in (*workers.values(), reader, client):
        if transit is not reader:
            with pytest.raises(hvac.exceptions.Forbidden):
                transit.decrypt_data(PAYLOAD_KEY, old["ciphertext"])
        with pytest.raises(hvac.exceptions.Forbidden):
            transit.generate_data_key(PAYLOAD_KEY, "plaintext")
    with pytest.raises(hvac.exceptions.Forbidden):  # nobody but root may export/rotate
        orchestrator.rotate_key(payload_key("orchestrator"))


@pytest.mark.stack
def test_kubernetes_cluster_mode_config(
    stack: Stack, root: hvac.Client, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With a CA file the cluster-mode config is written as the environment says
    (on a mount of its own: auth/kubernetes stays as the bootstrap left it)."""
    ca = tmp_path / "ca.crt"
    ca.write_text(tokenreview.any_ca_pem())
    monkeypatch.setenv("ORDERS_KUBERNETES_CA_FILE", str(ca))
    monkeypatch.setenv("ORDERS_KUBERNETES_HOST", "https://10.96.0.1:443")
    monkeypatch.setenv("ORDERS_KUBERNETES_ISSUER", "https://oidc.example/id/cluster-1")
    config = KubernetesAuthConfig.from_env()
    mount = "kubernetes-cluster-test"
    try:
        ensure_kubernetes_auth(root, stack.settings, TokenTTLs(), config, mount=mount)
        got = root.read(f"auth/{mount}/config")["data"]
        assert got["kubernetes_host"] == "https://10.96.0.1:443"
        # the cluster's own issuer, when given, is checked by Vault as well
        assert got["issuer"] == "https://oidc.example/id/cluster-1"
        assert got["disable_iss_validation"] is False
        assert got["disable_local_ca_jwt"] is False
        role = root.read(f"auth/{mount}/role/orders-fulfill")["data"]
        assert role["bound_service_account_names"] == ["orders-fulfill"]
        assert role["bound_service_account_namespaces"] == [stack.settings.namespace]
        assert role["audience"] == "vault"
        assert role["token_policies"] == ["orders-fulfill"]
        assert role["token_no_default_policy"] is True
        assert ensure_kubernetes_auth(root, stack.settings, TokenTTLs(), config, mount=mount) == []
    finally:
        root.sys.disable_auth_method(mount)


@pytest.mark.stack
def test_audit_device(stack: Stack, root: hvac.Client) -> None:
    devices = root.sys.list_enabled_audit_devices()["data"]
    wanted = str(audit_log_file(stack.settings))
    assert [d["type"] for d in devices.values() if d["options"]["file_path"] == wanted] == ["file"]
    root.sys.read_health_status(method="GET")
    root.auth.token.lookup_self()
    log = Path(wanted).read_text()
    assert log, "audit log is empty"
    assert stack.settings.root_token() not in log  # hashed, never in clear


def test_audit_config_declares_a_hashed_file_device(stack_settings: StackSettings) -> None:
    hcl = audit_config_hcl(stack_settings)
    assert 'audit "file" "file"' in hcl
    assert str(audit_log_file(stack_settings)) in hcl
    assert "log_raw" not in hcl
