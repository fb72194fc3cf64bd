"""Contract of the inventory service: reserve stock, and release it (compensation)."""

from dataclasses import dataclass

from orders_shared.catalog import SERVICES
from orders_shared.contracts.common import OrderLine

TASK_QUEUE = SERVICES["inventory"].task_queue

RESERVE_INVENTORY = "reserve_inventory"
RELEASE_INVENTORY = "release_inventory"


@dataclass(frozen=True)
class ReserveInventoryInput:
    order_id: str
    lines: tuple[OrderLine, ...]


@dataclass(frozen=True)
class ReserveInventoryOutput:
    """What the order holds. ``already_reserved`` is true when an earlier
    attempt (or a duplicate delivery) had reserved it and nothing changed now."""

    order_id: str
    lines: tuple[OrderLine, ...]
    already_reserved: bool


@dataclass(frozen=True)
class ReleaseInventoryInput:
    order_id: str


@dataclass(frozen=True)
class ReleaseInventoryOutput:
    """``released`` lists the lines given back by *this* call (empty when an
    earlier call released them, or when nothing had been reserved)."""

    order_id: str
    released: tuple[OrderLine, ...]
