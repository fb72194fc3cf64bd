"""`make demo TLS=1` end to end: the make target run for real against the TLS test stack.

Its report step reads the order back through the codec server, which on the TLS stack
answers only over https with a certificate of the stack's own PKI. The demo once opened
it with the system trust store and died there (``CERTIFICATE_VERIFY_FAILED``) on every
machine; nothing ran the demo in TLS mode. Runs in `make test`'s TLS pass (ORDERS_TLS=1).
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import support  # tests/ is on pytest's pythonpath

from orders_ops.settings import repo_root
from orders_ops.stack import Stack

pytestmark = [
    pytest.mark.stack,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        os.environ.get("ORDERS_TLS") != "1",
        reason="the TLS stack's demo: run with ORDERS_TLS=1 (make test's TLS pass)",
    ),
]


def running(stack: Stack) -> dict[str, int | None]:
    """Every server and worker of the stack (the TLS terminator too) with its PID."""
    return {s.name: s.pid() for s in stack.servers}


def test_make_demo_tls_passes_and_reads_the_order_through_https(stack: Stack) -> None:
    s = stack.settings
    assert s.codec_url == f"https://127.0.0.1:{s.codec_port}"  # the report's codec server
    before = running(stack)
    # the session's stack (its own state folder and ports): the demo adopts it, starts the
    # six workers itself (mTLS to Temporal) and stops only what it started
    done = subprocess.run(
        ["make", "--no-print-directory", "-C", str(repo_root()), "demo", "TLS=1"],
        capture_output=True,
        text=True,
        timeout=850,
        env=support.demo_env(),
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "demo passed" in out, out[-3000:]
    assert "six workers, each a process with only its own identity token" in out
    # the order as the https codec server decoded it for the reader: readable, fields sealed
    shown = out.split("== What the codec server shows an authorised reader", 1)[1].splitlines()[1]
    order = json.loads(shown)
    assert (order["customer_id"], order["lines"][0]["sku"]) == ("cust-1815", "WIDGET-1")
    sealed = ("orders-seal/1.", "vault:v")  # the envelope or the one-call Transit format
    assert all(order[f].startswith(sealed) for f in support.DEMO_FIELD_CONSUMERS), order
    assert support.demo_openers(out) == {f: [c] for f, c in support.DEMO_FIELD_CONSUMERS.items()}
    # nothing left running that was not running before (the workers it started are stopped)
    assert running(stack) == before
