"""``orders-identity``: the local identity issuer, process mode's stand-in for the kubelet.

In a cluster every worker gets a projected ServiceAccount token that the
kubelet refreshes and Vault's ``kubernetes`` auth checks via TokenReview. On a
laptop there is no kubelet, so this module signs tokens of the same shape with
a local key that Vault's ``jwt`` auth trusts, and keeps one token file per
service fresh. Workers read their own file and nothing else; the same worker
code therefore runs in both modes.

Besides the six services it issues the ``client`` identity (``orders-client``:
whoever submits orders; it seals fields and encrypts payloads, and is kept
apart from :data:`orders_shared.catalog.SERVICES`, which are the workers), and,
on request, *user* identity tokens (``mint-user``): the stand-in for an OIDC
provider's ID token, which the codec server exchanges at the ``oidc-readers``
JWT auth mount for a short-lived reader token.

The signing key lives in the issuer's own folder (``settings.issuer_key_file``;
as root, only the ``orders-identity`` user reaches it) and is created once by
the bootstrap: creating a new key silently would leave Vault trusting the old
one, so ``serve`` refuses to start without it. ``rotate-key`` makes a new key
the signer while the previous one is still trusted (both public keys are in
Vault's JWT auth config) until ``rotate-key --finish`` retires it.

Lifetimes are capped: a workload identity token lives at most
:data:`MAX_TTL` (1 h), a user token at most :data:`MAX_USER_TTL` (12 h).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import os
import signal
import stat
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from orders_ops.settings import SettingsError, StackSettings
from orders_shared.catalog import SERVICES

ISSUER = "https://orders-identity.local"
AUDIENCE = "vault"
ALGORITHM = "RS256"  # what the Kubernetes API server signs ServiceAccount tokens with
DEFAULT_TTL = 600
MIN_TTL = 2
MAX_TTL = 3600
"""Longest life of a workload identity token (the kubelet's default is 1 h too)."""
MAX_USER_TTL = 12 * 3600
"""Longest life of a user identity token."""
TTL_ENV = "ORDERS_IDENTITY_TOKEN_TTL"

# The kubelet refreshes a projected token once 80% of its lifetime has passed.
REFRESH_AT = 0.8
# A token counts as fresh while more than this share of its lifetime is left. It
# must sit below the 20% left at refresh time, or the health check would flap
# every cycle; half of that margin says "the loop is on schedule" and still
# leaves a worker reading the file a usable token.
FRESH_SHARE_LEFT = (1 - REFRESH_AT) / 2

CLIENT = "client"
"""The identity that submits orders (``orders-client``): not a worker, not in SERVICES."""
IDENTITIES: dict[str, str] = {
    **{name: spec.identity for name, spec in SERVICES.items()},
    CLIENT: f"orders-{CLIENT}",
}
"""Every ServiceAccount-shaped identity the issuer keeps a token file for."""

USER_ISSUER = f"{ISSUER}/users"
"""Issuer of user identity tokens (the local stand-in for an OIDC provider)."""
READER_AUDIENCE = "orders-codec"
READER_GROUP = "payload-readers"
DEFAULT_USER_TTL = 3600

# uuid5 namespace for ServiceAccount uids: stable per (namespace, service), so
# a token re-minted after a restart names the same account.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, ISSUER)


class IssuerError(RuntimeError):
    """The issuer cannot do what was asked; the message names the problem and the fix."""


# --------------------------------------------------------------------------- key


def _new_key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ensure_signing_key(settings: StackSettings) -> bool:
    """Create the signing key unless it exists. True when it was created now."""
    path = settings.issuer_key_file
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = _new_key_pem()
    try:
        # O_EXCL: two bootstraps racing must not each write a different key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return True


def rotate_signing_key(settings: StackSettings) -> None:
    """A new key signs from now on; the current one becomes the previous one (still
    trusted until :func:`retire_previous_key`). A key older than that is dropped:
    Vault stops trusting it at the next bootstrap."""
    current = settings.issuer_key_file
    load_signing_key(settings)  # there must be a current key to rotate
    fd, tmp = tempfile.mkstemp(dir=current.parent, prefix=".new-key.", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_new_key_pem())
            f.flush()
            os.fsync(f.fileno())
        os.replace(current, settings.issuer_previous_key_file)
        os.replace(tmp, current)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def retire_previous_key(settings: StackSettings) -> bool:
    """Forget the previous key (the overlap is over). True when there was one."""
    try:
        settings.issuer_previous_key_file.unlink()
    except FileNotFoundError:
        return False
    return True


def _load_key(path: Path) -> rsa.RSAPrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IssuerError(
            f"no identity signing key at {path}; run 'orders-bootstrap' (or 'orders-stack up'), "
            "which creates it and makes Vault trust it"
        ) from None
    except PermissionError:
        raise IssuerError(
            f"cannot read the identity signing key {path}: run this as root or as the issuer's user"
        ) from None
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise IssuerError(f"{path} is not an RSA private key; delete it and run 'orders-bootstrap'")
    return key


def load_signing_key(settings: StackSettings) -> rsa.RSAPrivateKey:
    """The current key: the one that signs."""
    return _load_key(settings.issuer_key_file)


def verification_keys(settings: StackSettings) -> list[rsa.RSAPublicKey]:
    """Every public key a token may be signed with: the current one, then, during a
    rotation's overlap, the previous one."""
    keys = [load_signing_key(settings).public_key()]
    if settings.issuer_previous_key_file.exists():
        keys.append(_load_key(settings.issuer_previous_key_file).public_key())
    return keys


def _pem(key: rsa.RSAPublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def public_key_pem(settings: StackSettings) -> str:
    """The current key's public half (PEM)."""
    return _pem(load_signing_key(settings).public_key())


def public_key_pems(settings: StackSettings) -> list[str]:
    """What Vault's JWT auth is configured with (``jwt_validation_pubkeys``): the
    current key and, during a rotation, the previous one."""
    return [_pem(key) for key in verification_keys(settings)]


def key_id(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> str:
    """SHA-256 of the public key's DER, base64url: how the Kubernetes API server names its keys."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


# --------------------------------------------------------------------------- tokens


def subject(namespace: str, service_name: str) -> str:
    """The ServiceAccount subject Vault roles are bound to."""
    return f"system:serviceaccount:{namespace}:{_identity(service_name)}"


def service_uid(namespace: str, service_name: str) -> str:
    return str(uuid.uuid5(_UID_NAMESPACE, f"{namespace}/{_identity(service_name)}"))


def claims_for(
    namespace: str, service_name: str, ttl: int = DEFAULT_TTL, *, now: float | None = None
) -> dict[str, Any]:
    """The claims of a projected ServiceAccount token for ``service_name``.

    Separate from :func:`mint` so tests can alter one claim and sign the rest.
    """
    identity = _identity(service_name)
    _check_ttl(ttl, MAX_TTL, "a workload identity token")
    issued = int(time.time() if now is None else now)
    return {
        "iss": ISSUER,
        "sub": subject(namespace, service_name),
        "aud": [AUDIENCE],
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {
                "name": identity,
                "uid": service_uid(namespace, service_name),
            },
        },
    }


def sign(key: rsa.RSAPrivateKey, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": key_id(key)})


def mint(
    settings: StackSettings,
    service_name: str,
    ttl: int = DEFAULT_TTL,
    *,
    now: float | None = None,
) -> str:
    """A ServiceAccount-shaped JWT for one service, signed with the issuer key."""
    claims = claims_for(settings.namespace, service_name, ttl, now=now)
    return sign(load_signing_key(settings), claims)


PROBE_CLAIM = "orders_probe"
"""A claim only the issuer's key can add to a workload token: the token is one of
``orders-demo``'s own probes (Vault's JWT roles map it into the token's metadata,
``probe``, which the audit device records on every request of that token)."""


def mint_probe(settings: StackSettings, service_name: str, purpose: str, ttl: int = 120) -> str:
    """A token of ``service_name``'s identity (same subject, same policy) that is marked
    as a probe (``purpose``, e.g. ``orders-demo``): ``orders-audit`` counts its denied
    Transit decrypts as the expected outcome of a probe instead of flagging them."""
    claims = claims_for(settings.namespace, service_name, ttl)
    claims[PROBE_CLAIM] = purpose
    return sign(load_signing_key(settings), claims)


def _check_ttl(ttl: int, cap: int, what: str) -> None:
    if not 0 < ttl <= cap:
        raise IssuerError(f"ttl {ttl}s for {what} is out of range: use 1 to {cap} seconds")


def _identity(name: str) -> str:
    if name not in IDENTITIES:
        raise IssuerError(f"unknown service {name!r}; known services: {', '.join(IDENTITIES)}")
    return IDENTITIES[name]


def user_claims(
    user: str,
    groups: Sequence[str] = (READER_GROUP,),
    ttl: int = DEFAULT_USER_TTL,
    *,
    issuer: str = USER_ISSUER,
    audience: str = READER_AUDIENCE,
    now: float | None = None,
) -> dict[str, Any]:
    """The claims of a user's identity token, as an OIDC provider would issue them."""
    _check_ttl(ttl, MAX_USER_TTL, "a user token")
    issued = int(time.time() if now is None else now)
    return {
        "iss": issuer,
        "sub": user,
        "aud": audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "email": f"{user}@orders.local",
        "groups": list(groups),
    }


def mint_user(
    settings: StackSettings,
    user: str,
    groups: Sequence[str] = (READER_GROUP,),
    ttl: int = DEFAULT_USER_TTL,
) -> str:
    """A user identity token signed by the local issuer (local mode of the codec server)."""
    return sign(load_signing_key(settings), user_claims(user, groups, ttl))


def _write_atomic(path: Path, content: str) -> None:
    """Write then rename, so a worker never reads half a token.

    A folder the stack prepared for another OS user (set-group-id, group = that
    user's group) gets a file that group may read (0640); otherwise 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    shared = bool(path.parent.stat().st_mode & stat.S_ISGID)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if shared:
            os.fchmod(fd, 0o640)
        with os.fdopen(fd, "w") as f:  # mkstemp creates the file with mode 0600
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_tokens(settings: StackSettings, ttl: int = DEFAULT_TTL) -> list[Path]:
    """(Re)write every service's token file (mode 0600, folder 0700)."""
    key = load_signing_key(settings)
    now = int(time.time())  # the iat every token carries; serve schedules from it
    settings.identity_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    written: list[Path] = []
    for name in IDENTITIES:
        token = sign(key, claims_for(settings.namespace, name, ttl, now=now))
        path = settings.token_file(name)
        _write_atomic(path, token + "\n")
        written.append(path)
    return written


LOCAL_READER = "local-developer"
"""The reader the local codec server acts as (the dev server's UI sends no token)."""
LOCAL_READER_DIR = "codec"


def local_reader_token_file(settings: StackSettings) -> Path:
    return settings.token_dir(LOCAL_READER_DIR) / "reader.jwt"


def write_local_reader_token(settings: StackSettings) -> Path:
    """(Re)write the local codec server's reader token (a user token, 1 h)."""
    path = local_reader_token_file(settings)
    _write_atomic(path, mint_user(settings, LOCAL_READER) + "\n")
    return path


def token_share_left(
    settings: StackSettings, service_name: str, *, now: float | None = None
) -> float:
    """Share (0..1) of the token file's lifetime still ahead; 0 when missing or not ours.

    The signature is checked with the current key, so tokens signed by a key
    Vault no longer trusts do not count as fresh.
    """
    try:
        token = settings.token_file(service_name).read_text().strip()
        key = load_signing_key(settings)
        claims = jwt.decode(
            token,
            key.public_key(),
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"verify_exp": False, "require": ["exp", "iat", "sub"]},
        )
    except (OSError, IssuerError, jwt.InvalidTokenError):
        return 0.0
    if claims["sub"] != subject(settings.namespace, service_name):
        return 0.0
    lifetime = int(claims["exp"]) - int(claims["iat"])
    if lifetime <= 0:
        return 0.0
    left = int(claims["exp"]) - (time.time() if now is None else now)
    return max(0.0, left / lifetime)


def tokens_fresh(settings: StackSettings) -> bool:
    """Health check: every token file exists, verifies and is not overdue for re-minting."""
    return all(token_share_left(settings, name) > FRESH_SHARE_LEFT for name in IDENTITIES)


# --------------------------------------------------------------------------- serve


def ttl_from_env() -> int:
    raw = os.environ.get(TTL_ENV)
    if raw is None or raw == "":
        return DEFAULT_TTL
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{TTL_ENV}={raw!r} is not a number of seconds") from None
    if value < MIN_TTL:
        raise SettingsError(f"{TTL_ENV}={value} is too short: use at least {MIN_TTL} seconds")
    if value > MAX_TTL:
        raise SettingsError(f"{TTL_ENV}={value} is too long: use at most {MAX_TTL} seconds (1 h)")
    return value


def _log(message: str) -> None:
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    print(f"{stamp} orders-identity: {message}", flush=True)


def serve(settings: StackSettings, ttl: int, stop: threading.Event) -> None:
    """Re-mint every token at :data:`REFRESH_AT` of its lifetime until ``stop`` is set."""
    load_signing_key(settings)  # fail now, clearly, rather than on the first refresh
    interval = max(1.0, ttl * REFRESH_AT)
    _log(f"issuing {len(IDENTITIES)} tokens to {settings.identity_dir} (ttl {ttl}s)")
    while not stop.is_set():
        # iat is whole seconds (up to 1 s before now): count from it, not from now
        issued = int(time.time())
        try:
            write_tokens(settings, ttl)
            if local_reader_token_file(settings).parent.is_dir():  # a local codec server runs
                write_local_reader_token(settings)
            wait = issued + interval - time.time()
        except (OSError, IssuerError) as exc:
            # a transient disk or key problem: keep the loop alive and try again soon
            _log(f"could not write tokens: {exc}; retrying")
            wait = min(interval, 5.0)
        stop.wait(max(0.1, wait))
    _log("stopped")


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="orders-identity",
        description="Local identity issuer: ServiceAccount-shaped JWTs for process mode.",
        epilog=f"Token lifetime: {TTL_ENV} (default {DEFAULT_TTL}s). Services: "
        + ", ".join(IDENTITIES),
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("serve", help="keep every service's token file fresh until SIGTERM")
    sub.add_parser("write", help="write every service's token file once")
    mint_cmd = sub.add_parser("mint", help="print one service's token (for people)")
    mint_cmd.add_argument("service")
    sub.add_parser("public-key", help="print the public key Vault trusts (PEM)")
    user_cmd = sub.add_parser(
        "mint-user", help="print a user identity token (a payload reader, for the codec server)"
    )
    user_cmd.add_argument("user")
    user_cmd.add_argument(
        "--group", action="append", help=f"group claim (repeatable; default {READER_GROUP})"
    )
    user_cmd.add_argument(
        "--ttl", type=int, default=DEFAULT_USER_TTL, help=f"seconds (at most {MAX_USER_TTL})"
    )
    rotate = sub.add_parser(
        "rotate-key",
        help="make a new signing key the signer (the previous one stays trusted); run as root "
        "through 'orders-stack rotate-issuer-key', which also updates Vault",
    )
    rotate.add_argument(
        "--finish", action="store_true", help="retire the previous key (the overlap is over)"
    )
    args = parser.parse_args(argv)

    try:
        settings = StackSettings.from_env()
        ttl = ttl_from_env()
        if args.cmd == "serve":
            stop = threading.Event()

            def _stop(_signum: int, _frame: FrameType | None) -> None:
                stop.set()

            signal.signal(signal.SIGTERM, _stop)
            signal.signal(signal.SIGINT, _stop)
            serve(settings, ttl, stop)
        elif args.cmd == "write":
            paths = write_tokens(settings, ttl)
            print(f"orders-identity: wrote {len(paths)} tokens to {settings.identity_dir}")
        elif args.cmd == "mint":
            print(mint(settings, args.service, ttl))
        elif args.cmd == "mint-user":
            print(mint_user(settings, args.user, args.group or [READER_GROUP], args.ttl))
        elif args.cmd == "public-key":
            print(public_key_pem(settings), end="")
        elif args.cmd == "rotate-key":
            from orders_ops.stack import StackError, rotate_issuer_key

            try:
                for line in rotate_issuer_key(settings, finish=args.finish):
                    print(f"orders-identity: {line}")
            except StackError as exc:
                raise IssuerError(str(exc)) from None
    except (IssuerError, SettingsError) as exc:
        print(f"orders-identity: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
