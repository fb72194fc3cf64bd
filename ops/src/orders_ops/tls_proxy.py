"""The local Temporal frontend with mutual TLS: nginx's stream module in front of the dev server.

The Temporal dev server speaks plaintext gRPC only. With ``ORDERS_TLS=1`` the stack
starts nginx (Debian's ``nginx`` + ``libnginx-mod-stream``) on
``127.0.0.1:ORDERS_TEMPORAL_TLS_PORT`` [7235]: it presents the ``server-temporal``
certificate (``<state>/tls/temporal.crt|.key``, 0600, issued by the bootstrap),
requires a client certificate (``ssl_verify_client on``) that chains to the stack's
CA (``<state>/tls/ca.pem``; the root signs intermediates only, so only leaves of an
intermediate verify, at most 2 levels deep), speaks ALPN ``h2`` (gRPC) and passes the
bytes on to the dev server. It has its own prefix, config and PID under
``<state>/tls-proxy``; the stack starts and stops it by PID.

The dev server's own plaintext port stays open on loopback (it cannot be closed):
workers and clients of the TLS stack are pointed at the TLS port instead.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from orders_ops import apt, pki
from orders_ops.settings import HOST, StackSettings, _port, _switch
from orders_ops.stack import Server, StackError, _is_root, child_env, private_dir

TLS_ENV = "ORDERS_TLS"
PORT_ENV = "ORDERS_TEMPORAL_TLS_PORT"
DEFAULT_PORT = 7235
NGINX = "/usr/sbin/nginx"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
PACKAGES = ("nginx", "libnginx-mod-stream")
SERVER_NAME = pki.SERVER_NAME


def tls_enabled() -> bool:
    """``ORDERS_TLS``: the local stack's one TLS switch [0], read now (not when the
    settings were made: a test turns it on for one module)."""
    return _switch(TLS_ENV)


def tls_port() -> int:
    return _port(PORT_ENV, DEFAULT_PORT)


def tls_address() -> str:
    return f"{HOST}:{tls_port()}"


def ensure_nginx() -> list[str]:
    """nginx with the stream module, installed from Debian's packages when missing (as
    root; waits for another apt run's lock up to 10 minutes)."""
    if Path(NGINX).is_file() and Path(STREAM_MODULE).is_file():
        return []
    if not _is_root() or shutil.which("apt-get") is None:
        raise StackError(
            f"nginx with its stream module is missing ({NGINX}, {STREAM_MODULE}): install "
            f"them ('sudo apt-get install -y {' '.join(PACKAGES)}') or run without ORDERS_TLS=1"
        )
    result = apt.install(PACKAGES, child_env())
    if result.returncode != 0 or not Path(STREAM_MODULE).is_file():
        raise StackError(
            f"could not install {' '.join(PACKAGES)} (apt-get exit {result.returncode}): "
            f"{apt.failure_tail(result)}"
        )
    return [f"tls: installed {' '.join(PACKAGES)}"]


def nginx_conf(settings: StackSettings, prefix: Path) -> str:
    crt, key = pki.server_files(settings, "server-temporal")
    user = "user nobody nogroup;\n" if _is_root() else ""
    return f"""# written by orders_ops.tls_proxy at each start; edit the code, not this file
load_module {STREAM_MODULE};
{user}daemon off;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log stderr info;  # info: each refused certificate, with the reason
events {{ worker_connections 1024; }}
stream {{
    server {{
        listen {HOST}:{tls_port()} ssl;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        ssl_client_certificate {pki.ca_file(settings)};
        ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_alpn h2;
        ssl_session_tickets off;
        proxy_pass {HOST}:{settings.temporal_port};
        proxy_connect_timeout 5s;
        proxy_timeout 10m;
    }}
}}
"""


class TemporalTLSProxy(Server):
    """nginx terminating mutual TLS in front of the Temporal dev server."""

    def __init__(self, settings: StackSettings) -> None:
        self.prefix = settings.state_dir / "tls-proxy"
        super().__init__(
            "temporal-tls",
            settings,
            {"grpc+tls": tls_port()},
            # nginx's master shows its command line, which names our own prefix
            expect=str(self.prefix),
            port_vars={"grpc+tls": PORT_ENV},
        )

    def _launch(self) -> None:
        ensure_nginx()
        for path in (
            pki.ca_file(self.settings),
            *pki.server_files(self.settings, "server-temporal"),
        ):
            if not path.is_file():
                raise StackError(
                    f"{path} is missing: the bootstrap writes it ('orders-bootstrap', or "
                    "'orders-stack up' with ORDERS_TLS=1)"
                )
        prefix = private_dir(self.prefix)
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(self.settings, prefix))
        conf.chmod(0o600)
        argv = [NGINX, "-e", "stderr", "-p", f"{prefix}/", "-c", str(conf)]
        check = subprocess.run(
            [*argv, "-t", "-q"], capture_output=True, text=True, check=False, timeout=30
        )
        if check.returncode != 0:
            raise StackError(f"nginx refused its config {conf}: {check.stderr.strip()[-600:]}")
        self._spawn(argv, env=child_env())

    def healthy(self) -> bool:
        try:
            with socket.create_connection((HOST, tls_port()), timeout=2):
                return True
        except OSError:
            return False
