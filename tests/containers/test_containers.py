"""The images, built and run for real: the six workers and the codec server as containers
of their runtime images, under exactly the runtime contract their rendered chart
declares, on host networking against the local stack; orders complete through them.

The images come from ``orders-images --keep``, started in the background when the
session began (orders_ops.testing_images); these tests run last and wait for it.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import hvac
import pytest
import support  # tests/ is on pytest's pythonpath
from google.protobuf import json_format

from orders_ops import issuer
from orders_ops.containers import ContainerFleet
from orders_ops.dockerd import DockerError, PrivateDocker
from orders_ops.identities import local_session
from orders_ops.images import IMAGES
from orders_ops.stack import Stack
from orders_shared.client import connect, submit_order
from orders_shared.codec import VaultTransit
from orders_shared.order_input import parse_order

pytestmark = [pytest.mark.stack, pytest.mark.timeout(3000)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
SIZE_TARGET_MB = 250
# what the image of one service may hold of this repository and of the tool chain
OURS = {"orders-shared", *(s.package for s in IMAGES), "orders-ops"}
TOOLS = ("pip", "uv", "pytest", "setuptools")
INSPECT_IMAGE = """
import importlib.metadata as m, importlib.util as u, json, shutil
print(json.dumps({
    "dists": sorted({d.metadata["Name"].lower() for d in m.distributions()}),
    "modules": sorted(n for n in ("orders_ops", "pip", "uv", "pytest") if u.find_spec(n)),
    "commands": sorted(c for c in ("pip", "pip3", "uv", "pytest") if shutil.which(c)),
}))
"""


@pytest.fixture(scope="module")
def fleet(image_engine: PrivateDocker, stack: Stack) -> Iterator[ContainerFleet]:
    """The seven containers, ready. No local worker may run: the orders below must be
    done by the containers alone."""
    local = [w.name for w in stack.workers if w.pid() is not None]
    assert not local, f"local worker processes run ({local}): `orders-stack down` them first"
    fleet = ContainerFleet(image_engine, stack.settings, "orders-test")
    try:
        fleet.up(IMAGES)
        yield fleet
    except DockerError as exc:
        pytest.fail(str(exc))
    finally:
        fleet.down()


def _env(pairs: list[str] | None) -> dict[str, str]:
    """``docker inspect``'s ``Config.Env`` (``NAME=value`` strings) as a dict."""
    return dict(pair.split("=", 1) for pair in pairs or [])


def _image_env(engine: PrivateDocker, image: str) -> dict[str, str]:
    """The ``ENV`` the image itself declares (``docker image inspect``)."""
    (info,) = json.loads(engine.docker("image", "inspect", image).stdout)
    return _env(info["Config"]["Env"])


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (ln.partition(":") for ln in lines)}


def test_each_container_runs_under_its_charts_contract(
    image_engine: PrivateDocker, fleet: ContainerFleet
) -> None:
    for service, r in fleet.running.items():
        c = r.contract
        (info,) = json.loads(image_engine.docker("inspect", r.name).stdout)
        host = info["HostConfig"]
        assert (c.user, c.group, c.read_only, c.dropped, c.no_new_privileges) == (
            10001,
            10001,
            True,
            ("ALL",),
            True,
        ), service
        assert info["Config"]["User"] == "10001:10001"
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in (host["SecurityOpt"] or []), service
        assert host["NetworkMode"] == "host"
        assert sorted(host["Tmpfs"]) == sorted(path for path, _ in c.tmpfs) == ["/tmp"]
        mounts = [(m["Destination"], m["RW"]) for m in info["Mounts"]]
        # the environment the engine gave the running container: exactly the image's own
        # ENV with what the fleet passed over it, nothing more (docker inspect, not the
        # fleet's own record)
        env = _env(info["Config"]["Env"])
        assert env == _image_env(image_engine, r.spec.image) | r.env, service
        if service == "codec-server":  # decrypts with its callers' tokens: no identity
            assert (c.token_mount, mounts) == (None, [])
        else:
            assert mounts == [("/var/run/secrets/vault", False)]
            assert env["VAULT_TOKEN_FILE"] == f"{c.token_mount}/{c.token_file}"
        # every variable the chart sets is set in the container (addresses pointed at the
        # local stack)
        assert set(c.env) <= set(env), (service, sorted(set(c.env) - set(env)))
        # and the kernel agrees: the process runs as 10001, with no capability, and can
        # never gain privileges
        status = _status(fleet.pid(service))
        assert status["Uid"].split() == ["10001"] * 4, service
        assert status["Gid"].split() == ["10001"] * 4, service
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, service
        assert status["NoNewPrivs"] == "1", service


