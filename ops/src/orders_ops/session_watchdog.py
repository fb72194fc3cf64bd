"""Session limits a login cannot switch off: a watchdog outside the sessions.

``statement_timeout`` and ``idle_in_transaction_session_timeout`` are role
defaults (:data:`orders_ops.database.ROLE_SETTINGS`): any session may ``SET``
them to 0. A Vault-issued login did, ran a statement past the 10 s limit and
held rows ``FOR UPDATE`` idle past 30 s. So this process, with a login of its
own, reads ``pg_stat_activity`` every ``period`` seconds and ends
(``pg_terminate_backend``) each session of a Vault-issued app login
(``v-order-<step>-...``) whose

* running statement started more than ``statement`` seconds ago (``query_start``),
* idle transaction has been idle more than ``idle_in_transaction`` seconds
  (``state_change``), or
* transaction started more than ``transaction`` seconds ago (``xact_start``;
  many short statements in one transaction hold their locks as long).

The defaults sit a little above the role settings (10 s, 30 s), so a session
that keeps its limits is stopped by PostgreSQL itself (the statement cancelled,
the session kept) and only one that switched them off meets the watchdog. A
session is ended, not its statement cancelled: the login broke its own limits.
The worker's pool sees the session end as a lost credential and moves to a new
one; the activity fails and Temporal retries it.

Its login, :data:`WATCHDOG_ROLE`, holds two built-in roles and nothing else:
``pg_read_all_stats`` (see other roles' ``query_start``, ``state`` in
``pg_stat_activity``) and ``pg_signal_backend`` (end a non-superuser session).
It reads no table and connects to the ``postgres`` database, not the app's.

Run: ``python -m orders_ops.session_watchdog`` (the local stack starts it as its
own supervised process; in a cluster the bootstrap chart's ``watchdog``
Deployment). Configuration, all environment: ``ORDERS_DB_HOST``,
``ORDERS_DB_PORT``, ``ORDERS_DATABASE_SSLMODE``, ``ORDERS_DATABASE_SSLROOTCERT``
(as a worker's), ``ORDERS_WATCHDOG_PASSWORD_FILE`` (its password),
``ORDERS_WATCHDOG_DATABASE`` (``postgres``), ``ORDERS_WATCHDOG_PERIOD`` (2 s),
``ORDERS_WATCHDOG_STATEMENT_LIMIT`` (12 s), ``ORDERS_WATCHDOG_IDLE_LIMIT``
(32 s), ``ORDERS_WATCHDOG_TRANSACTION_LIMIT`` (60 s), and
``ORDERS_WATCHDOG_HEARTBEAT_FILE`` (touched after every sweep that reached the
database; ``python -m orders_ops.session_watchdog check`` exits 0 while it is
fresh: the chart's liveness probe).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from orders_shared.catalog import DB_ROLES
from orders_shared.config import ConfigError, DatabaseConfig

log = structlog.get_logger("orders_ops.session_watchdog")

WATCHDOG_ROLE = "orders_session_watchdog"
"""The watchdog's own login: pg_read_all_stats and pg_signal_backend, no table."""

WATCHDOG_GRANTS = ("pg_read_all_stats", "pg_signal_backend")

PASSWORD_SECRET = "postgres-session-watchdog-password"  # noqa: S105 (a file name)
"""Its name in the bootstrap's secret store (local: ``<state>/secrets``)."""

PASSWORD_FILE_ENV = "ORDERS_WATCHDOG_PASSWORD_FILE"  # noqa: S105 (a variable name)


def login_patterns() -> list[str]:
    """LIKE patterns of every Vault-issued app login (``v-order-<step>-%``)."""
    from orders_ops.vault_database import username_prefix

    return [username_prefix(role) + "%" for role in DB_ROLES]


# One statement: sample, decide, end. A session that finished its statement between
# the sample and the signal was past its limit when sampled; it is ended all the same.
SWEEP = """
SELECT pid, usename, reason, round(age::numeric, 1)::float8 AS age,
       pg_terminate_backend(pid) AS ended
  FROM (
    SELECT pid, usename,
           CASE
             WHEN state = 'active' AND now() - query_start > make_interval(secs => $2)
               THEN 'statement'
             WHEN state LIKE 'idle in transaction%'
                  AND now() - state_change > make_interval(secs => $3)
               THEN 'idle_in_transaction'
             WHEN xact_start IS NOT NULL AND now() - xact_start > make_interval(secs => $4)
               THEN 'transaction'
           END AS reason,
           extract(epoch FROM now() - CASE WHEN state = 'active' THEN query_start
                                           WHEN state LIKE 'idle in transaction%'
                                             THEN state_change
                                           ELSE xact_start END) AS age
      FROM pg_stat_activity
     WHERE backend_type = 'client backend'
       AND pid <> pg_backend_pid()
       AND usename LIKE ANY ($1::text[])
  ) s
 WHERE reason IS NOT NULL
"""


