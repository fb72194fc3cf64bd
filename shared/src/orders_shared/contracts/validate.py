"""Contract of the validate service: check, price and record a submitted order."""

from dataclasses import dataclass

from orders_shared.catalog import SERVICES
from orders_shared.contracts.common import Order

TASK_QUEUE = SERVICES["validate"].task_queue

VALIDATE_ORDER = "validate_order"


@dataclass(frozen=True)
class ValidateOrderInput:
    order: Order


@dataclass(frozen=True)
class PricedLine:
    sku: str
    quantity: int
    unit_price_cents: int


@dataclass(frozen=True)
class ValidateOrderOutput:
    """The accepted order as priced from the catalogue at validation time."""

    order_id: str
    total_cents: int
    currency: str
    lines: tuple[PricedLine, ...]
