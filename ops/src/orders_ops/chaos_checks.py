"""What ``orders-chaos`` checks after each fault: pure functions over rows read from Postgres.

Kept apart from the harness so each rule can be shown to fail on planted data
(tests/test_chaos.py) without a stack. The facts are read as the admin DSN;
the rules are:

* every order ends in the outcome its scenario calls for (status, reason code)
  and PostgreSQL agrees with the workflow's result;
* at most one charge, one refund, one shipment and one notification per order;
* a failed order holds no stock (every reservation released) and has its charge
  refunded when it was charged (``approved``) or may have been (``pending``:
  the intent was recorded, the provider's answer was not);
* charges minus refunds equal the totals of the completed orders;
* stock is conserved for the harness's SKUs: initial ``on_hand`` = ``on_hand``
  now + what live reservations hold.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import asyncpg

ProblemKind = Literal["wrong", "duplicate", "stuck", "lost"]


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    order_id: str  # "" for a problem that is not about one order (stock, money)
    detail: str

    def __str__(self) -> str:
        where = f"{self.order_id}: " if self.order_id else ""
        return f"{self.kind}: {where}{self.detail}"


@dataclass(frozen=True)
class Expectation:
    """The final state a scenario must end in."""

    status: str
    reason_codes: tuple[str | None, ...]  # any of these
    reason_mentions: str | None = None  # for StepFailed: the error type the reason must name
    charged: bool = False  # an approved charge that stays (completed orders)
    refunded: bool = False  # charged, then refunded
    shipped: bool = False
    holds_stock: bool = False  # reservations stay 'reserved' (completed orders)


@dataclass
class OrderFacts:
    """An order's rows, as Postgres holds them."""

    order_id: str
    status: str | None = None  # app.orders.status; None when there is no order row
    total_cents: int = 0
    reservations: list[tuple[str, int, str]] = field(default_factory=list)  # sku, qty, status
    payments: list[tuple[str, str, int]] = field(default_factory=list)  # kind, status, amount
    shipments: int = 0
    notifications: list[str] = field(default_factory=list)  # kinds


def check_outcome(
    order_id: str,
    expect: Expectation,
    status: str | None,
    reason_code: str | None,
    reason: str | None,
) -> list[Problem]:
    """The workflow's result against what the scenario calls for."""
    if status != expect.status or reason_code not in expect.reason_codes:
        wanted = f"{expect.status}/{'|'.join(str(c) for c in expect.reason_codes)}"
        return [Problem("wrong", order_id, f"ended {status}/{reason_code}, wanted {wanted}")]
    if expect.reason_mentions and reason_code == "StepFailed":
        if expect.reason_mentions not in (reason or ""):
            return [
                Problem(
                    "wrong",
                    order_id,
                    f"StepFailed for another cause than {expect.reason_mentions}",
                )
            ]
    return []


def check_rows(facts: OrderFacts, expect: Expectation, result_status: str) -> list[Problem]:
    """One order's rows: no duplicates, compensation complete, the scenario's traces."""
    oid = facts.order_id
    problems: list[Problem] = []
    kinds = Counter(kind for kind, _, _ in facts.payments)
    for kind in ("charge", "refund"):
        if kinds[kind] > 1:
            problems.append(Problem("duplicate", oid, f"{kinds[kind]} {kind} rows"))
    if facts.shipments > 1:
        problems.append(Problem("duplicate", oid, f"{facts.shipments} shipments"))
    if len(facts.notifications) > 1:
        problems.append(Problem("duplicate", oid, f"{len(facts.notifications)} notifications"))
    skus = Counter(sku for sku, _, _ in facts.reservations)
    for sku, n in skus.items():
        if n > 1:
            problems.append(Problem("duplicate", oid, f"{n} reservations of {sku}"))
    if facts.status != result_status:
        problems.append(
            Problem("wrong", oid, f"Postgres says {facts.status}, the workflow {result_status}")
        )
    charges = [(s, a) for k, s, a in facts.payments if k == "charge"]
    # money given back: an approved refund. A refund row "not_charged" records that the
    # provider held nothing to give back; "pending" is a refund still unfinished.
    refunds = [a for k, s, a in facts.payments if k == "refund" and s == "approved"]
    if (
        charges
        and charges[0][0] == "approved"
        and any(k == "refund" and s == "not_charged" for k, s, _ in facts.payments)
    ):
        problems.append(Problem("wrong", oid, "an approved charge recorded as never charged"))
    charge_status = charges[0][0] if charges else None
    held = [r for r in facts.reservations if r[2] == "reserved"]
    if expect.holds_stock:
        if not facts.reservations or len(held) != len(facts.reservations):
            problems.append(Problem("wrong", oid, "a completed order does not hold its stock"))
    elif held:
        problems.append(Problem("wrong", oid, f"{len(held)} reservation(s) never released"))
    if charge_status == "approved" and result_status != "completed" and not refunds:
        problems.append(Problem("wrong", oid, f"charge {charge_status} and never refunded"))
    if charges and refunds and refunds[0] != charges[0][1]:
        problems.append(Problem("wrong", oid, "refund amount differs from the charge"))
    if charge_status == "pending" and not any(k == "refund" for k, _, _ in facts.payments):
        problems.append(Problem("wrong", oid, "charge left pending (provider answer unknown)"))
    if expect.charged and (charge_status != "approved" or refunds):
        problems.append(Problem("wrong", oid, f"wanted a charge that stays, got {facts.payments}"))
    if expect.refunded and not (charge_status == "approved" and refunds):
        problems.append(Problem("wrong", oid, "wanted an approved charge refunded"))
    if expect.shipped != (facts.shipments > 0):
        problems.append(
            Problem("wrong", oid, f"{facts.shipments} shipment(s), wanted {int(expect.shipped)}")
        )
    if not facts.notifications:
        problems.append(Problem("wrong", oid, "no notification recorded"))
    return problems


