"""Server-side session limits: set on every group role and on every login Vault issues,
read back from PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from orders_ops.database import ROLE_SETTINGS, read_role_settings
from orders_shared.catalog import DB_ROLES, group_role

pytestmark = pytest.mark.stack


@pytest.mark.parametrize("db_role", DB_ROLES)
async def test_group_roles_carry_the_session_limits(admin_conn: Any, db_role: str) -> None:
    settings = await read_role_settings(admin_conn, group_role(db_role))
    assert {k: settings.get(k) for k in ROLE_SETTINGS} == ROLE_SETTINGS


async def test_a_drifted_limit_is_put_back_by_the_bootstrap(
    admin_conn: Any, database_ready: Any
) -> None:
    from orders_ops.database import bootstrap_database

    role = group_role("order-notify")
    await admin_conn.execute(f"ALTER ROLE {role} RESET statement_timeout")
    assert await bootstrap_database(database_ready) == [
        f"set statement_timeout of role {role} to {ROLE_SETTINGS['statement_timeout']}"
    ]
    assert (await read_role_settings(admin_conn, role))["statement_timeout"] == "10s"


@pytest.mark.parametrize("db_role", ["order-reserve-inventory", "order-notify"])
async def test_an_issued_login_runs_under_the_session_limits(issuer: Any, db_role: str) -> None:
    conn = await issuer.connect(issuer.issue(db_role))
    try:
        shown = {k: await conn.fetchval(f"SHOW {k}") for k in ROLE_SETTINGS}
    finally:
        await conn.close()
    assert shown == ROLE_SETTINGS
