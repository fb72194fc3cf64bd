"""``orders-chaos`` (``make chaos``): a steady load of mixed orders while faults are injected.

For each fault of the set (:mod:`orders_ops.chaos_faults`), in turn: orders are
submitted at a steady rate through :mod:`orders_shared.client` as the
``client`` identity (the fields sealed, every payload encrypted), the fault is
injected, held, and restored (always, in a ``finally``), the load runs on a
little, then every order of the phase is waited for (bounded) and checked:

* each reached a final state (else *stuck*; an order the client could never
  hand to Temporal, or that Temporal forgot, is *lost*);
* each ended as its scenario calls for: a success, out of stock, a declined
  payment, an undeliverable address (refunded after payment), and a payment
  token sealed for another order (the payment step cannot open it);
* the invariants Postgres must keep (:mod:`orders_ops.chaos_checks`): no
  duplicate charge, refund, shipment or notification; every failed order
  released and refunded when charged; charges minus refunds equal the totals
  of completed orders; stock conserved for the harness's own SKUs.

At the end, after the workers shut down, no Vault-issued login (``v-order-*``)
may be left in PostgreSQL except those a SIGKILLed worker could not revoke
(Vault drops them when their lease expires; the harness revokes them as an
operator would and checks they go).

Prints a table, writes ``artifacts/chaos.json``, exits 1 on any lost, wrong,
duplicate or stuck order (or a fault that could not be injected or restored).
The orders use SKUs the harness creates (never the demo's).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from orders_ops.chaos_checks import (
    Expectation,
    Problem,
    ProblemKind,
    check_money,
    check_outcome,
    check_rows,
    check_stock,
    classify_logins,
    read_facts,
    read_stock,
)
from orders_ops.chaos_faults import FAULT_SETS, Fault, FaultContext
from orders_ops.identities import local_session
from orders_ops.settings import SettingsError, StackSettings
from orders_ops.stack import Stack, StackError
from orders_shared.client import connect, submit_order
from orders_shared.codec import VaultTransit
from orders_shared.contracts.common import Order
from orders_shared.contracts.orchestrator import OrderWorkflowResult
from orders_shared.identity import VaultSession
from orders_shared.logging import configure_logging
from orders_shared.order_input import parse_order
from orders_shared.sealing import SEALED_FIELD_INVALID, seal_order

# ------------------------------------------------------------------------ scenarios

EXPECT: dict[str, Expectation] = {
    "ok": Expectation("completed", (None,), charged=True, shipped=True, holds_stock=True),
    "nostock": Expectation("failed", ("OutOfStock",)),
    "declined": Expectation("failed", ("PaymentDeclined",)),
    "undeliverable": Expectation("failed", ("FulfillmentFailed",), refunded=True),
    # the payment step cannot open a token sealed for another order: not a business
    # refusal, a defect in the input, so the order fails as StepFailed naming it
    "badseal": Expectation(
        "failed", ("StepFailed", SEALED_FIELD_INVALID), reason_mentions=SEALED_FIELD_INVALID
    ),
}
MIX = ("ok", "nostock", "ok", "declined", "ok", "undeliverable", "ok", "badseal", "ok")
"""One order of each scenario in every nine, successes in between."""


@dataclass
class Options:
    rate: float = 1.5  # orders per second
    lead: float = 5.0  # seconds of load before the fault
    tail: float = 5.0  # seconds of load after the restore
    settle: float = 240.0  # bound on waiting for a phase's orders to finish
    json_path: Path | None = Path("artifacts/chaos.json")


@dataclass
class OrderRun:
    order_id: str
    scenario: str
    scheduled: float  # monotonic time it was due to be submitted
    after_restore: bool
    accepted: bool = False
    finished: float | None = None
    status: str | None = None
    reason_code: str | None = None
    reason: str | None = None
    error: str | None = None  # type of the last error the client saw

    @property
    def latency(self) -> float | None:
        return None if self.finished is None else self.finished - self.scheduled


@dataclass
class PhaseReport:
    fault: str
    state: str  # ran, skipped, error
    why: str = ""
    submitted: int = 0
    completed: int = 0  # reached a final state, whatever the outcome
    wrong: int = 0
    duplicates: int = 0
    stuck: int = 0
    lost: int = 0
    p50_s: float | None = None
    max_s: float | None = None
    added_delay_s: float | None = None
    recovered: bool | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def bad(self) -> bool:
        return self.state == "error" or bool(self.wrong + self.duplicates + self.stuck + self.lost)


@dataclass
class ChaosReport:
    phases: list[PhaseReport]
    end_checks: list[str]
    end_problems: list[str]
    skus: dict[str, int]  # harness SKU -> initial on_hand

    @property
    def ok(self) -> bool:
        return not self.end_problems and not any(p.bad for p in self.phases)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "phases": [dataclasses.asdict(p) for p in self.phases],
            "end_checks": self.end_checks,
            "end_problems": self.end_problems,
            "skus": self.skus,
        }


def _quiet(_line: str) -> None:
    return None


# ------------------------------------------------------------------------ the harness


class Harness:
    def __init__(self, stack: Stack, options: Options, say: Callable[[str], None]) -> None:
        self.stack = stack
        self.settings = stack.settings
        self.options = options
        self.say = say
        self.run_tag = f"{time.strftime('%H%M%S')}{uuid.uuid4().hex[:4]}"
        self.skus: dict[str, int] = {}
        self.seq = 0
        self.finished_ids: list[str] = []
        self.baseline_p50: float | None = None
        self.ctx = FaultContext(stack=stack, say=say)
        self._session: VaultSession | None = None
        self._transit: VaultTransit | None = None
        self._client: Client | None = None
        self._restored = False

    # -- setup ----------------------------------------------------------------

    async def open(self) -> None:
        conn = await asyncpg.connect(self.settings.admin_dsn(self.settings.database))
        try:
            for suffix, price, on_hand in (
                ("A", 1250, 100_000),
                ("B", 399, 100_000),
                ("Z", 999, 0),
            ):
                sku = f"CHAOS-{self.run_tag.upper()}-{suffix}"
                await conn.execute(
                    "INSERT INTO app.products (sku, name, unit_price_cents) VALUES ($1, $2, $3)",
                    sku,
                    f"chaos product {suffix}",
                    price,
                )
                await conn.execute(
                    "INSERT INTO app.inventory (sku, on_hand) VALUES ($1, $2)", sku, on_hand
                )
                self.skus[sku] = on_hand
        finally:
            await conn.close()
        self._session = await local_session(self.settings, "client")
        self._transit = VaultTransit(self._session)
        self._client = await connect(self.settings.temporal_address, self._transit)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def warm_up(self) -> None:
        """One order of each scenario before the baseline, not counted: fresh workers
        log in, issue their first credentials and fetch their first data keys here."""
        t0 = time.monotonic()
        runs = [
            OrderRun(f"chaos-{self.run_tag}-warm-{s}", s, t0, after_restore=False) for s in EXPECT
        ]
        await asyncio.wait_for(asyncio.gather(*(self._drive(r) for r in runs)), self.options.settle)
        self.say(f"warm-up: {len(runs)} orders in {time.monotonic() - t0:.1f}s")

    # -- one order ---------------------------------------------------------

    def _order_data(self, run: OrderRun) -> dict[str, Any]:
        a, b, z = self.skus
        lines: list[dict[str, Any]] = [{"sku": a, "quantity": 1}]
        if self.seq % 2:
            lines.append({"sku": b, "quantity": 2})
        data: dict[str, Any] = {
            "order_id": run.order_id,
            "customer_id": "cust-chaos",
            "customer_name": "Grace Hopper",
            "email": "grace@example.com",
            "shipping_address": "1 Harbour Street, Arlington",
            "payment_token": "tok_visa_4242",
            "lines": lines,
        }
        if run.scenario == "nostock":
            data["lines"] = [{"sku": z, "quantity": 1}]
        elif run.scenario == "declined":
            data["payment_token"] = "tok_decline_insufficient_funds"  # noqa: S105 (test card)
        elif run.scenario == "undeliverable":
            data["shipping_address"] = "9 UNDELIVERABLE Road, Nowhere"
        return data

    async def _sealed(self, run: OrderRun) -> Order:
        assert self._transit is not None
        order = await seal_order(parse_order(self._order_data(run)), self._transit)
        if run.scenario == "badseal":
            # a real sealed token, but sealed for another order: it must not open here
            other = await seal_order(
                parse_order({**self._order_data(run), "order_id": run.order_id + "-other"}),
                self._transit,
            )
            order = dataclasses.replace(order, payment_token=other.payment_token)
        return order

    async def _drive(self, run: OrderRun) -> None:
        """Submit (retried until Temporal has it), then wait for the outcome (retried)."""
        assert self._client is not None
        order: Order | None = None
        while not run.accepted:
            try:
                if order is None:
                    order = await self._sealed(run)
                await submit_order(self._client, order, wait=False)
                run.accepted = True
            except Exception as exc:  # Vault or Temporal away: try again
                run.error = type(exc).__name__
                await asyncio.sleep(1)
        handle = self._client.get_workflow_handle(run.order_id, result_type=OrderWorkflowResult)
        while True:
            try:
                result = await handle.result()
            except WorkflowFailureError as exc:
                run.finished = time.monotonic()
                run.status = "workflow-failed"
                run.error = type(exc.cause).__name__
                return
            except Exception as exc:  # Temporal away: ask again
                run.error = type(exc).__name__
                await asyncio.sleep(1)
                continue
            run.finished = time.monotonic()
            run.status = result.status
            run.reason_code = result.reason_code
            run.reason = result.reason
            return

    # -- the load ----------------------------------------------------------

    async def _load(
        self, phase: int, runs: list[OrderRun], tasks: list[asyncio.Task[None]], stop: asyncio.Event
    ) -> None:
        t0 = time.monotonic()
        n = 0
        while True:
            due = t0 + n / self.options.rate
            delay = due - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    return
                except TimeoutError:
                    pass
            if stop.is_set():
                return
            scenario = MIX[self.seq % len(MIX)]
            self.seq += 1
            run = OrderRun(
                order_id=f"chaos-{self.run_tag}-{phase:02d}-{n:04d}-{scenario}",
                scenario=scenario,
                scheduled=due,
                after_restore=self._restored,
            )
            runs.append(run)
            tasks.append(asyncio.create_task(self._drive(run), name=run.order_id))
            n += 1

    async def _settle(self, runs: list[OrderRun], tasks: list[asyncio.Task[None]]) -> None:
        deadline = time.monotonic() + self.options.settle
        pending = {t for t in tasks if not t.done()}
        while pending and time.monotonic() < deadline:
            _done, pending = await asyncio.wait(
                pending, timeout=min(5.0, max(0.1, deadline - time.monotonic()))
            )
            if pending:
                steps = sorted({r.scenario for r in runs if r.finished is None})
                self.say(f"    settling: {len(pending)}/{len(runs)} orders not final ({steps})")
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- health --------------------------------------------------------------

    def _unhealthy(self) -> list[str]:
        s = self.stack
        return [
            srv.name
            for srv in (s.postgres, s.vault, s.temporal, *s.workers)
            if srv.pid() is None or not srv.healthy()
        ]

    async def _wait_healthy(self) -> list[str]:
        deadline = time.monotonic() + 60
        while True:
            bad = await asyncio.to_thread(self._unhealthy)
            if not bad or time.monotonic() > deadline:
                return bad
            await asyncio.sleep(1)

    # -- one phase -----------------------------------------------------------

    async def phase(self, index: int, fault: Fault) -> PhaseReport:
        why = fault.unavailable(self.stack)
        if why is not None:
            self.say(f"[{index:02d}] {fault.name}: SKIPPED, not available yet: {why}")
            return PhaseReport(fault.name, "skipped", why=why)
        self.say(f"[{index:02d}] {fault.name}: load at {self.options.rate:g} orders/s")
        report = PhaseReport(fault.name, "ran")
        self.ctx.notes = []
        runs: list[OrderRun] = []
        tasks: list[asyncio.Task[None]] = []
        stop = asyncio.Event()
        self._restored = False
        loader = asyncio.create_task(self._load(index, runs, tasks, stop))
        before = list(self.finished_ids)
        try:
            await asyncio.sleep(self.options.lead)
            t0 = time.monotonic()
            try:
                self.say(f"    inject: {fault.name} (held {fault.hold:g}s)")
                await fault.inject(self.ctx)
                await asyncio.sleep(fault.hold)
            except Exception as exc:  # reported; the restore still runs
                report.state = "error"
                report.problems.append(f"inject failed: {type(exc).__name__}: {exc}")
            finally:
                try:
                    await fault.restore(self.ctx)
                except Exception as exc:
                    report.state = "error"
                    report.problems.append(f"restore failed: {type(exc).__name__}: {exc}")
                self._restored = True
                self.say(f"    restored after {time.monotonic() - t0:.1f}s")
            await asyncio.sleep(self.options.tail)
        finally:
            stop.set()
            await loader
        await self._settle(runs, tasks)
        bad = await self._wait_healthy()
        if bad:
            report.problems.append(f"not healthy after restore: {', '.join(bad)}")
        try:
            report.problems += await fault.verify(self.ctx, before, [r.order_id for r in runs])
        except Exception as exc:  # a check that could not run is a failed check
            report.problems.append(f"verify failed: {type(exc).__name__}: {exc}")
            report.state = "error"
        if report.state == "ran":  # the fault must show it happened, or the phase fails
            try:
                unproven = await fault.proof(self.ctx, [r.order_id for r in runs])
            except Exception as exc:
                unproven = f"its check could not run: {type(exc).__name__}: {exc}"
            if unproven is not None:
                report.problems.append(f"fault not proven to have happened: {unproven}")
                report.state = "error"
        report.notes = list(self.ctx.notes)
        problems = await self._check(report, runs)
        # recovered: healthy again, and every order submitted after the restore came
        # out right (the ones caught in the fault may still be the ones that suffered)
        after = {r.order_id for r in runs if r.after_restore}
        report.recovered = (
            not bad
            and report.state == "ran"
            and bool(after)
            and not any(p.order_id in after for p in problems)
        )
        self.finished_ids += [r.order_id for r in runs if r.finished is not None]
        self.say(
            f"    {report.submitted} submitted, {report.completed} final, {report.wrong} wrong, "
            f"{report.duplicates} duplicate, {report.stuck} stuck, {report.lost} lost; "
            f"p50 {_fmt(report.p50_s)}, max {_fmt(report.max_s)}; "
            f"recovered: {'yes' if report.recovered else 'NO'}"
        )
        for note in report.notes:
            self.say(f"    note: {note}")
        for problem in report.problems[:10]:
            self.say(f"    PROBLEM {problem}")
        return report

    async def _check(self, report: PhaseReport, runs: list[OrderRun]) -> list[Problem]:
        problems: list[Problem] = []
        finished = [r for r in runs if r.finished is not None]
        for r in runs:
            if r.finished is None:
                kind: ProblemKind = (
                    "stuck" if r.accepted and await self._known(r.order_id) else "lost"
                )
                problems.append(Problem(kind, r.order_id, f"not final (last error {r.error})"))
        conn = await asyncpg.connect(self.settings.admin_dsn(self.settings.database))
        try:
            facts = await read_facts(conn, [r.order_id for r in runs])
            for r in finished:
                expect = EXPECT[r.scenario]
                outcome = check_outcome(r.order_id, expect, r.status, r.reason_code, r.reason)
                problems += outcome
                if not outcome:
                    problems += check_rows(facts[r.order_id], expect, r.status or "")
            if all(r.finished is not None for r in runs):
                problems += check_money(facts[r.order_id] for r in finished)
            on_hand, reserved = await read_stock(conn, list(self.skus))
            problems += check_stock(self.skus, on_hand, reserved)
        finally:
            await conn.close()
        report.submitted = len(runs)
        report.completed = len(finished)
        report.wrong = _count(problems, "wrong")
        report.duplicates = _count(problems, "duplicate")
        report.stuck = _count(problems, "stuck")
        report.lost = _count(problems, "lost")
        report.problems += [str(p) for p in problems]
        latencies = sorted(r.latency for r in finished if r.latency is not None)
        if latencies:
            report.p50_s = statistics.median(latencies)
            report.max_s = latencies[-1]
            if self.baseline_p50 is None:
                self.baseline_p50 = report.p50_s
            report.added_delay_s = max(0.0, report.max_s - self.baseline_p50)
        return problems

    async def _known(self, order_id: str) -> bool:
        assert self._client is not None
        try:
            await self._client.get_workflow_handle(order_id).describe()
        except RPCError as err:
            return err.status != RPCStatusCode.NOT_FOUND
        return True

    # -- the end -------------------------------------------------------------

    async def leftover_logins(self, run_started: float) -> tuple[list[str], list[str]]:
        """After the workers shut down: (what was checked, problems) about v-order-* logins."""
        checks: list[str] = []
        problems: list[str] = []
        dsn = self.settings.admin_dsn(self.settings.database)

        async def logins() -> list[str]:
            conn = await asyncpg.connect(dsn)
            try:
                rows = await conn.fetch(
                    "SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-order-%'"
                )
            finally:
                await conn.close()
            return [r["rolname"] for r in rows]

        older, orphans, leaked = classify_logins(await logins(), run_started, self.ctx.killed)
        checks.append(
            f"v-order-* logins after the workers shut down: {len(leaked)} leaked, "
            f"{len(orphans)} left by SIGKILLed workers, {len(older)} older than this run"
        )
        problems += [f"login left behind (lease not revoked): {name}" for name in leaked]
        if orphans:
            roles = sorted({n.split("-", 1)[1].rsplit("-", 2)[0] for n in orphans})
            vault = self.ctx.root_vault()
            for role in roles:
                await asyncio.to_thread(
                    vault.adapter.put,
                    f"/v1/sys/leases/revoke-prefix/database/creds/{role}",
                    json={},
                )
            deadline = time.monotonic() + 15
            still = set(orphans)
            while still and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                still &= set(await logins())
            checks.append(
                f"revoked the SIGKILLed workers' leases ({', '.join(roles)}): "
                f"{len(orphans) - len(still)}/{len(orphans)} logins dropped by Vault"
            )
            problems += [f"login Vault did not drop on revoke: {name}" for name in sorted(still)]
        return checks, problems


def _count(problems: Sequence[Problem], kind: str) -> int:
    per_order = {p.order_id for p in problems if p.kind == kind and p.order_id}
    general = [p for p in problems if p.kind == kind and not p.order_id]
    return len(per_order) + len(general)


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}s"


async def run_chaos(
    stack: Stack, faults: Sequence[Fault], options: Options, say: Callable[[str], None] = print
) -> ChaosReport:
    """Run ``faults`` in turn on a running, bootstrapped ``stack``.

    Starts the workers that are not running and stops them at the end (then checks
    the logins they held are gone); workers that already ran are left running and
    the login check is skipped (they still hold their leases, rightly)."""
    run_started = time.time()
    workers_before = {w.name for w in stack.workers if w.pid() is not None}
    await asyncio.to_thread(stack.workers_up, 90, say)
    harness = Harness(stack, options, say)
    phases: list[PhaseReport] = []
    end_checks: list[str] = []
    end_problems: list[str] = []
    try:
        await harness.open()
        say(f"chaos run {harness.run_tag}: SKUs {', '.join(harness.skus)}")
        await harness.warm_up()
        for i, fault in enumerate(faults):
            phases.append(await harness.phase(i, fault))
    finally:
        await harness.close()
        for fault in faults:  # belt and braces: every fault restored, whatever happened
            try:
                await fault.restore(harness.ctx)
            except Exception as exc:
                end_problems.append(f"{fault.name}: restore failed: {type(exc).__name__}: {exc}")
        if not workers_before:
            await asyncio.to_thread(stack.workers_down, _quiet)
    if workers_before:
        end_checks.append("workers were running before the run: left running, login check skipped")
    else:
        checks, problems = await harness.leftover_logins(run_started)
        end_checks += checks
        end_problems += problems
    return ChaosReport(phases, end_checks, end_problems, dict(harness.skus))


def table(report: ChaosReport) -> str:
    head = (
        "fault",
        "submitted",
        "completed",
        "wrong",
        "duplicates",
        "stuck",
        "lost",
        "longest added delay",
        "recovered",
    )
    rows = []
    for p in report.phases:
        if p.state == "skipped":
            rows.append((p.fault, "-", "-", "-", "-", "-", "-", "-", "skipped: not available yet"))
            continue
        rows.append(
            (
                p.fault,
                str(p.submitted),
                str(p.completed),
                str(p.wrong),
                str(p.duplicates),
                str(p.stuck),
                str(p.lost),
                _fmt(p.added_delay_s),
                ("yes" if p.recovered else "NO") + (" (fault error)" if p.state == "error" else ""),
            )
        )
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in (head, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _print(line: str) -> None:
    print(line, flush=True)


async def _until_signalled(work: Coroutine[Any, Any, ChaosReport]) -> ChaosReport:
    """Run ``work``; SIGTERM (like Ctrl-C) cancels it, so every ``finally`` restores
    its fault and stops what was started."""
    task = asyncio.ensure_future(work)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await task


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="orders-chaos", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--set", choices=sorted(FAULT_SETS), default="full", help="fault set")
    parser.add_argument("--rate", type=float, default=Options.rate, help="orders per second")
    parser.add_argument("--lead", type=float, default=Options.lead, help="load before a fault (s)")
    parser.add_argument("--tail", type=float, default=Options.tail, help="load after restore (s)")
    parser.add_argument(
        "--settle", type=float, default=Options.settle, help="bound on a phase's orders (s)"
    )
    parser.add_argument("--only", nargs="*", help="run only faults whose name contains a word")
    parser.add_argument("--json", type=Path, default=Path("artifacts/chaos.json"))
    args = parser.parse_args(argv)
    configure_logging("chaos", "ERROR")
    options = Options(args.rate, args.lead, args.tail, args.settle, args.json)
    faults = FAULT_SETS[args.set]()
    if args.only:
        faults = [faults[0], *(f for f in faults[1:] if any(w in f.name for w in args.only))]
    try:
        stack = Stack(StackSettings.from_env())
    except SettingsError as exc:
        sys.exit(f"orders-chaos: error: {exc}")
    already = {s.name for s in stack.servers if s.pid() is not None}
    t0 = time.monotonic()
    report: ChaosReport | None = None
    try:
        print("orders-chaos: stack and workers on 127.0.0.1", flush=True)
        stack.up(timeout=90, echo=_quiet)
        report = asyncio.run(_until_signalled(run_chaos(stack, faults, options, _print)))
    except StackError as exc:
        print(f"orders-chaos: error: {exc}", file=sys.stderr)
    finally:
        for server in reversed(stack.servers):
            if server.name not in already:
                server.stop()
    if report is None:
        sys.exit(1)
    print()
    print(table(report))
    for line in report.end_checks:
        print(f"end: {line}")
    for line in report.end_problems:
        print(f"END PROBLEM: {line}")
    skipped = [p for p in report.phases if p.state == "skipped"]
    for p in skipped:
        print(f"skipped {p.fault}: not available yet: {p.why}")
    if options.json_path is not None:
        options.json_path.parent.mkdir(parents=True, exist_ok=True)
        options.json_path.write_text(json.dumps(report.to_json(), indent=2))
        print(f"(written to {options.json_path})")
    print(f"chaos {'passed' if report.ok else 'FAILED'} in {time.monotonic() - t0:.0f}s")
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
