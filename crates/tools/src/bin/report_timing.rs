//! `report-timing`: how long each report takes on a large store.
//!
//! Opens (and migrates) a fresh store, bulk-loads `--records` records spread evenly over the year before
//! 2026-11-27 (four channels, five products, 200 owners; 40% open, 20% won, 40% lost with a reason, one in
//! ten handed over to another owner), then times every report through the storage port, `--repeat` times
//! each, and prints the best and the median.
//!
//! ```sh
//! cargo run --release -p bench --bin report-timing -- --store sqlite:///tmp/r.db --records 10000000
//! cargo run --release -p bench --bin report-timing -- --store postgres://postgres@127.0.0.1/r --records 10000000
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use lifecycle::Channel;
use store::reports::{GroupBy, Period, StaleQuery};
use store::Reports;
use time::macros::datetime;
use time::OffsetDateTime;

#[derive(Parser, Debug)]
#[command(name = "report-timing", about = "Times each report on a bulk-loaded store")]
struct Args {
    /// A fresh store: sqlite://PATH or postgres://… (the database must exist and be empty)
    #[arg(long)]
    store: String,
    /// Records to load
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Runs of each report
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Time a store loaded by an earlier run, as it is (migrations still run)
    #[arg(long)]
    reuse: bool,
}

/// The end of the loaded year.
const END: OffsetDateTime = datetime!(2026-11-27 00:00 UTC);
const YEAR_SECONDS: i64 = 365 * 86_400;

/// Record `i`: blocks of ten share a type; `i % 10` decides the status (0-3 open, 4-5 won, 6-9 lost; 9 is
/// replaced by record `i + 1`, same key and type, another owner, created at the instant `i` closed). The
/// closing changes go in before the creations, as the service writes a replacement, so that the daily counts
/// see each hand-over.
const SQLITE: &str = "
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1),
r AS (SELECT i, ?2 - (?1 - i) * ?3 / ?1 AS created, (?2 - (?1 - i - 1) * ?3 / ?1) AS next,
          (CASE WHEN i % 10 = 0 AND i > 0 THEN i - 1 ELSE i END) / 10 % 2 AS block FROM n)
INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number, product, channel,
                     created_at, updated_at)
SELECT printf('T%09d', i),
       CASE WHEN block = 0 THEN 'LEAD' ELSE 'OPPORTUNITY' END,
       CASE WHEN i % 10 < 4 THEN CASE WHEN block = 0 THEN 'New Lead' ELSE 'New Opportunity' END
            WHEN i % 10 < 6 THEN 'Close Won' ELSE 'Close Lost' END,
       printf('TK%09d', CASE WHEN i % 10 = 0 AND i > 0 THEN i - 1 ELSE i END),
       printf('RM%03d', CASE WHEN i % 10 = 0 AND i > 0 THEN (i * 7 + 13) % 200 ELSE (i * 7) % 200 END),
       CASE WHEN block = 0 THEN 'NTB' ELSE 'ETB' END,
       printf('TK%09d', i),
       CASE (i / 4) % 5 WHEN 0 THEN 'CREDIT_CARD' WHEN 1 THEN 'PERSONAL_LOAN' WHEN 2 THEN 'SAVINGS'
                        WHEN 3 THEN 'MORTGAGE' ELSE 'INSURANCE' END,
       CASE i % 4 WHEN 0 THEN 'MOBILE_APP' WHEN 1 THEN 'LENDING_APP' WHEN 2 THEN 'CARDS_APP' ELSE 'BRANCH' END,
       strftime('%Y-%m-%dT%H:%M:%S.000000Z', created, 'unixepoch'),
       strftime('%Y-%m-%dT%H:%M:%S.000000Z',
                CASE WHEN i % 10 < 4 THEN created WHEN i % 10 = 9 THEN next ELSE created + (i % 97 + 1) * 3600 END,
                'unixepoch')
FROM r;
INSERT INTO history (record_id, from_status, to_status, at, request_id, channel, reason)
SELECT id, CASE record_type WHEN 'LEAD' THEN 'New Lead' ELSE 'New Opportunity' END, status, updated_at, 'load',
       channel,
       CASE WHEN status = 'Close Won' THEN NULL
            ELSE CASE CAST(substr(id, 2) AS INTEGER) % 10 WHEN 6 THEN 'NCB_REJECTED' WHEN 7 THEN 'AML_REJECTED'
                 WHEN 8 THEN 'CUSTOMER_DECLINED' ELSE 'OWNER_CHANGED' END END
