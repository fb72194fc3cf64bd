"""``orders`` against the real stack: outages, dead ends and resubmits end in one clear line.

The CLI runs as a separate process with only the ``ORDERS_*`` variables of
this stack (no ``TEMPORAL_ADDRESS``, no ``VAULT_ADDR``): every address it uses
comes from those. Vault is paused with SIGSTOP (by the PID in this stack's own
pid file): it accepts connections and answers nothing, like a hung server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cli_support import ORDERS, cli_env, order, run  # ops/tests is on pytest's pythonpath
from temporalio.client import Client

from orders_ops.namespaces import ensure_namespace
from orders_ops.stack import Stack
from orders_ops.testing import free_port


def write_order(tmp_path: Path, data: dict[str, Any]) -> str:
    path = tmp_path / f"{data['order_id']}-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(data))
    return str(path)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("orders: error: ")
    assert "Traceback" not in stderr
    return lines[0]


@contextmanager
def vault_paused(stack: Stack, name: str = "vault") -> Iterator[int]:
    server = next(s for s in stack.servers if s.name == name)
    pid = server.pid()
    assert pid is not None, f"this stack's {name} does not run"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


async def runs_of(stack: Stack, order_id: str) -> int:
    client = await Client.connect(stack.settings.temporal_address)
    return len([w async for w in client.list_workflows(f"WorkflowId = '{order_id}'")])


def test_submit_rides_out_a_vault_pause_and_starts_the_order_once(
    stack: Stack, tmp_path: Path
) -> None:
    oid = f"cli-pause-{uuid.uuid4().hex[:8]}"
    path = write_order(tmp_path, order(oid))
    with vault_paused(stack):
        proc = subprocess.Popen(
            [*ORDERS, "submit", path],
            env=cli_env(stack, VAULT_REQUEST_TIMEOUT="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(4)  # several 1 s request timeouts pass while Vault is stopped
        assert proc.poll() is None, proc.communicate()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    submitted = json.loads(out)
    assert (submitted["order_id"], submitted["deduplicated"]) == (oid, False)
    assert asyncio.run(runs_of(stack, oid)) == 1


def test_submit_rides_out_a_temporal_pause_and_starts_the_order_once(
    stack: Stack, tmp_path: Path
) -> None:
    oid = f"cli-tpause-{uuid.uuid4().hex[:8]}"
    path = write_order(tmp_path, order(oid))
    with vault_paused(stack, "temporal"):
        proc = subprocess.Popen(
            [*ORDERS, "submit", path],
            env=cli_env(stack),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(4)
        assert proc.poll() is None, proc.communicate()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    submitted = json.loads(out)
    assert (submitted["order_id"], submitted["deduplicated"]) == (oid, False)
    assert asyncio.run(runs_of(stack, oid)) == 1


def test_vault_pause_past_the_deadline_is_one_line(stack: Stack, tmp_path: Path) -> None:
    oid = f"cli-deadline-{uuid.uuid4().hex[:8]}"
    with vault_paused(stack):
        proc = run(
            stack,
            "submit",
            write_order(tmp_path, order(oid)),
            ORDERS_CLIENT_DEADLINE="2",
            VAULT_REQUEST_TIMEOUT="1",
        )
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert f"Vault at http://127.0.0.1:{stack.settings.vault_port} did not answer" in line
    assert proc.stdout == ""


@pytest.mark.parametrize("down", ["vault", "temporal"])
def test_a_server_that_is_not_there_is_named_in_one_line(stack: Stack, down: str) -> None:
    port = str(free_port())
    moved = {"vault": "ORDERS_VAULT_PORT", "temporal": "ORDERS_TEMPORAL_PORT"}[down]
    proc = run(stack, "status", "some-order", ORDERS_CLIENT_DEADLINE="1", **{moved: port})
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    name = {
        "vault": f"Vault at http://127.0.0.1:{port}",
        "temporal": f"Temporal at 127.0.0.1:{port}",
    }
    assert f"{name[down]} did not answer within 1 s" in line
    assert "ORDERS_CLIENT_DEADLINE" in line


def test_a_closed_stdout_is_one_line_not_a_traceback(stack: Stack, tmp_path: Path) -> None:
    oid = f"cli-pipe-{uuid.uuid4().hex[:8]}"
    assert run(stack, "submit", write_order(tmp_path, order(oid))).returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` that has already exited
    try:
        proc = run(stack, "status", oid, stdout=write_end)
    finally:
        os.close(write_end)
    assert proc.returncode == 1
    assert "stdout was closed" in one_error_line(proc.stderr)


# The CLI with the order workflow on a task queue of its own, new each run: nobody polls
# it, whichever workers of this Temporal run or ran recently (their pollers stay fresh
# for POLLER_FRESH seconds, so the standard queue would say nothing about this message).
UNPOLLED_CLI = """
import functools, sys
import orders_ops.cli as cli
cli.submit_order = functools.partial(cli.submit_order, task_queue=sys.argv.pop(1))
cli.main()
"""


def test_wait_without_workers_says_so_and_how_to_start_them(stack: Stack, tmp_path: Path) -> None:
    oid = f"cli-noworker-{uuid.uuid4().hex[:8]}"
    queue = f"orders-unpolled-{uuid.uuid4().hex[:8]}"
    submit = ["submit", write_order(tmp_path, order(oid)), "--wait"]
    proc = subprocess.run(
        [sys.executable, "-c", UNPOLLED_CLI, queue, *submit],
        env=cli_env(stack),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    line = one_error_line(proc.stderr)
    assert f"order '{oid}' was started (run " in line
    assert f"no worker polls task queue {queue}: " in line
    assert "orders-stack up --workers" in line
    assert f"orders status {oid}" in line
    # the namespace it looked in: workers of one's own may poll another one
    assert "(namespace 'default': the workers' TEMPORAL_NAMESPACE must be the same)" in line

    status = run(stack, "status", oid)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["workflow_status"] == "RUNNING"
    assert f"orders: warning: no worker polls task queue {queue}: " in status.stderr
    assert "orders-stack up --workers" in status.stderr
    asyncio.run(_terminate(stack, oid))


def test_the_cli_submits_in_temporal_namespace_and_says_which_it_looked_in(
    stack: Stack, tmp_path: Path
) -> None:
    """TEMPORAL_NAMESPACE, as the workers read it (it always used 'default'): in a
    namespace no worker polls, the order is started there and the error names it."""
    namespace = f"cli-other-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_namespace(stack.settings.temporal_address, namespace))
    oid = f"cli-ns-{uuid.uuid4().hex[:8]}"
    proc = run(
        stack,
        "submit",
        write_order(tmp_path, order(oid)),
        "--wait",
        TEMPORAL_NAMESPACE=namespace,
    )
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    line = one_error_line(proc.stderr)
    assert f"order '{oid}' was started" in line
    assert f"(namespace '{namespace}': the workers' TEMPORAL_NAMESPACE must be the same)" in line

    async def where() -> None:
        client = await Client.connect(stack.settings.temporal_address, namespace=namespace)
        desc = await client.get_workflow_handle(oid).describe()
        assert desc.status is not None and desc.status.name == "RUNNING"
        await client.get_workflow_handle(oid).terminate(reason="test cleanup")

    asyncio.run(where())


async def _terminate(stack: Stack, order_id: str) -> None:
    client = await Client.connect(stack.settings.temporal_address)
    await client.get_workflow_handle(order_id).terminate("test done: nobody polls its queue")


def test_resubmit_same_content_dedups_and_other_content_is_refused(
    stack: Stack, tmp_path: Path
) -> None:
    oid = f"cli-dedup-{uuid.uuid4().hex[:8]}"
    first = run(stack, "submit", write_order(tmp_path, order(oid)))
    assert first.returncode == 0, first.stderr
    same = run(stack, "submit", write_order(tmp_path, order(oid)))
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["deduplicated"] is True
    assert json.loads(same.stdout)["run_id"] == json.loads(first.stdout)["run_id"]

    other = run(stack, "submit", write_order(tmp_path, order(oid, name="Grace Hopper")))
    assert other.returncode == 1
    line = one_error_line(other.stderr)
    assert f"order id '{oid}' was already used for an order with other contents" in line
    assert other.stdout == ""
    assert "Grace" not in other.stderr
    assert asyncio.run(runs_of(stack, oid)) == 1
