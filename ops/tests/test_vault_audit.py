"""Vault's own audit log counts the requests it served, one per call."""

from __future__ import annotations

import hvac
import pytest

from orders_ops.stack import Stack
from orders_ops.vault_audit import VaultAuditLog
from orders_ops.vault_bootstrap import audit_log_file, root_client

pytestmark = pytest.mark.stack


def test_audit_log_counts_exactly_the_requests_vault_served(stack: Stack) -> None:
    log = VaultAuditLog(audit_log_file(stack.settings))
    client: hvac.Client = root_client(stack.settings)
    mark = log.mark()
    for _ in range(3):
        client.secrets.transit.list_keys()
    client.sys.list_enabled_audit_devices()
    seen = log.requests(mark)
    assert seen["list transit/keys/"] == 3
    assert seen["read sys/audit"] == 1
    assert sum(seen.values()) == 4
    assert log.requests(mark, prefix="transit/") == {"list transit/keys/": 3}
    # nothing after a fresh mark
    assert sum(log.requests(log.mark()).values()) == 0
