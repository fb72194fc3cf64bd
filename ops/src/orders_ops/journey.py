"""``orders-journey`` (``make journey``): the same order before and after, told by the servers.

On the real local stack it runs one order twice: first in the usual INSECURE
setup (:mod:`orders_ops.journey_insecure`: one static database login whose
password every worker has in its environment, no payload codec, no sealing, six
worker processes), then through the product's own six workers. Side by side, each
read from the real servers: (a) the login that ran each step's SQL; (b) what
Temporal history holds, fetched without codec, and what the codec server shows an
authorised reader; (c) what each worker's environment holds; (d) what one stolen
credential reaches. Then Temporal UI screenshots of both, a verdict, the report
printed and written to ``artifacts/journey.{md,json}`` and ``artifacts/images/``
(``--docs``, ``make docs-journey``: ``docs/journey.md`` and ``docs/images/`` instead of
the images there, the tracked copies). Exits 1 when a check fails, and stops
everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.client import Client

from orders_ops import journey_insecure as insecure
from orders_ops.demo import _stored_input, codec_decode, static_secrets
from orders_ops.identities import local_session
from orders_ops.issuer import mint_user
from orders_ops.journey_facts import (
    CLEAR_VALUES,
    environment_facts,
    history_facts,
    live_sessions,
    step_logins,
    stolen_static,
    stolen_vault,
    who_opens,
)
from orders_ops.journey_report import render
from orders_ops.journey_ui import Shot, browser_available, take
from orders_ops.settings import SettingsError, StackSettings, repo_root
from orders_ops.stack import Stack
from orders_shared.catalog import SERVICES
from orders_shared.client import connect, submit_order
from orders_shared.codec import VaultTransit
from orders_shared.contracts.orchestrator import (
    ORDER_WORKFLOW,
    TASK_QUEUE,
    OrderWorkflowInput,
    OrderWorkflowResult,
)
from orders_shared.logging import configure_logging
from orders_shared.order_input import parse_order
from orders_shared.sealing import SEALED_FIELDS, is_sealed

ORDER: dict[str, Any] = {
    "customer_id": "cust-1815",
    "customer_name": CLEAR_VALUES["customer_name"],
    "email": CLEAR_VALUES["email"],
    "shipping_address": CLEAR_VALUES["shipping_address"] + ", London",
    "payment_token": CLEAR_VALUES["payment_token"],
    "lines": [{"sku": "WIDGET-1", "quantity": 2}, {"sku": "GIZMO-3", "quantity": 1}],
}
"""The one order both setups run (only its id differs: an order id is used once)."""
STOLEN = ("inventory", "order-reserve-inventory")
"""Whose Vault-issued login the journey 'steals': the inventory worker's."""
CODEC_REFUSED_IN_UI = "Codec Server could not connect"
"""The banner the UI shows once it gave up on the codec server (and shows payloads as stored)."""
SHOTS = ("journey-1-insecure.png", "journey-2-secured-stored.png", "journey-3-secured-codec.png")


@dataclass
class Journey:
    """Everything one run found: the facts per setup and the checks made on them."""

    run: str
    orders: dict[str, str]
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    screenshots: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append((name, bool(ok), detail))

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "orders": self.orders,
            "facts": self.facts,
            "screenshots": [{k: v for k, v in s.items() if k != "text"} for s in self.screenshots],
            "checks": [{"check": n, "ok": ok, "detail": d} for n, ok, d in self.checks],
            "verdict": {"ok": sum(ok for _, ok, _ in self.checks), "of": len(self.checks)},
            "notes": self.notes,
        }


def _password(url: str) -> str:
    return url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]


