-- Every create wrote an entry into `records_by_key_creation` (match_key, record_type, created_at), at a place
-- in the index set by the customer: a page of its own, and after each checkpoint a full image of that page
-- in the WAL. The hand-over count (0009) was its only reader on the write path; it now starts from the
-- close-lost changes at the creation's instant (`history_close_lost`, 0006) and reaches the replaced
-- records by id. The hand-over report's ragged ends join the replacing record by its creation instant,
-- which leads `records_by_creation`.

CREATE OR REPLACE FUNCTION history_counts_per_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO report_rejections_new (source, day, reason, channel, product, n)
    SELECT 'records', (n.at AT TIME ZONE 'UTC')::date, COALESCE(n.reason, ''), r.channel, r.product, count(*)
    FROM new_history n
    CROSS JOIN LATERAL (SELECT channel, product FROM records WHERE id = n.record_id OFFSET 0) r
    WHERE n.to_status = 'Close Lost'
    GROUP BY 2, 3, 4, 5;

    -- A creation that replaced records: they closed with OWNER_CHANGED at its instant, on its key and type.
    -- A record closes once, so each replaced record is one close-lost change here.
    INSERT INTO report_handovers_new (source, day, from_owner, to_owner, channel, product, n)
    SELECT 'records', (n.at AT TIME ZONE 'UTC')::date, o.owner_id, nw.owner_id, o.channel, o.product, count(*)
    FROM new_history n
    CROSS JOIN LATERAL (
        SELECT match_key, record_type, owner_id FROM records WHERE id = n.record_id OFFSET 0
    ) nw
    CROSS JOIN LATERAL (
        SELECT o.owner_id, o.channel, o.product
        FROM history h JOIN records o ON o.id = h.record_id
        WHERE h.to_status = 'Close Lost' AND h.reason = 'OWNER_CHANGED' AND h.at = n.at
          AND o.match_key = nw.match_key AND o.record_type = nw.record_type AND o.id <> n.record_id
        OFFSET 0
    ) o
    WHERE n.from_status IS NULL
    GROUP BY 2, 3, 4, 5, 6;
    RETURN NULL;
END
$$;

DROP INDEX records_by_key_creation;
