"""The local codec server over HTTPS (``ORDERS_TLS=1``): its own Vault identity.

The codec server issues its HTTPS certificate itself (PKI role ``server-codec``, key
in memory, see ``orders_codec_server.tls``). Locally it has no ServiceAccount to
log in with, so at each start the stack (root token) creates it a periodic token
with only the ``orders-codec-server`` policy (that one PKI role, nothing else) and
writes it where only the codec server's OS user can read it. In a cluster the same
policy belongs to the codec server's own Kubernetes auth role.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from orders_ops.settings import StackSettings

POLICY = "orders-codec-server"  # orders_ops.policies.CODEC_TLS_POLICY
RENEW_PERIOD = "24h"  # the token is renewed by the codec server's VaultSession while it runs


def token_file(settings: StackSettings) -> Path:
    from orders_ops.issuer import LOCAL_READER_DIR

    return settings.token_dir(LOCAL_READER_DIR) / "tls-vault-token"


def write_token(settings: StackSettings) -> Path:
    """A new periodic token of the codec server's TLS identity, in its token folder."""
    from orders_ops.issuer import _write_atomic
    from orders_ops.vault_bootstrap import root_client

    client = root_client(settings)
    try:
        auth = client.auth.token.create(
            policies=[POLICY],
            no_parent=True,  # outlives no root token; dies when not renewed for a period
            period=RENEW_PERIOD,
            display_name="codec-server-tls",
            meta={"purpose": "issue the codec server's HTTPS certificate (server-codec)"},
        )["auth"]
    finally:
        client.adapter.close()
    path = token_file(settings)
    _write_atomic(path, auth["client_token"] + "\n")
    return path


def env(settings: StackSettings) -> dict[str, str]:
    """The codec server's HTTPS settings (empty without TLS)."""
    if not settings.tls:
        return {}
    return {
        "ORDERS_CODEC_TLS": "1",
        "ORDERS_CODEC_TLS_TOKEN_FILE": str(write_token(settings)),
        "ORDERS_TLS_CA_FILE": str(settings.ca_file),
    }


def client_context(settings: StackSettings) -> ssl.SSLContext | None:
    """What every client of the stack's https codec server verifies it with: the stack's
    own CA (``<state>/tls/ca.pem``, the chain the server's ``server-codec`` certificate is
    issued from), not the system trust store. None without TLS (plain http).

    Used by the stack's health check and ``orders_ops.demo.codec_decode`` (demo, journey)."""
    if not settings.tls:
        return None
    return ssl.create_default_context(cafile=str(settings.ca_file))