async def run_insecure(
    settings: StackSettings, order_id: str, say: Callable[[str], None]
) -> dict[str, Any]:
    """The INSECURE half; the static login exists only while it runs."""
    facts: dict[str, Any] = {"order_id": order_id, "namespace": insecure.NAMESPACE}
    url = await insecure.create_static_login(settings)
    try:
        say(f"  static login {insecure.STATIC_LOGIN} created; six INSECURE workers starting")
        async with insecure.insecure_workers(settings, url) as workers:
            client = await Client.connect(settings.temporal_address, namespace=insecure.NAMESPACE)
            handle = await client.start_workflow(
                ORDER_WORKFLOW,
                OrderWorkflowInput(order=parse_order({"order_id": order_id, **ORDER})),
                id=order_id,
                task_queue=TASK_QUEUE,
                result_type=OrderWorkflowResult,
            )
            result = await asyncio.wait_for(handle.result(), 90)
            say(f"  {order_id}: {result.status}")
            facts |= {"status": result.status, "path": list(result.path)}
            facts["run_id"] = handle.result_run_id
            facts["logins"] = await step_logins(settings, order_id)
            facts["sessions"] = await live_sessions(settings, [insecure.STATIC_LOGIN])
            password = {"static database password": _password(url)}
            facts["environment"] = [
                environment_facts(w.service, w.pid(), password) for w in workers
            ]
            facts["stolen"] = await stolen_static(settings, url, order_id)
    finally:
        dropped = await insecure.drop_static_login(settings)
        say(f"  INSECURE workers stopped; static login dropped: {'yes' if dropped else 'NO'}")
    facts["static_login_dropped"] = dropped
    facts["history"] = await history_facts(settings, insecure.NAMESPACE, order_id)
    return facts


async def run_secured(stack: Stack, order_id: str, say: Callable[[str], None]) -> dict[str, Any]:
    """The product's half, through its six worker processes (running by now)."""
    settings = stack.settings
    facts: dict[str, Any] = {"order_id": order_id, "namespace": "default"}
    session = await local_session(settings, "client")
    try:
        transit = VaultTransit(session)
        client = await connect(settings.temporal_address, transit)
        submitted = await submit_order(
            client, parse_order({"order_id": order_id, **ORDER}), wait=True, transit=transit
        )
    finally:
        await session.close()
    assert submitted.result is not None
    say(f"  {order_id}: {submitted.result.status}")
    facts |= {"status": submitted.result.status, "path": list(submitted.result.path)}
    facts["run_id"] = submitted.run_id
    facts["logins"] = await step_logins(settings, order_id)
    facts["sessions"] = await live_sessions(settings, sorted({s["login"] for s in facts["logins"]}))
    known = {k: v.decode() for k, v in static_secrets(settings).items()}
    facts["environment"] = [environment_facts(w.service, w.pid(), known) for w in stack.workers]
    facts["stolen"] = await stolen_vault(settings, *STOLEN, order_id)
    stored = await _stored_input(settings, order_id)
    reader = mint_user(settings, "ada-auditor")
    decoded = await asyncio.to_thread(codec_decode, settings, stored, reader)
    facts["codec_view"] = {"reader": "ada-auditor (payload-reader)", "order": decoded["order"]}
    # each identity tries, at Vault, to open each sealed field of what the reader was shown
    facts["who_opens"] = await who_opens(settings, decoded["order"])
    facts["history"] = await history_facts(settings, "default", order_id)
    return facts


def _verdict(read: dict[str, Any]) -> str:
    return "read" if read["allowed"] else f"denied ({read['error']})"


