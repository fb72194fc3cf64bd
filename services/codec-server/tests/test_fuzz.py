"""Hypothesis: whatever the body, content type or Authorization header, the codec server
(real OpenBao behind it) answers a 4xx with a JSON error that never quotes the token,
never a 500, and stays up."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio
from codec_support import serve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders_codec_server.app import RunningServer
from orders_ops.stack import Stack

MARK = "SeCrEtMaRk"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)
bodies = st.one_of(
    st.binary(max_size=2000),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(json_values, max_size=5).map(lambda v: json.dumps({"payloads": v}).encode()),
    st.integers(0, 3000).map(lambda n: b'{"payloads":' + b"[" * n + b"]" * n + b"}"),
    st.integers(0, 70_000).map(lambda n: b'{"payloads":[' + b",".join([b"{}"] * n) + b"]}"),
)
auths = st.one_of(
    st.none(),
    st.just(f"Bearer {MARK}"),
    st.just(f"Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ{MARK}.c2ln"),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(
        lambda t: f"{t} {MARK}"
    ),
)
types = st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""])


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server(stack: Stack) -> AsyncIterator[RunningServer]:
    async with serve(stack, max_body=1024 * 1024, failed_logins=1_000_000) as running:
        yield running


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies, auth=auths, content_type=types)
async def test_any_request_gets_a_fixed_4xx(
    server: RunningServer, body: bytes, auth: str | None, content_type: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    if auth is not None:
        headers["Authorization"] = auth
    async with (
        aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as http,
        http.post(f"{server.url}/decode", data=body, headers=headers) as r,
    ):
        text = await r.text()
    assert 400 <= r.status < 500, (r.status, text)
    assert MARK not in text
    assert set(json.loads(text)) == {"error"}
