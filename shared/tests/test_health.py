"""/readyz: one failed call of a healthy dependency does not flap it; reports name types only."""

from __future__ import annotations

import secrets
import socket

import aiohttp

from orders_shared.health import HealthServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# made up, new each run: a message that must never reach a readiness report
FAKE_TOKEN = "s." + secrets.token_hex(12)


class Flaky:
    """Fails its first ``failures`` calls like an idle gRPC channel does, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"operation was canceled; token={FAKE_TOKEN}")


async def probe(checks: dict[str, Flaky]) -> tuple[int, dict[str, object]]:
    port = free_port()
    server = HealthServer("127.0.0.1", port, checks)
    await server.start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/readyz") as resp,
        ):
            return resp.status, await resp.json()
    finally:
        await server.stop()


async def test_one_failed_call_does_not_make_a_healthy_worker_unready() -> None:
    flaky = Flaky(failures=1)
    status, body = await probe({"temporal": flaky})
    assert (status, body["checks"], flaky.calls) == (200, {"temporal": "ok"}, 2)


async def test_a_dependency_that_keeps_failing_is_reported_by_type_only() -> None:
    status, body = await probe({"temporal": Flaky(failures=2), "vault": Flaky(failures=0)})
    assert status == 503
    assert body["checks"] == {"temporal": "failed: RuntimeError", "vault": "ok"}
    assert "canceled" not in str(body) and "token" not in str(body)
