"""Seal keys: the client may wrap seal data keys (Transit encrypt) and never unwrap them;
each consumer may unwrap (decrypt) with its own seal key only. Envelope sealing
(orders_shared.sealing, format orders-seal/1) rests on exactly these grants."""

from __future__ import annotations

from orders_ops.policies import CLIENT_POLICY, SEALED_SERVICES, all_policies, seal_key, seal_keys
from orders_shared.catalog import SERVICES


def _seal_paths(policy: str) -> set[str]:
    paths = {line.split('"')[1] for line in policy.splitlines() if line.startswith("path ")}
    return {p for p in paths if "orders-seal" in p}


def test_the_client_wraps_seal_data_keys_and_cannot_unwrap_them() -> None:
    assert _seal_paths(all_policies()[CLIENT_POLICY]) == {"transit/encrypt/orders-seal-*"}


def test_each_consumer_unwraps_with_its_own_seal_key_only() -> None:
    policies = all_policies()
    for spec in SERVICES.values():
        expected = (
            {f"transit/decrypt/{seal_key(spec.name)}"} if spec.name in SEALED_SERVICES else set()
        )
        assert _seal_paths(policies[spec.identity]) == expected, spec.name
    # nobody may make plaintext data keys of a seal key, nor rewrap or read it
    for text in policies.values():
        for key in seal_keys():
            for op in ("datakey/plaintext", "datakey/wrapped", "rewrap", "keys", "export"):
                assert f"transit/{op}/{key}" not in text
