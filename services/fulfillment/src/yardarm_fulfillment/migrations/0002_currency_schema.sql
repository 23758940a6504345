-- Expand only: the previous version keeps working against this schema.
-- Schema 2 payment commands name a currency; the ledger keeps it (schema 1 meant USD).
ALTER TABLE payments
    ADD COLUMN currency text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$');

-- The message schema the relay publishes each reply with (header yardarm-schema).
ALTER TABLE outbox ADD COLUMN schema smallint NOT NULL DEFAULT 1;

-- The consumer prunes inbox rows past their retention, oldest first, in small batches.
CREATE INDEX inbox_processed_at ON inbox (processed_at);
