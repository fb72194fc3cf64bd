"""Payload protection proved on the real stack: real Temporal, OpenBao, PostgreSQL, the
real ``temporal`` CLI and the Temporal UI in headless Chromium.

Every process runs as its own identity: each in-process worker's data converter
uses Transit with *that service's* Vault token, the client seals and encrypts
as ``orders-client``, and readers decrypt through the codec server with their
own token. Sensitive sample values never appear in history.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import hvac
import hvac.exceptions
import jwt as pyjwt
import pytest
import pytest_asyncio
import support  # tests/ is on pytest's pythonpath
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio import activity
from temporalio.api.common.v1 import Payload, Payloads, WorkflowType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    StartWorkflowExecutionRequest,
)
from temporalio.client import Client, WorkflowFailureError
from temporalio.converter import (
    ActivitySerializationContext,
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
    WorkflowSerializationContext,
)
from temporalio.exceptions import TerminatedError
from temporalio.service import RPCError
from temporalio.worker import Worker

from orders_codec_server.app import RunningServer, ServerConfig, start
from orders_fulfill import worker as fulfill_worker
from orders_inventory import worker as inventory_worker
from orders_notify import worker as notify_worker
from orders_ops import issuer
from orders_ops.database import bootstrap_database
from orders_ops.journey_ui import CHROMIUM, CHROMIUM_ARGS
from orders_ops.namespaces import ensure_namespace
from orders_ops.policies import PAYLOAD_KEY, SEALED_SERVICES, seal_key
from orders_ops.stack import Stack
from orders_ops.testing import free_port
from orders_ops.vault_audit import VaultAuditLog
from orders_ops.vault_bootstrap import (
    ReaderAuthConfig,
    audit_log_file,
    ensure_reader_auth,
    root_client,
)
from orders_orchestrator import guard
from orders_orchestrator import worker as orchestrator_worker
from orders_orchestrator.workflows import REFUSED_ANSWER_LIMIT
from orders_payment import worker as payment_worker
from orders_payment.provider import HttpCardProvider
from orders_shared.catalog import STEP_QUEUES
from orders_shared.client import submit_order
from orders_shared.codec import (
    LEGACY_RUNBOOK,
    META_FORMAT,
    META_KEY_ID,
    META_WORKFLOW_ID,
    META_WRAPPED_KEY,
    CodecMode,
    PayloadAccessDenied,
    PayloadDecodeError,
    TokenTransit,
    TransitDenied,
    TransitEnvelopeCodec,
    activity_payload_keys,
    codec_stats,
    data_converter,
    parse_wrapped_key,
    payload_key,
    payload_keys,
    rewrap_payload,
)
from orders_shared.contracts import fulfill, inventory, notify, payment, validate
from orders_shared.contracts.common import Order, OrderLine
from orders_shared.contracts.orchestrator import (
    ORDER_WORKFLOW,
    TASK_QUEUE,
    OrderWorkflowInput,
    OrderWorkflowResult,
)
from orders_shared.sealing import DATA_KEY_CONTEXT, open_field, seal_order
from orders_shared.search_attributes import PATCH_MARKER, written_in_the_clear
from orders_validate import worker as validate_worker

pytestmark = [pytest.mark.stack]

NAMESPACE = "orders-payload-tests"
PER_CALL_NAMESPACE = "orders-payload-percall"
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
TEMPORAL = str(Path(sys.executable).with_name("temporal"))
SERVICES_WITH_QUEUES = (
    ("orchestrator", TASK_QUEUE),
    ("validate", validate.TASK_QUEUE),
    ("inventory", inventory.TASK_QUEUE),
    ("payment", payment.TASK_QUEUE),
    ("fulfill", fulfill.TASK_QUEUE),
    ("notify", notify.TASK_QUEUE),
)


def sample_order(tag: str = "", *, sku: str = "WIDGET-1", token: str = "tok_visa") -> Order:  # noqa: S107
    """An order whose sensitive values are unique, so a search for them means something."""
    marker = uuid.uuid4().hex[:8]
    return Order(
        order_id=f"ord-pp{tag}-{marker}",
        customer_id=f"cust-visible-{marker}",  # not sensitive: readable after decoding
        customer_name=f"Grace Hopper {marker}",
        email=f"grace.{marker}@example.com",
        shipping_address=f"{marker} Cobol Avenue, Arlington",
        payment_token=token,
        lines=(OrderLine(sku=sku, quantity=1),),
    )


def sensitive(order: Order) -> list[str]:
    return [order.customer_name, order.email, order.shipping_address, order.payment_token]


# --------------------------------------------------------------------------- history helpers


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def history_text(history: Any) -> str:
    """Everything in a JSON history, with every base64 string also decoded."""
    parts = []
    for text in _strings(history):
        parts.append(text)
        with contextlib.suppress(binascii.Error, ValueError):
            if len(text) >= 4:
                parts.append(base64.b64decode(text, validate=True).decode("latin-1"))
    return "\n".join(parts)


def clear_by_design(path: str, p: dict[str, Any]) -> bool:
    """A payload of ``temporal workflow show -o json`` the order workflow stores in the clear
    on purpose: an outcome search attribute or its patch marker, with an allowed value only
    (issue 25 item 3; ``orders_shared.search_attributes.written_in_the_clear``)."""
    payload = Payload(
        metadata={k: base64.b64decode(v) for k, v in p["metadata"].items()},
        data=base64.b64decode(p.get("data", "")),
    )
    if "upsertWorkflowSearchAttributesEventAttributes.searchAttributes.indexedFields." in path:
        return written_in_the_clear(path.rsplit(".", 1)[1], payload)
    if "markerRecordedEventAttributes.details." in path:
        return written_in_the_clear(PATCH_MARKER, payload)
    return False


def payload_dicts(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        meta = node.get("metadata")
        if isinstance(meta, dict) and "encoding" in meta:
            yield path, node
            return
        for key, value in node.items():
            yield from payload_dicts(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from payload_dicts(value, f"{path}[{i}]")


async def temporal_cli(address: str, namespace: str, *args: str) -> tuple[int, str, str]:
    """The real ``temporal`` CLI, run without blocking the loop (it may call our codec server)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    proc = await asyncio.create_subprocess_exec(
        TEMPORAL,
        *args,
        "--address",
        address,
        "--namespace",
        namespace,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def show_history(
    address: str, namespace: str, workflow_id: str, *extra: str
) -> tuple[int, str, str]:
    return await temporal_cli(
        address,
        namespace,
        "workflow",
        "show",
        "-w",
        workflow_id,
        "-o",
        "json",
        "--no-json-shorthand-payloads",
        *extra,
    )


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def root(stack: Stack) -> Iterator[hvac.Client]:
    client = root_client(stack.settings)
    yield client
    client.adapter.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def identities(stack: Stack) -> AsyncIterator[Any]:
    ids = support.Identities(stack.settings)
    yield ids
    await ids.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def source(stack: Stack) -> AsyncIterator[Any]:
    await bootstrap_database(stack.settings)
    src = await support.GroupRoleSource.create(stack.settings.admin_dsn(stack.settings.database))
    yield src
    await src.close()


class Deployment:
    """Six workers and a client, each with its own identity's data converter."""

    def __init__(self, client: Client, clients: dict[str, Client]) -> None:
        self.client = client
        self.clients = clients

    def codecs(self) -> list[Any]:
        return [c.data_converter.payload_codec for c in (self.client, *self.clients.values())]

    def vault_calls(self) -> int:
        total = 0
        for c in (self.client, *self.clients.values()):
            stats = codec_stats(c.data_converter)
            assert stats is not None
            total += stats.vault_calls
        return total

    def reset(self) -> None:
        for c in (self.client, *self.clients.values()):
            stats = codec_stats(c.data_converter)
            assert stats is not None
            stats.reset()

    def forget_keys(self) -> None:
        for codec in self.codecs():
            if isinstance(codec, TransitEnvelopeCodec):
                codec.forget_keys()


@contextlib.asynccontextmanager
async def deployment(
    stack: Stack,
    identities: Any,
    source: Any,
    namespace: str,
    mode: CodecMode,
    codec_transits: dict[str, Any] | None = None,
    overrides: dict[str, tuple[Client, list[Any]] | None] | None = None,
) -> AsyncIterator[Deployment]:
    """``codec_transits``: the Transit client each identity's *codec* uses (default: its
    own Vault session); sealed fields are always opened with the service's own session.
    ``overrides``: service -> (client, activities) of a worker polling that service's
    task queue instead of the genuine one (a rogue); ``None``: no worker polls it (the
    test polls it itself)."""
    address = stack.settings.temporal_address
    await ensure_namespace(address, namespace)
    base = await Client.connect(address, namespace=namespace)
    transits = {name: await identities.transit(name) for name, _ in SERVICES_WITH_QUEUES}
    if codec_transits is None:
        codec_transits = {**transits, "client": await identities.transit("client")}

    def converter(name: str) -> Any:
        # the orchestrator's, as runtime.serve builds it: a refused activity answer
        # reaches the workflow as a failed attempt
        return data_converter(codec_transits[name], mode=mode, workflow_side=name == "orchestrator")

    clients = {
        name: Client(**{**base.config(), "data_converter": converter(name)}) for name in transits
    }
    client = Client(**{**base.config(), "data_converter": converter("client")})
    activities = {
        "validate": validate_worker.build_activities(source),
        "inventory": inventory_worker.build_activities(source),
        "payment": payment_worker.build_activities(
            source, transits["payment"], HttpCardProvider(stack.settings.provider_url)
        ),
        "fulfill": fulfill_worker.build_activities(source, transits["fulfill"]),
        "notify": notify_worker.build_activities(source, transits["notify"]),
    }
    async with AsyncExitStack() as exits:
        for name, queue in SERVICES_WITH_QUEUES:
            if overrides and name in overrides:
                override = overrides[name]
                if override is None:
                    continue
                rogue_client, rogue_activities = override
                worker = Worker(rogue_client, task_queue=queue, activities=rogue_activities)
            elif name == "orchestrator":
                worker = Worker(
                    clients[name], task_queue=queue, workflows=orchestrator_worker.WORKFLOWS
                )
            else:
                worker = Worker(clients[name], task_queue=queue, activities=activities[name])
            await exits.enter_async_context(worker)
        # the orchestrator's guard, as orders-orchestrator-worker runs it
        stop = asyncio.Event()
        guard_task = asyncio.create_task(guard.run(lambda: clients["orchestrator"], stop, 0.5))
        try:
            yield Deployment(client, clients)
        finally:
            stop.set()
            await guard_task


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def secured(stack: Stack, identities: Any, source: Any) -> AsyncIterator[Deployment]:
    async with deployment(stack, identities, source, NAMESPACE, "secured") as d:
        yield d


async def run_order(d: Deployment, order: Order, identities: Any) -> OrderWorkflowResult:
    submitted = await submit_order(
        d.client, order, wait=True, transit=await identities.transit("client")
    )
    assert submitted.result is not None
    return submitted.result


def reader_vault_token(stack: Stack) -> str:
    """A payload reader's Vault token, obtained as a person would: a user identity token
    (local issuer) exchanged at the oidc-readers mount."""
    user = issuer.mint_user(stack.settings, "test-reader", ttl=300)
    auth = hvac.Client(url=stack.settings.vault_addr).auth.jwt.jwt_login(
        "payload-reader", user, path="oidc-readers"
    )["auth"]
    assert auth["policies"] == ["payload-reader"]
    token: str = auth["client_token"]
    return token


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def codec_server(stack: Stack) -> AsyncIterator[RunningServer]:
    """The codec server, token required (no local mode)."""
    server = await start(
        ServerConfig(vault_addr=stack.settings.vault_addr, port=free_port(), cors_origins=())
    )
    yield server
    await server.stop()


# --------------------------------------------------------------------------- CLI and history


async def test_history_holds_only_ciphertext_and_readers_decode_it(
    stack: Stack, secured: Deployment, identities: Any, codec_server: RunningServer
) -> None:
    order = sample_order("cli")
    declined = sample_order("cli-declined", token="tok_decline_insufficient_funds")
    result = await run_order(secured, order, identities)
    assert result.status == "completed"
    failed = await run_order(secured, declined, identities)
    assert (failed.status, failed.reason_code) == ("failed", "PaymentDeclined")

    address = stack.settings.temporal_address
    for o in (order, declined):
        code, out, err = await show_history(address, NAMESPACE, o.order_id)
        assert code == 0, err
        history = json.loads(out)
        payloads = list(payload_dicts(history))
        assert len(payloads) >= 8
        for path, p in payloads:
            encoding = base64.b64decode(p["metadata"]["encoding"])
            if encoding != b"binary/encrypted":  # only the outcome attributes, by design
                assert clear_by_design(path, p), (path, encoding)
        text = history_text(history)
        for value in sensitive(o):
            assert value not in text, "a sensitive value is readable in history"
        assert o.customer_id not in text  # the whole input is encrypted
        if o is declined:
            # failure messages and stack traces are encrypted too
            assert "Encoded failure" in text
            assert "declined the charge" not in text
        (ARTIFACTS / "histories").mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "histories" / f"{o.order_id}.encrypted.json").write_text(out)

    endpoint = ["--codec-endpoint", codec_server.url]
    reader = f"Bearer {reader_vault_token(stack)}"
    code, out, err = await show_history(
        address, NAMESPACE, order.order_id, *endpoint, "--codec-auth", reader
    )
    assert code == 0, err
    decoded = history_text(json.loads(out))
    assert order.customer_id in decoded  # the reader sees the order...
    assert result.tracking_id and result.tracking_id in decoded
    for value in sensitive(order):  # ...with its sensitive fields still sealed to consumers
        assert value not in decoded
    assert "vault:v" in decoded

    code, out, err = await show_history(address, NAMESPACE, order.order_id, *endpoint)
    assert order.customer_id not in out  # no token: 401 from the codec server, nothing shown
    assert code != 0 or order.customer_id not in history_text(json.loads(out or "{}"))


