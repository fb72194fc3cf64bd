"""Run a service image as its chart's Deployment declares: the runtime contract as
``docker run`` flags, on host networking against the local stack.

The contract is read from the rendered chart, not written twice: user and group, a
read-only root filesystem, every capability dropped, no privilege escalation, a tmpfs
for each ``emptyDir``, the projected identity token mounted read-only where the chart
mounts it, and the chart's environment (its addresses pointed at the local stack).
Used by ``tests/containers`` and by ``orders-demo --containers``.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orders_ops.dockerd import DockerError, PrivateDocker
from orders_ops.images import ImageSpec
from orders_ops.settings import HOST, StackSettings, repo_root
from orders_ops.stack import worker_env

Manifest = dict[str, Any]
CLUSTER_ONLY_ENV = ("PATH", "LANG", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE")


@dataclass(frozen=True)
class RunContract:
    """What the chart's Deployment demands of the one container it runs."""

    user: int
    group: int
    fs_group: int | None
    read_only: bool
    dropped: tuple[str, ...]
    no_new_privileges: bool
    tmpfs: tuple[tuple[str, str], ...]  # (mount path, size for tmpfs)
    token_mount: str | None  # where the projected ServiceAccount token folder is mounted
    token_file: str | None  # its file name there
    env: dict[str, str]
    ready_path: str  # the readiness probe's HTTP path


def _size(limit: str | None) -> str:
    """``16Mi`` -> ``16m`` (tmpfs sizes); no limit -> 64m."""
    if not limit:
        return "64m"
    units = {"Ki": "k", "Mi": "m", "Gi": "g"}
    for suffix, unit in units.items():
        if limit.endswith(suffix):
            return limit[: -len(suffix)] + unit
    return limit


def contract(deployment: Manifest) -> RunContract:
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ctx = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    tmpfs: list[tuple[str, str]] = []
    token_mount = token_file = None
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            tmpfs.append((mount["mountPath"], _size(volume["emptyDir"].get("sizeLimit"))))
        for source in volume.get("projected", {}).get("sources", []):
            if "serviceAccountToken" in source:
                token_mount = mount["mountPath"]
                token_file = source["serviceAccountToken"]["path"]
    return RunContract(
        user=int(ctx["runAsUser"]),
        group=int(ctx.get("runAsGroup", ctx["runAsUser"])),
        fs_group=pod.get("securityContext", {}).get("fsGroup"),
        read_only=bool(ctx.get("readOnlyRootFilesystem")),
        dropped=tuple(ctx.get("capabilities", {}).get("drop", [])),
        no_new_privileges=ctx.get("allowPrivilegeEscalation") is False,
        tmpfs=tuple(tmpfs),
        token_mount=token_mount,
        token_file=token_file,
        env={e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e},
        ready_path=container["readinessProbe"]["httpGet"]["path"],
    )


def render_deployment(chart: str, values: Mapping[str, Any] | None = None) -> Manifest:
    """The Deployment of ``helm/<chart>`` rendered offline with the Helm SDK (its library
    dependency built from Chart.lock in a temporary copy, never in the working tree)."""
    import helm_python as helm  # a development dependency: tests and the demo only
    import yaml

    root = repo_root()
    if root is None:
        raise RuntimeError("render_deployment needs a checkout (helm/ beside ops/)")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "helm"
        shutil.copytree(root / "helm", copy, ignore=shutil.ignore_patterns("charts"))
        helm.dependency_build(copy / chart)
        with helm.Chart.load(copy / chart) as loaded:
            files = loaded.render(
                dict(values or {}), name=chart, namespace="orders", is_install=True
            )
    for body in files.values():
        for doc in yaml.safe_load_all(body):
            if doc and doc.get("kind") == "Deployment":
                found: Manifest = doc
                return found
    raise RuntimeError(f"helm/{chart} renders no Deployment")


def local_env(
    settings: StackSettings, service: str, chart_env: Mapping[str, str], port: int, sdk_port: int
) -> dict[str, str]:
    """The chart's environment with its addresses pointed at the local stack on 127.0.0.1
    (values of the same names the stack gives a local worker), the token path kept as the
    chart sets it, and HTTP on ``port``, the SDK's metrics on ``sdk_port`` (host
    networking: each container needs ports of its own)."""
    if service == "codec-server":
        local = {"VAULT_ADDR": settings.vault_addr, "ORDERS_CODEC_HOST": HOST}
        return {**chart_env, **local, "ORDERS_CODEC_PORT": str(port)}
    local = worker_env(settings, service)
    env = {k: (local.get(k, v) if k != "VAULT_TOKEN_FILE" else v) for k, v in chart_env.items()}
    env |= {k: v for k, v in local.items() if k not in env and k not in CLUSTER_ONLY_ENV}
    return env | {"ORDERS_METRICS_PORT": str(port), "ORDERS_SDK_METRICS_PORT": str(sdk_port)}


