//! The reporting port: what the reports of the service (the funnel, close-lost reasons, hand-overs between
//! relationship managers, stale open records) ask of a backend, and the bounds every question carries.
//!
//! The SQL adapters answer from their records and history; a CRM backend answers from the audit its local
//! store keeps (see [`crate::Sidecar::audit_reports`]). Every question is bounded: a period of at most
//! [`MAX_SPAN_DAYS`], at most [`MAX_GROUPS`] groups, pages of at most [`MAX_PAGE`] stale records. Answers hold
//! no personal data: record ids, owner codes, channels, products, reasons and counts only.

use async_trait::async_trait;
use lifecycle::{Channel, OwnerId, Product, Reason, RecordId, RecordType, Status};
use std::collections::HashMap;

use time::{Date, Duration, OffsetDateTime, Time, UtcOffset};

use crate::StoreError;

/// The longest period a report covers.
pub const MAX_SPAN_DAYS: i64 = 366;
/// The most groups (or rows) one report answers; beyond that the answer says it was truncated.
pub const MAX_GROUPS: usize = 1000;
/// The most stale records in one page.
pub const MAX_PAGE: u32 = 500;

/// Why a report's question was refused, naming the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("must be 1-{MAX_PAGE}")]
    Page,
    #[error("must be 1-3650")]
    Days,
}

/// A half-open period `[from, to)`, at most [`MAX_SPAN_DAYS`] long, with optional filters on the records'
/// channel and product.
///
/// Any two instants make a period, so no pair of well-formed dates is refused: a `to` not after `from` makes
/// the period empty (it ends where it starts), and a longer span keeps its last [`MAX_SPAN_DAYS`] days (the
/// answer's `from` says where it starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    from: OffsetDateTime,
    to: OffsetDateTime,
    pub channel: Option<Channel>,
    pub product: Option<Product>,
}

impl Period {
    pub fn new(from: OffsetDateTime, to: OffsetDateTime) -> Self {
        let to = to.max(from);
        let from = to.checked_sub(Duration::days(MAX_SPAN_DAYS)).map_or(from, |earliest| from.max(earliest));
        Self { from, to, channel: None, product: None }
    }

    /// Whether no instant is in it.
    pub fn is_empty(&self) -> bool {
        self.from == self.to
    }

    pub fn with_filters(mut self, channel: Option<Channel>, product: Option<Product>) -> Self {
        self.channel = channel;
        self.product = product;
        self
    }

    pub fn from(&self) -> OffsetDateTime {
        self.from
    }

    /// The period cut in two at its middle instant, each half with its filters.
    pub fn halves(&self) -> (Period, Period) {
        let middle = self.from + (self.to - self.from) / 2;
        let part = |from, to| Period { from, to, channel: self.channel.clone(), product: self.product.clone() };
        (part(self.from, middle), part(middle, self.to))
    }

    /// The whole UTC days inside the period (which the daily counts answer), and the parts of it before and
    /// after them (which the changes themselves answer). Every part keeps the period's filters.
    pub fn split_days(&self) -> DaySplit {
        let (from, to) = (self.from.to_offset(UtcOffset::UTC), self.to.to_offset(UtcOffset::UTC));
        let midnight = |t: OffsetDateTime| t.replace_time(Time::MIDNIGHT);
        let first = if from == midnight(from) { Some(from) } else { midnight(from).checked_add(Duration::DAY) };
        let last = midnight(to);
        let part = |a: OffsetDateTime, b: OffsetDateTime| {
            (a < b).then(|| Period { from: a, to: b, channel: self.channel.clone(), product: self.product.clone() })
        };
        match first {
            Some(first) if first < last => DaySplit {
                days: Some((first.date(), last.date())),
                edges: [part(from, first), part(last, to)].into_iter().flatten().collect(),
            },
            _ => DaySplit { days: None, edges: part(from, to).into_iter().collect() },
        }
    }

    pub fn to(&self) -> OffsetDateTime {
        self.to
    }
}

/// A period cut at UTC midnights: the days `[first, end)` wholly inside it, if any, and the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaySplit {
    pub days: Option<(Date, Date)>,
    pub edges: Vec<Period>,
}

/// What the funnel's groups are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Channel,
    Product,
    Owner,
    /// The UTC day of creation, `YYYY-MM-DD`.
    Day,
}

