-- What a CRM backend (Salesforce) keeps beside the CRM in this file (store::Sidecar). Its records live in the
-- CRM, so these tables are apart from `records` and `history`, whose foreign keys need local records.

-- The service's own history of every status change it made in the CRM, oldest first by seq.
CREATE TABLE audit (
    seq         INTEGER PRIMARY KEY,
    record_id   TEXT NOT NULL,
    record_type TEXT NOT NULL CHECK (record_type IN ('LEAD', 'OPPORTUNITY')),
    match_key   TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    at          TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    channel     TEXT NOT NULL,
    reason      TEXT
);

CREATE INDEX audit_by_record ON audit (record_id, seq);
CREATE INDEX audit_by_key ON audit (match_key);

-- Per-key holds that serialize every process sharing this file: a row is a lease, free once `until` passed,
-- so a holder that died keeps others out only until then.
CREATE TABLE key_locks (
    key    TEXT PRIMARY KEY,
    holder TEXT NOT NULL,  -- a random id per hold, so only its holder releases it
    until  TEXT NOT NULL
);
