"""Vault (OpenBao) configuration as code: Transit keys, policies, auth methods, audit.

Every step reads what is there, compares it with what the code wants and
writes only the difference, so a run returns one line per change and a second
run returns none. Only the bootstrap holds the root token (read from the
root-only secrets folder); nothing here ever prints a token or key material.

The database secrets engine is configured elsewhere
(:mod:`orders_ops.vault_database`); the policies granted here name its
``database/creds/<role>`` paths.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests

from orders_ops import issuer
from orders_ops.pki import ensure_pki
from orders_ops.policies import (
    PAYLOAD_READER_POLICY,
    TRANSIT_MOUNT,
    all_policies,
    seal_keys,
    split_hash_header,
    transit_keys,
)
from orders_ops.settings import SettingsError, StackSettings
from orders_shared.catalog import SERVICES, ServiceSpec

JWT_MOUNT = "jwt"
READER_MOUNT = "oidc-readers"
"""JWT auth for people: their OIDC identity token, exchanged by the codec server."""
READER_ROLE = "payload-reader"
KUBERNETES_MOUNT = "kubernetes"
AUDIT_DEVICE_PATH = "file"
TRANSIT_KEY_TYPE = "aes256-gcm96"

DEFAULT_KUBERNETES_HOST = "https://kubernetes.default.svc"
KUBEADM_KUBERNETES_ISSUER = "https://kubernetes.default.svc.cluster.local"
"""The issuer of kubeadm-built clusters, kind included (dev-deps and Tilt set it)."""
_IN_CLUSTER_CA = "/var/run/secrets/kubernetes.io/serviceaccount"


class VaultBootstrapError(RuntimeError):
    """Vault cannot be configured; the message names the problem and the fix."""


# --------------------------------------------------------------------------- settings


def _seconds(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number of seconds") from None
    if value <= 0:
        raise SettingsError(f"{name}={value} must be a positive number of seconds")
    return value


@dataclass(frozen=True)
class TokenTTLs:
    """Lifetime of the Vault tokens workers get at login."""

    ttl: int = 900
    max_ttl: int = 3600

    @classmethod
    def from_env(cls) -> TokenTTLs:
        ttl = _seconds("ORDERS_VAULT_TOKEN_TTL", cls.ttl)
        max_ttl = _seconds("ORDERS_VAULT_TOKEN_MAX_TTL", cls.max_ttl)
        if max_ttl < ttl:
            raise SettingsError(
                f"ORDERS_VAULT_TOKEN_MAX_TTL={max_ttl} is shorter than "
                f"ORDERS_VAULT_TOKEN_TTL={ttl}: make the maximum at least the TTL"
            )
        return cls(ttl=ttl, max_ttl=max_ttl)


@dataclass(frozen=True)
class KubernetesAuthConfig:
    """Where Vault's ``kubernetes`` auth sends TokenReviews and what it expects back."""

    host: str = DEFAULT_KUBERNETES_HOST
    ca_pem: str | None = None
    # The cluster's ServiceAccount token issuer. When set, Vault checks it too; when None
    # it does not, and the TokenReview by the API server (signature, expiry, audience,
    # issuer) is the check. It differs per cluster (kubeadm and kind:
    # https://kubernetes.default.svc.cluster.local; EKS, GKE, AKS: their OIDC issuer URL),
    # so no default: a wrong one would refuse every login. Production values set it.
    issuer: str | None = None
    # False in a cluster: Vault then uses its own pod's CA and ServiceAccount token.
    disable_local_ca_jwt: bool = False

    @classmethod
    def from_env(cls) -> KubernetesAuthConfig:
        ca_file = os.environ.get("ORDERS_KUBERNETES_CA_FILE") or None
        ca_pem = None
        if ca_file is not None:
            try:
                ca_pem = Path(ca_file).read_text()
            except OSError as exc:
                raise SettingsError(
                    f"ORDERS_KUBERNETES_CA_FILE={ca_file!r} cannot be read ({exc.strerror}); "
                    "point it at the cluster's CA certificate (PEM) or unset it"
                ) from None
        return cls(
            host=os.environ.get("ORDERS_KUBERNETES_HOST") or DEFAULT_KUBERNETES_HOST,
            ca_pem=ca_pem,
            issuer=os.environ.get("ORDERS_KUBERNETES_ISSUER") or None,
            # true only when Vault runs outside the cluster it authenticates
            disable_local_ca_jwt=(
                os.environ.get("ORDERS_KUBERNETES_DISABLE_LOCAL_CA_JWT", "").lower() == "true"
            ),
        )

    def as_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kubernetes_host": self.host,
            # with an issuer Vault checks it too, not only what TokenReview says
            "issuer": self.issuer or "",
            "disable_iss_validation": self.issuer is None,
            "disable_local_ca_jwt": self.disable_local_ca_jwt,
        }
        if self.ca_pem is not None:
            data["kubernetes_ca_cert"] = self.ca_pem
        return data


