"""The grant matrix: what each Vault database role may do, written once.

Each Vault database role maps to a NOLOGIN Postgres group role
(``order-reserve-inventory`` -> ``order_reserve_inventory``) that holds
exactly these privileges; Vault's creation statement makes a short-lived LOGIN
role a member of it. The database bootstrap applies this matrix (revoking
anything else), and a test reads the privileges back from Postgres and
compares them to it exactly.

A row with ``columns`` grants the privilege on those columns only.
"""

from __future__ import annotations

from dataclasses import dataclass

from orders_shared.catalog import DB_ROLES

SCHEMA = "app"


@dataclass(frozen=True)
class Grant:
    db_role: str
    table: str
    privilege: str  # SELECT, INSERT, UPDATE or DELETE
    columns: tuple[str, ...] | None
    why: str


def _g(
    db_role: str, table: str, privilege: str, why: str, columns: tuple[str, ...] | None = None
) -> Grant:
    return Grant(db_role, table, privilege, columns, why)


GRANT_MATRIX: tuple[Grant, ...] = (
    # --- validate: turn a submitted order into a priced, recorded order -------------
    _g("order-validate", "products", "SELECT", "check every SKU exists and price it"),
    _g(
        "order-validate",
        "orders",
        "INSERT",
        "record the order (accepted or rejected) once; created_by and the times are defaults",
        ("order_id", "customer_id", "status", "status_reason", "total_cents", "currency"),
    ),
    _g(
        "order-validate",
        "orders",
        "SELECT",
        "a retry returns what the first attempt recorded; a finished order is not run again",
        ("order_id", "status", "status_reason", "total_cents", "currency"),
    ),
    _g(
        "order-validate",
        "order_items",
        "INSERT",
        "record the priced lines of the order",
        ("order_id", "sku", "quantity", "unit_price_cents"),
    ),
    _g("order-validate", "order_items", "SELECT", "a retry returns the lines recorded first"),
    _g(
        "order-validate",
        "customer_contacts",
        "INSERT",
        "keep contact data for later steps",
        ("order_id", "customer_name", "email", "shipping_address"),
    ),
    # --- reserve: take stock for the order, exactly once -----------------------------
    _g("order-reserve-inventory", "inventory", "SELECT", "read stock in the guarded update"),
    _g(
        "order-reserve-inventory",
        "inventory",
        "UPDATE",
        "decrement stock (the CHECK keeps it >= 0)",
        ("on_hand", "updated_at"),
    ),
    _g("order-reserve-inventory", "reservations", "SELECT", "find a reservation on retry"),
    _g(
        "order-reserve-inventory",
        "reservations",
        "INSERT",
        "record one reservation per line; status, reserved_by and the times are defaults",
        ("order_id", "sku", "quantity"),
    ),
    _g(
        "order-reserve-inventory",
        "order_compensations",
        "SELECT",
        "the fence: refuse to reserve for an order already compensated",
    ),
    _g(
        "order-reserve-inventory",
        "order_compensations",
        "INSERT",
        "the fence: after an out-of-stock refusal no earlier attempt may still take stock",
        ("order_id", "step"),
    ),
    # --- release (compensation): give the stock back, exactly once -------------------
    _g("order-release-inventory", "reservations", "SELECT", "find what the order reserved"),
    _g(
        "order-release-inventory",
        "reservations",
        "UPDATE",
        "mark a reservation released, once (a trigger stamps released_by and released_at)",
        ("status",),
    ),
    _g(
        "order-release-inventory",
        "order_compensations",
        "SELECT",
        "the fence: see whether the order is already marked compensated",
    ),
    _g(
        "order-release-inventory",
        "order_compensations",
        "INSERT",
        "the fence: mark the order compensated so a late reserve cannot take stock",
        ("order_id", "step"),
    ),
    _g("order-release-inventory", "inventory", "SELECT", "read stock in the guarded update"),
    _g(
        "order-release-inventory",
        "inventory",
        "UPDATE",
        "put the released quantity back",
        ("on_hand", "updated_at"),
    ),
    # --- payment: charge (and refund) the amount the order records --------------------
    _g(
        "order-process-payment",
        "orders",
        "SELECT",
        "charge the recorded total, never an amount from the workflow input; only an order "
        "still received",
        ("order_id", "status", "total_cents", "currency"),
    ),
    _g("order-process-payment", "payments", "SELECT", "find a charge or refund on retry"),
    _g(
        "order-process-payment",
        "payments",
        "INSERT",
        "record one charge and one refund; db_user and created_at are defaults",
        (
            "order_id",
            "kind",
            "status",
            "amount_cents",
            "currency",
            "provider_ref",
            "idempotency_key",
        ),
    ),
    _g(
        "order-process-payment",
        "order_compensations",
        "SELECT",
        "the fence: refuse to charge an order already compensated",
    ),
    _g(
        "order-process-payment",
        "order_compensations",
        "INSERT",
        "the fence: a refund marks the order compensated so a late charge cannot land",
        ("order_id", "step"),
    ),
    _g(
        "order-process-payment",
        "payments",
        "UPDATE",
        "record the provider's answer on the charge recorded as pending before the call",
        ("status", "provider_ref"),
    ),
    # --- fulfill: ship to the address on file ----------------------------------------
    _g(
        "order-fulfill",
        "customer_contacts",
        "SELECT",
        "read the shipping address and nothing else of the customer",
        ("order_id", "shipping_address"),
    ),
    _g(
        "order-fulfill",
        "payments",
        "SELECT",
        "ship only a paid order: an approved charge and no refund (not the amount or the "
        "provider's reference)",
        ("order_id", "kind", "status"),
    ),
    _g("order-fulfill", "shipments", "SELECT", "find the shipment on retry"),
    _g(
        "order-fulfill",
        "shipments",
        "INSERT",
        "record one shipment per order; db_user and created_at are defaults",
        ("order_id", "carrier", "tracking_id"),
    ),
    _g(
        "order-fulfill",
        "order_compensations",
        "SELECT",
        "the fence: ship nothing for an order already compensated",
    ),
    # --- notify: tell the customer, and record the order's final status ---------------
    _g(
        "order-notify",
        "customer_contacts",
        "SELECT",
        "address the message: name and email only",
        ("order_id", "customer_name", "email"),
    ),
    _g("order-notify", "notifications", "SELECT", "find the message on retry"),
    _g(
        "order-notify",
        "notifications",
        "INSERT",
        "write the message to the outbox; db_user, created_at and sent_at are not its to set",
        ("order_id", "kind", "recipient", "subject", "body"),
    ),
    _g(
        "order-notify",
        "orders",
        "SELECT",
        "read the order's current status before changing it",
        ("order_id", "status"),
    ),
    _g(
        "order-notify",
        "orders",
        "UPDATE",
        "record the final status: notify is the one step every path ends with (a trigger "
        "stamps status_by and updated_at)",
        ("status", "status_reason"),
    ),
)

