"""``orders-codec-server``: run the codec server (see :mod:`orders_codec_server.app`).

Settings (flags override the environment; every limit has a default):

``VAULT_ADDR`` / ``--vault-addr``       Vault/OpenBao URL (required)
``ORDERS_CODEC_HOST`` / ``--host``      bind address [127.0.0.1]
``ORDERS_CODEC_PORT`` / ``--port``      [8081]
``ORDERS_CODEC_CORS_ORIGINS`` / ``--cors-origin``
                                        origins of Temporal UIs allowed to call it from
                                        the browser (comma-separated / repeatable)
``ORDERS_CODEC_CORS_ALLOW_CREDENTIALS`` / ``--cors-allow-credentials``
                                        send Access-Control-Allow-Credentials [off]
``ORDERS_CODEC_READER_MOUNT`` / ``ORDERS_CODEC_READER_ROLE``
                                        JWT auth mount and role for people
                                        [oidc-readers, payload-reader]
``ORDERS_CODEC_MAX_BODY``               request body, bytes [4 MiB]
``ORDERS_CODEC_MAX_PAYLOADS``           payloads a request [1000]
``ORDERS_CODEC_MAX_VAULT_CALLS``        Vault calls a request needs [100]
``ORDERS_CODEC_MAX_DECODED_BYTES``      decoded payloads a request, bytes [4 MiB]
``ORDERS_CODEC_MAX_RESPONSE_BYTES``     answer, bytes [8 MiB]
``ORDERS_CODEC_HEADER_TIMEOUT``         seconds for a request's headers (and keep-alive) [10]
``ORDERS_CODEC_BODY_TIMEOUT``           seconds for a request's body [20]
``ORDERS_CODEC_MAX_CONCURRENT``         requests in progress [4]; ``ORDERS_CODEC_MAX_QUEUED``
                                        more waiting [32]; 503 beyond
``ORDERS_CODEC_MAX_CALLERS``            verified callers cached [256]
``ORDERS_CODEC_CALLER_SECONDS``         longest a verified caller is cached [300]
``ORDERS_CODEC_FAILED_LOGINS``          failed logins a minute per client address [10]; 429 beyond
``ORDERS_CODEC_TRUSTED_PROXY_HOPS``     proxies in front (an ingress) whose X-Forwarded-For
                                        names the client address [0: the TCP peer]
``ORDERS_CODEC_LOG_FILE`` / ``--log-file``
                                        write logs there, rotated at ``ORDERS_CODEC_LOG_MAX_BYTES``
                                        [10 MiB], ``ORDERS_CODEC_LOG_BACKUPS`` [3] old files kept
``ORDERS_CODEC_TLS`` [0] and friends  HTTPS with a certificate the server issues itself
                                        (see :mod:`orders_codec_server.tls`)
``--local`` + ``ORDERS_CODEC_LOCAL_READER_TOKEN_FILE`` / ``--local-reader-token-file``
         + ``ORDERS_CODEC_LOCAL_SECRET_FILE`` / ``--local-secret-file``
                                        explicit local mode (loopback only): callers without
                                        a token, at ``/<secret>/decode``, act as the reader
                                        this token names
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from orders_codec_server import app as codec_app
from orders_codec_server.app import ConfigurationError, HttpError, ServerConfig
from orders_codec_server.tls import CodecTLS, ServingCertificate
from orders_shared.config import ConfigError
from orders_shared.identity import VaultLoginError
from orders_shared.logging import configure_logging
from orders_shared.tls import CertificateError

DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_LOG_BACKUPS = 3


class StartupError(RuntimeError):
    """The server could not start; the message names what failed and what to do."""


def _origins(raw: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())


def _env_number(name: str, default: float, kind: Callable[[str], Any] = int) -> Any:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number") from None


_LIMITS: tuple[tuple[str, str, Any, Callable[[str], Any]], ...] = (
    ("max_body", "ORDERS_CODEC_MAX_BODY", codec_app.DEFAULT_MAX_BODY, int),
    ("max_payloads", "ORDERS_CODEC_MAX_PAYLOADS", codec_app.DEFAULT_MAX_PAYLOADS, int),
    ("max_vault_calls", "ORDERS_CODEC_MAX_VAULT_CALLS", codec_app.DEFAULT_MAX_VAULT_CALLS, int),
    ("max_decoded_bytes", "ORDERS_CODEC_MAX_DECODED_BYTES", codec_app.DEFAULT_MAX_DECODED, int),
    (
        "max_response_bytes",
        "ORDERS_CODEC_MAX_RESPONSE_BYTES",
        codec_app.DEFAULT_MAX_RESPONSE,
        int,
    ),
    ("header_timeout", "ORDERS_CODEC_HEADER_TIMEOUT", codec_app.DEFAULT_HEADER_TIMEOUT, float),
    ("body_timeout", "ORDERS_CODEC_BODY_TIMEOUT", codec_app.DEFAULT_BODY_TIMEOUT, float),
    ("max_concurrent", "ORDERS_CODEC_MAX_CONCURRENT", codec_app.DEFAULT_MAX_CONCURRENT, int),
    ("max_queued", "ORDERS_CODEC_MAX_QUEUED", codec_app.DEFAULT_MAX_QUEUED, int),
    ("max_callers", "ORDERS_CODEC_MAX_CALLERS", codec_app.DEFAULT_MAX_CALLERS, int),
    ("caller_seconds", "ORDERS_CODEC_CALLER_SECONDS", codec_app.DEFAULT_CALLER_SECONDS, float),
    ("failed_logins", "ORDERS_CODEC_FAILED_LOGINS", codec_app.DEFAULT_FAILED_LOGINS, int),
    ("trusted_proxy_hops", "ORDERS_CODEC_TRUSTED_PROXY_HOPS", 0, int),
)


def _parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="orders-codec-server",
        description="Temporal codec server: decrypts payloads with the caller's own Vault "
        "identity (Vault token or OIDC identity token).",
    )
    parser.add_argument("--host", default=env.get("ORDERS_CODEC_HOST") or "127.0.0.1")
    parser.add_argument("--port", type=int, default=_env_number("ORDERS_CODEC_PORT", 8081))
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=None,
        help="a Temporal UI origin allowed to call this server (repeatable)",
    )
    parser.add_argument(
        "--cors-allow-credentials",
        action="store_true",
        default=env.get("ORDERS_CODEC_CORS_ALLOW_CREDENTIALS", "").lower() in ("1", "true"),
        help="answer CORS requests with Access-Control-Allow-Credentials: true",
    )
    parser.add_argument("--vault-addr", default=env.get("VAULT_ADDR") or "")
    parser.add_argument(
        "--reader-mount", default=env.get("ORDERS_CODEC_READER_MOUNT") or "oidc-readers"
    )
    parser.add_argument(
        "--reader-role", default=env.get("ORDERS_CODEC_READER_ROLE") or "payload-reader"
    )
    for name, variable, default, kind in _LIMITS:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=_env_number(variable, default, kind),
            help=f"[{default}] (or {variable})",
        )
    parser.add_argument(
        "--local",
        action="store_true",
        help="local mode for the dev server's UI (no token): act as a named reader; loopback only",
    )
    parser.add_argument(
        "--local-reader-token-file",
        default=env.get("ORDERS_CODEC_LOCAL_READER_TOKEN_FILE") or None,
        help="the reader's identity token (orders-identity mint-user <name>)",
    )
    parser.add_argument(
        "--local-secret-file",
        default=env.get("ORDERS_CODEC_LOCAL_SECRET_FILE") or None,
        help="the secret path prefix tokenless callers must use (/<secret>/decode)",
    )
    parser.add_argument("--log-file", default=env.get("ORDERS_CODEC_LOG_FILE") or None)
    parser.add_argument(
        "--log-max-bytes",
        type=int,
        default=_env_number("ORDERS_CODEC_LOG_MAX_BYTES", DEFAULT_LOG_MAX_BYTES),
    )
    parser.add_argument(
        "--log-backups",
        type=int,
        default=_env_number("ORDERS_CODEC_LOG_BACKUPS", DEFAULT_LOG_BACKUPS),
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[ServerConfig, argparse.Namespace]:
    args = _parser().parse_args(argv)
    if not args.vault_addr:
        raise ConfigurationError("VAULT_ADDR (or --vault-addr) is required")
    if args.log_file and (args.log_max_bytes < 1024 or args.log_backups < 1):
        raise ConfigurationError("--log-max-bytes must be at least 1024 and --log-backups >= 1")
    origins = (
        tuple(o.rstrip("/") for o in args.cors_origin)
        if args.cors_origin is not None
        else _origins(os.environ.get("ORDERS_CODEC_CORS_ORIGINS", ""))
    )
    config = ServerConfig(
        vault_addr=args.vault_addr.rstrip("/"),
        host=args.host,
        port=args.port,
        cors_origins=origins,
        cors_allow_credentials=args.cors_allow_credentials,
        reader_mount=args.reader_mount,
        reader_role=args.reader_role,
        local_mode=args.local,
        local_reader_token_file=(
            Path(args.local_reader_token_file) if args.local_reader_token_file else None
        ),
        local_secret_file=Path(args.local_secret_file) if args.local_secret_file else None,
        **{name: getattr(args, name) for name, *_ in _LIMITS},
    )
    config.check()
    return config, args


def parse_config(argv: Sequence[str] | None = None) -> ServerConfig:
    return parse_args(argv)[0]


class RotatingLog:
    """A text stream writing to ``path``, rotated by size (``path.1`` ... ``path.<backups>``).

    With ``own_fds`` it also becomes the process's file descriptors 1 and 2, so
    anything written below Python (or by a crash) lands in the current file too.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int, *, own_fds: bool) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.own_fds = own_fds
        self._fd = -1
        self._size = 0
        self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size
        if self.own_fds:
            os.dup2(self._fd, 1)
            os.dup2(self._fd, 2)

    def _rotate(self) -> None:
        os.close(self._fd)
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "replace")
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        os.write(self._fd, data)
        self._size += len(data)
        return len(text)

    def flush(self) -> None:
        pass


