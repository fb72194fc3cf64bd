"""Entry point of the payment worker: ``orders-payment-worker``.

Identity, credentials, logging, metrics and shutdown are the shared runtime's
job; this module only says which activities the service hosts and which payment
provider adapter they charge through (``ORDERS_PAYMENT_PROVIDER``,
``ORDERS_PAYMENT_PROVIDER_URL``, ``ORDERS_PAYMENT_PROVIDER_TIMEOUT``; see
:class:`orders_payment.provider.ProviderConfig`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from orders_payment.activities import PaymentActivities
from orders_payment.provider import PaymentProvider, ProviderConfig, provider_from_config
from orders_shared.codec import TransitClient
from orders_shared.config import ConfigError
from orders_shared.db import ConnectionSource

SERVICE = "payment"


def build_activities(
    db: ConnectionSource, transit: TransitClient, provider: PaymentProvider | None = None
) -> list[Callable[..., Any]]:
    """The activities this service hosts, bound to a connection source, to Transit as
    this service's own identity (it opens the sealed field that is its to read) and to
    the payment provider (from the environment unless given)."""
    if provider is None:
        provider = provider_from_config(ProviderConfig.from_env())
    acts = PaymentActivities(db, provider, transit)
    return [acts.process_payment, acts.refund_payment]


def main() -> None:
    from orders_shared.runtime import run_service

    try:  # fail fast, before logging in anywhere, on a bad provider setting
        ProviderConfig.from_env()
    except ConfigError as exc:
        print(f"orders-{SERVICE}-worker: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    run_service(service=SERVICE, activities=build_activities)


if __name__ == "__main__":
    main()
