"""`make demo` end to end: `orders-demo` run for real against the test stack.

Nothing else ran the demo's report, so a change to the sealed-field format broke its last
step ("who can open each sealed field") unseen. This runs the command as a user does and
reads its verdict."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import support  # tests/ is on pytest's pythonpath

from orders_ops.stack import Stack

pytestmark = pytest.mark.stack


def test_the_demo_passes_says_who_opens_each_field_and_audits_clean(workers: Stack) -> None:
    demo = Path(sys.executable).with_name("orders-demo")
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # the stack and workers are the session's: the demo adopts them and leaves them running
    done = subprocess.run(
        [str(demo)], capture_output=True, text=True, timeout=600, env=dict(os.environ), check=False
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "demo passed" in out
    # each sealed field opens for exactly its consumer; everyone else is refused by Vault
    assert support.demo_openers(out) == {f: [c] for f, c in support.DEMO_FIELD_CONSUMERS.items()}
    assert all(w.pid() is not None for w in workers.workers)  # the session's, left running
    # the demo's probes are refused by Vault, as they must be, and the audit knows them for
    # probes: a clean demo audits clean (issue 25 item 7: it printed 168 FLAG ... DENIED)
    audit = subprocess.run(
        [str(demo.with_name("orders-audit")), "--since", since, "--strict"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        check=False,
    )
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr
    assert "flags: 0" in audit.stdout
    assert "denied to a probe (expected, not flagged)" in audit.stdout
