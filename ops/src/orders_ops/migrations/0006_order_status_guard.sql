-- An order's status moves once: 'received' -> a final state ('completed',
-- 'rejected', 'failed'), and only by the role whose step records it. The grants
-- alone let order_notify rewrite any final status at any time ('failed' ->
-- 'completed'), since its UPDATE on (status, status_reason) has no row filter.
--
-- * INSERT (validate's step): an order starts 'received', or 'rejected' when
--   validation refused it; it never starts completed or failed.
-- * UPDATE: a final row never changes again. Writing the values it already has
--   is a no-op (a retried notify activity) and keeps its stamps, except that
--   notify's first record of a rejection validate stored stamps notify; anything
--   else is refused with the order, its status and the attempted one.
-- * Only a member of order_notify (the grant matrix's one status writer) moves
--   'received' to a final state. pg_has_role counts a superuser as a member of
--   every role, so an operator's repair of a received order still works; a final
--   status stays final for everyone (a deliberate repair drops the trigger or
--   runs with session_replication_role = replica, both superuser-only).
--
-- The function replaces 0004's stamp: it runs first and stamps what it accepts,
-- so status_by and updated_at still name the role that made the one change.
CREATE OR REPLACE FUNCTION app.stamp_order_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS NOT DISTINCT FROM OLD.status
       AND NEW.status_reason IS NOT DISTINCT FROM OLD.status_reason THEN
        IF OLD.status_by IS NULL AND OLD.status <> 'received'
           AND pg_has_role(current_user, 'order_notify', 'USAGE') THEN
            -- notify records the rejection validate stored (validate's INSERT is not
            -- stamped): the first record names notify, as before this guard
            NEW.status_by := current_user;
            NEW.updated_at := now();
            RETURN NEW;
        END IF;
        -- nothing about the status changes (a retry, or another column): keep the stamps
        NEW.status_by := OLD.status_by;
        NEW.updated_at := OLD.updated_at;
        RETURN NEW;
    END IF;
    IF OLD.status <> 'received' THEN
        RAISE EXCEPTION 'order % is already % and its status is final: refusing to set %',
            OLD.order_id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation',
                  HINT = 'an order''s status moves once, from received to completed, rejected or failed';
    END IF;
    IF NEW.status = 'received' THEN
        RAISE EXCEPTION 'order % is received: only its final status may be recorded (got a new reason for received)',
            OLD.order_id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NOT pg_has_role(current_user, 'order_notify', 'USAGE') THEN
        RAISE EXCEPTION 'role % may not record the final status of order %: only order_notify does',
            current_user, OLD.order_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    NEW.status_by := current_user;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE FUNCTION app.guard_new_order_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status NOT IN ('received', 'rejected') THEN
        RAISE EXCEPTION 'order % cannot be recorded as %: a new order is received or rejected',
            NEW.order_id, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER orders_guard_new_status BEFORE INSERT ON app.orders
    FOR EACH ROW EXECUTE FUNCTION app.guard_new_order_status();
