"""Optional Prometheus Operator objects (global.monitoring): a ServiceMonitor for each
worker's metrics Service and a PrometheusRule with its alerts, rendered only when
enabled. The rules are checked with the real promtool (Debian package ``prometheus``,
installed here when missing, as root or in CI), including a unit test of the
"compensation stuck" and "TLS certificate near expiry" alerts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from prometheus_client import REGISTRY

import orders_payment.activities  # noqa: F401 (registers orders_payment_refunds_total)
import orders_shared.metrics  # registers the shared metrics
import orders_shared.tls  # noqa: F401 (registers orders_tls_certificate_seconds_left)
from orders_shared.catalog import SERVICES

WORKERS = tuple(SERVICES)
ENABLED = {
    "global": {
        "monitoring": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        }
    }
}
WITH_TLS = {
    "global": {
        **ENABLED["global"],
        "temporal": {"tls": {"enabled": True, "caSecret": "temporal-ca"}},
    }
}
ALWAYS = {"OrdersVaultTokenNearExpiry", "OrdersReadinessFailing"}


def _render(chart_dir: Path, chart: str, values: dict[str, Any] | None) -> list[dict[str, Any]]:
    with helm.Chart.load(chart_dir / chart) as loaded:
        files = loaded.render(values, name=chart, namespace="orders", is_install=True)
    return [d for body in files.values() for d in yaml.safe_load_all(body) if d]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def _rules(chart_dir: Path, service: str, *, tls: bool = False) -> dict[str, Any]:
    values = WITH_TLS if tls else ENABLED
    spec: dict[str, Any] = _one(_render(chart_dir, service, values), "PrometheusRule")["spec"]
    return spec


@pytest.mark.parametrize("service", WORKERS)
def test_nothing_for_prometheus_unless_enabled(chart_dir: Path, service: str) -> None:
    kinds = {d["kind"] for d in _render(chart_dir, service, None)}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}


@pytest.mark.parametrize("service", WORKERS)
def test_service_monitor_scrapes_the_metrics_service(chart_dir: Path, service: str) -> None:
    docs = _render(chart_dir, service, ENABLED)
    monitor = _one(docs, "ServiceMonitor")
    svc = _one(docs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    wanted = monitor["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= svc["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in svc["spec"]["ports"]]
    assert endpoint["path"] == "/metrics"


@pytest.mark.parametrize("service", WORKERS)
def test_each_worker_gets_the_alerts_that_apply_to_it(chart_dir: Path, service: str) -> None:
    (group,) = _rules(chart_dir, service)["groups"]
    alerts = {r["alert"] for r in group["rules"]}
    expected = set(ALWAYS)
    if SERVICES[service].db_roles:
        expected.add("OrdersDbLeaseSecondsLeftLow")
    if service != "orchestrator":
        expected.add("OrdersActivityFailureRate")
    if service == "payment":
        expected.add("OrdersCompensationStuck")
    assert alerts == expected
    job = f'job="orders-{service}-metrics"'
    for rule in group["rules"]:
        if rule["alert"] != "OrdersReadinessFailing":  # kube-state-metrics' series
            assert job in rule["expr"], rule["alert"]


@pytest.mark.parametrize("service", WORKERS)
def test_with_temporal_tls_each_worker_watches_its_client_certificate(
    chart_dir: Path, service: str
) -> None:
    (plain,) = _rules(chart_dir, service)["groups"]
    (group,) = _rules(chart_dir, service, tls=True)["groups"]
    alerts = {r["alert"] for r in group["rules"]}
    assert alerts - {r["alert"] for r in plain["rules"]} == {"OrdersTLSCertificateNearExpiry"}
    (rule,) = [r for r in group["rules"] if r["alert"] == "OrdersTLSCertificateNearExpiry"]
    assert f'job="orders-{service}-metrics"' in rule["expr"]
    assert "orders_tls_certificate_seconds_left" in set(REGISTRY._names_to_collectors)


def test_alerts_name_metrics_the_code_exports(chart_dir: Path) -> None:
    exported = set(REGISTRY._names_to_collectors)
    (group,) = _rules(chart_dir, "payment")["groups"]
    text = " ".join(r["expr"] for r in group["rules"])
    for name in (
        "orders_vault_token_seconds_left",
        "orders_db_lease_seconds_left",
        "orders_activity_outcomes_total",
        "orders_payment_refunds_total",
    ):
        assert name in text and name in exported, name
    assert 'outcome="unfinished"' in text


# --------------------------------------------------------------------------- promtool


@pytest.fixture(scope="session")
def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("promtool is missing and installing it (apt-get install prometheus) needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, timeout=900)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
        env=env,
        check=True,
        timeout=900,
    )
    found = shutil.which("promtool")
    assert found, "apt-get installed prometheus but promtool is not on PATH"
    return found


def _rule_file(chart_dir: Path, service: str, folder: Path, *, tls: bool = False) -> Path:
    path = folder / f"{service}.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": _rules(chart_dir, service, tls=tls)["groups"]}))
    return path


def _promtool_test(promtool: str, folder: Path, tests: dict[str, Any]) -> None:
    test_file = folder / "alerts.test.yaml"
    test_file.write_text(yaml.safe_dump(tests))
    proc = subprocess.run(
        [promtool, "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        check=False,
        cwd=folder,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("tls", [False, True])
@pytest.mark.parametrize("service", WORKERS)
def test_promtool_accepts_the_rules(
    chart_dir: Path, promtool: str, service: str, tls: bool, tmp_path: Path
) -> None:
    path = _rule_file(chart_dir, service, tmp_path, tls=tls)
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compensation_stuck_fires_only_while_refunds_keep_ending_unfinished(
    chart_dir: Path, promtool: str, tmp_path: Path
) -> None:
    path = _rule_file(chart_dir, "payment", tmp_path)
    (group,) = _rules(chart_dir, "payment")["groups"]
    (rule,) = [r for r in group["rules"] if r["alert"] == "OrdersCompensationStuck"]
    series = (
        'orders_payment_refunds_total{job="orders-payment-metrics",namespace="orders",outcome="%s"}'
    )
    labels = {"job": "orders-payment-metrics", "namespace": "orders", **rule["labels"]}
    tests = {
        "rule_files": [path.name],
        "evaluation_interval": "1m",
        "tests": [
            {   # one more unfinished refund every minute: stuck
                "interval": "1m",
                "input_series": [{"series": series % "unfinished", "values": "0+1x90"}],
                "alert_rule_test": [
                    {"eval_time": "10m", "alertname": "OrdersCompensationStuck", "exp_alerts": []},
                    {
                        "eval_time": "45m",
                        "alertname": "OrdersCompensationStuck",
                        "exp_alerts": [
                            {
                                "exp_labels": {**labels, "outcome": "unfinished"},
                                "exp_annotations": rule["annotations"],
                            }
                        ],
                    },
                ],
            },
            {   # unfinished refunds that stopped growing, and refunds that completed: quiet
                "interval": "1m",
                "input_series": [
                    {"series": series % "unfinished", "values": "0+1x5 5x85"},
                    {"series": series % "refunded", "values": "0+1x90"},
                ],
                "alert_rule_test": [
                    {"eval_time": "60m", "alertname": "OrdersCompensationStuck", "exp_alerts": []}
                ],
            },
        ],
    }  # fmt: skip
    _promtool_test(promtool, tmp_path, tests)


def test_tls_certificate_alert_fires_only_when_renewal_did_not_happen(
    chart_dir: Path, promtool: str, tmp_path: Path
) -> None:
    path = _rule_file(chart_dir, "validate", tmp_path, tls=True)
    (group,) = _rules(chart_dir, "validate", tls=True)["groups"]
    (rule,) = [r for r in group["rules"] if r["alert"] == "OrdersTLSCertificateNearExpiry"]
    series = (
        'orders_tls_certificate_seconds_left{job="orders-validate-metrics",namespace="orders",'
        'pod="orders-validate-0",role="client-validate"}'
    )
    labels = {
        "namespace": "orders",
        "pod": "orders-validate-0",
        "role": "client-validate",
        **rule["labels"],
    }
    # at 1390 min a never-renewed 24 h certificate has 86400 - 60 * 1390 = 3000 s left
    annotations = {
        k: v.replace("{{ $labels.pod }}", "orders-validate-0")
        .replace("{{ $labels.role }}", "client-validate")
        .replace("{{ $value | humanizeDuration }}", "50m 0s")
        for k, v in rule["annotations"].items()
    }
    tests = {
        "rule_files": [path.name],
        "evaluation_interval": "1m",
        "tests": [
            {   # a 24 h certificate that never renews: quiet until 1 h is left, then fires
                "interval": "1m",
                "input_series": [{"series": series, "values": "86400-60x1440"}],
                "alert_rule_test": [
                    {"eval_time": "960m", "alertname": "OrdersTLSCertificateNearExpiry",
                     "exp_alerts": []},
                    {"eval_time": "1390m", "alertname": "OrdersTLSCertificateNearExpiry",
                     "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}]},
                ],
            },
            {   # renewed at two thirds of its life, twice: never close to expiry, quiet
                "interval": "1m",
                "input_series": [
                    {"series": series, "values": "86400-60x960 86400-60x960 86400-60x960"}
                ],
                "alert_rule_test": [
                    {"eval_time": "2800m", "alertname": "OrdersTLSCertificateNearExpiry",
                     "exp_alerts": []},
                ],
            },
        ],
    }  # fmt: skip
    _promtool_test(promtool, tmp_path, tests)


# --------------------------------------------------------------------------- the drift check

PLAN_RULE_ON = {"bootstrap": {"plan": {"prometheusRule": {"enabled": True}}}}


def _plan_rule_file(chart_dir: Path, folder: Path) -> tuple[Path, dict[str, Any]]:
    spec = _one(_render(chart_dir, "bootstrap", PLAN_RULE_ON), "PrometheusRule")["spec"]
    path = folder / "plan.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": spec["groups"]}))
    (group,) = spec["groups"]
    (rule,) = group["rules"]
    return path, rule


def test_promtool_accepts_the_drift_rule(chart_dir: Path, promtool: str, tmp_path: Path) -> None:
    path, _ = _plan_rule_file(chart_dir, tmp_path)
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_drift_alert_fires_only_while_the_latest_plan_run_has_not_succeeded(
    chart_dir: Path, promtool: str, tmp_path: Path
) -> None:
    path, rule = _plan_rule_file(chart_dir, tmp_path)
    assert rule["alert"] == "OrdersConfigDrift"
    sel = 'namespace="orders",cronjob="orders-bootstrap-plan"'
    schedule = f"kube_cronjob_status_last_schedule_time{{{sel}}}"
    success = f"kube_cronjob_status_last_successful_time{{{sel}}}"
    labels = {"namespace": "orders", "cronjob": "orders-bootstrap-plan", **rule["labels"]}
    fired = [{"exp_labels": labels, "exp_annotations": rule["annotations"]}]
    tests = {
        "rule_files": [path.name],
        "evaluation_interval": "1m",
        "tests": [
            {   # runs at 0 s and 3600 s; the second fails (no new success): fires after "for"
                "interval": "1m",
                "input_series": [
                    {"series": schedule, "values": "0x59 3600x60"},
                    {"series": success, "values": "30x119"},
                ],
                "alert_rule_test": [
                    {"eval_time": "30m", "alertname": "OrdersConfigDrift", "exp_alerts": []},
                    {"eval_time": "65m", "alertname": "OrdersConfigDrift", "exp_alerts": []},
                    {"eval_time": "90m", "alertname": "OrdersConfigDrift", "exp_alerts": fired},
                ],
            },
            {   # every run succeeds a little after it is scheduled: quiet
                "interval": "1m",
                "input_series": [
                    {"series": schedule, "values": "0x59 3600x60"},
                    {"series": success, "values": "30x59 3630x60"},
                ],
                "alert_rule_test": [
                    {"eval_time": "90m", "alertname": "OrdersConfigDrift", "exp_alerts": []}
                ],
            },
            {   # no run ever succeeded (drift from the first run on): fires too
                "interval": "1m",
                "input_series": [{"series": schedule, "values": "0x59"}],
                "alert_rule_test": [
                    {"eval_time": "30m", "alertname": "OrdersConfigDrift", "exp_alerts": fired}
                ],
            },
        ],
    }  # fmt: skip
    _promtool_test(promtool, tmp_path, tests)
