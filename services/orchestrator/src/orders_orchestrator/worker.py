"""Entry point of the orchestrator worker: ``orders-orchestrator-worker``.

It hosts the workflow only: no activities, no database credentials; beside it runs
the guard (:mod:`orders_orchestrator.guard`), which resets a run that an activity
answer of zero or several payloads stopped.
"""

from __future__ import annotations

from orders_orchestrator.workflows import OrderWorkflow

SERVICE = "orchestrator"
WORKFLOWS = [OrderWorkflow]


def main() -> None:
    from orders_orchestrator import guard
    from orders_shared.runtime import run_service

    run_service(service=SERVICE, workflows=WORKFLOWS, companions=[guard.run])


if __name__ == "__main__":
    main()
