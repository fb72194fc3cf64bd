"""The bootstrap Job's own Vault identity: Kubernetes auth, no root token.

In a cluster the bootstrap Job logs in with its ServiceAccount token
(``orders-bootstrap``) at Vault's Kubernetes auth and gets a short-lived token
whose policy covers only what the bootstrap manages: the ``transit``,
``database`` and ``orders-bootstrap`` mounts, the ``orders-*`` policies, the
service roles of the ``kubernetes`` and ``oidc-readers`` auth mounts, and reading
the audit devices. It cannot read secrets elsewhere, create other policies,
issue itself other tokens or touch other mounts.

That role is created once, by a Vault administrator, with
``orders-bootstrap admin-setup`` (their own token in ``VAULT_TOKEN``); see
docs/deployment.md. Local process mode keeps using the stack's root token,
stored 0600 in the state folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import hvac
import hvac.exceptions
import requests

from orders_ops.settings import SettingsError, StackSettings

BOOTSTRAP_IDENTITY = "orders-bootstrap"
BOOTSTRAP_POLICY = "orders-bootstrap"
# a path and durations, not secrets
DEFAULT_SA_TOKEN_FILE = "/var/run/secrets/orders/vault-token"  # noqa: S105
BOOTSTRAP_TOKEN_TTL = "15m"  # noqa: S105
BOOTSTRAP_TOKEN_MAX_TTL = "30m"  # noqa: S105

BOOTSTRAP_POLICY_HCL = """\
# orders-bootstrap: what the bootstrap Job manages, and nothing else (written by
# 'orders-bootstrap admin-setup'; no root token in the cluster)

# see which engines, auth methods and audit devices exist; enable only its own
path "sys/mounts" { capabilities = ["read"] }
path "sys/mounts/transit" { capabilities = ["create", "read", "update"] }
path "sys/mounts/database" { capabilities = ["create", "read", "update"] }
path "sys/mounts/orders-bootstrap" { capabilities = ["create", "read", "update"] }
path "sys/mounts/pki-root" { capabilities = ["create", "read", "update"] }
path "sys/mounts/pki-orders" { capabilities = ["create", "read", "update"] }
path "sys/mounts/pki-root/tune" { capabilities = ["read", "update"] }
path "sys/mounts/pki-orders/tune" { capabilities = ["read", "update"] }
path "sys/auth" { capabilities = ["read"] }
path "sys/auth/kubernetes" { capabilities = ["create", "read", "update", "sudo"] }
path "sys/auth/oidc-readers" { capabilities = ["create", "read", "update", "sudo"] }
path "sys/audit" { capabilities = ["read", "sudo"] }

# list what is there ('orders-bootstrap plan' reports what the code did not make)
path "sys/policies/acl" { capabilities = ["list"] }
path "sys/policies/acl/" { capabilities = ["list"] }
path "transit/keys/" { capabilities = ["list"] }
path "pki-orders/roles/" { capabilities = ["list"] }
path "auth/kubernetes/role/" { capabilities = ["list"] }
path "auth/oidc-readers/role/" { capabilities = ["list"] }

# its policies: the services' and readers' (all named orders-* or payload-*); it deletes
# only one it wrote (hash header) and no longer declares
path "sys/policies/acl/orders-*" { capabilities = ["create", "read", "update", "delete"] }
path "sys/policy/orders-*" { capabilities = ["create", "read", "update"] }
path "sys/policies/acl/payload-*" { capabilities = ["create", "read", "update", "delete"] }
path "sys/policy/payload-*" { capabilities = ["create", "read", "update"] }

# Transit keys: create and configure; never read plaintext, never export
path "transit/keys/*" { capabilities = ["create", "read", "update"] }
path "transit/keys/+/config" { capabilities = ["create", "update"] }
path "transit/keys/+/rotate" { capabilities = ["update"] }

# the PKI: the root signs intermediates, the intermediate's roles (never a leaf issued here)
path "pki-root/root/generate/internal" { capabilities = ["update"] }
path "pki-root/root/sign-intermediate" { capabilities = ["update"] }
path "pki-root/issuers" { capabilities = ["list"] }
path "pki-root/issuer/*" { capabilities = ["read"] }
path "pki-orders/intermediate/generate/internal" { capabilities = ["update"] }
path "pki-orders/intermediate/set-signed" { capabilities = ["update"] }
path "pki-orders/issuers" { capabilities = ["list"] }
path "pki-orders/issuer/*" { capabilities = ["read", "update"] }
path "pki-orders/config/issuers" { capabilities = ["read", "update"] }
path "pki-orders/roles/*" { capabilities = ["create", "read", "update", "delete"] }

