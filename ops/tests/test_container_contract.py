"""A chart's Deployment turned into `docker run` flags (orders_ops.containers): no engine needed."""

from __future__ import annotations

from pathlib import Path

from orders_ops.containers import contract, local_env, run_argv
from orders_ops.testing import isolated_settings

DEPLOYMENT = {
    "spec": {
        "template": {
            "spec": {
                "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
                "volumes": [
                    {
                        "name": "vault-token",
                        "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]},
                    },
                    {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                ],
                "containers": [
                    {
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [
                            {"name": "vault-token", "mountPath": "/var/run/secrets/vault"},
                            {"name": "tmp", "mountPath": "/tmp"},
                        ],
                        "env": [
                            {"name": "VAULT_ADDR", "value": "http://openbao:8200"},
                            {"name": "VAULT_AUTH_METHOD", "value": "kubernetes"},
                            {"name": "VAULT_TOKEN_FILE", "value": "/var/run/secrets/vault/token"},
                            {"name": "ORDERS_DB_HOST", "value": "postgres"},
                            {"name": "ORDERS_METRICS_PORT", "value": "9464"},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}},
                    }
                ],
            }
        }
    }
}


def test_the_deployment_becomes_the_docker_run_flags(tmp_path: Path) -> None:
    c = contract(DEPLOYMENT)
    argv = run_argv(c, "orders-validate:local", "v1", {"A": "1"}, tmp_path, 1234)
    assert argv == [
        "run", "--detach", "--name", "v1", "--network", "host",
        "--user", "10001:10001", "--read-only", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "--tmpfs", "/tmp:rw,nosuid,nodev,size=16m,mode=1777",
        "--volume", f"{tmp_path}:/var/run/secrets/vault:ro", "--group-add", "1234",
        "--env", "A=1", "orders-validate:local",
    ]  # fmt: skip


def test_a_weaker_deployment_gives_weaker_flags() -> None:
    """The flags come from the chart: a chart that dropped a protection loses its flag."""
    pod = DEPLOYMENT["spec"]["template"]["spec"]  # type: ignore[index]
    weaker = {"spec": {"template": {"spec": {**pod, "containers": [dict(pod["containers"][0])]}}}}
    weaker["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {}
    argv = run_argv(contract(weaker), "img", "n", {})
    assert "--read-only" not in argv and "--cap-drop" not in argv
    assert "no-new-privileges" not in argv


def test_the_charts_addresses_point_at_the_local_stack(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path)
    env = local_env(settings, "validate", contract(DEPLOYMENT).env, 20001, 20002)
    assert env["VAULT_ADDR"] == settings.vault_addr
    assert env["VAULT_AUTH_METHOD"] == "jwt"  # the local stack's workload login
    assert env["ORDERS_DB_HOST"] == "127.0.0.1"
    assert env["VAULT_TOKEN_FILE"] == "/var/run/secrets/vault/token"  # the chart's path
    assert (env["ORDERS_METRICS_PORT"], env["ORDERS_SDK_METRICS_PORT"]) == ("20001", "20002")
    assert "PATH" not in env
