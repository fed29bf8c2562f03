-- The rejections and hand-overs reports (docs/reports.md) add up counts per UTC day instead of reading every
-- change of the period: a year at ten million records read four million changes and took 20 s.
--
-- The counts are kept by triggers, so they change in the same transaction as the history (or the audit of a
-- CRM backend, `source = 'audit'`) they count, whoever writes it. The single writer of a SQLite store adds to
-- the day's row in place. The days already in the store are counted once, at the end of this file.

-- Close-lost changes per day of the change, reason ('' for none), and the record's channel and product.
CREATE TABLE report_rejections (
    source  TEXT    NOT NULL,
    day     TEXT    NOT NULL,
    reason  TEXT    NOT NULL,
    channel TEXT    NOT NULL,
    product TEXT    NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (source, day, reason, channel, product)
) WITHOUT ROWID;

-- Records closed with OWNER_CHANGED and replaced, per day of the change, the two owners, and the closed
-- record's channel and product.
CREATE TABLE report_handovers (
    source     TEXT    NOT NULL,
    day        TEXT    NOT NULL,
    from_owner TEXT    NOT NULL,
    to_owner   TEXT    NOT NULL,
    channel    TEXT    NOT NULL,
    product    TEXT    NOT NULL,
    n          INTEGER NOT NULL,
    PRIMARY KEY (source, day, from_owner, to_owner, channel, product)
) WITHOUT ROWID;

-- A close-lost change counts for the record's channel and product.
CREATE TRIGGER history_counts_rejection AFTER INSERT ON history WHEN NEW.to_status = 'Close Lost'
BEGIN
    INSERT INTO report_rejections (source, day, reason, channel, product, n)
    SELECT 'records', substr(NEW.at, 1, 10), COALESCE(NEW.reason, ''), r.channel, r.product, 1
    FROM records r WHERE r.id = NEW.record_id
    ON CONFLICT DO UPDATE SET n = n + 1;
END;

-- A creation that replaced records closed with OWNER_CHANGED at the same instant, on its key and type, is a
-- hand-over from each of their owners (the write path closes them before it creates).
CREATE TRIGGER history_counts_handover AFTER INSERT ON history
WHEN NEW.from_status IS NULL
 AND EXISTS (SELECT 1 FROM history x
             WHERE x.to_status = 'Close Lost' AND x.at = NEW.at AND x.reason = 'OWNER_CHANGED')
BEGIN
    INSERT INTO report_handovers (source, day, from_owner, to_owner, channel, product, n)
    SELECT 'records', substr(NEW.at, 1, 10), o.owner_id, nw.owner_id, o.channel, o.product, COUNT(*)
    FROM records nw
    JOIN records o ON o.match_key = nw.match_key AND o.record_type = nw.record_type AND o.id <> nw.id
    JOIN history h ON h.record_id = o.id
    WHERE nw.id = NEW.record_id
      AND h.to_status = 'Close Lost' AND h.reason = 'OWNER_CHANGED' AND h.at = NEW.at
    GROUP BY o.owner_id, nw.owner_id, o.channel, o.product
    ON CONFLICT DO UPDATE SET n = n + excluded.n;
END;

-- The same from a CRM backend's audit, whose records are its creation entries (the view audit_records).
CREATE TRIGGER audit_counts_rejection AFTER INSERT ON audit
WHEN NEW.to_status = 'Close Lost'
BEGIN
    INSERT INTO report_rejections (source, day, reason, channel, product, n)
    SELECT 'audit', substr(NEW.at, 1, 10), COALESCE(NEW.reason, ''), r.channel, r.product, 1
    FROM audit_records r WHERE r.id = NEW.record_id
    ON CONFLICT DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER audit_counts_handover AFTER INSERT ON audit
WHEN NEW.from_status IS NULL
 AND EXISTS (SELECT 1 FROM audit x
             WHERE x.to_status = 'Close Lost' AND x.at = NEW.at AND x.reason = 'OWNER_CHANGED')
BEGIN
    INSERT INTO report_handovers (source, day, from_owner, to_owner, channel, product, n)
    SELECT 'audit', substr(NEW.at, 1, 10), o.owner_id, nw.owner_id, o.channel, o.product, COUNT(*)
    FROM audit_records nw
    JOIN audit_records o ON o.match_key = nw.match_key AND o.record_type = nw.record_type AND o.id <> nw.id
    JOIN audit h ON h.record_id = o.id
    WHERE nw.id = NEW.record_id
      AND h.to_status = 'Close Lost' AND h.reason = 'OWNER_CHANGED' AND h.at = NEW.at
    GROUP BY o.owner_id, nw.owner_id, o.channel, o.product
    ON CONFLICT DO UPDATE SET n = n + excluded.n;
END;

-- What the store already holds, counted as the reports counted it before.
INSERT INTO report_rejections (source, day, reason, channel, product, n)
SELECT 'records', substr(h.at, 1, 10), COALESCE(h.reason, ''), r.channel, r.product, COUNT(*)
FROM history h JOIN records r ON r.id = h.record_id
WHERE h.to_status = 'Close Lost'
GROUP BY 2, 3, 4, 5;

INSERT INTO report_rejections (source, day, reason, channel, product, n)
SELECT 'audit', substr(h.at, 1, 10), COALESCE(h.reason, ''), r.channel, r.product, COUNT(*)
FROM audit h JOIN audit_records r ON r.id = h.record_id
WHERE h.to_status = 'Close Lost'
GROUP BY 2, 3, 4, 5;

INSERT INTO report_handovers (source, day, from_owner, to_owner, channel, product, n)
SELECT 'records', substr(h.at, 1, 10), o.owner_id, nw.owner_id, o.channel, o.product, COUNT(*)
FROM history h
JOIN records o ON o.id = h.record_id
JOIN records nw ON nw.match_key = o.match_key AND nw.record_type = o.record_type AND nw.created_at = h.at
                 AND nw.id <> o.id
WHERE h.to_status = 'Close Lost' AND h.reason = 'OWNER_CHANGED'
GROUP BY 2, 3, 4, 5, 6;

INSERT INTO report_handovers (source, day, from_owner, to_owner, channel, product, n)
SELECT 'audit', substr(h.at, 1, 10), o.owner_id, nw.owner_id, o.channel, o.product, COUNT(*)
FROM audit h
JOIN audit_records o ON o.id = h.record_id
JOIN audit_records nw ON nw.match_key = o.match_key AND nw.record_type = o.record_type AND nw.created_at = h.at
                       AND nw.id <> o.id
WHERE h.to_status = 'Close Lost' AND h.reason = 'OWNER_CHANGED'
GROUP BY 2, 3, 4, 5, 6;
