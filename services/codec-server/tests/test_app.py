"""The codec server's HTTP edge where Vault is never reached: auth header, content type, config."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from codec_support import free_port

from orders_codec_server.app import (
    ConfigurationError,
    ServerConfig,
    is_loopback,
    looks_like_jwt,
    start,
)

ORIGIN = "http://127.0.0.1:8233"


def test_helpers() -> None:
    assert looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln")
    assert not looks_like_jwt("s.AbCdEf0123456789")
    assert not looks_like_jwt("a.b.c")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")  # noqa: S104
    with pytest.raises(ConfigurationError, match="http"):
        ServerConfig(vault_addr="127.0.0.1:8200").check()
    with pytest.raises(ConfigurationError, match="max_payloads"):
        ServerConfig(vault_addr="http://127.0.0.1:8200", max_payloads=0).check()
    with pytest.raises(ConfigurationError, match="local-secret-file"):
        ServerConfig(
            vault_addr="http://127.0.0.1:8200",
            local_mode=True,
            local_reader_token_file=Path("/nonexistent"),
        ).check()


async def test_edge_refusals_before_vault() -> None:
    # Vault is never reached: every request here is refused before it would be
    server = await start(
        ServerConfig(vault_addr="http://127.0.0.1:9", port=free_port(), cors_origins=(ORIGIN,))
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
            async with http.post(url, data=b"{}", headers=headers) as r:
                assert r.status == 503  # the token cannot be checked: nothing is done
            preflight = {
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace",
            }
            async with http.options(url, headers=preflight) as r:
                assert r.status == 204
                assert "x-namespace" in r.headers["Access-Control-Allow-Headers"]
                assert "Access-Control-Allow-Credentials" not in r.headers
            async with http.options(url, headers={**preflight, "Origin": "http://x.test"}) as r:
                assert r.status == 403
    finally:
        await server.stop()
