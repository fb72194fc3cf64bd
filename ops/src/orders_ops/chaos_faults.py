"""The faults ``orders-chaos`` injects, one small class each, in one table.

A fault says whether it can run on this stack (:meth:`Fault.unavailable` returns
why not, checked with duck-typed attributes so a stack that gains the
prerequisite later just works), injects itself, and restores what it changed.
``restore`` is idempotent and the harness always calls it in a ``finally``.
The blocking ones (processes, sleeps) run in a thread so the load goes on.

The harness's load keeps running while a fault is held for :attr:`Fault.hold`
seconds; ``inject`` returns once the fault is in place, ``restore`` once the
system is whole again (servers restarted and healthy).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac

from orders_ops.settings import HOST
from orders_ops.stack import Stack, StackError, WorkerProcess, wait_gone
from orders_shared.catalog import SERVICES


@dataclass
class FaultContext:
    """What a fault may use: the stack, a root Vault client, and a notebook."""

    stack: Stack
    say: Callable[[str], None]
    killed: dict[str, float] = field(default_factory=dict)  # Vault DB role -> last SIGKILL
    notes: list[str] = field(default_factory=list)  # what the fault saw (into the report)

    def root_vault(self) -> Any:
        s = self.stack.settings
        return hvac.Client(url=s.vault_addr, token=s.root_token(), timeout=10)


class Fault:
    name: str = "fault"
    hold: float = 30.0  # seconds the fault lasts while the load runs

    def unavailable(self, stack: Stack) -> str | None:
        """None when the fault can run on ``stack``; otherwise what it waits for."""
        return None

    async def inject(self, ctx: FaultContext) -> None:
        raise NotImplementedError

    async def restore(self, ctx: FaultContext) -> None:
        """Undo the fault; safe to call twice, or after a failed inject."""

    async def verify(self, ctx: FaultContext, before: list[str], phase: list[str]) -> list[str]:
        """Extra checks after restore (``before``: orders finished in earlier phases;
        ``phase``: this phase's orders). Returns problems; may add ``ctx.notes``."""
        return []

    async def proof(self, ctx: FaultContext, phase: list[str]) -> str | None:
        """Why the fault did not demonstrably happen, or None once the real servers or
        processes showed it did (the evidence goes into ``ctx.notes``). A fault without
        a proof fails its phase: a no-op ``inject`` must not pass as "recovered"."""
        return f"{type(self).__name__} has no check that the fault happened"


def _quiet(_line: str) -> None:
    return None


class Baseline(Fault):
    """No fault: the latency every other phase is compared with."""

    name = "baseline (no fault)"
    hold = 10.0

    async def inject(self, ctx: FaultContext) -> None:
        return None

    async def proof(self, ctx: FaultContext, phase: list[str]) -> str | None:
        return None  # nothing was injected: nothing to prove


def _proc_state(pid: int) -> str | None:
    """The kernel's state letter of ``pid`` (``T``: stopped), None when it is gone."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat_line.rsplit(")", 1)[1].split()[0]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _proc_state(pid) not in (None, "Z")


class VaultPause(Fault):
    """SIGSTOP the Vault server for ``hold`` seconds, then SIGCONT: a hung Vault that
    still holds its sockets (every call times out instead of being refused)."""

    def __init__(self, hold: float = 30.0) -> None:
        self.hold = hold
        self.name = f"Vault paused {hold:.0f}s"
        self._pid: int | None = None
        self._stopped_pid: int | None = None
        self._seen_state: str | None = None
        self._watchdog: asyncio.subprocess.Process | None = None

    def unavailable(self, stack: Stack) -> str | None:
        if getattr(stack.vault, "ha", False):
            return (
                "single-node Vault only: in HA mode the process behind VAULT_ADDR is the "
                "front (HAProxy); 'Vault active node paused' pauses the leader instead"
            )
        return None if stack.vault.pid() is not None else "Vault is not running"

    def _target(self, stack: Stack) -> int | None:
        """The PID to stop: the single Vault server."""
        return stack.vault.pid()

    async def inject(self, ctx: FaultContext) -> None:
        self._pid = self._stopped_pid = self._target(ctx.stack)
        if self._pid is None:
            raise StackError("Vault is not running: nothing to pause")
        # should this harness itself be killed, Vault still wakes up: a detached
        # watchdog sends SIGCONT a little after the bound (stopped again in restore)
        self._watchdog = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            f"sleep {self.hold + 15:.0f}; kill -CONT {self._pid}",
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.kill(self._pid, signal.SIGSTOP)
        self._seen_state = None
        for _ in range(100):  # the kernel reports the stop a moment later
            self._seen_state = _proc_state(self._pid)
            if self._seen_state == "T":
                break
            await asyncio.sleep(0.02)

    async def proof(self, ctx: FaultContext, phase: list[str]) -> str | None:
        if self._seen_state != "T":
            return f"Vault was never seen stopped (state {self._seen_state!r} in /proc/<pid>/stat)"
        ctx.notes.append(f"Vault (pid {self._stopped_pid}) was in state T (stopped) in /proc")
        return None

    async def restore(self, ctx: FaultContext) -> None:
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGCONT)
            self._pid = None
        if self._watchdog is not None:
            with contextlib.suppress(ProcessLookupError):  # its own group: sh and its sleep
                os.killpg(self._watchdog.pid, signal.SIGKILL)
            await self._watchdog.wait()
            self._watchdog = None


def _leader_name(stack: Stack) -> str | None:
    node = stack.vault.active_node()
    return None if node is None else node.name


def _raft_leader(stack: Stack) -> str | None:
    """The node the raft configuration names as leader (``vault-<n>``), HA only."""
    from orders_ops.vault_ha import VaultCluster

    if not isinstance(stack.vault, VaultCluster):
        return None
    leader = next((p for p in stack.vault.peers() if p.leader), None)
    return None if leader is None else "vault-" + leader.node_id.rsplit("-", 1)[-1]


async def _wait_new_leader(stack: Stack, old: str, bound: float) -> tuple[str | None, float]:
    """Until a node other than ``old`` leads and the front answers through it: (its
    name, seconds waited), or (None, bound)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound:
        leader = await asyncio.to_thread(_leader_name, stack)
        if leader is not None and leader != old and await asyncio.to_thread(stack.vault.healthy):
            return leader, time.monotonic() - t0
        await asyncio.sleep(0.1)
    return None, bound


@dataclass
class _Before:
    """A token and a database lease made before the fault, to use again after it."""

    token: str = ""
    accessor: str = ""
    lease_id: str = ""
    username: str = ""
    password: str = ""


async def _issue_before(ctx: FaultContext) -> _Before:
    from orders_shared.catalog import DB_ROLES

    vault = ctx.root_vault()

    def issue() -> _Before:
        tok = vault.auth.token.create(policies=["default"], ttl="1h", renewable=True)["auth"]
        cred = vault.secrets.database.generate_credentials(DB_ROLES[0])
        return _Before(
            tok["client_token"],
            tok["accessor"],
            cred["lease_id"],
            cred["data"]["username"],
            cred["data"]["password"],
        )

    return await asyncio.to_thread(issue)


async def _still_valid(ctx: FaultContext, before: _Before) -> list[str]:
    """The token looks itself up, the lease renews, the login logs in; then both go."""
    import asyncpg

    s = ctx.stack.settings
    problems: list[str] = []
    vault = ctx.root_vault()

    def token_and_lease() -> list[str]:
        found: list[str] = []
        own = hvac.Client(url=s.vault_addr, token=before.token, timeout=10)
        try:
            own.auth.token.lookup_self()
        except hvac.exceptions.VaultError as exc:
            found.append(f"a token made before the fault no longer works: {exc}")
        try:
            vault.sys.renew_lease(before.lease_id, increment=300)
        except hvac.exceptions.VaultError as exc:
            found.append(f"a database lease made before the fault does not renew: {exc}")
        return found

    problems += await asyncio.to_thread(token_and_lease)
    try:
        conn = await asyncpg.connect(
            host=HOST,
            port=s.postgres_port,
            user=before.username,
            password=before.password,
            database=s.database,
        )
        await conn.close()
    except (OSError, asyncpg.PostgresError) as exc:
        problems.append(f"the login of a lease made before the fault fails: {exc}")

    def clean_up() -> None:
        with contextlib.suppress(hvac.exceptions.VaultError):
            vault.sys.revoke_lease(before.lease_id)
        with contextlib.suppress(hvac.exceptions.VaultError):
            vault.auth.token.revoke_accessor(before.accessor)

    await asyncio.to_thread(clean_up)
    if problems:  # a returned problem is only printed: this must fail the phase
        raise StackError("; ".join(problems))
    ctx.notes.append(
        "a token and a database lease (and its login) made before the fault still work"
    )
    return problems


class VaultActiveKill(Fault):
    """SIGKILL the node that leads (the only one, without HA), while orders run.

    HA: another node must take over behind the front (named, with the time it took);
    the killed node is started again in ``restore`` and rejoins. Single node: the
    outage lasts until the restart (the stack starts and unseals it again)."""

    def __init__(self, hold: float = 10.0) -> None:
        self.hold = hold
        self.name = "Vault active node SIGKILLed under load"
        self._pid: int | None = None
        self._node: str | None = None
        self._gone = False
        self._new_leader: str | None = None
        self._took = 0.0
        self._before = _Before()
        self._led: str | None = None  # the raft leader just before the kill

    def unavailable(self, stack: Stack) -> str | None:
        if not getattr(stack.vault, "persistent", False):
            return "needs a persistent Vault: a killed dev-mode Vault loses its Transit keys"
        return None if stack.vault.active_node() is not None else "Vault has no active node"

    async def inject(self, ctx: FaultContext) -> None:
        stack = ctx.stack
        self._before = await _issue_before(ctx)
        node = stack.vault.active_node()
        if node is None or node.pid() is None:
            raise StackError("Vault has no active node: nothing to kill")
        self._node, self._pid = node.name, node.pid()
        self._new_leader, self._took = None, 0.0
        self._led = await asyncio.to_thread(_raft_leader, stack)
        assert self._pid is not None
        os.kill(self._pid, signal.SIGKILL)
        self._gone = await asyncio.to_thread(wait_gone, self._pid, 5)
        if getattr(stack.vault, "ha", False):
            self._new_leader, self._took = await _wait_new_leader(stack, node.name, self.hold)

    async def proof(self, ctx: FaultContext, phase: list[str]) -> str | None:
        if not self._gone:
            return f"{self._node} (pid {self._pid}) was not seen gone after SIGKILL"
        if getattr(ctx.stack.vault, "ha", False):
            if self._led != self._node:
                return f"the killed {self._node} was not the raft leader ({self._led} was)"
            if self._new_leader is None:
                return f"no other node led within {self.hold:g}s of killing {self._node}"
            ctx.notes.append(
                f"{self._node} (pid {self._pid}) SIGKILLed; {self._new_leader} led behind the "
                f"front {self._took:.1f}s later"
            )
        else:
            ctx.notes.append(
                f"{self._node} (pid {self._pid}) SIGKILLed; single node: no standby, Vault was "
                "away until the restart"
            )
        return None

    async def restore(self, ctx: FaultContext) -> None:
        stack = ctx.stack
        if getattr(stack.vault, "ha", False):
            await asyncio.to_thread(stack.vault.start, 90)  # the killed node rejoins
        elif stack.vault.pid() is None:
            await asyncio.to_thread(stack.up, 90, True, _quiet)

    async def verify(self, ctx: FaultContext, before: list[str], phase: list[str]) -> list[str]:
        problems = await _still_valid(ctx, self._before)
        if getattr(ctx.stack.vault, "ha", False):
            problems += await _rejoined(ctx, self._node)
        if problems:
            raise StackError("; ".join(problems))
        return problems


async def _rejoined(ctx: FaultContext, node: str | None) -> list[str]:
    """After restore: three raft voters again, ``node`` among them, following."""
    from orders_ops.vault_ha import VaultCluster

    cluster = ctx.stack.vault
    if not isinstance(cluster, VaultCluster):
        return []  # one node: no raft cluster to rejoin
    peers = await asyncio.to_thread(cluster.peers)
    number = (node or "").rsplit("-", 1)[-1]
    back = [p for p in peers if p.node_id.endswith(f"-{number}")]
    if len(peers) != 3 or not all(p.voter for p in peers) or not back:
        return [f"the raft cluster is not whole again after restore: {peers}"]
    leader = next((p.node_id for p in peers if p.leader), "none")
    ctx.notes.append(f"{node} rejoined; 3 raft voters, {leader} leads")
    return []


class VaultActivePause(VaultPause):
    """HA only: SIGSTOP the node that leads for ``hold`` seconds, then SIGCONT. It
    keeps its sockets (connections hang, they are not refused): the front's health
    check must take it out and a standby must take over; on waking it must follow."""

    def __init__(self, hold: float = 30.0) -> None:
        super().__init__(hold)
        self.name = f"Vault active node paused {hold:.0f}s"
        self._node: str | None = None
        self._led: str | None = None  # the raft leader just before the pause
        self._new_leader: str | None = None
        self._took = 0.0
        self._before = _Before()

    def unavailable(self, stack: Stack) -> str | None:
        if not getattr(stack.vault, "ha", False):
            return "needs the HA Vault (make chaos HA=1, or ORDERS_VAULT_HA=1): no standby here"
        return None if stack.vault.active_node() is not None else "Vault has no active node"

    def _target(self, stack: Stack) -> int | None:
        node = stack.vault.active_node()
        self._node = None if node is None else node.name
        return None if node is None else node.pid()

    async def inject(self, ctx: FaultContext) -> None:
        self._before = await _issue_before(ctx)
        self._led = await asyncio.to_thread(_raft_leader, ctx.stack)
        await super().inject(ctx)
        self._new_leader, self._took = await _wait_new_leader(
            ctx.stack, self._node or "", self.hold
        )

    async def proof(self, ctx: FaultContext, phase: list[str]) -> str | None:
        unproven = await super().proof(ctx, phase)
        if unproven is not None:
            return unproven
        if self._led != self._node:
            return f"the paused {self._node} was not the raft leader ({self._led} was)"
        if self._new_leader is None:
            return f"no other node led within {self.hold:g}s of pausing {self._node}"
        ctx.notes.append(
            f"{self._node} paused; {self._new_leader} led behind the front {self._took:.1f}s later"
        )
        return None

    async def restore(self, ctx: FaultContext) -> None:
        await super().restore(ctx)
        # the woken node steps down to follower once it hears the new term
        await asyncio.to_thread(ctx.stack.vault.wait_ready, 60)

    async def verify(self, ctx: FaultContext, before: list[str], phase: list[str]) -> list[str]:
        deadline = time.monotonic() + 30
        while True:  # the woken node needs a moment to catch up and count as a voter
            problems = await _rejoined(ctx, self._node)
            if not problems or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        if problems:
            raise StackError("; ".join(problems))
        return await _still_valid(ctx, self._before)


class ServerRestart(Fault):
    """Stop one of the stack's servers, keep it down for ``hold`` seconds, start it again."""

    server_attr = ""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self._old_pid: int | None = None
        self._down_seen = False

    def _server(self, stack: Stack) -> Any:
        return getattr(stack, self.server_attr)

    async def inject(self, ctx: FaultContext) -> None:
        server = self._server(ctx.stack)
        self._old_pid = server.pid()
        self._down_seen = False
        await asyncio.to_thread(server.stop)
        self._down_seen = self._old_pid is not None and not _alive(self._old_pid)

    async def proof(self, ctx: FaultContext, phase: list[str]) -> str | None:
        name = self._server(ctx.stack).name
        new_pid = self._server(ctx.stack).pid()
        if self._old_pid is None or not self._down_seen:
            return f"{name} (pid {self._old_pid}) was not seen down after the stop"
        if new_pid is None or new_pid == self._old_pid:
            return f"{name} was not restarted as a new process (pid {self._old_pid} -> {new_pid})"
        ctx.notes.append(f"{name} stopped (pid {self._old_pid} gone), restarted as pid {new_pid}")
        return None

    async def restore(self, ctx: FaultContext) -> None:
        stack = ctx.stack
        if self._server(stack).pid() is not None:
            return
        deadline = time.monotonic() + 30
        while True:  # the ports of a just-stopped server can stay busy for a moment
            try:
                await asyncio.to_thread(self._start, stack)
                return
            except StackError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1)

    def _start(self, stack: Stack) -> None:
        self._server(stack).start(90)


