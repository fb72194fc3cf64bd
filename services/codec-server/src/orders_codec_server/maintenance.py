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

Needs ``VAULT_ADDR`` and ``VAULT_TOKEN``: an operator token with ``update`` on
``transit/rewrap/<key>`` for every payload key the document uses
(``orders-payload-<service>``, and ``orders-payload`` for history written
before per-service keys); no worker or reader policy grants it.

The report counts a payload as *rewrapped* when its wrapped key moved to a newer
key version, and as *already on the latest key version* when Transit returned
the same version (the document keeps the original bytes then: Transit re-encrypts
on every rewrap, so comparing ciphertexts would never find one unchanged).
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
    TransitClient,
    TransitError,
    rewrap_history_json,
)

NEEDS = (
    "an operator token with update on transit/rewrap/<key> for each payload key "
    "(orders-payload-<service>, orders-payload)"
)


def summary(report: RewrapReport) -> str:
    return (
        f"orders-codec: {report.payloads} payloads: {report.rewrapped} rewrapped, "
        f"{report.unchanged} already on the latest key version, {report.skipped} not envelopes"
    )


def _rewrap(source: Path, target: Path, transit: TransitClient) -> RewrapReport:
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
            f"orders-codec: error: set VAULT_ADDR and VAULT_TOKEN ({NEEDS})",
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
    print(summary(report))


if __name__ == "__main__":
    main()
