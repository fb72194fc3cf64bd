"""The token renewal loop outlives any error (a dead loop would mean a dead token), and
renews early enough to keep the re-login margin."""

import asyncio
from pathlib import Path

import pytest

from orders_shared.config import VaultConfig
from orders_shared.identity import Backoff, VaultSession


class FlakySession(VaultSession):
    def __init__(self, errors: list[BaseException]) -> None:
        config = VaultConfig(
            addr="http://127.0.0.1:1",
            auth_method="jwt",
            auth_mount="jwt",
            auth_role="orders-validate",
            token_file=Path("/nonexistent"),
            request_timeout=1.0,
        )
        super().__init__(config, backoff=Backoff(first=0.01, cap=0.02))
        self.errors = errors
        self.calls = 0
        self.token_ttl = 0.03  # renew almost at once
        self.token_expires_at = 0.0

    async def renew_or_login(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        self.token_ttl = 3600.0  # then quiet for the rest of the test
        self.token_expires_at = asyncio.get_running_loop().time() + 3600


async def test_unexpected_errors_do_not_end_the_renewal_loop() -> None:
    session = FlakySession([KeyError("auth"), RuntimeError("boom"), ValueError("odd")])
    session.start()
    try:
        for _ in range(200):
            if session.calls >= 4:
                break
            await asyncio.sleep(0.01)
        assert session.calls == 4  # three failures, then the success
        assert session._task is not None and not session._task.done()
    finally:
        await session.close(revoke=False)


@pytest.mark.parametrize(
    ("ttl", "margin", "lead"),
    [
        (900, 120, 300),  # the defaults: a third of the TTL already exceeds the margin
        (240, 120, 120),  # the margin wins over a third of the TTL
        (120, 120, 80),  # a margin the TTL cannot hold: lead capped at 2T/3, no hot loop
        (6, 3, 3),
    ],
)
def test_renew_lead_keeps_the_margin_when_the_ttl_allows(
    ttl: float, margin: float, lead: float
) -> None:
    session = FlakySession([])
    session.relogin_margin = margin
    session.token_ttl = ttl
    assert session.renew_lead == pytest.approx(lead)
