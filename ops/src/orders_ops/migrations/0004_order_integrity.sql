-- Order integrity: a per-order fence between forward steps and their
-- compensation, a currency on every product, and text that Postgres and a mail
-- system can carry.

-- The fence. A compensation (release, refund) takes the order's advisory lock
-- (pg_advisory_xact_lock, see orders_shared.fence) and records this marker in
-- the same transaction as its own work; a forward step (reserve, charge) takes
-- the same lock and refuses when the marker exists. So a forward attempt that
-- outlived its deadline either committed before the compensation (which then
-- undoes it) or finds the marker and changes nothing: it can never take effect
-- after its compensation ran. A definitive refusal of reserve (out of stock)
-- sets the marker too ('reserve_refused'): the workflow does not release after
-- it, so it fences an earlier attempt still in flight instead.
CREATE TABLE app.order_compensations (
    order_id       text PRIMARY KEY REFERENCES app.orders (order_id),
    step           text NOT NULL CHECK (step IN ('release_inventory', 'refund_payment', 'reserve_refused')),
    compensated_at timestamptz NOT NULL DEFAULT now(),
    db_user        text NOT NULL DEFAULT current_user
);

-- A price is in a currency: an order in another currency is refused, never
-- charged the catalogue's figure under its own label.
ALTER TABLE app.products
    ADD COLUMN currency text NOT NULL DEFAULT 'EUR' CHECK (currency ~ '^[A-Z]{3}$');

-- Text the application writes must be carriable: no C0 control but the line
-- feed in multi-line text, no DEL or C1 control, and in names, addresses,
-- recipients and subjects no bidirectional control and no line or paragraph
-- separator (the rules of orders_shared.order_input; NUL and unpaired
-- surrogates cannot be stored in a UTF-8 database at all). NOT VALID: they bind
-- every row written from now on without failing an upgrade on old rows; run
-- ALTER TABLE ... VALIDATE CONSTRAINT once old rows are checked.
ALTER TABLE app.orders
    ADD CONSTRAINT orders_text_carriable CHECK (
        customer_id !~ '[\u0001-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]'
        AND coalesce(status_reason, '') !~ '[\u0001-\u001f\u007f-\u009f]'
    ) NOT VALID;
ALTER TABLE app.customer_contacts
    ADD CONSTRAINT customer_contacts_text_carriable CHECK (
        customer_name !~ '[\u0001-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]'
        AND email !~ '[\u0001-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]'
        AND shipping_address !~ '[\u0001-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]'
    ) NOT VALID;
ALTER TABLE app.notifications
    ADD CONSTRAINT notifications_text_carriable CHECK (
        recipient !~ '[\u0001-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]'
        AND subject !~ '[\u0001-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]'
        AND body !~ '[\u0001-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]'
    ) NOT VALID;
ALTER TABLE app.products
    ADD CONSTRAINT products_name_carriable CHECK (
        name !~ '[\u0001-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]'
    ) NOT VALID;

-- Audit columns are filled by the database, not by the role that writes: INSERT
-- is granted per column (orders_ops.grants), so created_by, db_user, reserved_by
-- and the timestamps always come from their defaults; and on UPDATE these
-- triggers stamp who changed an order's status or released a reservation, so
-- the updating roles need no UPDATE on those columns and cannot forge them.
CREATE FUNCTION app.stamp_order_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.status_by := current_user;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
CREATE TRIGGER orders_stamp_status BEFORE UPDATE ON app.orders
    FOR EACH ROW EXECUTE FUNCTION app.stamp_order_status();

CREATE FUNCTION app.stamp_reservation_release() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'released' AND NEW.status <> 'released' THEN
        RAISE EXCEPTION 'a released reservation cannot be reserved again (order %, sku %)',
            OLD.order_id, OLD.sku;
    END IF;
    IF NEW.status = 'released' AND OLD.status <> 'released' THEN
        NEW.released_by := current_user;
        NEW.released_at := now();
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER reservations_stamp_release BEFORE UPDATE ON app.reservations
    FOR EACH ROW EXECUTE FUNCTION app.stamp_reservation_release();
