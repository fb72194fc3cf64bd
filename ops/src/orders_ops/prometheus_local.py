"""A local Prometheus for the process stack: ``orders-stack up --metrics`` (``make up METRICS=1``).

It scrapes the six workers' and the codec server's ``/metrics`` every
:data:`SCRAPE_INTERVAL` and evaluates the alert rules the charts ship: each worker
chart's ``PrometheusRule``, rendered here with Helm's SDK exactly as a cluster gets
it (monitoring enabled, the stack's namespace), its groups written to one rules
file. Each target carries the labels the chart's ServiceMonitor gives its series in
a cluster (``job="orders-<service>-metrics"``, ``namespace``), so those rules select
the local series unchanged, plus ``service`` (the folder name) and ``pod`` (the
worker's Temporal identity, ``orders-<service>@<host>``).

The binary is Debian's package ``prometheus``, installed with apt-get when missing
(as root; otherwise the error says what to run). Data, configuration and rules live
in ``<state>/prometheus``; the PID is recorded like every other server's, so
``orders-stack down`` stops exactly that process. As root it runs as its own system
user ``orders-prometheus``, which owns that folder and nothing else.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from orders_ops import apt, osusers
from orders_ops.settings import HOST, StackSettings, repo_root
from orders_ops.stack import (
    Server,
    StackError,
    answers_ok,
    child_env,
    private_dir,
    worker_metrics_port,
    write_private,
)
from orders_shared.catalog import SERVICES, temporal_identity

PACKAGE = "prometheus"
"""The Debian package (it brings ``prometheus`` and ``promtool``)."""
USER = "orders-prometheus"
SCRAPE_INTERVAL = "2s"  # seven loopback targets: cheap, and a test sees data in seconds
RETENTION = "7d"
CODEC_SERVICE = "codec-server"  # its chart's name: identity orders-codec-server


class PrometheusMissing(StackError):
    """The binary is not installed and could not be installed here."""


def binary() -> str | None:
    return shutil.which("prometheus", path=os.pathsep.join(("/usr/bin", "/usr/local/bin")))


def ensure_installed(echo: Callable[[str], None] = print) -> str:
    """The ``prometheus`` binary, installed with apt-get when missing (idempotent).

    Raises :class:`PrometheusMissing` naming the fix when it cannot be installed here
    (no apt-get, not root, or apt-get failed); :mod:`orders_ops.apt` waits for another apt
    run's lock. A service the package may try to start is none of ours."""
    found = binary()
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise PrometheusMissing(
            "prometheus is not installed and apt-get is not available: install Prometheus "
            "(2.42 or later) with your package manager so 'prometheus' is on PATH"
        )
    if os.geteuid() != 0:
        raise PrometheusMissing(
            "prometheus is not installed: run 'sudo apt-get install --no-install-recommends "
            "prometheus' (Debian's package), then start again"
        )
    echo(f"  {'prometheus':<9} installing Debian's package {PACKAGE!r} (once)")
    result = apt.install([PACKAGE], child_env())
    found = binary()
    if result.returncode != 0 or not found:
        raise PrometheusMissing(
            f"'apt-get install {PACKAGE}' failed ({apt.failure_tail(result)}): "
            "install it by hand, then start again"
        )
    return found


# --------------------------------------------------------------------------- the rules


def chart_rule_groups(helm_dir: Path, namespace: str) -> list[dict[str, Any]]:
    """The rule groups of every worker chart's ``PrometheusRule``, rendered with
    monitoring enabled in ``namespace``. The charts are copied to a temporary folder
    (with their library dependency built there), so the working tree is not touched."""
    try:
        import helm_python as helm
    except ImportError:
        raise StackError(
            "rendering the charts' alert rules needs the Helm SDK (helm-python-sdk, a dev "
            "dependency): run 'make install'"
        ) from None
    values = {"global": {"monitoring": {"prometheusRule": {"enabled": True}}}}
    groups: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="orders-rules-") as tmp:
        copy = Path(tmp)
        shutil.copytree(helm_dir / "orders-lib", copy / "orders-lib")
        for service in SERVICES:
            shutil.copytree(
                helm_dir / service, copy / service, ignore=shutil.ignore_patterns("charts")
            )
            helm.dependency_build(copy / service)
            with helm.Chart.load(copy / service) as chart:
                files = chart.render(values, name=service, namespace=namespace, is_install=True)
            for body in files.values():
                for doc in yaml.safe_load_all(body):
                    if doc and doc.get("kind") == "PrometheusRule":
                        groups += doc["spec"]["groups"]
    return groups


