"""Root-only secret files under ``<state>/secrets``: written once, read back, never printed.

The stack manager, the database bootstrap and the Vault bootstrap all keep
generated passwords here; one helper keeps the file mode (0600, folder 0700)
the same everywhere, so a secret is never briefly world-readable.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_secret(path: Path, value: str) -> None:
    """Create or replace ``path`` with mode 0600 from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
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
