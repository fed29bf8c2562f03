//! The PostgreSQL adapter of the storage port: several replicas of the service behind a load balancer,
//! sharing one database.
//!
//! **Per-key atomicity between processes.** Every write runs in one transaction that first takes
//! `pg_advisory_xact_lock` on a 64-bit hash of the matching key. Why an advisory lock rather than row locks
//! alone: the create rules must also see the *absence* of records (rows `FOR UPDATE` cannot lock a row that
//! does not exist yet), and serializable isolation would turn every contended key into retries. The lock
//! is held until commit or rollback, so it can never leak, and it is per key, so different customers
//! proceed in parallel. Close operations take the same lock (through the record's stored key), so a close
//! and a create of one customer never interleave. Behind the lock the partial unique index is the final
//! guard; a violation (possible only with writers outside the service, or two keys sharing a hash
//! bucket — which merely serializes them) rolls back and the whole step is retried.
//!
//! **Concurrent writes share transactions** (see `batch`): the writes waiting in a replica are taken together
//! and run as one transaction of a few set-based statements, planned request by request by the lifecycle
//! core; a request whose key is busy, and every request when `postgres_max_batch` is 1, runs alone as
//! described above.
//!
//! **An operation keeps its own idempotent answer**: when the request holds an `Idempotency-Key`, the write's
//! transaction also completes it (see `write`). The same database can hold what a CRM backend keeps beside
//! the CRM (see `sidecar`).

mod batch;
pub mod check;
mod idempotency;
mod outbox;
mod read;
mod reports;
pub mod scratch;
mod sidecar;
mod write;

pub use batch::Batching;
pub use write::key_lock_id;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lifecycle::{IdNumber, Matching, Product, RecordType};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use store::reports::{FunnelRow, GroupBy, HandoverRow, Period, RejectionRow, Rows, StalePage, StaleQuery};
use store::{
    CloseWonOutcome, CreateOutcome, CreateRequest, RecordRef, RecordWithHistory, RequestContext, SearchResult, Store,
    StoreError,
};

/// Settings of the PostgreSQL store.
#[derive(Clone)]
pub struct PgConfig {
    pub url: String,
    pub matching: Matching,
    /// Connections per replica. Each write holds one for its transaction.
    pub max_connections: u32,
    /// How long a request waits for a connection before answering 503.
    pub acquire_timeout: Duration,
    /// Server-side bound on any one statement (lock waits included).
    pub statement_timeout: Duration,
    /// Whether every status change also writes its event to the outbox (events are configured).
    pub events: bool,
    /// How concurrent writes share transactions (see `batch`).
    pub batching: Batching,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("PgConfig")
            .field("url", &redact(&self.url))
            .field("matching", &self.matching)
            .field("max_connections", &self.max_connections)
            .field("batching", &self.batching)
            .finish_non_exhaustive()
    }
}

/// The URL with any password (in the user part or as a `password=` parameter) replaced by `***`.
pub fn redact(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((base, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_owned(),
                })
                .collect();
            (base, Some(params.join("&")))
        }
        None => (url, None),
    };
    let base = redact_userinfo(url);
    match query {
        Some(q) => format!("{base}?{q}"),
        None => base,
    }
}

fn redact_userinfo(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl PgConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            matching: Matching::default(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(10),
            events: false,
            batching: Batching::default(),
        }
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("invalid PostgreSQL URL: {0}")]
    Url(String),
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("cannot migrate the PostgreSQL database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot read the store's settings: {0}")]
    Meta(sqlx::Error),
    #[error("the database uses matching {stored}, but the configuration asks for {configured}; matching cannot change on an existing store")]
    MatchingChanged { stored: String, configured: &'static str },
}

/// The migrations of this adapter, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The PostgreSQL store.
pub struct PgStore {
    pool: PgPool,
    /// What the writes share, and the stripes (see `batch::Stripes`).
    writer: Arc<batch::Writer>,
    /// The queue that batches writes; `None` when each runs in its own transaction.
    batcher: Option<batch::Batcher>,
    /// The queue that batches the claims of fresh idempotency keys, likewise.
    claims: Option<batch::Queue<idempotency::FreshClaim>>,
}

const STRIPES: usize = 1024;

fn options(config: &PgConfig) -> Result<PgConnectOptions, OpenError> {
    let timeout = config.statement_timeout.as_millis().to_string();
    Ok(PgConnectOptions::from_str(&config.url)
        .map_err(|e| OpenError::Url(redact(&e.to_string())))?
        .application_name("integration-service")
        // READ COMMITTED, whatever the database's default: after waiting for a key's lock, each statement
        // must see what the previous holder committed (a snapshot taken before the wait would not).
        // `crm.counts_by_writer`: this release's write statements add the reports' daily counts themselves,
        // so the history's trigger leaves this session's rows to them (migration 0012).
        .options([
            ("statement_timeout", timeout.as_str()),
            ("default_transaction_isolation", "read\\ committed"),
            ("crm.counts_by_writer", "on"),
        ]))
}

