"""Per-service payload keys, workflow binding, old-format history, bounded decompression
and the rewrap report, without Vault (``InMemoryTransit``).

The same claims against the real OpenBao and Temporal are in
tests/test_payload_protection.py.
"""

from __future__ import annotations

import os
import tracemalloc
import zlib
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    ActivitySerializationContext,
    WorkflowSerializationContext,
)

from orders_shared.codec import (
    LEGACY_RUNBOOK,
    META_FORMAT,
    META_KEY_ID,
    META_WORKFLOW_ID,
    META_WRAPPED_KEY,
    PAYLOAD_KEY,
    InMemoryTransit,
    PayloadAccessDenied,
    PayloadContextError,
    PayloadDecodeError,
    PayloadTooLarge,
    TransitEnvelopeCodec,
    bounded_inflate,
    codec_stats,
    data_converter,
    legacy_reading_enabled,
    payload_key,
    rewrap_history_json,
)

NS = "orders"


def plain(data: bytes = b'{"status": "approved"}') -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=data)


def activity(
    queue: str, workflow_id: str = "ord-1", kind: str = "x"
) -> ActivitySerializationContext:
    return ActivitySerializationContext(
        namespace=NS,
        activity_id="1",
        activity_type=kind,
        activity_task_queue=queue,
        workflow_id=workflow_id,
        workflow_type="OrderWorkflow",
        is_local=False,
    )


def workflow(workflow_id: str = "ord-1") -> WorkflowSerializationContext:
    return WorkflowSerializationContext(namespace=NS, workflow_id=workflow_id)


def _aad(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(2, "big") + p for p in parts)


async def hand_made_envelope(
    transit: InMemoryTransit,
    inner: bytes,
    *,
    fmt: bytes,
    key: str,
    compression: bytes = b"none",
    workflow_id: bytes | None = None,
) -> Payload:
    """An envelope built here, not by the codec: the old format exactly as version 1 wrote
    it (no workflow id), or a version 2 one with content the codec would never write."""
    data_key, wrapped = await transit.datakey(key)
    parts = [fmt, key.encode(), compression]
    metadata = {
        "encoding": b"binary/encrypted",
        "encryption-key-id": key.encode(),
        "encryption-format": fmt,
        "encryption-wrapped-key": wrapped.encode(),
        "encryption-compression": compression,
    }
    if workflow_id is not None:
        parts.append(workflow_id)
        metadata["encryption-workflow-id"] = workflow_id
    nonce = os.urandom(12)
    sealed = AESGCM(data_key).encrypt(nonce, inner, _aad(*parts))
    return Payload(metadata=metadata, data=nonce + sealed)


# --------------------------------------------------------------------------- which key


async def test_each_context_encrypts_under_its_service_key() -> None:
    codec = TransitEnvelopeCodec(InMemoryTransit())
    (pay,) = await codec.with_context(activity("orders-payment")).encode([plain()])
    (wf,) = await codec.with_context(workflow()).encode([plain()])
    (bare,) = await codec.encode([plain()])
    assert pay.metadata[META_KEY_ID] == b"orders-payload-payment"
    assert pay.metadata[META_WORKFLOW_ID] == b"ord-1"
    assert wf.metadata[META_KEY_ID] == b"orders-payload-orchestrator"
    assert wf.metadata[META_WORKFLOW_ID] == b"ord-1"
    assert bare.metadata[META_KEY_ID] == b"orders-payload-orchestrator"
    assert bare.metadata[META_WORKFLOW_ID] == b""
    # decode needs no context: the envelope names its key (the codec server's case)
    assert await TransitEnvelopeCodec(codec.transit).decode([pay, wf, bare]) == [plain()] * 3


async def test_a_result_under_another_service_key_is_refused_before_vault() -> None:
    """notify forges a process_payment result under the only key it can use, its own."""
    transit = InMemoryTransit()
    notify = TransitEnvelopeCodec(transit).with_context(activity("orders-payment"))
    notify.activity_keys = {"orders-payment": payload_key("notify")}  # its own key
    (forged,) = await notify.encode([plain()])
    orchestrator = TransitEnvelopeCodec(transit)
    calls = transit.calls
    with pytest.raises(PayloadContextError) as info:
        await orchestrator.with_context(activity("orders-payment")).decode([forged])
    assert info.value.cause == "wrong-key"
    assert "orders-payload-payment" in str(info.value)
    assert transit.calls == calls  # refused on the metadata, Vault never asked


