"""How a client verifies PostgreSQL's certificate: libpq's ``sslmode`` names, one meaning.

Every asyncpg connection of the project (the workers' leased pools, the bootstrap,
the admin tools) takes its ``ssl=`` argument from :func:`client_ssl`, and Vault's
database plugin gets the same two settings in its connection URL, so "verify-full"
means the same thing everywhere: the chain ends at the given CA bundle and the
server's name (or IP address) is in its certificate.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal, TypeAlias, cast

# asyncpg's ``ssl=`` argument as this module gives it
NonVerifying: TypeAlias = Literal["disable", "allow", "prefer", "require"]
SSLArg: TypeAlias = ssl.SSLContext | NonVerifying | None

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
VERIFYING = ("verify-ca", "verify-full")


class DatabaseTLSError(ValueError):
    """A bad sslmode / CA bundle setting; the message names the variable and the fix."""


def check(sslmode: str, sslrootcert: str, *, names: tuple[str, str]) -> None:
    """Refuse an unknown mode, and a verifying mode without a readable CA bundle.
    ``names`` are the two settings' names, for the message."""
    mode_name, ca_name = names
    if sslmode and sslmode not in SSLMODES:
        raise DatabaseTLSError(f"{mode_name}={sslmode!r}: use one of {', '.join(SSLMODES)}")
    if sslmode in VERIFYING:
        if not sslrootcert:
            raise DatabaseTLSError(
                f"{mode_name}={sslmode} needs {ca_name}: the CA bundle that signed "
                "PostgreSQL's server certificate"
            )
        if not Path(sslrootcert).is_file():
            raise DatabaseTLSError(
                f"{ca_name}={sslrootcert!r} is not a readable file: mount the database CA "
                "there (the chart's global.database.tls.caSecret; locally 'make up TLS=1' "
                "writes <state>/tls/ca.pem)"
            )


def client_ssl(sslmode: str, sslrootcert: str) -> SSLArg:
    """asyncpg's ``ssl=`` for this mode: a verifying context for ``verify-ca`` and
    ``verify-full`` (CA bundle loaded; host name checked for ``verify-full`` only),
    the mode name for the others, ``None`` (asyncpg's default) when unset."""
    if not sslmode:
        return None
    if sslmode not in VERIFYING:
        return cast(NonVerifying, sslmode)  # checked against SSLMODES at start-up
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=sslrootcert)
    context.check_hostname = sslmode == "verify-full"
    context.verify_mode = ssl.CERT_REQUIRED
    return context
