"""How activity code reaches Postgres: by database role, never by password.

Activities ask a :class:`ConnectionSource` for a connection *as a Vault
database role* (``order-reserve-inventory``...). The production source
(:class:`orders_shared.leases.LeasedPools`) holds one Vault lease and one
asyncpg pool per role and rotates them underneath; a benchmark or a test can
swap in another source without touching activity code. The runtime needs
nothing more from a source than this protocol (readiness checks take the roles
to probe; :func:`orders_shared.runtime.shutdown` closes it, logs if that fails,
and revokes the Vault token regardless).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A pooled connection or a plain one: activity code uses only what both offer.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


class ConnectionSource(Protocol):
    def connection(self, db_role: str) -> AbstractAsyncContextManager[Connection]:
        """A pooled connection logged in with a credential of ``db_role``."""
        ...

    async def close(self) -> None:
        """Release every connection and revoke every credential this source holds."""
        ...
