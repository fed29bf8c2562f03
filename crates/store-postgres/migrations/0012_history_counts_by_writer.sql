-- The reports' daily counts (0008) are now appended by the service's own write statements
-- (`crates/store-postgres/src/batch.rs` and `write.rs`), in the statement that writes the change they count,
-- instead of by the statement trigger on the history (0009, 0010). That trigger looked every new history
-- row's record up again, and a creation's replaced records in the history, to find the few rows that change
-- a count: about a sixth of PostgreSQL's CPU in the benchmark's mix, measured by dropping it.
--
-- It stays, for a writer that does not count: a replica of an earlier release, still running during a
-- rolling upgrade, or a program that writes the history itself. The service opens every connection with
-- `crm.counts_by_writer = on` (`crates/store-postgres/src/lib.rs`), and the trigger returns at once for
-- those; any other session is counted by it as before. Returning at once, it still costs its call and the
-- statement's transition table, so a later release, which no replica older than this one can run beside,
-- drops it.
CREATE OR REPLACE FUNCTION history_counts_per_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('crm.counts_by_writer', true) = 'on' THEN
        RETURN NULL;
    END IF;

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