/// One group of the funnel: records created in the period, and where they stand now.
#[derive(Debug, Clone, PartialEq)]
pub struct FunnelRow {
    pub group: String,
    /// Leads created.
    pub leads: u64,
    /// Opportunities created by a create (not by converting a lead).
    pub opportunities: u64,
    /// Opportunities made by converting a lead, in the period.
    pub converted: u64,
    /// Of the leads and opportunities created, how many are `Close Won` now.
    pub close_won: u64,
    /// ... `Close Lost` now.
    pub close_lost: u64,
    /// ... still open now.
    pub open: u64,
    /// Median of the time from creation to closing (won or lost), over the closed ones; `None` when none
    /// is closed.
    pub median_seconds_to_close: Option<f64>,
}

impl FunnelRow {
    /// `close_won / (leads + opportunities)`; `None` when nothing was created.
    pub fn conversion_rate(&self) -> Option<f64> {
        let created = self.leads + self.opportunities;
        (created > 0).then(|| self.close_won as f64 / created as f64)
    }
}

/// Close-lost changes in the period, by reason and the record's channel and product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectionRow {
    /// `None` for a close without a reason.
    pub reason: Option<Reason>,
    pub channel: Channel,
    pub product: Product,
    pub count: u64,
}

impl RejectionRow {
    /// Rows of several parts of a period, added up per reason, channel and product: most frequent first,
    /// then by reason (none first), channel and product, at most [`MAX_GROUPS`].
    pub fn merge(parts: impl IntoIterator<Item = RejectionRow>) -> Rows<RejectionRow> {
        let mut sums: HashMap<(Option<Reason>, Channel, Product), u64> = HashMap::new();
        for r in parts {
            *sums.entry((r.reason, r.channel, r.product)).or_default() += r.count;
        }
        let mut rows: Vec<_> = sums
            .into_iter()
            .map(|((reason, channel, product), count)| RejectionRow { reason, channel, product, count })
            .collect();
        fn reason(r: &RejectionRow) -> &str {
            r.reason.as_ref().map_or("", Reason::as_str)
        }
        rows.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| reason(a).cmp(reason(b)))
                .then_with(|| a.channel.as_str().cmp(b.channel.as_str()))
                .then_with(|| a.product.as_str().cmp(b.product.as_str()))
        });
        Rows::capped(rows)
    }
}

/// Owner changes in the period: records of `from_owner` closed (`OWNER_CHANGED`) and replaced by one of
/// `to_owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoverRow {
    pub from_owner: OwnerId,
    pub to_owner: OwnerId,
    pub count: u64,
}

impl HandoverRow {
    /// Rows of several parts of a period, added up per pair of owners: most frequent first, then by the
    /// owners, at most [`MAX_GROUPS`].
    pub fn merge(parts: impl IntoIterator<Item = HandoverRow>) -> Rows<HandoverRow> {
        let mut sums: HashMap<(OwnerId, OwnerId), u64> = HashMap::new();
        for r in parts {
            *sums.entry((r.from_owner, r.to_owner)).or_default() += r.count;
        }
        let mut rows: Vec<_> = sums
            .into_iter()
            .map(|((from_owner, to_owner), count)| HandoverRow { from_owner, to_owner, count })
            .collect();
        rows.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.from_owner.as_str().cmp(b.from_owner.as_str()))
                .then_with(|| a.to_owner.as_str().cmp(b.to_owner.as_str()))
        });
        Rows::capped(rows)
    }
}

/// Rows of a report, at most [`MAX_GROUPS`], and whether more were left off.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows<T> {
    pub rows: Vec<T>,
    pub truncated: bool,
}

impl<T> Rows<T> {
    /// From up to `MAX_GROUPS + 1` rows (adapters ask for one more than they answer).
    pub fn capped(mut rows: Vec<T>) -> Self {
        let truncated = rows.len() > MAX_GROUPS;
        rows.truncate(MAX_GROUPS);
        Self { rows, truncated }
    }
}

/// Where a page of stale records ends: the creation time and insertion order of its last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleCursor {
    pub created_at: OffsetDateTime,
    pub seq: i64,
}

impl StaleCursor {
    /// What [`StaleCursor::parse`] accepts, as a regular expression.
    pub const PATTERN: &'static str = r"^[0-9]{1,18}\.[0-9]{1,18}$";

    /// `<microseconds since the epoch>.<seq>`, as the API hands it out.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at.unix_timestamp_nanos() / 1000, self.seq)
    }

    /// Any `<digits>.<digits>` of 1 to 18 digits each ([`StaleCursor::PATTERN`]); nothing else.
    pub fn parse(s: &str) -> Option<Self> {
        let (micros, seq) = s.split_once('.')?;
        let digits = |t: &str| !t.is_empty() && t.len() <= 18 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(micros) || !digits(seq) {
            return None;
        }
        // Beyond the last representable instant, the cursor is after every record: the page is empty.
        let last = Date::MAX.with_time(Time::MAX).assume_utc();
        let created_at = OffsetDateTime::from_unix_timestamp_nanos(micros.parse::<i128>().ok()? * 1000).unwrap_or(last);
        Some(Self { created_at, seq: seq.parse().ok()? })
    }
}

