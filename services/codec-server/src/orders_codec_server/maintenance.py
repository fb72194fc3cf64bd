"""``orders-codec``: payload key maintenance.

    orders-codec rewrap <history.json> [-o <out.json>]

Rewraps the wrapped data key of every envelope payload in a JSON document
(e.g. ``temporal workflow show -o json`` output kept as an export or archive)
to the latest version of its Transit key, so older key versions can be
retired (``min_decryption_version`` raised) without losing that data. Only
the wrapped key changes: Transit ``rewrap`` never reveals the data key and the
encrypted data is not touched.

It cannot rewrap payloads inside Temporal's own history: history events are
immutable. Keep ``min_decryption_version`` at or below the oldest key version
any history within the namespace's retention still references; export (and
rewrap) before raising it if older histories must stay readable.

Needs ``VAULT_ADDR`` and ``VAULT_TOKEN`` (an operator token with ``update`` on
``transit/rewrap/orders-payload``; no worker or reader policy grants it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from orders_shared.codec import (
    PayloadDecodeError,
    RewrapReport,
    TokenTransit,
    TransitError,
    rewrap_history_json,
)


def _rewrap(source: Path, target: Path, transit: TokenTransit) -> RewrapReport:
    document = json.loads(source.read_text())
    report = asyncio.run(rewrap_history_json(document, transit))
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=2))
    tmp.replace(target)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="orders-codec", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    rewrap = sub.add_parser("rewrap", help="rewrap data keys in an exported history (JSON)")
    rewrap.add_argument("file", type=Path)
    rewrap.add_argument("-o", "--output", type=Path, help="write here (default: in place)")
    args = parser.parse_args(argv)

    addr, token = os.environ.get("VAULT_ADDR"), os.environ.get("VAULT_TOKEN")
    if not addr or not token:
        print(
            "orders-codec: error: set VAULT_ADDR and VAULT_TOKEN (an operator token with "
            "update on transit/rewrap/orders-payload)",
            file=sys.stderr,
        )
        sys.exit(2)
    transit = TokenTransit(addr.rstrip("/"), token)
    try:
        report = _rewrap(args.file, args.output or args.file, transit)
    except OSError as exc:
        print(f"orders-codec: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        sys.exit(2)
    except json.JSONDecodeError as exc:
        print(f"orders-codec: error: {args.file} is not JSON ({exc})", file=sys.stderr)
        sys.exit(2)
    except (PayloadDecodeError, TransitError) as exc:
        print(f"orders-codec: error: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        transit.close()
    print(
        f"orders-codec: {report.payloads} payloads: {report.rewrapped} rewrapped, "
        f"{report.unchanged} already on the latest key version, {report.skipped} not envelopes"
    )


if __name__ == "__main__":
    main()
