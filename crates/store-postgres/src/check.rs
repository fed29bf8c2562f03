//! Queries for the checks of a store's consistency (the test suites, `replica-check`).

/// A row of [`COUNTS_KEPT`] or [`COUNTS_FROM_HISTORY`].
pub type CountRow = (String, String, String, String, String, String, i64);

/// Every count of the store's own records, folded and not yet folded, added up per row of the two reports:
/// (kind, day, reason or from-owner, '' or to-owner, channel, product, count), in a fixed order.
pub const COUNTS_KEPT: &str = "
    SELECT 'rejection' AS kind, day::text, reason AS a, '' AS b, channel, product, sum(n)::bigint
    FROM (SELECT * FROM report_rejections UNION ALL SELECT * FROM report_rejections_new) x
    WHERE source = 'records' GROUP BY day, reason, channel, product
    UNION ALL
    SELECT 'handover', day::text, from_owner, to_owner, channel, product, sum(n)::bigint
    FROM (SELECT * FROM report_handovers UNION ALL SELECT * FROM report_handovers_new) x
    WHERE source = 'records' GROUP BY day, from_owner, to_owner, channel, product
    ORDER BY 1, 2, 3, 4, 5, 6";

/// The same rows counted from the history itself, as migration 0008 counted what a store already held: what
/// [`COUNTS_KEPT`] must equal.
pub const COUNTS_FROM_HISTORY: &str = "
    SELECT 'rejection' AS kind, (h.at AT TIME ZONE 'UTC')::date::text, COALESCE(h.reason, '') AS a, '' AS b,
        r.channel, r.product, count(*)::bigint
    FROM history h JOIN records r ON r.id = h.record_id
    WHERE h.to_status = 'Close Lost'
    GROUP BY 2, 3, 4, 5, 6
    UNION ALL
    SELECT 'handover', (h.at AT TIME ZONE 'UTC')::date::text, o.owner_id, nw.owner_id, o.channel, o.product,
        count(*)::bigint
    FROM history h
    JOIN records o ON o.id = h.record_id
    JOIN records nw ON nw.match_key = o.match_key AND nw.record_type = o.record_type AND nw.created_at = h.at
        AND nw.id <> o.id
    WHERE h.to_status = 'Close Lost' AND h.reason = 'OWNER_CHANGED'
    GROUP BY 2, 3, 4, 5, 6
    ORDER BY 1, 2, 3, 4, 5, 6";
