"""``orders-ops new-service``: a scaffolded service is ready to fill in.

In a temporary copy of the repository (its git-tracked files; this checkout's
``.venv`` is reused, with the copy's sources first on ``PYTHONPATH`` since the new
member is not installed): the scaffold passes lint, format and type checks, the
chart and checkov checks of ``tests/deploy`` and its own generated tests, and its
worker, with its identity, policy and database role bootstrapped into the session's
real stack, starts and logs in to Vault as ``orders-<name>``. Everything the bootstrap added to
the stack is removed again afterwards, so later tests see the catalog's services.

The name is the README's example (``loyalty``) unless the checkout already has a
service of that name (someone ran the example): then the first free ``loyaltyN``,
so these tests pass on a repository that has just scaffolded a service.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import hvac.exceptions
import pytest

from orders_ops.plan import plan
from orders_ops.scaffold import check_names, new_service
from orders_ops.scaffold_files import ScaffoldError
from orders_ops.scaffold_registries import Insert, existing_services
from orders_ops.settings import HOST
from orders_ops.stack import Stack
from orders_ops.testing import free_port
from orders_ops.vault_bootstrap import (
    JWT_MOUNT,
    KUBERNETES_MOUNT,
    configure_vault,
    root_client,
)
from orders_ops.vault_database import configure_database_engine
from orders_shared.catalog import STEP_QUEUES

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_name(base: str = "loyalty") -> str:
    """``base``, or ``base2``, ``base3``, ... : the first no service of this checkout has."""
    taken = set(existing_services(ROOT)) | {p.name for p in (ROOT / "services").iterdir()}
    taken |= {p.name for p in (ROOT / "helm").iterdir()}
    return next(n for n in (base, *(f"{base}{i}" for i in range(2, 100))) if n not in taken)


NAME = _free_name()
ACTIVITY = "award_points"


@dataclass(frozen=True)
class Copy:
    root: Path
    env: dict[str, str]  # this process's, with the copy's sources first on PYTHONPATH
    printed: str

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )


def _copy_repository(target: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        source = ROOT / rel
        if source.is_file():  # a tracked file deleted in the worktree is skipped
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / rel)


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory: pytest.TempPathFactory) -> Copy:
    root = tmp_path_factory.mktemp("repo")
    _copy_repository(root)
    done = subprocess.run(
        [BIN / "orders-ops", "new-service", NAME, "--activity", ACTIVITY, "--root", root],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    sources = [root / "shared/src", root / "ops/src", *sorted(root.glob("services/*/src"))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, sources))}
    return Copy(root, env, done.stdout)


# --------------------------------------------------------------------------- the command


def test_dry_run_lists_what_it_would_do_and_writes_nothing() -> None:
    listing = new_service(ROOT, NAME, [ACTIVITY], dry_run=True).splitlines()
    assert listing[0] == "dry run: nothing written"
    assert f"create  services/{NAME}/src/orders_{NAME}/worker.py" in listing
    assert f"create  helm/{NAME}/values.schema.json" in listing
    assert "change  shared/src/orders_shared/catalog.py" in listing
    assert not any("Dockerfile" in line for line in listing)  # the shared Dockerfile builds it
    assert not (ROOT / "services" / NAME).exists()


@pytest.mark.parametrize(
    ("name", "activities", "says"),
    [
        ("Loyalty", [ACTIVITY], "use 2-20 lowercase letters and digits"),
        (f"{NAME}-points", [ACTIVITY], "use 2-20 lowercase letters and digits"),
        ("notify", [ACTIVITY], "service 'notify' exists already"),
        ("shared", [ACTIVITY], "reserved by the platform"),
        (NAME, [], "give at least one --activity"),
        (NAME, ["class"], "activity name 'class'"),
        (NAME, [ACTIVITY, ACTIVITY], "given twice"),
    ],
)
def test_bad_names_are_refused_with_the_fix(name: str, activities: list[str], says: str) -> None:
    with pytest.raises(ScaffoldError, match=says):
        check_names(ROOT, name, activities)


def test_a_missing_anchor_names_the_file_and_the_anchor() -> None:
    with pytest.raises(ScaffoldError, match=r"Tiltfile: expected the anchor 'SERVICES = \[' once"):
        Insert("Tiltfile", "SERVICES = [", "x").apply("no list here")


def test_the_command_says_what_to_do_next(scaffolded: Copy) -> None:
    assert "next:" in scaffolded.printed
    assert "python3 -m uv lock" in scaffolded.printed
    assert not (scaffolded.root / f"services/{NAME}/Dockerfile").exists()


def test_the_workspace_locks_with_the_new_member(scaffolded: Copy) -> None:
    """The step the command prints next, as printed (uv.lock is not written by the command).

    Online, like the printed step: the lock resolves every Python the workspace allows
    (3.11 to 3.13), and a fresh uv cache holds only what ``uv sync --frozen`` fetched for
    this interpreter, so ``--offline`` failed on a machine that never locked online.
    """
    assert "python3 -m uv lock && make install" in scaffolded.printed
    done = scaffolded.run("python3", "-m", "uv", "lock")
    assert done.returncode == 0, done.stderr
    assert f"Added orders-{NAME} v0.1.0" in done.stderr
    assert f'name = "orders-{NAME}"' in (scaffolded.root / "uv.lock").read_text()


def test_an_order_does_not_wait_for_a_worker_the_workflow_never_calls(scaffolded: Copy) -> None:
    """The new service is in the catalog (identity, policy, role, worker) but not yet a step
    of the order workflow, so ``STEP_QUEUES`` (the queues an order needs a worker on) is
    unchanged: without this, every order of a checkout with a fresh scaffold failed with
    'no worker polls task queue orders-<name>' (the test stack starts no worker for it)."""
    code = (
        "from orders_shared.catalog import SERVICES, STEP_QUEUES; "
        f"print(repr(SERVICES[{NAME!r}].workflow_step), ' '.join(STEP_QUEUES))"
    )
    done = scaffolded.run(sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr
    step, queues = done.stdout.split(" ", 1)
    assert step == "False"
    assert queues.split() == list(STEP_QUEUES)
    assert f"orders-{NAME}" not in queues.split()


# --------------------------------------------------------------------------- the scaffold


CHECKS = {
    "mypy": [
        str(BIN / "mypy"),
        f"services/{NAME}/src",
        f"shared/src/orders_shared/contracts/{NAME}.py",
    ],
    # its own tests, and the deploy tests, which read the catalog: so they render, lint and
    # schema-check the new chart, its README table, values contract and Tilt resource
    "pytest": [
        sys.executable,
        "-m",
        "pytest",
        "-v",
        "-p",
        "no:cacheprovider",
        f"services/{NAME}/tests",
        "tests/deploy/test_charts.py",
        "tests/deploy/test_chart_readmes.py",
        "tests/deploy/test_values_contract.py",
        "tests/deploy/test_tiltfile.py",
        "tests/deploy/test_checkov.py",
        "ops/tests/test_grant_doc.py",
        "-k",
        f"{NAME} or every_chart or every_worker_chart or local_mode or documented_matrix"
        " or checkov",
    ],
}


@pytest.fixture(scope="module")
def checked(
    scaffolded: Copy, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[int, str]]:
    """Exit code and output of each slow check, run side by side (they share nothing)."""
    cache = tmp_path_factory.mktemp("mypy") / "cache"
    if (ROOT / ".mypy_cache").is_dir():  # copies keep mtimes: unchanged modules are not redone
        shutil.copytree(ROOT / ".mypy_cache", cache)
    argvs = {**CHECKS, "mypy": [*CHECKS["mypy"], "--cache-dir", str(cache)]}
    running = {
        name: subprocess.Popen(
            argv,
            cwd=scaffolded.root,
            env=scaffolded.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, argv in argvs.items()
    }
    results = {}
    try:
        for name, proc in running.items():
            out, _ = proc.communicate(timeout=240)
            results[name] = (proc.returncode, out)
    finally:
        for proc in running.values():
            if proc.poll() is None:  # only after a timeout: leave nothing running
                proc.kill()
                proc.wait()
    return results


def test_lint_and_format_pass(scaffolded: Copy) -> None:
    for argv in ([BIN / "ruff", "check", "."], [BIN / "ruff", "format", "--check", "."]):
        done = scaffolded.run(*map(str, argv))
        assert done.returncode == 0, done.stdout + done.stderr


def test_types_pass(checked: dict[str, tuple[int, str]]) -> None:
    code, out = checked["mypy"]
    assert code == 0, out
    assert "Success: no issues found in 4 source files" in out


def test_its_generated_tests_pass(checked: dict[str, tuple[int, str]]) -> None:
    code, out = checked["pytest"]
    assert code == 0, out[-4000:]
    for test in (
        "test_the_worker_hosts_every_activity_of_the_contract",
        "test_the_role_and_queue_are_the_catalog_entry",
        f"test_{ACTIVITY}_stub_returns_its_output",
    ):
        assert f"services/{NAME}/tests/test_activities.py::{test} PASSED" in out


def test_chart_tilt_and_grant_doc_checks_pass(checked: dict[str, tuple[int, str]]) -> None:
    code, out = checked["pytest"]
    assert code == 0, out[-4000:]
    for test_id in (
        f"test_chart_renders_and_every_manifest_validates[{NAME}-default] PASSED",
        f"test_chart_renders_and_every_manifest_validates[{NAME}-production] PASSED",
        f"test_chart_passes_strict_lint[{NAME}-production] PASSED",
        f"test_schema_rejects_replicas_that_are_not_a_number[{NAME}] PASSED",
        f"test_readme_values_table_is_the_schema[{NAME}] PASSED",
        f"test_values_and_schema_name_the_same_keys[{NAME}] PASSED",
        "test_every_worker_chart_has_the_same_global_block_and_global_schema PASSED",
        "test_local_mode_runs_the_stack_and_every_worker_process PASSED",
        f"test_local_worker_gets_exactly_the_stack_worker_env[{NAME}] PASSED",
        "test_the_documented_matrix_is_the_applied_matrix PASSED",
        # checkov over the rendered charts, the new one among them: no failed check, and
        # the reasoned skips counted from the catalog (one more worker chart)
        "test_rendered_manifests_fail_no_checkov_check PASSED",
        "test_every_kubernetes_skip_is_one_of_the_reasoned_ones PASSED",
    ):
        assert test_id in out


# --------------------------------------------------------------------------- on the real stack

BOOTSTRAP = """
import asyncio, json, sys
from orders_ops import issuer
from orders_ops.database import bootstrap_database
from orders_ops.settings import StackSettings
from orders_ops.stack import worker_env
from orders_ops.vault_bootstrap import configure_vault, root_client
from orders_ops.vault_database import configure_database_engine
from orders_shared.catalog import STEP_QUEUES
s = StackSettings.from_env()
asyncio.run(bootstrap_database(s))
client = root_client(s)
configure_database_engine(client, s)
configure_vault(client, s)
from orders_ops.plan import plan
p = plan(s)  # the copy's declarations against the stack it bootstrapped
print(json.dumps({"env": worker_env(s, sys.argv[1]), "token": issuer.mint(s, sys.argv[1]),
                  "plan": p.exit_code(), "plan_text": p.render(verbose=True)}))
