"""Each chart's README values table, generated from its values.schema.json (and the
defaults in its values.yaml), so the table never drifts from the schema.

    python helm/chart_readme.py          # rewrite the table in every helm/<chart>/README.md
    python helm/chart_readme.py --check  # exit 1 naming each README whose table is stale

The table sits between the markers ``<!-- values:start -->`` and ``<!-- values:end -->``;
the rest of the README is written by hand. tests/deploy/test_chart_readmes.py runs the
check.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

HELM = Path(__file__).resolve().parent
START = "<!-- values:start -->"
END = "<!-- values:end -->"
_MISSING = object()


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" not in schema:
        return schema
    target = _resolve(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
    merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return merged


def _type(schema: dict[str, Any]) -> str:
    if "const" in schema:
        return f"const {json.dumps(schema['const'])}"
    if "enum" in schema:
        return " \\| ".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return " \\| ".join(kind)
    if kind == "array" and isinstance(schema.get("items"), dict) and "type" in schema["items"]:
        return f"array of {schema['items']['type']}"
    return str(kind)


def _rows(
    schema: dict[str, Any], defs: dict[str, Any], values: Any, path: str
) -> Iterator[tuple[str, str, str, str]]:
    schema = _resolve(schema, defs)
    properties = schema.get("properties")
    if properties and schema.get("type", "object") == "object":
        for key, sub in properties.items():
            child = values.get(key, _MISSING) if isinstance(values, dict) else _MISSING
            yield from _rows(sub, defs, child, f"{path}.{key}" if path else key)
        return
    default = "" if values is _MISSING else f"`{json.dumps(values)}`"
    description = " ".join(str(schema.get("description", "")).split())
    yield path, _type(schema), default, description


def values_table(chart: Path) -> str:
    """The Markdown table for one chart: every leaf of its schema, in schema order."""
    schema = json.loads((chart / "values.schema.json").read_text())
    values = yaml.safe_load((chart / "values.yaml").read_text()) or {}
    defs = schema.get("definitions", {})
    lines = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for key, kind, default, description in _rows(schema, defs, values, ""):
        cell = description.replace("|", "\\|")
        lines.append(f"| `{key}` | {kind} | {default.replace('|', chr(92) + '|')} | {cell} |")
    return "\n".join(lines)


def charts() -> list[Path]:
    return sorted(p.parent for p in HELM.glob("*/values.schema.json"))


def render(readme: str, table: str) -> str:
    if START not in readme or END not in readme:
        raise ValueError(f"the README has no {START} ... {END} markers")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale tables")
    args = parser.parse_args(argv)
    stale = []
    for chart in charts():
        path = chart / "README.md"
        current = path.read_text()
        wanted = render(current, values_table(chart))
        if wanted != current:
            stale.append(path)
            if not args.check:
                path.write_text(wanted)
    if args.check and stale:
        for path in stale:
            print(
                f"{path}: values table differs from values.schema.json: run python "
                "helm/chart_readme.py",
                file=sys.stderr,
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