/// Open records created before `now - older_than_days`, oldest first, a page at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleQuery {
    cutoff: OffsetDateTime,
    limit: u32,
    pub after: Option<StaleCursor>,
    pub channel: Option<Channel>,
    pub product: Option<Product>,
}

impl StaleQuery {
    pub fn new(now: OffsetDateTime, older_than_days: u32, limit: u32) -> Result<Self, QueryError> {
        if !(1..=3650).contains(&older_than_days) {
            return Err(QueryError::Days);
        }
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(QueryError::Page);
        }
        let cutoff = now - Duration::days(i64::from(older_than_days));
        Ok(Self { cutoff, limit, after: None, channel: None, product: None })
    }

    /// Records created strictly before this are stale.
    pub fn cutoff(&self) -> OffsetDateTime {
        self.cutoff
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }
}

/// One stale open record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleRecord {
    pub id: RecordId,
    pub record_type: RecordType,
    pub status: Status,
    pub owner_id: OwnerId,
    pub channel: Channel,
    pub product: Product,
    pub created_at: OffsetDateTime,
    pub seq: i64,
}

/// A page of stale records; `next` continues after it when the page is full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StalePage {
    pub records: Vec<StaleRecord>,
    pub next: Option<StaleCursor>,
}

impl StalePage {
    /// From the rows a query returned for `query` (at most its limit).
    pub fn new(records: Vec<StaleRecord>, query: &StaleQuery) -> Self {
        let next = (records.len() == query.limit as usize)
            .then(|| records.last().map(|r| StaleCursor { created_at: r.created_at, seq: r.seq }))
            .flatten();
        Self { records, next }
    }
}

/// The two relations a SQL adapter's report queries read (migration 0006 of each adapter): one row per
/// record (`seq, id, record_type, status, owner_id, channel, product, match_key, created_at, closed_at,
/// converted`) and one per status change (`record_id, to_status, at, reason`).
///
/// The close-lost changes and the hand-overs are also kept as counts per UTC day (migration 0008 of each
/// adapter, kept up to date in each change's own transaction), under the source's `tag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub records: &'static str,
    pub history: &'static str,
    pub tag: &'static str,
}

impl Source {
    /// The store's own records and history.
    pub const RECORDS: Source = Source { records: "report_records", history: "history", tag: "records" };
    /// A CRM backend's audit.
    pub const AUDIT: Source = Source { records: "audit_records", history: "audit", tag: "audit" };
}

/// The median of `values` (the mean of the two middle ones for an even count); `None` when empty.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let n = values.len();
    // The upper middle one in place; for an even count, the lower middle one is the largest below it.
    let (below, upper, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    let upper = *upper;
    Some(if n % 2 == 1 { upper } else { (below.iter().copied().fold(f64::NEG_INFINITY, f64::max) + upper) / 2.0 })
}