FROM records WHERE status IN ('Close Won', 'Close Lost');
INSERT INTO history (record_id, from_status, to_status, at, request_id, channel, reason)
SELECT id, NULL, CASE record_type WHEN 'LEAD' THEN 'New Lead' ELSE 'New Opportunity' END, created_at, 'load',
       channel, NULL
FROM records;";

const POSTGRES: &[&str] = &[
    "INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number, product, channel,
                          created_at, updated_at)
     SELECT 'T' || lpad(i::text, 9, '0'),
            CASE WHEN block = 0 THEN 'LEAD' ELSE 'OPPORTUNITY' END,
            CASE WHEN i % 10 < 4 THEN CASE WHEN block = 0 THEN 'New Lead' ELSE 'New Opportunity' END
                 WHEN i % 10 < 6 THEN 'Close Won' ELSE 'Close Lost' END,
            'TK' || lpad((CASE WHEN i % 10 = 0 AND i > 0 THEN i - 1 ELSE i END)::text, 9, '0'),
            'RM' || lpad((CASE WHEN i % 10 = 0 AND i > 0 THEN (i * 7 + 13) % 200 ELSE (i * 7) % 200 END)::text, 3, '0'),
            CASE WHEN block = 0 THEN 'NTB' ELSE 'ETB' END,
            'TK' || lpad(i::text, 9, '0'),
            (ARRAY['CREDIT_CARD', 'PERSONAL_LOAN', 'SAVINGS', 'MORTGAGE', 'INSURANCE'])[(i / 4) % 5 + 1],
            (ARRAY['MOBILE_APP', 'LENDING_APP', 'CARDS_APP', 'BRANCH'])[i % 4 + 1],
            to_timestamp($2 - ($1 - i) * $3 / $1),
            to_timestamp(CASE WHEN i % 10 < 4 THEN $2 - ($1 - i) * $3 / $1
                              WHEN i % 10 = 9 THEN $2 - ($1 - i - 1) * $3 / $1
                              ELSE $2 - ($1 - i) * $3 / $1 + (i % 97 + 1) * 3600 END)
     FROM generate_series(0::bigint, $1 - 1) AS i,
          LATERAL (SELECT (CASE WHEN i % 10 = 0 AND i > 0 THEN i - 1 ELSE i END) / 10 % 2 AS block) AS b",
    "INSERT INTO history (record_id, from_status, to_status, at, request_id, channel, reason)
     SELECT id, CASE record_type WHEN 'LEAD' THEN 'New Lead' ELSE 'New Opportunity' END, status, updated_at,
            'load', channel,
            CASE WHEN status = 'Close Won' THEN NULL
                 ELSE CASE substr(id, 2)::bigint % 10 WHEN 6 THEN 'NCB_REJECTED' WHEN 7 THEN 'AML_REJECTED'
                      WHEN 8 THEN 'CUSTOMER_DECLINED' ELSE 'OWNER_CHANGED' END END
     FROM records WHERE status IN ('Close Won', 'Close Lost')",
    "INSERT INTO history (record_id, from_status, to_status, at, request_id, channel, reason)
     SELECT id, NULL, CASE record_type WHEN 'LEAD' THEN 'New Lead' ELSE 'New Opportunity' END, created_at, 'load',
            channel, NULL
     FROM records",
    "ANALYZE",
];

async fn open(url: &str, n: u64, load: bool) -> Box<dyn Reports> {
    let end = END.unix_timestamp();
    if let Some(path) = url.strip_prefix("sqlite://") {
        let store = store_sqlite::SqliteStore::open(store_sqlite::SqliteConfig::new(path)).expect("open SQLite");
        if !load {
            return Box::new(store);
        }
        let conn = rusqlite::Connection::open(path).expect("connect");
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; BEGIN;").expect("begin");
        let mut statements = SQLITE.split_inclusive(';');
        let first = statements.next().expect("a statement");
        conn.execute(first, rusqlite::params![n as i64, end, YEAR_SECONDS]).expect("load records");
        for rest in statements {
            conn.execute_batch(rest).expect("load history");
        }
        // The counts the writer adds up as it writes (migration 0011), for the history loaded here.
        store_sqlite::recount_from_history(&conn).expect("count the rejections and hand-overs");
        conn.execute_batch("COMMIT; ANALYZE;").expect("commit");
        return Box::new(store);
    }
    let mut config = store_postgres::PgConfig::new(url);
    config.statement_timeout = Duration::from_secs(600);
    let store = store_postgres::PgStore::open(config).await.expect("open PostgreSQL");
    if !load {
        return Box::new(store);
    }
    for (i, sql) in POSTGRES.iter().enumerate() {
        let q = sqlx::query(sql);
        let q = if i == 0 { q.bind(n as i64).bind(end).bind(YEAR_SECONDS) } else { q };
        q.execute(store.pool()).await.expect("load");
    }
    Box::new(store)
}

