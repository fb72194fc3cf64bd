"""The codec server's HTTP edge without Vault: auth header, content checks, CORS, config."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from orders_codec_server.app import (
    ConfigurationError,
    ServerConfig,
    is_loopback,
    looks_like_jwt,
    start,
)

ORIGIN = "http://127.0.0.1:8233"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_helpers() -> None:
    assert looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln")
    assert not looks_like_jwt("s.AbCdEf0123456789")
    assert not looks_like_jwt("a.b.c")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")  # noqa: S104
    with pytest.raises(ConfigurationError, match="http"):
        ServerConfig(vault_addr="127.0.0.1:8200").check()


async def test_edge_refusals_and_cors() -> None:
    # Vault is never reached: every request here is refused before it would be
    server = await start(
        ServerConfig(vault_addr="http://127.0.0.1:9", port=_port(), cors_origins=(ORIGIN,))
    )
    try:
        async with aiohttp.ClientSession() as http:
            url = f"{server.url}/decode?preserveStorageRefs=true"
            async with http.post(url, json={"payloads": []}) as r:
                assert r.status == 401
                assert "Authorization" in (await r.json())["error"]
            async with http.post(url, json={}, headers={"Authorization": "Basic abc"}) as r:
                assert r.status == 401
            headers = {"Authorization": "Bearer s.token", "Content-Type": "text/plain"}
            async with http.post(url, data=b"{}", headers=headers) as r:
                assert r.status == 415
            headers = {"Authorization": "Bearer s.token", "Content-Type": "application/json"}
            async with http.post(url, data=b"[1,", headers=headers) as r:
                assert r.status == 400
            # plain payloads need no key: they pass through (history from before encryption)
            body = {"payloads": [{"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": "MQ=="}]}
            async with http.post(url, json=body, headers={**headers, "Origin": ORIGIN}) as r:
                assert r.status == 200
                assert (await r.json()) == body
                assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
            preflight = {
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace",
            }
            async with http.options(url, headers=preflight) as r:
                assert r.status == 204
                assert "x-namespace" in r.headers["Access-Control-Allow-Headers"]
            async with http.options(url, headers={**preflight, "Origin": "http://x.test"}) as r:
                assert r.status == 403
    finally:
        await server.stop()