class VaultRestart(ServerRestart):
    """Stop and start Vault. Only on a persistent Vault: the dev-mode server keeps its
    Transit keys in memory, so a restart would lose every key that sealed a field."""

    server_attr = "vault"

    def __init__(self, hold: float = 5.0) -> None:
        super().__init__(hold)
        self.name = "Vault restarted"

    def unavailable(self, stack: Stack) -> str | None:
        if not getattr(stack.vault, "persistent", False):
            return (
                "needs a persistent Vault (stack.vault.persistent): the dev-mode Vault keeps "
                "its Transit keys in memory and loses them on restart"
            )
        return None

    def _start(self, stack: Stack) -> None:
        # the stack manager starts (and, when persistent, unseals) Vault and bootstraps it
        stack.up(timeout=90, echo=_quiet)


class PostgresRestart(ServerRestart):
    server_attr = "postgres"

    def __init__(self, hold: float = 10.0) -> None:
        super().__init__(hold)
        self.name = f"PostgreSQL restarted ({hold:.0f}s down)"

    def unavailable(self, stack: Stack) -> str | None:
        return None if stack.postgres.pid() is not None else "PostgreSQL is not running"


class TemporalRestart(ServerRestart):
    """Stop and start the Temporal dev server; its SQLite file must keep every order.

    ``verify`` asks the restarted server for orders that finished before the stop."""

    server_attr = "temporal"

    def __init__(self, hold: float = 10.0) -> None:
        super().__init__(hold)
        self.name = f"Temporal restarted ({hold:.0f}s down)"

    def unavailable(self, stack: Stack) -> str | None:
        return None if stack.temporal.pid() is not None else "Temporal is not running"

    async def verify(self, ctx: FaultContext, before: list[str], phase: list[str]) -> list[str]:
        from temporalio.client import Client
        from temporalio.service import RPCError

        client = await Client.connect(ctx.stack.settings.temporal_address)
        missing = []
        for order_id in before[:20]:
            try:
                await client.get_workflow_handle(order_id).describe()
            except RPCError:
                missing.append(order_id)
        ctx.notes.append(
            f"{len(before[:20]) - len(missing)}/{len(before[:20])} orders finished before the "
            "restart still known to Temporal"
        )
        return [f"history lost on restart: {oid}" for oid in missing]


