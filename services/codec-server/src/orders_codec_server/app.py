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

* a Vault token (the CLI: ``--codec-auth "Bearer $(bao print token)"``), used as is, or
* a user's OIDC identity token (a JWT; the UI with OIDC login), exchanged at
  Vault's JWT auth mount for people (``oidc-readers``, role ``payload-reader``,
  bound to the reader group) for a short-lived Vault token,

and the payloads are decrypted with *that* token, so Vault policy decides.
No token: 401. A token Vault refuses for decryption, or a user outside the
reader group: 403. Data keys unwrapped for one caller are cached only for that
caller's token (never shared between callers), for at most
``CACHE_SECONDS``.

Local mode (``--local``, off by default) serves the dev server's UI, which
sends no token: requests without one act as a *named* reader identity, whose
identity token (from ``orders-identity mint-user``) the server exchanges like a
user's. It refuses to start unless bound to loopback, and logs the identity it
acts as at start.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from orders_shared.codec import (
    META_FORMAT,
    PAYLOAD_KEY,
    PER_CALL_FORMAT,
    TRANSIT_MOUNT,
    PayloadAccessDenied,
    PayloadDecodeError,
    TokenTransit,
    TransitDenied,
    TransitEnvelopeCodec,
    TransitPerCallCodec,
    TransitUnavailable,
)

log = structlog.get_logger("orders_codec_server")

DEFAULT_PORT = 8081
DEFAULT_MAX_BODY = 4 * 1024 * 1024
CACHE_SECONDS = 60.0
ALLOWED_HEADERS = "content-type,x-namespace,authorization"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class ConfigurationError(ValueError):
    """The server cannot start as configured; the message names the setting and the fix."""


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ServerConfig:
    vault_addr: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    cors_origins: tuple[str, ...] = ()
    reader_mount: str = "oidc-readers"
    reader_role: str = "payload-reader"
    transit_mount: str = TRANSIT_MOUNT
    key_name: str = PAYLOAD_KEY
    max_body: int = DEFAULT_MAX_BODY
    local_mode: bool = False
    local_reader_token_file: Path | None = None

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


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_jwt(token: str) -> bool:
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and "alg" in header


def unverified_claims(jwt: str) -> dict[str, Any]:
    """For logging who a token names, after Vault accepted it; never for decisions."""
    try:
        body = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (IndexError, ValueError, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


# --------------------------------------------------------------------------- identities


@dataclass
class _Exchanged:
    vault_token: str
    expires: float
    reader: str


@dataclass
class _CodecEntry:
    envelope: TransitEnvelopeCodec
    per_call: TransitPerCallCodec
    transit: TokenTransit
    created: float


@dataclass
class Caller:
    vault_token: str
    kind: str  # vault-token | oidc | local
    reader: str | None = None


class Authorizer:
    """Turns a request's bearer token into the Vault token to decrypt with."""

    def __init__(self, config: ServerConfig, http: aiohttp.ClientSession) -> None:
        self.config = config
        self.http = http
        self._exchanged: dict[str, _Exchanged] = {}
        self._lock = asyncio.Lock()
        self.exchanges = 0

    async def exchange(self, jwt: str) -> _Exchanged:
        """A short-lived Vault token for a user's identity token (cached until near expiry)."""
        key = _digest(jwt)
        hit = self._exchanged.get(key)
        if hit is not None and hit.expires > time.monotonic():
            return hit
        url = f"{self.config.vault_addr}/v1/auth/{self.config.reader_mount}/login"
        try:
            async with self.http.post(
                url, json={"role": self.config.reader_role, "jwt": jwt}
            ) as resp:
                body = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError):
            raise HttpError(503, "Vault is not answering; try again") from None
        if status != 200:
            errors = "; ".join(str(e) for e in (body or {}).get("errors") or []) or f"{status}"
            if "claim" in errors and "validating claims" in errors:
                raise HttpError(
                    403,
                    f"Vault refused the identity token for role {self.config.reader_role}: "
                    f"{errors} (the user is not in the payload reader group)",
                )
            if status >= 500:
                raise HttpError(503, f"Vault could not check the identity token: {errors}")
            raise HttpError(401, f"Vault refused the identity token: {errors}")
        auth = body["auth"]
        reader = str(unverified_claims(jwt).get("sub") or auth.get("metadata", {}).get("role"))
        lease = float(auth.get("lease_duration") or 60)
        entry = _Exchanged(auth["client_token"], time.monotonic() + lease * 0.8, reader)
        self._exchanged[key] = entry
        self.exchanges += 1
        log.info(
            "codec.identity_exchanged",
            reader=reader,
            mount=self.config.reader_mount,
            policies=auth.get("token_policies"),
            ttl=lease,
        )
        return entry

    async def local_identity(self) -> _Exchanged:
        path = self.config.local_reader_token_file
        assert path is not None
        try:
            jwt = path.read_text().strip()
        except OSError as exc:
            raise HttpError(
                503,
                f"local mode: cannot read the reader token {path} ({exc.strerror}); mint one "
                "with 'orders-identity mint-user <name> > <file>'",
            ) from None
        return await self.exchange(jwt)

    async def caller(self, request: web.Request) -> Caller:
        header = request.headers.get("Authorization", "").strip()
        if not header:
            if self.config.local_mode:
                local = await self.local_identity()
                return Caller(local.vault_token, "local", local.reader)
            raise HttpError(
                401,
                "no Authorization header: send 'Authorization: Bearer <Vault token or OIDC "
                "identity token>' (temporal CLI: --codec-auth 'Bearer <token>')",
            )
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise HttpError(401, "the Authorization header must be 'Bearer <token>'")
        if looks_like_jwt(token):
            exchanged = await self.exchange(token)
            return Caller(exchanged.vault_token, "oidc", exchanged.reader)
        return Caller(token, "vault-token")