TABLES: tuple[str, ...] = (
    "products",
    "inventory",
    "orders",
    "order_items",
    "customer_contacts",
    "reservations",
    "payments",
    "shipments",
    "notifications",
    "order_compensations",
)


def grants_for(db_role: str) -> tuple[Grant, ...]:
    return tuple(g for g in GRANT_MATRIX if g.db_role == db_role)


def _check() -> None:
    for g in GRANT_MATRIX:
        assert g.db_role in DB_ROLES, f"grant for unknown role {g.db_role}"
        assert g.table in TABLES, f"grant on unknown table {g.table}"
        assert g.privilege in {"SELECT", "INSERT", "UPDATE", "DELETE"}, g.privilege
    assert {g.db_role for g in GRANT_MATRIX} == set(DB_ROLES), "a role has no grants"


_check()


def markdown_table() -> str:
    """The matrix as the Markdown table in docs/grant-matrix.md (a test keeps them equal)."""
    lines = [
        "| Vault database role | table | privilege | columns | why |",
        "|---|---|---|---|---|",
    ]
    for g in GRANT_MATRIX:
        cols = ", ".join(g.columns) if g.columns else "all"
        lines.append(f"| `{g.db_role}` | `{SCHEMA}.{g.table}` | {g.privilege} | {cols} | {g.why} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
