-- The report counts of 0008, added per statement instead of per history row: a batch of writes (the
-- adapter's `batch` module) inserts its history in one statement, and the row trigger ran its queries once
-- for each of its rows (a seventh of the database's time under the benchmark's mix). This trigger reads the
-- statement's new rows as a table and counts them with one query per report, grouped. The reports add up
-- every row of the `_new` tables, so a day's counts are the same as before.
--
-- The statement's rows are an unknown number to the planner, which may then prefer scanning whole tables to
-- find their records; each lookup is written as a LATERAL subquery with OFFSET 0, which the planner keeps as
-- is, so it runs once per new row, through the index.

CREATE FUNCTION history_counts_per_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO report_rejections_new (source, day, reason, channel, product, n)
    SELECT 'records', (n.at AT TIME ZONE 'UTC')::date, COALESCE(n.reason, ''), r.channel, r.product, count(*)
    FROM new_history n
    CROSS JOIN LATERAL (SELECT channel, product FROM records WHERE id = n.record_id OFFSET 0) r
    WHERE n.to_status = 'Close Lost'
    GROUP BY 2, 3, 4, 5;

    -- A creation that replaced records: they closed with OWNER_CHANGED at its instant, on its key and type.
    INSERT INTO report_handovers_new (source, day, from_owner, to_owner, channel, product, n)
    SELECT 'records', (n.at AT TIME ZONE 'UTC')::date, o.owner_id, nw.owner_id, o.channel, o.product, count(*)
    FROM new_history n
    CROSS JOIN LATERAL (
        SELECT match_key, record_type, owner_id FROM records WHERE id = n.record_id OFFSET 0
    ) nw
    CROSS JOIN LATERAL (
        SELECT o.owner_id, o.channel, o.product FROM records o
        WHERE o.match_key = nw.match_key AND o.record_type = nw.record_type AND o.id <> n.record_id
          AND EXISTS (
              SELECT 1 FROM history h
              WHERE h.record_id = o.id AND h.to_status = 'Close Lost' AND h.reason = 'OWNER_CHANGED' AND h.at = n.at
          )
        OFFSET 0
    ) o
    WHERE n.from_status IS NULL
    GROUP BY 2, 3, 4, 5, 6;
    RETURN NULL;
END
$$;

DROP TRIGGER history_counts ON history;
DROP FUNCTION history_counts();
CREATE TRIGGER history_counts AFTER INSERT ON history REFERENCING NEW TABLE AS new_history
    FOR EACH STATEMENT EXECUTE FUNCTION history_counts_per_statement();
