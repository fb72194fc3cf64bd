"""``orders-bootstrap``: configure PostgreSQL and Vault as code, idempotently.

Order matters: the database first (group roles must exist before Vault's
creation statements can grant them), then the local identity issuer's key
(Vault's JWT auth trusts its public half), then Vault's database engine, then
the rest of Vault, then the first identity tokens.

Temporal: the order workflow's search attributes (``OrderOutcome``, ``OrderReason``,
:mod:`orders_shared.search_attributes`) are added to the namespace if missing: locally
always (the dev server's ``default``), in a cluster when ``TEMPORAL_ADDRESS`` is set
(namespace ``TEMPORAL_NAMESPACE``), or on their own with ``orders-bootstrap temporal``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import hvac
import hvac.exceptions

from orders_ops import issuer
from orders_ops.bootstrap_identity import (
    BOOTSTRAP_POLICY_HCL,
    BootstrapLoginError,
    admin_setup,
    bootstrap_vault_client,
)
from orders_ops.database import DatabaseBootstrapError, bootstrap_database
from orders_ops.settings import SettingsError, StackSettings
from orders_ops.vault_bootstrap import VaultBootstrapError, configure_vault
from orders_ops.vault_database import VaultDatabaseError, configure_database_engine
from orders_shared.config import ConfigError, TemporalConfig
from orders_shared.search_attributes import SearchAttributeError, register_search_attributes


@dataclass
class BootstrapReport:
    """What a bootstrap run changed; a second run on the same stack changes nothing."""

    changes: list[str] = field(default_factory=list)
    # things left undone on purpose, with the fix (not changes: a rerun repeats them)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.changes:
            return "no changes (already configured)"
        return f"{len(self.changes)} changes"


def bootstrap(settings: StackSettings, *, vault_is_new: bool = False) -> BootstrapReport:
    """Configure the database and Vault. In cluster mode (the bootstrap Job) there is
    no local identity issuer: workers log in with Kubernetes auth, generated
    passwords are kept in Vault (``orders-bootstrap`` KV) and nothing is written to
    disk."""
    report = BootstrapReport()
    local = settings.mode == "local"

    report.changes += asyncio.run(bootstrap_database(settings, vault_is_new=vault_is_new))

    if local and issuer.ensure_signing_key(settings):
        report.changes.append(f"identity: created signing key {settings.issuer_key_file}")

    client = bootstrap_vault_client(settings)
    try:
        report.changes += configure_database_engine(client, settings)
        report.changes += configure_vault(client, settings, notes=report.notes)
    finally:
        client.adapter.close()

    # Tokens are ephemeral (the issuer re-mints them), so writing them is not a change.
    if local and not issuer.tokens_fresh(settings):
        issuer.write_tokens(settings, issuer.ttl_from_env())

    if local:
        report.changes += asyncio.run(bootstrap_temporal(settings.temporal_address, "default"))
    elif os.environ.get("TEMPORAL_ADDRESS"):
        where = TemporalConfig.from_env()
        report.changes += asyncio.run(bootstrap_temporal(where.address, where.namespace))
    else:
        report.notes.append(
            "Temporal: TEMPORAL_ADDRESS is unset, so the search attributes OrderOutcome and "
            "OrderReason were not checked: run 'orders-bootstrap temporal' with it set "
            "(the order workflow's tasks fail in a namespace without them)"
        )
    return report


class TemporalBootstrapError(RuntimeError):
    """Temporal did not take the search attributes; the message names it and the fix."""


async def bootstrap_temporal(address: str, namespace: str) -> list[str]:
    """Add the order workflow's search attributes to ``namespace`` (idempotent)."""
    from temporalio.client import Client
    from temporalio.service import RPCError

    try:
        client = await Client.connect(address, namespace=namespace)
        return await register_search_attributes(client, namespace)
    except RPCError as exc:
        raise TemporalBootstrapError(
            f"Temporal at {address}, namespace {namespace!r}: cannot add the search "
            f"attributes OrderOutcome and OrderReason ({exc.status.name if exc.status else ''}"
            f" {exc.message}): the caller needs Temporal's operator API (Temporal Cloud: "
            "add them as Keyword with 'tcld namespace search-attributes add')"
        ) from None
    except RuntimeError as exc:  # the connect: nothing answers there
        if isinstance(exc, SearchAttributeError):
            raise TemporalBootstrapError(str(exc)) from None
        raise TemporalBootstrapError(
            f"Temporal at {address} did not answer ({type(exc).__name__}): start it or set "
            "TEMPORAL_ADDRESS"
        ) from None