async def test_a_payload_moved_to_another_workflow_is_refused() -> None:
    transit = InMemoryTransit()
    codec = TransitEnvelopeCodec(transit)
    (result,) = await codec.with_context(activity("orders-payment", "ord-1")).encode([plain()])
    # read where a result is read: by the workflow's side
    other = TransitEnvelopeCodec(transit, workflow_side=True).with_context(
        activity("orders-payment", "ord-2")
    )
    with pytest.raises(PayloadContextError) as info:
        await other.decode([result])
    assert info.value.cause == "wrong-workflow"
    assert "'ord-1'" in str(info.value) and "'ord-2'" in str(info.value)
    # ...and relabelling it fails the tag: the workflow id is associated data
    result.metadata[META_WORKFLOW_ID] = b"ord-2"
    with pytest.raises(PayloadDecodeError) as tag:
        await other.decode([result])
    assert tag.value.cause == "authentication-failed"
    (wf_input,) = await codec.with_context(workflow("ord-1")).encode([plain()])
    with pytest.raises(PayloadContextError, match="wrong-workflow"):
        await codec.with_context(workflow("ord-3")).decode([wf_input])


async def test_an_activity_payload_is_bound_to_its_activity_type_and_direction() -> None:
    """orders-envelope/3: one activity's payload is not another's (same key, same
    workflow), and an input is not a result; relabelling either fails the tag. /2
    payloads (written before the upgrade) still decode where they did."""
    transit = InMemoryTransit()
    orchestrator = TransitEnvelopeCodec(transit, workflow_side=True)
    payment = TransitEnvelopeCodec(transit)
    pay = activity("orders-payment", "ord-1", "process_payment")
    refund = activity("orders-payment", "ord-1", "refund_payment")
    (refund_result,) = await payment.with_context(refund).encode([plain()])
    assert refund_result.metadata[META_FORMAT] == b"orders-envelope/3"
    assert refund_result.metadata["encryption-activity-type"] == b"refund_payment"
    assert refund_result.metadata["encryption-direction"] == b"result"
    assert await orchestrator.with_context(refund).decode([refund_result]) == [plain()]
    with pytest.raises(PayloadContextError) as info:
        await orchestrator.with_context(pay).decode([refund_result])
    assert info.value.cause == "wrong-activity"
    assert "'refund_payment'" in str(info.value) and "'process_payment'" in str(info.value)
    refund_result.metadata["encryption-activity-type"] = b"process_payment"
    with pytest.raises(PayloadDecodeError) as tag:
        await orchestrator.with_context(pay).decode([refund_result])
    assert tag.value.cause == "authentication-failed"
    # the orchestrator's own input to process_payment offered back as its result
    (pay_input,) = await orchestrator.with_context(pay).encode([plain()])
    assert pay_input.metadata["encryption-direction"] == b"input"
    assert await payment.with_context(pay).decode([pay_input]) == [plain()]
    with pytest.raises(PayloadContextError) as info:
        await orchestrator.with_context(pay).decode([pay_input])
    assert info.value.cause == "wrong-direction"
    pay_input.metadata["encryption-direction"] = b"result"
    with pytest.raises(PayloadDecodeError) as tag:
        await orchestrator.with_context(pay).decode([pay_input])
    assert tag.value.cause == "authentication-failed"
    # a /2 payload of this workflow (in flight across the upgrade) still decodes
    (inner,) = [plain().SerializeToString()]
    v2 = await hand_made_envelope(
        transit,
        inner,
        fmt=b"orders-envelope/2",
        key=payload_key("payment"),
        workflow_id=b"ord-1",
    )
    assert await orchestrator.with_context(pay).decode([v2]) == [plain()]


async def test_unbound_payloads_are_refused_inside_a_workflow() -> None:
    codec = TransitEnvelopeCodec(InMemoryTransit())
    (bare,) = await codec.encode([plain()])
    with pytest.raises(PayloadContextError, match="wrong-workflow"):
        await codec.with_context(workflow("ord-1")).decode([bare])


async def test_unknown_task_queue_fails_closed() -> None:
    codec = TransitEnvelopeCodec(InMemoryTransit())
    with pytest.raises(PayloadContextError, match="unknown-task-queue"):
        await codec.with_context(activity("somebody-elses-queue")).encode([plain()])