# --------------------------------------------------------------------------- client


def root_client(settings: StackSettings) -> hvac.Client:
    """An hvac client with the dev root token: for the bootstrap and tests, never a worker."""
    try:
        token = settings.root_token()
    except FileNotFoundError:
        raise VaultBootstrapError(
            f"no Vault root token at {settings.root_token_file}; start the stack with "
            "'orders-stack up' (it writes the token there)"
        ) from None
    client = hvac.Client(url=settings.vault_addr, token=token, timeout=10)
    try:
        authenticated = client.is_authenticated()
    except requests.exceptions.ConnectionError:
        raise VaultBootstrapError(
            f"Vault is not reachable at {settings.vault_addr}; start it with 'orders-stack up'"
        ) from None
    if not authenticated:
        raise VaultBootstrapError(
            f"the root token in {settings.root_token_file} is not valid for "
            f"{settings.vault_addr} (a dev server restarted with a new one?): "
            "run 'orders-stack down' then 'orders-stack up'"
        )
    return client


# --------------------------------------------------------------------------- helpers


def _differences(actual: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> list[str]:
    """Keys of ``desired`` whose value Vault does not hold (lists compared as sets)."""
    if actual is None:
        return list(desired)
    diff = []
    for key, want in desired.items():
        have = actual.get(key)
        if isinstance(want, list) and isinstance(have, list):
            if sorted(map(_norm, want)) != sorted(map(_norm, have)):
                diff.append(key)
        elif _norm(have) != _norm(want):
            diff.append(key)
    return diff


def _norm(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _read(client: hvac.Client, path: str) -> dict[str, Any] | None:
    try:
        response = client.read(path)
    except hvac.exceptions.InvalidPath:
        return None
    if not response:
        return None
    data: dict[str, Any] = response.get("data") or {}
    return data


def _write_if_changed(
    client: hvac.Client,
    path: str,
    desired: Mapping[str, Any],
    *,
    extra: Mapping[str, Any] | None = None,
) -> list[str]:
    diff = _differences(_read(client, path), desired)
    if not diff:
        return []
    client.write_data(path, data={**desired, **(extra or {})})
    return [f"vault: wrote {path} ({', '.join(sorted(diff))})"]


def _ensure_secrets_engine(client: hvac.Client, mount: str, kind: str) -> list[str]:
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    existing = mounts.get(f"{mount}/")
    if existing is not None:
        if existing["type"] != kind:
            raise VaultBootstrapError(
                f"secrets engine at {mount}/ is {existing['type']!r}, not {kind!r}; "
                f"disable it ('bao secrets disable {mount}') and bootstrap again"
            )
        return []
    client.sys.enable_secrets_engine(kind, path=mount)
    return [f"vault: enabled {kind} secrets engine at {mount}/"]


def _ensure_auth_method(client: hvac.Client, mount: str, kind: str) -> list[str]:
    methods = client.sys.list_auth_methods()["data"]
    existing = methods.get(f"{mount}/")
    if existing is not None:
        if existing["type"] != kind:
            raise VaultBootstrapError(
                f"auth method at {mount}/ is {existing['type']!r}, not {kind!r}; "
                f"disable it ('bao auth disable {mount}') and bootstrap again"
            )
        return []
    client.sys.enable_auth_method(kind, path=mount)
    return [f"vault: enabled {kind} auth at auth/{mount}/"]


# --------------------------------------------------------------------------- transit


DEFAULT_AUTO_ROTATE_PERIOD = 30 * 24 * 3600
AUTO_ROTATE_ENV = "ORDERS_TRANSIT_AUTO_ROTATE_PERIOD"


def auto_rotate_period() -> int:
    """Seconds between automatic rotations of every Transit key the bootstrap owns
    (``ORDERS_TRANSIT_AUTO_ROTATE_PERIOD``, default 30 days; OpenBao's minimum is one
    hour). Old versions keep decrypting until ``min_decryption_version`` is raised."""
    period = _seconds(AUTO_ROTATE_ENV, DEFAULT_AUTO_ROTATE_PERIOD)
    if period < 3600:
        raise SettingsError(
            f"{AUTO_ROTATE_ENV}={period} is under one hour, the shortest period Vault accepts"
        )
    return period


IRREVERSIBLE_KEY_SETTINGS = ("exportable", "allow_plaintext_backup")
"""Transit settings Vault never turns off again once on: the bootstrap never turns them on."""


def transit_key_settings(name: str, period: int | None = None) -> dict[str, Any]:
    """What the code declares for Transit key ``name``: its type and derivation (fixed at
    creation), its rotation period, deletion protection on (``deletion_allowed`` false)
    and never exportable (key material never leaves Vault)."""
    return {
        "type": TRANSIT_KEY_TYPE,
        # seal keys are derived: a sealed field is bound to its order and field (a context)
        "derived": name in set(seal_keys()),
        "auto_rotate_period": auto_rotate_period() if period is None else period,
        "deletion_allowed": False,
        **dict.fromkeys(IRREVERSIBLE_KEY_SETTINGS, False),
    }


def ensure_transit(client: hvac.Client, *, notes: list[str] | None = None) -> list[str]:
    """The Transit engine and its keys: the per-service payload keys (and the old single
    one, for old history), one seal key per sealed consumer; each rotating itself, each
    protected from deletion."""
    changes = _ensure_secrets_engine(client, TRANSIT_MOUNT, "transit")
    period = auto_rotate_period()
    for name in transit_keys():
        derived = bool(transit_key_settings(name, period)["derived"])
        try:
            key = client.secrets.transit.read_key(name, mount_point=TRANSIT_MOUNT)["data"]
        except hvac.exceptions.InvalidPath:
            client.secrets.transit.create_key(
                name,
                key_type=TRANSIT_KEY_TYPE,
                derived=derived,
                auto_rotate_period=f"{period}s",
                mount_point=TRANSIT_MOUNT,
            )
            changes.append(
                f"vault: created transit key {name} ({TRANSIT_KEY_TYPE}"
                f"{', derived' if derived else ''}, rotates every {period}s)"
            )
            continue
        if bool(key.get("derived")) != derived:
            raise VaultBootstrapError(
                f"transit key {name} is {'' if key.get('derived') else 'not '}derived, but "
                f"the code expects {'a derived' if derived else 'a plain'} key; derivation "
                "cannot change: delete the key (losing what it encrypted) or rename it in code"
            )
        if key["type"] != TRANSIT_KEY_TYPE:
            raise VaultBootstrapError(
                f"transit key {name} is {key['type']!r}, not {TRANSIT_KEY_TYPE!r}; a key's type "
                "cannot change: delete the key (losing what it encrypted) or rename it in code"
            )
        if int(key.get("auto_rotate_period") or 0) != period:
            client.secrets.transit.update_key_configuration(
                name, auto_rotate_period=f"{period}s", mount_point=TRANSIT_MOUNT
            )
            changes.append(f"vault: transit key {name} now rotates every {period}s")
        if key.get("deletion_allowed") is not False:
            client.secrets.transit.update_key_configuration(
                name, deletion_allowed=False, mount_point=TRANSIT_MOUNT
            )
            changes.append(f"vault: transit key {name} protected from deletion again")
        for setting in IRREVERSIBLE_KEY_SETTINGS:
            if key.get(setting) and notes is not None:
                notes.append(
                    f"vault: transit key {name} has {setting}=true, which Vault never turns "
                    "off: its key material may have left Vault; rotate it and raise its "
                    "min_decryption_version once old data is re-encrypted (or delete and "
                    "recreate it, losing what it encrypted)"
                )
    return changes


# --------------------------------------------------------------------------- policies


POLICY_PREFIXES = ("orders-", "payload-")
"""The policy names the bootstrap may manage (its cluster identity may touch no other)."""


def list_names(client: hvac.Client, path: str) -> list[str]:
    """The keys a LIST of ``path`` returns ([] when there is nothing there)."""
    try:
        listed = client.list(path)
    except hvac.exceptions.InvalidPath:
        return []
    return sorted(((listed or {}).get("data") or {}).get("keys") or [])


def ensure_policies(client: hvac.Client, *, notes: list[str] | None = None) -> list[str]:
    """Every policy of :func:`all_policies`, as written; a policy this code once wrote (it
    carries the hash header) and no longer declares is deleted. Others are never touched."""
    changes = []
    declared = all_policies()
    for name, text in declared.items():
        current = _read(client, f"sys/policies/acl/{name}")
        if current is not None and current.get("policy") == text:
            continue
        client.sys.create_or_update_policy(name, policy=text)
        changes.append(f"vault: wrote policy {name} (sha256 {split_hash_header(text)[0]})")
    try:
        names = list_names(client, "sys/policies/acl")
    except hvac.exceptions.Forbidden:
        if notes is not None:
            notes.append(
                "vault: may not list sys/policies/acl, so policies this code no longer "
                "declares are not deleted: re-run 'orders-bootstrap admin-setup'"
            )
        return changes
    for name in names:
        if name in declared or not name.startswith(POLICY_PREFIXES):
            continue
        current = _read(client, f"sys/policies/acl/{name}") or {}
        if split_hash_header(str(current.get("policy") or ""))[0] is None:
            continue  # not written by this code: reported by 'plan', left alone
        client.sys.delete_policy(name)
        changes.append(f"vault: deleted policy {name} (written by this code, no longer declared)")
    return changes


# --------------------------------------------------------------------------- auth


PROBE_METADATA = "probe"
"""The token metadata key a probe's signed claim (``issuer.PROBE_CLAIM``) is mapped to."""

CLIENT_SPEC = ServiceSpec(issuer.CLIENT, task_queue="", db_roles=())
"""The client identity (``orders-client``): auth roles like a service's, but no worker."""


def login_specs() -> tuple[ServiceSpec, ...]:
    """Every identity with a login role on the jwt and kubernetes auth mounts."""
    return (*SERVICES.values(), CLIENT_SPEC)


def owned_login_role(name: str, role: Mapping[str, Any]) -> bool:
    """Whether an auth role has the shape this code gives its login roles: named after an
    identity (``orders-<name>``) and granting exactly that identity's policy. Another role
    (a person's, another team's, a test's) is never deleted, only reported."""
    from orders_ops.bootstrap_identity import BOOTSTRAP_IDENTITY

    return (
        name.startswith("orders-")
        and name != BOOTSTRAP_IDENTITY
        and list(role.get("token_policies") or []) == [name]
    )


def delete_stale_roles(client: hvac.Client, mount: str, declared: set[str]) -> list[str]:
    """Delete the login roles on ``mount`` this code made (:func:`owned_login_role`) and
    no longer declares (a service removed from the catalog)."""
    changes = []
    for name in list_names(client, f"auth/{mount}/role"):
        if name in declared:
            continue
        role = _read(client, f"auth/{mount}/role/{name}") or {}
        if owned_login_role(name, role):
            client.delete(f"auth/{mount}/role/{name}")
            changes.append(f"vault: deleted auth/{mount}/role/{name} (no longer declared)")
    return changes


def _token_params(spec: ServiceSpec, ttls: TokenTTLs) -> dict[str, Any]:
    return {
        "token_policies": [spec.identity],
        # the policy grants what a worker needs from "default"; nothing more
        "token_no_default_policy": True,
        "token_ttl": ttls.ttl,
        "token_max_ttl": ttls.max_ttl,
        "token_type": "service",
    }


def jwt_role(settings: StackSettings, spec: ServiceSpec, ttls: TokenTTLs) -> dict[str, Any]:
    """A role that accepts only ``spec``'s ServiceAccount-shaped token, for ``spec``'s policy."""
    return {
        "role_type": "jwt",
        "bound_audiences": [issuer.AUDIENCE],
        "bound_subject": issuer.subject(settings.namespace, spec.name),
        # the Kubernetes claim must agree with the subject, as in a real ServiceAccount token
        "bound_claims": {
            "/kubernetes.io/namespace": settings.namespace,
            "/kubernetes.io/serviceaccount/name": spec.identity,
        },
        "bound_claims_type": "string",
        "user_claim": "sub",
        # a probe of orders-demo carries this signed claim; Vault records it as the token's
        # metadata "probe" in every audit entry (a worker's own token has no such claim)
        "claim_mappings": {issuer.PROBE_CLAIM: PROBE_METADATA},
        **_token_params(spec, ttls),
    }


def kubernetes_role(settings: StackSettings, spec: ServiceSpec, ttls: TokenTTLs) -> dict[str, Any]:
    return {
        "bound_service_account_names": [spec.identity],
        "bound_service_account_namespaces": [settings.namespace],
        "audience": issuer.AUDIENCE,
        **_token_params(spec, ttls),
    }


def ensure_jwt_auth(
    client: hvac.Client,
    settings: StackSettings,
    ttls: TokenTTLs,
    *,
    mount: str = JWT_MOUNT,
) -> list[str]:
    """JWT auth trusting the local identity issuer: process mode's stand-in for Kubernetes."""
    changes = _ensure_auth_method(client, mount, "jwt")
    changes += _write_if_changed(
        client,
        f"auth/{mount}/config",
        {
            "jwt_validation_pubkeys": issuer.public_key_pems(settings),
            "bound_issuer": issuer.ISSUER,
            "jwt_supported_algs": [issuer.ALGORITHM],
        },
    )
    for spec in login_specs():
        changes += _write_if_changed(
            client,
            f"auth/{mount}/role/{spec.identity}",
            jwt_role(settings, spec, ttls),
            # a jwt role needs it set (to nothing); it is meaningless without OIDC
            extra={"allowed_redirect_uris": []},
        )
    changes += delete_stale_roles(client, mount, {s.identity for s in login_specs()})
    return changes


def ensure_kubernetes_auth(
    client: hvac.Client,
    settings: StackSettings,
    ttls: TokenTTLs,
    config: KubernetesAuthConfig,
    *,
    mount: str = KUBERNETES_MOUNT,
    notes: list[str] | None = None,
) -> list[str]:
    """Kubernetes auth for cluster mode: the same identities, checked by TokenReview.

    Outside a cluster and without a CA file OpenBao cannot load the cluster's
    CA, so the config is skipped with a note (process mode logs in with jwt).
    """
    changes = _ensure_auth_method(client, mount, "kubernetes")
    try:
        changes += _write_if_changed(client, f"auth/{mount}/config", config.as_data())
    except hvac.exceptions.InvalidRequest as exc:
        if config.ca_pem is not None or _IN_CLUSTER_CA not in str(exc):
            raise
        if notes is not None:
            notes.append(
                f"vault: auth/{mount}/config left unset: Vault runs outside a cluster and "
                "ORDERS_KUBERNETES_CA_FILE is not set (process mode logs in with jwt auth; "
                "set ORDERS_KUBERNETES_CA_FILE and ORDERS_KUBERNETES_HOST to use it)"
            )
    for spec in login_specs():
        changes += _write_if_changed(
            client, f"auth/{mount}/role/{spec.identity}", kubernetes_role(settings, spec, ttls)
        )
    try:
        changes += delete_stale_roles(client, mount, {s.identity for s in login_specs()})
    except hvac.exceptions.Forbidden:
        if notes is not None:
            notes.append(
                f"vault: may not list auth/{mount}/role, so login roles this code no longer "
                "declares are not deleted: re-run 'orders-bootstrap admin-setup'"
            )
    return changes


@dataclass(frozen=True)
class ReaderAuthConfig:
    """Who may read payloads through the codec server: users of an OIDC provider in a group.

    Either ``oidc_discovery_url`` (a real provider: Vault fetches its keys) or
    ``pubkeys`` (PEM public keys; by default the local issuer's, which signs
    ``orders-identity mint-user`` tokens). Environment:
    ``ORDERS_READER_OIDC_DISCOVERY_URL``, ``ORDERS_READER_ISSUER``,
    ``ORDERS_READER_AUDIENCE`` [orders-codec], ``ORDERS_READER_GROUP`` [payload-readers],
    ``ORDERS_READER_GROUPS_CLAIM`` [groups].
    """

    bound_issuer: str = issuer.USER_ISSUER
    pubkeys: tuple[str, ...] = ()
    oidc_discovery_url: str | None = None
    audience: str = issuer.READER_AUDIENCE
    group: str = issuer.READER_GROUP
    groups_claim: str = "groups"
    token_ttl: int = 300
    token_max_ttl: int = 900

    @classmethod
    def from_env(cls, settings: StackSettings) -> ReaderAuthConfig:
        discovery = os.environ.get("ORDERS_READER_OIDC_DISCOVERY_URL") or None
        return cls(
            bound_issuer=os.environ.get("ORDERS_READER_ISSUER") or issuer.USER_ISSUER,
            pubkeys=() if discovery else tuple(issuer.public_key_pems(settings)),
            oidc_discovery_url=discovery,
            audience=os.environ.get("ORDERS_READER_AUDIENCE") or issuer.READER_AUDIENCE,
            group=os.environ.get("ORDERS_READER_GROUP") or issuer.READER_GROUP,
            groups_claim=os.environ.get("ORDERS_READER_GROUPS_CLAIM") or "groups",
        )

    def as_config(self) -> dict[str, Any]:
        if self.oidc_discovery_url:
            return {
                "oidc_discovery_url": self.oidc_discovery_url,
                "bound_issuer": self.bound_issuer,
            }
        return {
            "jwt_validation_pubkeys": list(self.pubkeys),
            "bound_issuer": self.bound_issuer,
            "jwt_supported_algs": [issuer.ALGORITHM],
        }

    def reader_role(self) -> dict[str, Any]:
        return {
            "role_type": "jwt",
            "bound_audiences": [self.audience],
            "user_claim": "sub",
            "groups_claim": self.groups_claim,
            # only members of the reader group; any one of the user's groups may match
            "bound_claims": {self.groups_claim: [self.group]},
            "bound_claims_type": "string",
            "token_policies": [PAYLOAD_READER_POLICY],
            "token_no_default_policy": True,
            "token_ttl": self.token_ttl,
            "token_max_ttl": self.token_max_ttl,
            "token_type": "service",
        }


def ensure_reader_auth(
    client: hvac.Client, config: ReaderAuthConfig, *, mount: str = READER_MOUNT
) -> list[str]:
    """JWT auth for people who read payloads: role ``payload-reader`` for the reader group.

    The codec server exchanges a user's identity token here for a short-lived
    token with policy ``payload-reader`` and decrypts with it.
    """
    changes = _ensure_auth_method(client, mount, "jwt")
    changes += _write_if_changed(client, f"auth/{mount}/config", config.as_config())
    changes += _write_if_changed(
        client,
        f"auth/{mount}/role/{READER_ROLE}",
        config.reader_role(),
        extra={"allowed_redirect_uris": []},
    )
    return changes


# --------------------------------------------------------------------------- audit


def audit_log_file(settings: StackSettings) -> Path:
    """Where Vault writes its audit log: the stack's state folder locally; in cluster
    mode a path in *Vault's* pod (``ORDERS_VAULT_AUDIT_FILE``, default ``stdout``,
    which the cluster's log pipeline collects)."""
    if settings.mode != "local":  # cluster or external: a path on Vault's own machine
        return Path(os.environ.get("ORDERS_VAULT_AUDIT_FILE") or "stdout")
    return settings.state_dir / "vault" / "audit.log"


def audit_config_hcl(settings: StackSettings) -> str:
    """Server config declaring the file audit device.

    OpenBao refuses to create audit devices through the API ("use declarative,
    config-based audit device management"); the dev server accepts this file
    with ``-config=<file>`` next to ``-dev``. Secrets in the log stay HMAC-hashed
    (``log_raw`` is left off).
    """
    return (
        f'audit "file" "{AUDIT_DEVICE_PATH}" {{\n'
        "  options {\n"
        f'    file_path = "{audit_log_file(settings)}"\n'
        "  }\n"
        "}\n"
    )


def ensure_audit_device(
    client: hvac.Client, settings: StackSettings, *, notes: list[str] | None = None
) -> list[str]:
    """A file audit device; via the API on Vault, declared in the server config on OpenBao."""
    wanted = str(audit_log_file(settings))
    devices = client.sys.list_enabled_audit_devices()["data"]
    for device in devices.values():
        if device.get("type") == "file" and device.get("options", {}).get("file_path") == wanted:
            return []
    if settings.mode == "local":
        audit_log_file(settings).parent.mkdir(parents=True, exist_ok=True)
    try:
        client.sys.enable_audit_device(
            device_type="file", path=AUDIT_DEVICE_PATH, options={"file_path": wanted}
        )
    except hvac.exceptions.Forbidden:
        # the bootstrap's own identity (cluster mode) may not change audit devices: they
        # belong to the Vault administrator, who must not let the audited redirect audit
        if notes is not None:
            notes.append(
                f"vault: no file audit device at {wanted} and this identity may not add one: "
                "ask the Vault administrator to enable an audit device"
            )
        return []
    except hvac.exceptions.InvalidRequest as exc:
        if "declarative" not in str(exc):
            raise
        if notes is not None:
            notes.append(
                "vault: no audit device: OpenBao only accepts audit devices from its server "
                "config; start it with -config=<file> holding "
                "orders_ops.vault_bootstrap.audit_config_hcl(settings)"
            )
        return []
    return [f"vault: enabled file audit device at {wanted}"]


# --------------------------------------------------------------------------- all


def configure_vault(
    client: hvac.Client, settings: StackSettings, *, notes: list[str] | None = None
) -> list[str]:
    """Everything above, in order. Returns the changes; a second run returns []."""
    ttls = TokenTTLs.from_env()
    kubernetes = KubernetesAuthConfig.from_env()
    changes = ensure_audit_device(client, settings, notes=notes)
    changes += ensure_transit(client, notes=notes)
    changes += ensure_pki(client, settings)
    changes += ensure_policies(client, notes=notes)
    if settings.local_issuer:
        # process mode (local or external): workers present the local issuer's tokens at
        # auth/jwt
        changes += ensure_jwt_auth(client, settings, ttls)
    if settings.mode != "external":  # no cluster to review tokens with
        changes += ensure_kubernetes_auth(client, settings, ttls, kubernetes, notes=notes)
    if settings.local_issuer or os.environ.get("ORDERS_READER_OIDC_DISCOVERY_URL"):
        changes += ensure_reader_auth(client, ReaderAuthConfig.from_env(settings))
    elif notes is not None:
        notes.append(
            "vault: auth/oidc-readers left unset: set ORDERS_READER_OIDC_DISCOVERY_URL (and "
            "ORDERS_READER_ISSUER) to your OIDC provider so people can read payloads through "
            "the codec server"
        )
    return changes
