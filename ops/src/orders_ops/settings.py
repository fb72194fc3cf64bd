"""Where the local stack lives and listens: one typed place, read from the environment.

Every value has a default so ``make up`` works as is; each can be changed with
an ``ORDERS_*`` variable (two stacks side by side just need other ports and
another state folder).
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from orders_shared import db_tls

HOST = "127.0.0.1"

PORT_VARIABLES: dict[str, int] = {
    "ORDERS_TEMPORAL_PORT": 7233,
    "ORDERS_TEMPORAL_UI_PORT": 8233,
    "ORDERS_TEMPORAL_HTTP_PORT": 7243,
    "ORDERS_TEMPORAL_METRICS_PORT": 7244,
    "ORDERS_VAULT_PORT": 8200,
    "ORDERS_VAULT_CLUSTER_PORT": 8201,
    "ORDERS_POSTGRES_PORT": 5433,
    "ORDERS_CODEC_PORT": 8081,
    "ORDERS_PROVIDER_PORT": 8090,
    "ORDERS_WORKER_METRICS_PORT": 9464,
    "ORDERS_PROMETHEUS_PORT": 9090,  # only with `orders-stack up --metrics`
    "ORDERS_TEMPORAL_TLS_PORT": 7235,  # ORDERS_TLS=1 only: Temporal behind mTLS
    # ORDERS_VAULT_HA=1 only: the first of six (three OpenBao nodes, API and cluster
    # port each); default ORDERS_VAULT_PORT + 2
    "ORDERS_VAULT_HA_PORT": 8202,
}
"""Every port variable of the local stack and its default (``orders-stack --help`` lists them)."""


def repo_root() -> Path | None:
    """The repository this package was installed from (an editable install), if any:
    the first folder above this file holding ``uv.lock`` and ``ops/pyproject.toml``."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "uv.lock").is_file() and (parent / "ops" / "pyproject.toml").is_file():
            return parent
    return None


def default_state_dir() -> Path:
    """``ORDERS_STATE_DIR``, else ``<repository>/.local`` whatever the current directory
    (so ``make status`` from a sub-folder finds the running stack), else ``./.local``."""
    explicit = os.environ.get("ORDERS_STATE_DIR")
    if explicit:
        return Path(explicit).resolve()
    root = repo_root()
    return (root / ".local") if root is not None else (Path.cwd() / ".local").resolve()


class SettingsError(ValueError):
    """A bad ``ORDERS_*`` variable; the message names it and the fix."""


def _switch(name: str) -> bool:
    raw = (os.environ.get(name) or "0").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name}={raw!r}: use 1 (on) or 0 (off)")


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a port number (1-65535)") from None
    if not 1 <= value <= 65535:
        raise SettingsError(f"{name}={value} is out of range: use a port from 1 to 65535")
    return value


