"""The charts: render, lint and validate offline; the security invariants of every worker.

Everything is read back from the rendered manifests (parsed YAML), so a template
change that breaks an invariant fails here, whatever the template looks like.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from orders_shared.catalog import SERVICES
from orders_shared.config import DEFAULT_TOKEN_FILE

if TYPE_CHECKING:
    from conftest import Rendered

ROOT = Path(__file__).resolve().parents[2]
WORKERS = tuple(SERVICES)
CHARTS = (*WORKERS, "codec-server", "bootstrap", "dev-deps")
KUBE_VERSIONS = ("1.30.0", latest_version())
PRODUCTION = yaml.safe_load((ROOT / "helm" / "values-production.example.yaml").read_text())


def _modes(chart: str) -> list[str]:
    return ["default"] if chart == "dev-deps" else ["default", "production"]


CHART_MODES = [(c, m) for c in CHARTS for m in _modes(c)]


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return containers


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    (container,) = _containers(deployment)
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


# --------------------------------------------------------------------------- render, lint, validate


def test_newest_schema_version_is_the_bundled_one() -> None:
    assert KUBE_VERSIONS == ("1.30.0", "1.37.0")


@pytest.mark.parametrize(("chart", "mode"), CHART_MODES)
def test_chart_renders_and_every_manifest_validates(
    rendered: dict[tuple[str, str], Rendered], chart: str, mode: str
) -> None:
    manifests = rendered[(chart, mode)].manifests
    assert manifests, f"{chart} rendered nothing"
    for manifest in manifests:
        assert manifest["metadata"].get("namespace", "orders") == "orders"
        for version in KUBE_VERSIONS:
            # strict: unknown fields are errors too
            kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize(("chart", "mode"), CHART_MODES)
def test_chart_passes_strict_lint(chart_dir: Path, chart: str, mode: str) -> None:
    values = PRODUCTION if mode == "production" else None
    report = helm.lint(chart_dir / chart, values, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    # severity 1 is "info" (only "icon is recommended"); 2 warning, 3 error
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_library_chart_renders_nothing_by_itself(chart_dir: Path) -> None:
    with helm.Chart.load(chart_dir / "orders-lib") as lib:
        assert lib.metadata["type"] == "library"


def test_every_chart_has_a_values_schema() -> None:
    assert sorted(p.parent.name for p in (ROOT / "helm").glob("*/values.schema.json")) == sorted(
        CHARTS
    )


# --------------------------------------------------------------------------- worker invariants


@pytest.mark.parametrize("mode", ["default", "production"])
@pytest.mark.parametrize("service", WORKERS)
def test_worker_identity_is_its_own_projected_vault_token(
    rendered: dict[tuple[str, str], Rendered], service: str, mode: str
) -> None:
    r = rendered[(service, mode)]
    identity = f"orders-{service}"
    assert r.one("ServiceAccount")["metadata"]["name"] == identity
    assert r.one("ServiceAccount")["automountServiceAccountToken"] is False
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == identity
    assert pod["automountServiceAccountToken"] is False
    (volume,) = [v for v in pod["volumes"] if "projected" in v]
    assert volume["projected"]["sources"] == [
        {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 600, "path": "token"}}
    ]
    (container,) = pod["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts[volume["name"]] == {
        "name": volume["name"],
        "mountPath": str(Path(DEFAULT_TOKEN_FILE).parent),
        "readOnly": True,
    }
    env = _env(r.one("Deployment"))
    assert env["VAULT_AUTH_METHOD"] == "kubernetes"
    assert env["VAULT_AUTH_ROLE"] == identity
    assert env["VAULT_TOKEN_FILE"] == DEFAULT_TOKEN_FILE
    assert env["ORDERS_METRICS_PORT"] == "9464"
    assert env["VAULT_ADDR"] == (
        "https://vault.vault.svc:8200" if mode == "production" else "http://openbao:8200"
    )


@pytest.mark.parametrize("mode", ["default", "production"])
@pytest.mark.parametrize("service", WORKERS)
def test_worker_runs_locked_down(
    rendered: dict[tuple[str, str], Rendered], service: str, mode: str
) -> None:
    deployment = rendered[(service, mode)].one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["terminationGracePeriodSeconds"] > 20  # the worker's graceful shutdown
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert set(container["resources"]) == {"requests", "limits"}
    for part in ("requests", "limits"):
        assert set(container["resources"][part]) == {"cpu", "memory"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]


def _peer_labels(rule: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    return [
        (
            p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            p["podSelector"].get("matchLabels", {}),
        )
        for p in rule.get("to", rule.get("from", []))
    ]


@pytest.mark.parametrize("service", WORKERS)
def test_worker_network_policy_allows_only_its_dependencies(
    rendered: dict[tuple[str, str], Rendered], service: str
) -> None:
    r = rendered[(service, "default")]
    policy = r.one("NetworkPolicy")["spec"]
    assert (
        policy["podSelector"]["matchLabels"]
        == (r.one("Deployment")["spec"]["selector"]["matchLabels"])
    )
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert _peer_labels(ingress) == [("monitoring", {})]
    assert ingress["ports"] == [{"port": 9464, "protocol": "TCP"}]
    egress = [(_peer_labels(rule), [p["port"] for p in rule["ports"]]) for rule in policy["egress"]]
    expected = [
        ([("kube-system", {"k8s-app": "kube-dns"})], [53, 53]),
        ([("orders", {"app.kubernetes.io/name": "temporal"})], [7233]),
        ([("orders", {"app.kubernetes.io/name": "openbao"})], [8200]),
    ]
    if SERVICES[service].db_roles:
        expected.append(([("orders", {"app.kubernetes.io/name": "postgres"})], [5432]))
    assert egress == expected


@pytest.mark.parametrize("service", WORKERS)
def test_worker_has_a_disruption_budget_and_a_metrics_service_and_no_hpa_by_default(
    rendered: dict[tuple[str, str], Rendered], service: str
) -> None:
    r = rendered[(service, "default")]
    assert r.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert r.one("Service")["spec"]["ports"] == [
        {"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert r.of_kind("HorizontalPodAutoscaler") == []
    assert sorted(m["kind"] for m in r.manifests) == [
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]


def test_production_example_turns_on_autoscaling_where_it_says(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    with_hpa = [
        s for s in WORKERS if rendered[(s, "production")].of_kind("HorizontalPodAutoscaler")
    ]
    assert with_hpa == ["validate", "payment"]
    deployment = rendered[("payment", "production")].one("Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    (container,) = _containers(deployment)
    assert container["image"] == "registry.example.com/orders/orders-payment@sha256:" + "4" * 64


SECRET_NAME = re.compile(
    r"PASSWORD|PASSWD|SECRET|PRIVATE|CREDENTIAL|^VAULT_TOKEN$|ROOT_TOKEN", re.I
)
SECRET_VALUE = re.compile(r"^(hvs\.|s\.|dev-root)|postgres(ql)?://[^@]*:[^@]*@", re.I)


@pytest.mark.parametrize("mode", ["default", "production"])
@pytest.mark.parametrize("service", WORKERS)
def test_no_password_or_vault_token_reaches_a_worker(
    rendered: dict[tuple[str, str], Rendered], service: str, mode: str
) -> None:
    r = rendered[(service, mode)]
    assert r.of_kind("Secret") == []
    (container,) = _containers(r.one("Deployment"))
    assert "envFrom" not in container
    for item in container["env"]:
        assert set(item) == {"name", "value"}, f"{item['name']} is not a plain value"
        assert not SECRET_NAME.search(item["name"]), item["name"]
        assert not SECRET_VALUE.search(item["value"]), item["name"]
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    # the only Secrets a worker mounts are certificates (CA, Temporal client cert)
    secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
    assert secret_volumes <= {"vault-ca", "database-ca", "temporal-ca", "temporal-client-cert"}
    assert "secretKeyRef" not in r.text
    assert "kind: Secret" not in r.text


def test_the_secret_scan_catches_what_it_looks_for() -> None:
    for name in ("PGPASSWORD", "VAULT_TOKEN", "DB_SECRET", "BAO_DEV_ROOT_TOKEN_ID"):
        assert SECRET_NAME.search(name), name
    for value in ("hvs.CAESIabc", "dev-root-123", "postgresql://u:pw@db:5432/orders"):
        assert SECRET_VALUE.search(value), value
    assert not SECRET_NAME.search("VAULT_TOKEN_FILE")


@pytest.mark.parametrize("mode", ["default", "production"])
@pytest.mark.parametrize("service", WORKERS)
def test_database_env_only_for_services_with_database_roles(
    rendered: dict[tuple[str, str], Rendered], service: str, mode: str
) -> None:
    env = _env(rendered[(service, mode)].one("Deployment"))
    db_env = sorted(k for k in env if k.startswith("ORDERS_DB_"))
    if SERVICES[service].db_roles:
        assert db_env == ["ORDERS_DB_HOST", "ORDERS_DB_NAME", "ORDERS_DB_PORT"]
    else:
        assert service == "orchestrator"
        assert db_env == []


# --------------------------------------------------------------------------- other charts


def test_codec_server_holds_no_identity_and_allows_the_ui_origins(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    r = rendered[("codec-server", "default")]
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert [v for v in pod["volumes"] if "projected" in v or "secret" in v] == []
    env = _env(r.one("Deployment"))
    assert env["ORDERS_CODEC_CORS_ORIGINS"] == "http://localhost:8233,http://127.0.0.1:8233"
    assert env["VAULT_ADDR"] == "http://openbao:8200"
    egress = r.one("NetworkPolicy")["spec"]["egress"]
    assert [[p["port"] for p in rule["ports"]] for rule in egress] == [[53, 53], [8200]]


def test_bootstrap_is_the_only_chart_that_mounts_an_admin_secret(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    r = rendered[("bootstrap", "production")]
    assert r.of_kind("Secret") == []  # referenced by name, created out of band
    pod = r.one("Job")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "orders-bootstrap"
    assert pod["automountServiceAccountToken"] is False
    (secret,) = [v["secret"] for v in pod["volumes"] if "secret" in v and v["name"] == "admin"]
    assert secret["secretName"] == "orders-bootstrap-admin"
    # no Vault root token in a cluster: the Job logs in as its own ServiceAccount with a
    # short-lived projected token meant for Vault only
    assert [i["key"] for i in secret["items"]] == ["postgres-superuser-password"]
    (projected,) = [v["projected"] for v in pod["volumes"] if "projected" in v]
    (sa_token,) = [s["serviceAccountToken"] for s in projected["sources"]]
    assert sa_token["audience"] == "vault" and sa_token["expirationSeconds"] <= 3600
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["ORDERS_BOOTSTRAP_VAULT_AUTH"] == "kubernetes"
    assert env["ORDERS_BOOTSTRAP_SA_TOKEN_FILE"] == "/var/run/secrets/orders/" + sa_token["path"]
    # the issuer differs per cluster: production values name theirs, the default names none
    # (kubeadm's issuer as a default would refuse every login on EKS/GKE/AKS)
    assert env["ORDERS_KUBERNETES_ISSUER"].startswith("https://")
    default = rendered[("bootstrap", "default")].one("Job")["spec"]["template"]["spec"]
    assert {e["name"]: e.get("value") for e in default["containers"][0]["env"]}[
        "ORDERS_KUBERNETES_ISSUER"
    ] == ""
    (policy,) = [
        p for p in r.of_kind("NetworkPolicy") if p["metadata"]["name"] == "orders-bootstrap"
    ]
    assert policy["spec"]["ingress"] == []
    for chart, mode in CHART_MODES:
        if chart in ("bootstrap", "dev-deps"):
            continue
        assert "orders-bootstrap-admin" not in rendered[(chart, mode)].text, chart


def test_dev_deps_are_labelled_development_only(rendered: dict[tuple[str, str], Rendered]) -> None:
    r = rendered[("dev-deps", "default")]
    for manifest in r.manifests:
        assert manifest["metadata"]["labels"]["orders.example/purpose"] == "development-only"
    assert sorted(d["metadata"]["name"] for d in r.of_kind("Deployment")) == [
        "openbao",
        "postgres",
        "temporal",
    ]


# --------------------------------------------------------------------------- values schema


def _render_error(chart_dir: Path, chart: str, values: dict[str, Any]) -> str:
    with helm.Chart.load(chart_dir / chart) as loaded, pytest.raises(helm.HelmValuesError) as err:
        loaded.render(values, name=chart, namespace="orders")
    return str(err.value)


@pytest.mark.parametrize("service", WORKERS)
def test_schema_rejects_replicas_that_are_not_a_number(chart_dir: Path, service: str) -> None:
    message = _render_error(chart_dir, service, {service: {"replicas": "two"}})
    assert f"- at '/{service}/replicas': got string, want integer" in message


@pytest.mark.parametrize("service", WORKERS)
def test_schema_rejects_a_missing_vault_address(chart_dir: Path, service: str) -> None:
    message = _render_error(chart_dir, service, {"global": {"vault": {"address": None}}})
    assert "- at '/global/vault': missing property 'address'" in message


def test_schema_rejects_a_vault_address_without_scheme(chart_dir: Path) -> None:
    message = _render_error(chart_dir, "payment", {"global": {"vault": {"address": "vault:8200"}}})
    assert "- at '/global/vault/address': 'vault:8200' does not match pattern" in message


def test_schema_rejects_a_grace_period_shorter_than_the_worker_drain(chart_dir: Path) -> None:
    message = _render_error(
        chart_dir, "payment", {"payment": {"terminationGracePeriodSeconds": 10}}
    )
    assert "- at '/payment/terminationGracePeriodSeconds': minimum: got 10, want 25" in message


def test_schema_rejects_a_wildcard_cors_origin(chart_dir: Path) -> None:
    message = _render_error(chart_dir, "codec-server", {"codec-server": {"corsOrigins": ["*"]}})
    assert "- at '/codec-server/corsOrigins/0': '*' does not match pattern" in message


def test_the_session_watchdog_runs_beside_the_bootstrap_with_postgres_only(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    """Issue 20 item 4: limits enforced from outside the session, in a cluster too."""
    r = rendered[("bootstrap", "production")]
    (deploy,) = r.of_kind("Deployment")
    assert deploy["metadata"]["name"] == "orders-session-watchdog"
    pod = deploy["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "orders_ops.session_watchdog"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ORDERS_WATCHDOG_STATEMENT_LIMIT"] == "12s"
    (secret,) = [v["secret"] for v in pod["volumes"] if "secret" in v and v["name"] == "password"]
    assert [i["key"] for i in secret["items"]] == ["session-watchdog-password"]
    assert "orders-bootstrap-admin" not in str(deploy)  # no admin credential in it
    # the Job sets the login's password from the same Secret
    job = r.one("Job")["spec"]["template"]["spec"]
    job_env = {e["name"]: e.get("value") for e in job["containers"][0]["env"]}
    mounted = env["ORDERS_WATCHDOG_PASSWORD_FILE"]
    assert job_env["ORDERS_WATCHDOG_PASSWORD_FILE"] == mounted
    (policy,) = [
        p for p in r.of_kind("NetworkPolicy") if p["metadata"]["name"] == "orders-session-watchdog"
    ]
    assert policy["spec"]["ingress"] == []
    egress = policy["spec"]["egress"]
    assert [[p["port"] for p in rule["ports"]] for rule in egress] == [[53, 53], [5432]]


def test_the_plan_cronjob_runs_the_jobs_pod_with_plan_strict(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    """The drift check (orders-bootstrap plan) is the apply Job's pod with another command."""
    for mode in ("default", "production"):
        r = rendered[("bootstrap", mode)]
        cron = r.one("CronJob")
        assert cron["metadata"]["name"] == "orders-bootstrap-plan"
        spec = cron["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["jobTemplate"]["spec"]["backoffLimit"] == 0  # a failed run is the signal
        pod = spec["jobTemplate"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["orders-bootstrap", "plan", "--strict"]
        job_pod = copy.deepcopy(r.one("Job")["spec"]["template"]["spec"])
        job_pod["containers"][0].update(name="plan", command=container["command"])
        assert pod == job_pod, mode
        # the bootstrap's NetworkPolicy (egress to Vault and PostgreSQL only) selects it
        (policy,) = [
            p for p in r.of_kind("NetworkPolicy") if p["metadata"]["name"] == "orders-bootstrap"
        ]
        labels = spec["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        assert r.of_kind("PrometheusRule") == []  # only when enabled


def test_the_plan_cronjob_can_be_turned_off_or_made_lenient(chart_dir: Path) -> None:
    def crons(plan: dict[str, Any]) -> list[Any]:
        with helm.Chart.load(chart_dir / "bootstrap") as loaded:
            files = loaded.render(
                {"bootstrap": {"plan": plan}}, name="bootstrap", namespace="orders"
            )
        docs = [d for body in files.values() for d in yaml.safe_load_all(body) if d]
        return [d for d in docs if d["kind"] == "CronJob"]

    assert crons({"enabled": False}) == []
    (cron,) = crons({"strict": False})
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["orders-bootstrap", "plan"]
