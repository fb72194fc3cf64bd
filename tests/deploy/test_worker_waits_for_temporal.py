"""A worker started before Temporal (issue: Kubernetes delivery that works on the first
real tilt up): it retries the connect with one clear line per attempt and, past its
bound (ORDERS_TEMPORAL_CONNECT_DEADLINE), exits non-zero without a traceback. Tilt
starts the workers after Temporal (resource_deps)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from orders_shared.catalog import SERVICES
from orders_shared.config import ConfigError
from orders_shared.runtime import (
    TEMPORAL_CONNECT_DEADLINE_ENV,
    VAULT_CONNECT_DEADLINE_ENV,
    temporal_connect_deadline,
    vault_connect_deadline,
)

if TYPE_CHECKING:
    from orders_ops.stack import Stack

ROOT = Path(__file__).resolve().parents[2]


def _run_worker_module() -> Any:
    spec = importlib.util.spec_from_file_location("_run_worker", ROOT / "tilt" / "run_worker.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: nothing listens there


def test_tilt_starts_every_worker_after_temporal(tilt_cluster: Any) -> None:
    resources = {c.kwargs.get("new_name"): c.kwargs for c in tilt_cluster.named("k8s_resource")}
    for service in SERVICES:
        assert "temporal" in resources[service]["resource_deps"], service


def test_the_bound_is_configurable_and_checked() -> None:
    assert temporal_connect_deadline({}) == 120
    assert temporal_connect_deadline({TEMPORAL_CONNECT_DEADLINE_ENV: "5"}) == 5
    for bad in ("soon", "0", "99999"):
        with pytest.raises(ConfigError, match=TEMPORAL_CONNECT_DEADLINE_ENV):
            temporal_connect_deadline({TEMPORAL_CONNECT_DEADLINE_ENV: bad})


@pytest.mark.stack
def test_a_worker_against_a_closed_temporal_port_says_so_and_exits_non_zero(
    stack: Stack,
) -> None:
    argv, env = _run_worker_module().command("orchestrator", metrics_port=_closed_port())
    address = f"127.0.0.1:{_closed_port()}"
    env = {**env, "TEMPORAL_ADDRESS": address, TEMPORAL_CONNECT_DEADLINE_ENV: "4"}
    # the timeout only stops a hung process; the worker's own bound is 4 s
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 4, output[-3000:]
    assert "Traceback" not in output
    events = []
    for line in output.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    attempts = [e for e in events if e.get("event") == "temporal.connect_failed"]
    assert attempts, output[-3000:]
    for n, attempt in enumerate(attempts, start=1):
        assert attempt["server"] == address
        assert attempt["attempt"] == n
        assert attempt["error"] and "\n" not in attempt["error"]
    (failed,) = [e for e in events if e.get("event") == "worker.start_failed"]
    assert address in failed["error"]
    assert "within 4 s" in failed["error"]
    assert "TEMPORAL_ADDRESS" in failed["error"]


def test_the_retry_gives_up_at_the_bound_and_a_signal_stops_it_at_once() -> None:
    from orders_shared.runtime import TemporalUnavailableError, connect_temporal

    calls: list[int] = []

    async def refuse() -> Any:
        calls.append(1)
        raise RuntimeError("Failed client connect: connection refused\n(more detail)")

    async def bounded() -> None:
        with pytest.raises(TemporalUnavailableError, match=r"within 0\.3 s .*connection refused"):
            await connect_temporal(
                refuse, "t:7233", deadline=0.3, stop=asyncio.Event(), first_delay=0.05
            )

    async def stopped() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        with pytest.raises(TemporalUnavailableError, match="stopped while waiting"):
            await connect_temporal(refuse, "t:7233", deadline=3600, stop=stop, first_delay=60)

    asyncio.run(bounded())
    assert len(calls) >= 2  # it did retry before giving up
    calls.clear()
    asyncio.run(asyncio.wait_for(stopped(), 30))  # 30: only so a broken stop cannot hang
    assert len(calls) == 1


def test_the_charts_pass_the_bound_to_every_worker(
    rendered: dict[tuple[str, str], Any],
) -> None:
    for service in SERVICES:
        for mode in ("default", "production"):
            deployment = rendered[(service, mode)].one("Deployment")
            env = {
                e["name"]: e.get("value")
                for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            }
            bound = env[TEMPORAL_CONNECT_DEADLINE_ENV]
            assert temporal_connect_deadline({TEMPORAL_CONNECT_DEADLINE_ENV: bound}) == 120


def test_the_vault_bound_is_configurable_and_checked() -> None:
    assert vault_connect_deadline({}) == 120
    assert vault_connect_deadline({VAULT_CONNECT_DEADLINE_ENV: "7"}) == 7
    with pytest.raises(ConfigError, match=VAULT_CONNECT_DEADLINE_ENV):
        vault_connect_deadline({VAULT_CONNECT_DEADLINE_ENV: "later"})


@pytest.mark.stack
def test_a_worker_against_a_closed_vault_port_says_so_and_exits_non_zero(stack: Stack) -> None:
    """A wrong VAULT_ADDR (or a Vault still starting): retried with one line per attempt,
    then one line naming the address and the fix, exit 5, no traceback."""
    argv, env = _run_worker_module().command("validate", metrics_port=_closed_port())
    address = f"http://127.0.0.1:{_closed_port()}"
    env = {**env, "VAULT_ADDR": address, VAULT_CONNECT_DEADLINE_ENV: "3"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 5, output[-3000:]
    assert "Traceback" not in output
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    attempts = [e for e in events if e.get("event") == "vault.connect_failed"]
    assert attempts and all(a["server"] == address for a in attempts), output[-3000:]
    (failed,) = [e for e in events if e.get("event") == "worker.start_failed"]
    assert address in failed["error"] and "VAULT_ADDR" in failed["error"]
