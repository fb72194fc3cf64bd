"""Items 4, 5 and 7 against the real OpenBao: bad input gets a fixed 4xx that never echoes
a credential; headers and bodies have read timeouts; requests in progress are bounded;
local mode checks Host and a per-start secret path; CORS credentials only when asked."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import aiohttp
from codec_support import b64, plain, post, raw_exchange, reader_vault_token, serve, until
from structlog.testing import capture_logs

from orders_ops import issuer
from orders_ops.stack import Stack

# a made-up token of the right shape, new each run (nothing real is committed)
SECRET = "s." + secrets.token_hex(16)


async def test_bad_input_fixed_messages(stack: Stack) -> None:
    token = reader_vault_token(stack)
    async with serve(stack) as server:
        url = f"{server.url}/decode"
        nested = b'{"payloads":' + b"[" * 5000 + b"]" * 5000 + b"}"
        status, out, _ = await post(url, nested, token=token)
        assert status == 400 and out["error"] == (
            "the body is nested too deeply to be a Payloads message"
        ), out
        nested_obj = b'{"payloads":[{"metadata":' + b'{"a":' * 3000 + b"1" + b"}" * 3001 + b"]}"
        status, out, _ = await post(url, nested_obj, token=token)
        assert status == 400, out
        # values protobuf's own parser turns into empty or truncated bytes without a word
        for value in ("*", "====", "\u00e9", "YQ==\n", "Y Q==", "!!not base64!!"):
            bad_b64 = {"payloads": [{"metadata": {"encoding": value}, "data": b64(b"1")}]}
            status, out, _ = await post(url, bad_b64, token=token)
            assert status == 400 and "not valid base64" in out["error"], (value, out)
        for data in ("YQ=", "Y", "YQ==YQ==", "a-b+"):
            body = {"payloads": [{"metadata": {"encoding": b64(b"json/plain")}, "data": data}]}
            status, out, _ = await post(url, body, token=token)
            assert status == 400, (data, out)
        status, out, _ = await post(url, {"payloads": [{"data": 5}]}, token=token)
        assert status == 400 and SECRET not in str(out)
        status, out, _ = await post(
            url, {"payloads": []}, token=SECRET, headers={"Content-Type": f"text/{SECRET}"}
        )
        assert status == 415 and SECRET not in str(out), out

        # HTTP aiohttp cannot parse: its own answer quotes the bad header; ours does not
        port = int(server.url.rsplit(":", 1)[1])
        for request in (
            b"POST /decode HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + SECRET.encode()
            + b"\x01\r\n\r\n",
            b"POST /decode HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + SECRET.encode()
            + b"\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET /" + SECRET.encode() * 400 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        ):
            answer = await raw_exchange(port, request)
            assert answer.split(b" ")[1].startswith(b"4"), answer[:80]
            assert SECRET.encode() not in answer, answer
        # unknown paths and methods: fixed JSON answers
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/{SECRET}") as r:
                assert r.status == 404 and SECRET not in await r.text()
            async with http.get(url) as r:
                assert r.status == 405


async def test_slow_headers_and_bodies_time_out(stack: Stack) -> None:
    token = reader_vault_token(stack)
    async with serve(stack, header_timeout=1, body_timeout=1) as server:
        port = int(server.url.rsplit(":", 1)[1])
        # declares 1 MB, sends 14 bytes, then nothing: 408, connection closed
        request = (
            b"POST /decode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: 1000000\r\n\r\n"
            b'{"payloads": ['
        )
        answer = await raw_exchange(port, request)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert b"ORDERS_CODEC_BODY_TIMEOUT" in answer
        # headers that never end: the connection is closed (nothing answered)
        answer = await raw_exchange(port, b"POST /decode HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: ")
        assert answer == b""


async def test_requests_in_progress_are_bounded(stack: Stack) -> None:
    token = reader_vault_token(stack)
    async with serve(stack, max_concurrent=1, max_queued=0, body_timeout=30) as server:
        port = int(server.url.rsplit(":", 1)[1])
        # one request holds the only slot while it sends its body slowly
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /decode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        try:
            await until(lambda: server.server.gate.in_progress == 1)
            status, out, headers = await post(
                f"{server.url}/decode", {"payloads": [plain()]}, token=token
            )
            assert status == 503 and "ORDERS_CODEC_MAX_CONCURRENT" in out["error"], out
            assert headers["Retry-After"] == "1"
        finally:
            writer.close()
        await until(lambda: server.server.gate.in_progress == 0)
        status, _, _ = await post(f"{server.url}/decode", {"payloads": [plain()]}, token=token)
        assert status == 200


async def test_local_mode_host_secret_and_cors(stack: Stack, tmp_path: Path) -> None:
    reader = tmp_path / "reader.jwt"
    reader.write_text(issuer.mint_user(stack.settings, "local-developer", ttl=600))
    secret_file = tmp_path / "secret"
    secret_file.write_text("per-start-secret-123\n")
    origin = "http://127.0.0.1:8233"
    body = {"payloads": [plain()]}
    async with serve(
        stack,
        local_mode=True,
        local_reader_token_file=reader,
        local_secret_file=secret_file,
        cors_origins=(origin,),
    ) as server:
        good = f"{server.url}/per-start-secret-123/decode"
        status, out, headers = await post(good, body, headers={"Origin": origin})
        assert status == 200 and out == body, out
        assert headers["Access-Control-Allow-Origin"] == origin
        assert "Access-Control-Allow-Credentials" not in headers
        status, out, _ = await post(f"{server.url}/decode", body)
        assert status == 401 and "TEMPORAL_CODEC_ENDPOINT" in out["error"], out
        status, out, _ = await post(f"{server.url}/wrong-secret/decode", body)
        assert status == 404, out
        # DNS rebinding: a page on evil.test resolving to 127.0.0.1 sends its own Host
        for host in ("evil.test:" + server.url.rsplit(":", 1)[1], "localhost", "127.0.0.1"):
            status, out, _ = await post(good, body, headers={"Host": host})
            assert status == 403 and "Host" in out["error"], (host, out)
        # a caller with its own token needs no secret (Vault decides, as without --local)
        status, _, _ = await post(f"{server.url}/decode", body, token=reader_vault_token(stack))
        assert status == 200
        # a new secret (the stack restarted the UI) takes effect without a restart
        secret_file.write_text("next-secret\n")
        status, _, _ = await post(good, body)
        assert status == 404
        status, _, _ = await post(f"{server.url}/next-secret/decode", body)
        assert status == 200
    async with serve(stack, cors_origins=(origin,), cors_allow_credentials=True) as server:
        status, _, headers = await post(
            f"{server.url}/decode",
            body,
            token=reader_vault_token(stack),
            headers={"Origin": origin},
        )
        assert status == 200 and headers["Access-Control-Allow-Credentials"] == "true"


async def test_metrics_count_requests_and_a_scrape_logs_nothing(stack: Stack) -> None:
    async with serve(stack) as server:
        with capture_logs() as logs:
            status, _, _ = await post(f"{server.url}/decode", {"payloads": []})  # no token
            async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as r:
                text = await r.text()
        assert status == 401
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        assert 'orders_codec_server_requests_total{op="decode",status="401"}' in text
        assert [e.get("op") for e in logs if e["event"] == "codec.request"] == ["decode"]