# the database secrets engine: its connection, its roles, rotating its own password
path "database/config/*" { capabilities = ["create", "read", "update"] }
path "database/roles/*" { capabilities = ["create", "read", "update", "list"] }
path "database/rotate-root/*" { capabilities = ["update"] }

# the services' login roles (the auth config too: the Job keeps it as code)
path "auth/kubernetes/config" { capabilities = ["create", "read", "update"] }
path "auth/kubernetes/role/orders-*" { capabilities = ["create", "read", "update", "delete"] }
path "auth/oidc-readers/config" { capabilities = ["create", "read", "update"] }
path "auth/oidc-readers/role/*" { capabilities = ["create", "read", "update"] }

# generated passwords (owner, Vault's admin login) live in its own KV mount
path "orders-bootstrap/data/*" { capabilities = ["create", "read", "update"] }
# (delete: the vault_admin password is dropped once Vault has rotated it)
path "orders-bootstrap/metadata/*" { capabilities = ["read", "delete"] }
"""


def _external_policy(cluster: str) -> str:
    """The cluster policy, for ORDERS_BOOTSTRAP_MODE=external: the workers' logins at
    ``auth/jwt`` (the local identity issuer) instead of ``auth/kubernetes``, and no KV
    mount (generated passwords stay in the state folder's secrets)."""
    swaps = {
        "# orders-bootstrap: what the bootstrap Job manages, and nothing else (written by\n"
        "# 'orders-bootstrap admin-setup'; no root token in the cluster)": (
            "# orders-bootstrap (ORDERS_BOOTSTRAP_MODE=external): what the bootstrap manages in\n"
            "# a Vault of your own, and nothing else; no root token (docs/bring-your-own.md)"
        ),
        'path "sys/auth/kubernetes"': 'path "sys/auth/jwt"',
        'path "auth/kubernetes/config"': 'path "auth/jwt/config"',
        'path "auth/kubernetes/role/orders-*"': 'path "auth/jwt/role/orders-*"',
        'path "auth/kubernetes/role/"': 'path "auth/jwt/role/"',  # plan lists the roles
    }
    text = cluster
    for old, new in swaps.items():
        if old not in text:
            raise AssertionError(f"the bootstrap policy no longer has {old!r}")
        text = text.replace(old, new)
    kv_comments = ("# generated passwords", "# (delete: the vault_admin")
    kv_paths = ('path "orders-bootstrap/', 'path "sys/mounts/orders-bootstrap"')
    kept = "".join(
        line
        for line in text.splitlines(keepends=True)
        if not line.startswith(kv_comments) and not line.startswith(kv_paths)
    )
    return kept.rstrip("\n") + "\n"


EXTERNAL_BOOTSTRAP_POLICY_HCL = _external_policy(BOOTSTRAP_POLICY_HCL)
"""What the token given to ``ORDERS_BOOTSTRAP_MODE=external`` needs (``orders-bootstrap
admin-setup --print-policy --external``); tests/test_bring_your_own.py bootstraps with it."""


class BootstrapLoginError(RuntimeError):
    """The bootstrap could not log in to Vault; the message names the cause and the fix."""


def uses_kubernetes_login(settings: StackSettings) -> bool:
    """Cluster mode logs in with Kubernetes auth unless told to use an admin token file
    (``ORDERS_BOOTSTRAP_VAULT_AUTH=token``, for a first run before admin-setup)."""
    if settings.mode != "cluster":
        return False
    how = os.environ.get("ORDERS_BOOTSTRAP_VAULT_AUTH") or "kubernetes"
    if how not in ("kubernetes", "token"):
        raise SettingsError(f"ORDERS_BOOTSTRAP_VAULT_AUTH={how!r}: use kubernetes or token")
    return how == "kubernetes"


def kubernetes_login(settings: StackSettings) -> hvac.Client:
    """Log in as ``orders-bootstrap`` with the Job's projected ServiceAccount token."""
    token_file = Path(os.environ.get("ORDERS_BOOTSTRAP_SA_TOKEN_FILE") or DEFAULT_SA_TOKEN_FILE)
    mount = os.environ.get("ORDERS_BOOTSTRAP_AUTH_MOUNT") or "kubernetes"
    try:
        jwt = token_file.read_text().strip()
    except OSError as exc:
        raise BootstrapLoginError(
            f"cannot read the ServiceAccount token at {token_file} ({exc.strerror}): mount a "
            "projected token there (the bootstrap chart does) or set ORDERS_BOOTSTRAP_SA_TOKEN_FILE"
        ) from None
    client = hvac.Client(url=settings.vault_addr, timeout=10)
    try:
        client.auth.kubernetes.login(BOOTSTRAP_IDENTITY, jwt, mount_point=mount)
    except requests.exceptions.ConnectionError:
        raise BootstrapLoginError(f"Vault is not reachable at {settings.vault_addr}") from None
    except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest) as exc:
        raise BootstrapLoginError(
            f"Vault refused the bootstrap's Kubernetes login at auth/{mount} as role "
            f"{BOOTSTRAP_IDENTITY} ({type(exc).__name__}): has a Vault administrator run "
            "'orders-bootstrap admin-setup' for this namespace? (docs/deployment.md)"
        ) from None
    return client