def _temporal(argv: Sequence[str]) -> None:
    """``orders-bootstrap temporal``: the search attributes only, in any namespace."""
    parser = argparse.ArgumentParser(
        prog="orders-bootstrap temporal",
        description="Add the order workflow's search attributes (OrderOutcome, OrderReason: "
        "Keyword) to a Temporal namespace, if missing, through the operator API.",
    )
    try:
        where = TemporalConfig.from_env()
    except ConfigError as exc:
        raise SystemExit(f"orders-bootstrap temporal: error: {exc}") from None
    parser.add_argument("--address", default=where.address, help="[TEMPORAL_ADDRESS]")
    parser.add_argument("--namespace", default=where.namespace, help="[TEMPORAL_NAMESPACE]")
    args = parser.parse_args(argv)
    try:
        changes = asyncio.run(bootstrap_temporal(args.address, args.namespace))
    except TemporalBootstrapError as exc:
        raise SystemExit(f"orders-bootstrap temporal: error: {exc}") from None
    for change in changes:
        print(f"  {change}")
    print(f"orders-bootstrap temporal: {len(changes) or 'no'} changes")


def _admin_setup(args: argparse.Namespace) -> None:
    """``orders-bootstrap admin-setup``: run once by a Vault administrator."""
    if args.print_policy:
        print(BOOTSTRAP_POLICY_HCL, end="")
        return
    addr, token = os.environ.get("VAULT_ADDR"), os.environ.get("VAULT_TOKEN")
    if not addr or not token:
        raise SystemExit(
            "orders-bootstrap admin-setup: error: set VAULT_ADDR and VAULT_TOKEN (a Vault "
            "administrator's token) first; --print-policy shows what will be written"
        )
    client = hvac.Client(url=addr, token=token, timeout=10)
    try:
        changes = admin_setup(
            client, args.namespace, mount=args.mount, audience=args.audience or None
        )
    except (BootstrapLoginError, hvac.exceptions.VaultError) as exc:
        message = str(exc) if isinstance(exc, BootstrapLoginError) else type(exc).__name__
        raise SystemExit(f"orders-bootstrap admin-setup: error: {message}") from None
    for change in changes:
        print(f"  {change}")
    print("orders-bootstrap admin-setup: done; the bootstrap Job can now log in as itself")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["temporal"]:
        _temporal(argv[1:])
        return
    if argv[:1] == ["admin-setup"]:
        setup = argparse.ArgumentParser(
            prog="orders-bootstrap admin-setup",
            description="Once, as a Vault administrator: the bootstrap Job's policy and its "
            "Kubernetes auth role, so the Job needs no root token.",
        )
        setup.add_argument(
            "--namespace", default=os.environ.get("ORDERS_K8S_NAMESPACE") or "orders"
        )
        setup.add_argument("--mount", default="kubernetes", help="the Kubernetes auth mount")
        setup.add_argument("--audience", default="", help="the token audience to require")
        setup.add_argument("--print-policy", action="store_true", help="print the policy only")
        _admin_setup(setup.parse_args(argv[1:]))
        return
    parser = argparse.ArgumentParser(
        prog="orders-bootstrap",
        description=__doc__,
        epilog="'orders-bootstrap admin-setup --help': the one-time setup of the Job's identity; "
        "'orders-bootstrap temporal --help': the Temporal search attributes only",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="list every change")
    args = parser.parse_args(argv)
    try:
        report = bootstrap(StackSettings.from_env())
    except (
        BootstrapLoginError,
        VaultBootstrapError,
        VaultDatabaseError,
        SettingsError,
        issuer.IssuerError,
        DatabaseBootstrapError,
        TemporalBootstrapError,
    ) as exc:
        print(f"orders-bootstrap: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"orders-bootstrap: {report.summary()}")
    if args.verbose:
        for change in report.changes:
            print(f"  {change}")
    for note in report.notes:
        print(f"  note: {note}")
    sys.exit(0)
