-- Order confirmations, a background job per order (hidra-apalis): the id of
-- the job enqueued with the order, and when it confirmed the order.
ALTER TABLE orders
    ADD COLUMN confirmed_at     TIMESTAMPTZ,
    ADD COLUMN confirmation_job TEXT;
