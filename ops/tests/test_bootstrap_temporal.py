"""The order workflow's search attributes (issue 25 item 3) on the real dev server:
``orders-bootstrap temporal`` adds them to a namespace once (a second run changes
nothing), and a name held with another type is refused with the fix."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
    RemoveSearchAttributesRequest,
)
from temporalio.client import Client

from orders_ops.namespaces import ensure_namespace
from orders_ops.stack import Stack
from orders_shared.search_attributes import (
    SEARCH_ATTRIBUTES,
    SearchAttributeError,
    register_search_attributes,
)

BOOTSTRAP = str(Path(sys.executable).with_name("orders-bootstrap"))


async def _custom(address: str, namespace: str) -> dict[str, int]:
    client = await Client.connect(address, namespace=namespace)
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    return dict(listed.custom_attributes)


def _bootstrap_temporal(stack: Stack, namespace: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BOOTSTRAP, "temporal", "--namespace", namespace],
        env={"PATH": "/usr/bin:/bin", "TEMPORAL_ADDRESS": stack.settings.temporal_address},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bootstrap_temporal_adds_the_attributes_once(stack: Stack) -> None:
    address = stack.settings.temporal_address
    namespace = f"sa-{uuid.uuid4().hex[:8]}"

    async def bare_namespace() -> None:  # registered without them (not ensure_namespace)
        await ensure_namespace(address, namespace)
        client = await Client.connect(address, namespace=namespace)
        await client.operator_service.remove_search_attributes(
            RemoveSearchAttributesRequest(
                namespace=namespace, search_attributes=list(SEARCH_ATTRIBUTES)
            )
        )

    asyncio.run(bare_namespace())
    assert not set(SEARCH_ATTRIBUTES) & set(asyncio.run(_custom(address, namespace)))

    first = _bootstrap_temporal(stack, namespace)
    assert first.returncode == 0, first.stderr
    assert "OrderOutcome (Keyword) added" in first.stdout and "2 changes" in first.stdout
    custom = asyncio.run(_custom(address, namespace))
    keyword = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
    assert {k: custom[k] for k in SEARCH_ATTRIBUTES} == dict.fromkeys(SEARCH_ATTRIBUTES, keyword)
    again = _bootstrap_temporal(stack, namespace)
    assert (again.returncode, again.stdout.strip()) == (0, "orders-bootstrap temporal: no changes")


def test_a_name_held_with_another_type_is_refused_with_the_fix(stack: Stack) -> None:
    address = stack.settings.temporal_address
    namespace = f"sa-text-{uuid.uuid4().hex[:8]}"

    async def run() -> None:
        await ensure_namespace(address, namespace)
        client = await Client.connect(address, namespace=namespace)
        await client.operator_service.remove_search_attributes(
            RemoveSearchAttributesRequest(namespace=namespace, search_attributes=["OrderOutcome"])
        )
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace,
                search_attributes={"OrderOutcome": IndexedValueType.INDEXED_VALUE_TYPE_TEXT},
            )
        )
        with pytest.raises(SearchAttributeError, match="OrderOutcome is INDEXED_VALUE_TYPE_TEXT"):
            await register_search_attributes(client, namespace)

    asyncio.run(run())
    refused = _bootstrap_temporal(stack, namespace)
    assert refused.returncode == 1
    assert "temporal operator search-attribute remove" in refused.stderr, refused.stderr
