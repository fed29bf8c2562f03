-- Records of both types in one table, as in the embedded store (see its migration for the reasoning).
CREATE TABLE records (
    seq                      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- "newest first" is seq DESC
    id                       TEXT        NOT NULL UNIQUE,
    record_type              TEXT        NOT NULL CHECK (record_type IN ('LEAD', 'OPPORTUNITY')),
    status                   TEXT        NOT NULL CHECK (
        (record_type = 'LEAD' AND status IN ('New Lead', 'Close Won', 'Close Lost')) OR
        (record_type = 'OPPORTUNITY' AND status IN ('New Opportunity', 'Close Won', 'Close Lost'))),
    match_key                TEXT        NOT NULL,
    owner_id                 TEXT        NOT NULL,
    customer_type            TEXT        NOT NULL CHECK (customer_type IN ('NTB', 'ETB')),
    id_number                TEXT        NOT NULL,
    cif                      TEXT,
    full_name                TEXT,
    phone                    TEXT,
    email                    TEXT,
    product                  TEXT        NOT NULL,
    channel                  TEXT        NOT NULL,
    journey_id               TEXT,
    converted_opportunity_id TEXT,
    converted_from_lead_id   TEXT,
    created_at               TIMESTAMPTZ NOT NULL,
    updated_at               TIMESTAMPTZ NOT NULL
);

-- The invariant of SPEC §1, enforced by the database for every replica and every writer.
CREATE UNIQUE INDEX records_one_open_per_key
    ON records (match_key, record_type)
    WHERE status IN ('New Lead', 'New Opportunity');

CREATE INDEX records_by_customer ON records (id_number, product, seq);

CREATE TABLE history (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id   TEXT        NOT NULL REFERENCES records (id),
    from_status TEXT,
    to_status   TEXT        NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    request_id  TEXT        NOT NULL,
    channel     TEXT        NOT NULL,
    reason      TEXT
);

CREATE INDEX history_by_record ON history (record_id, seq);

CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