"""


def _remove_from_stack(stack: Stack) -> None:
    """Undo the copy's bootstrap: the stack is again what this checkout's catalog says."""
    s = stack.settings
    client = root_client(s)
    try:
        client.sys.revoke_prefix(f"database/creds/order-{NAME}")
        for path in (
            f"auth/{JWT_MOUNT}/role/orders-{NAME}",
            f"auth/{KUBERNETES_MOUNT}/role/orders-{NAME}",
            f"database/roles/order-{NAME}",
            f"sys/policies/acl/orders-{NAME}",
        ):
            try:
                client.adapter.delete(f"/v1/{path}")
            except hvac.exceptions.InvalidPath:
                pass
        key = f"orders-payload-{NAME}"
        try:
            client.secrets.transit.update_key_configuration(key, deletion_allowed=True)
            client.secrets.transit.delete_key(key)
        except hvac.exceptions.InvalidPath:
            pass
        configure_database_engine(client, s)  # allowed_roles without it
        configure_vault(client, s)  # the orchestrator's policy without its payload key
    finally:
        client.adapter.close()

    async def drop_role() -> None:
        conn = await asyncpg.connect(s.admin_dsn(s.database))
        try:
            if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", f"order_{NAME}"):
                await conn.execute(f"DROP OWNED BY order_{NAME}; DROP ROLE order_{NAME}")
        finally:
            await conn.close()

    asyncio.run(drop_role())


def _metrics_port() -> int:
    """A port free with the one 1000 above it (the worker's SDK metrics port)."""
    while True:
        port = free_port()
        with socket.socket() as s:
            if port + 1000 < 65536 and s.connect_ex((HOST, port + 1000)) != 0:
                return port


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def bootstrapped(scaffolded: Copy, stack: Stack) -> Iterator[dict[str, Any]]:
    done = scaffolded.run(sys.executable, "-c", BOOTSTRAP, NAME)
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        yield json.loads(done.stdout.splitlines()[-1])
    finally:
        _remove_from_stack(stack)


@pytest.mark.stack
def test_it_plans_clean_and_this_checkout_plans_it_as_removed(
    bootstrapped: dict[str, Any], stack: Stack
) -> None:
    """The copy's 'orders-bootstrap plan' after its bootstrap: in sync, the new service's
    objects among those planned. This checkout, whose catalog lacks it, plans its policy
    and login role as made by the code and no longer declared (apply would delete them)."""
    text = bootstrapped["plan_text"]
    assert bootstrapped["plan"] == 0, text
    for line in (
        f"= vault policy orders-{NAME}",
        f"= vault auth role auth/jwt/role/orders-{NAME}",
        f"= vault database role database/roles/order-{NAME}",
        f"= vault transit key transit/keys/orders-payload-{NAME}",
        f"= postgres group role order_{NAME}",
    ):
        assert line in text.splitlines(), text
    here = plan(stack.settings)
    removed = {(e.kind, e.name) for e in here.entries if e.action == "removed"}
    assert ("vault policy", f"orders-{NAME}") in removed, here.render()
    assert ("vault auth role", f"auth/jwt/role/orders-{NAME}") in removed, here.render()


@pytest.mark.stack
def test_its_worker_starts_and_logs_in_as_itself(
    scaffolded: Copy, bootstrapped: dict[str, Any], tmp_path: Path
) -> None:
    token = tmp_path / "token.jwt"  # not in the stack's identity folder: nothing to clean up
    token.write_text(bootstrapped["token"])
    token.chmod(0o600)
    port = _metrics_port()
    env = {
        **bootstrapped["env"],
        "VAULT_TOKEN_FILE": str(token),
        "ORDERS_METRICS_PORT": str(port),
        "PYTHONPATH": scaffolded.env["PYTHONPATH"],  # the new member is not installed
    }
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-c", f"from orders_{NAME}.worker import main; main()"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60  # a bound for a hang, not a timed assertion
        while not _ready(port) and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _ready(port), log.read_text()[-3000:]
    finally:
        worker.terminate()
        code = worker.wait(timeout=60)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    login = next(e for e in lines if e.get("event") == "vault.login")
    started = next(e for e in lines if e.get("event") == "worker.started")
    assert (login["method"], login["role"]) == ("jwt", f"orders-{NAME}")
    assert started["vault_policies"] == [f"orders-{NAME}"]
    assert started["task_queue"] == f"orders-{NAME}"
    assert started["db_roles"] == [f"order-{NAME}"]
    assert code == 0
