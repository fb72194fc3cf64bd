"""``orders-codec rewrap`` on an exported history, without Vault (``InMemoryTransit``).

The real CLI against OpenBao runs in tests/test_payload_protection.py
(rotation, and a token that may not rewrap).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload

from orders_codec_server.maintenance import _rewrap, summary
from orders_shared.codec import (
    META_WRAPPED_KEY,
    InMemoryTransit,
    PayloadAccessDenied,
    RewrapReport,
    TransitEnvelopeCodec,
    parse_wrapped_key,
    payload_key,
)


async def _export(tmp_path: Path, transit: InMemoryTransit) -> Path:
    codec = TransitEnvelopeCodec(transit)
    (old,) = await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=b"1")])
    transit.rotate(payload_key("orchestrator"))
    codec.forget_keys()
    (new,) = await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=b"2")])
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b"3")
    history = {
        "events": [
            {"input": {"payloads": [json_format.MessageToDict(p) for p in (old, new, plain)]}}
        ]
    }
    path = tmp_path / "history.json"
    path.write_text(json.dumps(history))
    return path


def _versions(path: Path) -> list[int]:
    payloads = json.loads(path.read_text())["events"][0]["input"]["payloads"][:2]
    return [
        parse_wrapped_key(json_format.ParseDict(p, Payload()).metadata[META_WRAPPED_KEY])[0]
        for p in payloads
    ]


async def test_report_tells_rewrapped_from_already_latest(tmp_path: Path) -> None:
    transit = InMemoryTransit()
    source = await _export(tmp_path, transit)
    assert _versions(source) == [1, 2]
    target = tmp_path / "out.json"
    report = _run(source, target, transit)
    assert summary(report) == (
        "orders-codec: 3 payloads: 1 rewrapped, 1 already on the latest key version, "
        "1 not envelopes"
    )
    assert _versions(target) == [2, 2]
    # the one already on the latest version is kept byte for byte
    out = json.loads(target.read_text())["events"][0]["input"]["payloads"][1]
    assert out == json.loads(source.read_text())["events"][0]["input"]["payloads"][1]
    again = _run(target, target, transit)
    assert (again.rewrapped, again.unchanged, again.skipped) == (0, 2, 1)


async def test_denied_rewrap_names_what_rewrap_needs(tmp_path: Path) -> None:
    transit = InMemoryTransit()
    source = await _export(tmp_path, transit)
    transit.denied.add(("rewrap", payload_key("orchestrator")))
    with pytest.raises(PayloadAccessDenied) as info:
        _run(source, tmp_path / "out.json", transit)
    assert "update on transit/rewrap/orders-payload-orchestrator" in str(info.value)
    assert "payload-reader" not in str(info.value)
    assert not (tmp_path / "out.json").exists()  # nothing half-written


def _run(source: Path, target: Path, transit: InMemoryTransit) -> RewrapReport:
    import threading

    # _rewrap runs its own event loop (asyncio.run), as the CLI does: give it a thread
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["report"] = _rewrap(source, target, transit)
        except BaseException as exc:  # re-raised in the test's thread
            result["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    report = result["report"]
    assert isinstance(report, RewrapReport)
    return report
