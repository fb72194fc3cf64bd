"""``orders-bootstrap [apply]``: configure PostgreSQL and Vault as code, idempotently.
``orders-bootstrap plan``: say what apply would change, changing nothing (orders_ops.plan).

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
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field

import hvac
import hvac.exceptions

from orders_ops import issuer
from orders_ops.bootstrap_identity import (
    BOOTSTRAP_POLICY_HCL,
    EXTERNAL_BOOTSTRAP_POLICY_HCL,
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
    local = settings.local_issuer  # the identity issuer's keys and tokens live here
    if settings.mode == "external" and not settings.pg_password_file.is_file():
        raise SettingsError(
            f"ORDERS_BOOTSTRAP_MODE=external: no PostgreSQL superuser password at "
            f"{settings.pg_password_file}: write the password of the superuser 'postgres' "
            "there (mode 0600; see docs/bring-your-own.md)"
        )

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

    if settings.mode == "local":  # the stack's own dev server
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


def denied(exc: hvac.exceptions.Forbidden, settings: StackSettings) -> str:
    """One line for a request Vault refused the bootstrap's token: the method and path
    (never a value), and the policy that token needs."""
    path = urllib.parse.urlparse(exc.url or "").path.removeprefix("/v1/") or "?"
    method = (exc.method or "?").upper()
    if settings.mode == "external":
        fix = (
            "the token in VAULT_TOKEN needs the policy 'orders-bootstrap admin-setup "
            "--print-policy --external' prints (docs/bring-your-own.md)"
        )
    elif settings.mode == "cluster":
        fix = (
            "the bootstrap's identity needs the policy 'orders-bootstrap admin-setup "
            "--print-policy' prints (docs/deployment.md)"
        )
    else:
        fix = f"is {settings.root_token_file} the local stack's root token?"
    return f"Vault denied {method} {path} to the bootstrap's token (permission denied): {fix}"


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
        print(EXTERNAL_BOOTSTRAP_POLICY_HCL if args.external else BOOTSTRAP_POLICY_HCL, end="")
        return
    if args.external:
        raise SystemExit(
            "orders-bootstrap admin-setup: error: --external goes with --print-policy: write "
            "that policy and give its token to the bootstrap (docs/bring-your-own.md)"
        )
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


_ERRORS = (
    BootstrapLoginError,
    VaultBootstrapError,
    VaultDatabaseError,
    SettingsError,
    issuer.IssuerError,
    DatabaseBootstrapError,
)

PLAN_EPILOG = """\
exit codes: 0 the servers hold what the code declares; 2 drift (apply would change
something: the lines above say what); 3 with --strict only: no drift, but objects the code
did not make where it manages things (left alone by apply); 1 the servers could not be read.
Marks: + missing (apply creates it), ~ changed (apply puts the code's settings back; the diff
is '-' declared, '+' on the server), - removed from the code (apply deletes it, as it made it),
? not made by the code (never touched: a person should look)."""


def _plan(argv: list[str]) -> None:
    from orders_ops.plan import EXIT_ERROR, plan

    parser = argparse.ArgumentParser(
        prog="orders-bootstrap plan",
        description="Compare what the code declares (Vault policies, auth roles and configs, "
        "database secret roles, Transit keys, PKI roles; PostgreSQL roles, grants and column "
        "privileges) with what the servers hold now, object by object. Writes nothing.",
        epilog=PLAN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="list objects in sync too")
    parser.add_argument(
        "--strict", action="store_true", help="exit 3 when objects the code did not make are found"
    )
    args = parser.parse_args(argv)
    try:
        result = plan(StackSettings.from_env())
    except (*_ERRORS, hvac.exceptions.VaultError) as exc:
        message = str(exc) if not isinstance(exc, hvac.exceptions.VaultError) else repr(exc)
        print(f"orders-bootstrap plan: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_ERROR) from None
    print(result.render(verbose=args.verbose), end="")
    sys.exit(result.exit_code(strict=args.strict))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["plan"]:
        _plan(argv[1:])
        return
    if argv[:1] == ["apply"]:
        argv = argv[1:]  # the same as no subcommand

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
        setup.add_argument(
            "--external",
            action="store_true",
            help="with --print-policy: the policy a token of ORDERS_BOOTSTRAP_MODE=external "
            "needs (your own Vault, workers outside a cluster)",
        )
        _admin_setup(setup.parse_args(argv[1:]))
        return
    parser = argparse.ArgumentParser(
        prog="orders-bootstrap",
        description=__doc__,
        epilog="subcommands: 'plan' (what apply would change; 'orders-bootstrap plan --help'), "
        "'apply' (the same as none: converge), 'admin-setup' (the one-time setup of the "
        "Job's identity), 'temporal' (the Temporal search attributes only)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="list every change")
    args = parser.parse_args(argv)
    try:
        settings = StackSettings.from_env()
        report = bootstrap(settings)
    except hvac.exceptions.Forbidden as exc:
        print(f"orders-bootstrap: error: {denied(exc, settings)}", file=sys.stderr)
        raise SystemExit(1) from None
    except (*_ERRORS, TemporalBootstrapError) as exc:
        print(f"orders-bootstrap: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"orders-bootstrap: {report.summary()}")
    if args.verbose:
        for change in report.changes:
            print(f"  {change}")
    for note in report.notes:
        print(f"  note: {note}")
    sys.exit(0)