async def test_data_key_cache_is_per_key_and_shared_by_context_views() -> None:
    transit = InMemoryTransit()
    orchestrator = TransitEnvelopeCodec(transit, workflow_side=True)
    payment = TransitEnvelopeCodec(transit)
    queues = ("orders-validate", "orders-payment", "orders-notify")

    async def one_workflow(workflow_id: str) -> None:
        (wf_in,) = await orchestrator.with_context(workflow(workflow_id)).encode([plain()])
        await orchestrator.with_context(workflow(workflow_id)).decode([wf_in])
        for queue in queues:
            ctx = activity(queue, workflow_id)
            (arg,) = await orchestrator.with_context(ctx).encode([plain()])
            if queue == "orders-payment":
                await payment.with_context(ctx).decode([arg])
                (res,) = await payment.with_context(ctx).encode([plain()])
                await orchestrator.with_context(ctx).decode([res])

    await one_workflow("warm-up")
    # one datakey per key used (4 by the orchestrator, 1 by payment), one unwrap each way
    assert (orchestrator.stats.datakeys, orchestrator.stats.unwraps) == (4, 1)
    assert (payment.stats.datakeys, payment.stats.unwraps) == (1, 1)
    orchestrator.stats.reset()
    payment.stats.reset()
    for i in range(50):
        await one_workflow(f"ord-{i}")
    assert orchestrator.stats.vault_calls == 0 and payment.stats.vault_calls == 0
    assert orchestrator.stats.encoded == 50 * 4


# --------------------------------------------------------------------------- old history


async def test_old_single_key_history_decodes_only_for_readers_when_told() -> None:
    """orders-envelope/1 is bound to no workflow: the codec server (no context, started
    with accept_legacy) reads it; a worker (any context) refuses it, naming the runbook."""
    transit = InMemoryTransit()
    inner = plain(b"written before per-service keys").SerializeToString()
    old = await hand_made_envelope(transit, inner, fmt=b"orders-envelope/1", key=PAYLOAD_KEY)
    reader = TransitEnvelopeCodec(transit, accept_legacy=True)
    assert (await reader.decode([old]))[0].data == b"written before per-service keys"
    assert reader.stats.legacy == 1
    # inside a context, never: not even a codec built with accept_legacy
    for view in (
        reader.with_context(activity("orders-payment")),
        TransitEnvelopeCodec(transit).with_context(activity("orders-payment")),
        TransitEnvelopeCodec(transit).with_context(workflow("ord-1")),
    ):
        with pytest.raises(PayloadDecodeError, match="legacy-refused") as refused:
            await view.decode([old])
        assert LEGACY_RUNBOOK in str(refused.value)
    assert reader.stats.legacy == 1
    # the old format is bound to the old key only
    sealed_key_payload = await hand_made_envelope(
        transit, inner, fmt=b"orders-envelope/1", key=payload_key("payment")
    )
    with pytest.raises(PayloadDecodeError, match="unknown-key"):
        await reader.decode([sealed_key_payload])


async def test_old_history_is_read_only_when_told(monkeypatch: pytest.MonkeyPatch) -> None:
    transit = InMemoryTransit()
    old = await hand_made_envelope(
        transit, plain().SerializeToString(), fmt=b"orders-envelope/1", key=PAYLOAD_KEY
    )
    monkeypatch.setenv("ORDERS_CODEC_ACCEPT_LEGACY", "true")
    codec = TransitEnvelopeCodec(transit)  # the variable alone turns nothing on in a codec
    assert PAYLOAD_KEY not in codec.decrypt_keys
    with pytest.raises(PayloadDecodeError, match="legacy-refused") as refused:
        await codec.decode([old])
    assert LEGACY_RUNBOOK in str(refused.value)
    assert legacy_reading_enabled() is True  # what the codec server passes
    monkeypatch.delenv("ORDERS_CODEC_ACCEPT_LEGACY")
    assert legacy_reading_enabled() is False  # default: not told
    monkeypatch.setenv("ORDERS_CODEC_ACCEPT_LEGACY", "maybe")
    with pytest.raises(ValueError, match="ORDERS_CODEC_ACCEPT_LEGACY"):
        legacy_reading_enabled()


def _bomb(size: int) -> bytes:
    """zlib stream of a serialised Payload whose data is ``size`` zero bytes, built in
    1 MiB steps (never the whole plaintext in memory)."""
    header = b"\x12"  # field 2 (data), length-delimited
    n = size
    while n >= 0x80:
        header += bytes([(n & 0x7F) | 0x80])
        n >>= 7
    header += bytes([n])
    packer = zlib.compressobj(9)
    out = [packer.compress(header)]
    chunk = bytes(1 << 20)
    for _ in range(size >> 20):
        out.append(packer.compress(chunk))
    out.append(packer.flush())
    return b"".join(out)


