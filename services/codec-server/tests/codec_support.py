"""Helpers for the codec server's tests against the real local stack (no mocks)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import hvac
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload

from orders_codec_server.app import RunningServer, ServerConfig, start
from orders_ops.stack import Stack
from orders_shared.codec import TokenTransit, TransitEnvelopeCodec, TransitPerCallCodec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def serve(stack: Stack, **overrides: Any) -> AsyncIterator[RunningServer]:
    config = ServerConfig(vault_addr=stack.settings.vault_addr, port=free_port(), **overrides)
    server = await start(config)
    try:
        yield server
    finally:
        await server.stop()


def reader_vault_token(stack: Stack, ttl: str = "10m") -> str:
    """A Vault token with the payload-reader policy (as `bao token create` would give)."""
    root = hvac.Client(url=stack.settings.vault_addr, token=stack.settings.root_token())
    try:
        token: str = root.auth.token.create(policies=["payload-reader"], ttl=ttl)["auth"][
            "client_token"
        ]
    finally:
        root.adapter.close()
    return token


def writer(stack: Stack) -> TokenTransit:
    """Transit as a writer (the dev root token: it may make data keys)."""
    return TokenTransit(stack.settings.vault_addr, stack.settings.root_token())


def plain(data: bytes = b'"x"') -> dict[str, Any]:
    return as_json(Payload(metadata={"encoding": b"json/plain"}, data=data))


def as_json(payload: Payload) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(payload)
    return result


async def envelope(transit: TokenTransit, *datas: bytes, compress: bool = True) -> list[Payload]:
    # max_decompressed raised: the test crafts what an attacker would (the codec itself
    # refuses to write a payload that would inflate past its own decode bound)
    codec = TransitEnvelopeCodec(
        transit, compress_over=0 if compress else None, max_decompressed=1 << 30
    )
    return await codec.encode(
        [Payload(metadata={"encoding": b"binary/plain"}, data=d) for d in datas]
    )


async def per_call(transit: TokenTransit, count: int) -> list[Payload]:
    codec = TransitPerCallCodec(transit)
    return await codec.encode(
        [Payload(metadata={"encoding": b"json/plain"}, data=b"%d" % i) for i in range(count)]
    )


async def post(
    url: str,
    body: Any,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    hdrs = {"Content-Type": "application/json", "X-Namespace": "default", **(headers or {})}
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as http, http.post(url, data=data, headers=hdrs) as r:
        raw = await r.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = {"raw": raw.decode(errors="replace")}
        return r.status, payload, dict(r.headers)


async def raw_exchange(port: int, request: bytes, *, wait: float = 30.0) -> bytes:
    """Send raw bytes, read until the server closes (``wait`` is only a hang guard)."""
    reader, writer_ = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer_.write(request)
        await writer_.drain()
        chunks = []
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer_.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def until(condition: Callable[[], bool], guard: float = 30.0) -> None:
    """Wait for ``condition`` (``guard`` only stops a hang; nothing is timed)."""
    steps = int(guard / 0.02)
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")