/// Applies pending migrations and returns how many were applied.
pub async fn migrate(config: &PgConfig) -> Result<usize, OpenError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(options(config)?)
        .await
        .map_err(|source| OpenError::Connect { url: redact(&config.url), source })?;
    let before: i64 = applied(&pool).await;
    MIGRATOR.run(&pool).await?;
    let after: i64 = applied(&pool).await;
    pool.close().await;
    Ok((after - before).max(0) as usize)
}

async fn applied(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success").fetch_one(pool).await.unwrap_or(0)
}

/// How long a connection may sit in the pool before it is pinged on its way out (see [`pool_options`]).
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// A pool of at most `max` connections, pinged before use only after sitting idle.
fn pool_options(config: &PgConfig, max: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .acquire_timeout(config.acquire_timeout)
        .idle_timeout(Duration::from_secs(300))
        // sqlx pings every connection as it goes back to the pool, and by default again as it comes
        // out: a round trip before every statement or transaction, which under load waits its turn
        // like any other (about 250 µs of a batch's 3.3 ms went to the two a batch took). Only a
        // connection that has sat idle for a while, which the server or the network may have dropped
        // meanwhile, is pinged before use; one whose ping fails is closed and a new one opened.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IDLE_AFTER {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

impl PgStore {
    /// Connects, migrates (concurrent replicas are safe: sqlx takes an advisory lock while migrating) and
    /// checks the matching mode.
    pub async fn open(config: PgConfig) -> Result<Self, OpenError> {
        // Each batch holds a connection while it runs: at most half the connections, so that lone writes,
        // reads, idempotency claims and readiness always find one. The batches' connections are a pool of
        // their own, with generic plans for the whole session (see `batch`); the rest keep the default.
        let batching = Batching {
            concurrent: config.batching.concurrent.clamp(1, (config.max_connections as usize / 2).max(1)),
            ..config.batching
        };
        let batches = batching.max_batch > 1;
        let shared = if batches {
            config.max_connections.saturating_sub(batching.concurrent as u32).max(1)
        } else {
            config.max_connections
        };
        let pool = pool_options(&config, shared)
            .connect_with(options(&config)?)
            .await
            .map_err(|source| OpenError::Connect { url: redact(&config.url), source })?;
        MIGRATOR.run(&pool).await?;
        sqlx::query("INSERT INTO meta (name, value) VALUES ('matching', $1) ON CONFLICT (name) DO NOTHING")
            .bind(config.matching.as_str())
            .execute(&pool)
            .await
            .map_err(OpenError::Meta)?;
        let stored: String = sqlx::query_scalar("SELECT value FROM meta WHERE name = 'matching'")
            .fetch_one(&pool)
            .await
            .map_err(OpenError::Meta)?;
        if stored != config.matching.as_str() {
            return Err(OpenError::MatchingChanged { stored, configured: config.matching.as_str() });
        }
        let batch_pool = pool_options(&config, batching.concurrent as u32)
            .connect_lazy_with(options(&config)?.options([("plan_cache_mode", "force_generic_plan")]));
        let writer = Arc::new(batch::Writer {
            pool: pool.clone(),
            batch_pool,
            stripes: Arc::new(batch::Stripes::new(STRIPES)),
            matching: config.matching,
            events: config.events,
            batching,
            fallbacks: Default::default(),
            conflicts: Default::default(),
        });
        let batcher = batches.then(|| batch::Batcher::start(writer.clone()));
        let claims = batches.then(|| {
            let pool = pool.clone();
            batch::Queue::start(batching, move |claims, starting| {
                // A claim is one statement: the next batch of claims need not wait for it to start.
                drop(starting);
                let pool = pool.clone();
                async move { idempotency::claim_fresh_together(&pool, claims).await }
            })
        });
        Ok(Self { pool, writer, batcher, claims })
    }

    fn stripe(&self, key: &str) -> &Arc<tokio::sync::Mutex<()>> {
        self.writer.stripes.of(key)
    }

    /// How many batches of writes failed before their commit, so that their requests ran again alone.
    /// Their answers are right either way; a count that grows means requests the database refuses, writers
    /// outside the service, or a fault in the batch's planning (the tests hold it at zero).
    pub fn batch_fallbacks(&self) -> u64 {
        self.writer.fallbacks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many times a batch's write found that another writer (another batch, a lone write, another
    /// replica) had changed what the batch read since, so that it wrote nothing and read again. Expected
    /// when writers compete for the same customers.
    pub fn batch_conflicts(&self) -> u64 {
        self.writer.conflicts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `op`: queued for a batch, or alone.
    async fn write(&self, op: batch::Op, ctx: &RequestContext) -> Result<batch::Done, StoreError> {
        match &self.batcher {
            Some(batcher) => batcher.submit(op, ctx.clone()).await,
            None => batch::alone(&self.writer, &op, ctx).await,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the pools, waiting for connections in use to be returned.
    pub async fn shutdown(&self) {
        self.writer.batch_pool.close().await;
        self.pool.close().await;
    }
}

/// PostgreSQL's failures in the port's terms. Connection loss, shutdown, overload and pool exhaustion are
/// the backend being unavailable (503, nothing was committed); anything else is a bug (500).
pub(crate) fn error(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => StoreError::unavailable(e),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some(code) if code.starts_with("08") || code.starts_with("53") || code.starts_with("57") => {
                StoreError::unavailable(e)
            }
            Some("40001" | "40P01" | "55P03") => StoreError::unavailable(e),
            _ => StoreError::internal(e),
        },
        _ => StoreError::internal(e),
    }
}

/// Whether a failed step may simply be run again: a conflict another transaction caused.
pub(crate) fn retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("23505" | "40001" | "40P01")))
}

