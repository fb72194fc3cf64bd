"""``orders-codec-server``: run the codec server (see :mod:`orders_codec_server.app`).

Settings (flags override the environment):

``VAULT_ADDR``                          Vault/OpenBao URL (required)
``ORDERS_CODEC_HOST`` / ``--host``      bind address [127.0.0.1]
``ORDERS_CODEC_PORT`` / ``--port``      [8081]
``ORDERS_CODEC_CORS_ORIGINS`` / ``--cors-origin``
                                        origins of Temporal UIs allowed to call it from
                                        the browser (comma-separated / repeatable), e.g.
                                        http://127.0.0.1:8233
``ORDERS_CODEC_READER_MOUNT``           JWT auth mount for people [oidc-readers]
``ORDERS_CODEC_READER_ROLE``            its role [payload-reader]
``ORDERS_CODEC_MAX_BODY``               request body limit in bytes [4194304]
``--local`` + ``ORDERS_CODEC_LOCAL_READER_TOKEN_FILE`` / ``--local-reader-token-file``
                                        explicit local mode (loopback only): callers without
                                        a token act as the reader this token names
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from orders_codec_server.app import (
    DEFAULT_MAX_BODY,
    DEFAULT_PORT,
    ConfigurationError,
    ServerConfig,
    build_app,
)
from orders_shared.logging import configure_logging


def _origins(raw: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())


def parse_config(argv: Sequence[str] | None = None) -> ServerConfig:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="orders-codec-server",
        description="Temporal codec server: decrypts payloads with the caller's own Vault "
        "identity (Vault token or OIDC identity token).",
    )
    parser.add_argument("--host", default=env.get("ORDERS_CODEC_HOST") or "127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=int(env.get("ORDERS_CODEC_PORT") or DEFAULT_PORT)
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=None,
        help="a Temporal UI origin allowed to call this server (repeatable)",
    )
    parser.add_argument("--vault-addr", default=env.get("VAULT_ADDR") or "")
    parser.add_argument(
        "--reader-mount", default=env.get("ORDERS_CODEC_READER_MOUNT") or "oidc-readers"
    )
    parser.add_argument(
        "--reader-role", default=env.get("ORDERS_CODEC_READER_ROLE") or "payload-reader"
    )
    parser.add_argument(
        "--max-body", type=int, default=int(env.get("ORDERS_CODEC_MAX_BODY") or DEFAULT_MAX_BODY)
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
    args = parser.parse_args(argv)
    if not args.vault_addr:
        raise ConfigurationError("VAULT_ADDR (or --vault-addr) is required")
    origins = (
        tuple(o.rstrip("/") for o in args.cors_origin)
        if args.cors_origin is not None
        else _origins(env.get("ORDERS_CODEC_CORS_ORIGINS", ""))
    )
    config = ServerConfig(
        vault_addr=args.vault_addr.rstrip("/"),
        host=args.host,
        port=args.port,
        cors_origins=origins,
        reader_mount=args.reader_mount,
        reader_role=args.reader_role,
        max_body=args.max_body,
        local_mode=args.local,
        local_reader_token_file=(
            Path(args.local_reader_token_file) if args.local_reader_token_file else None
        ),
    )
    config.check()
    return config


def main(argv: Sequence[str] | None = None) -> None:
    configure_logging("codec-server")
    try:
        config = parse_config(argv)
    except (ConfigurationError, ValueError) as exc:
        print(f"orders-codec-server: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    app, _server = build_app(config)
    web.run_app(app, host=config.host, port=config.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
