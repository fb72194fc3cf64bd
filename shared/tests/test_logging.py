"""The redaction step: no secret or personal value survives into a log line."""

from typing import Any

from orders_shared.logging import REDACTED, redact


def _redact(**event: Any) -> dict[str, Any]:
    return dict(redact(None, "info", dict(event)))


def test_sensitive_keys_are_redacted_whatever_their_value() -> None:
    out = _redact(
        password="hunter2",
        vault_token="s.abc",
        email="ada@example.com",
        shipping_address="12 Analytical Way",
        payment_token="tok_visa",
        customer_name="Ada",
        payload=b"{}",
        event="x",
    )
    assert out == {
        "password": REDACTED,
        "vault_token": REDACTED,
        "email": REDACTED,
        "shipping_address": REDACTED,
        "payment_token": REDACTED,
        "customer_name": REDACTED,
        "payload": REDACTED,
        "event": "x",
    }


def test_secret_looking_values_are_redacted_under_any_key() -> None:
    out = _redact(
        error="login failed with s." + "AbCdEfGh" * 3 + " for role x",
        detail="bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZGEifQ.sig",
        sealed="vault:v1:abcd",
    )
    assert out["error"] == f"login failed with {REDACTED} for role x"
    assert "eyJ" not in out["detail"]
    assert out["sealed"].startswith(REDACTED)


def test_descriptive_keys_and_plain_values_are_kept() -> None:
    event = {"token_seconds_left": 12.5, "lease_ttl": 300, "db_role": "order-notify", "event": "e"}
    assert _redact(**event) == event
