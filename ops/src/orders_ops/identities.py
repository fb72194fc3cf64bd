"""Logging in as one of the local identities, the way that process itself would.

For the demo, the CLI defaults and tests in local process mode: a Vault session
for identity ``name`` (a service, or ``client``) with the token file the local
issuer keeps fresh, at the local stack's Vault.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from orders_ops import issuer
from orders_ops.settings import StackSettings
from orders_shared.config import VaultConfig
from orders_shared.identity import VaultSession


async def local_session(
    settings: StackSettings,
    name: str,
    request_timeout: float = 10.0,
    *,
    token_file: Path | None = None,
) -> VaultSession:
    """A logged-in session as ``orders-<name>`` (close it when done: it revokes its token)."""
    config = VaultConfig(
        addr=settings.vault_addr,
        auth_method="jwt",
        auth_mount="jwt",
        auth_role=f"orders-{name}",
        token_file=token_file or settings.token_file(name),
        request_timeout=request_timeout,
    )
    return await VaultSession.open(config)


@contextlib.asynccontextmanager
async def probe_sessions(
    settings: StackSettings, names: list[str], purpose: str
) -> AsyncIterator[dict[str, VaultSession]]:
    """Sessions as ``orders-<name>`` for each name, each a marked probe: the same identity
    and policy as the worker's own, but logged in with a token the issuer signed with
    ``issuer.PROBE_CLAIM`` = ``purpose``, so Vault's audit log shows the token's metadata
    ``probe`` on every request (what ``orders-audit`` tells a probe's expected denials by).
    The tokens live in a private temporary folder and are revoked on exit."""
    sessions: dict[str, VaultSession] = {}
    with tempfile.TemporaryDirectory(prefix="orders-probe-") as folder:
        try:
            for name in names:
                path = Path(folder) / f"{name}.jwt"
                path.write_text(issuer.mint_probe(settings, name, purpose))
                sessions[name] = await local_session(settings, name, token_file=path)
            yield sessions
        finally:
            for session in sessions.values():
                await session.close()
