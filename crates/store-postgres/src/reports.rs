//! [`store::Reports`] on PostgreSQL, from one of two relations of the same shape (migration 0006): this
//! store's own records and history, or the audit a CRM backend keeps here. The queries are written once for
//! both; the median is the database's own `percentile_cont`.

use async_trait::async_trait;
use lifecycle::{Channel, OwnerId, Product, Reason, RecordType, Status};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use store::reports::{
    FunnelRow, GroupBy, HandoverRow, Period, RejectionRow, Reports, Rows, Source, StalePage, StaleQuery, StaleRecord,
    MAX_GROUPS,
};
use store::StoreError;
use time::OffsetDateTime;

use crate::error;

/// The reports of one source.
pub(crate) struct Reporter {
    pub(crate) pool: PgPool,
    pub(crate) source: Source,
}

fn group_expr(group_by: GroupBy) -> &'static str {
    match group_by {
        GroupBy::Channel => "channel",
        GroupBy::Product => "product",
        GroupBy::Owner => "owner_id",
        GroupBy::Day => "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    }
}

fn count(r: &PgRow, i: usize) -> Result<u64, StoreError> {
    Ok(r.try_get::<Option<i64>, _>(i).map_err(error)?.unwrap_or(0).max(0) as u64)
}

fn text(r: &PgRow, i: usize) -> Result<String, StoreError> {
    r.try_get::<Option<String>, _>(i).map_err(error).map(Option::unwrap_or_default)
}

/// Binds the period and its filters as `$1`–`$4`.
fn query_period<'q>(
    sql: &'q str,
    period: &'q Period,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(period.from())
        .bind(period.to())
        .bind(period.channel.as_ref().map(Channel::as_str))
        .bind(period.product.as_ref().map(Product::as_str))
}

/// The advisory lock that keeps two processes from folding the daily counts at once (its own number: the
/// key locks of the write path are hashes of matching keys, see `write::key_lock_id`).
const FOLD_LOCK: i64 = 0x5245_504f_5254_0001;

impl Reporter {
    async fn rows(&self, sql: &str, period: &Period) -> Result<Vec<PgRow>, StoreError> {
        query_period(sql, period).fetch_all(&self.pool).await.map_err(error)
    }

    /// The rows of a counted report: its whole days from the daily counts (`days`: days `[first, end)` as
    /// `$1`, `$2`, the period's filters as `$3`, `$4`, the source as `$5`), its ragged ends from the changes
    /// (`changes`: arguments as [`query_period`]).
    async fn by_days(&self, period: &Period, days: &str, changes: &str) -> Result<Vec<PgRow>, StoreError> {
        let split = period.split_days();
        let mut rows = Vec::new();
        if let Some((first, end)) = split.days {
            let read = sqlx::query(days)
                .bind(first)
                .bind(end)
                .bind(period.channel.as_ref().map(Channel::as_str))
                .bind(period.product.as_ref().map(Product::as_str))
                .bind(self.source.tag)
                .fetch_all(&self.pool);
            rows.extend(read.await.map_err(error)?);
        }
        for edge in &split.edges {
            rows.extend(self.rows(changes, edge).await?);
        }
        Ok(rows)
    }
}

