"""Item 3: callers are verified with the real OpenBao before anything is done for them;
only verified callers are cached (bounded, expiring); failed logins are rate-limited."""

from __future__ import annotations

import time

from codec_support import as_json, b64, envelope, plain, post, reader_vault_token, serve, writer

from orders_codec_server.app import Caller, CallerCache, _digest
from orders_ops import issuer
from orders_ops.stack import Stack


async def test_tokens_are_checked_with_vault_before_any_work(stack: Stack) -> None:
    body = {"payloads": [plain()]}
    async with serve(stack, failed_logins=3, max_callers=2) as server:
        url = f"{server.url}/decode"
        auth = server.server.auth
        # a non-JWT token Vault never issued: refused, even for plain payloads; nothing cached
        status, out, _ = await post(url, body, token="x")
        assert status == 401 and "Vault does not accept" in out["error"], out
        assert len(auth.callers) == 0

        vault_token = reader_vault_token(stack)
        status, out, _ = await post(url, body, token=vault_token)
        assert status == 200 and out == body, out
        assert len(auth.callers) == 1 and auth.lookups == 1
        status, _, _ = await post(url, body, token=vault_token)
        assert status == 200 and auth.lookups == 1  # served from the verified cache

        jwt = issuer.mint_user(stack.settings, "cache-reader", ttl=120)
        status, out, _ = await post(url, body, token=jwt)
        assert status == 200, out
        entry = auth.callers.get(_digest(jwt))
        assert entry is not None and entry.reader == "cache-reader"
        assert entry.expires <= time.monotonic() + 120  # not past the JWT's exp

        # a third caller: the cache holds at most max_callers
        status, _, _ = await post(url, body, token=reader_vault_token(stack))
        assert status == 200 and len(auth.callers) == 2

        # failed logins from one address: 401 until the limit, then 429 without Vault
        lookups = auth.lookups
        for bad in ("bad-1", "bad-2"):
            status, out, _ = await post(url, body, token=bad)
            assert status == 401, out
        status, out, headers = await post(url, body, token="bad-4")
        assert status == 429 and "ORDERS_CODEC_FAILED_LOGINS" in out["error"], out
        assert int(headers["Retry-After"]) >= 1
        assert auth.lookups == lookups  # failed lookups are not counted as lookups
        status, _, _ = await post(url, body, token=reader_vault_token(stack))
        assert status == 429  # a new token from this address waits too...
        status, _, _ = await post(url, body, token=jwt)
        assert status == 200  # ...a caller Vault already accepted does not
        assert len(auth.callers) == 2


async def test_cached_caller_ends_with_its_token_lease(stack: Stack) -> None:
    short = reader_vault_token(stack, ttl="30s")
    async with serve(stack) as server:
        status, _, _ = await post(f"{server.url}/decode", {"payloads": [plain()]}, token=short)
        assert status == 200
        entry = server.server.auth.callers.get(_digest(short))
        assert entry is not None and entry.expires <= time.monotonic() + 30


def test_cache_expiry_and_bound_with_a_clock() -> None:
    now = [100.0]
    cache = CallerCache(2, clock=lambda: now[0])
    for name, ends in (("a", 110.0), ("b", 150.0), ("c", 150.0)):
        cache.put(name, Caller("t-" + name, "vault-token", name, ends))
    assert len(cache) == 2 and cache.get("a") is None  # least recently used went first
    assert cache.get("b") is not None
    now[0] = 150.0
    assert cache.get("b") is None and len(cache) == 1  # expired at its end


async def test_reader_token_without_lookup_rights_is_verified_by_vault(stack: Stack) -> None:
    """A payload reader's Vault token (no default policy: it may not look itself up) is
    accepted only because Vault lets it decrypt; a default-policy-only token is refused."""
    import hvac

    jwt = issuer.mint_user(stack.settings, "cli-reader", ttl=300)
    auth = hvac.Client(url=stack.settings.vault_addr).auth.jwt.jwt_login(
        "payload-reader", jwt, path="oidc-readers"
    )["auth"]
    assert "default" not in auth["policies"]
    root = hvac.Client(url=stack.settings.vault_addr, token=stack.settings.root_token())
    nobody = root.auth.token.create(policies=["default"], no_default_policy=False, ttl="5m")
    transit = writer(stack)
    try:
        sealed = {"payloads": [as_json(p) for p in await envelope(transit, b"sealed order")]}
    finally:
        transit.close()
    async with serve(stack) as server:
        url = f"{server.url}/decode"
        status, out, _ = await post(url, sealed, token=auth["client_token"])
        assert status == 200, out
        assert out["payloads"][0]["data"] == b64(b"sealed order")
        # a real token with default only: Vault accepts it, and refuses it the decryption
        status, out, _ = await post(url, sealed, token=nobody["auth"]["client_token"])
        assert status == 403, out
        assert out["error"].startswith("Vault refused this identity the decryption of payload 0")
        status, out, _ = await post(
            url, {"payloads": [plain()]}, token=nobody["auth"]["client_token"]
        )
        assert status == 200  # plain payloads are readable by any caller Vault accepted
    root.adapter.close()


async def test_a_concurrent_token_flood_reaches_vault_at_most_the_limit(stack: Stack) -> None:
    import asyncio

    async with serve(stack, failed_logins=5, max_concurrent=64) as server:
        url = f"{server.url}/decode"
        results = await asyncio.gather(
            *(post(url, {"payloads": []}, token=f"flood-{i}") for i in range(40))
        )
        statuses = sorted(status for status, _, _ in results)
        assert statuses.count(401) <= 5 and statuses.count(429) >= 35, statuses
        assert len(server.server.auth.callers) == 0


async def test_failed_logins_behind_a_trusted_proxy(stack: Stack) -> None:
    body = {"payloads": []}
    async with serve(stack, failed_logins=2, trusted_proxy_hops=1) as server:
        url = f"{server.url}/decode"
        # the client's own X-Forwarded-For claim (left) is ignored; the proxy's entry counts
        attacker = {"X-Forwarded-For": "9.9.9.9, 10.0.0.1"}
        for _ in range(2):
            status, _, _ = await post(url, body, token="bad", headers=attacker)
            assert status == 401
        status, _, _ = await post(url, body, token="bad", headers=attacker)
        assert status == 429
        other = {"X-Forwarded-For": "10.0.0.2"}
        status, _, _ = await post(url, body, token="bad", headers=other)
        assert status == 401  # another client behind the same proxy is not locked out
    async with serve(stack, failed_logins=2) as server:  # no trusted proxy: the peer counts
        url = f"{server.url}/decode"
        for forwarded in ("10.0.0.1", "10.0.0.2"):
            status, _, _ = await post(
                url, body, token="bad", headers={"X-Forwarded-For": forwarded}
            )
            assert status == 401
        status, _, _ = await post(url, body, token="bad", headers={"X-Forwarded-For": "10.0.0.3"})
        assert status == 429


async def test_concurrent_requests_with_one_new_token_log_in_once(stack: Stack) -> None:
    import asyncio

    jwt = issuer.mint_user(stack.settings, "burst-reader", ttl=120)
    async with serve(stack, max_concurrent=16) as server:
        url = f"{server.url}/decode"
        results = await asyncio.gather(
            *(post(url, {"payloads": [plain()]}, token=jwt) for _ in range(8))
        )
        assert [status for status, _, _ in results] == [200] * 8
        assert server.server.auth.exchanges == 1  # one Vault login (one Vault token), not 8