async def test_each_service_opens_only_its_own_seal_key(identities: Any) -> None:
    """Each sealed field opens for its consumer's identity; the data key it is sealed with
    (envelope format orders-seal/1) unwraps for no other identity (403)."""
    plain = sample_order("seal")
    sealed = await seal_order(plain, await identities.transit("client"))
    owners = {"payment_token": "payment", "shipping_address": "fulfill", "email": "notify"}
    for field, owner in owners.items():
        value = getattr(sealed, field)
        wrapped = value.split(".")[1]  # orders-seal/1.<wrapped data key>.<data>
        for name in ("orchestrator", "validate", "inventory", *SEALED_SERVICES, "client"):
            transit = await identities.transit(name)
            if name == owner:
                opened = await open_field(
                    transit, owner, value, order_id=sealed.order_id, field=field
                )
                assert opened == getattr(plain, field)
            else:
                with pytest.raises(TransitDenied):
                    await transit.decrypt(seal_key(owner), wrapped, DATA_KEY_CONTEXT)


# --------------------------------------------------------------------------- codec server HTTP


def _test_idp() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return key, pem


TEST_IDP = "https://idp.test.invalid"


def user_token(key: rsa.RSAPrivateKey, user: str, groups: list[str], ttl: int = 300) -> str:
    claims = issuer.user_claims(user, groups, ttl, issuer=TEST_IDP)
    return pyjwt.encode(claims, key, algorithm="RS256", headers={"kid": "test-idp"})


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def idp_server(
    stack: Stack, root: hvac.Client
) -> AsyncIterator[tuple[RunningServer, rsa.RSAPrivateKey]]:
    """A codec server whose reader mount trusts a test identity provider."""
    key, pem = _test_idp()
    mount = "oidc-readers-test"
    config = ReaderAuthConfig(bound_issuer=TEST_IDP, pubkeys=(pem,))
    ensure_reader_auth(root, config, mount=mount)
    assert ensure_reader_auth(root, config, mount=mount) == []  # idempotent
    origin = "http://127.0.0.1:8999"
    server = await start(
        ServerConfig(
            vault_addr=stack.settings.vault_addr,
            port=free_port(),
            cors_origins=(origin,),
            reader_mount=mount,
            max_body=64 * 1024,
        )
    )
    try:
        yield server, key
    finally:
        await server.stop()
        root.sys.disable_auth_method(mount)


async def _encrypted_order_payload(identities: Any) -> tuple[dict[str, Any], str]:
    """One payload as a worker would write it, in proto3 JSON, and a marker inside it."""
    marker = f"visible-{uuid.uuid4().hex[:8]}"
    codec = TransitEnvelopeCodec(await identities.transit("orchestrator"))
    (encoded,) = await codec.encode(
        [Payload(metadata={"encoding": b"json/plain"}, data=json.dumps({"m": marker}).encode())]
    )
    return json_format.MessageToDict(encoded), marker


