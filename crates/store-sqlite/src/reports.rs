//! [`store::Reports`] on SQLite, from one of two relations of the same shape (migration 0006): this store's
//! own records and history, or the audit a CRM backend keeps here. The queries are written once for both.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use lifecycle::{Channel, OwnerId, Product, Reason, RecordType, Status};
use rusqlite::{params, Connection, Row};
use store::reports::{
    median, FunnelRow, GroupBy, HandoverRow, Period, RejectionRow, Reports, Rows, Source, StalePage, StaleQuery,
    StaleRecord, MAX_GROUPS,
};
use store::StoreError;
use time::Date;

use crate::read::{error, format_time, parse_time, Readers};

/// The reports of one source, read on the reader connections.
pub(crate) struct Reporter {
    pub(crate) readers: Arc<Readers>,
    pub(crate) source: Source,
}

const PERIOD: &str =
    "created_at >= ?1 AND created_at < ?2 AND (?3 IS NULL OR channel = ?3) AND (?4 IS NULL OR product = ?4)";

fn group_expr(group_by: GroupBy) -> &'static str {
    match group_by {
        GroupBy::Channel => "channel",
        GroupBy::Product => "product",
        GroupBy::Owner => "owner_id",
        GroupBy::Day => "substr(created_at, 1, 10)",
    }
}

fn count(r: &Row<'_>, i: usize) -> Result<u64, StoreError> {
    Ok(r.get::<_, Option<i64>>(i).map_err(error)?.unwrap_or(0).max(0) as u64)
}

/// One pass over the records of (part of) a period, along the covering index `records_by_creation`, added
/// up here: SQLite would sort every row for a `GROUP BY` and again for the median's window, which made a year
/// at ten million records take 23 s instead of a few.
fn funnel_part(conn: &Connection, s: Source, period: &Period, group_by: GroupBy) -> Result<Tallies, StoreError> {
    let sql = format!(
        "SELECT {g}, record_type = 'LEAD', converted, status,
                CASE WHEN NOT converted AND closed_at IS NOT NULL
                     THEN unixepoch(closed_at, 'subsec') - unixepoch(created_at, 'subsec') END
         FROM {records} WHERE {PERIOD}",
        g = group_expr(group_by),
        records = s.records,
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(error)?;
    let mut rows = stmt.query(period_args(period)).map_err(error)?;
    let mut groups = Tallies::new();
    while let Some(r) = rows.next().map_err(error)? {
        let group = r.get_ref(0).map_err(error)?.as_str_or_null().map_err(StoreError::internal)?.unwrap_or_default();
        let tally = match groups.get_mut(group) {
            Some(t) => t,
            None => groups.entry(group.to_owned()).or_insert_with(|| Tally::new(group)),
        };
        let lead: bool = r.get(1).map_err(error)?;
        let converted: bool = r.get(2).map_err(error)?;
        let status = r.get_ref(3).map_err(error)?.as_str().map_err(StoreError::internal)?;
        let row = &mut tally.row;
        match (lead, converted) {
            (true, _) => row.leads += 1,
            (false, false) => row.opportunities += 1,
            (false, true) => row.converted += 1,
        }
        match status {
            "Close Won" if !converted => row.close_won += 1,
            "Close Lost" if !converted => row.close_lost += 1,
            "New Lead" | "New Opportunity" => row.open += 1,
            _ => {}
        }
        if let Some(seconds) = r.get::<_, Option<f64>>(4).map_err(error)? {
            tally.to_close.push(seconds);
        }
    }
    Ok(groups)
}

/// A group of the funnel as the rows stream in: its counts, and the closed records' times to close.
struct Tally {
    row: FunnelRow,
    to_close: Vec<f64>,
}

type Tallies = HashMap<String, Tally>;

impl Tally {
    fn new(group: &str) -> Self {
        let row = FunnelRow {
            group: group.to_owned(),
            leads: 0,
            opportunities: 0,
            converted: 0,
            close_won: 0,
            close_lost: 0,
            open: 0,
            median_seconds_to_close: None,
        };
        Self { row, to_close: Vec::new() }
    }

    fn add(&mut self, other: Tally) {
        let (a, b) = (&mut self.row, other.row);
        a.leads += b.leads;
        a.opportunities += b.opportunities;
        a.converted += b.converted;
        a.close_won += b.close_won;
        a.close_lost += b.close_lost;
        a.open += b.open;
        self.to_close.extend(other.to_close);
    }
}

/// The groups of every part, their medians, in ascending order.
fn funnel_rows(parts: Vec<Tallies>) -> Rows<FunnelRow> {
    let mut groups = Tallies::new();
    for part in parts {
        for (group, tally) in part {
            match groups.get_mut(&group) {
                Some(t) => t.add(tally),
                None => {
                    groups.insert(group, tally);
                }
            }
        }
    }
    let mut out: Vec<FunnelRow> = groups
        .into_values()
        .map(|mut t| {
            t.row.median_seconds_to_close = median(&mut t.to_close);
            t.row
        })
        .collect();
    out.sort_by(|a, b| a.group.cmp(&b.group));
    out.truncate(MAX_GROUPS + 1);
    Rows::capped(out)
}

/// The whole days from the daily counts (migration 0008), the ragged ends from the changes themselves.
fn rejections(conn: &Connection, s: Source, period: &Period) -> Result<Rows<RejectionRow>, StoreError> {
    let days = "SELECT reason, channel, product, SUM(n) FROM report_rejections
                WHERE source = ?5 AND day >= ?1 AND day < ?2 AND (?3 IS NULL OR channel = ?3)
                  AND (?4 IS NULL OR product = ?4)
                GROUP BY reason, channel, product";
    let changes = format!(
        "SELECT h.reason, r.channel, r.product, COUNT(*)
         FROM {history} h JOIN {records} r ON r.id = h.record_id
         WHERE h.to_status = 'Close Lost' AND h.at >= ?1 AND h.at < ?2
           AND (?3 IS NULL OR r.channel = ?3) AND (?4 IS NULL OR r.product = ?4)
         GROUP BY h.reason, r.channel, r.product",
        history = s.history,
        records = s.records,
    );
    let parts = by_days(conn, s, period, days, &changes, |r| {
        Ok(RejectionRow {
            reason: r.get::<_, Option<String>>(0).map_err(error)?.filter(|x| !x.is_empty()).map(Reason::from_stored),
            channel: Channel::from_stored(r.get(1).map_err(error)?),
            product: Product::from_stored(r.get(2).map_err(error)?),
            count: count(r, 3)?,
        })
    })?;
    Ok(RejectionRow::merge(parts))
}

/// The rows of a counted report: its whole days from the daily counts (`days`, arguments as [`day_args`]),
/// its ragged ends from the changes (`changes`, arguments as [`period_args`]).
fn by_days<T>(
    conn: &Connection,
    s: Source,
    period: &Period,
    days: &str,
    changes: &str,
    row: impl Fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let split = period.split_days();
    let mut parts = Vec::new();
    let mut read = |sql: &str, args: &[Option<String>]| -> Result<(), StoreError> {
        let mut stmt = conn.prepare_cached(sql).map_err(error)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args)).map_err(error)?;
        while let Some(r) = rows.next().map_err(error)? {
            parts.push(row(r)?);
        }
        Ok(())
    };
    if let Some((first, end)) = split.days {
        read(days, &day_args(period, first, end, s.tag))?;
    }
    for edge in &split.edges {
        read(changes, &period_args(edge))?;
    }
    Ok(parts)
}

