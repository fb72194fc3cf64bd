"""ORDERS_BOOTSTRAP_MODE=external, our own logic (tests/test_bring_your_own.py runs it
against real servers): its settings, the policy the docs tell an admin to write, and
the one-line refusals before anything is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orders_ops.bootstrap import bootstrap
from orders_ops.bootstrap_identity import (
    BOOTSTRAP_POLICY_HCL,
    EXTERNAL_BOOTSTRAP_POLICY_HCL,
    BootstrapLoginError,
    bootstrap_vault_client,
)
from orders_ops.settings import SettingsError, StackSettings
from orders_ops.testing import free_port

BIN = Path(sys.executable).parent


@pytest.fixture
def external(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ORDERS_BOOTSTRAP_MODE", "external")
    monkeypatch.setenv("ORDERS_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ORDERS_DB_HOST", "db.example")
    monkeypatch.setenv("ORDERS_DB_NAME", "shop_orders")
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    return tmp_path


def test_external_settings_take_the_servers_addresses_and_keep_the_local_issuer(
    external: Path,
) -> None:
    s = StackSettings.from_env()
    assert (s.mode, s.db_host, s.postgres_port, s.database) == (
        "external",
        "db.example",
        5432,
        "shop_orders",
    )
    assert s.local_issuer and s.state_dir == external.resolve()


@pytest.mark.parametrize("missing", ["VAULT_ADDR", "ORDERS_DB_HOST"])
def test_external_without_an_address_names_it(
    external: Path, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    monkeypatch.delenv(missing)
    with pytest.raises(SettingsError, match=f"{missing} is required with ORDERS_BOOTSTRAP_MODE"):
        StackSettings.from_env()


def test_external_without_vault_token_names_it_and_the_policy(external: Path) -> None:
    with pytest.raises(BootstrapLoginError, match="needs VAULT_TOKEN") as info:
        bootstrap_vault_client(StackSettings.from_env())
    assert "--print-policy --external" in str(info.value)


def test_external_without_the_superuser_password_file_names_it(external: Path) -> None:
    with pytest.raises(SettingsError, match="postgres-superuser-password"):
        bootstrap(StackSettings.from_env())


def test_the_printed_external_policy_is_the_one_the_bootstrap_is_tested_with() -> None:
    printed = subprocess.run(
        [str(BIN / "orders-bootstrap"), "admin-setup", "--print-policy", "--external"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert printed == EXTERNAL_BOOTSTRAP_POLICY_HCL
    # the workers' auth/jwt instead of auth/kubernetes; no KV mount (passwords on file)
    assert 'path "auth/jwt/role/orders-*"' in printed and "kubernetes" not in printed
    assert "orders-bootstrap/" not in printed and "orders-bootstrap/" in BOOTSTRAP_POLICY_HCL
