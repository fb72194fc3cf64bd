"""The redaction step: no secret or personal value survives into a log line."""

from typing import Any

import pytest

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


def test_an_exception_is_logged_by_type_and_frames_never_by_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json
    import logging

    import structlog

    from orders_shared.logging import configure_logging

    try:
        configure_logging("test")
        try:
            # built at run time: frames show source lines, and a message comes from data
            card, email = "tok_" + "visa_4242", "alice" + "@example.com"
            raise ValueError(f"card {card} for {email}")
        except ValueError:
            # the Temporal SDK logs failed attempts through stdlib logging, with exc_info
            logging.getLogger("temporalio.activity").warning("activity failed", exc_info=True)
            structlog.get_logger().error("ours", exc_info=True)
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    assert [(e["event"], e["error_type"]) for e in lines] == [
        ("activity failed", "ValueError"),
        ("ours", "ValueError"),
    ]
    for entry in lines:
        text = json.dumps(entry)
        assert "tok_visa" not in text and "alice@" not in text
        assert "test_logging.py" in entry["stack"]  # where it happened is kept


def test_nested_dicts_and_lists_are_walked() -> None:
    out = _redact(
        event="vault.request",
        request={
            "headers": {"Authorization": "Bearer abc", "X-Vault-Token": "whatever"},
            "items": [{"email": "ada@example.com", "sku": "WIDGET-1"}, ("dev-root-abc123",)],
        },
    )
    assert out["request"] == {
        "headers": {"Authorization": REDACTED, "X-Vault-Token": REDACTED},
        "items": [{"email": REDACTED, "sku": "WIDGET-1"}, [REDACTED]],
    }


def test_urls_lose_their_userinfo_and_secret_parameters() -> None:
    out = _redact(
        dsn="postgresql://v-order-validate-abc:S3cretPass@127.0.0.1:5433/orders",
        endpoint="http://admin:hunter2@vault:8200/v1/sys/health?standbyok=true&token=abc",
        plain="http://127.0.0.1:8200/v1/sys/health",
    )
    assert out["dsn"] == f"postgresql://{REDACTED}@127.0.0.1:5433/orders"
    assert out["endpoint"] == (
        f"http://{REDACTED}@vault:8200/v1/sys/health?standbyok=true&token={REDACTED}"
    )
    assert out["plain"] == "http://127.0.0.1:8200/v1/sys/health"


@pytest.mark.parametrize(
    "token",
    [
        "s." + "A1b2C3d4" * 3,  # OpenBao service token
        "b." + "A1b2C3d4" * 3,  # OpenBao batch token
        "hvs." + "A1b2C3d4" * 3,
        "hvb." + "A1b2C3d4" * 3,
        "dev-root-" + "0f" * 16,  # this stack's dev root token
    ],
)
def test_openbao_and_vault_token_prefixes_are_known(token: str) -> None:
    out = _redact(error=f"denied for {token}.", nested={"list": [f"x {token}"]})
    assert out == {"error": f"denied for {REDACTED}.", "nested": {"list": [f"x {REDACTED}"]}}


def test_words_that_merely_start_like_a_prefix_are_kept() -> None:
    text = "status.ok; bs.short; its.fine"
    assert _redact(msg=text) == {"msg": text}