async def _post(
    url: str, body: Any, *, token: str | None = None, **headers: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    hdrs = {"Content-Type": "application/json", "X-Namespace": NAMESPACE, **headers}
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as http, http.post(url, data=data, headers=hdrs) as r:
        payload = await r.json(content_type=None)
        return r.status, payload, dict(r.headers)


async def test_identity_exchange_and_refusals(
    identities: Any, idp_server: tuple[RunningServer, rsa.RSAPrivateKey], root: hvac.Client
) -> None:
    server, key = idp_server
    payload, marker = await _encrypted_order_payload(identities)
    body = {"payloads": [payload]}
    url = f"{server.url}/decode?preserveStorageRefs=true"

    status, out, _ = await _post(url, body, token=user_token(key, "ada", ["payload-readers"]))
    assert status == 200, out
    decoded = json_format.ParseDict(out["payloads"][0], Payload())
    assert json.loads(decoded.data) == {"m": marker}
    assert server.server.auth.exchanges == 1

    status, out, _ = await _post(url, body, token=user_token(key, "eve", ["staff"]))
    assert status == 403, out
    assert "reader group" in out["error"]

    status, out, _ = await _post(url, body)
    assert status == 401 and "Authorization" in out["error"]

    other_key, _ = _test_idp()  # signed by an issuer Vault does not trust
    status, out, _ = await _post(url, body, token=user_token(other_key, "ada", ["payload-readers"]))
    assert status == 401, out

    no_rights = root.auth.token.create(policies=["default"], ttl="5m")["auth"]["client_token"]
    status, out, _ = await _post(url, body, token=no_rights)
    assert status == 403 and "payload-reader" in out["error"]

    reader = user_token(key, "ada", ["payload-readers"])
    status, out, _ = await _post(f"{server.url}/encode", body, token=reader)
    assert status == 403, out  # a reader writes nothing


async def test_malformed_requests_and_cors(
    identities: Any, idp_server: tuple[RunningServer, rsa.RSAPrivateKey]
) -> None:
    server, key = idp_server
    token = user_token(key, "ada", ["payload-readers"])
    url = f"{server.url}/decode"
    status, out, _ = await _post(url, b"{not json", token=token)
    assert status == 400 and "not valid JSON" in out["error"]
    status, out, _ = await _post(url, {"payloads": [{"data": 5}]}, token=token)
    assert status == 400 and "Payloads" in out["error"]
    status, out, _ = await _post(url, {"nope": []}, token=token)
    assert status == 400
    status, out, _ = await _post(
        url, {"payloads": []}, token=token, **{"Content-Type": "text/plain"}
    )
    assert status == 415 and "application/json" in out["error"]
    big = {"payloads": [{"metadata": {}, "data": base64.b64encode(b"x" * 100_000).decode()}]}
    status, out, _ = await _post(url, big, token=token)
    assert status == 413 and "over" in out["error"]

    payload, _ = await _encrypted_order_payload(identities)
    payload["data"] = base64.b64encode(b"\x00" * 40).decode()  # tampered
    status, out, _ = await _post(url, {"payloads": [payload]}, token=token)
    assert status == 422 and "authentication-failed" in out["error"]

    origin = "http://127.0.0.1:8999"
    preflight = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
    }
    async with aiohttp.ClientSession() as http:
        async with http.options(url, headers=preflight) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == origin
            allowed = r.headers["Access-Control-Allow-Headers"]
            assert {"content-type", "x-namespace", "authorization"} <= set(allowed.split(","))
        async with http.options(url, headers={**preflight, "Origin": "http://evil.test"}) as r:
            assert r.status == 403
            assert "Access-Control-Allow-Origin" not in r.headers
    status, _, headers = await _post(url, {"payloads": []}, token=token, Origin=origin)
    assert status == 200 and headers["Access-Control-Allow-Origin"] == origin


