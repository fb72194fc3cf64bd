"""Worker operations on real processes: metrics, readiness, graceful shutdown, clean logs."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import hvac
import pytest

from orders_ops.identities import local_session
from orders_ops.stack import Stack, worker_env
from orders_shared.client import connect, submit_order
from orders_shared.codec import VaultTransit
from orders_shared.order_input import parse_order

pytestmark = pytest.mark.stack

SENSITIVE_SAMPLES = ("Katherine Johnson", "katherine@example.com", "4 Orbit Road", "tok_mastercard")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (loopback)
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not in /metrics")


async def _one_order(stack: Stack) -> Any:
    session = await local_session(stack.settings, "client")
    transit = VaultTransit(session)
    client = await connect(stack.settings.temporal_address, transit)
    data = {
        "order_id": f"ops-{uuid.uuid4().hex[:10]}",
        "customer_id": "cust-ops",
        "customer_name": SENSITIVE_SAMPLES[0],
        "email": SENSITIVE_SAMPLES[1],
        "shipping_address": SENSITIVE_SAMPLES[2] + ", Hampton",
        "payment_token": SENSITIVE_SAMPLES[3] + "_5555",
        "lines": [{"sku": "GIZMO-3", "quantity": 1}],
    }
    try:
        submitted = await submit_order(client, parse_order(data), wait=True, transit=transit)
    finally:
        await session.close()
    assert submitted.result is not None
    return submitted.result


async def test_metrics_name_what_happened(workers: Stack) -> None:
    result = await _one_order(workers)
    assert result.status == "completed"
    inventory = next(w for w in workers.workers if w.service == "inventory")
    status, text = _get(f"{inventory.url}/metrics")
    assert status == 200
    assert (
        _metric(
            text,
            "orders_activity_outcomes_total",
            activity="reserve_inventory",
            outcome="completed",
        )
        >= 1
    )
    assert (
        _metric(text, "orders_db_credentials_issued_total", db_role="order-reserve-inventory") >= 1
    )
    assert 0 < _metric(text, "orders_db_lease_seconds_left", db_role="order-reserve-inventory")
    assert 0 < _metric(text, "orders_vault_token_seconds_left")
    assert (
        _metric(text, "orders_vault_requests_total", operation="generate_credentials", outcome="ok")
        >= 1
    )
    # renewals and rotations may not have happened yet in a short run; the claim is that the
    # series exist for this role from the start (so alerts on them see a zero, not a gap):
    # _metric raises when a series is missing
    for name in ("orders_db_lease_renewals_total", "orders_db_lease_rotations_total"):
        _metric(text, name, db_role="order-reserve-inventory")
    # the Temporal SDK's own metrics come through the same endpoint
    assert _metric(text, "temporal_num_pollers", task_queue="orders-inventory") >= 1


def test_readyz_turns_unready_while_vault_is_paused(workers: Stack) -> None:
    validate = next(w for w in workers.workers if w.service == "validate")
    assert _get(f"{validate.url}/readyz")[0] == 200
    vault_pid = workers.vault.pid()
    assert vault_pid is not None
    os.kill(vault_pid, signal.SIGSTOP)
    try:
        time.sleep(1.1)  # past the one-second readiness cache
        status, body = _get(f"{validate.url}/readyz")
        assert status == 503
        report = json.loads(body)
        assert report["status"] == "not ready"
        assert report["checks"]["vault"] != "ok"
        assert report["checks"]["database:order-validate"] == "ok"  # its credential still works
        assert _get(f"{validate.url}/healthz")[0] == 200  # alive all the same: no restart
    finally:
        os.kill(vault_pid, signal.SIGCONT)
    deadline = time.monotonic() + 15
    while _get(f"{validate.url}/readyz")[0] != 200:
        assert time.monotonic() < deadline, "not ready again after Vault came back"
        time.sleep(0.3)


def test_sigterm_exits_zero_and_leaves_no_lease(stack: Stack) -> None:
    root = hvac.Client(url=stack.settings.vault_addr, token=stack.settings.root_token())

    def leases(role: str) -> list[str]:
        try:
            keys = root.sys.list_leases(f"database/creds/{role}")["data"]["keys"]
        except hvac.exceptions.InvalidPath:
            return []
        return list(keys)

    roles = ("order-reserve-inventory", "order-release-inventory")
    before = {role: set(leases(role)) for role in roles}
    env = worker_env(stack.settings, "inventory")
    env["ORDERS_METRICS_PORT"] = str(stack.settings.worker_metrics_port + 50)
    env["ORDERS_SDK_METRICS_PORT"] = str(stack.settings.worker_metrics_port + 51)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from orders_inventory.worker import main; main()"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{stack.settings.worker_metrics_port + 50}/readyz"
        deadline = time.monotonic() + 30
        while True:
            try:
                if _get(url)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, "worker died during start-up"
            assert time.monotonic() < deadline, "worker never became ready"
            time.sleep(0.2)
        during = {role: set(leases(role)) - before[role] for role in roles}
        assert all(len(new) == 1 for new in during.values()), during
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    events = [json.loads(line)["event"] for line in proc.stderr.read().splitlines() if line]
    assert events[-1] == "worker.stopped"
    assert events.count("db.credential_revoked") == 2
    for role in roles:
        assert not (set(leases(role)) & during[role]), f"{role} lease left in Vault"


def _scan_logs(settings: Any) -> int:
    """Every worker log line: no secret value, no personal sample, nothing token-like."""
    forbidden = [settings.root_token()]
    forbidden += [p.read_text().strip() for p in settings.secrets_dir.glob("postgres-*password")]
    forbidden += list(SENSITIVE_SAMPLES)
    token_like = re.compile(r"\b(hvs|hvb|s)\.[A-Za-z0-9]{20,}")
    lines = 0
    for log in sorted(settings.log_dir.glob("worker-*.log")):
        for line in Path(log).read_text(errors="replace").splitlines():
            lines += 1
            for value in forbidden:
                assert value not in line, f"{log.name} leaks a secret or personal value"
            assert not token_like.search(line), f"{log.name} has a token-like value"
            # the word itself may appear in an error type (InvalidPasswordError); a value may not
            assert not re.search(r'"password"\s*:\s*"(?!\[redacted\])', line), log.name
    return lines


async def test_no_log_line_holds_a_secret_or_personal_data(workers: Stack) -> None:
    # its own order through every worker, so the scan does not depend on test order
    result = await _one_order(workers)
    assert result.status == "completed"
    assert await asyncio.to_thread(_scan_logs, workers.settings) > 20
