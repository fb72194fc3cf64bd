"""Generated secrets: root-only files locally, a Vault KV mount in cluster mode; never printed.

The stack manager, the database bootstrap and the Vault bootstrap all keep
generated passwords here; one helper keeps the file mode (0600, folder 0700)
the same everywhere, so a secret is never briefly world-readable.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import hvac
import hvac.exceptions

if TYPE_CHECKING:
    from orders_ops.settings import StackSettings


def write_secret(path: Path, value: str) -> None:
    """Create or replace ``path`` with mode 0600 from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: set it
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def read_or_create_secret(path: Path, nbytes: int = 24) -> tuple[str, bool]:
    """The secret in ``path``, generating it first if missing.

    Returns ``(value, created)``: a caller that just created the file knows the
    server-side copy (a role's password) has to be set to match it.
    """
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if value:
        return value, False
    value = secrets.token_urlsafe(nbytes)
    write_secret(path, value)
    return value, True


# --------------------------------------------------------------------------- where they live


class SecretStore(Protocol):
    """Where the bootstrap keeps the passwords it generates (never a worker's business)."""

    def read_or_create(self, name: str) -> tuple[str, bool]: ...

    def read(self, name: str) -> str | None: ...

    def delete(self, name: str) -> None:
        """Forget a secret (a one-time password once it has been handed over)."""
        ...


class FileSecrets:
    """Local process mode: root-only files under ``<state>/secrets``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def read_or_create(self, name: str) -> tuple[str, bool]:
        return read_or_create_secret(self.directory / name)

    def read(self, name: str) -> str | None:
        try:
            return (self.directory / name).read_text().strip() or None
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        (self.directory / name).unlink(missing_ok=True)


class VaultKVSecrets:
    """Cluster mode: a KV v2 mount only the bootstrap's admin token reads (no worker
    policy names it). The Job's filesystem is ephemeral and its admin Secret mount
    read-only, so generated passwords live in Vault, and a rerun finds them."""

    MOUNT = "orders-bootstrap"

    def __init__(self, client: hvac.Client, mount: str = MOUNT) -> None:
        self.client = client
        self.mount = mount
        mounts = client.sys.list_mounted_secrets_engines()["data"]
        if f"{mount}/" not in mounts:
            client.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})

    def read(self, name: str) -> str | None:
        # a KV v2 mount just enabled answers "Upgrading from non-versioned to versioned
        # data" for a moment: wait for it (bounded) instead of failing a first install
        for attempt in range(50):
            try:
                resp = self.client.secrets.kv.v2.read_secret_version(
                    path=name, mount_point=self.mount, raise_on_deleted_version=True
                )
                break
            except hvac.exceptions.InvalidPath:
                return None
            except hvac.exceptions.InvalidRequest as exc:
                if "Upgrading from non-versioned" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.2)
        value = resp["data"]["data"].get("value")
        return str(value) if value else None

    def read_or_create(self, name: str) -> tuple[str, bool]:
        value = self.read(name)
        if value:
            return value, False
        value = secrets.token_urlsafe(24)
        self.client.secrets.kv.v2.create_or_update_secret(
            path=name, secret={"value": value}, mount_point=self.mount
        )
        return value, True

    def delete(self, name: str) -> None:
        try:
            self.client.secrets.kv.v2.delete_metadata_and_all_versions(
                path=name, mount_point=self.mount
            )
        except hvac.exceptions.InvalidPath:
            pass


def secret_store(settings: StackSettings) -> SecretStore:
    """Files in local mode; Vault KV (as the admin token) in cluster mode."""
    if settings.mode == "cluster":
        from orders_ops.bootstrap_identity import bootstrap_vault_client

        return VaultKVSecrets(bootstrap_vault_client(settings))
    return FileSecrets(settings.secrets_dir)