impl PgStore {
    fn reporter(&self) -> reports::Reporter {
        reports::Reporter { pool: self.pool.clone(), source: store::reports::Source::RECORDS }
    }
}

/// The reports from this store's own records and history.
#[async_trait]
impl store::Reports for PgStore {
    async fn funnel(&self, period: &Period, group_by: GroupBy) -> Result<Rows<FunnelRow>, StoreError> {
        self.reporter().funnel(period, group_by).await
    }
    async fn rejections(&self, period: &Period) -> Result<Rows<RejectionRow>, StoreError> {
        self.reporter().rejections(period).await
    }
    async fn fold(&self) -> Result<u64, StoreError> {
        self.reporter().fold().await
    }
    async fn handovers(&self, period: &Period) -> Result<Rows<HandoverRow>, StoreError> {
        self.reporter().handovers(period).await
    }
    async fn stale(&self, query: &StaleQuery) -> Result<StalePage, StoreError> {
        self.reporter().stale(query).await
    }
}

#[async_trait]
impl Store for PgStore {
    async fn create(&self, request: &CreateRequest, ctx: &RequestContext) -> Result<CreateOutcome, StoreError> {
        match self.write(batch::Op::Create(Box::new(request.clone())), ctx).await? {
            batch::Done::Create(outcome) => Ok(outcome),
            _ => Err(StoreError::internal("a create answered as another operation")),
        }
    }

    async fn close_won(
        &self,
        record_type: RecordType,
        id: &str,
        convert: bool,
        ctx: &RequestContext,
    ) -> Result<CloseWonOutcome, StoreError> {
        match self.write(batch::Op::CloseWon { record_type, id: id.to_owned(), convert }, ctx).await? {
            batch::Done::CloseWon(outcome) => Ok(outcome),
            _ => Err(StoreError::internal("a close-won answered as another operation")),
        }
    }

    async fn close_lost(
        &self,
        record_type: RecordType,
        id: &str,
        ctx: &RequestContext,
    ) -> Result<RecordRef, StoreError> {
        match self.write(batch::Op::CloseLost { record_type, id: id.to_owned() }, ctx).await? {
            batch::Done::CloseLost(outcome) => Ok(outcome),
            _ => Err(StoreError::internal("a close-lost answered as another operation")),
        }
    }

    async fn get(&self, record_type: RecordType, id: &str) -> Result<Option<RecordWithHistory>, StoreError> {
        read::get(&self.pool, record_type, id).await
    }

    async fn search(&self, id_number: &IdNumber, product: Option<&Product>) -> Result<SearchResult, StoreError> {
        read::search(&self.pool, id_number, product).await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ()).map_err(error)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(super::redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            super::redact("postgres://u@h/db?password=TopSecret1&sslmode=require"),
            "postgres://u@h/db?password=***&sslmode=require"
        );
    }

    #[test]
    fn redaction_takes_any_text_and_hides_the_whole_password() {
        // A password holding `@` or `:`: everything up to the last `@` after the scheme is hidden.
        assert_eq!(super::redact("postgres://u:p@ss:w@h/db"), "postgres://u:***@h/db");
        assert_eq!(super::redact("postgres://u:s@h/db?PassWord=x"), "postgres://u:***@h/db?PassWord=***");
        // Error messages pass through it too: an `@` before any `://` is left alone, and nothing panics.
        assert_eq!(
            super::redact("mail admin@example.com about postgres://h/db"),
            "mail admin@example.com about postgres://h/db"
        );
        assert_eq!(super::redact("a@b://c"), "a@b://c");
        assert_eq!(super::redact(""), "");
        assert_eq!(super::redact("?"), "?");
    }
}
