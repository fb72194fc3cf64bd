"""Items 6 and 8: the real `orders-codec-server` process: one clear line and a non-zero
exit when Vault is down or the port is taken; client errors are info one-liners and the
log file rotates by size."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

from codec_support import free_port, post, raw_exchange, until

from orders_ops.stack import Stack

SERVER = str(Path(sys.executable).with_name("orders-codec-server"))


def _run(*args: str, vault: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SERVER, *args],
        env={**os.environ, "VAULT_ADDR": vault},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_vault_down_and_port_taken_are_one_line(stack: Stack) -> None:
    down = _run("--port", str(free_port()), vault=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1, down
    lines = down.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Vault" in lines[0] and "make up" in lines[0], lines
    assert "Traceback" not in down.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = _run("--port", str(port), vault=stack.settings.vault_addr)
    assert busy.returncode == 1, busy
    lines = busy.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {port}" in lines[0] and "ORDERS_CODEC_PORT" in lines[0]
    assert "Traceback" not in busy.stderr


async def test_client_errors_are_info_lines_and_the_log_rotates(
    stack: Stack, tmp_path: Path
) -> None:
    log = tmp_path / "codec.log"
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        SERVER,
        "--port",
        str(port),
        "--log-file",
        str(log),
        "--log-max-bytes",
        "4096",
        "--log-backups",
        "2",
        env={**os.environ, "VAULT_ADDR": stack.settings.vault_addr},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        await until(lambda: log.exists() and "codec.started" in log.read_text())
        secret = "s." + secrets.token_hex(14)  # made up, new each run
        sent = 0
        for _ in range(20):
            await raw_exchange(
                port,
                b"POST /decode HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + secret.encode()
                + b"\x01\r\n\r\n",
            )
            status, _, _ = await post(
                f"{url}/decode", b"[[[", headers={"Authorization": "Basic " + secret}
            )
            assert status == 401
            status, _, _ = await post(f"{url}/decode", b"{", headers={"Content-Type": "x/y"})
            assert status == 415
            sent += 3
        files = [log, log.with_name("codec.log.1"), log.with_name("codec.log.2")]
        assert all(f.exists() for f in files)
        assert not log.with_name("codec.log.3").exists()
        lines = [ln for f in files for ln in f.read_text().splitlines()]
        for f in files:
            assert f.stat().st_size <= 4096 + 1024
        events = [json.loads(ln) for ln in lines]
        requests = [e for e in events if e["event"] == "codec.request"]
        assert requests and all(e["level"] == "info" for e in requests), requests[:3]
        assert all("stack" not in e and "exc_info" not in e for e in events)
        assert secret not in "".join(lines)
        # rotation dropped the oldest: what is left is at most 3 files of ~4 KiB
        assert len(requests) <= sent
    finally:
        proc.terminate()
        assert await proc.wait() == 0
