"""Platform values every chart takes (issue: Kubernetes delivery that works on the first
real install): image pull secrets, Vault's CA, Temporal TLS files, extra env/volumes,
NetworkPolicy peers by address. And the contract between each chart's values.yaml and
its values.schema.json: the same keys on both sides, the same "global" block everywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from orders_shared.catalog import SERVICES

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / "helm"
WORKERS = tuple(SERVICES)
LIBRARY_USERS = (*WORKERS, "codec-server", "bootstrap")
SCHEMA_CHARTS = (*LIBRARY_USERS, "dev-deps")


def _render(chart_dir: Path, chart: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(chart_dir / chart) as loaded:
        files = loaded.render(values, name=chart, namespace="orders", is_install=True)
    text = "\n---\n".join(b for n, b in sorted(files.items()) if not n.endswith("NOTES.txt"))
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    return docs


def _pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    # the chart's workload; the bootstrap chart's session watchdog is tested on its own
    # (tests/deploy/test_charts.py, test_tls_profile.py)
    (workload,) = [
        d
        for d in docs
        if d["kind"] in ("Deployment", "Job") and d["metadata"]["name"] != "orders-session-watchdog"
    ]
    pod: dict[str, Any] = workload["spec"]["template"]["spec"]
    return pod


def _section(chart: str, **values: Any) -> dict[str, Any]:
    return {chart: values}


# --------------------------------------------------------------------------- pull secrets, Vault CA


@pytest.mark.parametrize("chart", LIBRARY_USERS)
def test_image_pull_secrets_reach_the_pod(chart_dir: Path, chart: str) -> None:
    pod = _pod(_render(chart_dir, chart, {"global": {"image": {"pullSecrets": ["regcred"]}}}))
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    default = _pod(_render(chart_dir, chart, {}))
    assert "imagePullSecrets" not in default


@pytest.mark.parametrize("chart", LIBRARY_USERS)
def test_vault_ca_is_mounted_and_passed_as_vault_cacert(chart_dir: Path, chart: str) -> None:
    pod = _pod(_render(chart_dir, chart, {"global": {"vault": {"caSecret": "vault-ca"}}}))
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    (volume,) = [v for v in pod["volumes"] if v["name"] == "vault-ca"]
    assert volume["secret"]["secretName"] == "vault-ca"
    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "vault-ca"]
    assert mount["readOnly"] is True
    assert env["VAULT_CACERT"] == f"{mount['mountPath']}/ca.crt"
    default = _pod(_render(chart_dir, chart, {}))
    assert "VAULT_CACERT" not in {e["name"] for e in default["containers"][0]["env"]}
    assert "vault-ca" not in {v["name"] for v in default["volumes"]}


def test_hvac_verifies_vault_with_vault_cacert(tmp_path: Path) -> None:
    """The workers, the codec server and the bootstrap talk to Vault through hvac, which
    reads VAULT_CACERT itself: the chart's variable is all the code needs."""
    ca = tmp_path / "ca.crt"
    ca.write_text("not parsed here")
    probe = "import hvac; print(hvac.Client(url='https://vault:8200').adapter.session.verify)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "REQUESTS_"))}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, "VAULT_CACERT": str(ca)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(ca)


# --------------------------------------------------------------------------- Temporal TLS


@pytest.mark.parametrize("service", WORKERS)
def test_temporal_tls_files_are_mounted_and_named_in_env(chart_dir: Path, service: str) -> None:
    tls = {"enabled": True, "caSecret": "temporal-ca", "serverName": "temporal.example.com"}
    pod = _pod(_render(chart_dir, service, {"global": {"temporal": {"tls": tls}}}))
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    assert env["ORDERS_TEMPORAL_TLS"] == "1"
    assert env["ORDERS_TLS_CA_FILE"] == mounts["temporal-ca"] + "/ca.crt"
    assert env["ORDERS_TEMPORAL_TLS_SERVER_NAME"] == "temporal.example.com"
    assert env["ORDERS_PKI_MOUNT"] == "pki-orders"
    assert env["ORDERS_CERT_TTL"] == "86400"
    assert secrets["temporal-ca"]["secretName"] == "temporal-ca"
    # the client certificate and key are issued in process: no Secret, no file for them
    assert {n for n in env if "KEY" in n or "CERT_FILE" in n} == set()
    default = {e["name"] for e in _pod(_render(chart_dir, service, {}))["containers"][0]["env"]}
    assert not {n for n in default if "TEMPORAL_TLS" in n or n.startswith("ORDERS_PKI")}


def test_temporal_tls_secrets_without_tls_enabled_are_refused(chart_dir: Path) -> None:
    tls = {"enabled": False, "caSecret": "temporal-ca"}
    with helm.Chart.load(chart_dir / "payment") as loaded, pytest.raises(Exception) as err:
        loaded.render({"global": {"temporal": {"tls": tls}}}, name="payment", namespace="orders")
    assert "tls.enabled is false" in str(err.value)


# --------------------------------------------------------------------------- extra env/volumes


