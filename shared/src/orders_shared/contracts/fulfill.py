"""Contract of the fulfill service: ship the order to the address on file."""

from dataclasses import dataclass

from orders_shared.catalog import SERVICES

TASK_QUEUE = SERVICES["fulfill"].task_queue

FULFILL_ORDER = "fulfill_order"


@dataclass(frozen=True)
class FulfillOrderInput:
    """Only the id: the address is read from ``app.customer_contacts``."""

    order_id: str


@dataclass(frozen=True)
class FulfillOrderOutput:
    order_id: str
    carrier: str
    tracking_id: str
