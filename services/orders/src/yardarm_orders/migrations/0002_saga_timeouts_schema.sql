-- Step deadlines and command re-sends, message schema versions, order currency.
-- Expand only: every column is nullable or has a default, so a replica of the previous
-- version keeps writing rows this one reads (and the other way round) during a rollout.

-- The schema of the message in this row; the relay publishes it as `yardarm-schema`.
ALTER TABLE outbox ADD COLUMN schema smallint NOT NULL DEFAULT 1;

-- The subject a processed message came on (the consumer records it beside the id).
ALTER TABLE inbox ADD COLUMN subject text;

ALTER TABLE orders ADD COLUMN currency text NOT NULL DEFAULT 'USD';

-- deadline_at: a remote step without a reply by then is timed out and compensated
-- (NULL: no deadline; a row from the previous version gets one from step_started_at).
-- For remote steps `attempts` counts the commands sent and `next_attempt_at` is when the
-- command is sent again (or the deadline, if sooner).
ALTER TABLE sagas ADD COLUMN deadline_at timestamptz;

CREATE INDEX sagas_due ON sagas (next_attempt_at)
    WHERE state IN ('RESERVING', 'CHARGING', 'SHIPPING', 'CANCELLING_SHIPMENT',
                    'REFUNDING', 'RELEASING');
