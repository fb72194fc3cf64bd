"""``/healthz``, ``/readyz`` and ``/metrics`` for a worker, on one port (aiohttp).

* ``/healthz``: the process and its event loop answer. Nothing else, so a
  liveness probe never restarts a worker for an outage elsewhere.
* ``/readyz``: Temporal answers, Vault answers and our token is valid, and
  every database pool can run ``SELECT 1``. Each check has a short timeout and
  the answer names each check, so ``curl`` tells an operator what is wrong
  (by exception type, never message). A check that fails is tried once more
  within its timeout, so one dropped call does not flap readiness.
* ``/metrics``: this process's Prometheus registry, followed by the Temporal
  SDK's own metrics, which the SDK serves on a loopback-only port of its own.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = structlog.get_logger(__name__)

Check = Callable[[], Awaitable[None]]
CHECK_TIMEOUT = 2.0


class HealthServer:
    def __init__(
        self,
        host: str,
        port: int,
        checks: Mapping[str, Check],
        sdk_metrics_url: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.checks = dict(checks)
        self.sdk_metrics_url = sdk_metrics_url
        self._runner: web.AppRunner | None = None
        self._cache: tuple[float, int, dict[str, str]] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.info("health.listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readiness(self) -> tuple[int, dict[str, str]]:
        """Run every check (results cached for one second: probes may come often)."""
        async with self._lock:
            now = time.monotonic()
            if self._cache and now - self._cache[0] < 1.0:
                return self._cache[1], self._cache[2]
            results = await asyncio.gather(
                *(self._run(name, check) for name, check in self.checks.items())
            )
            report = dict(results)
            status = 200 if all(v == "ok" for v in report.values()) else 503
            self._cache = (time.monotonic(), status, report)
            return status, report

    async def _run(self, name: str, check: Check) -> tuple[str, str]:
        """One check, tried twice within :data:`CHECK_TIMEOUT` when the first try fails.

        A healthy dependency can fail one call (a gRPC channel that idled reports
        ``operation was canceled`` on its first call), and a probe that flaps restarts
        nothing but pages people; a real outage fails both tries. The report names
        the exception type only: messages can quote addresses, tokens or data."""
        deadline = time.monotonic() + CHECK_TIMEOUT
        failure = ""
        for _attempt in range(2):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(check(), timeout=left)
            except TimeoutError:
                return name, f"no answer within {CHECK_TIMEOUT:.0f}s"
            except Exception as exc:  # a probe reports, it does not crash
                failure = type(exc).__name__
                log.info("health.check_failed", check=name, error_type=failure)
                continue
            return name, "ok"
        return name, f"failed: {failure or 'no time left'}"

    async def _readyz(self, _request: web.Request) -> web.Response:
        status, report = await self.readiness()
        return web.json_response(
            {"status": "ready" if status == 200 else "not ready", "checks": report}, status=status
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        if self.sdk_metrics_url:
            body += await asyncio.to_thread(_fetch, self.sdk_metrics_url)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (loopback URL we built)
            data: bytes = resp.read()
            return data
    except OSError:
        return b"# Temporal SDK metrics unavailable\n"
