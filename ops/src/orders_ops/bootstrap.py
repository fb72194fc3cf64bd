"""``orders-bootstrap``: configure PostgreSQL and Vault as code, idempotently.

Order matters: the database first (group roles must exist before Vault's
creation statements can grant them), then Vault, then the local identity
issuer's key (which Vault's JWT auth trusts).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from orders_ops.settings import StackSettings


@dataclass
class BootstrapReport:
    """What a bootstrap run changed; a second run on the same stack changes nothing."""

    changes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.changes:
            return "no changes (already configured)"
        return f"{len(self.changes)} changes"


def bootstrap(settings: StackSettings, *, vault_is_new: bool = False) -> BootstrapReport:
    report = BootstrapReport()
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="orders-bootstrap", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="list every change")
    args = parser.parse_args(argv)
    report = bootstrap(StackSettings.from_env())
    print(f"orders-bootstrap: {report.summary()}")
    if args.verbose:
        for change in report.changes:
            print(f"  {change}")
    sys.exit(0)