class RevokeAllLeases(Fault):
    """Revoke every database lease at once with the root token: every worker's
    credential dies (its sessions are terminated and its login dropped) together."""

    def __init__(self, hold: float = 10.0) -> None:
        self.hold = hold
        self.name = "all DB leases revoked"
        self._leased: set[str] = set()
        self._left: set[str] = set()

    async def inject(self, ctx: FaultContext) -> None:
        self._leased = set(await _vault_logins(ctx.stack))
        vault = ctx.root_vault()
        await asyncio.to_thread(
            vault.adapter.put, "/v1/sys/leases/revoke-prefix/database/creds", json={}
        )
        for _ in range(50):  # revoke-prefix is synchronous; a moment's grace all the same
            self._left = self._leased & set(await _vault_logins(ctx.stack))
            if not self._left:
                break
            await asyncio.sleep(0.2)

    async def proof(self, ctx: FaultContext, phase: list[str]) -> str | None:
        if not self._leased:
            return "no Vault-issued login was in pg_roles before the revoke: nothing was revoked"
        if self._left:
            return (
                f"{len(self._left)} of {len(self._leased)} leased logins still in pg_roles after "
                f"the revoke: {', '.join(sorted(self._left)[:3])}"
            )
        ctx.notes.append(f"all {len(self._leased)} leased logins gone from pg_roles on revoke")
        return None


