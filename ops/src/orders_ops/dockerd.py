"""A private Docker engine for this checkout: its own socket, data, state and PID file.

It never touches a system dockerd (``/var/run/docker.sock``, ``/var/lib/docker``):
everything lives under ``<repo>/.docker/`` (git-ignored), it creates no bridge and
writes no iptables rules (containers use host networking, the only kind these
machines allow), and it is stopped by the PID it wrote. A second caller finds it
running and adopts it instead of starting another.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from orders_ops.settings import repo_root


def docker_dir() -> Path:
    """``<repository>/.docker`` (git-ignored), else ``./.docker``."""
    return (repo_root() or Path.cwd()).resolve() / ".docker"


# the kernel limits a unix socket path to 107 bytes; containerd's sits deepest
_SOCKET_ROOM = 60


class DockerError(RuntimeError):
    """The engine is missing, did not start, or a docker command failed."""


def docker_cli() -> str:
    """The client that matches Debian's engine (its legacy builder is the default), else
    whichever ``docker`` is on PATH."""
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and Path(candidate).exists():
            return candidate
    raise DockerError(
        "no docker client: run ops/scripts/install-docker.sh as root (apt-get install docker.io)"
    )


def _alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return b"dockerd" in cmdline and stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@dataclass(frozen=True)
class PrivateDocker:
    """Paths and lifecycle of the private engine rooted at ``root``."""

    root: Path = field(default_factory=docker_dir)

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def pid_file(self) -> Path:
        return self.root / "dockerd.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "dockerd.log"

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    @property
    def exec_root(self) -> Path:
        """State and sockets (containerd's among them). Under ``.docker/`` unless that
        path is too long for a unix socket; then a short folder named by its hash."""
        preferred = self.root / "exec"
        if len(str(preferred)) <= _SOCKET_ROOM:
            return preferred
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return Path("/run") / f"orders-docker-{digest}"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        """Environment for the docker client: this engine, the legacy builder, no
        user config (no credential helpers of the caller's)."""
        return {
            "PATH": os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin",
            "DOCKER_HOST": self.host,
            "DOCKER_BUILDKIT": "0",
            "DOCKER_CONFIG": str(self.root / "client"),
            "HOME": str(self.root),
        }

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(  # type: ignore[call-overload]
            [docker_cli(), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kw,
        )
        if check and proc.returncode != 0:
            raise DockerError(f"docker {' '.join(args[:3])} failed: {proc.stderr.strip()[-800:]}")
        return proc  # type: ignore[no-any-return]

    def ready(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return (
                self.docker("info", "--format", "{{.ID}}", check=False, timeout=10).returncode == 0
            )
        except subprocess.TimeoutExpired:
            return False

    def start(self, timeout: float = 60) -> bool:
        """Start the engine, or adopt the one already running here. True when started now."""
        if self.pid() is not None:
            self.wait_ready(timeout)
            return False
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise DockerError(
                "dockerd is not installed: run ops/scripts/install-docker.sh as root "
                "(apt-get install docker.io debootstrap)"
            )
        if os.geteuid() != 0:
            raise DockerError("the private dockerd needs root (run make images as root)")
        for folder in (self.root, self.data_root, self.exec_root, self.root / "client"):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        config = self.root / "daemon.json"
        config.write_text("{}\n")  # never the host's /etc/docker/daemon.json
        self.socket.unlink(missing_ok=True)
        argv = [
            dockerd,
            "--host",
            self.host,
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "--pidfile",
            str(self.pid_file),
            "--config-file",
            str(config),
            "--bridge",
            "none",
            "--iptables=false",
            "--ip-masq=false",
        ]
        with self.log_file.open("ab") as log:
            subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.wait_ready(timeout)
        return True

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return
            time.sleep(0.3)
        tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-15:])
        raise DockerError(
            f"the private dockerd did not answer on {self.socket} within {timeout:.0f} s; "
            f"its log ({self.log_file}) ends:\n{tail}"
        )

    def stop(self, timeout: float = 30) -> bool:
        """SIGTERM the engine by its PID file (it stops its containers and containerd);
        SIGKILL after ``timeout``. False when it was not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # reap it when this process started it (no zombie left)
        self.pid_file.unlink(missing_ok=True)
        self._unmount_leftovers()
        return True

    def _unmount_leftovers(self) -> None:
        """Mounts the engine leaves behind in its state folder (its default network
        namespace file): without this, ``rm -rf .docker`` fails with "busy"."""
        prefix = f"{self.exec_root}/"
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        points = [m.split()[1] for m in mounts if m.split()[1].startswith(prefix)]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", point], capture_output=True, check=False)
