"""Contract of the orchestrator: the order workflow, its input, result and query."""

from dataclasses import dataclass, field

from orders_shared.catalog import SERVICES
from orders_shared.contracts.common import Order, OrderOutcome

TASK_QUEUE = SERVICES["orchestrator"].task_queue

ORDER_WORKFLOW = "OrderWorkflow"
CURRENT_STEP_QUERY = "current_step"
ANSWER_REFUSED_SIGNAL = "answer_refused"
"""Signal from the orchestrator's guard (``orders_orchestrator.guard``): an answer to the
named activity was refused outside the workflow (zero or several payloads); one arg, the
activity type."""


@dataclass(frozen=True)
class OrderWorkflowInput:
    order: Order


@dataclass(frozen=True)
class OrderWorkflowResult:
    """The outcome of one order.

    ``path`` lists every activity the workflow ran, in order, compensations
    included (their names are the activity name constants). ``reason_code`` is
    the error type that ended the happy path (``OutOfStock``...), and
    ``reason`` a short operator-facing explanation; both are ``None`` on
    success. Every path ends with the order's final status recorded in the
    database; when the customer message could not be written, ``notified`` is
    false and ``notify_problem`` says why.
    """

    order_id: str
    status: OrderOutcome
    path: list[str] = field(default_factory=list)
    reason_code: str | None = None
    reason: str | None = None
    total_cents: int | None = None
    tracking_id: str | None = None
    notified: bool = True
    """False when the customer could not be told (see ``notify_problem``)."""
    notify_problem: str | None = None
    """The error type that made the customer message impossible (e.g.
    ``SealedFieldInvalid``); the status was then recorded without a message and
    an error was logged and counted. ``None`` when notify succeeded."""
    recorded_status: str | None = None
    """What ``app.orders.status`` holds when notify could not record ``status``
    itself (e.g. an order already finished by an earlier run)."""
    compensation_problem: str | None = None
    """Set when a compensation could not finish: the refund was refused by the
    provider (``PaymentRefundRefused``) or not done by its deadline
    (``RefundUnfinished``). The order still ended; a person must settle the refund."""


@dataclass(frozen=True)
class CurrentStep:
    """The answer to :data:`CURRENT_STEP_QUERY`: the step running now (or
    ``done``) and the steps run so far."""

    step: str
    path: list[str]
