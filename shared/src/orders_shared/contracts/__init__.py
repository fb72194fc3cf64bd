"""The contracts between the orchestrator and the services: one module per service.

Each module holds its service's task queue, the names of its activities and
one frozen dataclass per activity input and output. The orchestrator calls
activities *by name* with these types and imports no service code, so these
modules are the one source of truth both sides compile against. They import
nothing but the standard library and :mod:`orders_shared.catalog`, so they
are safe inside Temporal's workflow sandbox.

Sensitive fields (payment token, email, shipping address, customer name) are
``str`` here but carry Transit ciphertext (``vault:v1:...``) sealed to the
service that consumes them (:mod:`orders_shared.sealing`); the payload codec
encrypts every payload on top of that.

(No ``from __future__ import annotations`` in these modules: Temporal's data
converter resolves dataclass field types with ``typing.get_type_hints``, which
fails on string annotations inside the workflow sandbox.)
"""