async def _check_vault(config: ServerConfig) -> None:
    url = f"{config.vault_addr}/v1/sys/health"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
            http.get(url) as resp,
        ):
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        raise StartupError(
            f"cannot reach Vault at {config.vault_addr}: start it ('make up' runs the local "
            "stack) or point VAULT_ADDR / --vault-addr at a running Vault"
        ) from None
    if status == 503:
        raise StartupError(f"Vault at {config.vault_addr} is sealed: unseal it, then start again")


async def _serving_certificate(config: ServerConfig) -> ServingCertificate | None:
    """With ORDERS_CODEC_TLS=1: the certificate, issued with the server's own identity."""
    try:
        tls = CodecTLS.from_env(config.vault_addr)
        if tls is None:
            return None
        cert = ServingCertificate(tls)
        await cert.start()
    except (ConfigError, VaultLoginError, CertificateError) as exc:
        raise StartupError(f"HTTPS (ORDERS_CODEC_TLS=1): {exc}") from None
    return cert


async def serve(config: ServerConfig, stop: asyncio.Event | None = None) -> None:
    await _check_vault(config)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    cert = await _serving_certificate(config)
    try:
        running = await codec_app.start(config, cert.context if cert else None)
    except HttpError as exc:
        raise StartupError(f"{exc.message} (Vault at {config.vault_addr})") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {config.port} on {config.host} is already in use: stop the program "
                "using it or choose another port (--port / ORDERS_CODEC_PORT)"
            ) from None
        raise StartupError(
            f"cannot listen on {config.host}:{config.port} ({exc.strerror}): choose another "
            "address (--host / ORDERS_CODEC_HOST, --port / ORDERS_CODEC_PORT)"
        ) from None
    try:
        await stop.wait()
    finally:
        await running.stop()
        if cert is not None:
            await cert.stop()


def main(argv: Sequence[str] | None = None) -> None:
    console: TextIO = sys.stderr
    try:
        config, args = parse_args(argv)
    except ConfigurationError as exc:
        print(f"orders-codec-server: configuration error: {exc}", file=console)
        sys.exit(2)
    if args.log_file:
        # keep the console (or the stack's log) for the one start-up error line
        console = os.fdopen(os.dup(2), "w", buffering=1)
        sys.stderr = RotatingLog(
            Path(args.log_file), args.log_max_bytes, args.log_backups, own_fds=True
        )
    configure_logging("codec-server")
    try:
        asyncio.run(serve(config))
    except StartupError as exc:
        print(f"orders-codec-server: {exc}", file=console)
        sys.exit(1)


if __name__ == "__main__":
    main()
