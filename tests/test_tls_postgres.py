"""PostgreSQL of the TLS stack (``ORDERS_TLS=1``), against the real servers.

Claims: TCP logins without TLS find no pg_hba line; a client that trusts another CA
refuses the server; Vault connects over verify-full and the credentials it issues
work over verify-full; the workers' pools verify the server and an order completes.
Run in the TLS pass (``ORDERS_TLS=1``); without it there is no TLS server to test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import ssl
import time
import uuid
from pathlib import Path

import asyncpg
import hvac
import pytest
import tokenreview  # ops/tests is on pytest's pythonpath
from support import short_ttl

from orders_ops.database import VAULT_ADMIN_ROLE
from orders_ops.identities import local_session
from orders_ops.stack import Stack
from orders_shared.config import DatabaseConfig
from orders_shared.leases import LeasedPools, RolePool

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(
        os.environ.get("ORDERS_TLS") != "1",
        reason="the TLS stack's PostgreSQL: run with ORDERS_TLS=1 (make test's TLS pass)",
    ),
]

SSL_OF_SESSION = "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def _db(stack: Stack) -> DatabaseConfig:
    """What a worker gets in TLS mode (the stack's worker environment)."""
    s = stack.settings
    return DatabaseConfig.from_env(
        {
            "ORDERS_DB_HOST": "127.0.0.1",
            "ORDERS_DB_PORT": str(s.postgres_port),
            "ORDERS_DATABASE_SSLMODE": s.db_sslmode,
            "ORDERS_DATABASE_SSLROOTCERT": s.db_sslrootcert,
        }
    )


def _other_ca(folder: Path) -> Path:
    """A throwaway CA nobody in the stack knows, as a PEM file."""
    path = folder / "other-ca.pem"
    path.write_text(tokenreview.any_ca_pem())
    return path


def _password_dsn(stack: Stack) -> str:
    """The superuser's URL without any TLS parameter."""
    return stack.settings.admin_dsn("orders").split("?", 1)[0]


async def test_the_stack_runs_postgres_with_tls_and_verify_full(stack: Stack) -> None:
    s = stack.settings
    assert (s.tls, s.db_sslmode, s.db_sslrootcert) == (True, "verify-full", str(s.ca_file))
    conn = await asyncpg.connect(s.admin_dsn("orders"))
    try:
        used, version = await conn.fetchrow(SSL_OF_SESSION)
        assert (used, version in ("TLSv1.2", "TLSv1.3")) == (True, True)
        assert await conn.fetchval("SHOW server_version_num") >= "170000"
    finally:
        await conn.close()
    key = s.tls_dir / "postgres.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"


async def test_a_plaintext_tcp_login_is_refused_by_pg_hba(stack: Stack) -> None:
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await asyncpg.connect(_password_dsn(stack), ssl=False)


async def test_a_client_that_trusts_another_ca_refuses_the_server(
    stack: Stack, tmp_path: Path
) -> None:
    other = ssl.create_default_context(cafile=str(_other_ca(tmp_path)))
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        await asyncpg.connect(_password_dsn(stack), ssl=other)
    # a worker's leased pools verify the server with the CA they are given
    wrong = dataclasses.replace(_db(stack), sslrootcert=str(tmp_path / "other-ca.pem"))
    session = await local_session(stack.settings, "inventory")
    try:
        pools = LeasedPools(session, wrong, ["order-reserve-inventory"])
        await pools.open()  # issues the credential; connections open on demand
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                async with pools.connection("order-reserve-inventory") as conn:
                    await conn.fetchval("SELECT 1")
        finally:
            await pools.close()
    finally:
        await session.close()


async def test_vault_connects_with_verify_full_and_its_credentials_work_over_it(
    stack: Stack,
) -> None:
    s = stack.settings
    root = hvac.Client(url=s.vault_addr, token=s.root_token())
    url = root.read("database/config/orders")["data"]["connection_details"]["connection_url"]
    assert url.endswith(f"?sslmode=verify-full&sslrootcert={s.ca_file}")
    cred = root.read("database/creds/order-reserve-inventory")
    try:
        db = _db(stack)
        conn = await asyncpg.connect(
            host=db.host,
            port=db.port,
            database=db.name,
            user=cred["data"]["username"],
            password=cred["data"]["password"],
            ssl=db.ssl_arg(),
        )
        try:
            assert (await conn.fetchrow(SSL_OF_SESSION))["ssl"] is True
        finally:
            await conn.close()
        # Vault's own session (it just created this user) is a TLS one as well
        admin = await asyncpg.connect(s.admin_dsn("orders"))
        try:
            vault_ssl = await admin.fetch(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                "WHERE a.usename = $1",
                VAULT_ADMIN_ROLE,
            )
        finally:
            await admin.close()
    finally:
        root.sys.revoke_lease(cred["lease_id"])
    assert vault_ssl and {r["ssl"] for r in vault_ssl} == {True}


async def test_an_order_completes_with_tls_on_and_every_tcp_session_uses_tls(
    workers: Stack,
) -> None:
    from orders_shared.client import connect, submit_order
    from orders_shared.codec import VaultTransit
    from orders_shared.order_input import parse_order

    s = workers.settings
    admin = await asyncpg.connect(s.admin_dsn("orders"))
    session = await local_session(s, "client")
    try:
        sku = f"TLS-{uuid.uuid4().hex[:10].upper()}"
        await admin.execute(
            "INSERT INTO app.products (sku, name, unit_price_cents) VALUES ($1, 'tls', 900)", sku
        )
        await admin.execute("INSERT INTO app.inventory (sku, on_hand) VALUES ($1, 5)", sku)
        transit = VaultTransit(session)
        client = await connect(s.temporal_address, transit)
        order = {
            "order_id": f"tls-{uuid.uuid4().hex[:12]}",
            "customer_id": "cust-tls",
            "customer_name": "Ada Lovelace",
            "email": "ada@example.com",
            "shipping_address": "2 Engine Row, London",
            "payment_token": "tok_visa_4242",
            "lines": [{"sku": sku, "quantity": 2}],
        }
        done = await submit_order(client, parse_order(order), wait=True, transit=transit)
        assert done.result is not None and done.result.status == "completed"
        assert await admin.fetchval("SELECT on_hand FROM app.inventory WHERE sku = $1", sku) == 3
        # the workers' leased users (v-...) are connected, and only over TLS
        plain = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
            "WHERE a.client_addr IS NOT NULL AND NOT s.ssl"
        )
        leased = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE usename LIKE 'v-%' AND client_addr "
            "IS NOT NULL"
        )
        assert (plain, leased > 0) == (0, True)
    finally:
        await session.close()
        await admin.close()


