"""Entry point of the orchestrator worker: ``orders-orchestrator-worker``.

It hosts the workflow only: no activities, no database credentials.
"""

from __future__ import annotations

from orders_orchestrator.workflows import OrderWorkflow

SERVICE = "orchestrator"
WORKFLOWS = [OrderWorkflow]


def main() -> None:
    from orders_shared.runtime import run_service

    run_service(service=SERVICE, workflows=WORKFLOWS)


if __name__ == "__main__":
    main()
