"""A TokenReview stand-in for tests: the slice of the Kubernetes API that Vault's
``kubernetes`` auth calls (``POST /apis/authentication.k8s.io/v1/tokenreviews``).

OpenBao does not check a reviewed token's signature or expiry itself (the API
server does), so this stand-in must: it verifies signature, issuer, expiry and
audience the way the API server would, and answers with the ServiceAccount
user the token names. It also requires the bearer (OpenBao sends the
logging-in JWT there when no reviewer JWT is configured) to be valid, as the
API server requires an authenticated caller. It never logs a token.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


def any_ca_pem() -> str:
    """A throwaway self-signed CA certificate.

    OpenBao insists on ``kubernetes_ca_cert`` once ``disable_local_ca_jwt`` is
    set, even for an http endpoint that never uses it.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orders-test-ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class TokenReviewServer:
    """Serve TokenReview on 127.0.0.1 on a random port, in a thread."""

    def __init__(self, public_key: rsa.RSAPublicKey, issuer: str) -> None:
        self.public_key = public_key
        self.issuer = issuer
        self.outcomes: list[tuple[bool, str]] = []  # (authenticated, user or error)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> TokenReviewServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def verify(self, token: str, audiences: list[str] | None) -> dict[str, Any]:
        """The token's claims, or :class:`jwt.InvalidTokenError` saying why not."""
        return jwt.decode(
            token,
            self.public_key,
            algorithms=["RS256"],
            issuer=self.issuer,
            audience=audiences or None,
            options={
                "require": ["exp", "iat", "iss", "sub"],
                "verify_aud": bool(audiences),
            },
        )

    def review(self, body: dict[str, Any]) -> dict[str, Any]:
        spec = body.get("spec") or {}
        audiences = list(spec.get("audiences") or [])
        status: dict[str, Any]
        try:
            claims = self.verify(str(spec.get("token", "")), audiences)
            sub = str(claims["sub"])
            parts = sub.split(":")
            if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
                raise jwt.InvalidTokenError("not a ServiceAccount token")
            namespace, name = parts[2], parts[3]
            sa = (claims.get("kubernetes.io") or {}).get("serviceaccount") or {}
            token_aud = claims.get("aud") or []
            token_aud = [token_aud] if isinstance(token_aud, str) else list(token_aud)
            status = {
                "authenticated": True,
                "user": {
                    "username": sub,
                    "uid": str(sa.get("uid", "")),
                    "groups": [
                        "system:serviceaccounts",
                        f"system:serviceaccounts:{namespace}",
                        "system:authenticated",
                    ],
                },
                "audiences": [a for a in token_aud if not audiences or a in audiences],
            }
            self.outcomes.append((True, f"system:serviceaccount:{namespace}:{name}"))
        except jwt.InvalidTokenError as exc:
            status = {"authenticated": False, "error": f"invalid token: {exc}"}
            self.outcomes.append((False, str(exc)))
        return {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"audiences": audiences} if audiences else {},
            "status": status,
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet, and never a token in a log

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                if self.path.split("?")[0] != REVIEW_PATH:
                    self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                    return
                bearer = self.headers.get("Authorization", "")
                try:
                    if not bearer.startswith("Bearer "):
                        raise jwt.InvalidTokenError("no bearer token")
                    server.verify(bearer.removeprefix("Bearer ").strip(), None)
                except jwt.InvalidTokenError:
                    self._send(401, {"kind": "Status", "code": 401, "reason": "Unauthorized"})
                    return
                length = int(self.headers.get("Content-Length", "0"))
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._send(400, {"kind": "Status", "code": 400, "reason": "BadRequest"})
                    return
                self._send(201, server.review(body))

        return Handler
