-- The rejections and hand-overs reports (docs/reports.md) add up counts per UTC day instead of reading every
-- change of the period: a year at ten million records read four million changes and took seconds.
--
-- Triggers keep the counts in the same transaction as the history (or the audit of a CRM backend,
-- `source = 'audit'`) they count, whoever writes it. Many writers share this database, so a trigger never
-- updates a day's row (every change of the day would wait on that row, and two changes adding to two rows
-- in opposite orders would deadlock): it appends to a `_new` table, and `fold` (store::Reports::fold, run
-- now and then by the service) moves those rows into the day's counts in one statement. The reports read
-- both. The days already in the store are counted once, at the end of this file.

CREATE TABLE report_rejections (
    source  TEXT   NOT NULL,
    day     DATE   NOT NULL,
    reason  TEXT   NOT NULL,  -- '' for a close without a reason
    channel TEXT   NOT NULL,
    product TEXT   NOT NULL,
    n       BIGINT NOT NULL,
    PRIMARY KEY (source, day, reason, channel, product)
);
CREATE TABLE report_rejections_new (
    source  TEXT   NOT NULL,
    day     DATE   NOT NULL,
    reason  TEXT   NOT NULL,
    channel TEXT   NOT NULL,
    product TEXT   NOT NULL,
    n       BIGINT NOT NULL
);
CREATE INDEX report_rejections_new_by_day ON report_rejections_new (source, day);

CREATE TABLE report_handovers (
    source     TEXT   NOT NULL,
    day        DATE   NOT NULL,
    from_owner TEXT   NOT NULL,
    to_owner   TEXT   NOT NULL,
    channel    TEXT   NOT NULL,
    product    TEXT   NOT NULL,
    n          BIGINT NOT NULL,
    PRIMARY KEY (source, day, from_owner, to_owner, channel, product)
);
CREATE TABLE report_handovers_new (
    source     TEXT   NOT NULL,
    day        DATE   NOT NULL,
    from_owner TEXT   NOT NULL,
    to_owner   TEXT   NOT NULL,
    channel    TEXT   NOT NULL,
    product    TEXT   NOT NULL,
    n          BIGINT NOT NULL
);
CREATE INDEX report_handovers_new_by_day ON report_handovers_new (source, day);

-- A close-lost change counts for the record's channel and product. A creation that replaced records closed
-- with OWNER_CHANGED at the same instant, on its key and type, is a hand-over from each of their owners (the
-- write path closes them before it creates, and these triggers run after the whole statement).
CREATE FUNCTION history_counts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.to_status = 'Close Lost' THEN
        INSERT INTO report_rejections_new (source, day, reason, channel, product, n)
        SELECT 'records', (NEW.at AT TIME ZONE 'UTC')::date, COALESCE(NEW.reason, ''), r.channel, r.product, 1
        FROM records r WHERE r.id = NEW.record_id;
    ELSIF NEW.from_status IS NULL AND EXISTS (
        SELECT 1 FROM history x WHERE x.to_status = 'Close Lost' AND x.at = NEW.at AND x.reason = 'OWNER_CHANGED'
    ) THEN
        INSERT INTO report_handovers_new (source, day, from_owner, to_owner, channel, product, n)
        SELECT 'records', (NEW.at AT TIME ZONE 'UTC')::date, o.owner_id, nw.owner_id, o.channel, o.product, count(*)
        FROM records nw
        JOIN records o ON o.match_key = nw.match_key AND o.record_type = nw.record_type AND o.id <> nw.id
        JOIN history h ON h.record_id = o.id
        WHERE nw.id = NEW.record_id
          AND h.to_status = 'Close Lost' AND h.reason = 'OWNER_CHANGED' AND h.at = NEW.at
        GROUP BY o.owner_id, nw.owner_id, o.channel, o.product;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER history_counts AFTER INSERT ON history FOR EACH ROW EXECUTE FUNCTION history_counts();

-- The same from a CRM backend's audit, whose records are its creation entries (the view audit_records).
CREATE FUNCTION audit_counts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.to_status = 'Close Lost' THEN
        INSERT INTO report_rejections_new (source, day, reason, channel, product, n)
        SELECT 'audit', (NEW.at AT TIME ZONE 'UTC')::date, COALESCE(NEW.reason, ''), r.channel, r.product, 1
        FROM audit_records r WHERE r.id = NEW.record_id;
    ELSIF NEW.from_status IS NULL AND EXISTS (
        SELECT 1 FROM audit x WHERE x.to_status = 'Close Lost' AND x.at = NEW.at AND x.reason = 'OWNER_CHANGED'
    ) THEN
        INSERT INTO report_handovers_new (source, day, from_owner, to_owner, channel, product, n)
        SELECT 'audit', (NEW.at AT TIME ZONE 'UTC')::date, o.owner_id, nw.owner_id, o.channel, o.product, count(*)
        FROM audit_records nw
        JOIN audit_records o ON o.match_key = nw.match_key AND o.record_type = nw.record_type AND o.id <> nw.id
        JOIN audit h ON h.record_id = o.id
        WHERE nw.id = NEW.record_id
          AND h.to_status = 'Close Lost' AND h.reason = 'OWNER_CHANGED' AND h.at = NEW.at
        GROUP BY o.owner_id, nw.owner_id, o.channel, o.product;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER audit_counts AFTER INSERT ON audit FOR EACH ROW EXECUTE FUNCTION audit_counts();

-- What the store already holds, counted as the reports counted it before.
INSERT INTO report_rejections (source, day, reason, channel, product, n)
SELECT 'records', (h.at AT TIME ZONE 'UTC')::date, COALESCE(h.reason, ''), r.channel, r.product, count(*)
FROM history h JOIN records r ON r.id = h.record_id
WHERE h.to_status = 'Close Lost'
GROUP BY 2, 3, 4, 5;

INSERT INTO report_rejections (source, day, reason, channel, product, n)
SELECT 'audit', (h.at AT TIME ZONE 'UTC')::date, COALESCE(h.reason, ''), r.channel, r.product, count(*)
FROM audit h JOIN audit_records r ON r.id = h.record_id
WHERE h.to_status = 'Close Lost'
GROUP BY 2, 3, 4, 5;

INSERT INTO report_handovers (source, day, from_owner, to_owner, channel, product, n)
SELECT 'records', (h.at AT TIME ZONE 'UTC')::date, o.owner_id, nw.owner_id, o.channel, o.product, count(*)
FROM history h
JOIN records o ON o.id = h.record_id
JOIN records nw ON nw.match_key = o.match_key AND nw.record_type = o.record_type AND nw.created_at = h.at
                AND nw.id <> o.id
WHERE h.to_status = 'Close Lost' AND h.reason = 'OWNER_CHANGED'
GROUP BY 2, 3, 4, 5, 6;

INSERT INTO report_handovers (source, day, from_owner, to_owner, channel, product, n)
SELECT 'audit', (h.at AT TIME ZONE 'UTC')::date, o.owner_id, nw.owner_id, o.channel, o.product, count(*)
FROM audit h
JOIN audit_records o ON o.id = h.record_id
JOIN audit_records nw ON nw.match_key = o.match_key AND nw.record_type = o.record_type AND nw.created_at = h.at
                      AND nw.id <> o.id
WHERE h.to_status = 'Close Lost' AND h.reason = 'OWNER_CHANGED'
GROUP BY 2, 3, 4, 5, 6;
