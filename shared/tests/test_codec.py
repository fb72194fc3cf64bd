"""The payload codecs, without Vault: envelope format, caches, tampering, rotation, rewrap.

:class:`InMemoryTransit` behaves like Transit (versions, rotation,
min_decryption_version, authenticated ciphertext); the same properties are
proved against the real OpenBao in tests/test_payload_protection.py.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.exceptions import ApplicationError

from orders_shared.codec import (
    ENCODING,
    META_COMPRESSION,
    META_ENCODING,
    META_FORMAT,
    META_KEY_ID,
    META_WORKFLOW_ID,
    META_WRAPPED_KEY,
    WORKFLOW_PAYLOAD_KEY,
    InMemoryTransit,
    PayloadAccessDenied,
    PayloadDecodeError,
    TransitEnvelopeCodec,
    TransitPerCallCodec,
    codec_stats,
    data_converter,
    parse_wrapped_key,
    rewrap_history_json,
    rewrap_payload,
)

SECRET = b'{"email": "ada@example.com", "payment_token": "tok_visa"}'


def plain(data: bytes = SECRET, encoding: bytes = b"json/plain") -> Payload:
    return Payload(metadata={"encoding": encoding}, data=data)


async def roundtrip(codec: TransitEnvelopeCodec, payload: Payload) -> Payload:
    (encoded,) = await codec.encode([payload])
    (decoded,) = await codec.decode([encoded])
    return decoded


# --------------------------------------------------------------------------- format


async def test_envelope_format_and_roundtrip() -> None:
    codec = TransitEnvelopeCodec(InMemoryTransit())
    (encoded,) = await codec.encode([plain()])
    meta = encoded.metadata
    assert meta[META_ENCODING] == ENCODING == b"binary/encrypted"
    assert meta[META_KEY_ID] == WORKFLOW_PAYLOAD_KEY.encode() == b"orders-payload-orchestrator"
    assert meta[META_FORMAT] == b"orders-envelope/3"
    assert meta[META_COMPRESSION] == b"none"
    assert meta[META_WORKFLOW_ID] == b""  # no serialization context: bound to no workflow
    assert meta["encryption-activity-type"] == meta["encryption-direction"] == b""
    assert parse_wrapped_key(meta[META_WRAPPED_KEY])[0] == 1
    assert b"ada@example.com" not in encoded.SerializeToString()
    assert b"json/plain" not in encoded.SerializeToString()  # the inner encoding is hidden
    (decoded,) = await codec.decode([encoded])
    assert decoded == plain()


async def test_compression_is_off_by_default() -> None:
    codec = TransitEnvelopeCodec(InMemoryTransit())
    (encoded,) = await codec.encode([plain(b"x" * 50_000)])
    assert encoded.metadata[META_COMPRESSION] == b"none"
    assert codec.stats.compressed == 0


async def test_large_payloads_are_compressed_when_turned_on() -> None:
    codec = TransitEnvelopeCodec(InMemoryTransit(), compress_over=1024)
    big = plain(b"x" * 50_000)
    (encoded,) = await codec.encode([big])
    assert encoded.metadata[META_COMPRESSION] == b"zlib"
    assert len(encoded.data) < 1000
    assert (await codec.decode([encoded]))[0] == big
    (small,) = await codec.encode([plain(b"y" * 100)])
    assert small.metadata[META_COMPRESSION] == b"none"
    assert codec.stats.compressed == 1


# --------------------------------------------------------------------------- caching


async def test_steady_state_needs_one_datakey_and_one_unwrap() -> None:
    transit = InMemoryTransit()
    writer = TransitEnvelopeCodec(transit)
    encoded = await writer.encode([plain(bytes([i])) for i in range(200)])
    assert writer.stats.vault_calls == 1 and writer.stats.datakeys == 1
    # the writer decodes its own payloads without asking Vault
    await writer.decode(encoded)
    assert writer.stats.vault_calls == 1
    reader = TransitEnvelopeCodec(transit)  # another process: one unwrap, then cached
    decoded = await reader.decode(encoded)
    assert [p.data for p in decoded] == [bytes([i]) for i in range(200)]
    assert (reader.stats.vault_calls, reader.stats.unwraps) == (1, 1)
    assert transit.calls == 2


async def test_data_key_is_bounded_by_uses_and_age() -> None:
    now = [0.0]
    codec = TransitEnvelopeCodec(
        InMemoryTransit(), max_key_uses=10, max_key_age=60, clock=lambda: now[0]
    )
    await codec.encode([plain()] * 25)
    assert codec.stats.datakeys == 3  # 10 + 10 + 5 uses
    now[0] += 61
    await codec.encode([plain()])
    assert codec.stats.datakeys == 4


async def test_concurrent_decodes_unwrap_a_key_once() -> None:
    import asyncio

    transit = InMemoryTransit()
    encoded = await TransitEnvelopeCodec(transit).encode([plain()] * 5)
    reader = TransitEnvelopeCodec(transit)
    await asyncio.gather(*(reader.decode([p]) for p in encoded))
    assert reader.stats.unwraps == 1


# --------------------------------------------------------------------------- refusals


async def test_plain_payloads_are_refused_unless_allowed() -> None:
    strict = TransitEnvelopeCodec(InMemoryTransit())
    with pytest.raises(PayloadDecodeError, match="not-encrypted") as info:
        await strict.decode([plain()])
    assert info.value.cause == "not-encrypted"
    lenient = TransitEnvelopeCodec(InMemoryTransit(), allow_plaintext=True)
    assert await lenient.decode([plain()]) == [plain()]
    assert lenient.stats.passed_through == 1


async def _encoded(
    codec: TransitEnvelopeCodec | None = None,
) -> tuple[TransitEnvelopeCodec, Payload]:
    codec = codec or TransitEnvelopeCodec(InMemoryTransit())
    (encoded,) = await codec.encode([plain()])
    return TransitEnvelopeCodec(codec.transit), encoded


async def test_tampered_ciphertext() -> None:
    codec, encoded = await _encoded()
    data = bytearray(encoded.data)
    data[20] ^= 0x01
    encoded.data = bytes(data)
    with pytest.raises(PayloadDecodeError) as info:
        await codec.decode([encoded])
    assert info.value.cause == "authentication-failed"
    assert "altered" in str(info.value)
    assert "ada@example.com" not in str(info.value)


async def test_truncated_payload() -> None:
    codec, encoded = await _encoded()
    encoded.data = encoded.data[:20]
    with pytest.raises(PayloadDecodeError, match="truncated"):
        await codec.decode([encoded])
    codec, encoded = await _encoded()
    encoded.data = encoded.data[:-1]  # shorter tag: the tag check fails
    with pytest.raises(PayloadDecodeError, match="authentication-failed"):
        await codec.decode([encoded])


@pytest.mark.parametrize(
    "field", [META_KEY_ID, META_FORMAT, META_WRAPPED_KEY, META_COMPRESSION, META_WORKFLOW_ID]
)
async def test_missing_metadata_field(field: str) -> None:
    codec, encoded = await _encoded()
    del encoded.metadata[field]
    with pytest.raises(PayloadDecodeError, match="missing-metadata") as info:
        await codec.decode([encoded])
    assert field in str(info.value)


async def test_unknown_key_name_is_refused_before_vault() -> None:
    codec, encoded = await _encoded()
    encoded.metadata[META_KEY_ID] = b"orders-seal-payment"
    calls = codec.stats.vault_calls
    with pytest.raises(PayloadDecodeError, match="unknown-key"):
        await codec.decode([encoded])
    assert codec.stats.vault_calls == calls  # never asked Vault to decrypt with another key


async def test_key_name_known_to_codec_but_not_vault() -> None:
    transit = InMemoryTransit()
    codec = TransitEnvelopeCodec(transit, decrypt_keys=[WORKFLOW_PAYLOAD_KEY, "orders-gone"])
    (encoded,) = await TransitEnvelopeCodec(transit).encode([plain()])
    encoded.metadata[META_KEY_ID] = b"orders-gone"
    with pytest.raises(PayloadDecodeError, match="unknown-key"):
        await codec.decode([encoded])


async def test_changed_compression_flag_fails_authentication() -> None:
    codec, encoded = await _encoded()
    encoded.metadata[META_COMPRESSION] = b"zlib"
    with pytest.raises(PayloadDecodeError, match="authentication-failed"):
        await codec.decode([encoded])


async def test_non_canonical_wrapped_key_is_refused() -> None:
    codec, encoded = await _encoded()
    wrapped = encoded.metadata[META_WRAPPED_KEY]
    encoded.metadata[META_WRAPPED_KEY] = wrapped.replace(b":", b": ", 1)
    with pytest.raises(PayloadDecodeError, match="malformed-wrapped-key"):
        await codec.decode([encoded])


async def test_access_denied_is_its_own_error() -> None:
    transit = InMemoryTransit()
    _, encoded = await _encoded(TransitEnvelopeCodec(transit))
    transit.denied.add(("decrypt", WORKFLOW_PAYLOAD_KEY))
    with pytest.raises(PayloadAccessDenied, match="transit/decrypt/orders-payload-orchestrator"):
        await TransitEnvelopeCodec(transit).decode([encoded])


# --------------------------------------------------------------------------- rotation


async def test_rotation_rewrap_and_retired_versions() -> None:
    transit = InMemoryTransit()
    codec = TransitEnvelopeCodec(transit)
    (old,) = await codec.encode([plain(b"before")])
    transit.rotate(WORKFLOW_PAYLOAD_KEY)
    (still_v1,) = await codec.encode([plain(b"cached key")])  # until the cache bound
    assert parse_wrapped_key(still_v1.metadata[META_WRAPPED_KEY])[0] == 1
    codec.forget_keys()
    (new,) = await codec.encode([plain(b"after")])
    assert parse_wrapped_key(new.metadata[META_WRAPPED_KEY])[0] == 2

    reader = TransitEnvelopeCodec(transit)
    assert [p.data for p in await reader.decode([old, new])] == [b"before", b"after"]

    rewrapped = await rewrap_payload(old, transit)
    assert rewrapped is not None
    assert parse_wrapped_key(rewrapped.metadata[META_WRAPPED_KEY])[0] == 2
    assert rewrapped.data == old.data  # only the wrapped key changed

    transit.set_min_decryption_version(WORKFLOW_PAYLOAD_KEY, 2)
    with pytest.raises(PayloadDecodeError, match="key-version-retired") as info:
        await TransitEnvelopeCodec(transit).decode([old])
    assert "min_decryption_version" in str(info.value)
    assert [p.data for p in await TransitEnvelopeCodec(transit).decode([rewrapped])] == [b"before"]


async def test_rewrap_history_json() -> None:
    import base64

    from google.protobuf import json_format

    transit = InMemoryTransit()
    codec = TransitEnvelopeCodec(transit)
    encoded = await codec.encode([plain(b"one"), plain(b"two")])
    history = {
        "events": [
            {"input": {"payloads": [json_format.MessageToDict(p) for p in encoded]}},
            {"result": {"payloads": [json_format.MessageToDict(plain(b"3"))]}},
        ]
    }
    transit.rotate(WORKFLOW_PAYLOAD_KEY)
    report = await rewrap_history_json(history, transit)
    assert (report.payloads, report.rewrapped, report.skipped) == (3, 2, 1)
    transit.set_min_decryption_version(WORKFLOW_PAYLOAD_KEY, 2)
    payloads = [
        json_format.ParseDict(p, Payload()) for p in history["events"][0]["input"]["payloads"]
    ]
    wrapped = base64.b64decode(
        history["events"][0]["input"]["payloads"][0]["metadata"][META_WRAPPED_KEY]
    )
    assert wrapped.startswith(b"vault:v2:")
    decoded = await TransitEnvelopeCodec(transit).decode(payloads)
    assert [p.data for p in decoded] == [b"one", b"two"]
    assert json.dumps(history)  # still JSON


# --------------------------------------------------------------------------- per-call codec


async def test_per_call_codec_makes_one_call_per_payload() -> None:
    transit = InMemoryTransit()
    codec = TransitPerCallCodec(transit)
    encoded = await codec.encode([plain(bytes([i])) for i in range(10)])
    assert all(p.metadata[META_FORMAT] == b"orders-transit/1" for p in encoded)
    assert all(p.data.startswith(b"vault:v1:") for p in encoded)
    decoded = await codec.decode(encoded)
    assert [p.data for p in decoded] == [bytes([i]) for i in range(10)]
    assert codec.stats.vault_calls == 20
    encoded[0].data = encoded[0].data[:-4] + b"AAAA"
    with pytest.raises(PayloadDecodeError):
        await codec.decode(encoded[:1])


# --------------------------------------------------------------------------- data converter


async def test_data_converter_encrypts_failures_too() -> None:
    converter = data_converter(InMemoryTransit())
    failure = Failure()
    converter.failure_converter.to_failure(
        ApplicationError("card tok_visa for ada@example.com declined"),
        converter.payload_converter,
        failure,
    )
    assert failure.message == "Encoded failure"
    assert converter.payload_codec is not None
    await converter.payload_codec.encode_failure(failure)
    attrs = failure.encoded_attributes
    assert attrs.metadata[META_ENCODING] == ENCODING
    assert b"ada@example.com" not in failure.SerializeToString()
    stats = codec_stats(converter)
    assert stats is not None and stats.encoded == 1


def test_plain_mode_has_no_codec() -> None:
    assert data_converter(InMemoryTransit(), mode="plain").payload_codec is None
    with pytest.raises(ValueError, match="unknown codec mode"):
        data_converter(InMemoryTransit(), mode="fast")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- properties

_TRANSIT = InMemoryTransit()
_PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_PROPS
@given(
    data=st.binary(max_size=20_000),
    metadata=st.dictionaries(st.text(min_size=1, max_size=20), st.binary(max_size=50), max_size=4),
    compress_over=st.one_of(st.none(), st.integers(0, 5000)),
)
async def test_property_random_payloads_roundtrip(
    data: bytes, metadata: dict[str, bytes], compress_over: int | None
) -> None:
    payload = Payload(metadata=metadata, data=data)
    codec = TransitEnvelopeCodec(_TRANSIT, compress_over=compress_over)
    assert await roundtrip(codec, payload) == payload


@_PROPS
@given(
    data=st.binary(min_size=0, max_size=2000),
    where=st.sampled_from(["data", "wrapped"]),
    position=st.integers(min_value=0),
    mask=st.integers(min_value=1, max_value=255),
)
async def test_property_any_byte_flip_never_decodes(
    data: bytes, where: str, position: int, mask: int
) -> None:
    (encoded,) = await TransitEnvelopeCodec(_TRANSIT).encode([plain(data)])
    target = bytearray(encoded.data if where == "data" else encoded.metadata[META_WRAPPED_KEY])
    target[position % len(target)] ^= mask
    if where == "data":
        encoded.data = bytes(target)
    else:
        encoded.metadata[META_WRAPPED_KEY] = bytes(target)
    with pytest.raises(PayloadDecodeError):
        await TransitEnvelopeCodec(_TRANSIT).decode([encoded])
