"""The codec server: ``/encode`` and ``/decode`` as Temporal's UI and CLI call them.

Protocol (Temporal's remote codec): ``POST <endpoint>/decode`` (or ``/encode``)
with ``Content-Type: application/json`` and a body ``{"payloads": [...]}`` in
proto3 JSON (``metadata`` values and ``data`` base64); the answer has the same
shape. The UI calls it *from the browser*, appends ``?preserveStorageRefs=true``
(ignored here) and sends ``X-Namespace``; it first sends a CORS preflight
(``OPTIONS`` asking for ``content-type,x-namespace`` and, with UI auth,
``authorization``). The CLI calls it with ``--codec-endpoint`` and, with
``--codec-auth "Bearer <token>"``, an ``Authorization`` header.

Authorisation is the caller's own. The server holds no decrypt rights: every
request carries a bearer token that is either

* a Vault token (the CLI: ``--codec-auth "Bearer $(bao print token)"``), checked
  with Vault (``auth/token/lookup-self``) and then used as is, or
* a user's OIDC identity token (a JWT; the UI with OIDC login), exchanged at
  Vault's JWT auth mount for people (``oidc-readers``, role ``payload-reader``,
  bound to the reader group) for a short-lived Vault token,

and the payloads are decrypted with *that* token, so Vault policy decides.
Nothing is done for a caller before Vault accepted its token: no token: 401; a
token Vault does not accept: 401; a user outside the reader group or a token
Vault refuses decryption: 403. (The ``temporal`` CLI never shows a refused decode's
body, so it gets the refusal as text in place of the payloads: :func:`from_go_cli`.)
Verified callers are cached (at most
``max_callers``, each until the earlier of its JWT's ``exp``, its Vault token's
lease and ``caller_seconds``), each with its own codec: data keys unwrapped for
one caller never serve another. Failed logins are counted per client address;
past ``failed_logins`` a minute the address gets 429 without Vault being asked.

Every request is bounded (all configurable, see :class:`ServerConfig`): body
size, JSON values, payload count, Vault calls, total decoded size, response
size, time to send headers and body, and requests in progress per process.
Past a bound the answer is a 4xx/503 with a fixed message naming the limit and
its setting; every request writes exactly one log line (client errors at info).

Local mode (``--local``, off by default) serves the dev server's UI, which
sends no token: requests without one act as a *named* reader identity, whose
identity token (from ``orders-identity mint-user``) the server exchanges like a
user's. It refuses to start unless bound to loopback, answers only requests
whose ``Host`` is exactly the loopback address and port it serves (no DNS
rebinding), and serves callers without a token only under a secret path prefix
(``/<secret>/decode``, the secret read from ``--local-secret-file``, given to the
UI as its codec endpoint), and logs the identity it acts as at start.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import re
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web, web_protocol, web_server
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from orders_shared.codec import (
    ENCODING,
    META_ENCODING,
    META_FORMAT,
    META_WRAPPED_KEY,
    PAYLOAD_KEY,
    PER_CALL_FORMAT,
    TRANSIT_MOUNT,
    WORKFLOW_PAYLOAD_KEY,
    PayloadAccessDenied,
    PayloadDecodeError,
    TokenTransit,
    TransitDenied,
    TransitEnvelopeCodec,
    TransitPerCallCodec,
    TransitUnavailable,
    legacy_reading_enabled,
)
from orders_shared.metrics import CODEC_SERVER_REQUESTS, exposition

log = structlog.get_logger("orders_codec_server")

QUIET_PATHS = frozenset({"/healthz", "/metrics"})  # a success there writes no log line

DEFAULT_PORT = 8081
MIB = 1024 * 1024
DEFAULT_MAX_BODY = 4 * MIB
DEFAULT_MAX_PAYLOADS = 1000
DEFAULT_MAX_VAULT_CALLS = 100
DEFAULT_MAX_DECODED = 4 * MIB
DEFAULT_MAX_RESPONSE = 8 * MIB
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 20.0
DEFAULT_MAX_CONCURRENT = 4
DEFAULT_MAX_QUEUED = 32
DEFAULT_MAX_CALLERS = 256
DEFAULT_CALLER_SECONDS = 300.0
DEFAULT_FAILED_LOGINS = 10
FAILED_LOGIN_WINDOW = 60.0
MAX_TRACKED_ADDRESSES = 4096
JSON_VALUES_PER_PAYLOAD = 16
CACHE_SECONDS = 60.0
LINGER_SECONDS = 1.0
ALLOWED_HEADERS = "content-type,x-namespace,authorization"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}|[A-Za-z0-9_-]*={0,2}")


class ConfigurationError(ValueError):
    """The server cannot start as configured; the message names the setting and the fix."""


class HttpError(Exception):
    """An answer with a fixed message (never quoting a header or a credential)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class ServerConfig:
    """Every bound has a default sized for the chart's 192 MiB memory limit:
    ``max_concurrent`` requests, each holding at most ``max_body`` of input and
    ``max_decoded_bytes`` / ``max_response_bytes`` of output (plus Python's copies)."""

    vault_addr: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    cors_origins: tuple[str, ...] = ()
    cors_allow_credentials: bool = False
    reader_mount: str = "oidc-readers"
    reader_role: str = "payload-reader"
    transit_mount: str = TRANSIT_MOUNT
    # /encode writes under the workflow key (nobody may create data keys of the old
    # single key any more); decode reads whatever key each payload names
    key_name: str = WORKFLOW_PAYLOAD_KEY
    max_body: int = DEFAULT_MAX_BODY
    max_payloads: int = DEFAULT_MAX_PAYLOADS
    max_vault_calls: int = DEFAULT_MAX_VAULT_CALLS
    max_decoded_bytes: int = DEFAULT_MAX_DECODED
    max_response_bytes: int = DEFAULT_MAX_RESPONSE
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    max_queued: int = DEFAULT_MAX_QUEUED
    max_callers: int = DEFAULT_MAX_CALLERS
    caller_seconds: float = DEFAULT_CALLER_SECONDS
    failed_logins: int = DEFAULT_FAILED_LOGINS
    trusted_proxy_hops: int = 0
    local_mode: bool = False
    local_reader_token_file: Path | None = None
    local_secret_file: Path | None = None

    def check(self) -> None:
        if not self.vault_addr.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"VAULT_ADDR={self.vault_addr!r} must start with http:// or https://"
            )
        for origin in self.cors_origins:
            if origin == "*" or not origin.startswith(("http://", "https://")):
                raise ConfigurationError(
                    f"CORS origin {origin!r} must be a full origin like http://127.0.0.1:8233 "
                    "(no '*': the server answers with the caller's rights)"
                )
        for name in (
            "max_body",
            "max_payloads",
            "max_vault_calls",
            "max_decoded_bytes",
            "max_response_bytes",
            "header_timeout",
            "body_timeout",
            "max_concurrent",
            "max_callers",
            "caller_seconds",
            "failed_logins",
        ):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be positive, not {getattr(self, name)}")
        for name in ("max_queued", "trusted_proxy_hops"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{name} must be 0 or more, not {getattr(self, name)}")
        if self.local_mode:
            if not is_loopback(self.host):
                raise ConfigurationError(
                    f"local mode acts as a reader for callers without a token, so it only "
                    f"binds to loopback: --host {self.host!r} is not (use 127.0.0.1)"
                )
            if self.local_reader_token_file is None:
                raise ConfigurationError(
                    "local mode needs the reader identity it acts as: "
                    "--local-reader-token-file (a token from 'orders-identity mint-user')"
                )
            if self.local_secret_file is None:
                raise ConfigurationError(
                    "local mode needs --local-secret-file: a file holding the secret path "
                    "prefix only the Temporal UI's codec endpoint knows (orders-stack writes it)"
                )

    @property
    def authority(self) -> str:
        """The ``Host`` header a local-mode request must carry."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _b64decode_json(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def looks_like_jwt(token: str) -> bool:
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        return False
    try:
        header = _b64decode_json(parts[0])
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and "alg" in header


def unverified_claims(jwt: str) -> dict[str, Any]:
    """For naming and expiring a token *after* Vault accepted it; never for decisions."""
    try:
        claims = _b64decode_json(jwt.split(".")[1])
    except (IndexError, ValueError, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def read_secret_file(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


# --------------------------------------------------------------------------- callers


@dataclass
class Caller:
    """A caller Vault accepted, with its own codecs (never shared with another caller)."""

    vault_token: str
    kind: str  # vault-token | oidc | local
    reader: str | None
    expires: float  # time.monotonic()
    transit: TokenTransit | None = None
    envelope: TransitEnvelopeCodec | None = None
    per_call: TransitPerCallCodec | None = None

    def codecs(self, config: ServerConfig) -> tuple[TransitEnvelopeCodec, TransitPerCallCodec]:
        if self.envelope is None or self.per_call is None:
            self.transit = TokenTransit(
                config.vault_addr, self.vault_token, mount=config.transit_mount
            )
            self.envelope = TransitEnvelopeCodec(
                self.transit,
                key_name=config.key_name,
                allow_plaintext=True,
                max_key_age=CACHE_SECONDS,
                # old history only when the operator says so (ORDERS_CODEC_ACCEPT_LEGACY)
                accept_legacy=legacy_reading_enabled(),
            )
            # the per-call format exists only for the benchmark's per-call configuration,
            # which encrypts under the single pre-per-service key
            self.per_call = TransitPerCallCodec(
                self.transit, key_name=PAYLOAD_KEY, allow_plaintext=True
            )
        return self.envelope, self.per_call

    def close(self) -> None:
        if self.transit is not None:
            self.transit.close()
            self.transit = None


class CallerCache:
    """Verified callers only, at most ``size``, each until its ``expires`` (LRU beyond)."""

    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self._clock = clock
        self._entries: OrderedDict[str, Caller] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Caller | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            self._entries.pop(key).close()
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: Caller) -> None:
        old = self._entries.pop(key, None)
        if old is not None and old is not entry:
            old.close()
        self._entries[key] = entry
        while len(self._entries) > self.size:
            _, evicted = self._entries.popitem(last=False)
            evicted.close()

    def close(self) -> None:
        for entry in self._entries.values():
            entry.close()
        self._entries.clear()


class FailedLogins:
    """Failed logins per client address in a sliding window (bounded number of addresses)."""

    def __init__(
        self,
        limit: int,
        window: float = FAILED_LOGIN_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str) -> deque[float]:
        now = self._clock()
        times = self._seen.get(address)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def check(self, address: str) -> None:
        times = self._recent(address)
        if len(times) >= self.limit:
            wait = max(1, int(times[0] + self.window - self._clock()) + 1)
            raise HttpError(
                429,
                f"too many failed logins from this address ({self.limit} a minute, "
                f"ORDERS_CODEC_FAILED_LOGINS); try again in {wait} s",
                {"Retry-After": str(wait)},
            )

    def failed(self, address: str) -> None:
        times = self._recent(address)
        times.append(self._clock())
        self._seen[address] = times
        self._seen.move_to_end(address)
        while len(self._seen) > MAX_TRACKED_ADDRESSES:
            self._seen.popitem(last=False)

    def forgive(self, address: str) -> None:
        """Undo one :meth:`failed` (an attempt counted in advance that succeeded)."""
        times = self._seen.get(address)
        if times:
            times.pop()


def client_address(request: web.Request, trusted_hops: int) -> str:
    """The caller's address for rate limiting: the peer, or behind ``trusted_hops``
    proxies (an ingress controller) the ``X-Forwarded-For`` entry the outermost trusted
    proxy added (entries left of it are the client's own claims, never trusted)."""
    if trusted_hops > 0:
        hops = [
            h.strip()
            for line in request.headers.getall("X-Forwarded-For", [])
            for h in line.split(",")
        ]
        if len(hops) >= trusted_hops and hops[-trusted_hops]:
            return hops[-trusted_hops][:64]
    return request.remote or "unknown"


class Authorizer:
    """Turns a request's bearer token into a caller Vault accepted."""

    def __init__(self, config: ServerConfig, http: aiohttp.ClientSession) -> None:
        self.config = config
        self.http = http
        self.callers = CallerCache(config.max_callers)
        self.failures = FailedLogins(config.failed_logins)
        self.exchanges = 0
        self.lookups = 0
        self._pending: dict[str, asyncio.Future[Caller]] = {}

    async def _once(self, key: str, verify: Callable[[], Awaitable[Caller]]) -> Caller:
        """One Vault check per token at a time: concurrent requests with the same new token
        (the UI sends several at once) share it, so Vault issues one token, not one each."""
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Caller] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            caller = await verify()
            self.callers.put(key, caller)
            future.set_result(caller)
            return caller
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody warns
            raise
        finally:
            del self._pending[key]

    def _expiry(self, lease: float, jwt_exp: Any = None) -> float:
        now = time.monotonic()
        ends = [now + self.config.caller_seconds]
        if lease > 0:
            ends.append(now + lease)
        if isinstance(jwt_exp, int | float):
            ends.append(now + (float(jwt_exp) - time.time()))
        return min(ends)

    async def _vault(self, method: str, path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        url = f"{self.config.vault_addr}/v1/{path}"
        try:
            async with self.http.request(method, url, **kw) as resp:
                body = await resp.json(content_type=None)
                return resp.status, body if isinstance(body, dict) else {}
        except (aiohttp.ClientError, TimeoutError, ValueError):
            raise HttpError(503, "Vault is not answering; try again") from None

    async def exchange(self, jwt: str, kind: str = "oidc") -> Caller:
        """A short-lived Vault token for a user's identity token."""
        status, body = await self._vault(
            "POST",
            f"auth/{self.config.reader_mount}/login",
            json={"role": self.config.reader_role, "jwt": jwt},
        )
        if status != 200:
            errors = " ".join(str(e) for e in body.get("errors") or [])
            if status >= 500:
                raise HttpError(503, "Vault could not check the identity token; try again")
            if "claim" in errors and "validating claims" in errors:
                raise HttpError(
                    403,
                    f"Vault refused the identity token for role {self.config.reader_role}: "
                    "the user is not in the payload reader group",
                )
            raise HttpError(
                401,
                "Vault refused the identity token (signature, issuer, audience or expiry); "
                "get a new one from your identity provider",
            )
        auth = body.get("auth") or {}
        claims = unverified_claims(jwt)
        reader = str(claims.get("sub") or (auth.get("metadata") or {}).get("role"))
        lease = float(auth.get("lease_duration") or 0)
        self.exchanges += 1
        log.info(
            "codec.identity_exchanged",
            reader=reader,
            mount=self.config.reader_mount,
            policies=auth.get("token_policies"),
            ttl=lease,
        )
        return Caller(
            str(auth["client_token"]), kind, reader, self._expiry(lease, claims.get("exp"))
        )

    async def lookup(self, token: str) -> Caller:
        """A Vault token, checked with Vault itself (``auth/token/lookup-self``)."""
        status, body = await self._vault(
            "GET", "auth/token/lookup-self", headers={"X-Vault-Token": token}
        )
        if status >= 500:
            raise HttpError(503, "Vault could not check the token; try again")
        if status == 200:
            data = body.get("data") or {}
            self.lookups += 1
            ttl = float(data.get("ttl") or 0)
            name = str(data.get("display_name") or "")
            return Caller(token, "vault-token", name, self._expiry(ttl))
        # A token without the default policy (a payload reader's) may not look itself up.
        # Ask Vault to decrypt a malformed ciphertext with it: a token Vault accepts, with
        # decrypt rights on the payload key, gets 400 (bad ciphertext); any other gets 403.
        # Its lease is then unknown: it is cached for at most caller_seconds.
        status, _ = await self._vault(
            "POST",
            f"{self.config.transit_mount}/decrypt/{self.config.key_name}",
            headers={"X-Vault-Token": token},
            json={"ciphertext": "vault:v1:AAAA"},
        )
        if status >= 500:
            raise HttpError(503, "Vault could not check the token; try again")
        if status != 400:
            raise HttpError(
                401,
                "Vault does not accept this token (unknown, expired or revoked), or it may "
                "neither look itself up nor decrypt payloads: send a valid Vault token or "
                "OIDC identity token",
            )
        self.lookups += 1
        return Caller(token, "vault-token", None, self._expiry(0))

    async def local_identity(self) -> Caller:
        path = self.config.local_reader_token_file
        assert path is not None
        jwt = read_secret_file(path)
        if not jwt:
            raise HttpError(
                503,
                "local mode: the reader token file cannot be read; mint one with "
                "'orders-identity mint-user <name> > <file>'",
            )
        key = "local:" + _digest(jwt)
        hit = self.callers.get(key)
        if hit is not None:
            return hit
        return await self._once(key, lambda: self.exchange(jwt, kind="local"))

    async def caller(self, request: web.Request, *, via_secret: bool) -> Caller:
        header = request.headers.get("Authorization", "").strip()
        if not header:
            if self.config.local_mode and via_secret:
                return await self.local_identity()
            if self.config.local_mode:
                raise HttpError(
                    401,
                    "no Authorization header: in local mode, callers without a token use the "
                    "endpoint the stack gave the Temporal UI (orders-stack env prints it as "
                    "TEMPORAL_CODEC_ENDPOINT)",
                )
            raise HttpError(
                401,
                "no Authorization header: send 'Authorization: Bearer <Vault token or OIDC "
                "identity token>' (temporal CLI: --codec-auth 'Bearer <token>')",
            )
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise HttpError(401, "the Authorization header must be 'Bearer <token>'")
        key = _digest(token)
        hit = self.callers.get(key)
        if hit is not None:
            return hit
        if key in self._pending:
            return await self._once(key, self.lookup_or_exchange(token))
        address = client_address(request, self.config.trusted_proxy_hops)
        self.failures.check(address)
        # counted as failed until Vault accepts it, so concurrent attempts count too
        self.failures.failed(address)
        try:
            caller = await self._once(key, self.lookup_or_exchange(token))
        except HttpError as exc:
            if exc.status not in (401, 403):  # Vault down or busy: not the caller's fault
                self.failures.forgive(address)
            raise
        self.failures.forgive(address)
        return caller

    def lookup_or_exchange(self, token: str) -> Callable[[], Awaitable[Caller]]:
        return lambda: self.exchange(token) if looks_like_jwt(token) else self.lookup(token)

    def close(self) -> None:
        self.callers.close()


# --------------------------------------------------------------------------- request bounds


class Gate:
    """At most ``active`` requests in progress, ``queued`` more waiting; 503 beyond."""

    def __init__(self, active: int, queued: int, wait: float) -> None:
        self.active = active
        self.queued = queued
        self.wait = wait
        self.in_progress = 0
        self.waiting = 0
        self._semaphore = asyncio.Semaphore(active)

    async def __aenter__(self) -> None:
        if self._semaphore.locked() and self.waiting >= self.queued:
            raise self._busy()
        self.waiting += 1
        try:
            async with asyncio.timeout(self.wait):
                await self._semaphore.acquire()
        except TimeoutError:
            raise self._busy() from None
        finally:
            self.waiting -= 1
        self.in_progress += 1

    async def __aexit__(self, *_exc: object) -> None:
        self.in_progress -= 1
        self._semaphore.release()

    def _busy(self) -> HttpError:
        return HttpError(
            503,
            f"busy: {self.active} requests in progress and {self.queued} waiting "
            "(ORDERS_CODEC_MAX_CONCURRENT / ORDERS_CODEC_MAX_QUEUED); try again",
            {"Retry-After": "1"},
        )


def _b64_len(n: int) -> int:
    return 4 * ((n + 2) // 3)


def _json_size(payload: Payload) -> int:
    """About the size of ``payload`` in the proto3 JSON answer (checked exactly at the end)."""
    size = 30 + _b64_len(len(payload.data))
    for key, value in payload.metadata.items():
        size += len(key) + 8 + _b64_len(len(value))
    return size


class Budget:
    """Running totals of one request's output against its limits."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.decoded = 0
        self.response = 0

    def add(self, payloads: Iterable[Payload], index: int) -> None:
        for payload in payloads:
            self.decoded += payload.ByteSize()
            self.response += _json_size(payload)
        if self.decoded > self.config.max_decoded_bytes:
            raise HttpError(
                413,
                f"the payloads decode to more than {self.config.max_decoded_bytes} bytes "
                f"(reached at payload {index}; ORDERS_CODEC_MAX_DECODED_BYTES): ask for fewer "
                "payloads per request",
            )
        if self.response > self.config.max_response_bytes:
            raise HttpError(
                413,
                f"the answer would be over {self.config.max_response_bytes} bytes (reached at "
                f"payload {index}; ORDERS_CODEC_MAX_RESPONSE_BYTES): ask for fewer payloads "
                "per request",
            )


def _strict_b64(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise HttpError(400, f"not a Temporal Payloads message: {where} must be a base64 string")
    stripped = value.rstrip("=")
    padded = len(stripped) != len(value)
    if not _B64.fullmatch(value) or len(stripped) % 4 == 1 or (padded and len(value) % 4 != 0):
        raise HttpError(400, f"not a Temporal Payloads message: {where} is not valid base64")


async def read_payloads(request: web.Request, config: ServerConfig) -> Payloads:
    """The request's Payloads, every bound checked before the work it guards."""
    try:
        async with asyncio.timeout(config.body_timeout):
            body = await request.read()
    except TimeoutError:
        raise HttpError(
            408,
            f"the request body did not arrive within {config.body_timeout:g} s "
            "(ORDERS_CODEC_BODY_TIMEOUT)",
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise HttpError(
            413, f"the request body is over {config.max_body} bytes (ORDERS_CODEC_MAX_BODY)"
        ) from None
    limit = config.max_payloads * JSON_VALUES_PER_PAYLOAD + JSON_VALUES_PER_PAYLOAD
    values = body.count(b"{") + body.count(b"[") + body.count(b",")
    if values > limit:  # counted before parsing: json.loads of 1e6 tiny values costs ~1 GB
        raise HttpError(
            413,
            f"the body holds more than {limit} JSON values ({JSON_VALUES_PER_PAYLOAD} per "
            f"payload, at most {config.max_payloads} payloads a request, "
            "ORDERS_CODEC_MAX_PAYLOADS)",
        )
    try:
        data = json.loads(body)
    except RecursionError:
        raise HttpError(400, "the body is nested too deeply to be a Payloads message") from None
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "the body is not valid JSON") from None
    if isinstance(data, dict) and data.get("payloads") is None:
        data = {**data, "payloads": []}  # proto3 JSON leaves out an empty list (the CLI: `{}`)
    if not isinstance(data, dict) or not isinstance(data.get("payloads"), list):
        raise HttpError(400, 'the body must be a JSON object {"payloads": [...]}')
    items = data["payloads"]
    if len(items) > config.max_payloads:
        raise HttpError(
            413,
            f"{len(items)} payloads is over the limit of {config.max_payloads} a request "
            "(ORDERS_CODEC_MAX_PAYLOADS)",
        )
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise HttpError(
                400, f"not a Temporal Payloads message: payload {index} is not an object"
            )
        metadata = item.get("metadata", {})
        if not isinstance(metadata, dict):
            raise HttpError(
                400, f"not a Temporal Payloads message: payload {index}: metadata is not an object"
            )
        for value in metadata.values():
            _strict_b64(value, f"payload {index}: a metadata value")
        if "data" in item:
            _strict_b64(item["data"], f"payload {index}: data")
    message = Payloads()
    try:
        json_format.ParseDict(data, message)
    except (json_format.ParseError, RecursionError, ValueError, TypeError):
        raise HttpError(400, "the body is not a Temporal Payloads message") from None
    return message


def _payloads_json(payloads: Sequence[Payload]) -> bytes:
    return json.dumps(
        {
            "payloads": [
                json_format.MessageToDict(p, preserving_proto_field_name=True) for p in payloads
            ]
        },
        separators=(",", ":"),
    ).encode()


# --------------------------------------------------------------------------- HTTP edge


def _json_error(error: HttpError) -> web.Response:
    response = web.json_response({"error": error.message}, status=error.status)
    response.headers.update(error.headers)
    response.force_close()  # the rest of an unread body is not read (no lingering)
    return response


def _cors_headers(config: ServerConfig, origin: str) -> dict[str, str]:
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": ALLOWED_HEADERS,
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }
    if config.cors_allow_credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    return headers


TOLD_IN_PLACE = frozenset({401, 403, 404, 429})
"""Refusals of a ``/decode`` the Temporal CLI gets as text in place of the payloads."""
REFUSED_META = "orders-codec-refused"
"""Metadata key of such a text payload (its value: the HTTP status it stands for)."""


def from_go_cli(request: web.Request) -> bool:
    """A request from the ``temporal`` CLI (Go's HTTP client, not a browser).

    The CLI retries every failed ``/decode`` until its 10 s deadline and then says only
    ``context deadline exceeded``: whatever the status (400, 401, 403, 404 and 500 all
    tried) it never shows the answer's body. So to the CLI a refusal is answered 200 with
    one text payload per payload sent, carrying the refusal's message (marked with
    :data:`REFUSED_META`), and ``temporal workflow show`` prints the fix at once. Nothing
    of the payloads is returned and nothing more is done for the caller than for the
    refusal (Vault is not asked again): a client that claims to be Go's gains only the
    message. Browsers (they send ``Origin``) and every other client get the status."""
    agent = request.headers.get("User-Agent", "")
    return agent.startswith("Go-http-client/") and "Origin" not in request.headers


_HTTP_MESSAGES = {
    400: "malformed HTTP request",
    404: "not found: the codec server serves POST /decode and POST /encode",
    405: "method not allowed: use POST (OPTIONS for CORS preflight)",
    413: "the request is too large",
    431: "request headers too large",
    500: "internal error; the server log has the details",
}


class _EdgeHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, but its own error answers (unparseable HTTP) carry a
    fixed message (aiohttp's quote the offending header, e.g. ``Authorization``) and log
    one info line instead of an error-level stack trace."""

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            log.error("codec.request", status=status, op=None, exc_info=exc)
        else:
            log.info(
                "codec.request",
                status=status,
                op=None,
                reason=_HTTP_MESSAGES.get(status, "bad request"),
                error_type=type(exc).__name__ if exc else None,
            )
        if request.writer.output_size > 0:
            raise ConnectionError("response already sent")
        response = web.json_response(
            {"error": _HTTP_MESSAGES.get(status, "bad request")}, status=status
        )
        response.force_close()
        return response


class _EdgeServer(web_server.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _EdgeHandler(self, loop=self._loop, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """An AppRunner whose connections use :class:`_EdgeHandler`; the keep-alive timer
    (which also closes a connection whose headers do not arrive) is ``header_timeout``;
    the unread rest of a refused body is drained for at most ``LINGER_SECONDS`` (so the
    client can read the answer) before the connection is closed (aiohttp's default: 10 s)."""

    def __init__(self, app: web.Application, config: ServerConfig) -> None:
        super().__init__(
            app,
            access_log=None,
            keepalive_timeout=config.header_timeout,
            lingering_time=LINGER_SECONDS,
        )

    async def _make_server(self) -> web_server.Server:
        server = await super()._make_server()
        server.__class__ = _EdgeServer
        return server


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OP = web.RequestKey("op", str)
LOG_FIELDS: web.RequestKey[dict[str, Any]] = web.RequestKey("log", dict)


class CodecServer:
    def __init__(self, config: ServerConfig) -> None:
        config.check()
        self.config = config
        self._http: aiohttp.ClientSession | None = None
        self._auth: Authorizer | None = None
        self._gate: Gate | None = None
        self.requests = 0

    @property
    def auth(self) -> Authorizer:
        assert self._auth is not None, "the server is not started"
        return self._auth

    @property
    def gate(self) -> Gate:
        assert self._gate is not None, "the server is not started"
        return self._gate

    async def startup(self, _app: web.Application | None = None) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._auth = Authorizer(self.config, self._http)
        self._gate = Gate(
            self.config.max_concurrent, self.config.max_queued, self.config.body_timeout
        )
        if self.config.local_mode:
            identity = await self.auth.local_identity()
            log.warning(
                "codec.local_mode",
                acting_as=identity.reader,
                reason="requests without a token at the secret endpoint decode as this "
                "reader (loopback only)",
            )

    def log_started(self) -> None:
        log.info(
            "codec.started",
            host=self.config.host,
            port=self.config.port,
            vault=self.config.vault_addr,
            cors_origins=list(self.config.cors_origins),
            reader_mount=self.config.reader_mount,
            local_mode=self.config.local_mode,
            max_body=self.config.max_body,
            max_items=self.config.max_payloads,
            max_decoded_bytes=self.config.max_decoded_bytes,
            max_response_bytes=self.config.max_response_bytes,
            max_concurrent=self.config.max_concurrent,
        )

    async def cleanup(self, _app: web.Application | None = None) -> None:
        if self._auth is not None:
            self._auth.close()
        if self._http is not None:
            await self._http.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body, middlewares=[self._edge])
        app.on_startup.append(self.startup)
        app.on_cleanup.append(self.cleanup)
        app.router.add_post("/decode", self.decode)
        app.router.add_post("/encode", self.encode)
        app.router.add_post("/{prefix}/decode", self.decode)
        app.router.add_post("/{prefix}/encode", self.encode)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        return app

    # -- the edge: host, CORS, errors, one log line per request ---------------------
    @web.middleware
    async def _edge(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        request[LOG_FIELDS] = {}
        origin = request.headers.get("Origin")
        allowed = origin is not None and origin in self.config.cors_origins
        try:
            if self.config.local_mode and request.host != self.config.authority:
                raise HttpError(
                    403,
                    "the Host header is not the loopback address and port this local codec "
                    "server serves (DNS rebinding?)",
                )
            if request.method == "OPTIONS":
                if not allowed:
                    raise HttpError(
                        403,
                        "this origin is not allowed: start the codec server with "
                        "--cors-origin <the Temporal UI's origin>",
                    )
                assert origin is not None
                response: web.StreamResponse = web.Response(
                    status=204, headers=_cors_headers(self.config, origin)
                )
            else:
                response = await handler(request)
        except HttpError as exc:
            response = _json_error(exc)
        except web.HTTPException as exc:
            message = _HTTP_MESSAGES.get(exc.status, "request refused")
            response = _json_error(HttpError(exc.status, message))
        except Exception as exc:  # a bug: one error line with the stack, fixed answer
            log.error(
                "codec.request",
                op=request.get(OP),
                status=500,
                exc_info=exc,
                seconds=round(time.monotonic() - started, 4),
            )
            response = _json_error(HttpError(500, _HTTP_MESSAGES[500]))
            if allowed:
                assert origin is not None
                response.headers.update(_cors_headers(self.config, origin))
            return response
        if allowed:
            assert origin is not None
            response.headers.update(_cors_headers(self.config, origin))
        if request.path not in QUIET_PATHS or response.status != 200:
            self._log(request, response.status, started)
        return response

    def _log(self, request: web.Request, status: int, started: float) -> None:
        extra: dict[str, Any] = request[LOG_FIELDS]
        fields: dict[str, Any] = {
            "op": request.get(OP),
            "namespace": request.headers.get("X-Namespace", "")[:100],
            "status": status,
            "seconds": round(time.monotonic() - started, 4),
            **extra,
        }
        CODEC_SERVER_REQUESTS.labels(fields["op"] or "none", str(status)).inc()
        if status >= 500:
            log.warning("codec.request", **fields)
        else:
            log.info("codec.request", **fields)

    # -- handlers ---------------------------------------------------------------------
    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics(self, _request: web.Request) -> web.Response:
        """Prometheus text: request counts, the codec's time and bytes, Vault requests.
        Counts only, no caller, namespace or payload: safe beside ``/decode``."""
        body, content_type = exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def decode(self, request: web.Request) -> web.Response:
        return await self._handle(request, "decode")

    async def encode(self, request: web.Request) -> web.Response:
        return await self._handle(request, "encode")

    def _via_secret(self, request: web.Request) -> bool:
        prefix = request.match_info.get("prefix")
        if prefix is None:
            return False
        secret = ""
        if self.config.local_mode and self.config.local_secret_file is not None:
            secret = read_secret_file(self.config.local_secret_file)
        if not secret or not hmac.compare_digest(prefix.encode(), secret.encode()):
            raise HttpError(404, _HTTP_MESSAGES[404])
        return True

    async def _handle(self, request: web.Request, op: str) -> web.Response:
        try:
            return await self._serve(request, op)
        except HttpError as exc:
            if op != "decode" or exc.status not in TOLD_IN_PLACE or not from_go_cli(request):
                raise
            return await self._refusal_in_place(request, exc)

    async def _refusal_in_place(self, request: web.Request, refused: HttpError) -> web.Response:
        """The refusal as the decoded payloads, for the Temporal CLI (see
        :func:`from_go_cli`): one text payload per payload sent, none of their data."""
        async with self.gate:  # the body is read under the same bounds as a decode's
            payloads = list((await read_payloads(request, self.config)).payloads)
        text = json.dumps(
            f"not decoded: the codec server refused ({refused.status}): {refused.message}"
        ).encode()
        told = Payload(
            metadata={"encoding": b"json/plain", REFUSED_META: str(refused.status).encode()},
            data=text,
        )
        request[LOG_FIELDS].update(refused=refused.status, told_in_place=True)
        return web.Response(
            body=_payloads_json([told] * len(payloads)), content_type="application/json"
        )

    async def _serve(self, request: web.Request, op: str) -> web.Response:
        self.requests += 1
        request[OP] = op
        via_secret = self._via_secret(request)
        if request.content_type != "application/json":
            raise HttpError(415, "Content-Type must be application/json")
        length = request.content_length
        if length is not None and length > self.config.max_body:
            raise HttpError(
                413,
                f"the request body is over {self.config.max_body} bytes (ORDERS_CODEC_MAX_BODY)",
            )
        async with self.gate:
            caller = await self.auth.caller(request, via_secret=via_secret)
            request[LOG_FIELDS].update(caller_kind=caller.kind, reader=caller.reader)
            payloads = list((await read_payloads(request, self.config)).payloads)
            envelope, per_call = caller.codecs(self.config)
            if op == "decode":
                out = await self._decode(envelope, per_call, payloads)
            else:
                out = await self._encode(envelope, payloads)
            body = _payloads_json(out)
        if len(body) > self.config.max_response_bytes:
            raise HttpError(
                413,
                f"the answer would be over {self.config.max_response_bytes} bytes "
                "(ORDERS_CODEC_MAX_RESPONSE_BYTES): ask for fewer payloads per request",
            )
        request[LOG_FIELDS].update(count=len(out))
        return web.Response(body=body, content_type="application/json")

    async def _encode(
        self, envelope: TransitEnvelopeCodec, payloads: list[Payload]
    ) -> list[Payload]:
        try:
            out = await envelope.encode(payloads)
        except TransitDenied:
            raise HttpError(
                403,
                "Vault refused this identity a data key (transit/datakey/plaintext/"
                f"{self.config.key_name}): encoding needs a writer's policy, not a reader's",
            ) from None
        except TransitUnavailable:
            raise HttpError(503, "Vault is not answering; try again") from None
        Budget(self.config).add(out, len(out) - 1)
        return out

    def _check_vault_calls(self, payloads: Sequence[Payload]) -> None:
        per_call = 0
        wrapped: set[bytes] = set()
        for payload in payloads:
            if payload.metadata.get(META_ENCODING) != ENCODING:
                continue
            if payload.metadata.get(META_FORMAT) == PER_CALL_FORMAT:
                per_call += 1
            else:
                wrapped.add(payload.metadata.get(META_WRAPPED_KEY, b""))
        calls = per_call + len(wrapped)
        if calls > self.config.max_vault_calls:
            raise HttpError(
                413,
                f"decoding these payloads needs {calls} Vault calls, over the limit of "
                f"{self.config.max_vault_calls} a request (ORDERS_CODEC_MAX_VAULT_CALLS): "
                "ask for fewer payloads per request",
            )

    async def _decode(
        self,
        envelope: TransitEnvelopeCodec,
        per_call: TransitPerCallCodec,
        payloads: list[Payload],
    ) -> list[Payload]:
        self._check_vault_calls(payloads)
        budget = Budget(self.config)
        out: list[Payload] = []
        for index, payload in enumerate(payloads):
            codec = per_call if payload.metadata.get(META_FORMAT) == PER_CALL_FORMAT else envelope
            try:
                decoded = await codec.decode([payload])
            except PayloadAccessDenied as exc:
                raise HttpError(
                    403,
                    f"Vault refused this identity the decryption of payload {index}: {exc}",
                ) from None
            except PayloadDecodeError as exc:
                if getattr(exc, "cause", None) == "too_large":
                    raise HttpError(413, f"payload {index}: {exc}") from None
                raise HttpError(422, f"payload {index}: {exc}") from None
            except TransitUnavailable:
                raise HttpError(503, "Vault is not answering; try again") from None
            budget.add(decoded, index)
            out.extend(decoded)
        return out


def build_app(config: ServerConfig) -> tuple[web.Application, CodecServer]:
    server = CodecServer(config)
    return server.app(), server


@dataclass
class RunningServer:
    """A server started in this process (for tests and embedding)."""

    runner: web.AppRunner
    server: CodecServer
    url: str
    extra: dict[str, Any] = field(default_factory=dict)

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start(config: ServerConfig, ssl_context: ssl.SSLContext | None = None) -> RunningServer:
    """Listen on ``config``'s address; HTTPS with ``ssl_context`` (see :mod:`.tls`)."""
    app, server = build_app(config)
    runner = EdgeRunner(app, config)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    server.log_started()
    scheme = "https" if ssl_context is not None else "http"
    return RunningServer(runner, server, f"{scheme}://{config.authority}")


__all__ = [
    "DEFAULT_PORT",
    "CodecServer",
    "ConfigurationError",
    "HttpError",
    "RunningServer",
    "ServerConfig",
    "build_app",
    "start",
]
