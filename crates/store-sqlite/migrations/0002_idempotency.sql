-- Idempotency keys (SPEC §4): a claim while the request runs, then its response, kept until expires_at.
CREATE TABLE idempotency_keys (
    key          TEXT PRIMARY KEY,
    fingerprint  TEXT    NOT NULL,             -- hash of method, path and canonical body
    state        TEXT    NOT NULL CHECK (state IN ('running', 'done')),
    locked_until TEXT,                         -- lease of a running claim
    expires_at   TEXT    NOT NULL,
    status       INTEGER,
    content_type TEXT,
    location     TEXT,
    body         BLOB
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
