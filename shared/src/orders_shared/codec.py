"""Payload protection: Temporal payloads encrypted with keys that Vault owns.

Two codecs behind one interface (:class:`temporalio.converter.PayloadCodec`),
chosen by configuration so a benchmark can swap them without forking a service:

* :class:`TransitEnvelopeCodec` (the default, ``secured``): envelope encryption
  with **one Transit key per service**. A 256-bit data key comes from Transit
  ``datakey/plaintext/<key>``; payloads are encrypted locally with AES-256-GCM;
  the *wrapped* data key (the Transit ciphertext ``vault:vN:...``), the Transit
  key name, the workflow id and a format version travel in the payload
  metadata, as Temporal's encryption samples do (``encoding: binary/encrypted``,
  ``encryption-key-id``). Unwrapped keys are cached per key with a bound on age
  and on uses, so in steady state a process makes almost no Vault calls
  (:attr:`CodecStats.vault_calls` counts them).
* :class:`TransitPerCallCodec` (``per-call``): one Transit ``encrypt`` or
  ``decrypt`` call per payload, no envelope, no cache; for comparisons.

Which key (``TransitEnvelopeCodec.with_context``, Temporal's serialization context):

=============================================  ==========================================
payloads of                                    Transit key (who may use it)
=============================================  ==========================================
an activity on task queue ``orders-<svc>``     ``orders-payload-<svc>`` (svc, orchestrator)
(input, result, failure, heartbeat details)
the workflow (input, result, queries,          ``orders-payload-orchestrator``
signals, its failure) and anything without     (orchestrator, client)
a context
=============================================  ==========================================

So a shell in the notify worker can neither read a payment activity's payloads
nor write a payment result the orchestrator accepts: on decode *with* a
context the payload's key must be the key of that context (cause
``wrong-key``), and its workflow id must be the context's (cause
``wrong-workflow``), so a payload copied into another workflow does not decode.
Decode *without* a context (the codec server) needs nothing but the metadata.

Envelope format ``orders-envelope/3``::

    metadata  encoding                 = "binary/encrypted"
              encryption-key-id        = Transit key name ("orders-payload-payment")
              encryption-format        = "orders-envelope/3"
              encryption-wrapped-key   = "vault:v<n>:<base64>" (the data key, wrapped by Transit)
              encryption-compression   = "none" | "zlib"
              encryption-workflow-id   = the workflow the payload belongs to ("" if none)
              encryption-activity-type = the activity ("process_payment"; "" if none)
              encryption-direction     = "input" | "result" ("" if not an activity's)
    data      nonce (12 bytes) || AES-256-GCM(ciphertext || tag)

The plaintext is the original payload, serialised (metadata and data), so its
encoding is hidden too. The GCM associated data binds the format, the key name,
the compression flag, the workflow id, the activity type and the direction
(length-prefixed). The direction is the writer's: the workflow's side
(``workflow_side=True``, the orchestrator) writes activity inputs and reads results,
an activity worker the reverse; inside an activity context a payload of another
activity type (``wrong-activity``) or of the other direction (``wrong-direction``)
is refused, so neither one activity's payload as another's nor an input echoed back
as a result decodes. ``orders-envelope/2`` (no activity type, no direction: written
before the upgrade) still decodes under its own rules, so workflows in flight across
the upgrade finish; a ``/2`` payload is bound to its workflow, so it can be moved
only within a workflow started before the upgrade. It does not bind
the wrapped key, so the wrapped key can be *rewrapped* to a newer Transit key
version (:func:`rewrap_payload`) without re-encrypting the data: the wrapped
key is authenticated by Transit's own AES-GCM, it must be in canonical form
(strict base64, so no two spellings reach Vault as the same ciphertext), and a
different data key fails the payload's GCM tag. Every change to any byte of
the data, the metadata or the wrapped key therefore fails to decode, with a
:class:`PayloadDecodeError` naming the cause, never with plaintext or a crash.

Old history (``orders-envelope/1``: one key ``orders-payload`` for everything,
no workflow id) is bound to no workflow, so one old payload copied from history
would be accepted as any activity's input or result in any workflow. It is
therefore **never** decoded inside a serialization context (a worker, the
client): cause ``legacy-refused``, naming :data:`LEGACY_RUNBOOK`. Only a
context-free decode with ``accept_legacy=True`` reads it: the codec server and
the operator commands pass :func:`legacy_reading_enabled` (``ORDERS_CODEC_ACCEPT_LEGACY``,
default **false**: only when told). Nobody may create data keys of
``orders-payload`` (no policy grants ``datakey`` on it); ``decrypt`` on it is
granted to the payload reader only, and only while that variable is true in
the bootstrap's environment (see :mod:`orders_ops.policies`).

Compression: off by default (``compress_over=None``). Compressing before
encrypting makes the ciphertext length depend on the content; where an
attacker can place chosen text next to a secret in one payload and watch
lengths (history sizes are visible to anyone who can read history), that is a
compression oracle (CRIME/BREACH). Payloads here are small and their secret
fields are sealed (random, incompressible), so compression buys nothing worth
that risk. Decoding still accepts ``zlib`` payloads (written by earlier
versions, or by a deployment that turns compression on), bounded: the
decompressed size may not exceed ``max_decompressed`` (default 4 MiB,
``ORDERS_CODEC_MAX_DECOMPRESSED`` in bytes), else :class:`PayloadTooLarge`
(cause ``too_large``) without inflating more than that.

Plain (unencrypted) payloads on decode: refused by default
(``allow_plaintext=False``): a worker must not act on input that bypassed
encryption (a workflow started or signalled by a client without the codec).
The codec server passes them through (``allow_plaintext=True``): they are
already readable in history (e.g. written before encryption was turned on), and
hiding them helps nobody. Turn it on in workers only while migrating a
namespace whose open workflows were started before encryption.

Rotation: every payload key rotates itself (``auto_rotate_period``, set by the
bootstrap). A process uses the new version for its *next* data key (when the
cached one reaches its age or use bound, or at once after
:meth:`TransitEnvelopeCodec.forget_keys`); payloads wrapped with older versions
keep decoding until ``min_decryption_version`` is raised past them, after
which they fail with a clear error. Temporal history is immutable: there is no
way to rewrap the keys inside stored history, so ``min_decryption_version``
must stay at or below the oldest version referenced by any history still
within retention. :func:`rewrap_history_json` rewraps payloads stored
*outside* Temporal (exported histories, archives).

hvac is synchronous: :class:`VaultTransit` runs it through
:meth:`orders_shared.identity.VaultSession.call` (a thread pool). Workflow
modules never import this module: the codec runs outside the sandbox.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import dataclasses
import os
import re
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Protocol, TypeVar

import hvac
import hvac.exceptions
import requests
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    ActivitySerializationContext,
    DataConverter,
    PayloadCodec,
    SerializationContext,
    WithSerializationContext,
    WorkflowSerializationContext,
)

from orders_shared.catalog import SERVICES
from orders_shared.identity import VaultSession
from orders_shared.metrics import CODEC_BYTES, CODEC_SECONDS
from orders_shared.outcomes import OutcomeFailureConverter, WorkflowSideFailureConverter
from orders_shared.refused import WorkflowSidePayloadConverter, refused_payload

T = TypeVar("T")

TRANSIT_MOUNT = "transit"
PAYLOAD_KEY = "orders-payload"
"""The single payload key of format ``orders-envelope/1`` (old history; decrypt only)."""
LEGACY_PAYLOAD_KEY = PAYLOAD_KEY
WORKFLOW_SERVICE = "orchestrator"


def payload_key(service: str) -> str:
    """The Transit key the payloads of ``service``'s activities are encrypted under."""
    if service not in SERVICES:
        raise KeyError(f"unknown service {service!r}; known services: {', '.join(SERVICES)}")
    return f"orders-payload-{service}"


