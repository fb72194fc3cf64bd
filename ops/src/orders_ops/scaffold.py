"""``orders-ops new-service <name> --activity <name> ...``: a new service in minutes.

Creates the service package (worker, stub activities, README, tests), its contract
module in ``shared``, its chart from the library chart, and registers it: the
catalog entry (from which the Vault identity, policy, payload key, database role,
local-stack worker and deploy tests follow), a stub row set in the grant matrix (code,
doc and test samples), CODEOWNERS, Tilt, the workspace, the README's service table,
the production values example and the deployment doc. No Dockerfile: images are
built by the repository's shared Dockerfile.

Every name is checked and every anchor found before anything is written, so a
refusal changes nothing. ``--dry-run`` lists what would be created and changed.
"""

from __future__ import annotations

import argparse
import importlib.util
import keyword
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from orders_ops.scaffold_files import NewService, ScaffoldError, new_files
from orders_ops.scaffold_registries import existing_services, inserts, read

SERVICE_NAME = re.compile(r"^[a-z][a-z0-9]{1,19}$")
ACTIVITY_NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
RESERVED = frozenset(
    {
        "admin", "audit", "bootstrap", "client", "codec", "default", "lib", "local",
        "ops", "orders", "platform", "postgres", "reader", "root", "shared", "stack",
        "temporal", "test", "tests", "vault", "workflow", "workflows",
    }
)  # fmt: skip
"""Names the platform already uses for something else (identities, charts, packages)."""


def check_names(root: Path, name: str, activities: Sequence[str]) -> NewService:
    """The request as a :class:`NewService`, or a refusal that says what to change."""
    if not SERVICE_NAME.match(name):
        raise ScaffoldError(
            f"service name {name!r}: use 2-20 lowercase letters and digits, starting with a "
            "letter (e.g. loyalty): it becomes a Python package (orders_<name>), a Kubernetes "
            "name (orders-<name>) and a Postgres role (order_<name>), which allow no other mix"
        )
    if name in RESERVED:
        raise ScaffoldError(f"service name {name!r} is reserved by the platform: choose another")
    taken = [p for p in (f"services/{name}", f"helm/{name}") if (root / p).exists()]
    if name in existing_services(root) or taken:
        where = ", ".join(taken) or "shared/src/orders_shared/catalog.py"
        raise ScaffoldError(f"service {name!r} exists already ({where}): choose another name")
    if not activities:
        raise ScaffoldError("give at least one --activity <name> (e.g. --activity award_points)")
    for act in activities:
        if not ACTIVITY_NAME.match(act) or keyword.iskeyword(act) or len(act) > 60:
            raise ScaffoldError(
                f"activity name {act!r}: use a lowercase snake_case identifier of at most 60 "
                "characters that is not a Python keyword (e.g. award_points)"
            )
    if len(set(activities)) != len(activities):
        raise ScaffoldError("an activity name is given twice: give each once")
    return NewService(name, tuple(activities))


def plan(root: Path, svc: NewService) -> tuple[dict[str, str], dict[str, str]]:
    """(files to create, files to change): path -> full new content. Writes nothing."""
    created = new_files(root, svc)
    if existing := [p for p in created if (root / p).exists()]:
        raise ScaffoldError(f"would overwrite {', '.join(existing)}: remove them or pick a name")
    changed: dict[str, str] = {}
    for ins in inserts(root, svc):
        if ins.path not in changed:
            changed[ins.path] = read(root, ins.path)
        changed[ins.path] = ins.apply(changed[ins.path])
    return created, changed


def _fill_chart_readme(root: Path, name: str) -> None:
    """The chart README's values table, by the repository's own generator."""
    spec = importlib.util.spec_from_file_location("chart_readme", root / "helm/chart_readme.py")
    if spec is None or spec.loader is None:
        raise ScaffoldError("helm/chart_readme.py: cannot load it to write the chart README")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    chart = root / "helm" / name
    readme = chart / "README.md"
    readme.write_text(module.render(readme.read_text(), module.values_table(chart)))


def new_service(root: Path, name: str, activities: Sequence[str], *, dry_run: bool) -> str:
    """Scaffold (or with ``dry_run`` only list) a service; returns what to tell the user."""
    svc = check_names(root, name, activities)
    created, changed = plan(root, svc)
    lines = [f"create  {p}" for p in created] + [f"change  {p}" for p in changed]
    if dry_run:
        return "\n".join(["dry run: nothing written", *lines])
    for path, content in {**created, **changed}.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    _fill_chart_readme(root, name)
    return "\n".join(
        [
            *lines,
            "",
            "next:",
            "  python3 -m uv lock && make install     # the new workspace member",
            f"  fill in services/{name}/src/orders_{name}/activities.py and "
            f"shared/src/orders_shared/contracts/{name}.py",
            f"  replace the stub grants of order-{name} in ops/src/orders_ops/grants.py, "
            "docs/grant-matrix.md and ops/tests/test_grant_matrix.py",
            "  .venv/bin/orders-bootstrap               # its identity, policy and role, "
            "on a running stack",
            "see docs/adding-a-service.md",
        ]
    )


def find_root(start: Path) -> Path:
    for folder in (start, *start.parents):
        if (folder / "shared/src/orders_shared/catalog.py").is_file():
            return folder
    raise ScaffoldError(f"{start} is not inside the orders repository: run from it or pass --root")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="orders-ops", description="Platform tasks for teams.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    new = sub.add_parser(
        "new-service",
        help="scaffold a service: package, contract, chart, identity, grants, owners, Tilt",
    )
    new.add_argument("name", help="lowercase letters and digits, e.g. loyalty")
    new.add_argument(
        "--activity", action="append", default=[], help="an activity it hosts (repeatable)"
    )
    new.add_argument("--dry-run", action="store_true", help="list the files, write nothing")
    new.add_argument("--root", type=Path, default=None, help="repository root (default: found)")
    args = parser.parse_args(argv)
    try:
        root = (args.root or find_root(Path.cwd())).resolve()
        print(new_service(root, args.name, args.activity, dry_run=args.dry_run))
    except ScaffoldError as exc:
        print(f"orders-ops new-service: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
