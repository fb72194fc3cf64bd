"""Fixtures for the database tests: a bootstrapped order database and Vault-issued logins."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import hvac
import pytest
import pytest_asyncio

from orders_ops.database import bootstrap_database
from orders_ops.settings import HOST, StackSettings
from orders_ops.stack import Stack
from orders_ops.vault_database import configure_database_engine


@dataclass(frozen=True)
class IssuedLogin:
    db_role: str
    username: str
    password: str
    lease_id: str


@pytest.fixture(scope="session")
def vault(stack: Stack) -> hvac.Client:
    client = hvac.Client(url=stack.settings.vault_addr, token=stack.settings.root_token())
    assert client.is_authenticated()
    return client


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def database_ready(stack: Stack, vault: hvac.Client) -> StackSettings:
    """Both bootstraps have run (idempotent, so harmless once bootstrap.py runs them too)."""
    await bootstrap_database(stack.settings)
    configure_database_engine(vault, stack.settings)
    return stack.settings


@pytest_asyncio.fixture(loop_scope="session")
async def admin_conn(database_ready: StackSettings) -> AsyncIterator[Any]:
    """A superuser connection to the order database, to look at the catalog."""
    conn = await asyncpg.connect(database_ready.admin_dsn(database_ready.database))
    try:
        yield conn
    finally:
        await conn.close()


class Issuer:
    """Issues logins from Vault with the root token and revokes whatever is left at the end."""

    def __init__(self, vault: hvac.Client, settings: StackSettings) -> None:
        self.vault = vault
        self.settings = settings
        self.leases: list[str] = []

    def issue(self, db_role: str) -> IssuedLogin:
        resp = self.vault.secrets.database.generate_credentials(db_role)
        self.leases.append(resp["lease_id"])
        return IssuedLogin(
            db_role, resp["data"]["username"], resp["data"]["password"], resp["lease_id"]
        )

    async def connect(self, login: IssuedLogin) -> Any:
        return await asyncpg.connect(
            host=HOST,
            port=self.settings.postgres_port,
            user=login.username,
            password=login.password,
            database=self.settings.database,
        )

    def revoke_all(self) -> None:
        for lease in self.leases:
            with contextlib.suppress(hvac.exceptions.InvalidRequest):
                self.vault.sys.revoke_lease(lease)
        self.leases.clear()


@pytest.fixture
def issuer(vault: hvac.Client, database_ready: StackSettings) -> Iterator[Issuer]:
    it = Issuer(vault, database_ready)
    try:
        yield it
    finally:
        it.revoke_all()
