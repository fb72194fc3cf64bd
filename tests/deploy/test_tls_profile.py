"""The production profile (global.profile: production) and TLS to PostgreSQL in the charts:
the schemas refuse an http:// Vault, a missing Vault CA and a database without TLS; the
rendered pods mount the CAs and pass the paths the processes read (VAULT_CACERT,
ORDERS_DATABASE_SSLMODE verify-full, ORDERS_DATABASE_SSLROOTCERT)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from orders_shared.catalog import SERVICES

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = yaml.safe_load((ROOT / "helm" / "values-production.example.yaml").read_text())
DB_CHARTS = (*(s for s, spec in SERVICES.items() if spec.db_roles), "bootstrap")
ALL = (*SERVICES, "codec-server", "bootstrap")


def _render(chart_dir: Path, chart: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(chart_dir / chart) as loaded:
        files = loaded.render(values, name=chart, namespace="orders", is_install=True)
    text = "\n---\n".join(b for n, b in sorted(files.items()) if not n.endswith("NOTES.txt"))
    return [d for d in yaml.safe_load_all(text) if d]


WATCHDOG = "orders-session-watchdog"  # the bootstrap chart's second workload


def _container(
    docs: list[dict[str, Any]], name: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The chart's workload (the bootstrap chart: its Job), or the one called ``name``."""
    (workload,) = [
        d
        for d in docs
        if d["kind"] in ("Deployment", "Job")
        and (d["metadata"]["name"] == name if name else d["metadata"]["name"] != WATCHDOG)
    ]
    pod = workload["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def _production(**changes: Any) -> dict[str, Any]:
    """The production example with ``changes`` under global (dotted keys)."""
    values = copy.deepcopy(PRODUCTION)
    for dotted, value in changes.items():
        node = values["global"]
        *path, last = dotted.split("__")
        for key in path:
            node = node[key]
        node[last] = value
    return values


@pytest.mark.parametrize("chart", ALL)
def test_production_refuses_an_http_vault_and_a_missing_vault_ca(
    chart_dir: Path, chart: str
) -> None:
    for bad in (
        _production(vault__address="http://vault.vault.svc:8200"),
        _production(vault__caSecret=""),
    ):
        with pytest.raises(Exception, match="values don't meet the specifications"):
            _render(chart_dir, chart, bad)
    # the same values pass in development (the dev-deps chart's plain OpenBao)
    _render(chart_dir, chart, _production(profile="development", vault__caSecret=""))


@pytest.mark.parametrize("chart", DB_CHARTS)
def test_production_refuses_a_database_without_tls(chart_dir: Path, chart: str) -> None:
    no_tls = {"enabled": False, "caSecret": "", "vaultCaFile": ""}
    for bad in (
        _production(database__tls=no_tls),
        _production(database__tls={**no_tls, "enabled": True}),
    ):
        with pytest.raises(Exception, match="values don't meet the specifications"):
            _render(chart_dir, chart, bad)


@pytest.mark.parametrize("chart", ALL)
def test_production_pods_mount_the_cas_and_verify_full(chart_dir: Path, chart: str) -> None:
    pod, container = _container(_render(chart_dir, chart, PRODUCTION))
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert env["VAULT_ADDR"].startswith("https://")
    assert env["VAULT_CACERT"] == "/etc/orders/tls/vault-ca/ca.crt"
    assert (mounts["vault-ca"], secrets["vault-ca"]) == ("/etc/orders/tls/vault-ca", "vault-ca")
    if chart in DB_CHARTS:
        assert (env["ORDERS_DATABASE_SSLMODE"], env["ORDERS_DATABASE_SSLROOTCERT"]) == (
            "verify-full",
            "/etc/orders/tls/database-ca/ca.crt",
        )
        assert secrets["database-ca"] == "orders-db-ca"
    else:  # the orchestrator and the codec server never reach PostgreSQL
        assert "database-ca" not in secrets and "ORDERS_DATABASE_SSLMODE" not in env
    if chart == "bootstrap":  # Vault's own connection: the CA's path in Vault's pods
        assert env["ORDERS_VAULT_DATABASE_SSLROOTCERT"] == "/vault/userconfig/orders-db-ca/ca.crt"


def test_production_session_watchdog_verifies_the_database_full(chart_dir: Path) -> None:
    pod, container = _container(_render(chart_dir, "bootstrap", PRODUCTION), WATCHDOG)
    env = {e["name"]: e.get("value") for e in container["env"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert (env["ORDERS_DATABASE_SSLMODE"], env["ORDERS_DATABASE_SSLROOTCERT"]) == (
        "verify-full",
        "/etc/orders/tls/database-ca/ca.crt",
    )
    assert secrets["database-ca"] == "orders-db-ca"
