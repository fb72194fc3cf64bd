"""The bootstrap in cluster mode (what the bootstrap Job runs), against real servers of
its own: Vault and Postgres reached by address, admin secrets read from a mounted
folder, nothing written to disk, generated passwords kept in Vault, no local
issuer and no JWT auth, and a second run that changes nothing."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import hvac
import pytest
import tokenreview  # ops/tests is on pytest's pythonpath

from orders_ops.bootstrap import bootstrap
from orders_ops.secretfiles import VaultKVSecrets
from orders_ops.settings import StackSettings
from orders_ops.stack import Stack
from orders_ops.testing import isolated_settings

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

    assert asyncio.run(products_seen_by_owner()) == 4  # the seed catalogue

    # the database engine works through the addresses it was given
    creds = root.secrets.database.generate_credentials("order-validate")
    assert creds["data"]["username"].startswith("v-order-validate-")
    root.sys.revoke_lease(creds["lease_id"])

    assert bootstrap(settings).changes == []
