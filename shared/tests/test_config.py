"""Configuration fails at start, naming the variable and the fix."""

from pathlib import Path

import pytest

from orders_shared.config import ConfigError, VaultConfig, WorkerConfig


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    token = tmp_path / "token"
    token.write_text("header.payload.sig")
    env = {
        "VAULT_ADDR": "http://127.0.0.1:8200",
        "VAULT_AUTH_METHOD": "jwt",
        "VAULT_TOKEN_FILE": str(token),
    }
    env.update(extra)
    return env


def test_defaults_follow_the_service_identity(tmp_path: Path) -> None:
    cfg = WorkerConfig.from_env("inventory", _env(tmp_path))
    assert cfg.vault.auth_role == "orders-inventory"
    assert cfg.vault.auth_mount == "jwt"
    assert cfg.database.port == 5432
    assert cfg.temporal.address == "127.0.0.1:7233"


def test_missing_vault_addr_is_named(tmp_path: Path) -> None:
    env = _env(tmp_path)
    del env["VAULT_ADDR"]
    with pytest.raises(ConfigError, match=r"^VAULT_ADDR is not set"):
        WorkerConfig.from_env("validate", env)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("VAULT_AUTH_METHOD", "userpass", r"VAULT_AUTH_METHOD='userpass' is not supported"),
        ("VAULT_ADDR", "127.0.0.1:8200", r"VAULT_ADDR='127.0.0.1:8200' must start with http"),
        ("ORDERS_DB_PORT", "five", r"ORDERS_DB_PORT='five' is not a whole number"),
        ("ORDERS_DB_PORT", "70000", r"ORDERS_DB_PORT=70000 is out of range"),
        ("TEMPORAL_ADDRESS", "localhost", r"TEMPORAL_ADDRESS='localhost' must be host:port"),
        ("VAULT_TOKEN_FILE", "/nonexistent/token", r"VAULT_TOKEN_FILE='/nonexistent/token'"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WorkerConfig.from_env("payment", _env(tmp_path, **{name: value}))


def test_token_method_needs_an_explicit_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^VAULT_TOKEN is not set"):
        WorkerConfig.from_env("notify", _env(tmp_path, VAULT_AUTH_METHOD="token"))


def test_unknown_service_is_named(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown service 'shipping'"):
        WorkerConfig.from_env("shipping", _env(tmp_path))


def test_repr_never_shows_a_token(tmp_path: Path) -> None:
    cfg = VaultConfig.from_env(
        "notify", _env(tmp_path, VAULT_AUTH_METHOD="token", VAULT_TOKEN="s.supersecretvalue")
    )
    assert "supersecretvalue" not in repr(cfg)
    assert cfg.static_token == "s.supersecretvalue"