/// `YYYY-MM-DD`, as the daily counts name their day.
fn day(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// `?1`–`?4` for days `[first, end)` and the period's filters, `?5` the source's tag.
fn day_args(period: &Period, first: Date, end: Date, tag: &str) -> [Option<String>; 5] {
    let [_, _, channel, product] = period_args(period);
    [Some(day(first)), Some(day(end)), channel, product, Some(tag.to_owned())]
}

fn period_args(period: &Period) -> [Option<String>; 4] {
    [
        Some(format_time(period.from())),
        Some(format_time(period.to())),
        period.channel.as_ref().map(|c| c.as_str().to_owned()),
        period.product.as_ref().map(|p| p.as_str().to_owned()),
    ]
}

/// Like [`rejections`]: whole days from the daily counts, the ragged ends from the changes.
fn handovers(conn: &Connection, s: Source, period: &Period) -> Result<Rows<HandoverRow>, StoreError> {
    let days = "SELECT from_owner, to_owner, SUM(n) FROM report_handovers
                WHERE source = ?5 AND day >= ?1 AND day < ?2 AND (?3 IS NULL OR channel = ?3)
                  AND (?4 IS NULL OR product = ?4)
                GROUP BY from_owner, to_owner";
    // A replacement closes the old records and creates the new one in one step, at one instant, on one key.
    let changes = format!(
        "SELECT o.owner_id, n.owner_id, COUNT(*)
         FROM {history} h
         JOIN {records} o ON o.id = h.record_id
         JOIN {records} n ON n.match_key = o.match_key AND n.record_type = o.record_type AND n.created_at = h.at
                          AND n.id <> o.id
         WHERE h.to_status = 'Close Lost' AND h.reason = 'OWNER_CHANGED' AND h.at >= ?1 AND h.at < ?2
           AND (?3 IS NULL OR o.channel = ?3) AND (?4 IS NULL OR o.product = ?4)
         GROUP BY o.owner_id, n.owner_id",
        history = s.history,
        records = s.records,
    );
    let parts = by_days(conn, s, period, days, &changes, |r| {
        Ok(HandoverRow {
            from_owner: OwnerId::from_stored(r.get(0).map_err(error)?),
            to_owner: OwnerId::from_stored(r.get(1).map_err(error)?),
            count: count(r, 2)?,
        })
    })?;
    Ok(HandoverRow::merge(parts))
}

fn stale(conn: &Connection, s: Source, query: &StaleQuery) -> Result<StalePage, StoreError> {
    let sql = format!(
        "SELECT seq, id, record_type, status, owner_id, channel, product, created_at FROM {records}
         WHERE status IN ('New Lead', 'New Opportunity') AND created_at < ?1 AND (created_at, seq) > (?2, ?3)
           AND (?4 IS NULL OR channel = ?4) AND (?5 IS NULL OR product = ?5)
         ORDER BY created_at, seq LIMIT ?6",
        records = s.records
    );
    // Without a cursor: from before any record.
    let (after, seq) = match &query.after {
        Some(c) => (format_time(c.created_at), c.seq),
        None => (String::new(), i64::MIN),
    };
    let mut stmt = conn.prepare_cached(&sql).map_err(error)?;
    let mut rows = stmt
        .query(params![
            format_time(query.cutoff()),
            after,
            seq,
            query.channel.as_ref().map(Channel::as_str),
            query.product.as_ref().map(Product::as_str),
            query.limit(),
        ])
        .map_err(error)?;
    let bad = StoreError::internal;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(error)? {
        let text = |i: usize| r.get::<_, String>(i).map_err(error);
        out.push(StaleRecord {
            seq: r.get(0).map_err(error)?,
            id: text(1)?,
            record_type: RecordType::parse(&text(2)?).map_err(bad)?,
            status: Status::parse(&text(3)?).map_err(bad)?,
            owner_id: OwnerId::from_stored(text(4)?),
            channel: Channel::from_stored(text(5)?),
            product: Product::from_stored(text(6)?),
            created_at: parse_time(&text(7)?)?,
        });
    }
    Ok(StalePage::new(out, query))
}

#[async_trait]
impl Reports for Reporter {
    /// The period's two halves are read at once, on two connections (the machines this runs on have at least
    /// two cores; a year at ten million records took 6.5 s on one). Each record is in one half, read in
    /// that half's snapshot.
    async fn funnel(&self, period: &Period, group_by: GroupBy) -> Result<Rows<FunnelRow>, StoreError> {
        let s = self.source;
        let part = |p: Period| self.readers.run(move |conn| funnel_part(conn, s, &p, group_by));
        let (first, second) = period.halves();
        let (a, b) = tokio::try_join!(part(first), part(second))?;
        Ok(funnel_rows(vec![a, b]))
    }

    async fn rejections(&self, period: &Period) -> Result<Rows<RejectionRow>, StoreError> {
        let (s, period) = (self.source, period.clone());
        self.readers.run(move |conn| rejections(conn, s, &period)).await
    }

    async fn handovers(&self, period: &Period) -> Result<Rows<HandoverRow>, StoreError> {
        let (s, period) = (self.source, period.clone());
        self.readers.run(move |conn| handovers(conn, s, &period)).await
    }

    async fn stale(&self, query: &StaleQuery) -> Result<StalePage, StoreError> {
        let (s, query) = (self.source, query.clone());
        self.readers.run(move |conn| stale(conn, s, &query)).await
    }
}

/// Counts the rejections and hand-overs of this store's own history from scratch, in place of what the writer
/// added up as it wrote (migration 0011): for a store whose history was written in bulk with plain SQL, as
/// `report_timing` loads one. The same statements as migration 0008's first count.
pub fn recount_from_history(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "DELETE FROM report_rejections WHERE source = 'records';
         DELETE FROM report_handovers WHERE source = 'records';
         INSERT INTO report_rejections (source, day, reason, channel, product, n)
         SELECT 'records', substr(h.at, 1, 10), COALESCE(h.reason, ''), r.channel, r.product, COUNT(*)
         FROM history h JOIN records r ON r.id = h.record_id
         WHERE h.to_status = 'Close Lost'
         GROUP BY 2, 3, 4, 5;
         INSERT INTO report_handovers (source, day, from_owner, to_owner, channel, product, n)
         SELECT 'records', substr(h.at, 1, 10), o.owner_id, nw.owner_id, o.channel, o.product, COUNT(*)
         FROM history h
         JOIN records o ON o.id = h.record_id
         JOIN records nw ON nw.match_key = o.match_key AND nw.record_type = o.record_type AND nw.created_at = h.at
                          AND nw.id <> o.id
         WHERE h.to_status = 'Close Lost' AND h.reason = 'OWNER_CHANGED'
         GROUP BY 2, 3, 4, 5, 6;",
    )
}
