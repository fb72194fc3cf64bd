"""Items 1-2: bounded work per request, against the real OpenBao (real Transit, real tokens).

Payload count, JSON values, Vault calls, body size, decoded size (zlib bombs) and
answer size are each refused with a 413 naming the limit and its setting, before
the work the limit guards is done.
"""

from __future__ import annotations

import json
import os

from codec_support import b64, envelope, per_call, plain, post, reader_vault_token, serve, writer

from orders_codec_server.app import _digest
from orders_ops.stack import Stack
from orders_shared.codec import PAYLOAD_KEY

MIB = 1024 * 1024


async def test_payload_count_json_values_and_vault_calls(stack: Stack) -> None:
    token = reader_vault_token(stack)
    transit = writer(stack)
    try:
        async with serve(stack, max_payloads=50, max_vault_calls=5) as server:
            url = f"{server.url}/decode"
            status, out, _ = await post(url, {"payloads": [plain()] * 51}, token=token)
            assert status == 413 and "ORDERS_CODEC_MAX_PAYLOADS" in out["error"], out
            assert "50" in out["error"]

            # 1.4 million empty payloads in 4 MiB: refused before the JSON is parsed
            flood = b'{"payloads":[' + b",".join([b"{}"] * 1_000_000) + b"]}"
            status, out, _ = await post(url, flood, token=token)
            assert status == 413 and "JSON values" in out["error"], out

            six = [p for p in await per_call(transit, 6)]
            body = {"payloads": [json.loads(json_format_dumps(p)) for p in six]}
            status, out, _ = await post(url, body, token=token)
            assert status == 413 and "ORDERS_CODEC_MAX_VAULT_CALLS" in out["error"], out
            caller = server.server.auth.callers.get(_digest(token))
            assert caller is not None and caller.per_call is not None
            assert caller.per_call.stats.transit_decrypts == 0  # refused before any Vault call

            body["payloads"] = body["payloads"][:5]
            status, out, _ = await post(url, body, token=token)
            assert status == 200, out
            assert [b64(b"%d" % i) for i in range(5)] == [p["data"] for p in out["payloads"]]
            assert caller.per_call.stats.transit_decrypts == 5

        async with serve(stack, max_body=64 * 1024) as server:
            url = f"{server.url}/decode"
            big = {"payloads": [plain(b"x" * 100_000)]}
            status, out, _ = await post(url, big, token=token)
            assert status == 413 and "ORDERS_CODEC_MAX_BODY" in out["error"], out

            async def chunks():  # no Content-Length: the limit bites while reading
                for _ in range(20):
                    yield b" " * 8192

            import aiohttp

            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
            async with aiohttp.ClientSession() as http:
                async with http.post(url, data=chunks(), headers=headers) as r:
                    assert r.status == 413
                    assert "ORDERS_CODEC_MAX_BODY" in (await r.json())["error"]
    finally:
        transit.close()


def json_format_dumps(payload: object) -> str:
    from google.protobuf import json_format

    return json_format.MessageToJson(payload)  # type: ignore[arg-type]


async def test_bombs_decoded_and_answer_size(stack: Stack) -> None:
    token = reader_vault_token(stack)
    transit = writer(stack)
    try:
        bomb = await envelope(transit, b"\0" * (64 * MIB))  # ~64 KiB on the wire
        mediums = await envelope(transit, *[bytes([i]) * (512 * 1024) for i in range(4)])
        small = await envelope(transit, b"fine")
        as_body = lambda ps: {"payloads": [json.loads(json_format_dumps(p)) for p in ps]}  # noqa: E731
        assert len(json.dumps(as_body(bomb))) < 256 * 1024
        async with serve(stack, max_decoded_bytes=1 * MIB) as server:
            url = f"{server.url}/decode"
            status, out, _ = await post(url, as_body(bomb), token=token)
            assert status == 413, out  # the codec's own bound or this request's
            status, out, _ = await post(url, as_body(mediums), token=token)
            assert status == 413 and "ORDERS_CODEC_MAX_DECODED_BYTES" in out["error"], out
            assert "payload 1" in out["error"]  # stopped as soon as the total passed 1 MiB (of 4)
            status, out, _ = await post(url, as_body(mediums[:1] + small), token=token)
            assert status == 200, out
        async with serve(stack, max_decoded_bytes=8 * MIB, max_response_bytes=1 * MIB) as server:
            url = f"{server.url}/decode"
            status, out, _ = await post(url, as_body(mediums[:2]), token=token)
            assert status == 413 and "ORDERS_CODEC_MAX_RESPONSE_BYTES" in out["error"], out
            status, out, _ = await post(url, as_body(mediums[:1]), token=token)
            assert status == 200, out
            assert out["payloads"][0]["data"] == b64(bytes([0]) * (512 * 1024))
            # an answer to /encode is bounded the same way: 900 kB that do not compress
            # are over 1 MiB once encrypted and in base64 (the request itself is under)
            raw = {"payloads": [plain(os.urandom(900_000))]}
            status, out, _ = await post(
                f"{server.url}/encode", raw, token=stack.settings.root_token()
            )
            assert status == 413 and "ORDERS_CODEC_MAX_RESPONSE_BYTES" in out["error"], out
        assert PAYLOAD_KEY
    finally:
        transit.close()