def _helm_dir() -> Path:
    root = repo_root()
    if root is None or not (root / "helm" / "orders-lib").is_dir():
        raise StackError(
            "the charts (helm/) were not found beside this installation: run "
            "'orders-stack up --metrics' from the repository's own .venv"
        )
    return root / "helm"


# --------------------------------------------------------------------------- the config


def scrape_targets(settings: StackSettings) -> list[tuple[str, int, str]]:
    """(service, port, pod label) of every process with a ``/metrics``."""
    targets = [
        (name, worker_metrics_port(settings, name), temporal_identity(spec.identity))
        for name, spec in SERVICES.items()
    ]
    codec = (CODEC_SERVICE, settings.codec_port, temporal_identity(f"orders-{CODEC_SERVICE}"))
    return [*targets, codec]


def config(settings: StackSettings, rules_file: Path) -> dict[str, Any]:
    """prometheus.yml: one job per process, named as the chart's ServiceMonitor names it."""
    jobs = [
        {
            "job_name": f"orders-{service}-metrics",
            # the SDK's series carry service=<name> already: keep them as they are
            "honor_labels": True,
            "static_configs": [
                {
                    "targets": [f"{HOST}:{port}"],
                    "labels": {"service": service, "namespace": settings.namespace, "pod": pod},
                }
            ],
        }
        for service, port, pod in scrape_targets(settings)
    ]
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(rules_file)],
        "scrape_configs": jobs,
    }


# --------------------------------------------------------------------------- the server


class LocalPrometheus(Server):
    """Prometheus on ``127.0.0.1:ORDERS_PROMETHEUS_PORT``, started only on request."""

    def __init__(self, settings: StackSettings) -> None:
        super().__init__(
            "prometheus",
            settings,
            {"http": settings.prometheus_port},
            expect=str(self.config_file_of(settings)),
            port_vars={"http": "ORDERS_PROMETHEUS_PORT"},
        )

    @staticmethod
    def config_file_of(settings: StackSettings) -> Path:
        return settings.state_dir / "prometheus" / "prometheus.yml"

    @property
    def home(self) -> Path:
        return self.settings.state_dir / "prometheus"

    @property
    def config_file(self) -> Path:
        return self.config_file_of(self.settings)

    @property
    def rules_file(self) -> Path:
        return self.home / "orders.rules.yml"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.settings.prometheus_port}"

    def write_config(self) -> None:
        """The rules (rendered from the charts now) and the scrape configuration."""
        groups = chart_rule_groups(_helm_dir(), self.settings.namespace)
        private_dir(self.home)
        private_dir(self.home / "data")
        write_private(self.rules_file, yaml.safe_dump({"groups": groups}, sort_keys=False))
        config_text = yaml.safe_dump(config(self.settings, self.rules_file), sort_keys=False)
        write_private(self.config_file, config_text)

    def _launch(self) -> None:
        program = ensure_installed()
        self.account = osusers.ensure_user(USER) if osusers.isolating() else None
        self.write_config()
        if self.account is not None:  # its folder, config and data belong to its own user
            for path in (self.home, self.home / "data", self.rules_file, self.config_file):
                os.chown(path, self.account.uid, self.account.gid)
            for path in (self.home / "data").rglob("*"):
                os.chown(path, self.account.uid, self.account.gid, follow_symlinks=False)
        self._spawn(
            [
                program,
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.home / 'data'}",
                f"--storage.tsdb.retention.time={RETENTION}",
                f"--web.listen-address={HOST}:{self.settings.prometheus_port}",
            ],
            env=child_env(),
        )

    def healthy(self) -> bool:
        return answers_ok(f"{self.url}/-/ready")


def metrics_up(
    prometheus: LocalPrometheus, timeout: float, echo: Callable[[str], None] = print
) -> None:
    """Start the local Prometheus unless it runs, and say where to look."""
    started = prometheus.start(timeout)
    verb = "started" if started else "already running"
    echo(
        f"  {'prometheus':<9} {verb:<16} {prometheus.url} (scrapes the workers and the codec "
        f"server every {SCRAPE_INTERVAL}; alert rules from the charts)"
    )