WORKFLOW_PAYLOAD_KEY = payload_key(WORKFLOW_SERVICE)
"""Workflow input, result, queries, signals and context-free payloads."""


def payload_keys() -> tuple[str, ...]:
    """Every per-service payload key (the workflow's included), in catalog order."""
    return tuple(payload_key(name) for name in SERVICES)


def activity_payload_keys() -> dict[str, str]:
    """Task queue -> the key of the service that polls it (from the catalog)."""
    return {spec.task_queue: payload_key(spec.name) for spec in SERVICES.values()}


DEFAULT_MAX_DECOMPRESSED = 4 * 1024 * 1024
MAX_DECOMPRESSED_ENV = "ORDERS_CODEC_MAX_DECOMPRESSED"
ACCEPT_LEGACY_ENV = "ORDERS_CODEC_ACCEPT_LEGACY"
LEGACY_RUNBOOK = "docs/payload-keys.md#old-history-orders-envelope1"
"""Where a worker that meets an ``orders-envelope/1`` payload sends the operator."""

ENCODING = b"binary/encrypted"
META_ENCODING = "encoding"
META_KEY_ID = "encryption-key-id"
META_FORMAT = "encryption-format"
META_WRAPPED_KEY = "encryption-wrapped-key"
META_COMPRESSION = "encryption-compression"
META_WORKFLOW_ID = "encryption-workflow-id"
META_ACTIVITY_TYPE = "encryption-activity-type"
META_DIRECTION = "encryption-direction"
ENVELOPE_FORMAT = b"orders-envelope/3"
V2_ENVELOPE_FORMAT = b"orders-envelope/2"
"""Written before activity type and direction were bound (history from before the
upgrade): still decoded, under its own rules (workflow id bound, no activity type)."""
DIRECTION_INPUT = "input"
DIRECTION_RESULT = "result"
LEGACY_ENVELOPE_FORMAT = b"orders-envelope/1"
PER_CALL_FORMAT = b"orders-transit/1"

NONCE_BYTES = 12
TAG_BYTES = 16
DATA_KEY_BYTES = 32

_WRAPPED_RE = re.compile(rb"vault:v([1-9][0-9]{0,8}):([A-Za-z0-9+/]+={0,2})")


# --------------------------------------------------------------------------- errors


class PayloadDecodeError(ValueError):
    """A payload cannot be decoded. ``cause`` is a short machine-readable reason;
    the message names it and the fix. Never carries plaintext or key material."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(f"cannot decode payload ({cause}): {message}")
        self.cause = cause


class PayloadAccessDenied(PayloadDecodeError):
    """Vault refused the caller: its policy does not allow this Transit operation."""


class PayloadTooLarge(PayloadDecodeError):
    """A compressed payload would inflate beyond the codec's bound (cause ``too_large``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            "too_large",
            f"the payload decompresses to more than {limit} bytes, the codec's bound; refused "
            f"without inflating it (raise {MAX_DECOMPRESSED_ENV} if such payloads are expected)",
        )
        self.limit = limit


class PayloadContextError(PayloadDecodeError):
    """A payload decodes, but not in this place: another service's key (``wrong-key``) or
    another workflow (``wrong-workflow``)."""


class TransitError(RuntimeError):
    """Base of the errors a :class:`TransitClient` raises (never with key material)."""


class TransitDenied(TransitError):
    """Vault answered 403: the token is invalid, expired or lacks the capability."""


class TransitRejected(TransitError):
    """Vault answered 400/404: bad ciphertext, unknown key, version too old or too new."""


class TransitUnavailable(TransitError):
    """Vault did not answer (connection refused, timeout, 5xx); worth retrying."""


# --------------------------------------------------------------------------- Transit


class TransitClient(Protocol):
    """What the codecs and field sealing need from Vault's Transit engine."""

    async def datakey(self, key_name: str) -> tuple[bytes, str]:
        """A fresh 256-bit data key: (plaintext key, the key wrapped by Transit)."""
        ...

    async def decrypt(self, key_name: str, ciphertext: str, context: bytes | None = None) -> bytes:
        """``context``: for a derived key, what the ciphertext was bound to at encryption."""
        ...

    async def encrypt(
        self, key_name: str, plaintext: bytes, context: bytes | None = None
    ) -> str: ...

    async def rewrap(self, key_name: str, ciphertext: str) -> str:
        """``ciphertext`` re-encrypted with the key's latest version."""
        ...


CallRunner = Callable[..., Any]


