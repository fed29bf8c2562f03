//! The embedded SQLite adapter of the storage port, the default backend.
//!
//! Shape, and why:
//! - **One writer thread** owns the only write connection. Every write operation is a job sent to it; it
//!   runs the lifecycle rules inside the transaction, so all writes are serialized and the per-key
//!   atomicity of the port holds trivially (SQLite has a single writer anyway). `BEGIN IMMEDIATE` and a
//!   busy timeout keep that true even if a second process opens the same file.
//! - **Group commit.** The writer takes every job already queued (up to a bound) into one transaction and
//!   commits once: one fsync for the batch instead of one per request. A job that fails after writing is
//!   undone by running the batch again with a savepoint per job (the `writer` module). A job
//!   is answered only after the commit is durable (`synchronous=FULL`), and a failed commit fails every job
//!   in the batch, so nothing acknowledged is lost.
//! - **Readers** use their own connections (WAL lets them run beside the writer) on the blocking pool.
//! - **The database is the final guard**: a partial unique index refuses a second open record per key.
//! - **A CRM backend's sidecar.** The same file can hold what a CRM backend keeps beside the CRM (audit
//!   history, idempotency keys, per-key lease locks): see the `sidecar` module.
//! - **An operation keeps its own idempotent answer.** When the request holds an `Idempotency-Key`, the job
//!   that runs the operation also completes the key with the rendered response, in the same job, so a
//!   crash between the two cannot exist and a retry can never run the operation again.

mod idempotency;
mod ops;
mod outbox;
mod read;
mod reports;
mod schema;
mod sidecar;
mod vfs;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use lifecycle::{IdNumber, Matching, Product, RecordType};
use rusqlite::{Connection, OpenFlags};
use store::reports::{FunnelRow, GroupBy, HandoverRow, Period, RejectionRow, Rows, StalePage, StaleQuery};
use store::{
    Answer, Claim, CloseWonOutcome, CreateOutcome, CreateRequest, Idempotency, RecordRef, RecordWithHistory,
    RequestContext, SearchResult, Store, StoreError, StoredResponse,
};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

pub use reports::recount_from_history;
pub use schema::MIGRATIONS;

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    pub path: PathBuf,
    pub matching: Matching,
    /// Most jobs one transaction takes (group commit).
    pub max_batch: usize,
    /// Jobs waiting for the writer before callers wait for room (back-pressure).
    pub queue: usize,
    /// Whether every status change also writes its event to the outbox (events are configured).
    pub events: bool,
}

impl SqliteConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), matching: Matching::default(), max_batch: 256, queue: 4096, events: false }
    }
}

/// Why the store could not be opened. Each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create the folder {path}: {source}")]
    Folder { path: PathBuf, source: std::io::Error },
    #[error("cannot open the SQLite database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("cannot migrate the SQLite database {path}: {source}")]
    Migrate { path: PathBuf, source: rusqlite::Error },
    #[error(
        "the database {path} has schema version {found}, which this binary (schema version {known}) does not know"
    )]
    TooNew { path: PathBuf, found: i64, known: i64 },
    #[error("the database {path} uses matching {stored}, but the configuration asks for {configured}; matching cannot change on an existing store")]
    MatchingChanged { path: PathBuf, stored: String, configured: &'static str },
}

/// The embedded store. Cheap to share behind an `Arc`; [`SqliteStore::shutdown`] drains the writer.
pub struct SqliteStore {
    jobs: mpsc::Sender<writer::Job>,
    readers: Arc<read::Readers>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The in-process side of [`store::Sidecar::lock_key`].
    local_locks: sidecar::LocalLocks,
    reruns: Arc<AtomicU64>,
}

/// A connection that writes: the writer's, and the migrations'. It opens through [`vfs`], which joins the
/// WAL's writes and is sound only because every commit here is synced (`synchronous = FULL`, below).
fn connect(path: &Path) -> Result<Connection, OpenError> {
    let open_error = |source| OpenError::Open { path: path.to_owned(), source };
    let vfs = vfs::register().map_err(|rc| {
        open_error(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rc),
            Some("cannot register the WAL's VFS".into()),
        ))
    })?;
    let conn = Connection::open_with_flags_and_vfs(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        vfs,
    )
    .map_err(open_error)?;
    // WAL: readers never block the writer; FULL: a commit is on disk before it is acknowledged.
    // temp_store MEMORY: the statement and savepoint journals (which only undo a failed statement or job
    // inside its batch, and are never needed after a crash: the WAL makes commits durable) stay in memory;
    // in a file it was a write system call per changed page, a seventh of the writer thread's time.
    // wal_autocheckpoint 500: the writer's commit copies the WAL into the database file, and syncs it, once the
    // WAL holds 500 pages rather than SQLite's 1 000; the batches that wait for it wait half as long, and the
    // mix's p99 fell by a quarter for 2 % of its throughput (docs/performance.md, "SQLite's checkpoints").
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;
         PRAGMA temp_store = MEMORY;
         PRAGMA wal_autocheckpoint = 500;",
    )
    .map_err(open_error)?;
    Ok(conn)
}

