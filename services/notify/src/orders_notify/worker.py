"""Entry point of the notify worker: ``orders-notify-worker``.

Identity, credentials, logging, metrics and shutdown are the shared runtime's
job; this module only says which activities the service hosts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orders_notify.activities import NotifyActivities
from orders_shared.codec import TransitClient
from orders_shared.db import ConnectionSource

SERVICE = "notify"


def build_activities(db: ConnectionSource, transit: TransitClient) -> list[Callable[..., Any]]:
    """The activities this service hosts, bound to a connection source and to Transit
    as this service's own identity (it opens the sealed field that is its to read)."""
    acts = NotifyActivities(db, transit)
    return [acts.notify_customer, acts.record_order_status]


def main() -> None:
    from orders_shared.runtime import run_service

    run_service(service=SERVICE, activities=build_activities)


if __name__ == "__main__":
    main()
