-- The order process's data, owned by orders_owner, in schema app.
-- Every row written by a workflow step records db_user (current_user): the
-- Vault-issued login role that ran the SQL, so "which credential did this" is
-- answered by Postgres itself. Idempotency is enforced here, not by luck:
-- one reservation per (order, sku), one charge and one refund per order, one
-- shipment per order, one notification per (order, kind).

CREATE TABLE app.products (
    sku              text PRIMARY KEY CHECK (sku ~ '^[A-Z0-9][A-Z0-9-]{1,31}$'),
    name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    unit_price_cents integer NOT NULL CHECK (unit_price_cents > 0)
);

CREATE TABLE app.inventory (
    sku        text PRIMARY KEY REFERENCES app.products (sku),
    on_hand    integer NOT NULL CHECK (on_hand >= 0),  -- stock never goes negative
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE app.orders (
    order_id      text PRIMARY KEY CHECK (order_id ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    customer_id   text NOT NULL CHECK (length(customer_id) BETWEEN 1 AND 64),
    status        text NOT NULL DEFAULT 'received'
                  CHECK (status IN ('received', 'completed', 'rejected', 'failed')),
    status_reason text,
    total_cents   integer NOT NULL CHECK (total_cents >= 0),  -- 0 for a rejected order
    currency      text NOT NULL DEFAULT 'EUR' CHECK (currency ~ '^[A-Z]{3}$'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL DEFAULT current_user,
    status_by     text
);

CREATE TABLE app.order_items (
    order_id         text NOT NULL REFERENCES app.orders (order_id),
    sku              text NOT NULL REFERENCES app.products (sku),
    quantity         integer NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
    unit_price_cents integer NOT NULL CHECK (unit_price_cents > 0),
    PRIMARY KEY (order_id, sku)
);

-- Contact data is kept apart from the order so each step can be granted only
-- the columns it needs (fulfill: the address; notify: name and email).
CREATE TABLE app.customer_contacts (
    order_id         text PRIMARY KEY REFERENCES app.orders (order_id),
    customer_name    text NOT NULL,
    email            text NOT NULL,
    shipping_address text NOT NULL
);

CREATE TABLE app.reservations (
    reservation_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id       text NOT NULL REFERENCES app.orders (order_id),
    sku            text NOT NULL REFERENCES app.products (sku),
    quantity       integer NOT NULL CHECK (quantity > 0),
    status         text NOT NULL DEFAULT 'reserved' CHECK (status IN ('reserved', 'released')),
    reserved_at    timestamptz NOT NULL DEFAULT now(),
    reserved_by    text NOT NULL DEFAULT current_user,
    released_at    timestamptz,
    released_by    text,
    UNIQUE (order_id, sku)  -- a retry can never reserve twice
);

CREATE TABLE app.payments (
    payment_id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id        text NOT NULL REFERENCES app.orders (order_id),
    kind            text NOT NULL CHECK (kind IN ('charge', 'refund')),
    status          text NOT NULL CHECK (status IN ('approved', 'declined')),
    amount_cents    integer NOT NULL CHECK (amount_cents > 0),
    currency        text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    provider_ref    text NOT NULL,
    idempotency_key text NOT NULL UNIQUE,  -- what the provider is called with
    created_at      timestamptz NOT NULL DEFAULT now(),
    db_user         text NOT NULL DEFAULT current_user,
    UNIQUE (order_id, kind)  -- one charge and at most one refund per order
);

CREATE TABLE app.shipments (
    shipment_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id    text NOT NULL UNIQUE REFERENCES app.orders (order_id),
    carrier     text NOT NULL,
    tracking_id text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    db_user     text NOT NULL DEFAULT current_user
);

-- The outbox: notify writes here; a separate sender (not part of this
-- reference) would deliver. No real email leaves the system.
CREATE TABLE app.notifications (
    notification_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id        text NOT NULL REFERENCES app.orders (order_id),
    kind            text NOT NULL CHECK (kind IN ('order_completed', 'order_failed')),
    recipient       text NOT NULL,
    subject         text NOT NULL,
    body            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    db_user         text NOT NULL DEFAULT current_user,
    UNIQUE (order_id, kind)
);

CREATE INDEX reservations_order_idx ON app.reservations (order_id);
CREATE INDEX payments_order_idx ON app.payments (order_id);
CREATE INDEX notifications_unsent_idx ON app.notifications (created_at) WHERE sent_at IS NULL;