async def test_a_decompression_bomb_is_refused_with_flat_memory() -> None:
    transit = InMemoryTransit()
    bomb = _bomb(300 << 20)
    assert len(bomb) < 400_000  # about 300 KB that would inflate to 300 MB
    payload = await hand_made_envelope(
        transit,
        bomb,
        fmt=b"orders-envelope/2",
        key=payload_key("orchestrator"),
        compression=b"zlib",
        workflow_id=b"",
    )
    codec = TransitEnvelopeCodec(transit)
    assert codec.max_decompressed == 4 << 20
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge) as info:
            await codec.decode([payload])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.cause == "too_large"
    assert isinstance(info.value, PayloadDecodeError)
    assert "ORDERS_CODEC_MAX_DECOMPRESSED" in str(info.value)
    assert peak < 16 << 20  # the bound (4 MiB) and the ciphertext, not 300 MB


async def test_decompression_bound_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    transit = InMemoryTransit()
    writer = TransitEnvelopeCodec(transit, compress_over=0)
    (encoded,) = await writer.encode([plain(b"z" * 100_000)])
    assert encoded.metadata["encryption-compression"] == b"zlib"
    assert (await TransitEnvelopeCodec(transit).decode([encoded]))[0].data == b"z" * 100_000
    monkeypatch.setenv("ORDERS_CODEC_MAX_DECOMPRESSED", "50000")
    with pytest.raises(PayloadTooLarge):
        await TransitEnvelopeCodec(transit).decode([encoded])
    with pytest.raises(PayloadTooLarge):
        await TransitEnvelopeCodec(transit, max_decompressed=1000).decode([encoded])
    monkeypatch.setenv("ORDERS_CODEC_MAX_DECOMPRESSED", "lots")
    with pytest.raises(ValueError, match="ORDERS_CODEC_MAX_DECOMPRESSED"):
        TransitEnvelopeCodec(transit)


def test_bounded_inflate_edges() -> None:
    data = zlib.compress(b"a" * 1000)
    assert bounded_inflate(data, 1000) == b"a" * 1000
    with pytest.raises(PayloadTooLarge):
        bounded_inflate(data, 999)
    with pytest.raises(PayloadDecodeError, match="truncated"):
        bounded_inflate(data[:-3], 5000)
    with pytest.raises(PayloadDecodeError, match="trailing"):
        bounded_inflate(data + b"junk", 5000)
    with pytest.raises(PayloadDecodeError, match="corrupt"):
        bounded_inflate(b"not zlib at all", 5000)


# --------------------------------------------------------------------------- rewrap report


def _history(payloads: list[Payload]) -> dict[str, object]:
    return {"events": [{"input": {"payloads": [json_format.MessageToDict(p) for p in payloads]}}]}


async def test_rewrap_report_counts_payloads_already_on_the_latest_version() -> None:
    transit = InMemoryTransit()
    codec = TransitEnvelopeCodec(transit)
    (old,) = await codec.with_context(activity("orders-payment")).encode([plain(b"v1")])
    transit.rotate(payload_key("payment"))
    codec.forget_keys()
    (new,) = await codec.with_context(activity("orders-payment")).encode([plain(b"v2")])
    history = _history([old, new])
    before = json_format.MessageToDict(new)["metadata"][META_WRAPPED_KEY]
    report = await rewrap_history_json(history, transit)
    assert (report.payloads, report.rewrapped, report.unchanged, report.skipped) == (2, 1, 1, 0)
    events = history["events"]
    assert isinstance(events, list)
    assert events[0]["input"]["payloads"][1]["metadata"][META_WRAPPED_KEY] == before
    again = await rewrap_history_json(history, transit)
    assert (again.rewrapped, again.unchanged) == (0, 2)


async def test_rewrap_denied_names_the_rewrap_path() -> None:
    transit = InMemoryTransit()
    (p,) = (
        await TransitEnvelopeCodec(transit)
        .with_context(activity("orders-notify"))
        .encode([plain()])
    )
    transit.denied.add(("rewrap", payload_key("notify")))
    with pytest.raises(PayloadAccessDenied) as info:
        await rewrap_history_json(_history([p]), transit)
    assert "transit/rewrap/orders-payload-notify" in str(info.value)
    assert "payload-reader" not in str(info.value)


# --------------------------------------------------------------------------- workflow side