@pytest.mark.parametrize("chart", LIBRARY_USERS)
def test_extra_env_volumes_and_mounts_are_appended(chart_dir: Path, chart: str) -> None:
    values = _section(
        chart,
        extraEnv=[{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        extraVolumes=[{"name": "bundle", "configMap": {"name": "ca-bundle"}}],
        extraVolumeMounts=[{"name": "bundle", "mountPath": "/etc/bundle", "readOnly": True}],
    )
    pod = _pod(_render(chart_dir, chart, values))
    (container,) = pod["containers"]
    default = _pod(_render(chart_dir, chart, {}))
    (default_container,) = default["containers"]
    assert container["env"] == [
        *default_container["env"],
        {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
    ]
    assert pod["volumes"] == [
        *default["volumes"],
        {"name": "bundle", "configMap": {"name": "ca-bundle"}},
    ]
    assert container["volumeMounts"][-1] == {
        "name": "bundle",
        "mountPath": "/etc/bundle",
        "readOnly": True,
    }


# ------------------------------------------------------------------ NetworkPolicy by address


def test_peers_by_address_nodelocal_dns_and_an_external_vault(chart_dir: Path) -> None:
    values = {
        "global": {
            "networkPolicy": {
                "dns": {"ipBlocks": [{"cidr": "169.254.20.10/32"}]},
                # Vault outside the cluster: addresses only, no label peer
                "vault": {
                    "byLabels": False,
                    "ipBlocks": [{"cidr": "10.20.0.0/24", "except": ["10.20.0.1/32"]}],
                },
            }
        }
    }
    docs = _render(chart_dir, "payment", values)
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    dns, temporal, vault, _postgres = policy["spec"]["egress"]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert dns["to"][1] == {"ipBlock": {"cidr": "169.254.20.10/32"}}
    assert "ipBlock" not in str(temporal)
    assert vault["to"] == [{"ipBlock": {"cidr": "10.20.0.0/24", "except": ["10.20.0.1/32"]}}]
    assert vault["ports"] == [{"port": 8200, "protocol": "TCP"}]


def test_a_peer_with_neither_labels_nor_addresses_is_refused(chart_dir: Path) -> None:
    vault = {"byLabels": False, "ipBlocks": []}
    with helm.Chart.load(chart_dir / "payment") as loaded, pytest.raises(Exception) as err:
        loaded.render(
            {"global": {"networkPolicy": {"vault": vault}}}, name="payment", namespace="orders"
        )
    assert "/global/networkPolicy/vault" in str(err.value)


def test_production_example_resolves_dns_through_nodelocal_dnscache(
    rendered: dict[tuple[str, str], Any],
) -> None:
    policy = rendered[("payment", "production")].one("NetworkPolicy")
    assert {"ipBlock": {"cidr": "169.254.20.10/32"}} in policy["spec"]["egress"][0]["to"]


# --------------------------------------------------------------------------- values.yaml vs schema


def _paths(values: Any, prefix: str = "") -> set[str]:
    """Every key path of a values tree (lists are leaves)."""
    if not isinstance(values, dict):
        return set()
    out = set()
    for key, value in values.items():
        path = f"{prefix}/{key}"
        out.add(path)
        out |= _paths(value, path)
    return out


def _schema_paths(
    schema: dict[str, Any], defs: dict[str, Any], prefix: str = ""
) -> tuple[set[str], set[str]]:
    """Every property path a schema declares (following $ref), and the open maps among
    them (objects without declared properties, e.g. label selectors): their keys are
    the user's."""
    if "$ref" in schema:
        schema = {**defs[schema["$ref"].rsplit("/", 1)[1]], **schema}
        schema.pop("$ref")
    declared: set[str] = set()
    open_maps: set[str] = set()
    if "properties" not in schema:
        open_maps.add(prefix)
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}/{key}"
        declared.add(path)
        more, more_open = _schema_paths(sub, defs, path)
        declared |= more
        open_maps |= more_open
    return declared, open_maps


def _load(chart: str) -> tuple[dict[str, Any], dict[str, Any]]:
    values: dict[str, Any] = yaml.safe_load((HELM / chart / "values.yaml").read_text())
    schema: dict[str, Any] = json.loads((HELM / chart / "values.schema.json").read_text())
    return values, schema


@pytest.mark.parametrize("chart", SCHEMA_CHARTS)
def test_values_and_schema_name_the_same_keys(chart: str) -> None:
    values, schema = _load(chart)
    in_schema, open_maps = _schema_paths(schema, schema.get("definitions", {}))
    in_values = {
        p for p in _paths(values) if not any(p.startswith(f"{m}/") for m in open_maps if m)
    }
    assert in_values - in_schema == set(), "in values.yaml, not in the schema"
    assert in_schema - in_values == set(), "in the schema, without a default in values.yaml"


def _without_required(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_required(v) for k, v in schema.items() if k != "required"}
    return schema


def test_every_worker_chart_has_the_same_global_block_and_global_schema() -> None:
    first_values, first_schema = _load(WORKERS[0])
    for chart in WORKERS[1:]:
        values, schema = _load(chart)
        assert values["global"] == first_values["global"], chart
        # the same keys with the same rules ("required" may differ: the orchestrator has
        # no database, so its chart does not require database values)
        assert _without_required(schema["properties"]["global"]) == _without_required(
            first_schema["properties"]["global"]
        ), chart
        assert schema["definitions"] == first_schema["definitions"], chart


@pytest.mark.parametrize("chart", ["codec-server", "bootstrap"])
def test_other_charts_global_block_is_a_part_of_the_workers(chart: str) -> None:
    """One values file feeds every chart: the keys codec-server and bootstrap read must
    mean the same there, with the same defaults."""
    worker_values, worker_schema = _load(WORKERS[0])
    values, schema = _load(chart)

    def same(ours: Any, theirs: Any, where: str) -> None:
        if isinstance(ours, dict):
            for key, value in ours.items():
                assert key in theirs, f"{chart}: {where}/{key} is not in the workers' global"
                same(value, theirs[key], f"{where}/{key}")
        else:
            assert ours == theirs, f"{chart}: {where} differs from the workers' global"

    same(values["global"], worker_values["global"], "global")
    for key, sub in schema["properties"]["global"]["properties"].items():
        worker_sub = worker_schema["properties"]["global"]["properties"][key]
        for prop, definition in sub.get("properties", {}).items():
            assert definition == worker_sub["properties"][prop], f"{chart}: global/{key}/{prop}"