def net_charged(facts: OrderFacts) -> int:
    """Money the order holds: an approved charge minus its refund. A pending charge
    that was refunded nets to zero (the provider refunds, by key, whatever it took)."""
    refunded = sum(a for k, s, a in facts.payments if k == "refund" and s == "approved")
    charged = sum(
        a
        for k, s, a in facts.payments
        if k == "charge" and (s == "approved" or (s == "pending" and refunded))
    )
    return charged - refunded


def check_money(facts: Iterable[OrderFacts]) -> list[Problem]:
    """Charges minus refunds equal the totals of the completed orders."""
    rows = list(facts)
    money = sum(net_charged(f) for f in rows)
    completed = sum(f.total_cents for f in rows if f.status == "completed")
    if money != completed:
        return [
            Problem(
                "wrong",
                "",
                f"charges minus refunds = {money} cents, completed orders total {completed}",
            )
        ]
    return []


def check_stock(
    initial: Mapping[str, int], on_hand: Mapping[str, int], reserved: Mapping[str, int]
) -> list[Problem]:
    """Initial on_hand = on_hand now + live reservations, for every harness SKU."""
    problems = []
    for sku, start in sorted(initial.items()):
        now, held = on_hand.get(sku, 0), reserved.get(sku, 0)
        if start != now + held:
            problems.append(
                Problem(
                    "wrong",
                    "",
                    f"stock of {sku} not conserved: started {start}, on hand {now} + "
                    f"reserved {held} = {now + held}",
                )
            )
    return problems


# ------------------------------------------------------------------------ reading Postgres


async def read_facts(conn: asyncpg.Connection, order_ids: Sequence[str]) -> dict[str, OrderFacts]:
    """Every row the orders left, in five queries (as the admin DSN)."""
    facts = {oid: OrderFacts(oid) for oid in order_ids}
    ids = list(order_ids)
    for r in await conn.fetch(
        "SELECT order_id, status, total_cents FROM app.orders WHERE order_id = ANY($1)", ids
    ):
        facts[r["order_id"]].status = r["status"]
        facts[r["order_id"]].total_cents = r["total_cents"]
    for r in await conn.fetch(
        "SELECT order_id, sku, quantity, status FROM app.reservations WHERE order_id = ANY($1)",
        ids,
    ):
        facts[r["order_id"]].reservations.append((r["sku"], r["quantity"], r["status"]))
    for r in await conn.fetch(
        "SELECT order_id, kind, status, amount_cents FROM app.payments "
        "WHERE order_id = ANY($1) ORDER BY created_at",
        ids,
    ):
        facts[r["order_id"]].payments.append((r["kind"], r["status"], r["amount_cents"]))
    for r in await conn.fetch(
        "SELECT order_id, count(*) AS n FROM app.shipments WHERE order_id = ANY($1) "
        "GROUP BY order_id",
        ids,
    ):
        facts[r["order_id"]].shipments = r["n"]
    for r in await conn.fetch(
        "SELECT order_id, kind FROM app.notifications WHERE order_id = ANY($1)", ids
    ):
        facts[r["order_id"]].notifications.append(r["kind"])
    return facts


async def read_stock(
    conn: asyncpg.Connection, skus: Sequence[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """(on_hand now, quantity held by live reservations) per SKU."""
    on_hand = {
        r["sku"]: r["on_hand"]
        for r in await conn.fetch(
            "SELECT sku, on_hand FROM app.inventory WHERE sku = ANY($1)", list(skus)
        )
    }
    reserved = {
        r["sku"]: r["held"]
        for r in await conn.fetch(
            "SELECT sku, sum(quantity)::int AS held FROM app.reservations "
            "WHERE sku = ANY($1) AND status = 'reserved' GROUP BY sku",
            list(skus),
        )
    }
    return on_hand, reserved


# ------------------------------------------------------------------------ login roles

LOGIN_RE = re.compile(r"^v-(order-[a-z-]+?)-[a-z0-9]{20}-(\d+)$")


def classify_logins(
    names: Iterable[str], run_started: float, killed: Mapping[str, float]
) -> tuple[list[str], list[str], list[str]]:
    """Split the ``v-order-*`` login roles left after the workers shut down into
    (older than the run: not ours, orphans of a SIGKILLed worker, leaked).

    ``killed`` maps a Vault database role to the last time a worker holding it was
    SIGKILLed: a login of that role issued before then was held by the dead process,
    which could not revoke it; Vault drops it when its lease or token expires. Any
    other login still there after a graceful shutdown is a leak.
    """
    older: list[str] = []
    orphans: list[str] = []
    leaked: list[str] = []
    for name in sorted(names):
        m = LOGIN_RE.match(name)
        if m is None:
            leaked.append(name)
            continue
        role, issued = m.group(1), int(m.group(2))
        if issued < int(run_started):
            older.append(name)
        elif role in killed and issued <= killed[role]:
            orphans.append(name)
        else:
            leaked.append(name)
    return older, orphans, leaked