async def test_workflow_side_turns_a_refused_activity_answer_into_a_refused_result() -> None:
    """On the orchestrator's converter an activity payload that is not its service's
    becomes a RefusedResult (the workflow runs the step again) instead of an error that
    fails the workflow task forever; workers and workflow payloads still raise."""
    from dataclasses import dataclass

    from orders_shared.refused import UNCONVERTIBLE, RefusedResult

    @dataclass
    class Out:
        order_id: str

    transit = InMemoryTransit()
    side = data_converter(transit, workflow_side=True)
    worker = data_converter(transit)
    ctx = activity("orders-payment", "wf-1", "process_payment")
    wrong = activity("orders-notify", "wf-1", "notify_customer")
    for bad in (
        Payload(metadata={"encoding": b"json/plain"}, data=b'{"order_id": "x"}'),  # plain
        (await worker.with_context(wrong).encode([Out("x")]))[0],  # another service's key
        Payload(),  # nothing at all
    ):
        (value,) = await side.with_context(ctx).decode([bad], [Out])
        assert isinstance(value, RefusedResult), value
        assert value.cause in ("not-encrypted", "wrong-key", UNCONVERTIBLE), value
        with pytest.raises(PayloadDecodeError):  # an activity worker keeps raising
            await worker.with_context(ctx).decode([bad], [Out])
    # the service's own result of the right type decodes as itself
    (good,) = await worker.with_context(ctx).encode([Out("x")])
    assert await side.with_context(ctx).decode([good], [Out]) == [Out("x")]
    # a payload of the right key but not the result type is refused too
    (other,) = await worker.with_context(ctx).encode([{"unexpected": 1}])
    (value,) = await side.with_context(ctx).decode([other], [Out])
    assert isinstance(value, RefusedResult) and value.cause == UNCONVERTIBLE
    # the workflow's own payloads are not softened: its input must decode or fail loudly
    with pytest.raises(PayloadDecodeError):
        await side.with_context(workflow("wf-1")).decode(
            [Payload(metadata={"encoding": b"json/plain"}, data=b"{}")]
        )
    stats = codec_stats(side)
    assert stats is not None and stats.refused == 3


async def test_only_a_failure_whose_type_its_service_encrypted_is_acted_on() -> None:
    """The workers' failure converter writes type and non_retryable into the encrypted
    attributes; the workflow side acts on an activity failure only when they match the
    clear fields. A keyless forger (clear PaymentDeclined, no or plain attributes) or a
    relabelled genuine failure becomes a retryable UnauthenticatedOutcome."""
    from temporalio.api.failure.v1 import Failure
    from temporalio.exceptions import ApplicationError

    from orders_shared.outcomes import UNAUTHENTICATED_OUTCOME

    transit = InMemoryTransit()

    async def encode(converter: Any, ctx: Any, exc: BaseException) -> Failure:
        failure = Failure()
        await converter.with_context(ctx).encode_failure(exc, failure)
        return failure

    worker = data_converter(transit)
    side = data_converter(transit, workflow_side=True)
    pay = activity("orders-payment", "ord-1", "process_payment")
    declined = ApplicationError("card declined", type="PaymentDeclined", non_retryable=True)
    genuine = await encode(worker, pay, declined)
    assert genuine.application_failure_info.type == "PaymentDeclined"
    assert genuine.message == "Encoded failure"  # the message is in the encrypted attributes
    seen = await side.with_context(pay).decode_failure(genuine)
    assert isinstance(seen, ApplicationError)
    assert (seen.type, seen.non_retryable, seen.message) == (
        "PaymentDeclined",
        True,
        "card declined",
    )

    def forged(**fields: object) -> Failure:
        failure = Failure(message="card declined (forged)")
        failure.application_failure_info.type = "PaymentDeclined"
        failure.application_failure_info.non_retryable = True
        for name, value in fields.items():
            getattr(failure, name).CopyFrom(value)
        return failure

    relabelled = Failure()
    relabelled.CopyFrom(
        await encode(worker, pay, ApplicationError("provider down", type="ProviderUnavailable"))
    )
    relabelled.application_failure_info.type = "PaymentDeclined"
    relabelled.application_failure_info.non_retryable = True
    other_activity = await encode(
        worker, activity("orders-payment", "ord-1", "refund_payment"), declined
    )
    for failure in (
        forged(),  # no encoded attributes at all
        forged(encoded_attributes=plain(b'{"type": "PaymentDeclined", "non_retryable": true}')),
        relabelled,  # a genuine failure of another type, clear type rewritten
        other_activity,  # refund_payment's failure offered to process_payment
    ):
        seen = await side.with_context(pay).decode_failure(failure)
        assert isinstance(seen, ApplicationError), seen
        assert seen.type == UNAUTHENTICATED_OUTCOME, seen
        assert seen.non_retryable is False
        assert "PaymentDeclined" in seen.message
    # an activity worker and the workflow's own failures are not checked this way
    assert (await worker.with_context(pay).decode_failure(forged())).type == "PaymentDeclined"  # type: ignore[attr-defined]
    wf = await side.with_context(workflow("ord-1")).decode_failure(forged())
    assert isinstance(wf, ApplicationError) and wf.type == "PaymentDeclined"
