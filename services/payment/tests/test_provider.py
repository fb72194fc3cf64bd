"""The provider adapter's configuration and error mapping (no server needed here;
the provider simulator itself is tested against the stack in tests/test_payment_provider.py)."""

from __future__ import annotations

import pytest

from orders_payment.provider import (
    ChargeRequest,
    HttpCardProvider,
    ProviderConfig,
    ProviderUnavailable,
    provider_from_config,
)
from orders_shared.config import ConfigError


def test_the_adapter_is_chosen_by_settings() -> None:
    config = ProviderConfig.from_env(
        {
            "ORDERS_PAYMENT_PROVIDER": "simulator",
            "ORDERS_PAYMENT_PROVIDER_URL": "http://127.0.0.1:8090/",
            "ORDERS_PAYMENT_PROVIDER_TIMEOUT": "4",
        }
    )
    assert config == ProviderConfig(kind="simulator", url="http://127.0.0.1:8090", timeout=4.0)
    provider = provider_from_config(config)
    assert isinstance(provider, HttpCardProvider)
    assert provider.base_url == "http://127.0.0.1:8090"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, "ORDERS_PAYMENT_PROVIDER is not set"),
        ({"ORDERS_PAYMENT_PROVIDER": "stripe-ish"}, "ORDERS_PAYMENT_PROVIDER='stripe-ish'"),
        ({"ORDERS_PAYMENT_PROVIDER": "simulator"}, "ORDERS_PAYMENT_PROVIDER_URL"),
        (
            {"ORDERS_PAYMENT_PROVIDER": "simulator", "ORDERS_PAYMENT_PROVIDER_URL": "ftp://x"},
            "ORDERS_PAYMENT_PROVIDER_URL",
        ),
        (
            {
                "ORDERS_PAYMENT_PROVIDER": "simulator",
                "ORDERS_PAYMENT_PROVIDER_URL": "http://x",
                "ORDERS_PAYMENT_PROVIDER_TIMEOUT": "60",
            },
            "ORDERS_PAYMENT_PROVIDER_TIMEOUT=60.0 is out of range",
        ),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace("(", r"\(").replace(".", r"\.")):
        ProviderConfig.from_env(env)


def test_the_token_is_not_in_the_request_repr() -> None:
    req = ChargeRequest(
        idempotency_key="o:charge", payment_token="tok_secret_4242", amount_cents=1, currency="EUR"
    )
    assert "tok_secret" not in repr(req)


async def test_nobody_listening_is_unavailable_not_an_answer() -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = HttpCardProvider(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(ProviderUnavailable, match="will retry"):
        await provider.charge(
            ChargeRequest(
                idempotency_key="o:charge", payment_token="tok_visa", amount_cents=1, currency="EUR"
            )
        )
    with pytest.raises(ProviderUnavailable):
        await provider.lookup_charge("o:charge")


def test_the_worker_stops_at_start_on_a_missing_provider_setting() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "from orders_payment.worker import main; main()"],
        env={"PATH": "/usr/bin:/bin", "VAULT_ADDR": "http://127.0.0.1:1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "orders-payment-worker: configuration error: ORDERS_PAYMENT_PROVIDER is not set: "
        "set it to the payment provider adapter to use (simulator)"
    ]