async def _vault_logins(stack: Stack) -> list[str]:
    """The Vault-issued logins (``v-order-*``) PostgreSQL has now, read as its superuser."""
    import asyncpg

    conn = await asyncpg.connect(stack.settings.admin_dsn(stack.settings.database))
    try:
        rows = await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-order-%'")
    finally:
        await conn.close()
    return [r["rolname"] for r in rows]


def _slots_used(worker: WorkerProcess) -> float:
    """Tasks the worker is running now, from the Temporal SDK's own gauges: task slots
    in use, plus (for the workflow worker, whose tasks last milliseconds) the
    workflows it holds in its sticky cache, i.e. orders in flight on it."""
    try:
        with urllib.request.urlopen(  # the worker's loopback metrics port
            f"http://{HOST}:{worker.ports['sdk-metrics']}/metrics", timeout=2
        ) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError, KeyError):
        return 0.0
    used = 0.0
    for line in text.splitlines():
        if line.startswith(("temporal_worker_task_slots_used{", "temporal_sticky_cache_size{")):
            used += float(line.rsplit(" ", 1)[1])
    return used


def _kill_when_busy(worker: WorkerProcess, pid: int, timeout: float) -> float:
    """SIGKILL ``pid`` the moment its gauges show a task running (or at ``timeout``:
    the phase then fails unless the histories show a task cut short all the same).

    Scrape and kill happen in this one thread, back to back: the activities last
    milliseconds, so any hop in between would let the task finish first."""
    deadline = time.monotonic() + timeout
    busy = 0.0
    while time.monotonic() < deadline:
        busy = _slots_used(worker)
        if busy > 0:
            break
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    return busy


