"""The HA Vault's own logic, without servers: which folders it accepts, its ports, and what
its front checks. The failover itself is tested against real nodes in tests/test_vault_ha.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from orders_ops.settings import StackSettings
from orders_ops.stack import Stack, StackError, Vault
from orders_ops.vault_ha import VaultCluster, ha_enabled, node_ports


def _settings(state: Path, **extra: int) -> StackSettings:
    return StackSettings(
        state_dir=state,
        temporal_port=1,
        temporal_ui_port=2,
        temporal_http_port=3,
        temporal_metrics_port=4,
        vault_port=26200,
        postgres_port=5,
        **extra,
    )


def test_node_ports_start_two_above_the_vault_port_unless_set(tmp_path: Path) -> None:
    assert [node_ports(_settings(tmp_path), i) for i in range(3)] == [
        (26202, 26203),
        (26204, 26205),
        (26206, 26207),
    ]
    assert node_ports(_settings(tmp_path, vault_ha_first_port=30000), 2) == (30004, 30005)


def test_a_state_folder_holding_a_cluster_is_run_as_one_without_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORDERS_VAULT_HA", raising=False)
    settings = _settings(tmp_path)
    assert not ha_enabled(settings)
    assert type(Stack(settings).vault) is Vault
    (tmp_path / "vault-ha" / "node-1").mkdir(parents=True)
    assert ha_enabled(settings)  # so `orders-stack down` stops all three nodes
    assert isinstance(Stack(settings).vault, VaultCluster)


def test_a_single_node_folder_is_refused_in_ha_mode_by_name(tmp_path: Path) -> None:
    data = tmp_path / "vault" / "data"
    data.mkdir(parents=True)
    (data / "vault.db").write_text("")
    with pytest.raises(StackError, match=r"single-node Vault .*ORDERS_STATE_DIR.*reset"):
        VaultCluster(_settings(tmp_path)).start(1)


def test_the_front_sends_only_to_the_node_whose_health_answers_200(tmp_path: Path) -> None:
    cluster = VaultCluster(_settings(tmp_path))
    config = cluster.front.config()
    assert "bind 127.0.0.1:26200" in config
    for port in (26202, 26204, 26206):
        assert f"127.0.0.1:{port} check" in config
    # the active node only: a standby answers 429, and no standbyok here
    assert "http-check send meth GET uri /v1/sys/health\n" in config
    assert "http-check expect status 200" in config
    assert "on-marked-down shutdown-sessions" in config
