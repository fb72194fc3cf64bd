"""/readyz asks the Temporal client the worker uses now, not the first one: after a
certificate renewal the worker calls through a new connection (runtime.swap_client)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from orders_shared.runtime import readiness_checks


class _ServiceClient:
    def __init__(self, serving: bool) -> None:
        self.serving = serving
        self.asked = 0

    async def check_health(self, **_: Any) -> bool:
        self.asked += 1
        return self.serving


def _client(serving: bool) -> Any:
    return SimpleNamespace(service_client=_ServiceClient(serving))


async def test_the_temporal_check_follows_the_client_in_use() -> None:
    first, renewed = _client(serving=False), _client(serving=True)
    holder = SimpleNamespace(client=first)
    source = SimpleNamespace()  # not LeasedPools: no database checks
    checks = readiness_checks(SimpleNamespace(), source, lambda: holder.client, db_roles=())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not serving"):
        await checks["temporal"]()
    holder.client = renewed  # what swap_client does after a renewal
    await checks["temporal"]()
    assert (first.service_client.asked, renewed.service_client.asked) == (1, 1)


async def test_a_plain_client_is_still_accepted() -> None:
    client = _client(serving=True)
    checks = readiness_checks(SimpleNamespace(), SimpleNamespace(), client, db_roles=())  # type: ignore[arg-type]
    await checks["temporal"]()
    assert client.service_client.asked == 1