/// The reports every backend answers. Each call reads, never writes, and is bounded (see the module).
#[async_trait]
pub trait Reports: Send + Sync + 'static {
    /// Records created in the period, grouped, with where they stand now; groups in ascending order.
    async fn funnel(&self, period: &Period, group_by: GroupBy) -> Result<Rows<FunnelRow>, StoreError>;

    /// Folds what the writes added since the last call into the daily counts, where a backend keeps the two
    /// apart (PostgreSQL: many writers, so each adds rows and this adds them up); how many rows it folded.
    /// The answers are the same before and after.
    async fn fold(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Close-lost changes in the period, most frequent first.
    async fn rejections(&self, period: &Period) -> Result<Rows<RejectionRow>, StoreError>;

    /// Owner changes in the period, most frequent first.
    async fn handovers(&self, period: &Period) -> Result<Rows<HandoverRow>, StoreError>;

    /// Open records older than the query's cutoff, oldest first.
    async fn stale(&self, query: &StaleQuery) -> Result<StalePage, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_bounded() {
        let t = OffsetDateTime::UNIX_EPOCH;
        let ends = |p: Period| (p.from(), p.to(), p.is_empty());
        assert_eq!(ends(Period::new(t, t)), (t, t, true));
        // A `to` before `from`: empty, where it starts.
        assert_eq!(ends(Period::new(t, t - Duration::SECOND)), (t, t, true));
        let year = Duration::days(MAX_SPAN_DAYS);
        assert_eq!(ends(Period::new(t, t + Duration::SECOND)), (t, t + Duration::SECOND, false));
        assert_eq!(ends(Period::new(t, t + year)), (t, t + year, false));
        // Longer: its last MAX_SPAN_DAYS days.
        assert_eq!(ends(Period::new(t - Duration::SECOND, t + year)), (t, t + year, false));
        assert_eq!(ends(Period::new(t - year * 10, t)), (t - year, t, false));
        // At the ends of time, nothing overflows.
        let (min, max) = (Date::MIN.midnight().assume_utc(), Date::MAX.midnight().assume_utc());
        assert_eq!(ends(Period::new(min, max)), (max - year, max, false));
        assert_eq!(ends(Period::new(min, min + Duration::DAY)), (min, min + Duration::DAY, false));
    }

    #[test]
    fn cursors_round_trip_and_refuse_junk() {
        let c = StaleCursor { created_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(), seq: 42 };
        assert_eq!(StaleCursor::parse(&c.encode()), Some(c));
        for junk in ["", ".", "1.", ".1", "-1.2", "1.-2", "a.b", "1.2.3", "9999999999999999999.1", "1e3.1", " 1.2"] {
            assert_eq!(StaleCursor::parse(junk), None, "{junk}");
        }
        // Every cursor of the pattern parses; one past the end of time is after every record.
        let far = StaleCursor::parse("999999999999999999.999999999999999999").unwrap();
        assert_eq!((far.created_at.year(), far.seq), (9999, 999_999_999_999_999_999));
        assert_eq!(StaleCursor::parse("0.0").unwrap().created_at, OffsetDateTime::UNIX_EPOCH);
    }

    #[test]
    fn periods_split_at_utc_midnights() {
        use time::macros::{date, datetime};
        let split = |from, to| Period::new(from, to).split_days();
        let edges = |s: &DaySplit| s.edges.iter().map(|p| (p.from(), p.to())).collect::<Vec<_>>();

        // Midnight to midnight: whole days only.
        let s = split(datetime!(2026-01-01 00:00 UTC), datetime!(2026-01-31 00:00 UTC));
        assert_eq!(s.days, Some((date!(2026 - 01 - 01), date!(2026 - 01 - 31))));
        assert!(s.edges.is_empty());

        // Ragged ends: the days between, and the two pieces.
        let s = split(datetime!(2026-01-01 10:00 UTC), datetime!(2026-01-03 07:30 UTC));
        assert_eq!(s.days, Some((date!(2026 - 01 - 02), date!(2026 - 01 - 03))));
        assert_eq!(
            edges(&s),
            [
                (datetime!(2026-01-01 10:00 UTC), datetime!(2026-01-02 00:00 UTC)),
                (datetime!(2026-01-03 00:00 UTC), datetime!(2026-01-03 07:30 UTC))
            ]
        );

        // Less than a whole day, across midnight or inside one day: no days, the period itself.
        let s = split(datetime!(2026-01-01 22:00 UTC), datetime!(2026-01-02 03:00 UTC));
        assert_eq!(
            (s.days, edges(&s)),
            (None, vec![(datetime!(2026-01-01 22:00 UTC), datetime!(2026-01-02 03:00 UTC))])
        );
        let s = split(datetime!(2026-01-01 00:00 UTC), datetime!(2026-01-01 23:59 UTC));
        assert_eq!(s.days, None);

        // Exactly one day, and an empty period.
        let s = split(datetime!(2026-01-01 00:00 UTC), datetime!(2026-01-02 00:00 UTC));
        assert_eq!((s.days, s.edges.len()), (Some((date!(2026 - 01 - 01), date!(2026 - 01 - 02))), 0));
        let s = split(datetime!(2026-01-01 05:00 UTC), datetime!(2026-01-01 05:00 UTC));
        assert_eq!((s.days, s.edges.len()), (None, 0));

        // Other offsets are cut at UTC midnights; filters stay on every part.
        let p = Period::new(datetime!(2026-01-01 03:00 +05:00), datetime!(2026-01-03 12:00 +05:00))
            .with_filters(Some(Channel::parse("MOBILE_APP").unwrap()), None);
        let s = p.split_days();
        assert_eq!(s.days, Some((date!(2026 - 01 - 01), date!(2026 - 01 - 03))));
        assert_eq!(
            edges(&s),
            [
                (datetime!(2025-12-31 22:00 UTC), datetime!(2026-01-01 00:00 UTC)),
                (datetime!(2026-01-03 00:00 UTC), datetime!(2026-01-03 07:00 UTC))
            ]
        );
        assert!(s.edges.iter().all(|e| e.channel == p.channel && e.product.is_none()));

        // At the end of the calendar nothing overflows.
        let s = split(datetime!(9999-12-31 12:00 UTC), datetime!(9999-12-31 23:00 UTC));
        assert_eq!(s.days, None);
    }

    #[test]
    fn halves_cover_the_period_once() {
        use time::macros::datetime;
        let p = Period::new(datetime!(2026-01-01 00:00 UTC), datetime!(2026-01-02 00:00:00.000001 UTC))
            .with_filters(None, Some(Product::parse("SAVINGS").unwrap()));
        let (a, b) = p.halves();
        assert_eq!((a.from(), a.to(), b.to()), (p.from(), b.from(), p.to()));
        assert!(a.from() < a.to() && b.from() < b.to());
        assert!(a.product == p.product && b.product == p.product);
        let empty = Period::new(datetime!(2026-01-01 00:00 UTC), datetime!(2026-01-01 00:00 UTC));
        let (a, b) = empty.halves();
        assert!(a.is_empty() && b.is_empty());
    }

    #[test]
    fn parts_add_up_and_sort() {
        let ch = |c: &str| Channel::parse(c).unwrap();
        let pr = |p: &str| Product::parse(p).unwrap();
        let rej = |reason: Option<&str>, c: &str, p: &str, count| RejectionRow {
            reason: reason.map(|r| Reason::parse(r).unwrap()),
            channel: ch(c),
            product: pr(p),
            count,
        };
        let merged = RejectionRow::merge([
            rej(Some("NCB_REJECTED"), "MOBILE_APP", "SAVINGS", 2),
            rej(None, "MOBILE_APP", "SAVINGS", 3),
            rej(Some("AML_REJECTED"), "MOBILE_APP", "SAVINGS", 3),
            rej(Some("NCB_REJECTED"), "MOBILE_APP", "SAVINGS", 1),
            rej(Some("NCB_REJECTED"), "BRANCH", "SAVINGS", 5),
        ]);
        assert_eq!(
            merged.rows,
            [
                rej(Some("NCB_REJECTED"), "BRANCH", "SAVINGS", 5),
                rej(None, "MOBILE_APP", "SAVINGS", 3),
                rej(Some("AML_REJECTED"), "MOBILE_APP", "SAVINGS", 3),
                rej(Some("NCB_REJECTED"), "MOBILE_APP", "SAVINGS", 3),
            ]
        );
        assert!(!merged.truncated);

        let owner = |o: &str| OwnerId::parse(o).unwrap();
        let ho = |a: &str, b: &str, count| HandoverRow { from_owner: owner(a), to_owner: owner(b), count };
        let merged =
            HandoverRow::merge([ho("RM2", "RM1", 1), ho("RM1", "RM2", 2), ho("RM2", "RM1", 1), ho("RM1", "RM3", 2)]);
        assert_eq!(merged.rows, [ho("RM1", "RM2", 2), ho("RM1", "RM3", 2), ho("RM2", "RM1", 2)]);

        let many = HandoverRow::merge((0..=MAX_GROUPS).map(|i| ho(&format!("RM{i}"), "RM0", 1)));
        assert_eq!((many.rows.len(), many.truncated), (MAX_GROUPS, true));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0]), Some(3.0));
        assert_eq!(median(&mut [4.0, 1.0]), Some(2.5));
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&mut [9.0, 2.0, 7.0, 1.0]), Some(4.5));
        assert_eq!(median(&mut [2.0, 2.0, 8.0, 8.0, 2.0, 8.0]), Some(5.0));
        // Against the definition (sort, take the middle), over many shuffled lengths and duplicates.
        for n in 1..200_u64 {
            let mut values: Vec<f64> = (0..n).map(|i| ((i * 7919 + n * 31) % 53) as f64 / 4.0).collect();
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let m = sorted.len();
            let want = if m % 2 == 1 { sorted[m / 2] } else { (sorted[m / 2 - 1] + sorted[m / 2]) / 2.0 };
            assert_eq!(median(&mut values), Some(want), "n = {n}");
        }
    }

    #[test]
    fn stale_queries_are_bounded() {
        let now = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(StaleQuery::new(now, 0, 10), Err(QueryError::Days));
        assert_eq!(StaleQuery::new(now, 30, 0), Err(QueryError::Page));
        assert_eq!(StaleQuery::new(now, 30, MAX_PAGE + 1), Err(QueryError::Page));
        assert_eq!(StaleQuery::new(now, 30, 10).unwrap().cutoff(), now - Duration::days(30));
    }
}
