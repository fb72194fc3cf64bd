"""Debian packages the local stack installs on demand (nginx for TLS, Prometheus).

One way for every installer: as root only, waiting for another apt run's lock, and,
when the install fails (a fresh machine has no or stale package lists), one
``apt-get update`` and a second try. The caller names its own fix in its error.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

LOCK_WAIT_SECONDS = 600  # another apt/dpkg run (a helper, the browser install) may hold it
TIMEOUT_SECONDS = 900


def install(packages: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``apt-get install --no-install-recommends packages``; after a failure, refresh the
    package lists once and try again. Returns the last run (check ``returncode``)."""
    apt = ["apt-get", "-o", f"DPkg::Lock::Timeout={LOCK_WAIT_SECONDS}", "-y", "-qq"]
    env = {**env, "DEBIAN_FRONTEND": "noninteractive"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*apt, *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=TIMEOUT_SECONDS,
        )

    result = run("install", "--no-install-recommends", *packages)
    if result.returncode != 0:  # no or stale package lists: refresh once, try again
        run("update")
        result = run("install", "--no-install-recommends", *packages)
    return result


def failure_tail(result: subprocess.CompletedProcess[str], lines: int = 3) -> str:
    """The last lines apt printed, for an error message."""
    tail = (result.stderr or result.stdout or "").strip().splitlines()[-lines:]
    return "; ".join(tail) or "no output"
