"""Codec micro-benchmarks: envelope codec, one Transit call per payload, bare AES-GCM.

Each figure is one encode plus one decode of the same payload (a round trip), at
1 KiB and 256 KiB. The envelope codec uses a cached data key (steady state);
the per-call codec makes one Transit ``encrypt`` and one ``decrypt``; bare
AES-256-GCM encrypts and decrypts the same bytes with a key in memory (the floor);
``protobuf_serialize_parse_only`` is the part of the envelope codec's cost that is
not cryptography (it encrypts the serialized ``Payload``, metadata included).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import hvac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload

from orders_ops.bench_configs import PER_CALL_POLICY, PER_CALL_POLICY_HCL
from orders_ops.identities import local_session
from orders_ops.settings import StackSettings
from orders_ops.vault_bootstrap import root_client
from orders_shared.codec import (
    TokenTransit,
    TransitEnvelopeCodec,
    TransitPerCallCodec,
    VaultTransit,
)

SIZES = {"1KiB": 1024, "256KiB": 256 * 1024}


async def _times(n: int, fn: Callable[[], Awaitable[Any]]) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


def _row(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000, 3),
    }


async def codec_micro(settings: StackSettings, *, samples: int) -> dict[str, Any]:
    session = await local_session(settings, "orchestrator")
    root: hvac.Client = root_client(settings)
    root.sys.create_or_update_policy(PER_CALL_POLICY, policy=PER_CALL_POLICY_HCL)
    token = root.auth.token.create(
        policies=["orders-orchestrator", PER_CALL_POLICY], no_default_policy=True, ttl="30m"
    )["auth"]["client_token"]
    per_call_transit = TokenTransit(settings.vault_addr, token)
    results: dict[str, Any] = {}
    try:
        envelope = TransitEnvelopeCodec(VaultTransit(session))
        per_call = TransitPerCallCodec(per_call_transit)
        for label, size in SIZES.items():
            data = os.urandom(size)
            payload = Payload(metadata={"encoding": b"binary/plain"}, data=data)
            n = samples if size <= 4096 else max(5, samples // 2)
            await envelope.decode(await envelope.encode([payload]))  # the data key, cached

            async def env_rt(p: Payload = payload) -> None:
                await envelope.decode(await envelope.encode([p]))

            async def per_call_rt(p: Payload = payload) -> None:
                await per_call.decode(await per_call.encode([p]))

            key = AESGCM(AESGCM.generate_key(bit_length=256))

            async def bare_rt(d: bytes = data, key: AESGCM = key) -> None:
                nonce = os.urandom(12)
                key.decrypt(nonce, key.encrypt(nonce, d, b"aad"), b"aad")

            async def proto_rt(p: Payload = payload) -> None:
                Payload().ParseFromString(p.SerializeToString())

            # interleaved, sample by sample, so machine noise falls on all three alike
            env_s: list[float] = []
            proto_s: list[float] = []
            bare_s: list[float] = []
            for _ in range(n):
                env_s += await _times(1, env_rt)
                proto_s += await _times(1, proto_rt)
                bare_s += await _times(1, bare_rt)
            env, proto, bare = _row(env_s), _row(proto_s), _row(bare_s)
            call = _row(await _times(max(3, n // 5), per_call_rt))
            results[label] = {
                "envelope": env,
                "per_call": call,
                "bare_aes_gcm": bare,
                "protobuf_serialize_parse_only": proto,
                "envelope_over_bare": round(env["median_ms"] / max(bare["median_ms"], 1e-6), 2),
                "envelope_over_bare_plus_protobuf": round(
                    env["median_ms"] / max(bare["median_ms"] + proto["median_ms"], 1e-6), 2
                ),
                "per_call_over_envelope": round(call["median_ms"] / max(env["median_ms"], 1e-6), 2),
            }
    finally:
        per_call_transit.close()
        try:
            root.auth.token.revoke(token)
            root.sys.delete_policy(PER_CALL_POLICY)
        finally:
            root.adapter.close()
            await session.close()
    return results