@dataclass(frozen=True)
class StackSettings:
    state_dir: Path
    temporal_port: int
    temporal_ui_port: int
    temporal_http_port: int
    temporal_metrics_port: int
    vault_port: int
    postgres_port: int
    worker_metrics_port: int = 9464  # the first of six: one /metrics port per worker
    codec_port: int = 8081
    vault_cluster_port: int = 8201  # OpenBao's raft storage listens here too
    provider_port: int = 8090  # the local card-payment provider simulator
    prometheus_port: int = 9090  # the local Prometheus (`orders-stack up --metrics`)
    # the HA Vault's nodes (ORDERS_VAULT_HA=1): six ports from here; 0: vault_port + 2
    vault_ha_first_port: int = 0
    namespace: str = "orders"
    database: str = "orders"
    # "local": the process stack on loopback. "cluster": the bootstrap Job, which
    # reaches Vault and Postgres by service name and keeps no state on disk. "external":
    # Vault and Postgres of your own (VAULT_ADDR, ORDERS_DB_*), workers as processes
    # with the local identity issuer (docs/bring-your-own.md).
    mode: str = "local"
    db_host: str = HOST
    vault_url: str | None = None
    # ORDERS_TLS=1: PKI certificates, PostgreSQL with hostssl only (docs/tls-postgres-codec.md)
    tls: bool = False
    # how clients verify PostgreSQL (asyncpg / libpq sslmode, CA bundle); empty: no TLS asked
    db_sslmode: str = ""
    db_sslrootcert: str = ""
    # the CA's path as Vault's server sees it (its database connection); "": Vault's roots
    vault_db_sslrootcert: str = ""

    @classmethod
    def from_env(cls) -> StackSettings:
        state = default_state_dir()
        local = cls(
            state_dir=state,
            temporal_port=_port("ORDERS_TEMPORAL_PORT", 7233),
            temporal_ui_port=_port("ORDERS_TEMPORAL_UI_PORT", 8233),
            temporal_http_port=_port("ORDERS_TEMPORAL_HTTP_PORT", 7243),
            temporal_metrics_port=_port("ORDERS_TEMPORAL_METRICS_PORT", 7244),
            vault_port=_port("ORDERS_VAULT_PORT", 8200),
            postgres_port=_port("ORDERS_POSTGRES_PORT", 5433),
            worker_metrics_port=_port("ORDERS_WORKER_METRICS_PORT", 9464),
            codec_port=_port("ORDERS_CODEC_PORT", 8081),
            vault_cluster_port=_port("ORDERS_VAULT_CLUSTER_PORT", 8201),
            provider_port=_port("ORDERS_PROVIDER_PORT", 8090),
            prometheus_port=_port("ORDERS_PROMETHEUS_PORT", 9090),
            vault_ha_first_port=_port("ORDERS_VAULT_HA_PORT", 0),
            namespace=os.environ.get("ORDERS_K8S_NAMESPACE") or "orders",
            tls=_switch("ORDERS_TLS"),
        )
        if local.tls:
            local = dataclasses.replace(
                local,
                db_sslmode="verify-full",
                db_sslrootcert=str(local.ca_file),
                vault_db_sslrootcert=str(local.ca_file),  # Vault runs on this machine
            )
        mode = os.environ.get("ORDERS_BOOTSTRAP_MODE") or "local"
        if mode == "local":
            return local
        if mode not in ("cluster", "external"):
            raise SettingsError(
                f"ORDERS_BOOTSTRAP_MODE={mode!r}: use local (this stack), cluster (the "
                "bootstrap Job) or external (your own servers, docs/bring-your-own.md)"
            )
        for name in ("VAULT_ADDR", "ORDERS_DB_HOST"):
            if not os.environ.get(name):
                raise SettingsError(
                    f"{name} is required with ORDERS_BOOTSTRAP_MODE={mode} "
                    f"({'Vault' if name == 'VAULT_ADDR' else 'PostgreSQL'}'s address)"
                )
        # external: servers of your own, workers as processes logging in with the local
        # identity issuer's tokens (auth/jwt); state (issuer keys, generated passwords) in
        # ORDERS_STATE_DIR. cluster: Kubernetes auth, passwords in Vault KV.
        cluster = dataclasses.replace(
            local,
            mode=mode,
            vault_url=os.environ["VAULT_ADDR"].rstrip("/"),
            db_host=os.environ["ORDERS_DB_HOST"],
            postgres_port=_port("ORDERS_DB_PORT", 5432),
            database=os.environ.get("ORDERS_DB_NAME") or "orders",
            db_sslmode=os.environ.get("ORDERS_DATABASE_SSLMODE") or "",
            db_sslrootcert=os.environ.get("ORDERS_DATABASE_SSLROOTCERT") or "",
            vault_db_sslrootcert=os.environ.get("ORDERS_VAULT_DATABASE_SSLROOTCERT") or "",
        )
        try:  # a verifying mode needs a readable CA bundle: say so now, not at connect
            db_tls.check(
                cluster.db_sslmode,
                cluster.db_sslrootcert,
                names=("ORDERS_DATABASE_SSLMODE", "ORDERS_DATABASE_SSLROOTCERT"),
            )
        except db_tls.DatabaseTLSError as exc:
            raise SettingsError(str(exc)) from None
        return cluster

    @property
    def local_issuer(self) -> bool:
        """Workers log in at auth/jwt with tokens of the local identity issuer, whose keys
        live in the state folder (local and external modes; not in a cluster)."""
        return self.mode in ("local", "external")

    # -- derived locations -------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def secrets_dir(self) -> Path:
        """Root token, superuser password, issuer key: root-only, never given to a worker."""
        return self.state_dir / "secrets"

    @property
    def identity_dir(self) -> Path:
        """One folder per identity (``<name>/token.jwt``): as root, each folder is
        reachable only by that identity's OS user and the issuer."""
        return self.state_dir / "identity"

    @property
    def issuer_dir(self) -> Path:
        """The local identity issuer's signing keys: reachable by the issuer alone."""
        return self.state_dir / "issuer"

    @property
    def vault_ha_port(self) -> int:
        """The HA Vault's first node port (API; its cluster port is the next one)."""
        return self.vault_ha_first_port or self.vault_port + 2

    @property
    def vault_addr(self) -> str:
        return self.vault_url or f"http://{HOST}:{self.vault_port}"

    @property
    def temporal_address(self) -> str:
        return f"{HOST}:{self.temporal_port}"

    @property
    def temporal_ui_url(self) -> str:
        return f"http://{HOST}:{self.temporal_ui_port}"

    @property
    def codec_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.codec_port}"

    @property
    def provider_url(self) -> str:
        return f"http://{HOST}:{self.provider_port}"

    @property
    def provider_dir(self) -> Path:
        """The provider simulator's ledger (``ledger.jsonl``, 0600)."""
        return self.state_dir / "provider"

    @property
    def provider_admin_token_file(self) -> Path:
        """The simulator's admin (fault switch) token, new at each start; for tests."""
        return self.secrets_dir / "provider-admin-token"

    @property
    def root_token_file(self) -> Path:
        return self.secrets_dir / "vault-root-token"

    @property
    def pg_password_file(self) -> Path:
        return self.secrets_dir / "postgres-superuser-password"

    @property
    def vault_unseal_key_file(self) -> Path:
        """The persistent OpenBao's unseal key (one share; local use only)."""
        return self.secrets_dir / "vault-unseal-key"

    @property
    def issuer_key_file(self) -> Path:
        """The local identity issuer's current private signing key (it signs; Vault trusts
        its public half)."""
        return self.issuer_dir / "signing-key.pem"

    @property
    def issuer_previous_key_file(self) -> Path:
        """The key before the last rotation: during the overlap Vault still trusts it, so
        tokens it signed keep working until they expire."""
        return self.issuer_dir / "previous-signing-key.pem"

    def root_token(self) -> str:
        return self.root_token_file.read_text().strip()

    def pg_superuser_password(self) -> str:
        return self.pg_password_file.read_text().strip()

    @property
    def tls_dir(self) -> Path:
        """Certificates of the TLS stack: ``ca.pem`` (public) and each server's
        ``<server>.crt|.key`` (0600, that server's user)."""
        return self.state_dir / "tls"

    @property
    def ca_file(self) -> Path:
        """The CA bundle every client of the TLS stack trusts (intermediate + root)."""
        return self.tls_dir / "ca.pem"

    def db_ssl_query(self, *, for_vault: bool = False) -> str:
        """``?sslmode=...&sslrootcert=...`` for a PostgreSQL URL (asyncpg and Vault's
        database plugin read both), or "" when no TLS is asked for. ``for_vault``: the
        CA path on Vault's server (Vault's own connection), not this process's."""
        if not self.db_sslmode:
            return ""
        query = {"sslmode": self.db_sslmode}
        ca = self.vault_db_sslrootcert if for_vault else self.db_sslrootcert
        if ca:
            query["sslrootcert"] = ca
        return "?" + urllib.parse.urlencode(query, safe="/")

    def admin_dsn(self, database: str = "postgres") -> str:
        return (
            f"postgresql://postgres:{self.pg_superuser_password()}@{self.db_host}:"
            f"{self.postgres_port}/{database}{self.db_ssl_query()}"
        )

    def token_dir(self, name: str) -> Path:
        return self.identity_dir / name

    def token_file(self, service: str) -> Path:
        return self.token_dir(service) / "token.jwt"
