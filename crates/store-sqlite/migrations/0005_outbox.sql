-- The transactional outbox of lifecycle events (docs/events.md). Written only when events are configured,
-- in the transaction of the change it reports; the relay publishes each row, then deletes it.

-- Per matching key: the opaque id events name it by (never the key, which holds the id number) and the
-- sequence number of its last event.
CREATE TABLE outbox_keys (
    match_key     TEXT    PRIMARY KEY,
    key_id        TEXT    NOT NULL UNIQUE,
    last_sequence INTEGER NOT NULL
);

-- Events waiting to be published, in the order they were written.
CREATE TABLE outbox (
    position   INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT    NOT NULL UNIQUE,
    subject    TEXT    NOT NULL,  -- below the configured prefix: lead.created, opportunity.won, …
    body       TEXT    NOT NULL,  -- the event's JSON
    created_at TEXT    NOT NULL
);

-- The one relay allowed to publish, for as long as its lease runs: a second process sharing the file waits.
CREATE TABLE outbox_relay (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT    NOT NULL,
    until  TEXT    NOT NULL
);
