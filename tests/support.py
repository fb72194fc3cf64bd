"""Test-only helpers for running the order workflow against the real stack.

:class:`GroupRoleSource` is a :class:`orders_shared.db.ConnectionSource` that
logs in as the Postgres superuser and then ``SET ROLE``s to the Vault role's
group role, so every activity runs with exactly its group role's privileges
(``current_user`` is the group role) without going through Vault. The Vault
path is exercised by the lease tests; this one isolates the business logic.

:class:`Identities` logs in as each identity (service or client) with the token
files of the local issuer, for sealing and opening order fields as the real
processes do.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import asyncpg
import hvac

from orders_ops.identities import local_session
from orders_ops.settings import StackSettings
from orders_shared.catalog import group_role
from orders_shared.codec import VaultTransit
from orders_shared.identity import VaultSession


class GroupRoleSource:
    """Superuser pool + ``SET ROLE <group role>`` per checkout."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.roles_used: list[str] = []
        self._faults: dict[str, list[BaseException]] = {}

    def fail_next(self, db_role: str, error: BaseException, times: int = 1) -> None:
        """Make the next ``times`` checkouts for ``db_role`` raise ``error``, as a
        revoked or expired credential would (an infrastructure fault)."""
        self._faults.setdefault(db_role, []).extend([error] * times)

    def take_unused_faults(self) -> dict[str, int]:
        """Clear the faults no checkout consumed and say how many were left per role: a
        test that stopped early must not hand its injected fault to the next test."""
        left = {role: len(errors) for role, errors in self._faults.items() if errors}
        self._faults.clear()
        return left

    @classmethod
    async def create(cls, dsn: str, *, max_size: int = 60) -> GroupRoleSource:
        pool = await asyncpg.create_pool(dsn, min_size=0, max_size=max_size)
        return cls(pool)

    @asynccontextmanager
    async def connection(self, db_role: str) -> AsyncIterator[asyncpg.Connection]:
        role = group_role(db_role)  # KeyError for a role the catalog does not know
        self.roles_used.append(db_role)
        pending = self._faults.get(db_role)
        if pending:
            raise pending.pop(0)
        async with self.pool.acquire() as conn:
            await conn.execute(f"SET ROLE {role}")
            try:
                yield conn
            finally:
                await conn.execute("RESET ROLE")

    async def close(self) -> None:
        await self.pool.close()


def unique(prefix: str) -> str:
    """A fresh id (order id, SKU) so tests never share rows."""
    return f"{prefix}-{uuid.uuid4().hex[:10].upper()}"


async def create_product(
    admin: asyncpg.Connection, *, price_cents: int, on_hand: int, prefix: str = "T"
) -> str:
    """A SKU of the test's own, with stock, created as the superuser."""
    sku = unique(prefix)
    await admin.execute(
        "INSERT INTO app.products (sku, name, unit_price_cents) VALUES ($1, $2, $3)",
        sku,
        f"test product {sku}",
        price_cents,
    )
    await admin.execute("INSERT INTO app.inventory (sku, on_hand) VALUES ($1, $2)", sku, on_hand)
    return sku


async def identity_session(settings: StackSettings, name: str) -> VaultSession:
    """A Vault session logged in as identity ``name`` (a service, or ``client``) with the
    token file the local issuer keeps fresh: exactly what that process would hold."""
    return await local_session(settings, name)


class Identities:
    """One logged-in Vault session (and Transit client) per identity, opened on demand."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.sessions: dict[str, VaultSession] = {}

    async def transit(self, name: str) -> VaultTransit:
        if name not in self.sessions:
            session = await identity_session(self.settings, name)
            # renewed like a worker's: a session-wide fixture outlives the token's TTL
            # when the suite runs longer than it (a CI run failed on exactly that)
            session.start()
            self.sessions[name] = session
        return VaultTransit(self.sessions[name])

    async def close(self) -> None:
        for session in self.sessions.values():
            await session.close()
        self.sessions.clear()


# the demo's report (orders-demo, make demo): each sealed field and the one service it is for
DEMO_FIELD_CONSUMERS = {
    "payment_token": "payment",
    "shipping_address": "fulfill",
    "email": "notify",
    "customer_name": "notify",
}


def demo_openers(out: str) -> dict[str, list[str]]:
    """From the demo's output, for each sealed field, the identities whose Vault attempt
    to open it the report marks ``opens`` (section "Who can unseal which field")."""
    table = out.split("== Who can unseal which field", 1)[1].splitlines()
    header = table[1].split()[1:]
    rows = {line.split()[0]: line.split()[1:] for line in table[2:6]}
    return {
        field: [name for name, v in zip(header, verdicts, strict=True) if v == "opens"]
        for field, verdicts in rows.items()
    }


def demo_env() -> dict[str, str]:
    """The test session's environment for a `make demo` run inside it: its stack's state
    folder and ports (ORDERS_*), no KEEP/CONTAINERS/TLS of the caller's, no outer make's
    flags (a `make -n test` must not turn the demo into a dry run)."""
    drop = {"KEEP", "CONTAINERS", "TLS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    return {k: v for k, v in os.environ.items() if k not in drop}


@contextlib.contextmanager
def short_ttl(root: hvac.Client, db_role: str, ttl: int, max_ttl: int) -> Iterator[None]:
    """Shorten a Vault database role's TTLs for one test, then put them back."""
    path = f"database/roles/{db_role}"
    before = root.read(path)["data"]
    root.write(path, **{**before, "default_ttl": ttl, "max_ttl": max_ttl})
    try:
        yield
    finally:
        root.write(path, **before)
