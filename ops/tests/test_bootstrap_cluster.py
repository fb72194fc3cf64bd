"""The bootstrap in cluster mode (what the bootstrap Job runs), against real servers of
its own: Vault and Postgres reached by address, admin secrets read from a mounted
folder, nothing written to disk, generated passwords kept in Vault, no local
issuer and no JWT auth, and a second run that changes nothing."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import hvac
import hvac.exceptions
import jwt
import pytest
import tokenreview  # ops/tests is on pytest's pythonpath
from cryptography.hazmat.primitives.asymmetric import rsa

from orders_ops.bootstrap import bootstrap
from orders_ops.bootstrap_identity import BOOTSTRAP_IDENTITY, admin_setup
from orders_ops.plan import plan
from orders_ops.secretfiles import VaultKVSecrets
from orders_ops.settings import StackSettings
from orders_ops.stack import Stack
from orders_ops.testing import isolated_settings
from orders_ops.vault_bootstrap import KubernetesAuthConfig

pytestmark = pytest.mark.stack


@pytest.fixture
def servers() -> Iterator[Stack]:
    state = Path(tempfile.mkdtemp(prefix="orders-cluster-test-"))
    state.chmod(0o755)
    stack = Stack(isolated_settings(state))
    stack.postgres.start(60)
    stack.vault.start(60)
    yield stack
    stack.down(echo=lambda _line: None)
    shutil.rmtree(state, ignore_errors=True)


def test_cluster_mode_bootstrap(
    servers: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the Job's view: an admin Secret mounted as files, nothing else on disk
    job_state = tmp_path / "job"
    (job_state / "secrets").mkdir(parents=True)
    for name in ("vault-root-token", "postgres-superuser-password"):
        shutil.copy(servers.settings.secrets_dir / name, job_state / "secrets" / name)
    ca = tmp_path / "ca.crt"
    ca.write_text(tokenreview.any_ca_pem())
    for name, value in {
        "ORDERS_BOOTSTRAP_MODE": "cluster",
        "ORDERS_STATE_DIR": str(job_state),
        "VAULT_ADDR": servers.settings.vault_addr,
        "ORDERS_DB_HOST": "127.0.0.1",
        "ORDERS_DB_PORT": str(servers.settings.postgres_port),
        "ORDERS_KUBERNETES_HOST": "https://127.0.0.1:6443",
        "ORDERS_KUBERNETES_CA_FILE": str(ca),
        # an administrator's token mounted as a file: the explicit, opt-in mode (the
        # default, Kubernetes login, is the next test)
        "ORDERS_BOOTSTRAP_VAULT_AUTH": "token",
    }.items():
        monkeypatch.setenv(name, value)
    settings = StackSettings.from_env()
    assert (settings.mode, settings.db_host) == ("cluster", "127.0.0.1")
    before = sorted(p.relative_to(job_state) for p in job_state.rglob("*"))

    report = bootstrap(settings)
    assert report.changes
    assert sorted(p.relative_to(job_state) for p in job_state.rglob("*")) == before

    root = hvac.Client(url=settings.vault_addr, token=settings.root_token())
    auth = root.sys.list_auth_methods()["data"]
    assert "kubernetes/" in auth
    assert "jwt/" not in auth  # no local issuer in a cluster
    assert "oidc-readers/" not in auth  # until an OIDC provider is configured
    assert any("ORDERS_READER_OIDC_DISCOVERY_URL" in note for note in report.notes)
    k8s = root.read("auth/kubernetes/config")["data"]
    assert k8s["kubernetes_host"] == "https://127.0.0.1:6443"
    # no issuer given: Vault does not check one (a wrong default would refuse every login
    # on EKS/GKE/AKS); the TokenReview still checks the token
    assert k8s["disable_iss_validation"] is True

    # generated passwords are in Vault, and they are the ones Postgres checks
    kv = VaultKVSecrets(root)
    owner_pw = kv.read("postgres-owner-password")
    assert owner_pw

    async def products_seen_by_owner() -> int:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=settings.postgres_port,
            database="orders",
            user="orders_owner",
            password=owner_pw,
        )
        try:
            return int(await conn.fetchval("SELECT count(*) FROM app.products"))
        finally:
            await conn.close()

    # the schema, but no demo catalogue: a cluster seeds only with ORDERS_SEED_DEMO_DATA=true
    # (bootstrap.seedDemoData; tests/deploy/test_demo_seed.py)
    assert asyncio.run(products_seen_by_owner()) == 0

    # the database engine works through the addresses it was given
    creds = root.secrets.database.generate_credentials("order-validate")
    assert creds["data"]["username"].startswith("v-order-validate-")
    root.sys.revoke_lease(creds["lease_id"])

    assert bootstrap(settings).changes == []


def _sa_token(key: rsa.RSAPrivateKey, issuer: str, namespace: str, name: str) -> str:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": f"system:serviceaccount:{namespace}:{name}",
        "aud": ["vault"],
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": str(uuid.uuid4())},
        },
    }
    return jwt.encode(claims, key, algorithm="RS256")


def test_cluster_bootstrap_needs_no_root_token(
    servers: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Job logs in as its own ServiceAccount (Kubernetes auth, via a TokenReview
    stand-in) to a role an administrator set up once; no root token is mounted."""
    namespace, k8s_issuer = "orders", "https://kubernetes.default.svc.cluster.local"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = tmp_path / "ca.crt"
    ca.write_text(tokenreview.any_ca_pem())
    admin = hvac.Client(url=servers.settings.vault_addr, token=servers.settings.root_token())
    with tokenreview.TokenReviewServer(key.public_key(), k8s_issuer) as review:
        # the administrator's one-time part: Kubernetes auth reaching the cluster, then
        # the Job's role and policy (orders-bootstrap admin-setup)
        config = KubernetesAuthConfig(
            host=review.url, ca_pem=ca.read_text(), issuer=k8s_issuer, disable_local_ca_jwt=True
        )
        admin.sys.enable_auth_method("kubernetes", path="kubernetes")
        admin.write("auth/kubernetes/config", **config.as_data())
        assert admin_setup(admin, namespace)
        # the Job's view: the database admin password and its own token, no Vault root token
        job_state = tmp_path / "job"
        (job_state / "secrets").mkdir(parents=True)
        shutil.copy(
            servers.settings.pg_password_file, job_state / "secrets" / "postgres-superuser-password"
        )
        sa_token = tmp_path / "sa-token"
        sa_token.write_text(_sa_token(key, k8s_issuer, namespace, BOOTSTRAP_IDENTITY))
        for name, value in {
            "ORDERS_BOOTSTRAP_MODE": "cluster",
            "ORDERS_STATE_DIR": str(job_state),
            "VAULT_ADDR": servers.settings.vault_addr,
            "ORDERS_DB_HOST": "127.0.0.1",
            "ORDERS_DB_PORT": str(servers.settings.postgres_port),
            "ORDERS_K8S_NAMESPACE": namespace,
            "ORDERS_KUBERNETES_HOST": review.url,
            "ORDERS_KUBERNETES_CA_FILE": str(ca),
            "ORDERS_KUBERNETES_ISSUER": k8s_issuer,
            "ORDERS_KUBERNETES_DISABLE_LOCAL_CA_JWT": "true",
            "ORDERS_BOOTSTRAP_SA_TOKEN_FILE": str(sa_token),
        }.items():
            monkeypatch.setenv(name, value)
        settings = StackSettings.from_env()
        assert not settings.root_token_file.exists()

        report = bootstrap(settings)
        assert report.changes
        assert bootstrap(settings).changes == []  # idempotent as the Job's own identity
        # and 'orders-bootstrap plan' as the Job (the chart's CronJob): in sync, and it may
        # list every place it reports on (admin-setup grants list, nothing more)
        assert not [n for n in report.notes if "may not list" in n], report.notes
        planned = plan(settings)
        assert planned.exit_code(strict=True) == 0, planned.render()
        assert planned.notes == [], planned.notes
        k8s = admin.read("auth/kubernetes/config")["data"]
        assert (k8s["issuer"], k8s["disable_iss_validation"]) == (k8s_issuer, False)
        creds = admin.secrets.database.generate_credentials("order-validate")
        assert creds["data"]["username"].startswith("v-order-validate-")
        admin.sys.revoke_lease(creds["lease_id"])

        # what the Job's token cannot do: read a service's credentials or a KV secret it
        # did not write, write a policy outside its names, or mint itself other tokens
        job = hvac.Client(url=settings.vault_addr)
        job.auth.kubernetes.login(BOOTSTRAP_IDENTITY, sa_token.read_text())
        caps = {
            path: admin.write_data("sys/capabilities", data={"token": job.token, "paths": [path]})[
                "data"
            ][path]
            for path in (
                "database/creds/order-process-payment",
                "sys/policies/acl/root-admin",
                "auth/token/create",
                "secret/data/anything",
                "sys/mounts/secret",
                "transit/decrypt/orders-payload",
                "transit/export/encryption-key/orders-payload",
            )
        }
        assert all(v == ["deny"] for v in caps.values()), caps
        # a ServiceAccount other than the Job's is refused at the role
        other = _sa_token(key, k8s_issuer, namespace, "orders-payment")
        with pytest.raises(hvac.exceptions.VaultError):
            hvac.Client(url=settings.vault_addr).auth.kubernetes.login(BOOTSTRAP_IDENTITY, other)
