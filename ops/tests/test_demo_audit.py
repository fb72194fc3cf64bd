"""The demo's "no static secret in any worker" line rests on a scanner that really finds one."""

import secrets
import subprocess
import sys
import time

from orders_ops.demo import _scan_memory


def test_memory_scan_finds_a_secret_a_process_holds_and_nothing_else() -> None:
    planted = secrets.token_hex(24).encode()
    absent = secrets.token_hex(24).encode()
    # the secret arrives on stdin, so it is only in the child's memory, not its arguments
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; s = sys.stdin.readline(); print('ready', flush=True); "
            "time.sleep(60)",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(planted + b"\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"ready\n"
        started = time.monotonic()
        assert _scan_memory(child.pid, [planted, absent]) == {planted}
        assert time.monotonic() - started < 30
    finally:
        child.kill()
        child.wait()