class HvacTransit:
    """:class:`TransitClient` over an hvac client; ``run(fn, *args)`` awaits a blocking call."""

    def __init__(self, client: hvac.Client, run: CallRunner, *, mount: str = TRANSIT_MOUNT) -> None:
        self._client = client
        self._run = run
        self.mount = mount

    async def _call(self, fn: Callable[..., dict[str, Any]], *args: Any, **kw: Any) -> Any:
        try:
            response = await self._run(fn, *args, mount_point=self.mount, **kw)
        except hvac.exceptions.Forbidden:
            raise TransitDenied(
                f"Vault refused {fn.__name__} (403: the token is invalid or expired, or its "
                "policy does not grant this Transit path)"
            ) from None
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.InvalidPath) as exc:
            raise TransitRejected(_vault_message(exc)) from None
        except (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            hvac.exceptions.VaultDown,
            hvac.exceptions.InternalServerError,
            hvac.exceptions.BadGateway,
        ) as exc:
            raise TransitUnavailable(f"Vault is not answering ({type(exc).__name__})") from None
        return response["data"]

    async def datakey(self, key_name: str) -> tuple[bytes, str]:
        data = await self._call(
            self._client.secrets.transit.generate_data_key, key_name, "plaintext"
        )
        return base64.b64decode(data["plaintext"]), str(data["ciphertext"])

    async def decrypt(self, key_name: str, ciphertext: str, context: bytes | None = None) -> bytes:
        extra = {"context": base64.b64encode(context).decode()} if context is not None else {}
        data = await self._call(
            self._client.secrets.transit.decrypt_data, key_name, ciphertext, **extra
        )
        return base64.b64decode(data["plaintext"])

    async def encrypt(self, key_name: str, plaintext: bytes, context: bytes | None = None) -> str:
        extra = {"context": base64.b64encode(context).decode()} if context is not None else {}
        data = await self._call(
            self._client.secrets.transit.encrypt_data,
            key_name,
            base64.b64encode(plaintext).decode(),
            **extra,
        )
        return str(data["ciphertext"])

    async def rewrap(self, key_name: str, ciphertext: str) -> str:
        data = await self._call(self._client.secrets.transit.rewrap_data, key_name, ciphertext)
        return str(data["ciphertext"])


class VaultTransit(HvacTransit):
    """Transit as a worker's own identity: the token its :class:`VaultSession` keeps alive."""

    def __init__(self, session: VaultSession, *, mount: str = TRANSIT_MOUNT) -> None:
        super().__init__(session.client, session.call, mount=mount)
        self._session = session

    async def _call(self, fn: Callable[..., dict[str, Any]], *args: Any, **kw: Any) -> Any:
        try:
            return await super()._call(fn, *args, **kw)
        except TransitDenied:
            # a revoked or expired token is replaced now; the call is tried once more on
            # the new token (a policy refusal leaves the token alone and is raised)
            if not await self._session.recover_refused():
                raise
        return await super()._call(fn, *args, **kw)


_TOKEN_EXECUTOR = ThreadPoolExecutor(8, thread_name_prefix="vault-token")


class TokenTransit(HvacTransit):
    """Transit with a caller's own Vault token (the codec server decrypts as its caller)."""

    def __init__(
        self,
        addr: str,
        token: str,
        *,
        mount: str = TRANSIT_MOUNT,
        timeout: float = 10.0,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self._executor = executor or _TOKEN_EXECUTOR
        client = hvac.Client(url=addr, token=token, timeout=timeout)
        super().__init__(client, self._run_blocking, mount=mount)

    async def _run_blocking(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kw))

    def close(self) -> None:
        self._client.adapter.close()

    def __repr__(self) -> str:  # never show the token
        return f"TokenTransit(mount={self.mount!r})"


def _vault_message(exc: hvac.exceptions.VaultError) -> str:
    errors = getattr(exc, "errors", None)
    text = "; ".join(str(e) for e in errors) if errors else str(exc)
    return text.split(", on post ")[0].split(", on get ")[0] or type(exc).__name__


# --------------------------------------------------------------------------- stats


@dataclasses.dataclass
class CodecStats:
    """Counters for benchmarks and tests (no timings: those are the benchmark's job)."""

    vault_calls: int = 0
    datakeys: int = 0
    unwraps: int = 0
    transit_encrypts: int = 0
    transit_decrypts: int = 0
    key_cache_hits: int = 0
    encoded: int = 0
    decoded: int = 0
    passed_through: int = 0
    compressed: int = 0
    legacy: int = 0  # orders-envelope/1 payloads decoded
    refused: int = 0  # activity payloads the workflow side refused (refuse_softly)

    def reset(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, 0)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- helpers


def is_encrypted(payload: Payload) -> bool:
    return payload.metadata.get(META_ENCODING) == ENCODING


def _meta(payload: Payload, name: str) -> bytes:
    value = payload.metadata.get(name)
    if value is None:
        raise PayloadDecodeError(
            "missing-metadata",
            f"metadata field {name!r} is missing; the payload was not written by this codec "
            "or was altered",
        )
    return value


def _aad(*parts: bytes) -> bytes:
    """Length-prefixed, so no two tuples of parts share an encoding.

    ``orders-envelope/1``: (format, key, compression); ``/2`` adds the workflow id;
    ``/3`` the activity type and the direction."""
    out = bytearray()
    for part in parts:
        if len(part) > 0xFFFF:
            raise PayloadDecodeError("malformed-metadata", "a metadata field is over 64 KiB")
        out += len(part).to_bytes(2, "big") + part
    return bytes(out)


def parse_wrapped_key(wrapped: bytes) -> tuple[int, bytes]:
    """(Transit key version, ciphertext) of a ``vault:vN:<base64>`` string in canonical form."""
    match = _WRAPPED_RE.fullmatch(wrapped)
    if match is None:
        raise PayloadDecodeError(
            "malformed-wrapped-key", "the wrapped data key is not a Transit ciphertext"
        )
    try:
        raw = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise PayloadDecodeError(
            "malformed-wrapped-key", "the wrapped data key is not valid base64"
        ) from None
    if base64.b64encode(raw) != match.group(2):
        raise PayloadDecodeError(
            "malformed-wrapped-key", "the wrapped data key is not in canonical base64 form"
        )
    return int(match.group(1)), raw


def _transit_failure(
    exc: TransitError, what: str, *, need: str | None = None
) -> PayloadDecodeError:
    """``need``: what the caller's policy lacks, for the message (default: a reader's)."""
    if isinstance(exc, TransitDenied):
        return PayloadAccessDenied(
            "access-denied",
            f"Vault refused to {what}: {exc}. "
            + (
                need
                or "A reader needs policy payload-reader (update on transit/decrypt/<key> "
                "for the payload's key)"
            ),
        )
    text = str(exc)
    if "too old" in text:
        return PayloadDecodeError(
            "key-version-retired",
            f"Vault refused to {what}: the key version that wrapped it is below the key's "
            "min_decryption_version ({text}); lower min_decryption_version to read it, or "
            "rewrap stored data before retiring versions",
        )
    if "too new" in text:
        return PayloadDecodeError(
            "unknown-key-version", f"Vault refused to {what}: no such key version ({text})"
        )
    if "key not found" in text:
        return PayloadDecodeError("unknown-key", f"Vault has no such Transit key ({text})")
    return PayloadDecodeError(
        "wrapped-key-rejected", f"Vault refused to {what}: {text} (tampered or corrupted)"
    )


