-- Records of both types in one table: a lead and the opportunity converted from it share every column, and
-- the search of SPEC §3 reads both with one index.
CREATE TABLE records (
    seq                      INTEGER PRIMARY KEY,            -- insertion order: "newest first" is seq DESC
    id                       TEXT    NOT NULL UNIQUE,
    record_type              TEXT    NOT NULL CHECK (record_type IN ('LEAD', 'OPPORTUNITY')),
    status                   TEXT    NOT NULL CHECK (
        (record_type = 'LEAD' AND status IN ('New Lead', 'Close Won', 'Close Lost')) OR
        (record_type = 'OPPORTUNITY' AND status IN ('New Opportunity', 'Close Won', 'Close Lost'))),
    match_key                TEXT    NOT NULL,
    owner_id                 TEXT    NOT NULL,
    customer_type            TEXT    NOT NULL CHECK (customer_type IN ('NTB', 'ETB')),
    id_number                TEXT    NOT NULL,
    cif                      TEXT,
    full_name                TEXT,
    phone                    TEXT,
    email                    TEXT,
    product                  TEXT    NOT NULL,
    channel                  TEXT    NOT NULL,
    journey_id               TEXT,
    converted_opportunity_id TEXT,
    converted_from_lead_id   TEXT,
    created_at               TEXT    NOT NULL,
    updated_at               TEXT    NOT NULL
);

-- The invariant of SPEC §1, enforced by the database itself: at most one open lead and one open
-- opportunity per matching key, whoever writes.
CREATE UNIQUE INDEX records_one_open_per_key
    ON records (match_key, record_type)
    WHERE status IN ('New Lead', 'New Opportunity');

CREATE INDEX records_by_customer ON records (id_number, product, seq);

-- One row per status change (SPEC §1), creation included (from_status NULL).
CREATE TABLE history (
    seq         INTEGER PRIMARY KEY,
    record_id   TEXT NOT NULL REFERENCES records (id),
    from_status TEXT,
    to_status   TEXT NOT NULL,
    at          TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    channel     TEXT NOT NULL,
    reason      TEXT
);

CREATE INDEX history_by_record ON history (record_id, seq);

-- Facts about the store that must not change under it, such as the matching mode.
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
