"""The registries a new service is added to, each by an insertion at an exact anchor.

Most of the platform reads the service list from ``orders_shared.catalog`` (the
Vault bootstrap, policies, identity issuer, local stack, deploy tests), so one
catalog line registers the identity, policy, payload key, database role and local
worker. What the catalog cannot reach is edited here: the grant matrix and its
doc and test samples, CODEOWNERS, the Tiltfile, the workspace ``pyproject.toml``,
the README's service table, the production values example and the deployment doc.

Every anchor is checked before any file is written: a missing or repeated anchor
stops the command with the file and the anchor, and nothing is changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from orders_ops.scaffold_files import NewService, ScaffoldError

CATALOG = "shared/src/orders_shared/catalog.py"


@dataclass(frozen=True)
class Insert:
    """Put ``text`` just before (or after) the one occurrence of ``anchor`` in ``path``."""

    path: str
    anchor: str
    text: str
    after: bool = False

    def apply(self, content: str) -> str:
        found = content.count(self.anchor)
        if found != 1:
            raise ScaffoldError(
                f"{self.path}: expected the anchor {self.anchor!r} once, found it {found} "
                "times; the file changed shape: add the entry by hand (docs/adding-a-service.md) "
                "or update orders_ops/scaffold_registries.py"
            )
        at = content.index(self.anchor) + (len(self.anchor) if self.after else 0)
        return content[:at] + self.text + content[at:]


def existing_services(root: Path) -> list[str]:
    """Service names in catalog order, read from the catalog's source."""
    return re.findall(r'ServiceSpec\(\s*"([a-z0-9-]+)"', read(root, CATALOG))


def _tilt_port(root: Path) -> int:
    ports = [
        int(p)
        for p in re.findall(r'^\s+\("[a-z0-9-]+", "\w+", (\d+)\),$', read(root, "Tiltfile"), re.M)
    ]
    if not ports:
        raise ScaffoldError("Tiltfile: no ('name', 'tier', port) entry found in SERVICES")
    return max(ports) + 1


def read(root: Path, path: str) -> str:
    """A repository file's text, or a refusal naming the missing file."""
    try:
        return (root / path).read_text()
    except FileNotFoundError:
        raise ScaffoldError(f"{path}: missing; is {root} the repository root?") from None


def _grant_doc_anchor(root: Path) -> str:
    """The last row of the table in docs/grant-matrix.md (the new row goes after it)."""
    lines = read(root, "docs/grant-matrix.md").splitlines()
    try:
        start = lines.index("| Vault database role | table | privilege | columns | why |")
    except ValueError:
        raise ScaffoldError(
            "docs/grant-matrix.md: the grant table's header row is missing"
        ) from None
    end = start
    while end + 1 < len(lines) and lines[end + 1].startswith("|"):
        end += 1
    return lines[end] + "\n"


STUB_WHY = "stub from orders-ops new-service: replace with what {role} needs"


def inserts(root: Path, svc: NewService) -> list[Insert]:
    n, role = svc.name, svc.db_role
    why = STUB_WHY.format(role=role)
    names = " ".join(s for s in existing_services(root))
    acts = ", ".join(f"`{a}`" for a in svc.activities)
    return [
        Insert(
            CATALOG,
            "    )\n}\n\nSTEP_QUEUES",
            f'        ServiceSpec("{n}", "orders-{n}", ("{role}",), workflow_step=False),\n',
        ),
        Insert(
            "ops/src/orders_ops/grants.py",
            "\n)\n\nTABLES: tuple[str, ...] = (",
            f"\n    # --- {n}: a stub row set (orders-ops new-service): write its real grants ---"
            f'\n    _g(\n        "{role}",\n        "products",\n        "SELECT",\n'
            f'        "{why}",\n        ("sku",),\n    ),',
        ),
        Insert(
            "docs/grant-matrix.md",
            _grant_doc_anchor(root),
            f"| `{role}` | `app.products` | SELECT | sku | {why} |\n",
            after=True,
        ),
        Insert(
            "ops/tests/test_grant_matrix.py",
            "}\n\nDENIED: dict[str, list[str]] = {",
            f'    "{role}": [  # stub: the rows your grants allow\n'
            "        (\"SELECT sku = '{s}' FROM app.products WHERE sku = '{s}'\", True),\n    ],\n",
        ),
        Insert(
            "ops/tests/test_grant_matrix.py",
            "}\n\n\ndef _sql(",
            f'    "{role}": [  # stub: what it must never do\n'
            "        \"SELECT email FROM app.customer_contacts WHERE order_id = '{o}'\",\n"
            "        \"SELECT * FROM app.payments WHERE order_id = '{o}'\",\n"
            "        \"UPDATE app.products SET sku = sku WHERE sku = '{s}'\",\n    ],\n",
        ),
        Insert(
            ".github/CODEOWNERS",
            "\n# Ownership changes need the platform team",
            f"{f'/services/{n}/':<31} @orders/{n}-team\n{f'/helm/{n}/':<31} @orders/{n}-team\n",
        ),
        Insert(
            "Tiltfile",
            ']\n\nif cfg.get("local"',
            f'    ("{n}", "activities", {_tilt_port(root)}),\n',
        ),
        Insert("pyproject.toml", "\n[dependency-groups]", f"orders-{n} = {{ workspace = true }}\n"),
        Insert(
            "pyproject.toml",
            "    # the real servers of the local stack",
            f'    "orders-{n}",\n',
        ),
        Insert(
            "pyproject.toml",
            "]\n\n[tool.ruff.lint.per-file-ignores]",
            f'    "{svc.package}",\n',
        ),
        Insert("pyproject.toml", "]\nexplicit_package_bases", f'    "services/{n}/src",\n'),
        Insert(
            "README.md",
            "| [codec-server](services/codec-server/) |",
            f"| [{n}](services/{n}/) | `orders-{n}` | {acts} | `{role}` |\n",
        ),
        Insert(
            "helm/values-production.example.yaml",
            "\ncodec-server:\n",
            f"\n{n}:\n  replicas: 2\n  image:\n    repository: orders-{n}\n"
            "    digest: sha256:" + "0" * 64 + "   # placeholder\n"
            "  resources:\n    requests: {cpu: 100m, memory: 192Mi}\n"
            '    limits: {cpu: "1", memory: 384Mi}\n  terminationGracePeriodSeconds: 60\n',
        ),
        *_deployment_doc(names, n),
    ]


def _deployment_doc(names: str, new: str) -> list[Insert]:
    """docs/deployment.md names the worker charts twice, space-separated, in catalog order."""
    return [
        Insert("docs/deployment.md", f"per worker ({names}", f" {new}", after=True),
        Insert("docs/deployment.md", f"for svc in {names}", f" {new}", after=True),
    ]