# --------------------------------------------------------------------------- envelope codec


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number of bytes") from None
    if value < 1:
        raise ValueError(f"{name}={value} must be a positive number of bytes")
    return value


def _env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean (true/false)")


def legacy_reading_enabled() -> bool:
    """``ORDERS_CODEC_ACCEPT_LEGACY`` (default false): whether the codec server and the
    operator commands read ``orders-envelope/1`` history. Workers never do."""
    return _env_flag(ACCEPT_LEGACY_ENV, False)


def bounded_inflate(data: bytes, limit: int) -> bytes:
    """zlib-decompress ``data``, producing at most ``limit`` bytes (memory stays bounded).

    :class:`PayloadTooLarge` when there is more; ``corrupt`` when it is not zlib data."""
    inflater = zlib.decompressobj()
    try:
        # one byte past the bound says "more" without inflating any further
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise PayloadDecodeError("corrupt", "compressed content is corrupt") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(limit)
    if not inflater.eof or inflater.unused_data:
        raise PayloadDecodeError("corrupt", "compressed content is truncated or has trailing data")
    return out


@dataclasses.dataclass
class _CachedKey:
    key: AESGCM
    created: float
    uses: int = 0


@dataclasses.dataclass
class _KeyState:
    """What every context view of one codec shares: data keys (one current per Transit
    key), the unwrapped-key cache and the counters."""

    stats: CodecStats
    current: dict[str, tuple[_CachedKey, bytes]]  # key name -> (key, wrapped)
    unwrapped: OrderedDict[tuple[bytes, bytes], _CachedKey]
    inflight: dict[tuple[bytes, bytes], asyncio.Future[_CachedKey]]
    datakey_locks: dict[str, asyncio.Lock]


@dataclasses.dataclass(frozen=True)
class PayloadScope:
    """Where a payload belongs: the Transit key it must be under and the workflow it is
    bound to (``""``: none). ``what`` names the context in error messages. For an
    activity (``orders-envelope/3``): its type, and the direction this side writes
    (``writes``) and reads (``reads``): the workflow side writes inputs and reads
    results, an activity worker the reverse (``""``: not an activity)."""

    key_name: str
    workflow_id: str
    what: str
    activity_type: str = ""
    writes: str = ""
    reads: str = ""