def _check(j: Journey) -> None:
    bad, good = j.facts["insecure"], j.facts["secured"]
    for name, f in (("INSECURE", bad), ("secured", good)):
        j.check(f"{name}: the order completed", f.get("status") == "completed", f.get("status", ""))
    static = {s["login"] for s in bad["logins"]}
    j.check(
        "INSECURE: every step's SQL ran as the one static login",
        static == {insecure.STATIC_LOGIN} and len(bad["logins"]) == 5,
        f"{len(bad['logins'])} steps, logins {sorted(static)}",
    )
    vault = [s for s in good["logins"]]
    distinct = {s["login"] for s in vault}
    j.check(
        "secured: five steps, five distinct Vault-issued logins, each in its step's group role",
        len(vault) == 5
        and len(distinct) == 5
        and all(
            s["login"].startswith("v-")
            and s.get("groups") == [s["expected_group"]]
            and not s.get("superuser")
            and s.get("valid_until", "never expires") != "never expires"
            for s in vault
        ),
        ", ".join(sorted(distinct)),
    )
    hb, hg = bad["history"], good["history"]
    j.check(
        "INSECURE history (no codec): plain payloads, email and card token in the clear",
        "binary/encrypted" not in hb["payload_encodings"]
        and hb["in_the_clear"]["email"]
        and hb["in_the_clear"]["payment_token"],
        f"{hb['payload_encodings']}",
    )
    j.check(
        "secured history (no codec): every payload encrypted, no sensitive value in the clear",
        set(hg["payload_encodings"]) == {"binary/encrypted"}
        and not any(hg["in_the_clear"].values()),
        f"{hg['payload_encodings']}",
    )
    shown = good["codec_view"]["order"]
    j.check(
        "codec server: an authorised reader sees the order, its sealed fields still sealed",
        shown.get("customer_id") == ORDER["customer_id"]
        and all(is_sealed(str(shown.get(f, ""))) for f in SEALED_FIELDS),
        "payment_token sealed to payment" if is_sealed(str(shown.get("payment_token"))) else "",
    )
    j.check(
        "each sealed field opens for its consumer alone (payment_token: payment)",
        good["who_opens"] == {f: [consumer] for f, consumer in SEALED_FIELDS.items()},
        f"{good['who_opens']}",
    )
    envs = [e for e in bad["environment"] if e["running"]]
    j.check(
        "INSECURE: the database password is in every worker's environment",
        len(envs) == len(insecure.SERVICE_ORDER) and all(e["secrets_found"] for e in envs),
        f"{sum(bool(e['secrets_found']) for e in envs)}/{len(insecure.SERVICE_ORDER)} workers",
    )
    envs = [e for e in good["environment"] if e["running"]]
    j.check(
        "secured: no worker's environment holds a password or static secret",
        len(envs) == len(SERVICES) and not any(e["secrets_found"] for e in envs),
        f"{sum(not e['secrets_found'] for e in envs)}/{len(SERVICES)} workers clean",
    )
    sb, sg = bad["stolen"], good["stolen"]
    j.check(
        "stolen static password: reads app.payments and customer emails, never expires",
        sb["payments"]["allowed"]
        and sb["customer_emails"]["allowed"]
        and sb["this_order_email"].get("value") == ORDER["email"]
        and sb["role"]["valid_until"] == "never expires",
        f"{sb['payments'].get('value')} payments, {sb['customer_emails'].get('value')} emails",
    )
    j.check(
        "stolen Vault-issued login: denied app.payments and customer emails, lease expires",
        not sg["payments"]["allowed"]
        and not sg["customer_emails"]["allowed"]
        and not sg["this_order_email"]["allowed"]
        and 0 < sg["lease_ttl_s"] <= 24 * 3600,
        f"{sg['vault_role']}: payments {_verdict(sg['payments'])}, emails "
        f"{_verdict(sg['customer_emails'])}, lease TTL {sg['lease_ttl_s']} s",
    )
    j.check(
        "after its lease is revoked, a new login with it is refused",
        sg["after_revoke"]["login"] != "ACCEPTED" and not sg["after_revoke"]["role"]["exists"],
        sg["after_revoke"]["login"],
    )
    j.check(
        "the static login is gone afterwards",
        bad["static_login_dropped"],
        insecure.STATIC_LOGIN,
    )


def _screens(j: Journey, settings: StackSettings) -> list[Shot]:
    ui = settings.temporal_ui_url
    bad, good = j.facts["insecure"], j.facts["secured"]

    def page(f: dict[str, Any]) -> str:
        return f"{ui}/namespaces/{f['namespace']}/workflows/{f['order_id']}/{f['run_id']}/history"

    return [
        Shot(SHOTS[0], "INSECURE: the order in the Temporal UI", page(bad), ORDER["email"]),
        Shot(
            SHOTS[1],
            "secured: what Temporal holds (the browser may not reach the codec server)",
            page(good),
            CODEC_REFUSED_IN_UI,
            refuse=settings.codec_url,
        ),
        Shot(
            SHOTS[2],
            "secured: through the codec server (reader local-developer)",
            page(good),
            ORDER["customer_id"],
        ),
    ]


