"""Who is who: the service identities and the database roles each may use.

This is the one source of truth the Vault bootstrap, the local identity issuer,
the charts and the tests read. A service's Kubernetes ServiceAccount, its Vault
auth role and its Vault policy are all named after it (``orders-<service>``).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

NAMESPACE_DEFAULT = "orders"


@dataclass(frozen=True)
class ServiceSpec:
    """One trust boundary: a worker process with its own identity."""

    name: str
    task_queue: str
    db_roles: tuple[str, ...]
    # False for a service the order workflow does not call yet (``orders-ops new-service``
    # writes False): the client then does not wait for a worker on its task queue. Set it
    # to True in the same change that makes the orchestrator's workflow call it.
    workflow_step: bool = True

    @property
    def identity(self) -> str:
        """ServiceAccount name, Vault auth role name and Vault policy name."""
        return f"orders-{self.name}"


SERVICES: dict[str, ServiceSpec] = {
    s.name: s
    for s in (
        ServiceSpec("orchestrator", "orders-orchestrator", ()),
        ServiceSpec("validate", "orders-validate", ("order-validate",)),
        ServiceSpec(
            "inventory",
            "orders-inventory",
            ("order-reserve-inventory", "order-release-inventory"),
        ),
        ServiceSpec("payment", "orders-payment", ("order-process-payment",)),
        ServiceSpec("fulfill", "orders-fulfill", ("order-fulfill",)),
        ServiceSpec("notify", "orders-notify", ("order-notify",)),
    )
}

STEP_QUEUES: tuple[str, ...] = tuple(
    s.task_queue for s in SERVICES.values() if s.db_roles and s.workflow_step
)
"""The activity task queues the order workflow schedules on: an order needs a worker on each."""

DB_ROLES: tuple[str, ...] = tuple(r for s in SERVICES.values() for r in s.db_roles)


def group_role(db_role: str) -> str:
    """The NOLOGIN Postgres group role behind a Vault database role.

    ``order-reserve-inventory`` -> ``order_reserve_inventory`` (a plain SQL
    identifier, so it never needs quoting).
    """
    if db_role not in DB_ROLES:
        raise KeyError(f"unknown database role {db_role!r}; known: {', '.join(DB_ROLES)}")
    return db_role.replace("-", "_")


def service(name: str) -> ServiceSpec:
    try:
        return SERVICES[name]
    except KeyError:
        raise KeyError(f"unknown service {name!r}; known services: {', '.join(SERVICES)}") from None


def temporal_identity(identity: str) -> str:
    """``<identity>@<host>``: the identity a worker or client gives Temporal, recorded on
    every task it polls and every workflow it starts (``ActivityTaskStarted``,
    ``WorkflowTaskStarted``, ``WorkflowExecutionStarted``), so history and the UI name
    the service that ran each step. The SDK's default (``<pid>@<host>``) names none.
    In a cluster the host name is the pod's."""
    return f"{identity}@{socket.gethostname()}"