def external_token_client(settings: StackSettings) -> hvac.Client:
    """ORDERS_BOOTSTRAP_MODE=external: the operator's token from ``VAULT_TOKEN`` (one with
    :data:`EXTERNAL_BOOTSTRAP_POLICY_HCL`, not root), checked before anything is written."""
    token = os.environ.get("VAULT_TOKEN", "").strip()
    fix = (
        "give it a token with the policy 'orders-bootstrap admin-setup --print-policy "
        "--external' prints (docs/bring-your-own.md)"
    )
    if not token:
        raise BootstrapLoginError(f"ORDERS_BOOTSTRAP_MODE=external needs VAULT_TOKEN: {fix}")
    client = hvac.Client(url=settings.vault_addr, token=token, timeout=10)
    try:
        authenticated = client.is_authenticated()
    except requests.exceptions.ConnectionError:
        raise BootstrapLoginError(
            f"Vault is not reachable at {settings.vault_addr} (VAULT_ADDR)"
        ) from None
    if not authenticated:
        raise BootstrapLoginError(
            f"Vault at {settings.vault_addr} does not accept VAULT_TOKEN (expired, revoked, "
            f"or without Vault's default policy, which lets a token look itself up?): {fix}"
        )
    return client


def bootstrap_vault_client(settings: StackSettings) -> hvac.Client:
    """The client the bootstrap configures Vault with: its own Kubernetes identity in a
    cluster, the local stack's root token in process mode (or with
    ``ORDERS_BOOTSTRAP_VAULT_AUTH=token``), ``VAULT_TOKEN`` with your own servers."""
    if settings.mode == "external":
        return external_token_client(settings)
    if uses_kubernetes_login(settings):
        return kubernetes_login(settings)
    from orders_ops.vault_bootstrap import root_client

    return root_client(settings)


def admin_setup(
    client: hvac.Client,
    namespace: str,
    *,
    mount: str = "kubernetes",
    audience: str | None = None,
) -> list[str]:
    """The one-time setup a Vault administrator runs: the bootstrap's policy and its
    Kubernetes auth role (the auth method itself must be enabled and configured to
    reach the cluster's TokenReview API). Idempotent; returns what it wrote."""
    changes = []
    auth = client.sys.list_auth_methods()["data"]
    if f"{mount}/" not in auth:
        raise BootstrapLoginError(
            f"no Kubernetes auth at auth/{mount}: enable and configure it first "
            f"('bao auth enable -path={mount} kubernetes', then write auth/{mount}/config)"
        )
    try:
        current = client.sys.read_policy(BOOTSTRAP_POLICY)["data"]["rules"]
    except hvac.exceptions.InvalidPath:
        current = None
    if current != BOOTSTRAP_POLICY_HCL:
        client.sys.create_or_update_policy(BOOTSTRAP_POLICY, BOOTSTRAP_POLICY_HCL)
        changes.append(f"vault: policy {BOOTSTRAP_POLICY}")
    role = {
        "bound_service_account_names": [BOOTSTRAP_IDENTITY],
        "bound_service_account_namespaces": [namespace],
        "token_policies": [BOOTSTRAP_POLICY],
        "token_ttl": BOOTSTRAP_TOKEN_TTL,
        "token_max_ttl": BOOTSTRAP_TOKEN_MAX_TTL,
        "token_no_default_policy": True,
    }
    if audience:
        role["audience"] = audience
    client.write(f"auth/{mount}/role/{BOOTSTRAP_IDENTITY}", **role)
    changes.append(f"vault: auth/{mount}/role/{BOOTSTRAP_IDENTITY}")
    return changes
