"""Vault policies as code: one per service identity, plus the client and payload-reader.

Payload keys (see :mod:`orders_shared.codec`): the payloads of each service's
activities are under ``orders-payload-<service>``, which only that service
(and the orchestrator, which schedules the activities and reads their results)
may use; workflow payloads are under ``orders-payload-orchestrator``, for the
orchestrator and the client. Nobody may create data keys of the old single key
``orders-payload``, and no worker or client may decrypt it (a worker never
decodes ``orders-envelope/1``: such a payload is bound to no workflow). Only the
payload reader keeps ``decrypt`` on it: the codec server reads the benchmark's
per-call format (``orders-transit/1``) with it, and old history only when started
with ``ORDERS_CODEC_ACCEPT_LEGACY=true`` (default false).

Each identity's policy is built from the catalog, so adding a database role to
a service changes its policy and nothing else. Tokens are issued with
``token_no_default_policy``: Vault's ``default`` policy would add cubbyhole,
response wrapping, ``sys/tools`` and renewal of *any* lease by id, none of which
a worker needs. What a worker does need from it is granted here explicitly.

Lease renewal and revocation are granted in their URL form only,
``sys/leases/renew/<lease id>`` and ``sys/leases/revoke/<lease id>``, under the
prefix of the service's own database roles
(``database/creds/<role>/<random>``). That is the least Vault can express: the
body form (``sys/leases/renew`` with ``lease_id`` in the JSON) carries no path
Vault's ACL could scope, so granting it would let a worker renew or revoke any
lease whose id it learnt. Clients must therefore call
``PUT /v1/sys/leases/renew/<lease_id>`` (body ``{"increment": n}``) and
``PUT /v1/sys/leases/revoke/<lease_id>``, not hvac's ``sys.renew_lease`` /
``sys.revoke_lease``, which use the body form.
"""

from __future__ import annotations

import hashlib
import re

from orders_shared.catalog import SERVICES, ServiceSpec
from orders_shared.codec import (
    ACCEPT_LEGACY_ENV,
    LEGACY_PAYLOAD_KEY,
    WORKFLOW_SERVICE,
    payload_key,
    payload_keys,
)

TRANSIT_MOUNT = "transit"
DATABASE_MOUNT = "database"

PAYLOAD_KEY = LEGACY_PAYLOAD_KEY
"""The old single payload key (format ``orders-envelope/1``): decrypt only, for old history."""

SEALED_SERVICES: tuple[str, ...] = ("payment", "fulfill", "notify")
"""Services that consume sealed order fields, each with a Transit key of its own."""

CLIENT_POLICY = "orders-client"
PAYLOAD_READER_POLICY = "payload-reader"
CODEC_TLS_POLICY = "orders-codec-server"
"""Issues the codec server's HTTPS certificate (role ``server-codec``), nothing else."""

PKI_ROOT_MOUNT = "pki-root"
PKI_MOUNT = "pki-orders"
SERVER_ROLES: tuple[str, ...] = ("server-temporal", "server-postgres", "server-codec")
OPERATOR_ROLE = "client-operator"


HASH_HEADER = "# orders-policy-sha256: "
"""The first line of every policy the bootstrap writes: the sha256 of the rest (the body).

Vault stores a policy's text as written, so the header travels with it: ``orders-bootstrap
plan`` names the version in force by it, and a body that no longer matches its header was
edited by hand (in Vault, not in this code). Only policies with this header are the
bootstrap's own: ``apply`` deletes one the code no longer declares, never another."""

_HEADER_LINE = re.compile(r"^# orders-policy-sha256: ([0-9a-f]{64})\n")


