-- A charge is recorded as 'pending' BEFORE the provider is called, then set to
-- the provider's answer. A crash (or an outage) between the provider's charge and
-- our record therefore leaves a row the refund can see: it asks the provider to
-- refund whatever was charged under that idempotency key, instead of concluding
-- that nothing was ever charged.
ALTER TABLE app.payments DROP CONSTRAINT payments_status_check;
ALTER TABLE app.payments
    ADD CONSTRAINT payments_status_check CHECK (status IN ('pending', 'approved', 'declined'));
ALTER TABLE app.payments ALTER COLUMN provider_ref DROP NOT NULL;  -- unknown while pending
ALTER TABLE app.payments
    ADD CONSTRAINT payments_decided_has_ref CHECK (status = 'pending' OR provider_ref IS NOT NULL);
