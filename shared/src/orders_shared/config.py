"""A worker's configuration: read from the environment once, in one typed place.

Start-up fails fast with a :class:`ConfigError` naming the missing or bad
variable and what it should be, instead of failing later with a stack trace.

Variables (defaults in brackets):

``VAULT_ADDR``                  Vault/OpenBao URL (required)
``VAULT_AUTH_METHOD``           ``kubernetes`` (cluster), ``jwt`` (local process mode) or
                                ``token`` (explicit dev use only) [kubernetes]
``VAULT_AUTH_MOUNT``            auth mount path [same as the method]
``VAULT_AUTH_ROLE``             Vault auth role [orders-<service>]
``VAULT_TOKEN_FILE``            the workload's identity token
                                [/var/run/secrets/vault/token, the chart's projected token]
``VAULT_TOKEN``                 a Vault token, read only when VAULT_AUTH_METHOD=token
``VAULT_REQUEST_TIMEOUT``       seconds per Vault request [5]
``ORDERS_DB_HOST`` / ``ORDERS_DB_PORT`` / ``ORDERS_DB_NAME``
                                where Postgres is [127.0.0.1 / 5432 / orders]
``ORDERS_DB_MOUNT``             database secrets engine mount [database]
``ORDERS_DB_POOL_MAX``          connections per database role [10]
``ORDERS_DB_COMMAND_TIMEOUT``   seconds a statement may run before it fails (and is retried) [20]
``ORDERS_DATABASE_SSLMODE``     how Postgres's certificate is checked (libpq names; verify-full
                                in TLS mode) [unset: asyncpg's default, no verification]
``ORDERS_DATABASE_SSLROOTCERT`` the CA bundle for verify-ca / verify-full
``TEMPORAL_ADDRESS``            host:port of the Temporal frontend [127.0.0.1:7233]
``TEMPORAL_NAMESPACE``          [default]
``ORDERS_METRICS_HOST`` / ``ORDERS_METRICS_PORT``
                                where /healthz, /readyz and /metrics listen [0.0.0.0 / 9464]
``ORDERS_SDK_METRICS_PORT``     loopback port of the Temporal SDK's own metrics, which
                                /metrics re-exports [ORDERS_METRICS_PORT + 1000]
``ORDERS_SHUTDOWN_GRACE``       seconds in-flight activities get after SIGTERM [20]
``ORDERS_LOG_LEVEL``            [INFO]
``ORDERS_TEMPORAL_TLS`` and the other TLS variables: see :class:`orders_shared.tls.TLSSettings`.

The order client (:mod:`orders_shared.client`, the ``orders`` CLI) also reads
``ORDERS_CLIENT_DEADLINE``: seconds it keeps retrying while Vault or Temporal
does not answer, before it gives up with one line naming which [60].

There is deliberately no variable for a database password: credentials only
ever come from Vault.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orders_shared import db_tls
from orders_shared.catalog import service as lookup_service

AuthMethod = Literal["kubernetes", "jwt", "token"]
AUTH_METHODS: tuple[AuthMethod, ...] = ("kubernetes", "jwt", "token")
DEFAULT_TOKEN_FILE = "/var/run/secrets/vault/token"  # noqa: S105 (a path, not a secret)


class ConfigError(ValueError):
    """A missing or invalid environment variable. The message names it and the fix."""


class _Env:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str, default: str | None = None) -> str:
        value = self._env.get(name, "").strip()
        if value:
            return value
        if default is None:
            raise ConfigError(f"{name} is not set: it is required (see orders_shared.config)")
        return default

    def whole(self, name: str, default: int, lo: int, hi: int) -> int:
        raw = self._env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise ConfigError(f"{name}={value} is out of range: use {lo} to {hi}")
        return value

    def seconds(self, name: str, default: float, lo: float, hi: float) -> float:
        raw = self._env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
        if not lo <= value <= hi:
            raise ConfigError(f"{name}={value} is out of range: use {lo} to {hi}")
        return value


@dataclass(frozen=True)
class VaultConfig:
    addr: str
    auth_method: AuthMethod
    auth_mount: str
    auth_role: str
    token_file: Path
    request_timeout: float
    static_token: str | None = None  # only for auth_method == "token"

    def __repr__(self) -> str:  # never print a token, even by accident
        return (
            f"VaultConfig(addr={self.addr!r}, auth_method={self.auth_method!r}, "
            f"auth_mount={self.auth_mount!r}, auth_role={self.auth_role!r}, "
            f"token_file={str(self.token_file)!r})"
        )

    @classmethod
    def from_env(cls, service: str, env: Mapping[str, str] | None = None) -> VaultConfig:
        e = _Env(os.environ if env is None else env)
        addr = e.text("VAULT_ADDR")
        if not addr.startswith(("http://", "https://")):
            raise ConfigError(f"VAULT_ADDR={addr!r} must start with http:// or https://")
        raw_method = e.text("VAULT_AUTH_METHOD", "kubernetes")
        method = next((m for m in AUTH_METHODS if m == raw_method), None)
        if method is None:
            raise ConfigError(
                f"VAULT_AUTH_METHOD={raw_method!r} is not supported: use one of "
                f"{', '.join(AUTH_METHODS)} (token is for explicit dev use only)"
            )
        static_token = None
        if method == "token":
            static_token = e.text("VAULT_TOKEN")
        token_file = Path(e.text("VAULT_TOKEN_FILE", DEFAULT_TOKEN_FILE))
        if method != "token" and not token_file.is_file():
            raise ConfigError(
                f"VAULT_TOKEN_FILE={str(token_file)!r} does not exist: mount the workload's "
                f"identity token there (the chart projects it; locally 'make up' writes it)"
            )
        return cls(
            addr=addr.rstrip("/"),
            auth_method=method,
            auth_mount=e.text("VAULT_AUTH_MOUNT", method),
            auth_role=e.text("VAULT_AUTH_ROLE", lookup_service(service).identity),
            token_file=token_file,
            request_timeout=e.seconds("VAULT_REQUEST_TIMEOUT", 5.0, 0.1, 120.0),
            static_token=static_token,
        )


@dataclass(frozen=True)
class DatabaseConfig:
    host: str
    port: int
    name: str
    mount: str
    pool_max: int
    command_timeout: float = 20.0
    sslmode: str = ""
    sslrootcert: str = ""

    def ssl_arg(self) -> db_tls.SSLArg:
        """asyncpg's ``ssl=`` argument (see :mod:`orders_shared.db_tls`)."""
        return db_tls.client_ssl(self.sslmode, self.sslrootcert)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DatabaseConfig:
        e = _Env(os.environ if env is None else env)
        return cls(
            host=e.text("ORDERS_DB_HOST", "127.0.0.1"),
            port=e.whole("ORDERS_DB_PORT", 5432, 1, 65535),
            name=e.text("ORDERS_DB_NAME", "orders"),
            mount=e.text("ORDERS_DB_MOUNT", "database"),
            pool_max=e.whole("ORDERS_DB_POOL_MAX", 10, 1, 500),
            command_timeout=e.seconds("ORDERS_DB_COMMAND_TIMEOUT", 20.0, 0.1, 600.0),
            **_database_tls(e),
        )