def test_local_mode_only_on_loopback(tmp_path: Path) -> None:
    from orders_codec_server.app import ConfigurationError

    with pytest.raises(ConfigurationError, match="loopback"):
        ServerConfig(
            vault_addr="http://127.0.0.1:1",
            host="0.0.0.0",  # noqa: S104
            local_mode=True,
            local_reader_token_file=tmp_path / "t",
        ).check()
    with pytest.raises(ConfigurationError, match="mint-user"):
        ServerConfig(vault_addr="http://127.0.0.1:1", local_mode=True).check()
    with pytest.raises(ConfigurationError, match="'\\*'"):
        ServerConfig(vault_addr="http://127.0.0.1:1", cors_origins=("*",)).check()
    out = subprocess.run(
        [
            str(Path(sys.executable).with_name("orders-codec-server")),
            "--local",
            "--host",
            "0.0.0.0",  # noqa: S104
        ],
        env={**os.environ, "VAULT_ADDR": "http://127.0.0.1:1"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 2 and "loopback" in out.stderr


# --------------------------------------------------------------------------- rotation


async def test_rotation_histories_before_and_after_decode(
    stack: Stack,
    secured: Deployment,
    identities: Any,
    codec_server: RunningServer,
    root: hvac.Client,
    tmp_path: Path,
) -> None:
    before = sample_order("rot-before")
    assert (await run_order(secured, before, identities)).status == "completed"
    latest = {}
    for key in payload_keys():
        root.secrets.transit.rotate_key(key)
        latest[key] = root.secrets.transit.read_key(key)["data"]["latest_version"]
    secured.forget_keys()  # else each process switches at its cache bound (max_key_age)
    after = sample_order("rot-after")
    assert (await run_order(secured, after, identities)).status == "completed"

    address = stack.settings.temporal_address
    versions = {}
    for o in (before, after):
        code, out, err = await show_history(address, NAMESPACE, o.order_id)
        assert code == 0, err
        history = json.loads(out)
        versions[o.order_id] = {
            (
                base64.b64decode(p["metadata"][META_KEY_ID]).decode(),
                parse_wrapped_key(base64.b64decode(p["metadata"][META_WRAPPED_KEY]))[0],
            )
            for path, p in payload_dicts(history)
            if not clear_by_design(path, p)  # the outcome attributes: never encrypted
        }
        (tmp_path / f"{o.order_id}.json").write_text(out)
    assert all(version < latest[key] for key, version in versions[before.order_id])
    assert versions[after.order_id] == {(k, latest[k]) for k, _ in versions[after.order_id]}
    # the workflow and every service it calls wrote under their own key (from the catalog:
    # a scaffolded service that is not a step yet is never in an order's history)
    keys_by_queue = activity_payload_keys()
    expected = {keys_by_queue[TASK_QUEUE]} | {keys_by_queue[q] for q in STEP_QUEUES}
    assert {k for k, _ in versions[after.order_id]} == expected

    reader = f"Bearer {reader_vault_token(stack)}"
    for o in (before, after):
        code, out, err = await show_history(
            address,
            NAMESPACE,
            o.order_id,
            "--codec-endpoint",
            codec_server.url,
            "--codec-auth",
            reader,
        )
        assert code == 0, err
        assert o.customer_id in history_text(json.loads(out))

    # rewrap an exported history to the latest version (the real CLI)
    exported = tmp_path / f"{before.order_id}.json"
    rewrapped = tmp_path / "rewrapped.json"
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("orders-codec")),
        "rewrap",
        str(exported),
        "-o",
        str(rewrapped),
        env={
            **os.environ,
            "VAULT_ADDR": stack.settings.vault_addr,
            "VAULT_TOKEN": stack.settings.root_token(),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out_b, err_b = await proc.communicate()
    assert proc.returncode == 0, err_b.decode()
    assert "rewrapped" in out_b.decode()
    history = json.loads(rewrapped.read_text())
    payloads = [
        json_format.ParseDict(p, Payload())
        for path, p in payload_dicts(history)
        if not clear_by_design(path, p)  # the outcome attributes: left as they are
    ]
    assert {
        parse_wrapped_key(p.metadata[META_WRAPPED_KEY])[0]
        - latest[p.metadata[META_KEY_ID].decode()]
        for p in payloads
    } == {0}
    reader_codec = TransitEnvelopeCodec(
        TokenTransit(stack.settings.vault_addr, reader_vault_token(stack))
    )
    decoded = await reader_codec.decode(payloads)
    assert before.customer_id in b"".join(p.data for p in decoded).decode()


async def test_retired_key_version_fails_clearly(
    stack: Stack, identities: Any, root: hvac.Client
) -> None:
    """min_decryption_version on a test-only key (the real one stays as it is)."""
    key = f"orders-payload-test-{uuid.uuid4().hex[:6]}"
    root.secrets.transit.create_key(key, key_type="aes256-gcm96")
    transit = TokenTransit(stack.settings.vault_addr, stack.settings.root_token())
    try:
        codec = TransitEnvelopeCodec(transit, key_name=key)
        (old,) = await codec.encode([Payload(metadata={"encoding": b"x"}, data=b"old secret")])
        root.secrets.transit.rotate_key(key)
        codec.forget_keys()
        (new,) = await codec.encode([Payload(metadata={"encoding": b"x"}, data=b"new secret")])
        rewrapped = await rewrap_payload(old, transit)
        assert rewrapped is not None
        root.secrets.transit.update_key_configuration(key, min_decryption_version=2)
        fresh = TransitEnvelopeCodec(transit, key_name=key)
        with pytest.raises(PayloadDecodeError) as info:
            await fresh.decode([old])
        assert info.value.cause == "key-version-retired"
        assert "min_decryption_version" in str(info.value)
        assert [p.data for p in await fresh.decode([new, rewrapped])] == [
            b"new secret",
            b"old secret",
        ]
    finally:
        root.secrets.transit.update_key_configuration(key, deletion_allowed=True)
        root.secrets.transit.delete_key(key)
        transit.close()


# --------------------------------------------------------------------------- properties on Vault


_REAL = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def real_codecs(stack: Stack, identities: Any) -> tuple[TransitEnvelopeCodec, TokenTransit]:
    writer = TransitEnvelopeCodec(await identities.transit("orchestrator"))
    return writer, TokenTransit(stack.settings.vault_addr, reader_vault_token(stack))


async def test_property_real_vault_roundtrip_and_flips(
    real_codecs: tuple[TransitEnvelopeCodec, TokenTransit],
) -> None:
    writer, reader_transit = real_codecs

    @_REAL
    @given(
        data=st.binary(max_size=3000),
        where=st.sampled_from(["data", "wrapped"]),
        position=st.integers(min_value=0),
        mask=st.integers(min_value=1, max_value=255),
    )
    def check(data: bytes, where: str, position: int, mask: int) -> None:
        async def body() -> None:
            payload = Payload(metadata={"encoding": b"binary/plain"}, data=data)
            (encoded,) = await writer.encode([payload])
            reader = TransitEnvelopeCodec(reader_transit)  # fresh: asks Vault to unwrap
            assert await reader.decode([encoded]) == [payload]
            target = bytearray(
                encoded.data if where == "data" else encoded.metadata[META_WRAPPED_KEY]
            )
            target[position % len(target)] ^= mask
            if where == "data":
                encoded.data = bytes(target)
            else:
                encoded.metadata[META_WRAPPED_KEY] = bytes(target)
            with pytest.raises(PayloadDecodeError):
                await TransitEnvelopeCodec(reader_transit).decode([encoded])

        future = asyncio.run_coroutine_threadsafe(body(), loop)
        future.result(60)

    loop = asyncio.get_running_loop()
    await asyncio.to_thread(check)


# --------------------------------------------------------------------------- Vault calls


def _totals(d: Deployment) -> tuple[int, int]:
    encoded = decoded = 0
    for c in (d.client, *d.clients.values()):
        stats = codec_stats(c.data_converter)
        assert stats is not None
        encoded += stats.encoded
        decoded += stats.decoded
    return encoded, decoded


async def test_vault_calls_per_workflow_envelope_vs_per_call(
    stack: Stack, secured: Deployment, identities: Any, source: Any, root: hvac.Client
) -> None:
    """Steady state, same run: envelope codec vs one Transit call per payload.

    Figures are printed and saved (artifacts/payload-vault-calls.json); the
    assertions are on counts only, never on time.
    """
    runs = 5
    figures: dict[str, Any] = {}
    # The secured policies deliberately grant no transit/encrypt/orders-payload (data keys
    # only); the per-call configuration needs it, so this test adds it on top of each
    # identity's own policy (a benchmark overlay), and removes it after.
    bench_policy = "orders-payload-per-call-test"
    root.sys.create_or_update_policy(
        bench_policy,
        policy='path "transit/encrypt/orders-payload" { capabilities = ["update"] }\n'
        'path "transit/decrypt/orders-payload" { capabilities = ["update"] }\n',
    )
    per_call_transits: dict[str, Any] = {}
    for name in (*(n for n, _ in SERVICES_WITH_QUEUES), "client"):
        token = root.auth.token.create(
            policies=[f"orders-{name}", bench_policy], no_default_policy=True, ttl="10m"
        )["auth"]["client_token"]
        per_call_transits[name] = TokenTransit(stack.settings.vault_addr, token)
    try:
        async with deployment(
            stack, identities, source, PER_CALL_NAMESPACE, "per-call", per_call_transits
        ) as per_call:
            audit = VaultAuditLog(audit_log_file(stack.settings))
            for name, d in (("envelope", secured), ("per-call", per_call)):
                await run_order(d, sample_order(f"warm-{name}"), identities)  # warm caches
                d.reset()
                mark = audit.mark()
                for i in range(runs):
                    result = await run_order(d, sample_order(f"m{i}-{name}"), identities)
                    assert result.status == "completed"
                # counted by Vault itself (its audit log), not by the codec's own counters:
                # every Transit request on a payload key (sealing keys are another matter)
                seen = audit.requests(mark, prefix="transit/")
                payload_paths = {k: n for k, n in seen.items() if "orders-payload" in k}
                calls = sum(payload_paths.values())
                encoded, decoded = _totals(d)
                figures[name] = {
                    "workflows": runs,
                    "vault_calls": calls,
                    "vault_calls_per_workflow": calls / runs,
                    "vault_calls_by_path": payload_paths,
                    "payloads_encoded_per_workflow": encoded / runs,
                    "payloads_decoded_per_workflow": decoded / runs,
                }
    finally:
        root.sys.delete_policy(bench_policy)
        for transit in per_call_transits.values():
            transit.close()
    figures["note"] = (
        "Transit requests on payload keys, counted from Vault's audit log, for the client "
        "and six workers, each with its own codec; field sealing (orders-seal-* keys) "
        "is not counted here"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "payload-vault-calls.json").write_text(json.dumps(figures, indent=2))
    print("\nVault calls per workflow (steady state):", json.dumps(figures, indent=2))
    assert figures["envelope"]["vault_calls_per_workflow"] < 1
    per_call_figures = figures["per-call"]
    assert per_call_figures["vault_calls_per_workflow"] == (
        per_call_figures["payloads_encoded_per_workflow"]
        + per_call_figures["payloads_decoded_per_workflow"]
    )


# --------------------------------------------------------------------------- the UI


class DevServer:
    """A Temporal dev server of the test's own (own ports, own db file), UI on."""

    def __init__(self, tmp: Path, codec_endpoint: str | None, name: str = "ui-test") -> None:
        self.grpc, self.ui, self.http, self.metrics = (free_port() for _ in range(4))
        self.db = tmp / f"{name}.db"
        self.log = tmp / f"{name}-temporal.log"
        self.codec_endpoint = codec_endpoint
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui}"

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    TEMPORAL,
                    "server",
                    "start-dev",
                    "--ip",
                    "127.0.0.1",
                    "--port",
                    str(self.grpc),
                    "--ui-port",
                    str(self.ui),
                    "--http-port",
                    str(self.http),
                    "--metrics-port",
                    str(self.metrics),
                    "--db-filename",
                    str(self.db),
                    "--namespace",
                    "default",
                    "--ui-disable-news-fetch",
                    *(["--ui-codec-endpoint", self.codec_endpoint] if self.codec_endpoint else []),
                    "--log-level",
                    "warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            ok = subprocess.run(
                [
                    TEMPORAL,
                    "operator",
                    "namespace",
                    "describe",
                    "-n",
                    "default",
                    "--address",
                    self.address,
                ],
                capture_output=True,
                timeout=10,
                check=False,
            )
            if ok.returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError("the UI test's Temporal dev server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


async def _page_text_after(page: Any, url: str, marker: str, *, expect: bool, shot: Path) -> str:
    await page.goto(url, wait_until="domcontentloaded")
    deadline = time.monotonic() + (20 if expect else 8)
    text = ""
    while time.monotonic() < deadline:
        await asyncio.sleep(1)
        text = await page.content()
        if expect and marker in text:
            break
    shot.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(shot), full_page=True)
    return text


@pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"),
    reason="chromium: ops/scripts/install-browser.sh (in CI a missing browser fails instead)",
)
async def test_ui_shows_ciphertext_unless_the_codec_server_decodes(
    stack: Stack, secured: Deployment, identities: Any, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    codec_port = free_port()
    secret_file = tmp_path / "codec-secret"  # local mode's secret path prefix, as the stack makes
    secret_file.write_text("ui-test-secret\n")
    endpoint = f"http://127.0.0.1:{codec_port}/ui-test-secret"
    dev = DevServer(tmp_path, endpoint)
    plain_dev = DevServer(tmp_path, None, name="ui-plain")
    dev.start()
    shots = ARTIFACTS / "ui"
    try:
        # an order started on the test's server (no workers needed: the input is in history)
        plain = sample_order("ui")
        order = await seal_order(plain, await identities.transit("client"))
        client = await Client.connect(
            dev.address,
            data_converter=data_converter(await identities.transit("client")),
        )
        handle = await client.start_workflow(
            ORDER_WORKFLOW,
            OrderWorkflowInput(order=order),
            id=order.order_id,
            task_queue=TASK_QUEUE,
        )
        page_url = (
            f"{dev.ui_url}/namespaces/default/workflows/{order.order_id}/"
            f"{handle.result_run_id}/history"
        )
        # the same order in a UI with no codec endpoint (the stack's own UI has one)
        plain_dev.start()
        plain_client = await Client.connect(
            plain_dev.address,
            data_converter=data_converter(await identities.transit("client")),
        )
        plain_handle = await plain_client.start_workflow(
            ORDER_WORKFLOW,
            OrderWorkflowInput(order=order),
            id=order.order_id,
            task_queue=TASK_QUEUE,
        )

        origins = (dev.ui_url, f"http://localhost:{dev.ui}")
        reader_file = tmp_path / "reader.jwt"
        reader_file.write_text(issuer.mint_user(stack.settings, "local-developer", ttl=600))

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = await (await browser.new_context()).new_page()
                settings_json = await (
                    await page.request.get(f"{dev.ui_url}/api/v1/settings")
                ).json()
                assert endpoint in json.dumps(settings_json)

                # 1. no codec endpoint: ciphertext only
                text = await _page_text_after(
                    page,
                    f"{plain_dev.ui_url}/namespaces/default/workflows/{order.order_id}/"
                    f"{plain_handle.result_run_id}/history",
                    plain.customer_id,
                    expect=False,
                    shot=shots / "1-no-codec-endpoint.png",
                )
                assert plain.customer_id not in text
                for value in sensitive(plain):
                    assert value not in text

                # 2. codec endpoint, but the codec server requires a token (the UI sends none)
                strict = await start(
                    ServerConfig(
                        vault_addr=stack.settings.vault_addr, port=codec_port, cors_origins=origins
                    )
                )
                try:
                    text = await _page_text_after(
                        page,
                        page_url,
                        order.customer_id,
                        expect=False,
                        shot=shots / "2-codec-server-requires-token.png",
                    )
                    assert strict.server.requests >= 1  # the browser did call it
                finally:
                    await strict.stop()
                assert order.customer_id not in text

                # 3. codec server in local mode: the decoded order
                local = await start(
                    ServerConfig(
                        vault_addr=stack.settings.vault_addr,
                        port=codec_port,
                        cors_origins=origins,
                        local_mode=True,
                        local_reader_token_file=reader_file,
                        local_secret_file=secret_file,
                    )
                )
                try:
                    page = await (await browser.new_context()).new_page()
                    text = await _page_text_after(
                        page,
                        page_url,
                        order.customer_id,
                        expect=True,
                        shot=shots / "3-codec-server-local-mode.png",
                    )
                finally:
                    await local.stop()
                assert order.customer_id in text
                for value in sensitive(plain):  # still sealed to their consumers
                    assert value not in text
            finally:
                await browser.close()
        await handle.terminate("UI test done")
    finally:
        dev.stop()
        plain_dev.stop()
        shutil.rmtree(tmp_path / "ui-test.db", ignore_errors=True)


# --------------------------------------------------------------------------- per-service keys

ROGUE_NAMESPACE = "orders-payload-rogue"


async def _events(client: Client, workflow_id: str) -> list[HistoryEvent]:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return list(history.events)


def _scheduled(events: list[HistoryEvent], activity_type: str) -> list[HistoryEvent]:
    return [
        e
        for e in events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == activity_type
    ]


async def _terminate_if_running(client: Client, workflow_id: str, reason: str) -> None:
    with contextlib.suppress(RPCError):  # it ended by itself: as it should
        await client.get_workflow_handle(workflow_id).terminate(reason)


def _completed(events: list[HistoryEvent], activity_type: str) -> list[HistoryEvent]:
    """The completions of ``activity_type``'s tasks (matched by their scheduled event)."""
    ids = {e.event_id for e in _scheduled(events, activity_type)}
    return [
        e
        for e in events
        if e.HasField("activity_task_completed_event_attributes")
        and e.activity_task_completed_event_attributes.scheduled_event_id in ids
    ]


async def _workflow_task_failure(d: Deployment, namespace: str, workflow_id: str) -> str:
    """The orchestrator's first failed workflow task for ``workflow_id``, decoded as the
    orchestrator (the failure message is encrypted too)."""
    orchestrator = d.clients["orchestrator"]
    for _ in range(300):
        for event in await _events(orchestrator, workflow_id):
            if event.HasField("workflow_task_failed_event_attributes"):
                failure = event.workflow_task_failed_event_attributes.failure
                converter = orchestrator.data_converter.with_context(
                    WorkflowSerializationContext(namespace=namespace, workflow_id=workflow_id)
                )
                return str(await converter.decode_failure(failure))
        await asyncio.sleep(0.2)
    raise AssertionError(f"no workflow task of {workflow_id} failed")


def _payment_context(workflow_id: str) -> ActivitySerializationContext:
    return ActivitySerializationContext(
        namespace=ROGUE_NAMESPACE,
        activity_id="1",
        activity_type=payment.PROCESS_PAYMENT,
        activity_task_queue=payment.TASK_QUEUE,
        workflow_id=workflow_id,
        workflow_type=ORDER_WORKFLOW,
        is_local=False,
    )


class NotifyShellForger(TransitEnvelopeCodec):
    """What a shell in the notify worker can do from the orders-payment queue: it cannot
    open the task's input (not its key), so it ignores it, and writes its forged result
    under the only payload key it may use, its own."""

    async def decode(self, payloads: Any) -> list[Payload]:
        return [Payload(metadata={"encoding": b"binary/null"}) for _ in payloads]


@activity.defn(name=payment.PROCESS_PAYMENT)
async def forged_process_payment(_: Any = None) -> payment.ProcessPaymentOutput:
    return payment.ProcessPaymentOutput(
        order_id=activity.info().workflow_id or "",
        amount_cents=0,
        currency="EUR",
        provider_ref="forged-approved",
    )


@activity.defn(name=payment.REFUND_PAYMENT)
async def forged_refund_payment(_: Any = None) -> payment.RefundPaymentOutput:
    return payment.RefundPaymentOutput(
        order_id=activity.info().workflow_id or "",
        refunded=True,
        amount_cents=0,
        provider_ref="forged-refunded",
    )


async def _ended_compensated_without_shipping(
    d: Deployment, order: Order, cause: str
) -> tuple[OrderWorkflowResult, list[HistoryEvent]]:
    """The order of a rogue payment poller ends (no wedged workflow task): failed as an
    infrastructure failure of process_payment after REFUSED_ANSWER_LIMIT answers, each
    refused with ``cause``, the reservation released, nothing fulfilled."""
    result = await asyncio.wait_for(
        d.client.get_workflow_handle(order.order_id, result_type=OrderWorkflowResult).result(),
        timeout=60,
    )
    assert result.status == "failed", result
    assert result.reason_code == "StepFailed", result
    assert result.reason is not None and cause in result.reason, result.reason
    assert inventory.RELEASE_INVENTORY in result.path, result.path
    events = await _events(d.client, order.order_id)
    assert not any(e.HasField("workflow_task_failed_event_attributes") for e in events)
    assert len(_scheduled(events, payment.PROCESS_PAYMENT)) == REFUSED_ANSWER_LIMIT
    assert not _scheduled(events, fulfill.FULFILL_ORDER)  # it never acted on one
    assert _scheduled(events, inventory.RELEASE_INVENTORY)
    return result, events


async def test_notify_can_neither_open_nor_forge_payment_payloads(
    stack: Stack, identities: Any, source: Any
) -> None:
    notify_transit = await identities.transit("notify")
    base = await Client.connect(stack.settings.temporal_address, namespace=ROGUE_NAMESPACE)
    forger = NotifyShellForger(
        notify_transit, activity_keys={payment.TASK_QUEUE: payload_key("notify")}
    )
    rogue = Client(
        **{
            **base.config(),
            "data_converter": DataConverter(
                payload_codec=forger,
                failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
            ),
        }
    )
    order = sample_order("rogue")
    async with deployment(
        stack,
        identities,
        source,
        ROGUE_NAMESPACE,
        "secured",
        overrides={"payment": (rogue, [forged_process_payment, forged_refund_payment])},
    ) as d:
        await submit_order(d.client, order, wait=False, transit=await identities.transit("client"))
        try:
            result, events = await _ended_compensated_without_shipping(d, order, "wrong-key")
            # the orchestrator refused the forged result: wrong key for a payment activity
            message = result.reason or ""
            assert "orders-payload-payment" in message and "orders-payload-notify" in message
            completed = _completed(events, payment.PROCESS_PAYMENT)
            assert len(completed) == REFUSED_ANSWER_LIMIT
            forged = completed[-1].activity_task_completed_event_attributes.result.payloads[0]
            assert forged.metadata[META_KEY_ID] == b"orders-payload-notify"
            assert not _scheduled(events, fulfill.FULFILL_ORDER)  # it never acted on it

            # notify's real identity cannot open the payment task's input (OpenBao: 403)...
            scheduled = _scheduled(events, payment.PROCESS_PAYMENT)[0]
            task_input = scheduled.activity_task_scheduled_event_attributes.input.payloads[0]
            assert task_input.metadata[META_KEY_ID] == b"orders-payload-payment"
            assert task_input.metadata[META_WORKFLOW_ID] == order.order_id.encode()
            notify_codec = TransitEnvelopeCodec(notify_transit)
            for codec in (
                notify_codec,
                notify_codec.with_context(_payment_context(order.order_id)),
            ):
                with pytest.raises(PayloadAccessDenied) as denied:
                    await codec.decode([task_input])
                assert "transit/decrypt/orders-payload-payment" in str(denied.value)
            # ...nor write a payment result under the payment key (no data keys of it)
            with pytest.raises(TransitDenied):
                await notify_codec.with_context(_payment_context(order.order_id)).encode(
                    [Payload(metadata={"encoding": b"json/plain"}, data=b"{}")]
                )
            # while the orchestrator and the genuine payment identity can open it
            for name in ("orchestrator", "payment"):
                own = TransitEnvelopeCodec(await identities.transit(name))
                opened = await own.with_context(_payment_context(order.order_id)).decode(
                    [task_input]
                )
                assert order.order_id.encode() in opened[0].data
        finally:
            await _terminate_if_running(d.client, order.order_id, "test: rogue payment")


class KeylessLegacyReplay(PayloadCodec):
    """A poller with no Vault identity at all on orders-payment: it ignores the task's
    input and answers with one old orders-envelope/1 ProcessPaymentOutput copied from
    pre-upgrade history (issue 20: such a payload completed other orders' payments)."""

    def __init__(self, old_result: Payload) -> None:
        self.old_result = old_result

    async def encode(self, payloads: Any) -> list[Payload]:
        return [self.old_result for _ in payloads]

    async def decode(self, payloads: Any) -> list[Payload]:
        return [Payload(metadata={"encoding": b"binary/null"}) for _ in payloads]


async def test_a_keyless_poller_replaying_an_old_payment_result_ships_nothing(
    stack: Stack, identities: Any, source: Any
) -> None:
    root = TokenTransit(stack.settings.vault_addr, stack.settings.root_token())
    try:  # a payload as old history holds it (made now with root: nobody else may)
        old_output = DataConverter.default.payload_converter.to_payloads(
            [payment.ProcessPaymentOutput("ord-of-old", 3399, "EUR", "old-approved")]
        )[0]
        (old_result,) = await SingleKeyClientCodec(root, None).encode([old_output])  # type: ignore[arg-type]
    finally:
        root.close()
    base = await Client.connect(stack.settings.temporal_address, namespace=ROGUE_NAMESPACE)
    keyless = Client(
        **{
            **base.config(),
            "data_converter": DataConverter(payload_codec=KeylessLegacyReplay(old_result)),
        }
    )
    order = sample_order("legacy-replay")
    async with deployment(
        stack,
        identities,
        source,
        ROGUE_NAMESPACE,
        "secured",
        overrides={"payment": (keyless, [forged_process_payment, forged_refund_payment])},
    ) as d:
        await submit_order(d.client, order, wait=False, transit=await identities.transit("client"))
        try:
            result, events = await _ended_compensated_without_shipping(d, order, "legacy-refused")
            assert LEGACY_RUNBOOK in (result.reason or ""), result.reason
            completed = _completed(events, payment.PROCESS_PAYMENT)
            assert len(completed) == REFUSED_ANSWER_LIMIT
            replayed = completed[-1].activity_task_completed_event_attributes.result.payloads[0]
            assert replayed.metadata[META_FORMAT] == b"orders-envelope/1"
            assert not _scheduled(events, fulfill.FULFILL_ORDER)  # nothing ships
        finally:
            await _terminate_if_running(d.client, order.order_id, "test: legacy replay")


async def test_a_payload_moved_to_another_workflow_fails_clearly(
    secured: Deployment, identities: Any
) -> None:
    order = sample_order("moved")
    assert (await run_order(secured, order, identities)).status == "completed"
    events = await _events(secured.client, order.order_id)
    started = events[0].workflow_execution_started_event_attributes
    (copied,) = started.input.payloads
    assert copied.metadata[META_KEY_ID] == b"orders-payload-orchestrator"
    assert copied.metadata[META_WORKFLOW_ID] == order.order_id.encode()
    target = f"{order.order_id}-copy"
    # started directly over gRPC, the copied ciphertext as the input (no codec in between)
    await secured.client.workflow_service.start_workflow_execution(
        StartWorkflowExecutionRequest(
            namespace=NAMESPACE,
            workflow_id=target,
            workflow_type=WorkflowType(name=ORDER_WORKFLOW),
            task_queue=TaskQueue(name=TASK_QUEUE),
            input=Payloads(payloads=[copied]),
            request_id=str(uuid.uuid4()),
            identity="test-payload-mover",
        )
    )
    try:
        message = await _workflow_task_failure(secured, NAMESPACE, target)
        assert "wrong-workflow" in message, message
        assert f"belongs to workflow '{order.order_id}', not '{target}'" in message
    finally:
        await secured.client.get_workflow_handle(target).terminate("test: moved payload")


def _legacy_aad(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(2, "big") + p for p in parts)


class SingleKeyClientCodec(PayloadCodec):
    """The client as it was before per-service keys: ``orders-envelope/1`` under the one
    key ``orders-payload`` (data keys from a root token: no identity may create them now).
    Reads with the current codec."""

    def __init__(self, legacy: TokenTransit, current: TransitEnvelopeCodec) -> None:
        self.legacy = legacy
        self.current = current

    async def encode(self, payloads: Any) -> list[Payload]:
        out = []
        for payload in payloads:
            key, wrapped = await self.legacy.datakey(PAYLOAD_KEY)
            nonce = os.urandom(12)
            aad = _legacy_aad(b"orders-envelope/1", PAYLOAD_KEY.encode(), b"none")
            sealed = AESGCM(key).encrypt(nonce, payload.SerializeToString(), aad)
            out.append(
                Payload(
                    metadata={
                        "encoding": b"binary/encrypted",
                        "encryption-key-id": PAYLOAD_KEY.encode(),
                        "encryption-format": b"orders-envelope/1",
                        "encryption-wrapped-key": wrapped.encode(),
                        "encryption-compression": b"none",
                    },
                    data=nonce + sealed,
                )
            )
        return out

    async def decode(self, payloads: Any) -> list[Payload]:
        return await self.current.decode(payloads)


async def test_a_worker_refuses_old_single_key_payloads_naming_the_runbook(
    stack: Stack, secured: Deployment, identities: Any, codec_server: RunningServer
) -> None:
    """orders-envelope/1 is bound to no workflow (one old payload would pass as any
    order's input or result), so the real orchestrator refuses it, naming the runbook,
    and runs no step; the codec server reads it only when started with
    ORDERS_CODEC_ACCEPT_LEGACY=true (not here: the default)."""
    client_transit = await identities.transit("client")
    legacy = TokenTransit(stack.settings.vault_addr, stack.settings.root_token())
    old_client = Client(
        **{
            **secured.client.config(),
            "data_converter": DataConverter(
                payload_codec=SingleKeyClientCodec(legacy, TransitEnvelopeCodec(client_transit)),
                failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
            ),
        }
    )
    orchestrator_stats = codec_stats(secured.clients["orchestrator"].data_converter)
    assert orchestrator_stats is not None
    legacy_before = orchestrator_stats.legacy
    order = sample_order("legacy")
    try:
        # a workflow started with an old-format input (as a replayed pre-upgrade payload)
        await submit_order(old_client, order, wait=False, transit=client_transit)
    finally:
        legacy.close()
    try:
        message = await _workflow_task_failure(secured, NAMESPACE, order.order_id)
        assert "legacy-refused" in message, message
        assert LEGACY_RUNBOOK in message, message
        events = await _events(secured.client, order.order_id)
        (old_input,) = events[0].workflow_execution_started_event_attributes.input.payloads
        assert old_input.metadata[META_FORMAT] == b"orders-envelope/1"
        assert not any(e.HasField("activity_task_scheduled_event_attributes") for e in events)
        assert orchestrator_stats.legacy == legacy_before
        # a reader's codec server not told to read old history refuses it too
        _code, out, err = await show_history(
            stack.settings.temporal_address,
            NAMESPACE,
            order.order_id,
            "--codec-endpoint",
            codec_server.url,
            "--codec-auth",
            f"Bearer {reader_vault_token(stack)}",
        )
        assert order.customer_id not in out + err
    finally:
        await secured.client.get_workflow_handle(order.order_id).terminate("test: legacy input")


async def test_rewrap_with_a_reader_token_names_the_rewrap_grant(
    stack: Stack, secured: Deployment, identities: Any, tmp_path: Path
) -> None:
    order = sample_order("rewrap-denied")
    assert (await run_order(secured, order, identities)).status == "completed"
    code, out, err = await show_history(stack.settings.temporal_address, NAMESPACE, order.order_id)
    assert code == 0, err
    exported = tmp_path / "history.json"
    exported.write_text(out)
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("orders-codec")),
        "rewrap",
        str(exported),
        "-o",
        str(tmp_path / "out.json"),
        env={
            **os.environ,
            "VAULT_ADDR": stack.settings.vault_addr,
            "VAULT_TOKEN": reader_vault_token(stack),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err_b = await proc.communicate()
    assert proc.returncode == 1
    message = err_b.decode()
    assert "update on transit/rewrap/orders-payload-" in message, message
    assert "payload-reader" not in message
    assert len(message.strip().splitlines()) == 1


class RawPoller:
    """A poller with no identity and no SDK worker: it polls ``orders-payment`` over
    gRPC and answers every task with ``RespondActivityTaskCompleted`` carrying what
    ``answer(activity_type, attempt_of_that_type, task)`` gives (``None``: no result
    field); ``task`` is the poll's answer (its ``input`` is the task's encrypted input)."""

    def __init__(self, client: Client, namespace: str, answer: Any) -> None:
        self.client = client
        self.namespace = namespace
        self.answer = answer
        self.seen: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        from temporalio.api.workflowservice.v1 import (
            PollActivityTaskQueueRequest,
            RespondActivityTaskCompletedRequest,
        )

        service = self.client.workflow_service
        while True:
            task = await service.poll_activity_task_queue(
                PollActivityTaskQueueRequest(
                    namespace=self.namespace,
                    task_queue=TaskQueue(name=payment.TASK_QUEUE),
                    identity="keyless-attacker",
                )
            )
            if not task.task_token:
                continue
            kind = task.activity_type.name
            self.seen[kind] = self.seen.get(kind, 0) + 1
            result = self.answer(kind, self.seen[kind], task)
            request = RespondActivityTaskCompletedRequest(
                namespace=self.namespace, task_token=task.task_token, identity="keyless-attacker"
            )
            if result is not None:
                request.result.CopyFrom(result)
            await service.respond_activity_task_completed(request)

    def __enter__(self) -> RawPoller:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()


GARBAGE = Payload(metadata={"encoding": b"binary/encrypted"}, data=b"\x00" * 40)


async def test_an_empty_or_garbage_payment_result_ends_compensated_not_wedged(
    stack: Stack, identities: Any, source: Any
) -> None:
    """Issue 20 item 3: a keyless poller answers process_payment with no result at all
    (no result field), then a garbage payload, then a plain one; refund_payment with no
    result. The order does not wedge: each answer is a refused attempt, the step fails
    as an infrastructure failure after REFUSED_ANSWER_LIMIT, the reservation is released
    and nothing is fulfilled."""
    plain_result = DataConverter.default.payload_converter.to_payloads(
        [payment.ProcessPaymentOutput("x", 0, "EUR", "forged")]
    )[0]
    answers = {1: None, 2: GARBAGE, 3: plain_result}

    def answer(kind: str, n: int, _task: Any) -> Payloads | None:
        if kind == payment.PROCESS_PAYMENT and answers.get(n) is not None:
            return Payloads(payloads=[answers[n]])
        return None

    order = sample_order("empty-result")
    async with deployment(
        stack, identities, source, ROGUE_NAMESPACE, "secured", overrides={"payment": None}
    ) as d:
        with RawPoller(d.client, ROGUE_NAMESPACE, answer) as poller:
            await submit_order(
                d.client, order, wait=False, transit=await identities.transit("client")
            )
            try:
                result, events = await _ended_compensated_without_shipping(
                    d, order, "not-encrypted"
                )
                assert result.compensation_problem == "RefundUnfinished", result
                assert poller.seen[payment.PROCESS_PAYMENT] == REFUSED_ANSWER_LIMIT
                results = [
                    e.activity_task_completed_event_attributes
                    for e in _completed(events, payment.PROCESS_PAYMENT)
                ]
                assert [a.HasField("result") for a in results] == [False, True, True]
            finally:
                await _terminate_if_running(d.client, order.order_id, "test: empty result")


async def _final_result(client: Client, workflow_id: str) -> OrderWorkflowResult:
    """The order's result, following the guard's resets (each terminates the run it
    replaces: a wait on that run ends there, the new run is the one to wait on)."""
    for _ in range(20):
        handle = client.get_workflow_handle(workflow_id, result_type=OrderWorkflowResult)
        try:
            return await asyncio.wait_for(handle.result(), timeout=60)
        except WorkflowFailureError as exc:
            if not isinstance(exc.cause, TerminatedError):
                raise
            await asyncio.sleep(0.2)
    raise AssertionError(f"{workflow_id} was reset over and over")


async def test_zero_or_two_payloads_as_a_payment_result_end_compensated(
    stack: Stack, identities: Any, source: Any
) -> None:
    """A keyless poller answers process_payment with a Payloads of zero payloads, then of
    two (and refund_payment with no result): the SDK's core fails the workflow task on
    each ("Not exactly one payload in activity result") before any Python code runs.
    The orchestrator's guard (orders_orchestrator.guard) resets the run to before the
    bad answer and tells the workflow (a signal under the orchestrator's key); the step
    runs again, and after REFUSED_ANSWER_LIMIT such answers fails and is compensated:
    the reservation is released, nothing is fulfilled."""

    def answer(kind: str, n: int, _task: Any) -> Payloads | None:
        if kind == payment.PROCESS_PAYMENT:
            return Payloads(payloads=[] if n % 2 else [GARBAGE, GARBAGE])
        return None

    order = sample_order("zero-payloads")
    async with deployment(
        stack, identities, source, ROGUE_NAMESPACE, "secured", overrides={"payment": None}
    ) as d:
        with RawPoller(d.client, ROGUE_NAMESPACE, answer) as poller:
            await submit_order(
                d.client, order, wait=False, transit=await identities.transit("client")
            )
            try:
                result = await _final_result(d.client, order.order_id)
                assert result.status == "failed", result
                assert result.reason_code == "StepFailed", result
                assert "zero or several payloads" in (result.reason or ""), result.reason
                assert inventory.RELEASE_INVENTORY in result.path, result.path
                assert poller.seen[payment.PROCESS_PAYMENT] == REFUSED_ANSWER_LIMIT
                runs = [
                    wf async for wf in d.client.list_workflows(f'WorkflowId="{order.order_id}"')
                ]
                assert len(runs) == REFUSED_ANSWER_LIMIT + 1, runs  # one reset per answer
                events = await _events(d.client, order.order_id)
                assert not _scheduled(events, fulfill.FULFILL_ORDER)
                assert _scheduled(events, inventory.RELEASE_INVENTORY)
            finally:
                await _terminate_if_running(d.client, order.order_id, "test: zero payloads")


async def test_a_task_input_echoed_as_its_result_is_refused(
    stack: Stack, identities: Any, source: Any
) -> None:
    """orders-envelope/3 binds the direction: a keyless poller answers process_payment
    with the task's own input (a genuine payload under the payment key, for this
    workflow and this activity type, but an input): refused as wrong-direction, the
    order ends compensated, nothing fulfilled. Under /2 it decoded (same key and
    workflow) and only the type conversion stopped it."""

    def answer(kind: str, _n: int, task: Any) -> Payloads | None:
        if kind == payment.PROCESS_PAYMENT:
            return Payloads(payloads=list(task.input.payloads))
        return None

    order = sample_order("echo")
    async with deployment(
        stack, identities, source, ROGUE_NAMESPACE, "secured", overrides={"payment": None}
    ) as d:
        with RawPoller(d.client, ROGUE_NAMESPACE, answer):
            await submit_order(
                d.client, order, wait=False, transit=await identities.transit("client")
            )
            try:
                _, events = await _ended_compensated_without_shipping(d, order, "wrong-direction")
                (echoed, *_) = _completed(events, payment.PROCESS_PAYMENT)
                meta = echoed.activity_task_completed_event_attributes.result.payloads[0].metadata
                assert meta[META_KEY_ID] == b"orders-payload-payment"
                assert meta[META_WORKFLOW_ID] == order.order_id.encode()
                assert meta["encryption-activity-type"] == payment.PROCESS_PAYMENT.encode()
                assert meta["encryption-direction"] == b"input"
            finally:
                await _terminate_if_running(d.client, order.order_id, "test: echoed input")


class ScriptedAttacker:
    """A keyless gRPC poller on orders-payment with a script per (order, activity type):
    each entry is ``("fail", type)`` (a non-retryable application failure of that type,
    in the clear, as anyone can write one), ``("none",)`` (completed, no result),
    ``("echo",)`` (the task's own input as its result) or ``("replay", name)`` (a task
    input captured earlier under ``name``). A task it has no script for is handed back:
    failed *retryable*, so Temporal retries it, maybe on the genuine worker; the workflow
    never sees that. ``delivered`` counts the scripted answers sent."""

    def __init__(self, client: Client, namespace: str, script: dict[tuple[str, str], list[Any]]):
        self.client = client
        self.namespace = namespace
        self.script = {k: list(v) for k, v in script.items()}
        self.captured: dict[str, Payloads] = {}
        self.delivered = 0
        self.total = sum(len(v) for v in script.values())
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        from temporalio.api.failure.v1 import ApplicationFailureInfo, Failure
        from temporalio.api.workflowservice.v1 import (
            PollActivityTaskQueueRequest,
            RespondActivityTaskCompletedRequest,
            RespondActivityTaskFailedRequest,
        )

        service = self.client.workflow_service
        ident = "keyless-attacker"
        while self.delivered < self.total:
            task = await service.poll_activity_task_queue(
                PollActivityTaskQueueRequest(
                    namespace=self.namespace,
                    task_queue=TaskQueue(name=payment.TASK_QUEUE),
                    identity=ident,
                )
            )
            if not task.task_token:
                continue
            key = (task.workflow_execution.workflow_id, task.activity_type.name)
            self.captured[f"{key[0]}/{key[1]}"] = task.input
            todo = self.script.get(key) or []
            if not todo:  # hand it back
                await service.respond_activity_task_failed(
                    RespondActivityTaskFailedRequest(
                        namespace=self.namespace,
                        task_token=task.task_token,
                        identity=ident,
                        failure=Failure(
                            message="handed back",
                            application_failure_info=ApplicationFailureInfo(type="HandedBack"),
                        ),
                    )
                )
                continue
            step = todo.pop(0)
            self.delivered += 1
            if step[0] == "fail":
                await service.respond_activity_task_failed(
                    RespondActivityTaskFailedRequest(
                        namespace=self.namespace,
                        task_token=task.task_token,
                        identity=ident,
                        failure=Failure(
                            message=f"{step[1]} (forged)",
                            application_failure_info=ApplicationFailureInfo(
                                type=step[1], non_retryable=True
                            ),
                        ),
                    )
                )
                continue
            request = RespondActivityTaskCompletedRequest(
                namespace=self.namespace, task_token=task.task_token, identity=ident
            )
            if step[0] == "echo":
                request.result.CopyFrom(task.input)
            elif step[0] == "replay":
                request.result.CopyFrom(self.captured[step[1]])
            await service.respond_activity_task_completed(request)

    async def __aenter__(self) -> ScriptedAttacker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def finished(self, within: float = 90) -> None:
        assert self._task is not None
        await asyncio.wait_for(self._task, within)

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def test_a_keyless_attacker_changes_no_order_outcome(
    stack: Stack, identities: Any, source: Any
) -> None:
    """Issue 20, Must show: a keyless poller on orders-payment forges non-retryable
    PaymentDeclined and PaymentRefundRefused failures, answers with no result, echoes an
    input, replays another order's payload. Then the genuine payment worker runs. Every
    order ends as it would without the attacker, within the retry policy: a good card
    completes (charged, shipped), an undeliverable order is refunded (no refund left to
    a person), and an order the attacker answered past REFUSED_ANSWER_LIMIT fails as
    StepFailed (never PaymentDeclined), its refund not believed refused; nothing ships
    without an approved charge."""
    good = sample_order("atk-good")
    lost = dataclasses.replace(
        sample_order("atk-lost"), shipping_address="1 UNDELIVERABLE Road, Nowhere"
    )
    flooded = sample_order("atk-flood")
    pay, refund = payment.PROCESS_PAYMENT, payment.REFUND_PAYMENT
    script = {
        (good.order_id, pay): [("fail", "PaymentDeclined"), ("none",)],
        (lost.order_id, pay): [("fail", "PaymentDeclined"), ("echo",)],
        (flooded.order_id, pay): [
            ("fail", "PaymentDeclined"),
            ("replay", f"{good.order_id}/{pay}"),  # another order's payload
            ("fail", "PaymentDeclined"),
        ],
        (flooded.order_id, refund): [("fail", payment.REFUND_REFUSED), ("echo",)],
    }
    transit = await identities.transit("client")
    async with deployment(
        stack, identities, source, ROGUE_NAMESPACE, "secured", overrides={"payment": None}
    ) as d:
        async with ScriptedAttacker(d.client, ROGUE_NAMESPACE, script) as attacker:
            for order in (good, lost, flooded):
                await submit_order(d.client, order, wait=False, transit=transit)
            await attacker.finished()
        # the attacker is gone; the genuine payment worker polls now
        activities = payment_worker.build_activities(
            source,
            await identities.transit("payment"),
            HttpCardProvider(stack.settings.provider_url),
        )
        worker = Worker(d.clients["payment"], task_queue=payment.TASK_QUEUE, activities=activities)
        try:
            async with worker:
                results = {
                    o.order_id: await asyncio.wait_for(
                        d.client.get_workflow_handle(
                            o.order_id, result_type=OrderWorkflowResult
                        ).result(),
                        timeout=90,
                    )
                    for o in (good, lost, flooded)
                }
        finally:
            for o in (good, lost, flooded):
                await _terminate_if_running(d.client, o.order_id, "test: attacker")
    assert attacker.delivered == attacker.total == 9
    ok = results[good.order_id]
    assert ok.status == "completed" and ok.tracking_id, ok
    assert fulfill.FULFILL_ORDER in ok.path
    bad_address = results[lost.order_id]
    assert bad_address.status == "failed" and bad_address.reason_code == "FulfillmentFailed"
    assert bad_address.compensation_problem is None, bad_address  # refunded for real
    assert payment.REFUND_PAYMENT in bad_address.path
    swamped = results[flooded.order_id]
    assert swamped.status == "failed" and swamped.reason_code == "StepFailed", swamped
    assert "failure without proof of its service" in (swamped.reason or ""), swamped.reason
    assert swamped.compensation_problem is None, swamped  # the forged refusal not believed
    assert fulfill.FULFILL_ORDER not in swamped.path
    assert inventory.RELEASE_INVENTORY in swamped.path
    for result in results.values():
        assert result.reason_code != "PaymentDeclined", result
