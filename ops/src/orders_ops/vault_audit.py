"""Count Vault requests from Vault's own audit log, not from the code's counters.

A claim like "the envelope codec makes no Vault call per workflow" is only as good
as the counter behind it: a counter the codec keeps itself cannot see a call the
codec forgot to count. Vault's file audit device records every request it
served, so tests and benchmarks mark the log, run, and count what Vault saw.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AuditMark:
    offset: int


class VaultAuditLog:
    """Read the JSON lines a file audit device writes (one ``request`` and one
    ``response`` entry per call; only ``request`` entries are counted)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> AuditMark:
        """The current end of the log; count requests after it with :meth:`requests`."""
        try:
            return AuditMark(self.path.stat().st_size)
        except FileNotFoundError:
            return AuditMark(0)

    def requests(self, since: AuditMark, *, prefix: str = "") -> Counter[str]:
        """``"<operation> <path>"`` -> number of requests Vault served since the mark,
        for paths starting with ``prefix``. Health checks (``sys/health``) are not
        requests of the code under test and are left out."""
        counts: Counter[str] = Counter()
        with self.path.open("rb") as log:
            log.seek(since.offset)
            for raw in log:
                if not raw.endswith(b"\n"):
                    break  # a line Vault is still writing
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                if entry.get("type") != "request":
                    continue
                request = entry.get("request") or {}
                path = str(request.get("path", ""))
                if path.startswith("sys/health") or not path.startswith(prefix):
                    continue
                counts[f"{request.get('operation', '?')} {path}"] += 1
        return counts
