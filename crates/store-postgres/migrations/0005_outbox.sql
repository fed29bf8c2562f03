-- The transactional outbox of lifecycle events (docs/events.md). Written only when events are configured,
-- in the transaction of the change it reports (under the matching key's lock); the relay publishes each
-- row, then deletes it.

-- Per matching key: the opaque id events name it by (never the key, which holds the id number) and the
-- sequence number of its last event.
CREATE TABLE outbox_keys (
    match_key     TEXT   PRIMARY KEY,
    key_id        TEXT   NOT NULL UNIQUE,
    last_sequence BIGINT NOT NULL
);

-- Events waiting to be published, in the order they were written.
CREATE TABLE outbox (
    position   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id   TEXT        NOT NULL UNIQUE,
    subject    TEXT        NOT NULL,  -- below the configured prefix: lead.created, opportunity.won, …
    body       TEXT        NOT NULL,  -- the event's JSON
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

-- The one relay allowed to publish, for as long as its lease runs: the other replicas wait, so each event
-- is published by one replica, in order.
CREATE TABLE outbox_relay (
    id     INTEGER     PRIMARY KEY CHECK (id = 1),
    holder TEXT        NOT NULL,
    until  TIMESTAMPTZ NOT NULL
);