fn ensure_folder(path: &Path) -> Result<(), OpenError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|source| OpenError::Folder { path: dir.to_owned(), source })
        }
        _ => Ok(()),
    }
}

/// Applies the embedded migrations that `path` lacks (creating the file if need be) and returns how many
/// were applied. `integration-service migrate` calls this; [`SqliteStore::open`] does too.
pub fn migrate(path: &Path) -> Result<usize, OpenError> {
    ensure_folder(path)?;
    let mut conn = connect(path)?;
    schema::migrate(&mut conn, path)
}

impl SqliteStore {
    /// Opens (creating if need be) and migrates the database, then starts the writer thread.
    pub fn open(config: SqliteConfig) -> Result<Self, OpenError> {
        ensure_folder(&config.path)?;
        let mut conn = connect(&config.path)?;
        if schema::migrate(&mut conn, &config.path)? > 0 {
            // A connection of its own for the writer, reading the schema as the migrations left it (see
            // `schema::MIGRATIONS`: one rewrites a table's rules in place, unseen by the connection that did).
            conn = connect(&config.path)?;
        }
        schema::check_matching(&conn, &config.path, config.matching)?;
        writer::size_cache(&conn).map_err(|source| OpenError::Open { path: config.path.clone(), source })?;
        // The writer runs more distinct statements (operations, outbox, idempotency keys, savepoints) than
        // rusqlite's default cache of 16 holds; past it they were parsed again and again.
        conn.set_prepared_statement_cache_capacity(64);
        let (jobs, queue) = mpsc::channel(config.queue.max(1));
        let reruns = Arc::new(AtomicU64::new(0));
        let settings = writer::Settings {
            matching: config.matching,
            max_batch: config.max_batch.max(1),
            events: config.events,
            reruns: reruns.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer::run(conn, queue, settings))
            .map_err(|source| OpenError::Folder { path: config.path.clone(), source })?;
        let readers = Arc::new(read::Readers::new(config.path.clone()));
        Ok(Self { jobs, readers, writer: Mutex::new(Some(writer)), local_locks: Default::default(), reruns })
    }

    /// How many batches ran again job by job because one of their jobs failed after writing (the writer's
    /// module doc). Also counted, for the whole process, as `crm_sqlite_batch_reruns_total`.
    pub fn batch_reruns(&self) -> u64 {
        self.reruns.load(Ordering::Relaxed)
    }

    /// Stops taking jobs, lets the writer finish (commit) what it holds, and waits for it.
    pub fn shutdown(self) {
        self.stop_writer();
    }

    /// Has the writer finish every write queued so far, commit it, and stop; waits for that. Later writes
    /// are refused as unavailable. Callable through a shared reference, so it works while other tasks
    /// still hold the store.
    pub fn stop_writer(&self) {
        let Some(handle) = self.writer.lock().ok().and_then(|mut w| w.take()) else {
            return; // already stopped
        };
        // Not `blocking_send`, which panics inside an async context: wait for room by hand.
        let mut stop = writer::Job::Stop;
        while let Err(mpsc::error::TrySendError::Full(back)) = self.jobs.try_send(stop) {
            stop = back;
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = handle.join();
    }

    /// Runs `work` in the writer's transaction and waits until it is durable.
    async fn submit<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&rusqlite::Transaction<'_>, &writer::Settings) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(writer::job(work, tx))
            .await
            .map_err(|_| StoreError::unavailable("the SQLite writer has stopped"))?;
        rx.await.map_err(|_| StoreError::unavailable("the SQLite writer has stopped"))?
    }
}

impl SqliteStore {
    fn reporter(&self) -> reports::Reporter {
        reports::Reporter { readers: self.readers.clone(), source: store::reports::Source::RECORDS }
    }
}

