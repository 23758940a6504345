-- Orders, their sagas and the messaging tables (transactional outbox, consumer inbox).
-- Migrations are expand/contract: later files only add, so two versions can run side by side.

CREATE TABLE orders (
    id            uuid PRIMARY KEY,
    customer_id   text        NOT NULL,
    items         jsonb       NOT NULL,
    total_cents   bigint      NOT NULL CHECK (total_cents >= 0),
    card_last4    text        NOT NULL,
    status        text        NOT NULL,
    reason        text,
    trace_id      text,
    traceparent   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE idempotency_keys (
    key           text PRIMARY KEY,
    request_hash  text        NOT NULL,
    order_id      uuid        NOT NULL REFERENCES orders (id) DEFERRABLE INITIALLY DEFERRED,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- card: held only until the charge command is written to the outbox, then cleared.
CREATE TABLE sagas (
    order_id         uuid PRIMARY KEY REFERENCES orders (id),
    state            text        NOT NULL,
    card             text,
    lease_owner      text,
    lease_until      timestamptz,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    attempts         integer     NOT NULL DEFAULT 0,
    step_started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX sagas_claimable ON sagas (updated_at)
    WHERE state IN ('RESERVING', 'RELEASING');

-- Per-SKU progress of the local stock steps. attempt counts datastore writes started
-- (recorded before each write), so a crashed step can ask the datastore whether its
-- last write applied instead of reserving or releasing twice.
CREATE TABLE reservations (
    order_id         uuid    NOT NULL REFERENCES orders (id),
    sku              text    NOT NULL,
    quantity         integer NOT NULL CHECK (quantity > 0),
    state            text    NOT NULL DEFAULT 'pending',
    reserve_attempt  integer NOT NULL DEFAULT 0,
    release_attempt  integer NOT NULL DEFAULT 0,
    PRIMARY KEY (order_id, sku)
);

CREATE TABLE saga_history (
    seq       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id  uuid        NOT NULL REFERENCES orders (id),
    step      text        NOT NULL,
    outcome   text        NOT NULL,
    detail    text,
    trace_id  text,
    at        timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX saga_history_order ON saga_history (order_id, seq);

CREATE TABLE outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject       text        NOT NULL,
    msg_id        text        NOT NULL UNIQUE,
    payload       jsonb       NOT NULL,
    traceparent   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);

CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;

CREATE TABLE inbox (
    msg_id        text PRIMARY KEY,
    processed_at  timestamptz NOT NULL DEFAULT now()
);
