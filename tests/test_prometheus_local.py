"""``orders-stack up --metrics``: a real Prometheus scraping the real workers and codec
server, with the charts' alert rules, answering the README's queries from a real run.

Prometheus is Debian's package ``prometheus``: installed when missing (as root). Where it
cannot be installed the tests skip, saying why; in CI (``CI`` set) they fail instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import support  # tests/ is on pytest's pythonpath

from orders_ops.identities import local_session
from orders_ops.prometheus_local import (
    LocalPrometheus,
    PrometheusMissing,
    ensure_installed,
    metrics_up,
)
from orders_ops.provider_sim import ProviderAdmin
from orders_ops.stack import Stack, wait_gone
from orders_shared.catalog import DB_ROLES, SERVICES
from orders_shared.client import connect, submit_order
from orders_shared.codec import VaultTransit
from orders_shared.contracts.orchestrator import OrderWorkflowResult
from orders_shared.order_input import parse_order

pytestmark = pytest.mark.stack

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Metrics people can look at"
JOBS = {f"orders-{name}-metrics" for name in (*SERVICES, "codec-server")}


def readme_queries() -> list[str]:
    """Every query in the README's ```promql blocks of the metrics section."""
    text = README.read_text()
    start = text.index(SECTION)
    section = text[start : text.index("\n## ", start + len(SECTION))]
    blocks = re.findall(r"```promql\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def readme_pages() -> list[str]:
    """The paths of the README's links to the local Prometheus (http://127.0.0.1:9090/...)."""
    return re.findall(r"\(http://127\.0\.0\.1:9090(/[^)\s]*)\)", README.read_text())


def example_order(order_id: str, sku: str) -> dict[str, Any]:
    """``examples/order.json`` with the test's own order id and SKU."""
    data: dict[str, Any] = json.loads((README.parent / "examples" / "order.json").read_text())
    return data | {"order_id": order_id, "lines": [{"sku": sku, "quantity": 1}]}


def api(prometheus: LocalPrometheus, path: str, **params: str) -> Any:
    url = f"{prometheus.url}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (loopback)
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]


def query(prometheus: LocalPrometheus, promql: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = api(prometheus, "query", query=promql)["result"]
    return result


@pytest.fixture(scope="module")
def prometheus(workers: Stack) -> Iterator[LocalPrometheus]:
    """The stack's own Prometheus, started the way ``orders-stack up --metrics`` does."""
    try:
        ensure_installed(echo=lambda _line: None)
    except PrometheusMissing as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Prometheus here and it cannot be installed: {exc}")
    prom = workers.prometheus
    already = prom.pid() is not None
    metrics_up(prom, timeout=60, echo=lambda _line: None)
    yield prom
    if not already:
        prom.stop()


def test_every_prometheus_page_the_readme_links_exists(prometheus: LocalPrometheus) -> None:
    """Debian's build has only the classic UI: a link to the newer UI's pages is a 404."""
    pages = readme_pages()
    assert len(pages) >= 3, pages  # graph, targets, alerts
    for page in pages:
        with urllib.request.urlopen(f"{prometheus.url}{page}", timeout=10) as resp:  # noqa: S310
            assert resp.status == 200, page
            assert resp.geturl().endswith(page), (page, resp.geturl())  # not sent elsewhere


def test_every_process_is_scraped_and_the_charts_rules_are_loaded(
    prometheus: LocalPrometheus,
) -> None:
    deadline = time.monotonic() + 20  # the first scrape of each target (every 2 s)
    while True:
        targets = api(prometheus, "targets", state="active")["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        if set(health.values()) == {"up"} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert health == dict.fromkeys(JOBS, "up")

    groups = {g["name"]: g for g in api(prometheus, "rules", type="alert")["groups"]}
    assert set(groups) == {spec.identity for spec in SERVICES.values()}
    payment = {r["name"]: r["health"] for r in groups["orders-payment"]["rules"]}
    assert payment == {
        "OrdersVaultTokenNearExpiry": "ok",
        "OrdersDbLeaseSecondsLeftLow": "ok",
        "OrdersReadinessFailing": "ok",
        "OrdersActivityFailureRate": "ok",
        "OrdersCompensationStuck": "ok",
    }
    loaded = sum(len(g["rules"]) for g in groups.values())
    promtool = shutil.which("promtool", path="/usr/bin:/usr/local/bin")
    assert promtool, "the prometheus package brings promtool"
    check = subprocess.run(
        [promtool, "check", "rules", str(prometheus.rules_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {loaded} rules found" in check.stdout, check.stdout


@pytest.fixture
async def admin(workers: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(workers.settings.admin_dsn("orders"))
    yield conn
    await conn.close()


async def test_the_readme_queries_answer_from_a_real_run(
    prometheus: LocalPrometheus, workers: Stack, admin: asyncpg.Connection
) -> None:
    """One order held at its payment (the provider answers HTTP 500 for its charge, so the
    step is retried): every README query returns series from this run, and the "stuck"
    one names the payment step and its cause. Then the provider recovers and it completes."""
    queries = readme_queries()
    assert len(queries) == 4, queries
    settings = workers.settings
    sku = await support.create_product(admin, price_cents=500, on_hand=5, prefix="PROM")
    order_id = support.unique("prom").lower()
    provider = ProviderAdmin(settings.provider_url, settings.provider_admin_token_file)
    await provider.fault("error", on="charge", key_prefix=f"{order_id}:")
    session = await local_session(settings, "client")
    try:
        transit = VaultTransit(session)
        client = await connect(settings.temporal_address, transit)
        order = parse_order(example_order(order_id, sku))
        await submit_order(client, order, wait=False, transit=transit)

        answers: dict[str, list[dict[str, Any]]] = {}
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            answers = {q: query(prometheus, q) for q in queries}
            if all(answers.values()):
                break
            await asyncio.sleep(1)
        assert {q: bool(a) for q, a in answers.items()} == dict.fromkeys(queries, True)

        vault, leases, tokens, stuck = (answers[q] for q in queries)
        assert {r["metric"]["service"] for r in vault} >= set(SERVICES)
        assert all(float(r["value"][1]) > 0 for r in vault)
        assert {r["metric"]["db_role"] for r in leases} == set(DB_ROLES)
        assert all(float(r["value"][1]) > 0 for r in leases)
        assert {r["metric"]["service"] for r in tokens} == set(SERVICES)
        assert all(float(r["value"][1]) > 0 for r in tokens)
        causes = {(r["metric"]["service"], r["metric"]["activity"]): r for r in stuck}
        assert causes[("payment", "process_payment")]["metric"]["error_type"] == (
            "ProviderUnavailable"
        )

        await provider.clear(key_prefix=f"{order_id}:")
        handle = client.get_workflow_handle(order_id, result_type=OrderWorkflowResult)
        assert (await handle.result()).status == "completed"
    finally:
        await provider.clear(key_prefix=f"{order_id}:")
        await session.close()


def test_status_shows_it_and_it_is_stopped_by_pid(
    prometheus: LocalPrometheus, workers: Stack
) -> None:
    rows = {r["server"]: r for r in workers.status()}
    pid = prometheus.pid()
    assert pid is not None
    assert rows["prometheus"]["pid"] == pid and rows["prometheus"]["health"] == "up"
    assert rows["prometheus"]["address"] == f"http 127.0.0.1:{workers.settings.prometheus_port}"
    assert prometheus.stop()  # what `orders-stack down` calls first
    assert wait_gone(pid, 0.5) and prometheus.pid() is None
    assert not prometheus.pid_file.exists()
    assert {r["server"]: r for r in workers.status()}["prometheus"]["health"] == "down"