/// The reports from this store's own records and history.
#[async_trait]
impl store::Reports for SqliteStore {
    async fn funnel(&self, period: &Period, group_by: GroupBy) -> Result<Rows<FunnelRow>, StoreError> {
        self.reporter().funnel(period, group_by).await
    }
    async fn rejections(&self, period: &Period) -> Result<Rows<RejectionRow>, StoreError> {
        self.reporter().rejections(period).await
    }
    async fn handovers(&self, period: &Period) -> Result<Rows<HandoverRow>, StoreError> {
        self.reporter().handovers(period).await
    }
    async fn stale(&self, query: &StaleQuery) -> Result<StalePage, StoreError> {
        self.reporter().stale(query).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create(&self, request: &CreateRequest, ctx: &RequestContext) -> Result<CreateOutcome, StoreError> {
        let (request, ctx) = (request.clone(), ctx.clone());
        self.submit(move |tx, s| {
            let outcome = ops::create(tx, &request, &ctx, s, OffsetDateTime::now_utc())?;
            idempotency::answer(tx, &ctx, Answer::Create(&outcome))?;
            Ok(outcome)
        })
        .await
    }

    async fn close_won(
        &self,
        record_type: RecordType,
        id: &str,
        convert: bool,
        ctx: &RequestContext,
    ) -> Result<CloseWonOutcome, StoreError> {
        let (id, ctx) = (id.to_owned(), ctx.clone());
        self.submit(move |tx, s| {
            let outcome = ops::close_won(tx, record_type, &id, convert, &ctx, s, OffsetDateTime::now_utc())?;
            idempotency::answer(tx, &ctx, Answer::CloseWon(&outcome))?;
            Ok(outcome)
        })
        .await
    }

    async fn close_lost(
        &self,
        record_type: RecordType,
        id: &str,
        ctx: &RequestContext,
    ) -> Result<RecordRef, StoreError> {
        let (id, ctx) = (id.to_owned(), ctx.clone());
        self.submit(move |tx, s| {
            let outcome = ops::close_lost(tx, record_type, &id, &ctx, s, OffsetDateTime::now_utc())?;
            idempotency::answer(tx, &ctx, Answer::CloseLost(&outcome))?;
            Ok(outcome)
        })
        .await
    }

    async fn get(&self, record_type: RecordType, id: &str) -> Result<Option<RecordWithHistory>, StoreError> {
        let id = id.to_owned();
        self.readers.run(move |conn| read::get(conn, record_type, &id)).await
    }

    async fn search(&self, id_number: &IdNumber, product: Option<&Product>) -> Result<SearchResult, StoreError> {
        let (id_number, product) = (id_number.clone(), product.cloned());
        self.readers.run(move |conn| read::search(conn, &id_number, product.as_ref())).await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        if self.jobs.is_closed() {
            return Err(StoreError::unavailable("the SQLite writer has stopped"));
        }
        self.readers.run(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(read::error)).await
    }
}

#[async_trait]
impl Idempotency for SqliteStore {
    async fn claim(
        &self,
        key: &str,
        fingerprint: &str,
        holder: &str,
        lease: Duration,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let (key, fingerprint, holder) = (key.to_owned(), fingerprint.to_owned(), holder.to_owned());
        self.submit(move |tx, _| {
            idempotency::claim(tx, &key, &fingerprint, &holder, lease, ttl, OffsetDateTime::now_utc())
        })
        .await
    }

    async fn renew(&self, key: &str, holder: &str, lease: Duration) -> Result<bool, StoreError> {
        let (key, holder) = (key.to_owned(), holder.to_owned());
        self.submit(move |tx, _| idempotency::renew(tx, &key, &holder, lease, OffsetDateTime::now_utc())).await
    }

    async fn complete(&self, key: &str, holder: &str, response: &StoredResponse) -> Result<(), StoreError> {
        let (key, holder, response) = (key.to_owned(), holder.to_owned(), response.clone());
        self.submit(move |tx, _| idempotency::complete(tx, &key, &holder, &response)).await
    }

    async fn release(&self, key: &str, holder: &str) -> Result<(), StoreError> {
        let (key, holder) = (key.to_owned(), holder.to_owned());
        self.submit(move |tx, _| idempotency::release(tx, &key, &holder)).await
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.submit(|tx, _| idempotency::purge(tx, OffsetDateTime::now_utc())).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_writer_connection_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::connect(&dir.path().join("crm.db")).unwrap();
        let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, 2, "synchronous = FULL");
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0)).unwrap();
        assert_eq!(fk, 1);
        let temp: i64 = conn.query_row("PRAGMA temp_store", [], |r| r.get(0)).unwrap();
        assert_eq!(temp, 2, "temp_store = MEMORY");
        let checkpoint: i64 = conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
        assert_eq!(checkpoint, 500);
    }

    #[test]
    fn sqlite_is_built_with_the_options_of_cargo_config() {
        // `.cargo/config.toml` hands these to libsqlite3-sys; a build that missed them (run from outside the
        // workspace, say) would be slower, not wrong, so only this test would notice.
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"), "{options:?}");
        assert!(!options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"), "{options:?}");
        assert!(options.iter().any(|o| o == "THREADSAFE=1"), "{options:?}");
    }
}