class WorkerKill(Fault):
    """SIGKILL one worker while it runs a task, keep it dead ``hold`` seconds, restart it."""

    def __init__(self, service: str, hold: float = 3.0) -> None:
        self.service = service
        self.hold = hold
        self.name = f"worker {service} SIGKILLed"
        self._killed = False
        self._pid: int | None = None
        self._busy = 0.0
        self._hit = 0

    def _worker(self, stack: Stack) -> WorkerProcess:
        return next(w for w in stack.workers if w.service == self.service)

    def unavailable(self, stack: Stack) -> str | None:
        return None if self._worker(stack).pid() is not None else f"{self.service} not running"

    async def inject(self, ctx: FaultContext) -> None:
        worker = self._worker(ctx.stack)
        pid = worker.pid()
        if pid is None:
            raise StackError(f"{worker.name} is not running: nothing to kill")
        busy = await asyncio.to_thread(_kill_when_busy, worker, pid, 30.0)
        self._killed, self._pid, self._busy, self._hit = True, pid, busy, 0
        now = time.time()
        for role in SERVICES[self.service].db_roles:
            ctx.killed[role] = now
        ctx.notes.append(
            f"{worker.name} (pid {pid}) killed with {busy:.0f} task(s) in flight"
            if busy
            else f"{worker.name} (pid {pid}) killed while idle (no task seen in 30 s)"
        )

    async def verify(self, ctx: FaultContext, before: list[str], phase: list[str]) -> list[str]:
        """Say whether the kill really cut a task short: the orders' histories show a
        retried activity attempt on this worker's queue, or a workflow task timed out."""
        from temporalio.api.enums.v1 import EventType
        from temporalio.client import Client

        queue = SERVICES[self.service].task_queue
        client = await Client.connect(ctx.stack.settings.temporal_address)
        hit = 0
        for order_id in phase:
            scheduled_on: dict[int, str] = {}
            async for event in client.get_workflow_handle(order_id).fetch_history_events():
                if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                    attrs = event.activity_task_scheduled_event_attributes
                    scheduled_on[event.event_id] = attrs.task_queue.name
                elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                    started = event.activity_task_started_event_attributes
                    if (
                        started.attempt > 1
                        and scheduled_on.get(started.scheduled_event_id) == queue
                    ):
                        hit += 1
                elif (
                    event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT
                    and self.service == "orchestrator"
                ):
                    hit += 1
        self._hit = hit
        ctx.notes.append(
            f"{hit} task(s) of {len(phase)} orders retried after the kill (their attempt died "
            "with the worker)"
            if hit
            else "no order's task was cut short by the kill (it landed between tasks)"
        )
        return []

    async def proof(self, ctx: FaultContext, phase: list[str]) -> str | None:
        """The old process is gone, a new one runs, and a task died with the old one:
        an activity of this worker's queue started again (attempt > 1) or, for the
        workflow worker, a workflow task timed out (read by :meth:`verify`)."""
        worker = self._worker(ctx.stack)
        if self._pid is None:
            return f"{worker.name} was never killed"
        if _alive(self._pid):
            return f"{worker.name} pid {self._pid} is still alive after SIGKILL"
        new_pid = worker.pid()
        if new_pid is None or new_pid == self._pid:
            return f"{worker.name} was not restarted as a new process ({self._pid} -> {new_pid})"
        if not self._hit:
            return (
                f"the kill of {worker.name} cut no task short: no retried attempt or timed-out "
                f"workflow task in this phase's {len(phase)} histories"
            )
        ctx.notes.append(f"{worker.name} pid {self._pid} gone, restarted as pid {new_pid}")
        return None

    async def restore(self, ctx: FaultContext) -> None:
        if self._killed and self._worker(ctx.stack).pid() is None:
            await asyncio.to_thread(ctx.stack.workers_up, 90, _quiet)
        self._killed = False


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class ProviderFault(Fault):
    """Put the payment-provider simulator in a failure mode for ``hold`` seconds.

    Needs a stack with a provider server offering ``set_fault(mode | None)``
    (modes ``slow``, ``error`` = HTTP 500, ``drop`` = charge, then drop the response).
    """

    def __init__(self, mode: str, title: str, hold: float = 30.0) -> None:
        self.mode = mode
        self.hold = hold
        self.name = f"payment provider {title}"
        self._set = False
        self._log_from = 0

    def unavailable(self, stack: Stack) -> str | None:
        provider = getattr(stack, "provider", None)
        if provider is None:
            return "the stack has no payment-provider server (stack.provider)"
        if not callable(getattr(provider, "set_fault", None)):
            return "stack.provider has no runtime fault switch (set_fault(mode))"
        return None

    async def inject(self, ctx: FaultContext) -> None:
        provider: Any = ctx.stack.provider
        self._log_from = _size(provider.log_file)
        await asyncio.to_thread(provider.set_fault, self.mode)
        self._set = True

    async def proof(self, ctx: FaultContext, phase: list[str]) -> str | None:
        """The simulator's own log shows calls it answered with this fault."""
        provider: Any = ctx.stack.provider
        hits = 0
        with contextlib.suppress(OSError), provider.log_file.open("rb") as log:
            log.seek(self._log_from)
            for line in log:
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    hits += entry.get("event") == "fault" and entry.get("kind") == self.mode
        if not hits:
            return f"the payment provider logged no call answered with fault {self.mode!r}"
        ctx.notes.append(f"the payment provider answered {hits} call(s) with fault {self.mode!r}")
        return None

    async def restore(self, ctx: FaultContext) -> None:
        if self._set:
            provider: Any = ctx.stack.provider
            await asyncio.to_thread(provider.set_fault, None)
            self._set = False


