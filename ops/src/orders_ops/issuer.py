"""Local identity issuer (process mode). Placeholder until the issuer lands."""

from __future__ import annotations

from orders_ops.settings import StackSettings


def tokens_fresh(settings: StackSettings) -> bool:
    return False


def main() -> None:
    raise SystemExit("not implemented yet")
