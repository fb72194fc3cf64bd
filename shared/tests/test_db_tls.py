"""How workers read PostgreSQL's TLS settings: libpq's sslmode names, refused early."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from orders_shared.config import ConfigError, DatabaseConfig
from orders_shared.db_tls import client_ssl


def test_verify_full_checks_the_chain_and_the_name() -> None:
    ca = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    context = client_ssl("verify-full", str(ca))
    assert isinstance(context, ssl.SSLContext)
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    verify_ca = client_ssl("verify-ca", str(ca))
    assert isinstance(verify_ca, ssl.SSLContext) and not verify_ca.check_hostname
    assert (client_ssl("require", ""), client_ssl("", "")) == ("require", None)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ORDERS_DATABASE_SSLMODE": "verify"}, "ORDERS_DATABASE_SSLMODE='verify': use one of"),
        ({"ORDERS_DATABASE_SSLMODE": "verify-full"}, "needs ORDERS_DATABASE_SSLROOTCERT"),
        (
            {"ORDERS_DATABASE_SSLMODE": "verify-full", "ORDERS_DATABASE_SSLROOTCERT": "/nope"},
            "ORDERS_DATABASE_SSLROOTCERT='/nope' is not a readable file",
        ),
    ],
)
def test_a_bad_setting_stops_the_worker_naming_it(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DatabaseConfig.from_env(env)
