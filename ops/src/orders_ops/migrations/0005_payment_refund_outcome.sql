-- A refund row is written as 'pending' BEFORE the provider is asked, so a late
-- charge attempt sees that the order is being compensated. It ends as 'approved'
-- (the provider refunded what it had charged) or 'not_charged': the provider holds
-- no charge under the order's charge key (the charge never reached it, or it was
-- declined), so there is nothing to refund and nothing more to try.
-- (Numbered 0005 to leave 0004 to the order-fence migration being written in parallel.)
ALTER TABLE app.payments DROP CONSTRAINT payments_status_check;
ALTER TABLE app.payments
    ADD CONSTRAINT payments_status_check
    CHECK (status IN ('pending', 'approved', 'declined', 'not_charged'));
ALTER TABLE app.payments
    ADD CONSTRAINT payments_not_charged_is_a_refund CHECK (status <> 'not_charged' OR kind = 'refund');
ALTER TABLE app.payments DROP CONSTRAINT payments_decided_has_ref;
ALTER TABLE app.payments
    ADD CONSTRAINT payments_decided_has_ref
    CHECK (status IN ('pending', 'not_charged') OR provider_ref IS NOT NULL);
