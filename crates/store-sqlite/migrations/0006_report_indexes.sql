-- The reports (docs/reports.md): indexes that keep them fast on millions of records, and one relation of
-- records per source (this store's records, or a CRM backend's audit) that the same report queries read.

-- The funnel: records created in a period, with every column it groups, filters and counts by (covering).
CREATE INDEX records_by_creation
    ON records (created_at, channel, product, owner_id, record_type, status, updated_at, converted_from_lead_id);
-- Stale open records, oldest first.
CREATE INDEX records_open_by_age ON records (created_at, seq) WHERE status IN ('New Lead', 'New Opportunity');
-- Hand-overs: the record that replaced a closed one (same key and type, created at the closing instant).
CREATE INDEX records_by_key_creation ON records (match_key, record_type, created_at);
-- Rejections and hand-overs: close-lost changes in a period.
CREATE INDEX history_close_lost ON history (at, reason) WHERE to_status = 'Close Lost';

-- What the audit of a CRM backend keeps for the reports, on the entry that creates a record (store::Origin).
ALTER TABLE audit ADD COLUMN owner_id TEXT;
ALTER TABLE audit ADD COLUMN product TEXT;
ALTER TABLE audit ADD COLUMN converted_from TEXT;
CREATE INDEX audit_creations ON audit (at) WHERE from_status IS NULL;
CREATE INDEX audit_close_lost ON audit (at, reason) WHERE to_status = 'Close Lost';

-- One row per record, as the reports see it: closed_at is when it was closed (NULL while open), converted
-- says it was made by converting a lead.
CREATE VIEW report_records AS
SELECT seq, id, record_type, status, owner_id, channel, product, match_key, created_at,
       CASE WHEN status IN ('Close Won', 'Close Lost') THEN updated_at END AS closed_at,
       converted_from_lead_id IS NOT NULL AS converted
FROM records;

-- The same from the audit: a record is its creation entry (with the facts of the lead it was converted
-- from, if it was); its status is its last entry's. Records created before the audit kept facts are left out.
CREATE VIEW audit_records AS
SELECT c.seq AS seq, c.record_id AS id, c.record_type AS record_type,
       (SELECT x.to_status FROM audit x WHERE x.record_id = c.record_id ORDER BY x.seq DESC LIMIT 1) AS status,
       COALESCE(l.owner_id, c.owner_id) AS owner_id,
       COALESCE(l.channel, c.channel) AS channel,
       COALESCE(l.product, c.product) AS product,
       c.match_key AS match_key,
       c.at AS created_at,
       (SELECT x.at FROM audit x
        WHERE x.record_id = c.record_id AND x.from_status IS NOT NULL AND x.to_status IN ('Close Won', 'Close Lost')
        ORDER BY x.seq LIMIT 1) AS closed_at,
       c.converted_from IS NOT NULL AS converted
FROM audit c LEFT JOIN audit l ON l.record_id = c.converted_from AND l.from_status IS NULL
WHERE c.from_status IS NULL AND COALESCE(l.owner_id, c.owner_id) IS NOT NULL;
