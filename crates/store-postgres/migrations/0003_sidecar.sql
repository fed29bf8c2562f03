-- What a CRM backend (Salesforce) keeps beside the CRM in this database (store::Sidecar). Its records live in
-- the CRM, so the audit is apart from `records` and `history`, whose foreign keys need local records. Its
-- per-key locks are session-level advisory locks and need no table.

-- The service's own history of every status change it made in the CRM, oldest first by seq.
CREATE TABLE audit (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id   TEXT        NOT NULL,
    record_type TEXT        NOT NULL CHECK (record_type IN ('LEAD', 'OPPORTUNITY')),
    match_key   TEXT        NOT NULL,
    from_status TEXT,
    to_status   TEXT        NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    request_id  TEXT        NOT NULL,
    channel     TEXT        NOT NULL,
    reason      TEXT
);

CREATE INDEX audit_by_record ON audit (record_id, seq);
CREATE INDEX audit_by_key ON audit (match_key);
