"""Entry point of the validate worker: ``orders-validate-worker``.

Identity, credentials, logging, metrics and shutdown are the shared runtime's
job; this module only says which activities the service hosts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orders_shared.codec import TransitClient
from orders_shared.db import ConnectionSource
from orders_validate.activities import ValidateActivities

SERVICE = "validate"


def build_activities(
    db: ConnectionSource, transit: TransitClient | None = None
) -> list[Callable[..., Any]]:
    """The activities this service hosts, bound to a connection source.

    ``transit`` is part of every service's factory signature; this service opens
    no sealed field, so it does not use it.
    """
    acts = ValidateActivities(db)
    return [acts.validate_order]


def main() -> None:
    from orders_shared.runtime import run_service

    run_service(service=SERVICE, activities=build_activities)


if __name__ == "__main__":
    main()