class TransitEnvelopeCodec(PayloadCodec, WithSerializationContext):
    """Envelope encryption with per-service Transit data keys and local AES-256-GCM
    (see the module doc).

    ``key_name``: the key of workflow and context-free payloads (default
    ``orders-payload-orchestrator``). ``activity_keys``: task queue -> key for
    activity payloads (default: from the catalog). An activity context whose
    task queue has no key is refused (fail closed). ``decrypt_keys``: the keys
    whose wrapped data keys this codec will ask Vault to unwrap when decoding
    *without* a context (default: every payload key, plus the legacy key when
    ``accept_legacy``), so a crafted payload cannot make a worker decrypt with
    another key (a sealing key). ``accept_legacy`` (default false): decode
    ``orders-envelope/1`` payloads *without* a context (the codec server and
    operator commands pass :func:`legacy_reading_enabled`); inside a context
    they are always refused.

    ``max_key_age`` (seconds) and ``max_key_uses`` bound how long a data key is
    used to encrypt and how long an unwrapped key stays cached for decryption;
    ``cache_size`` bounds how many unwrapped keys are kept. ``compress_over``
    (bytes): payloads larger than this are zlib-compressed before encryption
    (default ``None``: never; see the module doc). ``max_decompressed``
    (default ``ORDERS_CODEC_MAX_DECOMPRESSED`` or 4 MiB): the most a compressed
    payload may inflate to.

    :meth:`with_context` returns a view bound to a Temporal serialization
    context that shares the key cache and counters of this codec.
    """

    def __init__(
        self,
        transit: TransitClient,
        *,
        key_name: str = WORKFLOW_PAYLOAD_KEY,
        activity_keys: Mapping[str, str] | None = None,
        decrypt_keys: Sequence[str] | None = None,
        accept_legacy: bool | None = None,
        max_key_age: float = 300.0,
        max_key_uses: int = 100_000,
        cache_size: int = 1024,
        compress_over: int | None = None,
        max_decompressed: int | None = None,
        allow_plaintext: bool = False,
        refuse_softly: bool = False,
        workflow_side: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_key_uses < 1 or max_key_age <= 0 or cache_size < 1:
            raise ValueError("max_key_uses, max_key_age and cache_size must be positive")
        self.transit = transit
        self.key_name = key_name
        self.activity_keys: Mapping[str, str] = dict(
            activity_payload_keys() if activity_keys is None else activity_keys
        )
        self.accept_legacy = bool(accept_legacy)
        if decrypt_keys is None:
            decrypt_keys = [key_name, *self.activity_keys.values()]
            if self.accept_legacy:
                decrypt_keys.append(LEGACY_PAYLOAD_KEY)
        self.decrypt_keys = frozenset(decrypt_keys)
        self.max_key_age = max_key_age
        self.max_key_uses = max_key_uses
        self.cache_size = cache_size
        self.compress_over = compress_over
        self.max_decompressed = (
            _env_int(MAX_DECOMPRESSED_ENV, DEFAULT_MAX_DECOMPRESSED)
            if max_decompressed is None
            else max_decompressed
        )
        if self.max_decompressed < 1:
            raise ValueError("max_decompressed must be positive")
        self.allow_plaintext = allow_plaintext
        self.refuse_softly = refuse_softly
        self.workflow_side = workflow_side
        self.context: SerializationContext | None = None
        self._clock = clock
        self._state = _KeyState(CodecStats(), {}, OrderedDict(), {}, {})

    @property
    def stats(self) -> CodecStats:
        return self._state.stats

    # -- context ----------------------------------------------------------------------
    def with_context(self, context: SerializationContext) -> TransitEnvelopeCodec:
        """A view of this codec for one Temporal serialization context (same cache)."""
        view = copy.copy(self)
        view.context = context
        return view

    def scope(self) -> PayloadScope | None:
        """Key and workflow for this view's context; None without one."""
        ctx = self.context
        if isinstance(ctx, ActivitySerializationContext):
            queue = ctx.activity_task_queue or ""
            key = self.activity_keys.get(queue)
            if key is None:
                raise PayloadContextError(
                    "unknown-task-queue",
                    f"no payload key for activities on task queue {queue[:80]!r}; add the "
                    "service to orders_shared.catalog (and run the bootstrap)",
                )
            what = f"activity {ctx.activity_type or '?'} on task queue {queue}"
            writes, reads = (
                (DIRECTION_INPUT, DIRECTION_RESULT)
                if self.workflow_side
                else (DIRECTION_RESULT, DIRECTION_INPUT)
            )
            return PayloadScope(
                key, ctx.workflow_id or "", what, ctx.activity_type or "", writes, reads
            )
        if isinstance(ctx, WorkflowSerializationContext):
            return PayloadScope(self.key_name, ctx.workflow_id, "the workflow")
        return None

    # -- keys -------------------------------------------------------------------------
    def _fresh(self, entry: _CachedKey) -> bool:
        return entry.uses < self.max_key_uses and self._clock() - entry.created < self.max_key_age

    def forget_keys(self) -> None:
        """Drop every cached key: the next encode fetches a new data key (after a rotation)."""
        self._state.current.clear()
        self._state.unwrapped.clear()

    async def _encryption_key(self, key_name: str) -> tuple[_CachedKey, bytes]:
        state = self._state
        current = state.current.get(key_name)
        if current is not None and self._fresh(current[0]):
            current[0].uses += 1
            state.stats.key_cache_hits += 1
            return current
        lock = state.datakey_locks.setdefault(key_name, asyncio.Lock())
        async with lock:
            current = state.current.get(key_name)
            if current is None or not self._fresh(current[0]):
                state.stats.vault_calls += 1
                state.stats.datakeys += 1
                plain, wrapped = await self.transit.datakey(key_name)
                if len(plain) != DATA_KEY_BYTES:
                    raise TransitRejected(f"Transit returned a {len(plain) * 8}-bit data key")
                entry = _CachedKey(AESGCM(plain), self._clock())
                current = (entry, wrapped.encode())
                state.current[key_name] = current
                # the same key decrypts what it encrypted, without asking Vault
                self._remember((key_name.encode(), current[1]), entry)
            current[0].uses += 1
            return current

    def _remember(self, cache_key: tuple[bytes, bytes], entry: _CachedKey) -> None:
        unwrapped = self._state.unwrapped
        unwrapped[cache_key] = entry
        unwrapped.move_to_end(cache_key)
        while len(unwrapped) > self.cache_size:
            unwrapped.popitem(last=False)

    async def _decryption_key(self, key_name: bytes, wrapped: bytes) -> _CachedKey:
        state = self._state
        cache_key = (key_name, wrapped)
        entry = state.unwrapped.get(cache_key)
        if entry is not None and self._fresh(entry):
            entry.uses += 1
            state.stats.key_cache_hits += 1
            state.unwrapped.move_to_end(cache_key)
            return entry
        pending = state.inflight.get(cache_key)
        if pending is not None:  # another decode is unwrapping the same key right now
            entry = await asyncio.shield(pending)
            entry.uses += 1
            return entry
        future: asyncio.Future[_CachedKey] = asyncio.get_running_loop().create_future()
        state.inflight[cache_key] = future
        try:
            state.stats.vault_calls += 1
            state.stats.unwraps += 1
            name = key_name.decode()
            try:
                plain = await self.transit.decrypt(name, wrapped.decode())
            except (TransitDenied, TransitRejected) as exc:
                raise _transit_failure(
                    exc,
                    "unwrap the payload's data key",
                    need=f"This identity's policy lacks update on transit/decrypt/{name}, "
                    "which only the service owning the key, the orchestrator and readers "
                    "(policy payload-reader) hold",
                ) from None
            if len(plain) != DATA_KEY_BYTES:
                raise PayloadDecodeError(
                    "malformed-wrapped-key", "the unwrapped data key is not 256 bits"
                )
            entry = _CachedKey(AESGCM(plain), self._clock())
            self._remember(cache_key, entry)
            future.set_result(entry)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody warns
            raise
        finally:
            del state.inflight[cache_key]
        entry.uses += 1
        return entry

    # -- codec ------------------------------------------------------------------------
    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        with CODEC_SECONDS.labels("encode").time():
            scope = self.scope()
            key_name = scope.key_name if scope else self.key_name
            workflow_id = scope.workflow_id if scope else ""
            activity_type = scope.activity_type if scope else ""
            direction = scope.writes if scope else ""
            return [
                await self._encode_one(p, key_name, workflow_id, activity_type, direction)
                for p in payloads
            ]

    async def _encode_one(
        self, payload: Payload, key: str, workflow_id: str, activity_type: str, direction: str
    ) -> Payload:
        # Hot path at 256 KiB: every copy of the data costs about as much as AES-GCM
        # itself. ``payload.data`` copies on each access (upb), so the byte count is
        # taken from the serialized form, and the ciphertext is written straight
        # behind the nonce (``encrypt_into``) instead of concatenated.
        plain = payload.SerializeToString()
        CODEC_BYTES.labels("encode").inc(len(plain))
        compression = b"none"
        if self.compress_over is not None and len(plain) > self.compress_over:
            packed = zlib.compress(plain, 6)
            if len(packed) < len(plain) and len(plain) <= self.max_decompressed:
                plain, compression = packed, b"zlib"
                self.stats.compressed += 1
        entry, wrapped = await self._encryption_key(key)
        key_name = key.encode()
        wid = workflow_id.encode()
        nonce = os.urandom(NONCE_BYTES)
        out = bytearray(NONCE_BYTES + len(plain) + TAG_BYTES)
        out[:NONCE_BYTES] = nonce
        kind = activity_type.encode()
        way = direction.encode()
        aad = _aad(ENVELOPE_FORMAT, key_name, compression, wid, kind, way)
        entry.key.encrypt_into(nonce, plain, aad, memoryview(out)[NONCE_BYTES:])
        self.stats.encoded += 1
        return Payload(
            metadata={
                META_ENCODING: ENCODING,
                META_KEY_ID: key_name,
                META_FORMAT: ENVELOPE_FORMAT,
                META_WRAPPED_KEY: wrapped,
                META_COMPRESSION: compression,
                META_WORKFLOW_ID: wid,
                META_ACTIVITY_TYPE: kind,
                META_DIRECTION: way,
            },
            data=bytes(out),
        )

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        with CODEC_SECONDS.labels("decode").time():
            scope = self.scope()
            if self.refuse_softly and isinstance(self.context, ActivitySerializationContext):
                return [await self._decode_or_refuse(p, scope) for p in payloads]
            decoded = [await self._decode_one(p, scope) for p in payloads]
            return decoded

    async def _decode_or_refuse(self, payload: Payload, scope: PayloadScope | None) -> Payload:
        """The workflow side's decode of an activity's payload: a refusal becomes a marker
        payload (:mod:`orders_shared.refused`) the workflow treats as a failed attempt, so
        an answer that is not the service's cannot wedge the workflow task. Vault being
        away (:class:`TransitUnavailable`) still raises: the task is retried, as it should."""
        try:
            return await self._decode_one(payload, scope)
        except PayloadDecodeError as exc:
            self.stats.refused += 1
            return refused_payload(exc.cause, str(exc))

    def _check_key(self, fmt: bytes, key_name: bytes, scope: PayloadScope | None) -> None:
        name = key_name.decode(errors="replace")
        if fmt == LEGACY_ENVELOPE_FORMAT:
            if scope is not None:
                # bound to no workflow: inside a workflow or an activity it could be any
                # order's input or result, so a worker never acts on one
                raise PayloadContextError(
                    "legacy-refused",
                    f"format {LEGACY_ENVELOPE_FORMAT.decode()!r} (one key for every service, "
                    f"bound to no workflow) is never accepted by a worker, here for "
                    f"{scope.what}: a replayed pre-upgrade payload, or a workflow started "
                    f"before the upgrade; read or rewrap old history as the runbook "
                    f"{LEGACY_RUNBOOK} says",
                )
            if not self.accept_legacy:
                raise PayloadDecodeError(
                    "legacy-refused",
                    f"format {LEGACY_ENVELOPE_FORMAT.decode()!r} (one key for every service, "
                    f"written before per-service keys) is read only by the codec server and "
                    f"operator commands started with {ACCEPT_LEGACY_ENV}=true (runbook "
                    f"{LEGACY_RUNBOOK})",
                )
            if name != LEGACY_PAYLOAD_KEY:
                raise PayloadDecodeError(
                    "unknown-key",
                    f"a {LEGACY_ENVELOPE_FORMAT.decode()!r} payload must be under "
                    f"{LEGACY_PAYLOAD_KEY}, not {key_name[:60]!r}",
                )
            return
        if scope is not None:
            if name != scope.key_name:
                raise PayloadContextError(
                    "wrong-key",
                    f"payloads of {scope.what} must be under {scope.key_name}, this one is "
                    f"under {key_name[:60]!r}: written by another service's identity, refused",
                )
            return
        if name not in self.decrypt_keys:
            raise PayloadDecodeError(
                "unknown-key",
                f"encryption-key-id {key_name[:60]!r} is not a payload key this codec "
                f"accepts ({', '.join(sorted(self.decrypt_keys))})",
            )

    @staticmethod
    def _check_activity(kind: bytes, way: bytes, scope: PayloadScope | None) -> None:
        """``orders-envelope/3`` inside an activity context: the payload must be of this
        activity type and of the direction this side reads."""
        if scope is None or not scope.reads:
            return
        if kind != scope.activity_type.encode():
            raise PayloadContextError(
                "wrong-activity",
                f"the payload belongs to activity {kind[:80].decode(errors='replace')!r}, "
                f"not {scope.activity_type!r}: another activity's payload, refused",
            )
        if way != scope.reads.encode():
            raise PayloadContextError(
                "wrong-direction",
                f"the payload is an activity {way[:20].decode(errors='replace')!r}, but here "
                f"an activity {scope.reads} is read ({scope.what}): an input offered as a "
                "result or the reverse, refused",
            )

    async def _decode_one(self, payload: Payload, scope: PayloadScope | None) -> Payload:
        if not is_encrypted(payload):
            if self.allow_plaintext:
                self.stats.passed_through += 1
                return payload
            raise PayloadDecodeError(
                "not-encrypted",
                "the payload is not encrypted and this codec refuses plain payloads "
                "(allow_plaintext=False); start workflows through a client with the "
                "payload codec",
            )
        fmt = _meta(payload, META_FORMAT)
        if fmt not in (ENVELOPE_FORMAT, V2_ENVELOPE_FORMAT, LEGACY_ENVELOPE_FORMAT):
            raise PayloadDecodeError(
                "unknown-format",
                f"format {fmt[:40]!r} is not {ENVELOPE_FORMAT.decode()!r} (a payload from "
                "another codec configuration?)",
            )
        key_name = _meta(payload, META_KEY_ID)
        self._check_key(fmt, key_name, scope)
        wrapped = _meta(payload, META_WRAPPED_KEY)
        compression = _meta(payload, META_COMPRESSION)
        if compression not in (b"none", b"zlib"):
            raise PayloadDecodeError(
                "unknown-compression", f"compression {compression[:20]!r} is not none or zlib"
            )
        if fmt in (ENVELOPE_FORMAT, V2_ENVELOPE_FORMAT):
            wid = _meta(payload, META_WORKFLOW_ID)
            if scope is not None and scope.workflow_id and wid != scope.workflow_id.encode():
                raise PayloadContextError(
                    "wrong-workflow",
                    f"the payload belongs to workflow {wid[:200].decode(errors='replace')!r}, "
                    f"not {scope.workflow_id!r}: copied from another workflow, refused",
                )
            if fmt == ENVELOPE_FORMAT:
                kind = _meta(payload, META_ACTIVITY_TYPE)
                way = _meta(payload, META_DIRECTION)
                self._check_activity(kind, way, scope)
                aad = _aad(fmt, key_name, compression, wid, kind, way)
            else:
                aad = _aad(fmt, key_name, compression, wid)
        else:
            aad = _aad(fmt, key_name, compression)
        parse_wrapped_key(wrapped)
        data = payload.data
        if len(data) < NONCE_BYTES + TAG_BYTES:
            raise PayloadDecodeError(
                "truncated", f"{len(data)} bytes is shorter than a nonce and a tag"
            )
        entry = await self._decryption_key(key_name, wrapped)
        try:
            # a view, not a slice: no copy of the ciphertext
            plain = entry.key.decrypt(data[:NONCE_BYTES], memoryview(data)[NONCE_BYTES:], aad)
        except InvalidTag:
            raise PayloadDecodeError(
                "authentication-failed",
                "AES-GCM authentication failed: the ciphertext or its metadata was altered "
                "or truncated",
            ) from None
        if compression == b"zlib":
            plain = bounded_inflate(plain, self.max_decompressed)
        CODEC_BYTES.labels("decode").inc(len(plain))
        inner = Payload()
        try:
            inner.ParseFromString(plain)
        except DecodeError:
            raise PayloadDecodeError("corrupt", "decrypted content is not a payload") from None
        if fmt == LEGACY_ENVELOPE_FORMAT:
            self.stats.legacy += 1
        self.stats.decoded += 1
        return inner


# --------------------------------------------------------------------------- per-call codec


class TransitPerCallCodec(PayloadCodec):
    """One Transit ``encrypt``/``decrypt`` call per payload, no envelope, no cache.

    The ``per-call`` benchmark configuration. Same metadata conventions; the
    data is the Transit ciphertext itself (``vault:vN:...``).
    """

    def __init__(
        self,
        transit: TransitClient,
        *,
        key_name: str = PAYLOAD_KEY,
        allow_plaintext: bool = False,
    ) -> None:
        self.transit = transit
        self.key_name = key_name
        self.allow_plaintext = allow_plaintext
        self.stats = CodecStats()

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for payload in payloads:
            self.stats.vault_calls += 1
            self.stats.transit_encrypts += 1
            ciphertext = await self.transit.encrypt(self.key_name, payload.SerializeToString())
            self.stats.encoded += 1
            out.append(
                Payload(
                    metadata={
                        META_ENCODING: ENCODING,
                        META_KEY_ID: self.key_name.encode(),
                        META_FORMAT: PER_CALL_FORMAT,
                    },
                    data=ciphertext.encode(),
                )
            )
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for payload in payloads:
            if not is_encrypted(payload):
                if not self.allow_plaintext:
                    raise PayloadDecodeError(
                        "not-encrypted",
                        "the payload is not encrypted and this codec refuses plain payloads",
                    )
                self.stats.passed_through += 1
                out.append(payload)
                continue
            if _meta(payload, META_FORMAT) != PER_CALL_FORMAT:
                raise PayloadDecodeError(
                    "unknown-format", f"format is not {PER_CALL_FORMAT.decode()!r}"
                )
            if _meta(payload, META_KEY_ID) != self.key_name.encode():
                raise PayloadDecodeError("unknown-key", "encryption-key-id is not accepted")
            parse_wrapped_key(payload.data)
            self.stats.vault_calls += 1
            self.stats.transit_decrypts += 1
            try:
                plain = await self.transit.decrypt(self.key_name, payload.data.decode())
            except (TransitDenied, TransitRejected) as exc:
                raise _transit_failure(exc, "decrypt the payload") from None
            inner = Payload()
            try:
                inner.ParseFromString(plain)
            except DecodeError:
                raise PayloadDecodeError("corrupt", "decrypted content is not a payload") from None
            self.stats.decoded += 1
            out.append(inner)
        return out


# --------------------------------------------------------------------------- converter

CodecMode = Literal["secured", "per-call", "plain"]
CODEC_MODES: tuple[CodecMode, ...] = ("secured", "per-call", "plain")


def make_codec(
    transit: TransitClient, mode: CodecMode = "secured", **options: Any
) -> TransitEnvelopeCodec | TransitPerCallCodec | None:
    """The codec for a benchmark configuration (``plain``: none)."""
    if mode == "secured":
        return TransitEnvelopeCodec(transit, **options)
    if mode == "per-call":
        return TransitPerCallCodec(transit, **options)
    if mode == "plain":
        return None
    raise ValueError(f"unknown codec mode {mode!r}; use one of {', '.join(CODEC_MODES)}")


def data_converter(
    transit: TransitClient,
    *,
    mode: CodecMode = "secured",
    workflow_side: bool = False,
    **options: Any,
) -> DataConverter:
    """The data converter for clients and workers: payloads *and* failures encrypted.

    ``Client.connect(address, namespace=ns, data_converter=data_converter(VaultTransit(session)))``.
    Failure messages and stack traces, and the failure's type and ``non_retryable``,
    are moved into an encrypted payload (``encode_common_attributes``,
    :class:`orders_shared.outcomes.OutcomeFailureConverter`); on the workflow side an
    activity failure whose clear type is not what that payload says is
    ``UnauthenticatedOutcome``. ``options`` go to the codec
    (:class:`TransitEnvelopeCodec` or :class:`TransitPerCallCodec`).

    The SDK calls ``DataConverter.with_context`` for every workflow activation
    and activity task, which hands the envelope codec its serialization context
    (:meth:`TransitEnvelopeCodec.with_context`); failures are encoded through
    the same contextual codec (``DataConverter.encode_failure``), so an
    activity's failure is under its service's key like its result.

    ``workflow_side`` (the orchestrator, which runs the workflow): an activity payload
    that is refused (not its service's, legacy, plain, corrupt, not the result type)
    reaches the workflow as a :class:`orders_shared.refused.RefusedResult` instead of
    failing the workflow task forever (see :mod:`orders_shared.refused`).
    """
    if workflow_side and mode == "secured":
        options.setdefault("refuse_softly", True)
        options.setdefault("workflow_side", True)
    codec = make_codec(transit, mode, **options)
    converter_class = WorkflowSidePayloadConverter if workflow_side else None
    if codec is None:
        if converter_class is None:
            return DataConverter.default
        return DataConverter(payload_converter_class=converter_class)
    return DataConverter(
        payload_codec=codec,
        payload_converter_class=converter_class or DataConverter.default.payload_converter_class,
        # type and non_retryable inside the encrypted attributes; the workflow side acts
        # on an activity failure only when they match (orders_shared.outcomes)
        failure_converter_class=(
            WorkflowSideFailureConverter if workflow_side else OutcomeFailureConverter
        ),
    )


def codec_stats(converter: DataConverter) -> CodecStats | None:
    """The counters of a converter built by :func:`data_converter` (None for plain)."""
    codec = converter.payload_codec
    stats = getattr(codec, "stats", None)
    return stats if isinstance(stats, CodecStats) else None


# --------------------------------------------------------------------------- rewrap


def rewrap_need(key_name: str) -> str:
    """What a token needs to rewrap payloads under ``key_name`` (for error messages)."""
    return (
        f"Rewrap needs an operator token with update on transit/rewrap/{key_name} "
        "(no worker or reader policy grants it)"
    )


async def rewrap_payload(payload: Payload, transit: TransitClient) -> Payload | None:
    """The payload with its wrapped data key rewrapped to the key's latest version.

    Only the wrapped key changes (Transit ``rewrap``: the plaintext key never
    leaves Vault, the data is not touched). ``None`` when the payload is not an
    envelope (plain, or per-call format, which would need re-encryption).
    Transit always returns a new ciphertext, also when the key version stays the
    same: compare :func:`parse_wrapped_key` versions to see whether it moved.
    """
    if not is_encrypted(payload) or payload.metadata.get(META_FORMAT) not in (
        ENVELOPE_FORMAT,
        V2_ENVELOPE_FORMAT,
        LEGACY_ENVELOPE_FORMAT,
    ):
        return None
    key_name = _meta(payload, META_KEY_ID).decode(errors="replace")
    wrapped = _meta(payload, META_WRAPPED_KEY)
    parse_wrapped_key(wrapped)
    try:
        fresh = await transit.rewrap(key_name, wrapped.decode())
    except (TransitDenied, TransitRejected) as exc:
        raise _transit_failure(
            exc, "rewrap the payload's data key", need=rewrap_need(key_name)
        ) from None
    out = Payload()
    out.CopyFrom(payload)
    out.metadata[META_WRAPPED_KEY] = fresh.encode()
    return out


@dataclasses.dataclass
class RewrapReport:
    payloads: int = 0
    rewrapped: int = 0  # moved to a newer key version
    unchanged: int = 0  # already on the key's latest version
    skipped: int = 0  # not an envelope payload


def _key_version(payload: Payload) -> int:
    return parse_wrapped_key(payload.metadata[META_WRAPPED_KEY])[0]


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _payload_from_json(obj: Mapping[str, Any]) -> Payload:
    metadata = obj.get("metadata") or {}
    return Payload(
        metadata={k: base64.b64decode(v) for k, v in metadata.items()},
        data=base64.b64decode(obj.get("data") or ""),
    )


def _looks_like_payload(obj: Mapping[str, Any]) -> bool:
    meta = obj.get("metadata")
    return isinstance(meta, dict) and "encoding" in meta and set(obj) <= {"metadata", "data"}


async def rewrap_history_json(
    history: Any, transit: TransitClient, report: RewrapReport | None = None
) -> RewrapReport:
    """Rewrap, in place, every envelope payload in a JSON document (e.g. the output of
    ``temporal workflow show -o json``, proto3 JSON: base64 metadata and data).

    For data stored *outside* Temporal. Temporal's own history cannot be rewritten.
    """
    report = report or RewrapReport()

    async def walk(node: Any) -> None:
        if isinstance(node, dict):
            if _looks_like_payload(node):
                report.payloads += 1
                payload = _payload_from_json(node)
                fresh = await rewrap_payload(payload, transit)
                if fresh is None:
                    report.skipped += 1
                elif _key_version(fresh) <= _key_version(payload):
                    # Transit re-encrypts under the same version: keep the original bytes
                    report.unchanged += 1
                else:
                    report.rewrapped += 1
                    node["metadata"][META_WRAPPED_KEY] = _b64(fresh.metadata[META_WRAPPED_KEY])
                return
            for value in node.values():
                await walk(value)
        elif isinstance(node, list):
            for value in node:
                await walk(value)

    await walk(history)
    return report


# --------------------------------------------------------------------------- in memory


class InMemoryTransit:
    """A :class:`TransitClient` that behaves like Vault's Transit (key versions, rotation,
    ``min_decryption_version``, strict ciphertext checks, rewrap), with keys in process
    memory. For unit tests and offline codec benchmarks only, never for real data.
    """

    def __init__(self, *key_names: str) -> None:
        self._keys: dict[str, list[bytes]] = {}
        self._min_version: dict[str, int] = {}
        self.denied: set[tuple[str, str]] = set()  # (operation, key name) answered with 403
        self.calls = 0
        for name in key_names or (PAYLOAD_KEY, *payload_keys()):
            self.create_key(name)

    def create_key(self, name: str) -> None:
        self._keys[name] = [AESGCM.generate_key(bit_length=256)]
        self._min_version[name] = 1

    def rotate(self, name: str) -> int:
        self._keys[name].append(AESGCM.generate_key(bit_length=256))
        return len(self._keys[name])

    def set_min_decryption_version(self, name: str, version: int) -> None:
        self._min_version[name] = version

    def _check(self, op: str, name: str) -> list[bytes]:
        self.calls += 1
        if (op, name) in self.denied:
            raise TransitDenied(f"Vault refused {op} (403: permission denied)")
        if name not in self._keys:
            raise TransitRejected("encryption key not found")
        return self._keys[name]

    def _seal(self, name: str, plaintext: bytes, context: bytes | None = None) -> str:
        versions = self._keys[name]
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(versions[-1]).encrypt(nonce, plaintext, context)
        return f"vault:v{len(versions)}:{base64.b64encode(nonce + sealed).decode()}"

    def _open(self, name: str, ciphertext: str, context: bytes | None = None) -> bytes:
        versions = self._keys[name]
        match = _WRAPPED_RE.fullmatch(ciphertext.encode(errors="replace"))
        if match is None:
            raise TransitRejected("invalid ciphertext: no prefix")
        version = int(match.group(1))
        if version > len(versions):
            raise TransitRejected("invalid ciphertext: version is too new")
        if version < self._min_version[name]:
            raise TransitRejected(
                "ciphertext or signature version is disallowed by policy (too old)"
            )
        try:
            raw = base64.b64decode(match.group(2), validate=True)
            return AESGCM(versions[version - 1]).decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], context
            )
        except (binascii.Error, ValueError, InvalidTag):
            raise TransitRejected("cipher: message authentication failed") from None

    async def datakey(self, key_name: str) -> tuple[bytes, str]:
        self._check("datakey", key_name)
        key = os.urandom(DATA_KEY_BYTES)
        return key, self._seal(key_name, key)

    async def decrypt(self, key_name: str, ciphertext: str, context: bytes | None = None) -> bytes:
        self._check("decrypt", key_name)
        return self._open(key_name, ciphertext, context)

    async def encrypt(self, key_name: str, plaintext: bytes, context: bytes | None = None) -> str:
        self._check("encrypt", key_name)
        return self._seal(key_name, plaintext, context)

    async def rewrap(self, key_name: str, ciphertext: str) -> str:
        self._check("rewrap", key_name)
        return self._seal(key_name, self._open(key_name, ciphertext))
