"""The shared library of the order services: identity, credentials, contracts."""
