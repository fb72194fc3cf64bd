"""Logging in as one of the local identities, the way that process itself would.

For the demo, the CLI defaults and tests in local process mode: a Vault session
for identity ``name`` (a service, or ``client``) with the token file the local
issuer keeps fresh, at the local stack's Vault.
"""

from __future__ import annotations

from orders_ops.settings import StackSettings
from orders_shared.config import VaultConfig
from orders_shared.identity import VaultSession


async def local_session(
    settings: StackSettings, name: str, request_timeout: float = 10.0
) -> VaultSession:
    """A logged-in session as ``orders-<name>`` (close it when done: it revokes its token)."""
    config = VaultConfig(
        addr=settings.vault_addr,
        auth_method="jwt",
        auth_mount="jwt",
        auth_role=f"orders-{name}",
        token_file=settings.token_file(name),
        request_timeout=request_timeout,
    )
    return await VaultSession.open(config)