@dataclass(frozen=True)
class Limits:
    """Seconds; see the module docstring."""

    statement: float = 12.0
    idle_in_transaction: float = 32.0
    transaction: float = 60.0
    period: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Limits:
        def seconds(name: str, default: float) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = float(raw.removesuffix("s"))
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
            if not 0.1 <= value <= 86400:
                raise ConfigError(f"{name}={raw!r}: use between 0.1 and 86400 seconds")
            return value

        return cls(
            statement=seconds("ORDERS_WATCHDOG_STATEMENT_LIMIT", cls.statement),
            idle_in_transaction=seconds("ORDERS_WATCHDOG_IDLE_LIMIT", cls.idle_in_transaction),
            transaction=seconds("ORDERS_WATCHDOG_TRANSACTION_LIMIT", cls.transaction),
            period=seconds("ORDERS_WATCHDOG_PERIOD", cls.period),
        )


@dataclass(frozen=True)
class Ended:
    pid: int
    usename: str
    reason: str
    age: float


async def sweep(conn: asyncpg.Connection[Any], limits: Limits) -> list[Ended]:
    """End every app session past a limit now; returns those it ended."""
    rows = await conn.fetch(
        SWEEP,
        login_patterns(),
        limits.statement,
        limits.idle_in_transaction,
        limits.transaction,
    )
    ended = [Ended(r["pid"], r["usename"], r["reason"], r["age"]) for r in rows if r["ended"]]
    for e in ended:
        # the login's name (not a secret: Vault logs it too), never the query text
        log.warning(
            "db.session_ended",
            pid=e.pid,
            login=e.usename,
            reason=e.reason,
            seconds=e.age,
        )
    return ended


def _touch(path: Path | None) -> None:
    if path is not None:
        path.touch()
        os.utime(path)


async def run(
    db: DatabaseConfig,
    password: str,
    limits: Limits,
    *,
    database: str = "postgres",
    heartbeat: Path | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Sweep every ``limits.period`` until ``stop``; a lost connection is opened again."""
    stop = stop or asyncio.Event()
    conn: asyncpg.Connection[Any] | None = None
    failures = 0
    log.info(
        "watchdog.started",
        statement=limits.statement,
        idle_in_transaction=limits.idle_in_transaction,
        transaction=limits.transaction,
        period=limits.period,
    )
    while not stop.is_set():
        try:
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(
                    host=db.host,
                    port=db.port,
                    database=database,
                    user=WATCHDOG_ROLE,
                    password=password,
                    ssl=db.ssl_arg(),
                    timeout=10,
                    server_settings={"application_name": "orders-session-watchdog"},
                    command_timeout=max(5.0, limits.period),
                )
            await sweep(conn, limits)
            _touch(heartbeat)
            failures = 0
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            failures += 1
            # the error's class and first line: never a password (asyncpg puts none in it)
            log.error(
                "watchdog.sweep_failed",
                error=type(exc).__name__,
                detail=str(exc).splitlines()[0] if str(exc) else "",
                consecutive=failures,
            )
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.terminate()
                conn = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=limits.period)
    if conn is not None:
        await conn.close()
    log.info("watchdog.stopped")


def heartbeat_fresh(path: Path, max_age: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime <= max_age
    except OSError:
        return False


def _password(env: Mapping[str, str]) -> str:
    name = env.get(PASSWORD_FILE_ENV, "").strip()
    if not name:
        raise ConfigError(
            f"{PASSWORD_FILE_ENV} is not set: the file with the password of the "
            f"{WATCHDOG_ROLE} login (orders-bootstrap sets it)"
        )
    try:
        value = Path(name).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{PASSWORD_FILE_ENV}: cannot read {name} ({exc.strerror})") from None
    if not value:
        raise ConfigError(f"{PASSWORD_FILE_ENV}: {name} is empty")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ
    heartbeat_name = env.get("ORDERS_WATCHDOG_HEARTBEAT_FILE", "").strip()
    heartbeat = Path(heartbeat_name) if heartbeat_name else None
    try:
        limits = Limits.from_env(env)
        if args[:1] == ["check"]:  # liveness: a sweep reached the database lately
            if heartbeat is None:
                raise ConfigError("check: ORDERS_WATCHDOG_HEARTBEAT_FILE is not set")
            sys.exit(0 if heartbeat_fresh(heartbeat, max(30.0, 5 * limits.period)) else 1)
        if args:
            raise ConfigError(f"unknown arguments {args}: run without any, or 'check'")
        db = DatabaseConfig.from_env(env)
        password = _password(env)
    except ConfigError as exc:
        print(f"orders-session-watchdog: {exc}", file=sys.stderr)
        sys.exit(2)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ]
    )

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(
            db,
            password,
            limits,
            database=env.get("ORDERS_WATCHDOG_DATABASE", "").strip() or "postgres",
            heartbeat=heartbeat,
            stop=stop,
        )

    asyncio.run(_main())


if __name__ == "__main__":
    main()