def _database_tls(e: _Env) -> dict[str, str]:
    names = ("ORDERS_DATABASE_SSLMODE", "ORDERS_DATABASE_SSLROOTCERT")
    mode, ca = (e.text(name, "") for name in names)
    try:
        db_tls.check(mode, ca, names=names)
    except db_tls.DatabaseTLSError as exc:
        raise ConfigError(str(exc)) from None
    return {"sslmode": mode, "sslrootcert": ca}


@dataclass(frozen=True)
class TemporalConfig:
    address: str
    namespace: str

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, default_address: str = "127.0.0.1:7233"
    ) -> TemporalConfig:
        """``default_address`` is where the caller's settings put Temporal when
        ``TEMPORAL_ADDRESS`` is unset (the ``orders`` CLI: the local stack's port)."""
        e = _Env(os.environ if env is None else env)
        address = e.text("TEMPORAL_ADDRESS", default_address)
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"TEMPORAL_ADDRESS={address!r} must be host:port")
        return cls(address=address, namespace=e.text("TEMPORAL_NAMESPACE", "default"))


DEFAULT_CLIENT_DEADLINE = 60.0


def client_deadline(env: Mapping[str, str] | None = None) -> float:
    """``ORDERS_CLIENT_DEADLINE``: how long the order client rides out an outage [60 s]."""
    e = _Env(os.environ if env is None else env)
    return e.seconds("ORDERS_CLIENT_DEADLINE", DEFAULT_CLIENT_DEADLINE, 0.5, 3600.0)


def vault_request_timeout(env: Mapping[str, str] | None = None) -> float:
    """``VAULT_REQUEST_TIMEOUT``: seconds per Vault request [5]."""
    e = _Env(os.environ if env is None else env)
    return e.seconds("VAULT_REQUEST_TIMEOUT", 5.0, 0.1, 120.0)


@dataclass(frozen=True)
class OperationsConfig:
    metrics_host: str
    metrics_port: int
    sdk_metrics_port: int
    shutdown_grace: float
    log_level: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperationsConfig:
        e = _Env(os.environ if env is None else env)
        port = e.whole("ORDERS_METRICS_PORT", 9464, 1, 65535)
        level = e.text("ORDERS_LOG_LEVEL", "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"ORDERS_LOG_LEVEL={level!r}: use DEBUG, INFO, WARNING or ERROR")
        return cls(
            metrics_host=e.text("ORDERS_METRICS_HOST", "0.0.0.0"),  # noqa: S104 (probes)
            metrics_port=port,
            sdk_metrics_port=e.whole(
                "ORDERS_SDK_METRICS_PORT", port + 1000 if port <= 64535 else port - 1000, 1, 65535
            ),
            shutdown_grace=e.seconds("ORDERS_SHUTDOWN_GRACE", 20.0, 0.0, 3600.0),
            log_level=level,
        )


@dataclass(frozen=True)
class WorkerConfig:
    """Everything one service's worker process needs, validated at start."""

    service: str
    vault: VaultConfig
    database: DatabaseConfig
    temporal: TemporalConfig
    operations: OperationsConfig

    @classmethod
    def from_env(cls, service: str, env: Mapping[str, str] | None = None) -> WorkerConfig:
        lookup_service(service)  # unknown service names fail here, by name
        return cls(
            service=service,
            vault=VaultConfig.from_env(service, env),
            database=DatabaseConfig.from_env(env),
            temporal=TemporalConfig.from_env(env),
            operations=OperationsConfig.from_env(env),
        )
