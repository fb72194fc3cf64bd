"""The files ``orders-ops new-service`` creates: the service package, its contract and
its chart, rendered from ``scaffold_templates/`` (package data).

The chart's ``values.yaml`` and ``values.schema.json`` are derived from a live worker
chart of the repository (:data:`REFERENCE_CHART`) rather than from a template: their
``global`` block must stay identical across every worker chart (a deploy test checks
it), so copying today's reference cannot drift the way a frozen template would.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template

REFERENCE_CHART = "notify"
"""A worker chart with database access whose section is named after its folder."""

_TEMPLATES = files("orders_ops") / "scaffold_templates"


class ScaffoldError(Exception):
    """A refusal: the message names the problem and the fix."""


@dataclass(frozen=True)
class NewService:
    """What the command was asked for: a service name and its activities."""

    name: str
    activities: tuple[str, ...]

    @property
    def package(self) -> str:
        return f"orders_{self.name}"

    @property
    def db_role(self) -> str:
        return f"order-{self.name}"

    @property
    def cls(self) -> str:
        return f"{self.name.capitalize()}Activities"

    def vars(self) -> dict[str, str]:
        return {
            "name": self.name,
            "db_role": self.db_role,
            "cls": self.cls,
            "activity_names": ", ".join(self.activities),
            "activity_list": ", ".join(f"`{a}`" for a in self.activities),
        }


def _camel(activity: str) -> str:
    return "".join(part.capitalize() for part in activity.split("_"))


def _activity_vars(activity: str) -> dict[str, str]:
    camel = _camel(activity)
    return {
        "activity": activity,
        "const": activity.upper(),
        "input": f"{camel}Input",
        "output": f"{camel}Output",
    }


def _render(template: str, values: dict[str, str]) -> str:
    return Template((_TEMPLATES / f"{template}.tmpl").read_text()).substitute(values)


def _imports(modules: dict[str, str]) -> str:
    """``from <module> import <names>`` lines sorted by module, as isort orders them."""
    return "\n".join(f"from {m} import {modules[m]}" for m in sorted(modules))


def _contract(svc: NewService) -> str:
    per = [_activity_vars(a) for a in svc.activities]
    constants = "\n".join(f'{v["const"]} = "{v["activity"]}"' for v in per)
    classes = "".join(_render("contract_classes.py", {**svc.vars(), **v}) for v in per)
    return _render("contracts.py", {**svc.vars(), "constants": constants, "classes": classes})


def _activities(svc: NewService) -> str:
    per = [_activity_vars(a) for a in svc.activities]
    names = sorted(v["const"] for v in per) + sorted(
        n for v in per for n in (v["input"], v["output"])
    )
    methods = "".join(_render("service/method.py", {**svc.vars(), **v}) for v in per)
    imports = "\n".join(f"    {n}," for n in names)
    return _render("service/activities.py", {**svc.vars(), "imports": imports, "methods": methods})


def _worker(svc: NewService) -> str:
    first_party = _imports(
        {
            f"{svc.package}.activities": svc.cls,
            "orders_shared.codec": "TransitClient",
            "orders_shared.db": "ConnectionSource",
        }
    )
    bound = ", ".join(f"acts.{a}" for a in svc.activities)
    return _render("service/worker.py", {**svc.vars(), "first_party": first_party, "bound": bound})


def _tests(svc: NewService) -> str:
    first_party = _imports(
        {
            f"{svc.package}.activities": f"DB_ROLE, {svc.cls}",
            f"{svc.package}.worker": "build_activities",
            "orders_shared.catalog": "SERVICES",
            "orders_shared.contracts": f"{svc.name} as contract",
            "orders_shared.db": "Connection",
        }
    )
    tests = "".join(
        _render("service/test_method.py", {**svc.vars(), **_activity_vars(a)})
        for a in svc.activities
    )
    names = ", ".join(f'"{a}"' for a in svc.activities)
    return _render(
        "service/test_activities.py",
        {**svc.vars(), "first_party": first_party, "names": names, "tests": tests},
    )


def _values_yaml(text: str, name: str) -> str:
    ref = REFERENCE_CHART
    out, n_key = re.subn(rf"(?m)^{ref}:$", f"{name}:", text)
    out, n_repo = re.subn(rf"(?m)^(\s+repository: )orders-{ref}$", rf"\g<1>orders-{name}", out)
    if (n_key, n_repo) != (1, 1):
        raise ScaffoldError(
            f"helm/{ref}/values.yaml: expected one '{ref}:' section with one "
            f"'repository: orders-{ref}' line (found {n_key} and {n_repo}); the scaffold "
            f"derives the new chart's values from it: fix that file or REFERENCE_CHART"
        )
    return out


def _values_schema(text: str, name: str) -> str:
    ref = REFERENCE_CHART
    schema = json.loads(text)
    if ref not in schema.get("properties", {}) or ref not in schema.get("required", []):
        raise ScaffoldError(
            f"helm/{ref}/values.schema.json has no required '{ref}' property: the scaffold "
            "derives the new chart's schema from it"
        )
    schema["title"] = f"values of the {name} chart (orders-{name} worker)"
    schema["required"] = [name if k == ref else k for k in schema["required"]]
    schema["properties"] = {(name if k == ref else k): v for k, v in schema["properties"].items()}
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def new_files(root: Path, svc: NewService) -> dict[str, str]:
    """Repository-relative path -> content of every file the scaffold creates (the chart
    README's values table is filled in after the chart is written)."""
    v = svc.vars()
    src = f"services/{svc.name}/src/{svc.package}"
    ref = root / "helm" / REFERENCE_CHART
    try:
        values = (ref / "values.yaml").read_text()
        schema = (ref / "values.schema.json").read_text()
        lock = (ref / "Chart.lock").read_text()
    except FileNotFoundError as exc:
        raise ScaffoldError(
            f"{exc.filename}: missing; the new chart is derived from helm/{REFERENCE_CHART}"
        ) from None
    return {
        f"services/{svc.name}/pyproject.toml": _render("service/pyproject.toml", v),
        f"services/{svc.name}/README.md": _render("service/README.md", v),
        f"{src}/__init__.py": _render("service/__init__.py", v),
        f"{src}/py.typed": "",
        f"{src}/activities.py": _activities(svc),
        f"{src}/worker.py": _worker(svc),
        f"services/{svc.name}/tests/test_activities.py": _tests(svc),
        f"shared/src/orders_shared/contracts/{svc.name}.py": _contract(svc),
        f"helm/{svc.name}/Chart.yaml": _render("chart/Chart.yaml", v),
        f"helm/{svc.name}/Chart.lock": lock,
        f"helm/{svc.name}/values.yaml": _values_yaml(values, svc.name),
        f"helm/{svc.name}/values.schema.json": _values_schema(schema, svc.name),
        f"helm/{svc.name}/templates/worker.yaml": _render("chart/worker.yaml", v),
        f"helm/{svc.name}/README.md": _render("chart/README.md", v),
    }