class ShortCredentialTTL(Fault):
    """Every Vault database role issues credentials with a TTL far below the run
    (``ttl``/``max_ttl``) for ``hold`` seconds; the roles are written back as read."""

    def __init__(self, ttl: int = 10, max_ttl: int = 30, hold: float = 120.0) -> None:
        self.ttl, self.max_ttl, self.hold = ttl, max_ttl, hold
        self.name = f"DB credentials TTL {ttl}s / max {max_ttl}s"
        self._saved: dict[str, dict[str, Any]] = {}
        self._since = 0.0
        self._short_leases = 0
        self._too_long: list[str] = []

    async def inject(self, ctx: FaultContext) -> None:
        vault = ctx.root_vault()

        def change() -> None:
            names = vault.adapter.list("/v1/database/roles")["data"]["keys"]
            for name in names:
                data = vault.adapter.get(f"/v1/database/roles/{name}")["data"]
                self._saved[name] = data
                vault.adapter.post(
                    f"/v1/database/roles/{name}",
                    json={**data, "default_ttl": self.ttl, "max_ttl": self.max_ttl},
                )

        await asyncio.to_thread(change)
        ctx.notes.append(f"{len(self._saved)} database roles set to {self.ttl}s/{self.max_ttl}s")
        self._since = time.time()
        self._short_leases, self._too_long = 0, []

    async def _sample(self, ctx: FaultContext) -> None:
        """At the end of the hold, before the roles are put back: the logins issued
        during the fault (their name ends in the issue time) and their expiry in
        pg_roles, which Vault sets (and renews) within ``max_ttl`` of the issue."""
        import asyncpg

        s = ctx.stack.settings
        conn = await asyncpg.connect(s.admin_dsn(s.database))
        try:
            rows = await conn.fetch(
                "SELECT rolname, extract(epoch FROM rolvaliduntil)::float8 AS until "
                "FROM pg_roles WHERE rolname LIKE 'v-order-%' AND rolvaliduntil IS NOT NULL"
            )
        finally:
            await conn.close()
        for row in rows:
            issued = row["rolname"].rsplit("-", 1)[-1]
            if issued.isdigit() and int(issued) >= self._since - 1:
                self._short_leases += 1
                if row["until"] - int(issued) > self.max_ttl + 5:
                    self._too_long.append(row["rolname"])

    async def proof(self, ctx: FaultContext, phase: list[str]) -> str | None:
        if self._too_long:
            return f"logins issued during the fault outlive {self.max_ttl}s: {self._too_long[:3]}"
        if not self._short_leases:
            return "no login issued during the fault was in pg_roles: the short TTL was never used"
        ctx.notes.append(
            f"{self._short_leases} login(s) issued under the short TTL, each expiring within "
            f"{self.max_ttl}s in pg_roles"
        )
        return None

    async def restore(self, ctx: FaultContext) -> None:
        if not self._saved:
            return
        with contextlib.suppress(Exception):  # evidence only: the put-back must run
            await self._sample(ctx)
        vault = ctx.root_vault()

        def put_back() -> list[str]:
            wrong = []
            for name, data in self._saved.items():
                vault.adapter.post(f"/v1/database/roles/{name}", json=data)
                now = vault.adapter.get(f"/v1/database/roles/{name}")["data"]
                if (now["default_ttl"], now["max_ttl"]) != (data["default_ttl"], data["max_ttl"]):
                    wrong.append(name)
            return wrong

        wrong = await asyncio.to_thread(put_back)
        if wrong:
            raise StackError(f"database roles not restored: {', '.join(wrong)}")
        self._saved.clear()


def full_set() -> list[Fault]:
    """``make chaos``: every fault, 30 s where a duration is the point."""
    return [
        Baseline(),
        VaultPause(30),
        VaultActiveKill(10),
        VaultActivePause(30),  # HA only (skipped, saying so, on a single node)
        VaultRestart(5),
        PostgresRestart(10),
        RevokeAllLeases(10),
        *(WorkerKill(service, 3) for service in SERVICES),
        TemporalRestart(10),
        ProviderFault("slow", "slow", 30),
        ProviderFault("error", "answering 500", 30),
        ProviderFault("drop", "dropping responses after charging", 30),
        ShortCredentialTTL(10, 30, 120),
    ]


def trimmed_set() -> list[Fault]:
    """The variant ``make test`` runs: two faults, short phases."""
    baseline = Baseline()
    baseline.hold = 2
    return [baseline, RevokeAllLeases(3), WorkerKill("orchestrator", 2)]


FAULT_SETS: dict[str, Callable[[], list[Fault]]] = {"full": full_set, "trimmed": trimmed_set}