def projected_token_dir(settings: StackSettings, service: str, name: str) -> Path:
    """The service's identity folder, shaped like a projected volume: ``<name>`` links to
    the token file the local issuer rewrites (Kubernetes links ``token`` the same way, so
    a rewrite shows through a read-only folder mount, where a file mount would keep the
    first token for ever)."""
    folder = settings.token_dir(service)
    link = folder / name
    if not link.is_symlink():
        link.symlink_to(settings.token_file(service).name)
    return folder


def run_argv(
    c: RunContract,
    image: str,
    name: str,
    env: Mapping[str, str],
    token_dir: Path | None = None,
    token_gid: int | None = None,
) -> list[str]:
    """``docker run`` arguments that enforce ``c``. ``token_gid`` is the host group that
    may read the token folder (the pod's fsGroup plays that part in a cluster)."""
    argv = ["run", "--detach", "--name", name, "--network", "host"]
    argv += ["--user", f"{c.user}:{c.group}"]
    if c.read_only:
        argv.append("--read-only")
    for cap in c.dropped:
        argv += ["--cap-drop", cap]
    if c.no_new_privileges:
        argv += ["--security-opt", "no-new-privileges"]
    for path, size in c.tmpfs:
        argv += ["--tmpfs", f"{path}:rw,nosuid,nodev,size={size},mode=1777"]
    if c.token_mount and token_dir is not None:
        argv += ["--volume", f"{token_dir}:{c.token_mount}:ro"]
        if token_gid is not None:
            argv += ["--group-add", str(token_gid)]
    for key, value in sorted(env.items()):
        argv += ["--env", f"{key}={value}"]
    return [*argv, image]


@dataclass
class Running:
    """One started container and what it was started with."""

    spec: ImageSpec
    contract: RunContract
    name: str
    port: int
    env: dict[str, str]
    started: float
    ready_seconds: float = 0.0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 - loopback
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class ContainerFleet:
    """The service images run as their charts declare, against the local stack."""

    def __init__(self, engine: PrivateDocker, settings: StackSettings, prefix: str) -> None:
        self.engine = engine
        self.settings = settings
        self.prefix = prefix
        self.running: dict[str, Running] = {}

    def start(self, spec: ImageSpec) -> Running:
        c = contract(render_deployment(spec.service))
        port = _free_port()
        env = local_env(self.settings, spec.service, c.env, port, _free_port())
        token_dir = gid = None
        if c.token_mount and c.token_file:
            token_dir = projected_token_dir(self.settings, spec.service, c.token_file)
            gid = token_dir.stat().st_gid  # the identity's group, as fsGroup makes it in a pod
        name = f"{self.prefix}-{spec.service}-{uuid.uuid4().hex[:6]}"
        started = time.monotonic()
        self.engine.docker(*run_argv(c, spec.image, name, env, token_dir, gid))
        self.running[spec.service] = Running(spec, c, name, port, env, started)
        return self.running[spec.service]

    def wait_ready(self, r: Running, timeout: float = 120.0) -> None:
        """Until the chart's readiness probe answers 200; records the seconds it took."""
        while time.monotonic() < r.started + timeout:
            if _answers(r.url + r.contract.ready_path):
                r.ready_seconds = time.monotonic() - r.started
                return
            state = self.engine.docker("inspect", "--format", "{{.State.Status}}", r.name)
            if state.stdout.strip() != "running":
                break
            time.sleep(0.3)
        logs = self.engine.docker("logs", "--tail", "30", r.name, check=False)
        raise DockerError(
            f"{r.spec.image} ({r.name}) not ready at {r.url}{r.contract.ready_path} within "
            f"{timeout:.0f} s; its log ends:\n{logs.stdout}{logs.stderr}"
        )

    def up(self, specs: Sequence[ImageSpec]) -> None:
        for spec in specs:
            self.start(spec)
        for r in self.running.values():
            self.wait_ready(r)

    def pid(self, service: str) -> int:
        """The container's main process as the host sees it (for /proc checks)."""
        out = self.engine.docker(
            "inspect", "--format", "{{.State.Pid}}", self.running[service].name
        )
        return int(out.stdout)

    def save_logs(self, folder: Path) -> None:
        """Each container's output to ``<folder>/container-<service>.log`` (0600)."""
        for service, r in self.running.items():
            out = self.engine.docker("logs", r.name, check=False)
            path = folder / f"container-{service}.log"
            path.touch(mode=0o600)
            path.write_text(out.stdout + out.stderr)

    def down(self) -> None:
        """SIGTERM first (workers revoke their leases and tokens), then remove."""
        names = [r.name for r in self.running.values()]
        if names:
            self.engine.docker("stop", "--time", "30", *names, check=False, timeout=120)
            self.engine.docker("rm", "--force", *names, check=False)
        self.running.clear()
