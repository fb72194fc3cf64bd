"""PostgreSQL runs as its own OS user (issue 20 item 9), against the real local stack.

The attack: the server ran as the shared ``nobody``, so any other ``nobody`` process on
the host could read its data folder (rows and SCRAM verifiers). As root the stack now
runs it as ``orders-postgres``, which alone owns its 0700 folders.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess

import pytest

from orders_ops import osusers
from orders_ops.stack import Stack

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(os.geteuid() != 0, reason="OS users are separated only as root"),
]


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *argv],
        capture_output=True,
        text=True,
        check=False,
    )


def test_postgres_runs_as_its_own_user_and_nobody_cannot_read_its_data(stack: Stack) -> None:
    pg = stack.postgres
    user = pwd.getpwnam(osusers.POSTGRES_USER)
    pid = pg.pid()
    assert pid is not None
    assert os.stat(f"/proc/{pid}").st_uid == user.pw_uid  # the postmaster's owner
    for folder in (pg.data_dir, pg.data_dir.parent):
        st = folder.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (user.pw_uid, 0o700), folder
    # every file of the data folder is the server's user's
    others = [
        p for p in pg.data_dir.rglob("*") if not p.is_symlink() and p.stat().st_uid != user.pw_uid
    ]
    assert others == []
    # the shared nobody reads nothing of it
    for argv in (
        ["ls", str(pg.data_dir)],
        ["cat", str(pg.data_dir / "PG_VERSION")],
        ["cat", str(pg.data_dir / "global" / "pg_control")],
    ):
        result = _as_nobody(*argv)
        assert result.returncode != 0 and "Permission denied" in result.stderr, argv
