-- Fulfillment's own database: inbox, payment ledger, shipments, reply outbox.

CREATE TABLE inbox (
    msg_id        text        PRIMARY KEY,
    subject       text        NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now()
);

-- An append-only ledger: at most one charge and one refund per saga.
CREATE TABLE payments (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    saga_id       text        NOT NULL,
    order_id      text        NOT NULL,
    kind          text        NOT NULL CHECK (kind IN ('charge', 'refund')),
    amount_cents  bigint      NOT NULL CHECK (amount_cents >= 0),
    card_last4    text        CHECK (card_last4 ~ '^[0-9]{1,4}$'),
    status        text        NOT NULL CHECK (status IN ('charged', 'declined', 'refunded')),
    reason        text,
    refund_of     uuid        REFERENCES payments (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (saga_id, kind),
    CHECK ((kind = 'charge') = (status IN ('charged', 'declined')))
);

CREATE TABLE shipments (
    saga_id       text        PRIMARY KEY,
    order_id      text        NOT NULL,
    shipment_id   uuid        NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    status        text        NOT NULL CHECK (status IN ('scheduled', 'failed', 'cancelled')),
    reason        text,
    items         jsonb,
    customer_id   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE outbox (
    id            bigserial   PRIMARY KEY,
    subject       text        NOT NULL,
    msg_id        text        NOT NULL UNIQUE,
    payload       jsonb       NOT NULL,
    traceparent   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);

CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;
