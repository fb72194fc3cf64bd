"""One unprivileged OS user per local process, when the stack runs as root.

In a cluster every worker is its own pod; on one machine the nearest thing is
one OS user per process. As root the stack manager runs each worker, the codec
server and the identity issuer as its own system user (``orders-<service>``,
``orders-codec``, ``orders-identity``), created if missing. Each identity's token
folder is then reachable by that user and the issuer only, and neither the
issuer key nor ``secrets/`` by any of them.

Not as root, every process runs as the caller, and isolation between local
workers is by convention only (they could read each other's token files):
``orders-stack status`` and the README say so.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

ISSUER_USER = "orders-identity"
CODEC_USER = "orders-codec"
POSTGRES_USER = "orders-postgres"
"""PostgreSQL's own user as root (it refuses root; the shared ``nobody`` would let any
other ``nobody`` process read its data folder: rows and SCRAM verifiers)."""


class UserError(RuntimeError):
    """A service user could not be created; the message says how to fix it."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def isolating() -> bool:
    """True when each local process runs as its own user (only root can arrange it)."""
    return os.geteuid() == 0


def isolation_note() -> str:
    if isolating():
        return "each worker, the codec server and the issuer run as their own OS user"
    user = pwd.getpwuid(os.geteuid()).pw_name
    return (
        f"not root: every process runs as '{user}', so isolation between local workers is "
        "by convention only (any of them could read another's token file)"
    )


def _lookup(name: str) -> Account | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return Account(name, entry.pw_uid, entry.pw_gid)


def ensure_user(name: str) -> Account:
    """The system user ``name`` (with a group of its own), created if missing.

    Several stacks on one machine may create the same user at once; useradd
    then fails on the lock or on "already exists", so look again and retry.
    """
    last = ""
    for _attempt in range(20):
        found = _lookup(name)
        if found is not None:
            return found
        result = subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            capture_output=True,
            text=True,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        )
        if result.returncode == 0:
            continue
        last = (result.stderr or result.stdout).strip()
        time.sleep(0.1)
    raise UserError(
        f"could not create the system user {name!r} ({last or 'useradd failed'}); "
        f"create it with 'useradd --system --user-group {name}' and run again"
    )


def as_user(account: Account | None, argv: Sequence[str]) -> list[str]:
    """``argv`` run as ``account`` (no groups, no new privileges); as is when None."""
    if account is None:
        return list(argv)
    return [
        "setpriv",
        f"--reuid={account.uid}",
        f"--regid={account.gid}",
        "--clear-groups",
        "--no-new-privs",
        "--",
        *argv,
    ]