async def _until_rotated(pool: RolePool, bound: float = 30.0) -> None:
    deadline = time.monotonic() + bound
    while pool.rotations < 1:
        assert time.monotonic() < deadline, "the pool never rotated its credential"
        await asyncio.sleep(0.2)


async def test_the_pool_keeps_verify_full_across_a_max_ttl_rotation(
    stack: Stack, tmp_path: Path
) -> None:
    """Issue 20 item 10: asyncpg's set_connect_args replaces every connection argument;
    a rotation that left ssl= out fell back to asyncpg's default (TLS without any check)."""
    s = stack.settings
    root = hvac.Client(url=s.vault_addr, token=s.root_token())
    right = _db(stack)
    wrong = dataclasses.replace(right, sslrootcert=str(_other_ca(tmp_path)))
    admin = await asyncpg.connect(s.admin_dsn("orders"))
    session = await local_session(s, "validate")
    # max TTL 4 s: the first renewal is capped, so the pool rotates to a new credential
    with short_ttl(root, "order-validate", ttl=2, max_ttl=4):
        good, bad = (RolePool(session, db, "order-validate") for db in (right, wrong))
        try:
            await good.open()
            await bad.open()
            first = good.credential.username
            await _until_rotated(good)
            await _until_rotated(bad)
            # a connection opened after the rotation, under the new credential, over TLS
            async with good.connection() as conn:
                user, pid = await conn.fetchrow("SELECT session_user, pg_backend_pid()")
            assert user == good.credential.username != first
            backend = await admin.fetchrow(
                "SELECT s.ssl, a.usename FROM pg_stat_ssl s JOIN pg_stat_activity a "
                "USING (pid) WHERE pid = $1",
                pid,
            )
            assert (backend["ssl"], backend["usename"]) == (True, user)
            # and the server is still verified: a pool trusting another CA still refuses it
            with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local"):
                async with bad.connection() as conn:
                    await conn.fetchval("SELECT 1")
        finally:
            await good.close()
            await bad.close()
            await session.close()
            await admin.close()
