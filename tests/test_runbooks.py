"""The runbooks of docs/runbooks.md, each run against the real stack under a running load.

Each runbook is a phase of the chaos harness (:mod:`orders_ops.chaos`): orders of
every scenario are submitted at a steady rate, the runbook runs, the load goes
on, then every order is waited for and checked (its outcome, its rows, the
money, the stock). A phase is good when no order was lost, stuck, wrong or
duplicated. Each runbook's own claims are checked inside its phase (``notes``
with the facts, ``problems`` when a claim fails).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import hvac
import hvac.exceptions
import pytest

from orders_ops import runbooks
from orders_ops.audit import analyse, read_entries, role_hashes
from orders_ops.chaos import Options, PhaseReport, run_chaos
from orders_ops.chaos_faults import Fault, FaultContext
from orders_ops.identities import local_session
from orders_ops.runbooks import KeyUse, RunbookError, safe_min_versions
from orders_ops.settings import StackSettings
from orders_ops.stack import Stack
from orders_ops.vault_audit import VaultAuditLog
from orders_shared.catalog import SERVICES
from orders_shared.codec import VaultTransit
from orders_shared.identity import VaultLoginError
from orders_shared.sealing import SEALED_FIELDS, seal_field, seal_key

REVOKED = "fulfill"


def _audit(settings: StackSettings) -> VaultAuditLog:
    return VaultAuditLog(settings.state_dir / "vault" / "audit.log")


class RevokeService(Fault):
    """A process holding the service's Vault token and a database login of it (the
    attacker's copies); the runbook revokes; both stop working at once, the service
    cannot log in, no other identity sees a refusal; re-enabled after ``hold``."""

    def __init__(self, service: str, hold: float = 15.0) -> None:
        self.service = service
        self.hold = hold
        self.name = f"runbook: revoke {service}"
        self.problems: list[str] = []
        self._since = ""

    async def inject(self, ctx: FaultContext) -> None:
        s = ctx.stack.settings
        spec = SERVICES[self.service]
        stolen = await local_session(s, self.service)
        cred = await stolen.call(
            stolen.client.secrets.database.generate_credentials, spec.db_roles[0]
        )
        user, password = cred["data"]["username"], cred["data"]["password"]
        self._since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lines = await asyncio.to_thread(runbooks.revoke, s, self.service)
        ctx.notes += lines[:4]
        # the stolen Vault token: refused
        try:
            await stolen.call(stolen.client.auth.token.lookup_self)
            self.problems.append("the service's Vault token still works after revoke")
        except hvac.exceptions.Forbidden:
            ctx.notes.append("stolen Vault token: refused")
        await stolen.close(revoke=False)
        # the stolen database login: refused
        try:
            conn = await asyncpg.connect(
                host=s.db_host,
                port=s.postgres_port,
                user=user,
                password=password,
                database=s.database,
            )
            await conn.close()
            self.problems.append(f"database login {user} still connects after revoke")
        except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError):
            ctx.notes.append("stolen database login: refused")
        # its identity token no longer logs in
        try:
            again = await local_session(s, self.service)
            await again.close()
            self.problems.append("the service could log in again while revoked")
        except VaultLoginError:
            ctx.notes.append("login with the service's identity token: refused")
        state = await asyncio.to_thread(runbooks.status, s, self.service)
        if not all("DISABLED" in line for line in state if line.startswith("auth/")):
            self.problems.append(f"status after revoke: {state}")

    async def restore(self, ctx: FaultContext) -> None:
        lines = await asyncio.to_thread(runbooks.reenable, ctx.stack.settings, self.service)
        if "restored" not in "".join(lines):
            self.problems.append(f"reenable said: {lines}")

    async def verify(self, ctx: FaultContext, before: list[str], phase: list[str]) -> list[str]:
        s = ctx.stack.settings
        hashes = await asyncio.to_thread(role_hashes, s)
        report = analyse(read_entries(_audit(s).path), role_hashes=hashes, since=self._since)
        identity = SERVICES[self.service].identity
        refused = {n: dict(r.denied) for n, r in report.identities.items() if r.denied}
        ctx.notes.append(f"refused during the phase: {refused}")
        for name, denied in refused.items():
            if name == "(refused login)":
                if any(not what.endswith(f" as {identity}") for what in denied):
                    self.problems.append(f"another identity's login was refused: {denied}")
            elif not name.startswith(identity):
                self.problems.append(f"{name} was refused during the revoke: {denied}")
        logins = report.identities.get(identity)
        ctx.notes.append(f"{identity} logged in {logins.logins if logins else 0}x after reenable")
        if logins is None or logins.logins == 0:
            self.problems.append(f"{identity} never logged in again after reenable")
        # restored exactly as the bootstrap defines it
        client = runbooks.identify(s)
        try:
            for mount, want in runbooks.bootstrap_roles(s, SERVICES[self.service]).items():
                have = client.read(f"auth/{mount}/role/{identity}")["data"]
                for key in ("bound_subject", "bound_service_account_names", "token_policies"):
                    if key in want and have.get(key) != want[key]:
                        self.problems.append(f"auth/{mount} role {key}: {have.get(key)!r}")
        finally:
            client.adapter.close()
        return list(self.problems)

    async def proof(self, ctx: FaultContext, phase: list[str]) -> str | None:
        refused = ("stolen Vault token: refused", "stolen database login: refused")
        missing = [what for what in refused if what not in ctx.notes]
        return f"the revoke was not seen to cut off: {missing}" if missing else None


class RotateDbRoot(Fault):
    name = "runbook: rotate database root credential"
    hold = 5.0

    def __init__(self) -> None:
        self.lines: list[str] = []

    async def inject(self, ctx: FaultContext) -> None:
        self.lines = await asyncio.to_thread(runbooks.rotate_db_root, ctx.stack.settings)
        ctx.notes += self.lines[:3]

    async def verify(self, ctx: FaultContext, before: list[str], phase: list[str]) -> list[str]:
        if not any("password hash in pg_authid: changed" in line for line in self.lines):
            return [f"vault_admin's password did not change: {self.lines}"]
        return []

    async def proof(self, ctx: FaultContext, phase: list[str]) -> str | None:
        changed = any("password hash in pg_authid: changed" in line for line in self.lines)
        return None if changed else "pg_authid shows no new password for vault_admin"


class RotateTransit(Fault):
    name = "runbook: rotate payload and seal keys"
    hold = 10.0

    def __init__(self) -> None:
        self.before: dict[str, int] = {}
        self.lines: list[str] = []
        self.rotated: list[str] = []  # keys whose latest version moved by one (verify)

    def _versions(self, ctx: FaultContext) -> dict[str, tuple[int, int]]:
        client = runbooks.identify(ctx.stack.settings)
        try:
            out = {}
            for key in runbooks.transit_keys():
                data = client.secrets.transit.read_key(key)["data"]
                out[key] = (int(data["latest_version"]), int(data["min_decryption_version"]))
            return out
        finally:
            client.adapter.close()

    async def inject(self, ctx: FaultContext) -> None:
        self.before = {k: v[0] for k, v in (await asyncio.to_thread(self._versions, ctx)).items()}
        self.lines = await asyncio.to_thread(
            lambda: runbooks.rotate_transit(ctx.stack.settings, raise_min=True)
        )
        ctx.notes += [line for line in self.lines if "scanned" in line or "raised" in line]

    async def verify(self, ctx: FaultContext, before: list[str], phase: list[str]) -> list[str]:
        problems = []
        now = await asyncio.to_thread(self._versions, ctx)
        use = await runbooks.scan_histories(ctx.stack.settings, ctx.stack.settings.root_token())
        for key, (latest, min_version) in now.items():
            if latest != self.before[key] + 1:
                problems.append(f"{key}: latest v{latest}, expected v{self.before[key] + 1}")
            else:
                self.rotated.append(key)
            oldest = min(use.versions.get(key, {latest}))
            if min_version > oldest:
                problems.append(
                    f"{key}: min_decryption_version {min_version} > referenced v{oldest}"
                )
        if use.unreadable:
            problems.append(f"history no longer readable after rotation: {use.unreadable[:3]}")
        # new seals use the new versions: a client without cached data keys wraps its data
        # key under the latest version (a running client moves once its cached data keys
        # expire, within the payload codec's bounds)
        session = await local_session(ctx.stack.settings, "client")
        try:
            fresh = VaultTransit(session)
            for field, service in SEALED_FIELDS.items():
                sealed = await seal_field(fresh, "ord-rotation-check", field, "x@y.z")
                key = seal_key(service)
                version = int(sealed.split("vault:v", 1)[1].split(":", 1)[0])
                if version != now[key][0]:
                    problems.append(f"a new seal uses {key} v{version}, not v{now[key][0]}")
        finally:
            await session.close()
        ctx.notes.append(f"scanned {use.histories} histories after rotation, all readable")
        return problems

    async def proof(self, ctx: FaultContext, phase: list[str]) -> str | None:
        if self.before and sorted(self.rotated) == sorted(self.before):
            return None
        return f"Transit shows a new version only for {self.rotated} of {sorted(self.before)}"


class RotateIssuer(Fault):
    name = "runbook: rotate identity issuer key"
    hold = 10.0

    def __init__(self) -> None:
        self.old_token = ""
        self.problems: list[str] = []
        self.retired = False  # the old key's token refused once the rotation finished

    def _login(self, s: StackSettings, jwt: str) -> bool:
        client = hvac.Client(url=s.vault_addr, timeout=10)
        try:
            resp = client.auth.jwt.jwt_login("orders-validate", jwt, path="jwt")
            client.token = resp["auth"]["client_token"]
            client.auth.token.revoke_self()
            return True
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden):
            return False
        finally:
            client.adapter.close()

    async def inject(self, ctx: FaultContext) -> None:
        s = ctx.stack.settings
        self.old_token = s.token_file("validate").read_text().strip()
        lines = await asyncio.to_thread(runbooks.rotate_issuer, s, finish=False, overlap_over=False)
        ctx.notes += lines[:2]
        if not await asyncio.to_thread(self._login, s, self.old_token):
            self.problems.append("a token signed by the previous key was refused during overlap")
        try:
            await asyncio.to_thread(runbooks.rotate_issuer, s, finish=True, overlap_over=False)
            self.problems.append("finish ran before the overlap was over")
        except RunbookError as exc:
            ctx.notes.append(f"early finish refused: {str(exc)[:60]}...")

    async def restore(self, ctx: FaultContext) -> None:
        await asyncio.to_thread(
            runbooks.rotate_issuer, ctx.stack.settings, finish=True, overlap_over=True
        )

    async def verify(self, ctx: FaultContext, before: list[str], phase: list[str]) -> list[str]:
        s = ctx.stack.settings
        if self.old_token and await asyncio.to_thread(self._login, s, self.old_token):
            self.problems.append("a token signed by the retired key still logs in")
        else:
            self.retired = bool(self.old_token)
        current = s.token_file("validate").read_text().strip()
        if not await asyncio.to_thread(self._login, s, current):
            self.problems.append("the re-signed token file does not log in")
        return list(self.problems)

    async def proof(self, ctx: FaultContext, phase: list[str]) -> str | None:
        return None if self.retired else "Vault never refused the previous key's token"


def _phase(phases: list[PhaseReport], name: str) -> PhaseReport:
    return next(p for p in phases if p.fault == name)


@pytest.fixture(scope="module")
def runbook_run(stack: Stack) -> Any:
    faults: list[Fault] = [
        RevokeService(REVOKED),
        RotateDbRoot(),
        RotateTransit(),
        RotateIssuer(),
    ]
    options = Options(rate=1.0, lead=3, tail=4, settle=120, json_path=None)
    report = asyncio.run(run_chaos(stack, faults, options, say=print))
    return report


def _good(phase: PhaseReport) -> None:
    print(phase)
    assert phase.state == "ran", phase.problems
    assert phase.submitted > 0
    assert phase.completed == phase.submitted, phase.problems
    assert not phase.problems, phase.problems
    assert phase.recovered


@pytest.mark.stack
def test_revoke_cuts_the_service_off_and_reenable_restores_it(runbook_run: Any) -> None:
    phase = _phase(runbook_run.phases, "runbook: revoke fulfill")
    _good(phase)
    assert "stolen Vault token: refused" in phase.notes
    assert "stolen database login: refused" in phase.notes


@pytest.mark.stack
def test_rotating_the_database_root_credential_interrupts_nothing(runbook_run: Any) -> None:
    _good(_phase(runbook_run.phases, "runbook: rotate database root credential"))


@pytest.mark.stack
def test_rotating_transit_keys_keeps_history_readable(runbook_run: Any) -> None:
    _good(_phase(runbook_run.phases, "runbook: rotate payload and seal keys"))


@pytest.mark.stack
def test_issuer_key_rotation_overlaps_then_retires_the_old_key(runbook_run: Any) -> None:
    _good(_phase(runbook_run.phases, "runbook: rotate identity issuer key"))
    assert not runbook_run.end_problems


# ------------------------------------------------------------------ min_decryption_version


def test_min_decryption_version_never_passes_the_oldest_referenced_version() -> None:
    use = KeyUse()
    use.add("k", 2)
    use.add("k", 4)
    raise_to, _ = safe_min_versions({"k": 1, "j": 1}, {"k": 4, "j": 3}, use, retention_over=False)
    assert raise_to == {"k": 2, "j": 3}  # j: no history references it


def test_min_decryption_version_is_not_raised_when_history_could_not_be_scanned() -> None:
    use = KeyUse(unreadable=["wf-1/run: input not decodable"])
    raise_to, notes = safe_min_versions({"k": 1}, {"k": 4}, use, retention_over=False)
    assert raise_to == {}
    assert "refused" in notes[0]
    raise_to, _ = safe_min_versions({"k": 1}, {"k": 4}, use, retention_over=True)
    assert raise_to == {"k": 4}


def test_min_decryption_version_is_never_lowered() -> None:
    use = KeyUse()
    use.add("k", 1)
    raise_to, notes = safe_min_versions({"k": 3}, {"k": 4}, use, retention_over=False)
    assert raise_to == {}
    assert "stays 3" in notes[0]


# ------------------------------------------------------------------ refusing an unknown stack


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orders_ops.runbooks", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "args", [["revoke", "notify"], ["rotate-db-root"], ["rotate-transit"], ["backup"]]
)
def test_no_state_folder_is_refused_in_one_line(tmp_path: Path, args: list[str]) -> None:
    result = _cli({"ORDERS_STATE_DIR": str(tmp_path / "nothing")}, *args)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "no orders stack state" in result.stderr


def test_no_root_token_is_refused_in_one_line(tmp_path: Path) -> None:
    result = _cli({"ORDERS_STATE_DIR": str(tmp_path)}, "revoke", "notify")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "no Vault root token" in result.stderr


def test_vault_not_answering_is_refused_in_one_line(tmp_path: Path) -> None:
    from orders_ops.testing import free_port

    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "vault-root-token").write_text("s.not-a-token\n")
    env = {"ORDERS_STATE_DIR": str(tmp_path), "ORDERS_VAULT_PORT": str(free_port())}
    result = _cli(env, "reenable", "notify")
    assert result.returncode == 1, result.stdout
    assert result.stderr.count("\n") == 1
    assert "not reachable" in result.stderr


def test_an_unknown_service_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunbookError, match="unknown service"):
        runbooks.revoke(StackSettings.from_env(), "billing")


# ------------------------------------------------------------------ how a worker comes back


@pytest.mark.stack
async def test_a_worker_session_logs_in_again_at_its_next_refused_transit_call(
    stack: Stack,
) -> None:
    """A revoked token is noticed at the first refused Transit call (a worker whose data
    keys are not cached fails there, before it ever touches its database pool), and
    replaced then, not at the next renewal minutes away; while the identity is disabled
    the login is refused, and after ``reenable`` the next call is refused, logs in again
    and is tried once more on the new token, so it succeeds. (As the client identity,
    which has no worker, so no running worker is disturbed.)"""
    from orders_shared.codec import TransitDenied, VaultTransit, payload_key

    s = stack.settings
    session = await local_session(s, "client")
    transit = VaultTransit(session)
    key = payload_key("orchestrator")
    try:
        await transit.datakey(key)
        await asyncio.to_thread(runbooks.revoke, s, "client")
        with pytest.raises(TransitDenied):
            await transit.datakey(key)
        assert session.logins == 1  # disabled: the login it tried was refused
        await asyncio.to_thread(runbooks.reenable, s, "client")
        await asyncio.sleep(1.1)  # recover_refused checks at most once a second
        await transit.datakey(key)  # refused on the revoked token, replaced, tried again
        assert session.logins == 2
    finally:
        await asyncio.to_thread(runbooks.reenable, s, "client")
        await session.close()