def _check_screens(j: Journey) -> None:
    texts = [s["text"] for s in j.screenshots]
    clear = [CLEAR_VALUES["email"], CLEAR_VALUES["payment_token"]]
    written = all(Path(s["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for s in j.screenshots)
    j.check("three UI screenshots written (PNG)", len(texts) == 3 and written)
    if len(texts) == 3:
        j.check(
            "UI, INSECURE: the email and card token are on screen",
            all(v in texts[0] for v in clear),
        )
        j.check(
            "UI, secured without codec: encrypted payloads, no order content on screen",
            CODEC_REFUSED_IN_UI in texts[1]
            and j.screenshots[1]["refused_calls"] > 0
            and not any(v in texts[1] for v in [*clear, ORDER["customer_id"]]),
        )
        j.check(
            "UI, secured through the codec: the order on screen, email and token still sealed",
            ORDER["customer_id"] in texts[2] and not any(v in texts[2] for v in clear),
        )


async def journey(
    stack: Stack, images: Path, echo: Callable[[str], None] = print, *, browser: bool = True
) -> Journey:
    """Run both halves on a running stack and check them (no report files written)."""
    t0 = time.monotonic()

    def say(line: str) -> None:  # each line with the seconds since the start
        echo(f"{time.monotonic() - t0:5.1f}s {line}")

    run = time.strftime("%H%M%S") + "-" + secrets.token_hex(2)
    orders = {"insecure": f"journey-{run}-insecure", "secured": f"journey-{run}-secured"}
    j = Journey(run, orders)
    # the product's workers start meanwhile (another namespace: they never see those tasks)
    started = [w for w in stack.workers if w.pid() is None]
    secured_up = asyncio.create_task(asyncio.to_thread(stack.workers_up, 90, lambda _line: None))
    try:
        say("[1/3] the usual INSECURE setup")
        j.facts["insecure"] = await run_insecure(stack.settings, orders["insecure"], say)
        say("[2/3] the secured setup (the product's six workers)")
        await secured_up
        j.facts["secured"] = await run_secured(stack, orders["secured"], say)
    finally:
        with contextlib.suppress(Exception):
            await secured_up
        await asyncio.to_thread(insecure.stop_all, started)
        say(f"  secured workers stopped ({len(started)} started here)")
    _check(j)
    why_not = browser_available() if browser else "not asked for (--no-browser)"
    if why_not is None:
        say("[3/3] Temporal UI screenshots (headless Chromium)")
        j.screenshots = await take(_screens(j, stack.settings), images)
        for shot in j.screenshots:
            say(f"  {Path(shot['file']).name} ({shot['seconds']} s)")
        _check_screens(j)
    else:
        say(f"[3/3] screenshots skipped: {why_not}")
        j.notes.append(f"screenshots skipped: {why_not}")
    return j


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv: Sequence[str] | None = None) -> None:
    root = repo_root() or Path.cwd()
    parser = argparse.ArgumentParser(prog="orders-journey", description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=root / "artifacts")
    parser.add_argument(
        "--docs", action="store_true", help="also write docs/journey.md and docs/images/*.png"
    )
    parser.add_argument("--no-browser", action="store_true", help="take no screenshots")
    args = parser.parse_args(argv)
    configure_logging("journey", "WARNING")
    images = root / "docs" / "images" if args.docs else args.artifacts / "images"
    started = time.monotonic()
    try:
        stack = Stack(StackSettings.from_env())
    except SettingsError as exc:
        sys.exit(f"orders-journey: error: {exc}")
    already = {s.name for s in stack.servers if s.pid() is not None}
    j: Journey | None = None
    failure = ""
    try:
        print("[0/3] local stack: Temporal, OpenBao, PostgreSQL on 127.0.0.1, then bootstrap")
        stack.up(timeout=90, echo=lambda line: print(line))
        j = asyncio.run(journey(stack, images, browser=not args.no_browser))
    except Exception as exc:  # one line naming what failed, then exit 1
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        for server in reversed(stack.servers):
            if server.name not in already and server.pid() is not None:
                server.stop()
    if j is None:
        sys.exit(f"orders-journey: error: the journey could not run: {failure}")
    for path in (
        args.artifacts / "journey.md",
        *([root / "docs" / "journey.md"] if args.docs else []),
    ):
        _write(path, render(j, path.parent, images))
    _write(args.artifacts / "journey.json", json.dumps(j.as_json(), indent=2, default=str) + "\n")
    print(render(j, Path.cwd(), images))
    elapsed = time.monotonic() - started
    report = args.artifacts / "journey.md"
    failed = [
        f"{name} (found: {detail or 'see the report'})" for name, ok, detail in j.checks if not ok
    ]
    if failed:
        sys.exit(
            f"orders-journey: FAILED in {elapsed:.0f}s, {len(failed)} of {len(j.checks)} "
            f"checks not ok (report: {report}):\n  " + "\n  ".join(failed)
        )
    print(f"orders-journey: all {len(j.checks)} checks ok in {elapsed:.0f}s; report: {report}")


if __name__ == "__main__":
    main()