fn period(days: i64) -> Period {
    Period::new(END - time::Duration::days(days), END)
}

/// `days` long, from and to mid-day (13:00 to 13:00 UTC): whole days between two ragged ends, as a report
/// up to now is.
fn ragged(days: i64) -> Period {
    let to = END - time::Duration::hours(11);
    Period::new(to - time::Duration::days(days), to)
}

async fn time_it<T, F: std::future::Future<Output = T>>(
    repeat: usize,
    mut f: impl FnMut() -> F,
) -> (Duration, Duration) {
    let mut times = Vec::new();
    for _ in 0..repeat {
        let t = Instant::now();
        f().await;
        times.push(t.elapsed());
    }
    times.sort();
    (times[0], times[times.len() / 2])
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let t = Instant::now();
    let store = open(&args.store, args.records, !args.reuse).await;
    if args.reuse {
        println!("opened the store (and ran its new migrations) in {:.1}s", t.elapsed().as_secs_f64());
    } else {
        println!("loaded {} records in {:.1}s", args.records, t.elapsed().as_secs_f64());
    }
    let r = &*store;
    // What the service's housekeeping does now and then: fold the rows the triggers appended (PostgreSQL).
    let t = Instant::now();
    let folded = r.fold().await.expect("fold the daily counts");
    println!("folded {folded} rows of daily counts in {:.1}s", t.elapsed().as_secs_f64());
    let mobile = Some(Channel::parse("MOBILE_APP").expect("a channel"));
    let stale = StaleQuery::new(END, 30, 100).expect("a query");
    let (month, year, ragged_year) = (period(30), period(366), ragged(366));
    let mobile_month = period(30).with_filters(mobile, None);
    println!("{:<44} {:>10} {:>10}  answer", "report", "best", "median");
    macro_rules! row {
        ($name:expr, $call:expr, $summary:expr) => {{
            let (best, median) = time_it(args.repeat, || $call).await;
            let answer = $call.await.expect("the report");
            println!("{:<44} {:>8.1}ms {:>8.1}ms  {}", $name, ms(best), ms(median), $summary(&answer));
        }};
    }
    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }
    let groups = |rows: &store::reports::Rows<store::reports::FunnelRow>| {
        let created: u64 = rows.rows.iter().map(|g| g.leads + g.opportunities).sum();
        format!("{} groups, {created} records", rows.rows.len())
    };
    let lines = |n: usize| format!("{n} rows");
    row!("funnel by channel, 30 days", r.funnel(&month, GroupBy::Channel), groups);
    row!("funnel by day, 30 days", r.funnel(&month, GroupBy::Day), groups);
    row!("funnel by owner, 30 days", r.funnel(&month, GroupBy::Owner), groups);
    row!("funnel by product, 30 days, MOBILE_APP", r.funnel(&mobile_month, GroupBy::Product), groups);
    row!("funnel by channel, 366 days", r.funnel(&year, GroupBy::Channel), groups);
    row!("rejections, 30 days", r.rejections(&month), |x: &store::reports::Rows<_>| lines(x.rows.len()));
    row!("rejections, 366 days", r.rejections(&year), |x: &store::reports::Rows<_>| lines(x.rows.len()));
    row!("rejections, 366 days, mid-day to mid-day", r.rejections(&ragged_year), |x: &store::reports::Rows<_>| {
        lines(x.rows.len())
    });
    row!("handovers, 30 days", r.handovers(&month), |x: &store::reports::Rows<_>| lines(x.rows.len()));
    row!("handovers, 366 days", r.handovers(&year), |x: &store::reports::Rows<_>| lines(x.rows.len()));
    row!("handovers, 366 days, mid-day to mid-day", r.handovers(&ragged_year), |x: &store::reports::Rows<_>| {
        lines(x.rows.len())
    });
    row!("stale (older than 30 days), first page of 100", r.stale(&stale), |x: &store::reports::StalePage| lines(
        x.records.len()
    ));
}
