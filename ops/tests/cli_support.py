"""Running the ``orders`` CLI as its own process against a test stack."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from orders_ops.stack import Stack

ORDERS = [sys.executable, "-m", "orders_ops.cli"]


def order(order_id: str, name: str = "Ada Lovelace") -> dict[str, Any]:
    return {
        "order_id": order_id,
        "customer_id": "c-1",
        "customer_name": name,
        "email": "ada@example.com",
        "shipping_address": "1 Main Street",
        "payment_token": "tok_visa",
        "lines": [{"sku": "WIDGET-1", "quantity": 1}],
    }


def cli_env(stack: Stack, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORDERS_", "VAULT_"))}
    env.pop("TEMPORAL_ADDRESS", None)
    s = stack.settings
    env.update(
        ORDERS_STATE_DIR=str(s.state_dir),
        ORDERS_TEMPORAL_PORT=str(s.temporal_port),
        ORDERS_VAULT_PORT=str(s.vault_port),
    )
    env.update(extra)
    return env


def run(
    stack: Stack, *args: str, stdout: Any = subprocess.PIPE, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ORDERS, *args],
        env=cli_env(stack, **extra),
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        check=False,
    )
