"""orders_shared.client against the real stack: a retried start is not a dedup, and a
start whose answer was lost still starts the order only once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import Client

from orders_ops.stack import Stack
from orders_shared import client as order_client
from orders_shared.client import (
    OrderConflictError,
    client_vault_config,
    connect,
    submit_order,
)
from orders_shared.codec import VaultTransit
from orders_shared.identity import VaultSession
from orders_shared.order_input import parse_order


def make_order(order_id: str, **changes: Any) -> Any:
    data = {
        "order_id": order_id,
        "customer_id": "c-1",
        "customer_name": "Ada Lovelace",
        "email": "ada@example.com",
        "shipping_address": "1 Main Street",
        "payment_token": "tok_visa",
        "lines": [{"sku": "WIDGET-1", "quantity": 1}],
    }
    data.update(changes)
    return parse_order(data)


@pytest_asyncio.fixture(loop_scope="session")
async def transit(stack: Stack) -> AsyncIterator[VaultTransit]:
    config = client_vault_config(
        {},
        default_addr=stack.settings.vault_addr,
        default_token_file=stack.settings.token_file("client"),
    )
    session = await VaultSession.open(config)
    try:
        yield VaultTransit(session)
    finally:
        await session.close()


@pytest_asyncio.fixture(loop_scope="session")
async def client(stack: Stack, transit: VaultTransit) -> Client:
    return await connect(stack.settings.temporal_address, transit)


async def runs_of(client: Client, order_id: str) -> int:
    return len([w async for w in client.list_workflows(f"WorkflowId = '{order_id}'")])


async def test_a_retried_start_whose_first_answer_was_lost_is_not_a_dedup(
    client: Client, transit: VaultTransit, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the same submission id twice is what a retry inside one submit looks like
    fixed = uuid.uuid4()
    monkeypatch.setattr(order_client.uuid, "uuid4", lambda: fixed)
    order = make_order(f"lib-retry-{uuid.uuid4().hex[:8]}")
    first = await submit_order(client, order, wait=False, transit=transit)
    again = await submit_order(client, order, wait=False, transit=transit)
    assert (first.deduplicated, again.deduplicated) == (False, False)
    assert again.run_id == first.run_id
    assert await runs_of(client, order.order_id) == 1


async def test_other_content_under_the_same_id_is_a_conflict(
    client: Client, transit: VaultTransit
) -> None:
    oid = f"lib-conflict-{uuid.uuid4().hex[:8]}"
    first = await submit_order(client, make_order(oid), wait=False, transit=transit)
    same = await submit_order(client, make_order(oid), wait=False, transit=transit)
    assert (first.deduplicated, same.deduplicated, same.run_id) == (False, True, first.run_id)
    for change in (
        {"payment_token": "tok_other"},  # a sealed field
        {"lines": [{"sku": "WIDGET-1", "quantity": 2}]},  # a plain one
    ):
        with pytest.raises(OrderConflictError, match="other contents"):
            await submit_order(client, make_order(oid, **change), wait=False, transit=transit)
    assert await runs_of(client, oid) == 1