# --------------------------------------------------------------------------- codec per caller


class Codecs:
    """One codec per caller token: data keys unwrapped for a caller serve only that caller."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._entries: dict[str, _CodecEntry] = {}

    def for_token(self, vault_token: str) -> _CodecEntry:
        now = time.monotonic()
        for key in [k for k, e in self._entries.items() if now - e.created > CACHE_SECONDS]:
            self._entries.pop(key).transit.close()
        key = _digest(vault_token)
        entry = self._entries.get(key)
        if entry is None:
            transit = TokenTransit(
                self.config.vault_addr, vault_token, mount=self.config.transit_mount
            )
            entry = _CodecEntry(
                envelope=TransitEnvelopeCodec(
                    transit,
                    key_name=self.config.key_name,
                    allow_plaintext=True,
                    max_key_age=CACHE_SECONDS,
                ),
                per_call=TransitPerCallCodec(
                    transit, key_name=self.config.key_name, allow_plaintext=True
                ),
                transit=transit,
                created=now,
            )
            self._entries[key] = entry
        return entry

    def close(self) -> None:
        for entry in self._entries.values():
            entry.transit.close()
        self._entries.clear()


# --------------------------------------------------------------------------- HTTP


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _origin_allowed(config: ServerConfig, origin: str | None) -> bool:
    return origin is not None and origin in config.cors_origins


def _cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": ALLOWED_HEADERS,
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _cors_middleware(config: ServerConfig) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS":
            if not _origin_allowed(config, origin):
                return _json_error(
                    403,
                    f"origin {origin!r} is not allowed: start the codec server with "
                    f"--cors-origin {origin or '<origin>'}",
                )
            assert origin is not None
            return web.Response(status=204, headers=_cors_headers(origin))
        response = await handler(request)
        if _origin_allowed(config, origin):
            assert origin is not None
            response.headers.update(_cors_headers(origin))
        return response

    return middleware


async def _read_payloads(request: web.Request, max_body: int) -> Payloads:
    if request.content_type != "application/json":
        raise HttpError(
            415,
            f"Content-Type must be application/json, not {request.content_type or 'none'!r}",
        )
    if request.content_length is not None and request.content_length > max_body:
        raise HttpError(413, f"body of {request.content_length} bytes is over {max_body} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise HttpError(413, f"body is over {max_body} bytes") from None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"body is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("payloads"), list):
        raise HttpError(400, 'body must be a JSON object {"payloads": [...]}')
    message = Payloads()
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as exc:
        raise HttpError(400, f"not a Temporal Payloads message: {exc}") from None
    return message


def _payloads_json(payloads: Sequence[Payload]) -> dict[str, Any]:
    return {
        "payloads": [
            json_format.MessageToDict(p, preserving_proto_field_name=True) for p in payloads
        ]
    }


class CodecServer:
    def __init__(self, config: ServerConfig) -> None:
        config.check()
        self.config = config
        self.codecs = Codecs(config)
        self._http: aiohttp.ClientSession | None = None
        self._auth: Authorizer | None = None
        self.requests = 0

    @property
    def auth(self) -> Authorizer:
        assert self._auth is not None, "the server is not started"
        return self._auth

    async def startup(self, _app: web.Application | None = None) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._auth = Authorizer(self.config, self._http)
        log.info(
            "codec.started",
            host=self.config.host,
            port=self.config.port,
            vault=self.config.vault_addr,
            cors_origins=list(self.config.cors_origins),
            reader_mount=self.config.reader_mount,
            local_mode=self.config.local_mode,
        )
        if self.config.local_mode:
            identity = await self.auth.local_identity()
            log.warning(
                "codec.local_mode",
                acting_as=identity.reader,
                reason="requests without a token decode as this reader (loopback only)",
            )

    async def cleanup(self, _app: web.Application | None = None) -> None:
        self.codecs.close()
        if self._http is not None:
            await self._http.close()

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.config.max_body, middlewares=[_cors_middleware(self.config)]
        )
        app.on_startup.append(self.startup)
        app.on_cleanup.append(self.cleanup)
        app.router.add_post("/decode", self.decode)
        app.router.add_post("/encode", self.encode)
        app.router.add_get("/healthz", self.healthz)
        return app

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def decode(self, request: web.Request) -> web.Response:
        return await self._handle(request, "decode")

    async def encode(self, request: web.Request) -> web.Response:
        return await self._handle(request, "encode")

    async def _handle(self, request: web.Request, op: str) -> web.Response:
        self.requests += 1
        namespace = request.headers.get("X-Namespace", "")
        started = time.monotonic()
        caller: Caller | None = None
        try:
            caller = await self.auth.caller(request)
            payloads = await _read_payloads(request, self.config.max_body)
            codecs = self.codecs.for_token(caller.vault_token)
            if op == "decode":
                out = await self._decode(codecs, list(payloads.payloads))
            else:
                out = await self._encode(codecs, list(payloads.payloads))
        except HttpError as exc:
            self._log(op, namespace, caller, exc.status, started)
            return _json_error(exc.status, exc.message)
        self._log(op, namespace, caller, 200, started, count=len(out))
        return web.json_response(_payloads_json(out))

    async def _encode(self, codecs: _CodecEntry, payloads: list[Payload]) -> list[Payload]:
        try:
            return await codecs.envelope.encode(payloads)
        except TransitDenied:
            raise HttpError(
                403,
                "Vault refused this identity a data key (transit/datakey/plaintext/"
                f"{self.config.key_name}): encoding needs a writer's policy, not a reader's",
            ) from None
        except TransitUnavailable as exc:
            raise HttpError(503, f"{exc}; try again") from None

    async def _decode(self, codecs: _CodecEntry, payloads: list[Payload]) -> list[Payload]:
        out = []
        for index, payload in enumerate(payloads):
            codec = (
                codecs.per_call
                if payload.metadata.get(META_FORMAT) == PER_CALL_FORMAT
                else codecs.envelope
            )
            try:
                out.extend(await codec.decode([payload]))
            except PayloadAccessDenied as exc:
                raise HttpError(
                    403,
                    f"Vault refused this identity the decryption of payload {index}: {exc}",
                ) from None
            except PayloadDecodeError as exc:
                raise HttpError(422, f"payload {index}: {exc}") from None
            except TransitUnavailable as exc:
                raise HttpError(503, f"{exc}; try again") from None
        return out

    def _log(
        self,
        op: str,
        namespace: str,
        caller: Caller | None,
        status: int,
        started: float,
        count: int = 0,
    ) -> None:
        log.info(
            "codec.request",
            op=op,
            namespace=namespace,
            caller_kind=caller.kind if caller else None,
            reader=caller.reader if caller else None,
            status=status,
            count=count,
            seconds=round(time.monotonic() - started, 4),
        )


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


async def start(config: ServerConfig) -> RunningServer:
    app, server = build_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    host = f"[{config.host}]" if ":" in config.host else config.host
    return RunningServer(runner, server, f"http://{host}:{config.port}")


__all__ = [
    "DEFAULT_PORT",
    "CodecServer",
    "ConfigurationError",
    "RunningServer",
    "ServerConfig",
    "build_app",
    "start",
]