#[async_trait]
impl Reports for Reporter {
    async fn funnel(&self, period: &Period, group_by: GroupBy) -> Result<Rows<FunnelRow>, StoreError> {
        let sql = format!(
            "SELECT {g} AS g,
                    COUNT(*) FILTER (WHERE record_type = 'LEAD'),
                    COUNT(*) FILTER (WHERE record_type = 'OPPORTUNITY' AND NOT converted),
                    COUNT(*) FILTER (WHERE converted),
                    COUNT(*) FILTER (WHERE NOT converted AND status = 'Close Won'),
                    COUNT(*) FILTER (WHERE NOT converted AND status = 'Close Lost'),
                    COUNT(*) FILTER (WHERE status IN ('New Lead', 'New Opportunity')),
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM closed_at - created_at)::float8)
                        FILTER (WHERE NOT converted AND closed_at IS NOT NULL)
             FROM {records}
             WHERE created_at >= $1 AND created_at < $2
               AND ($3::text IS NULL OR channel = $3) AND ($4::text IS NULL OR product = $4)
             GROUP BY 1 ORDER BY 1 LIMIT {limit}",
            g = group_expr(group_by),
            records = self.source.records,
            limit = MAX_GROUPS + 1
        );
        let mut out = Vec::new();
        for r in self.rows(&sql, period).await? {
            out.push(FunnelRow {
                group: text(&r, 0)?,
                leads: count(&r, 1)?,
                opportunities: count(&r, 2)?,
                converted: count(&r, 3)?,
                close_won: count(&r, 4)?,
                close_lost: count(&r, 5)?,
                open: count(&r, 6)?,
                median_seconds_to_close: r.try_get::<Option<f64>, _>(7).map_err(error)?,
            });
        }
        Ok(Rows::capped(out))
    }

    /// The whole days from the daily counts (migration 0008: the folded ones and those not yet folded), the
    /// ragged ends from the changes themselves.
    async fn rejections(&self, period: &Period) -> Result<Rows<RejectionRow>, StoreError> {
        let days = "SELECT reason, channel, product, sum(n)::bigint FROM (
                SELECT reason, channel, product, n FROM report_rejections
                WHERE source = $5 AND day >= $1 AND day < $2
                UNION ALL
                SELECT reason, channel, product, n FROM report_rejections_new
                WHERE source = $5 AND day >= $1 AND day < $2) AS d
            WHERE ($3::text IS NULL OR channel = $3) AND ($4::text IS NULL OR product = $4)
            GROUP BY reason, channel, product";
        let changes = format!(
            "SELECT h.reason, r.channel, r.product, count(*)
             FROM {history} h JOIN {records} r ON r.id = h.record_id
             WHERE h.to_status = 'Close Lost' AND h.at >= $1 AND h.at < $2
               AND ($3::text IS NULL OR r.channel = $3) AND ($4::text IS NULL OR r.product = $4)
             GROUP BY h.reason, r.channel, r.product",
            history = self.source.history,
            records = self.source.records,
        );
        let rows = self.by_days(period, days, &changes).await?;
        let mut parts = Vec::with_capacity(rows.len());
        for r in rows {
            parts.push(RejectionRow {
                reason: r
                    .try_get::<Option<String>, _>(0)
                    .map_err(error)?
                    .filter(|x| !x.is_empty())
                    .map(Reason::from_stored),
                channel: Channel::from_stored(text(&r, 1)?),
                product: Product::from_stored(text(&r, 2)?),
                count: count(&r, 3)?,
            });
        }
        Ok(RejectionRow::merge(parts))
    }

    /// Like the rejections: whole days from the daily counts, the ragged ends from the changes.
    async fn handovers(&self, period: &Period) -> Result<Rows<HandoverRow>, StoreError> {
        let days = "SELECT from_owner, to_owner, sum(n)::bigint FROM (
                SELECT from_owner, to_owner, channel, product, n FROM report_handovers
                WHERE source = $5 AND day >= $1 AND day < $2
                UNION ALL
                SELECT from_owner, to_owner, channel, product, n FROM report_handovers_new
                WHERE source = $5 AND day >= $1 AND day < $2) AS d
            WHERE ($3::text IS NULL OR channel = $3) AND ($4::text IS NULL OR product = $4)
            GROUP BY from_owner, to_owner";
        // A replacement closes the old records and creates the new one in one step, at one instant, on one key.
        let changes = format!(
            "SELECT o.owner_id, n.owner_id, count(*)
             FROM {history} h
             JOIN {records} o ON o.id = h.record_id
             JOIN {records} n ON n.match_key = o.match_key AND n.record_type = o.record_type
                              AND n.created_at = h.at AND n.id <> o.id
             WHERE h.to_status = 'Close Lost' AND h.reason = 'OWNER_CHANGED' AND h.at >= $1 AND h.at < $2
               AND ($3::text IS NULL OR o.channel = $3) AND ($4::text IS NULL OR o.product = $4)
             GROUP BY o.owner_id, n.owner_id",
            history = self.source.history,
            records = self.source.records,
        );
        let rows = self.by_days(period, days, &changes).await?;
        let mut parts = Vec::with_capacity(rows.len());
        for r in rows {
            parts.push(HandoverRow {
                from_owner: OwnerId::from_stored(text(&r, 0)?),
                to_owner: OwnerId::from_stored(text(&r, 1)?),
                count: count(&r, 2)?,
            });
        }
        Ok(HandoverRow::merge(parts))
    }

    /// Moves the rows the triggers appended into the days' counts, in one transaction; another process
    /// folding at the same time makes this one skip (the advisory lock), so two never add up the same rows.
    async fn fold(&self) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(error)?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(FOLD_LOCK)
            .fetch_one(&mut *tx)
            .await
            .map_err(error)?;
        if !locked {
            return Ok(0);
        }
        let rejections = sqlx::query(
            "WITH moved AS (DELETE FROM report_rejections_new RETURNING source, day, reason, channel, product, n)
             INSERT INTO report_rejections (source, day, reason, channel, product, n)
             SELECT source, day, reason, channel, product, sum(n)::bigint FROM moved
             GROUP BY source, day, reason, channel, product
             ON CONFLICT (source, day, reason, channel, product) DO UPDATE SET n = report_rejections.n + EXCLUDED.n",
        )
        .execute(&mut *tx)
        .await
        .map_err(error)?;
        let handovers = sqlx::query(
            "WITH moved AS (DELETE FROM report_handovers_new
                            RETURNING source, day, from_owner, to_owner, channel, product, n)
             INSERT INTO report_handovers (source, day, from_owner, to_owner, channel, product, n)
             SELECT source, day, from_owner, to_owner, channel, product, sum(n)::bigint FROM moved
             GROUP BY source, day, from_owner, to_owner, channel, product
             ON CONFLICT (source, day, from_owner, to_owner, channel, product)
             DO UPDATE SET n = report_handovers.n + EXCLUDED.n",
        )
        .execute(&mut *tx)
        .await
        .map_err(error)?;
        tx.commit().await.map_err(error)?;
        Ok(rejections.rows_affected() + handovers.rows_affected())
    }

    async fn stale(&self, query: &StaleQuery) -> Result<StalePage, StoreError> {
        let sql = format!(
            "SELECT seq, id, record_type, status, owner_id, channel, product, created_at FROM {records}
             WHERE status IN ('New Lead', 'New Opportunity') AND created_at < $1 AND (created_at, seq) > ($2, $3)
               AND ($4::text IS NULL OR channel = $4) AND ($5::text IS NULL OR product = $5)
             ORDER BY created_at, seq LIMIT $6",
            records = self.source.records
        );
        // Without a cursor: from before any record.
        let (after, seq) = match &query.after {
            Some(c) => (c.created_at, c.seq),
            None => (OffsetDateTime::UNIX_EPOCH - time::Duration::days(365 * 100), i64::MIN),
        };
        let rows = sqlx::query(&sql)
            .bind(query.cutoff())
            .bind(after)
            .bind(seq)
            .bind(query.channel.as_ref().map(Channel::as_str))
            .bind(query.product.as_ref().map(Product::as_str))
            .bind(i64::from(query.limit()))
            .fetch_all(&self.pool)
            .await
            .map_err(error)?;
        let bad = StoreError::internal;
        let mut out = Vec::new();
        for r in rows {
            out.push(StaleRecord {
                seq: r.try_get(0).map_err(error)?,
                id: text(&r, 1)?,
                record_type: RecordType::parse(&text(&r, 2)?).map_err(bad)?,
                status: Status::parse(&text(&r, 3)?).map_err(bad)?,
                owner_id: OwnerId::from_stored(text(&r, 4)?),
                channel: Channel::from_stored(text(&r, 5)?),
                product: Product::from_stored(text(&r, 6)?),
                created_at: r.try_get(7).map_err(error)?,
            });
        }
        Ok(StalePage::new(out, query))
    }
}