def body_hash(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def with_hash_header(body: str) -> str:
    """``body`` with its hash header in front (what the bootstrap writes to Vault)."""
    return f"{HASH_HEADER}{body_hash(body)}\n{body}"


def split_hash_header(text: str) -> tuple[str | None, str]:
    """(the hash the header declares, or None without a header; the body after it)."""
    m = _HEADER_LINE.match(text)
    if m is None:
        return None, text
    return m.group(1), text[m.end() :]


def pki_role(identity: str) -> str:
    """The PKI role an identity issues its certificate under (``client`` or a service)."""
    return OPERATOR_ROLE if identity == "client" else f"client-{identity}"


def client_role_names() -> dict[str, str]:
    """Client role -> the one name (CN) it may issue: ``orders-<service>``, ``orders-client``."""
    names = {pki_role(name): f"orders-{name}" for name in SERVICES}
    names[OPERATOR_ROLE] = "orders-client"
    return names


def pki_rules(role: str) -> list[str]:
    return [
        _rule(
            f"{PKI_MOUNT}/issue/{role}",
            "update",
            why=f"own TLS certificate (role {role}; no other role, nothing else under pki-*)",
        )
    ]


def seal_key(service_name: str) -> str:
    if service_name not in SEALED_SERVICES:
        raise KeyError(
            f"service {service_name!r} has no sealing key; sealed services: "
            f"{', '.join(SEALED_SERVICES)}"
        )
    return f"orders-seal-{service_name}"


def seal_keys() -> tuple[str, ...]:
    return tuple(seal_key(s) for s in SEALED_SERVICES)


def transit_keys() -> tuple[str, ...]:
    """Every Transit key the bootstrap creates."""
    return (PAYLOAD_KEY, *payload_keys(), *seal_keys())


def payload_keys_of(identity: str) -> tuple[str, ...]:
    """The payload keys an identity encrypts and decrypts with (``client`` or a service)."""
    if identity == "client":
        return (payload_key(WORKFLOW_SERVICE),)
    if identity == WORKFLOW_SERVICE:
        return payload_keys()
    return (payload_key(identity),)


def creds_path(db_role: str) -> str:
    return f"{DATABASE_MOUNT}/creds/{db_role}"


def _rule(path: str, *capabilities: str, why: str = "") -> str:
    caps = ", ".join(f'"{c}"' for c in capabilities)
    comment = f"# {why}\n" if why else ""
    return f'{comment}path "{path}" {{\n  capabilities = [{caps}]\n}}\n'


def _payload_rules(
    keys: tuple[str, ...], *, encrypt_data_keys: bool, legacy: bool = False
) -> list[str]:
    rules = []
    for key in keys:
        if encrypt_data_keys:
            rules.append(
                _rule(
                    f"{TRANSIT_MOUNT}/datakey/plaintext/{key}",
                    "update",
                    why=f"new data keys to encrypt payloads under {key} (envelope encryption)",
                )
            )
        rules.append(
            _rule(
                f"{TRANSIT_MOUNT}/decrypt/{key}",
                "update",
                why=f"unwrap the data key of a payload under {key}",
            )
        )
    if legacy:
        rules.append(
            _rule(
                f"{TRANSIT_MOUNT}/decrypt/{PAYLOAD_KEY}",
                "update",
                why="the codec server: the per-call benchmark format, and history written "
                f"before per-service keys (only when started with {ACCEPT_LEGACY_ENV}=true)",
            )
        )
    return rules


def service_policy(spec: ServiceSpec) -> str:
    """The whole of what one worker identity may do in Vault."""
    rules = [f"# {spec.identity}: generated by orders_ops.policies; edit the code, not Vault\n"]
    for role in spec.db_roles:
        rules.append(_rule(creds_path(role), "read", why=f"credentials of database role {role}"))
    rules.extend(_payload_rules(payload_keys_of(spec.name), encrypt_data_keys=True))
    if spec.name in SEALED_SERVICES:
        rules.append(
            _rule(
                f"{TRANSIT_MOUNT}/decrypt/{seal_key(spec.name)}",
                "update",
                why="open order fields sealed to this service",
            )
        )
    rules.extend(pki_rules(pki_role(spec.name)))
    rules.append(_rule("auth/token/lookup-self", "read", why="own token's TTL"))
    rules.append(_rule("auth/token/renew-self", "update", why="keep own token alive"))
    rules.append(
        _rule(
            "auth/token/revoke-self",
            "update",
            why="end own token (and with it its leases) on shutdown",
        )
    )
    for role in spec.db_roles:
        prefix = creds_path(role)
        rules.append(
            _rule(
                f"sys/leases/renew/{prefix}/*",
                "update",
                why=f"renew own {role} leases (URL form: scoped to this role's prefix)",
            )
        )
        rules.append(
            _rule(
                f"sys/leases/revoke/{prefix}/*",
                "update",
                why=f"revoke own {role} leases after draining / on shutdown",
            )
        )
    return with_hash_header("\n".join(rules))


def client_policy() -> str:
    """Whoever submits orders: seals fields to their consumers and encrypts payloads."""
    rules = [
        f"# {CLIENT_POLICY}: generated by orders_ops.policies\n",
        _rule(
            f"{TRANSIT_MOUNT}/encrypt/orders-seal-*",
            "update",
            why="seal order fields to the consuming service (encrypt only, never decrypt)",
        ),
        *_payload_rules(payload_keys_of("client"), encrypt_data_keys=True),
        *pki_rules(OPERATOR_ROLE),
        _rule("auth/token/lookup-self", "read", why="own token's TTL"),
        _rule("auth/token/renew-self", "update", why="keep own token alive"),
        _rule("auth/token/revoke-self", "update", why="end own token when done"),
    ]
    return with_hash_header("\n".join(rules))


def payload_reader_policy(keys: tuple[str, ...] | None = None) -> str:
    """People reading payloads through the codec server: decrypt, nothing more.

    ``keys``: the payload keys the reader may read, each named (default: every
    service's; a narrower reader policy names fewer). No datakey (a reader
    writes nothing), no sealing keys (a reader of history sees the order with
    its sensitive fields still sealed to their consumers). Granted by the
    ``payload-reader`` role of the ``oidc-readers`` JWT auth mount to users in
    the reader group (see orders_ops.vault_bootstrap.ensure_reader_auth).
    """
    rules = [
        f"# {PAYLOAD_READER_POLICY}: generated by orders_ops.policies\n",
        *_payload_rules(
            payload_keys() if keys is None else keys, encrypt_data_keys=False, legacy=True
        ),
    ]
    return with_hash_header("\n".join(rules))


def all_policies() -> dict[str, str]:
    """Policy name -> HCL text, for every policy the bootstrap owns."""
    policies = {spec.identity: service_policy(spec) for spec in SERVICES.values()}
    policies[CLIENT_POLICY] = client_policy()
    policies[PAYLOAD_READER_POLICY] = payload_reader_policy()
    policies[CODEC_TLS_POLICY] = with_hash_header(
        "\n".join(
            [
                f"# {CODEC_TLS_POLICY}: generated by orders_ops.policies\n",
                *pki_rules("server-codec"),
            ]
        )
    )
    # every policy the bootstrap writes carries its hash header, one added here too
    return {
        name: text if split_hash_header(text)[0] else with_hash_header(text)
        for name, text in policies.items()
    }
