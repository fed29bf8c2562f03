//! Reading records back: row mapping, timestamps, the reader connections, and error translation.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use lifecycle::{
    Channel, Cif, CustomerType, Email, FullName, IdNumber, JourneyId, OwnerId, Phone, Product, Reason, RecordType,
    Status,
};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, Row};
use store::{HistoryEntry, Record, RecordWithHistory, SearchResult, StoreError};
use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

/// Fixed-width UTC timestamps (RFC 3339, microseconds), so text order is time order.
const TIME: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

pub(crate) fn format_time(t: OffsetDateTime) -> String {
    t.format(TIME).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

pub(crate) fn parse_time(s: &str) -> Result<OffsetDateTime, StoreError> {
    PrimitiveDateTime::parse(s, TIME).map(PrimitiveDateTime::assume_utc).map_err(StoreError::internal)
}

/// SQLite's failures in the port's terms: a busy, full or failing disk is the backend being unavailable
/// (503, retry later); anything else is a bug or corruption (500).
pub(crate) fn error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::OutOfMemory
            | ErrorCode::ReadOnly,
        ) => StoreError::unavailable(e),
        _ => StoreError::internal(e),
    }
}

/// Most reader connections open at once. Each keeps a page cache of up to 2 MiB, and reads otherwise run on
/// as many of tokio's blocking threads as there are requests (up to 512): the reads beyond this wait for a
/// connection instead. On two cores, eight reads at once keep both busy.
pub(crate) const MAX_READERS: usize = 8;

/// Connections for reads, opened on demand (at most [`MAX_READERS`]) and kept for reuse.
pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Readers {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path, idle: Mutex::new(Vec::new()), permits: Arc::new(tokio::sync::Semaphore::new(MAX_READERS)) }
    }

    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return Ok(conn);
        }
        let conn =
            Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(error)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(error)?;
        Ok(conn)
    }

    /// Runs `f` on a reader connection on the blocking pool.
    pub(crate) async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let me = self.clone();
        let permit = self.permits.clone().acquire_owned().await.map_err(StoreError::internal)?;
        tokio::task::spawn_blocking(move || {
            let conn = me.take()?;
            let result = f(&conn);
            if let Ok(mut idle) = me.idle.lock() {
                idle.push(conn);
            }
            drop(permit);
            result
        })
        .await
        .map_err(StoreError::internal)?
    }
}

const COLUMNS: &str = "id, record_type, status, owner_id, customer_type, id_number, cif, full_name, phone, email,
    product, channel, journey_id, converted_opportunity_id, converted_from_lead_id, created_at, updated_at";

fn opt<T>(v: Option<String>, parse: impl Fn(&str) -> Result<T, lifecycle::Invalid>) -> Result<Option<T>, StoreError> {
    v.map(|s| parse(&s).map_err(StoreError::internal)).transpose()
}

fn record(r: &Row<'_>) -> Result<Record, StoreError> {
    let text = |i: usize| r.get::<_, String>(i).map_err(error);
    let maybe = |i: usize| r.get::<_, Option<String>>(i).map_err(error);
    let bad = StoreError::internal;
    Ok(Record {
        id: text(0)?,
        record_type: RecordType::parse(&text(1)?).map_err(bad)?,
        status: Status::parse(&text(2)?).map_err(bad)?,
        owner_id: OwnerId::from_stored(text(3)?),
        customer_type: CustomerType::parse(&text(4)?).map_err(bad)?,
        id_number: IdNumber::from_stored(text(5)?),
        cif: maybe(6)?.map(Cif::from_stored),
        full_name: maybe(7)?.map(FullName::from_stored),
        phone: maybe(8)?.map(Phone::from_stored),
        email: maybe(9)?.map(Email::from_stored),
        product: Product::from_stored(text(10)?),
        channel: Channel::from_stored(text(11)?),
        journey_id: maybe(12)?.map(JourneyId::from_stored),
        converted_opportunity_id: maybe(13)?,
        converted_from_lead_id: maybe(14)?,
        created_at: parse_time(&text(15)?)?,
        updated_at: parse_time(&text(16)?)?,
    })
}

pub(crate) fn history_entry(r: &Row<'_>) -> Result<HistoryEntry, StoreError> {
    let bad = StoreError::internal;
    Ok(HistoryEntry {
        from: opt(r.get(0).map_err(error)?, Status::parse)?,
        to: Status::parse(&r.get::<_, String>(1).map_err(error)?).map_err(bad)?,
        at: parse_time(&r.get::<_, String>(2).map_err(error)?)?,
        request_id: r.get(3).map_err(error)?,
        channel: Channel::from_stored(r.get(4).map_err(error)?),
        reason: r.get::<_, Option<String>>(5).map_err(error)?.map(Reason::from_stored),
    })
}

pub(crate) fn get(
    conn: &Connection,
    record_type: RecordType,
    id: &str,
) -> Result<Option<RecordWithHistory>, StoreError> {
    // One read transaction for both statements: in WAL mode it reads one snapshot, so a change the writer
    // commits in between never shows a status the history does not have. Dropped (rolled back) at the end.
    let tx = conn.unchecked_transaction().map_err(error)?;
    let conn: &Connection = &tx;
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM records WHERE id = ?1 AND record_type = ?2"))
        .map_err(error)?;
    let Some(record) =
        stmt.query_row(params![id, record_type.as_str()], |r| Ok(record(r))).optional().map_err(error)?.transpose()?
    else {
        return Ok(None);
    };
    let history = history_of(
        conn,
        "SELECT from_status, to_status, at, request_id, channel, reason FROM history
         WHERE record_id = ?1 ORDER BY seq",
        id,
    )?;
    Ok(Some(RecordWithHistory { record, history }))
}

/// The history rows `sql` selects for `record_id` (the lifecycle's `history` table, or a CRM backend's
/// `audit`), oldest first.
pub(crate) fn history_of(conn: &Connection, sql: &str, record_id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(error)?;
    let mut rows = stmt.query([record_id]).map_err(error)?;
    let mut history = Vec::new();
    while let Some(r) = rows.next().map_err(error)? {
        history.push(history_entry(r)?);
    }
    Ok(history)
}

pub(crate) fn search(
    conn: &Connection,
    id_number: &IdNumber,
    product: Option<&Product>,
) -> Result<SearchResult, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM records
             WHERE id_number = ?1 AND (?2 IS NULL OR product = ?2)
             ORDER BY seq DESC"
        ))
        .map_err(error)?;
    let mut rows = stmt.query(params![id_number.expose(), product.map(Product::as_str)]).map_err(error)?;
    let mut result = SearchResult::default();
    while let Some(r) = rows.next().map_err(error)? {
        let rec = record(r)?;
        match rec.record_type {
            RecordType::Lead => result.leads.push(rec),
            RecordType::Opportunity => result.opportunities.push(rec),
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Readers, MAX_READERS};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_beyond_the_limit_wait_for_a_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("readers.db");
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x)")
            .unwrap();
        let readers = Arc::new(Readers::new(path));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..4 * MAX_READERS)
            .map(|_| {
                let (readers, running, most) = (readers.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    readers
                        .run(move |conn| {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(20));
                            let rows: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
                            running.fetch_sub(1, Ordering::SeqCst);
                            Ok(rows)
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), 0);
        }
        let most = most.load(Ordering::SeqCst);
        assert!(most <= MAX_READERS, "{most} reads ran at once");
        assert!(most > 1, "the reads ran one at a time");
        assert!(readers.idle.lock().unwrap().len() <= MAX_READERS);
    }
}
