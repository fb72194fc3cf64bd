"""Demo data only in development (issue: Kubernetes delivery that works on the first real
tilt up and helm install): the demo catalogue (NNNN_demo_*.sql) is applied by the local
stack and, in a cluster, only when the bootstrap chart's ``bootstrap.seedDemoData`` says
so (false by default and in the production example; Tilt sets it on kind)."""

from __future__ import annotations

import dataclasses
import secrets
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from orders_ops.database import (
    SEED_DEMO_DATA_ENV,
    DatabaseBootstrapError,
    bootstrap_database,
    load_migrations,
    seed_demo_data_wanted,
)
from orders_ops.settings import StackSettings

if TYPE_CHECKING:
    from conftest import Rendered
    from orders_ops.stack import Stack


def _job_env(rendered: dict[tuple[str, str], Rendered], mode: str) -> dict[str, str]:
    pod = rendered[("bootstrap", mode)].one("Job")["spec"]["template"]["spec"]
    return {e["name"]: e.get("value", "") for e in pod["containers"][0]["env"]}


@pytest.mark.parametrize("mode", ["default", "production"])
def test_the_cluster_bootstrap_seeds_nothing_unless_asked(
    rendered: dict[tuple[str, str], Rendered], mode: str
) -> None:
    assert _job_env(rendered, mode)[SEED_DEMO_DATA_ENV] == "false"


def test_tilt_asks_for_the_demo_data_on_kind(tilt_cluster: Any) -> None:
    (bootstrap,) = [c for c in tilt_cluster.named("helm") if c.args[0] == "helm/bootstrap"]
    assert "bootstrap.seedDemoData=true" in bootstrap.kwargs["set"]


def test_the_demo_migration_is_known_as_demo_data() -> None:
    demo = [m.name for m in load_migrations() if m.demo_data]
    assert demo == ["0002_demo_seed.sql"]
    assert "INSERT INTO app.products" in next(m.sql for m in load_migrations() if m.demo_data)
    schema = [m for m in load_migrations() if not m.demo_data]
    assert schema and not any("INSERT INTO app.products" in m.sql for m in schema)


def test_who_wants_the_demo_data() -> None:
    local = StackSettings.from_env()
    cluster = dataclasses.replace(local, mode="cluster")
    assert seed_demo_data_wanted(local, {}) is True  # the demo and the tests expect it
    assert seed_demo_data_wanted(cluster, {}) is False
    assert seed_demo_data_wanted(cluster, {SEED_DEMO_DATA_ENV: "false"}) is False
    assert seed_demo_data_wanted(cluster, {SEED_DEMO_DATA_ENV: "true"}) is True
    with pytest.raises(DatabaseBootstrapError, match=SEED_DEMO_DATA_ENV):
        seed_demo_data_wanted(cluster, {SEED_DEMO_DATA_ENV: "yes please"})


async def _products(settings: StackSettings) -> int:
    conn = await asyncpg.connect(settings.admin_dsn(settings.database))
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM app.products")
        return count
    finally:
        await conn.close()


@pytest.mark.stack
async def test_a_database_bootstrapped_without_demo_data_has_none_until_asked(
    stack: Stack,
) -> None:
    """Real PostgreSQL: a fresh database gets the schema (every other migration) and no
    product; the same bootstrap with the seed asked for adds the catalogue then."""
    settings = dataclasses.replace(stack.settings, database=f"orders_noseed_{secrets.token_hex(4)}")
    try:
        changes = await bootstrap_database(settings, seed_demo_data=False)
        assert "applied migration 0001_orders_schema.sql" in changes
        assert "applied migration 0005_payment_refund_outcome.sql" in changes
        assert not [c for c in changes if "demo" in c]
        assert await _products(settings) == 0
        assert await bootstrap_database(settings, seed_demo_data=False) == []
        changes = await bootstrap_database(settings, seed_demo_data=True)
        assert changes == ["applied migration 0002_demo_seed.sql"]
        assert await _products(settings) == 4
    finally:
        conn = await asyncpg.connect(stack.settings.admin_dsn())
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{settings.database}" WITH (FORCE)')
        finally:
            await conn.close()
