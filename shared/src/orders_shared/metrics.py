"""Prometheus metrics every worker exposes, defined once.

Names follow Prometheus conventions (``_total`` counters, ``_seconds``). Labels
are bounded: operation names, database roles, activity names and outcome
kinds, never an order id or anything a user typed.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

VAULT_REQUESTS = Counter(
    "orders_vault_requests_total",
    "Vault requests made by this process, by operation and outcome",
    ["operation", "outcome"],
)
VAULT_TOKEN_SECONDS_LEFT = Gauge(
    "orders_vault_token_seconds_left", "Seconds until this process's Vault token expires"
)
VAULT_LOGINS = Counter("orders_vault_logins_total", "Logins to Vault with the workload identity")
VAULT_TOKEN_RENEWALS = Counter("orders_vault_token_renewals_total", "Vault token renewals")

DB_CREDENTIALS_ISSUED = Counter(
    "orders_db_credentials_issued_total",
    "Database credentials issued by Vault to this process",
    ["db_role"],
)
DB_LEASE_SECONDS_LEFT = Gauge(
    "orders_db_lease_seconds_left",
    "Seconds until the current database credential's lease expires",
    ["db_role"],
)
DB_LEASE_RENEWALS = Counter(
    "orders_db_lease_renewals_total", "Database lease renewals", ["db_role"]
)
DB_LEASE_ROTATIONS = Counter(
    "orders_db_lease_rotations_total",
    "Switches of a pool to a new database credential",
    ["db_role"],
)
DB_LEASE_ROTATION_FAILURES = Counter(
    "orders_db_lease_rotation_failures_total",
    "Attempts to switch a pool to a new database credential that failed (retried with backoff)",
    ["db_role"],
)

CODEC_SECONDS = Histogram(
    "orders_codec_seconds",
    "Time to encode or decode a batch of payloads",
    ["operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
CODEC_BYTES = Counter(
    "orders_codec_bytes_total",
    "Payload bytes encoded or decoded (plaintext side: the serialized Payload, metadata included)",
    ["operation"],
)

ACTIVITY_OUTCOMES = Counter(
    "orders_activity_outcomes_total",
    "Activity executions by outcome: completed, refused (a business refusal, by type) "
    "or error (an infrastructure failure Temporal will retry)",
    ["activity", "outcome", "error_type"],
)

CODEC_SERVER_REQUESTS = Counter(
    "orders_codec_server_requests_total",
    "Requests the codec server answered, by operation (decode, encode, none) and HTTP status",
    ["op", "status"],
)


def exposition() -> tuple[bytes, str]:
    """This process's metrics in Prometheus text format, and the content type to send."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