def test_each_image_holds_only_shared_and_its_own_package(image_engine: PrivateDocker) -> None:
    for spec in IMAGES:
        out = image_engine.docker(
            "run", "--rm", "--network", "none", "--entrypoint", "/opt/venv/bin/python",
            spec.image, "-c", INSPECT_IMAGE,
        ).stdout  # fmt: skip
        found = json.loads(out)
        assert sorted(set(found["dists"]) & OURS) == sorted({"orders-shared", spec.package})
        assert not set(found["dists"]) & set(TOOLS), spec.image
        assert (found["modules"], found["commands"]) == ([], []), spec.image


def test_images_are_within_the_size_target(image_engine: PrivateDocker) -> None:
    for spec in IMAGES:
        size = int(
            image_engine.docker("image", "inspect", "--format", "{{.Size}}", spec.image).stdout
        )
        assert size / 1e6 <= SIZE_TARGET_MB, f"{spec.image}: {size / 1e6:.0f} MB"


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.admin_dsn("orders"))
    yield conn
    await conn.close()


def _order(sku: str, **fields: Any) -> dict[str, Any]:
    return {
        "order_id": support.unique("ctr").lower(),
        "customer_id": f"cust-{uuid.uuid4().hex[:8]}",
        "customer_name": "Grace Hopper",
        "email": "grace@example.com",
        "shipping_address": "1 Compiler Lane, Arlington",
        "payment_token": "tok_visa_4242",
        "lines": [{"sku": sku, "quantity": 1}],
        **fields,
    }


async def test_orders_complete_through_the_containers_and_the_codec_server_decodes(
    fleet: ContainerFleet, stack: Stack, admin: asyncpg.Connection
) -> None:
    session = await local_session(stack.settings, "client")
    try:
        transit = VaultTransit(session)
        client = await connect(stack.settings.temporal_address, transit)
        sku = await support.create_product(admin, price_cents=1250, on_hand=5, prefix="CTR")
        ok, declined = _order(sku), _order(sku, payment_token="tok_decline_card")
        results = []
        for data in (ok, declined):
            submitted = await submit_order(client, parse_order(data), wait=True, transit=transit)
            assert submitted.result is not None
            results.append(submitted.result)
        assert (results[0].status, results[0].tracking_id is not None) == ("completed", True)
        assert (results[1].status, results[1].reason_code) == ("failed", "PaymentDeclined")
        # the declined order's reservation was released (compensation, by the inventory container)
        assert await admin.fetchval("SELECT on_hand FROM app.inventory WHERE sku=$1", sku) == 4
        history = await client.get_workflow_handle(ok["order_id"]).fetch_history()
    finally:
        await session.close()
    started = history.events[0].workflow_execution_started_event_attributes
    payload = json_format.MessageToDict(started.input.payloads[0])
    stored = base64.b64decode(payload["data"])
    assert ok["customer_id"].encode() not in stored  # Temporal holds ciphertext only

    reader = issuer.mint_user(stack.settings, "test-reader", ttl=300)
    token = hvac.Client(url=stack.settings.vault_addr).auth.jwt.jwt_login(
        "payload-reader", reader, path="oidc-readers"
    )["auth"]["client_token"]
    headers = {"Authorization": f"Bearer {token}", "X-Namespace": "default"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            fleet.running["codec-server"].url + "/decode",
            json={"payloads": [payload]},
            headers=headers,
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        decoded = (await resp.json())["payloads"][0]
    assert ok["customer_id"].encode() in base64.b64decode(decoded["data"])


def test_report_image_size_and_time_to_ready(
    image_engine: PrivateDocker, fleet: ContainerFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """Figures, not assertions: image, size, `docker run` to the readiness probe's 200."""
    rows = []
    for r in fleet.running.values():
        size = int(
            image_engine.docker("image", "inspect", "--format", "{{.Size}}", r.spec.image).stdout
        )
        rows.append(
            {
                "image": r.spec.image,
                "size_mb": round(size / 1e6),
                "ready_s": round(r.ready_seconds, 1),
            }
        )
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "containers.json").write_text(json.dumps(rows, indent=2) + "\n")
    with capsys.disabled():
        print(f"\n{'image':<28} {'size MB':>8} {'run to /readyz s':>17}")
        for row in rows:
            print(f"{row['image']:<28} {row['size_mb']:>8} {row['ready_s']:>17}")
    assert len(rows) == len(IMAGES)
