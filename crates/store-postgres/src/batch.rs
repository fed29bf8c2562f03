//! Concurrent writes go together.
//!
//! One transaction per request costs a request about five round trips and a commit; on a busy database the
//! round trips, not the work, are what runs out. So the writes of a replica go through a queue: whenever a
//! slot is free, the writes that wait are taken together (up to `max_batch`) and cost two round trips,
//! whatever their number, on a connection of the batches' own pool (whose sessions use generic plans: the
//! planning of custom ones was a fifth of the database's CPU).
//!
//! The first statement reads what the rules need, without a lock: the open records of the creates' keys and
//! the records the closes name. The lifecycle core plans each request **in turn** against an in-memory
//! model of those records, which each plan updates, so the batch ends exactly as if its requests had run
//! one after the other in the order they were taken. Each request gets its own instant, a microsecond
//! after the previous one and after anything the batch read was changed, so the history of a key keeps the
//! order its steps ran.
//!
//! The second statement writes every row (records, history, the answers kept for idempotency keys) and,
//! being a transaction of its own, commits before it answers; every answer is sent only then. It first
//! tries the advisory lock of every key whose records it changes, without waiting, and holds them to its
//! commit, so a lone write (which holds its key's lock from its read to its commit) never sees a batch
//! change its key. If a lock is busy, the statement writes nothing, and the batch writes again without the
//! requests on that key, which wait for it alone. Then it changes each record only from the status the
//! batch read, and inserts a key's open record only where the partial unique index allows it: if another
//! writer got there first, the statement raises an error from inside (`crm_batch_conflict`), nothing of it
//! stays, and the batch reads and plans again. After [`ROUNDS`] such rounds, its requests run alone. With
//! events on, the events' rows need a second statement, and the two share an explicit transaction.
//!
//! If anything else fails before the commit, nothing was written, and each request runs again alone on the
//! one-transaction-per-request path (see `write`), so one bad request answers for itself and the rest are
//! unaffected; only when the database is unreachable or overloaded does every request answer so at once.
//! If the connection is lost during the write, or the commit itself fails, its outcome is unknown, and every
//! request of the batch answers that the backend is unavailable, exactly as a lone request would.
//!
//! The same [`Queue`] batches the claims of fresh idempotency keys (see `idempotency`).

use std::collections::HashMap;
use std::sync::Arc;

use lifecycle::{
    plan_close_lost, plan_close_won, plan_create, CloseLostPlan, CloseWonPlan, CreatePlan, CustomerType, Matching,
    OpenRecord, OwnerId, Product, Reason, RecordType, Snapshot, Status, Target,
};
use sqlx::PgPool;
use store::{events, Answer, CloseWonOutcome, CreateOutcome, CreateRequest, RecordRef, RequestContext, StoreError};
use time::{Duration, OffsetDateTime};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error;
use crate::write::{self, key_lock_id};

/// A write, as the port asks for it.
pub(crate) enum Op {
    Create(Box<CreateRequest>),
    CloseWon { record_type: RecordType, id: String, convert: bool },
    CloseLost { record_type: RecordType, id: String },
}

/// A write's answer.
pub(crate) enum Done {
    Create(CreateOutcome),
    CloseWon(CloseWonOutcome),
    CloseLost(RecordRef),
}

impl Done {
    fn answer(&self) -> Answer<'_> {
        match self {
            Done::Create(o) => Answer::Create(o),
            Done::CloseWon(o) => Answer::CloseWon(o),
            Done::CloseLost(o) => Answer::CloseLost(o),
        }
    }
}

struct Job {
    op: Op,
    ctx: RequestContext,
    reply: oneshot::Sender<Result<Done, StoreError>>,
}

/// How the writes of a replica are batched.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most requests in one transaction; 1 runs each request in its own.
    pub max_batch: usize,
    /// Most batch transactions running at once (at most half the pool's connections).
    pub concurrent: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Self { max_batch: 64, concurrent: 2 }
    }
}

/// What every write of a replica shares: the pool, the in-process stripes a lone write queues on, and the
/// settings.
pub(crate) struct Writer {
    pub(crate) pool: PgPool,
    /// The batches' own connections, planned generically (see `together`).
    pub(crate) batch_pool: PgPool,
    pub(crate) stripes: Arc<Stripes>,
    pub(crate) matching: Matching,
    pub(crate) events: bool,
    pub(crate) batching: Batching,
    /// How many batches failed before their commit and ran their requests alone.
    pub(crate) fallbacks: std::sync::atomic::AtomicU64,
    /// How many times a batch's write found that another writer had changed what it read.
    pub(crate) conflicts: std::sync::atomic::AtomicU64,
}

/// In-process locks, a stripe per hash of the matching key, taken before a lone write takes a connection:
/// requests for one busy customer queue here instead of each holding a pooled connection while they wait
/// for the database lock, so they cannot starve other customers (or readiness) of connections. Each in an
/// `Arc`, so a [`store::KeyLock`] can own its stripe's guard.
pub(crate) struct Stripes(Box<[Arc<tokio::sync::Mutex<()>>]>);

impl Stripes {
    pub(crate) fn new(n: usize) -> Self {
        Self((0..n).map(|_| Arc::new(tokio::sync::Mutex::new(()))).collect())
    }

    pub(crate) fn of(&self, key: &str) -> &Arc<tokio::sync::Mutex<()>> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.0[(h.finish() as usize) % self.0.len()]
    }
}

/// A queue whose jobs are taken in batches: whenever one of `concurrent` slots is free and no batch is still
/// starting, every job waiting (up to `max_batch`) goes to `run` together. The task that takes them ends when
/// the queue is dropped.
///
/// A batch is *starting* until it drops the [`Starting`] it is given; the write batches hold it until they
/// have read what they need, the claims not at all. Without that, a batch that had just taken the whole
/// queue left the other slot free, and the next batch started with the first job that arrived: batches of a
/// few requests, each paying a batch's fixed cost. Held, the next batch takes what arrived while this one
/// read, and runs its read while this one plans and writes.
pub(crate) struct Queue<J> {
    queue: mpsc::Sender<J>,
}

/// Held by a batch while it starts (see [`Queue`]); the next batch is taken once it is dropped.
pub(crate) struct Starting {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<J: Send + 'static> Queue<J> {
    pub(crate) fn start<F, Fut>(batching: Batching, run: F) -> Self
    where
        F: Fn(Vec<J>, Starting) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (queue, mut jobs) = mpsc::channel::<J>(4096);
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(batching.concurrent.max(1)));
            let starting = Arc::new(Semaphore::new(1));
            while let Some(first) = jobs.recv().await {
                // While every slot is busy, or a batch is still starting, the jobs that arrive wait in the
                // queue and join the next batch.
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let Ok(start) = starting.clone().acquire_owned().await else { return };
                let mut batch = vec![first];
                while batch.len() < batching.max_batch.max(1) {
                    match jobs.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let done = run(batch, Starting { _permit: start });
                tokio::spawn(async move {
                    done.await;
                    drop(slot);
                });
            }
        });
        Self { queue }
    }

    /// Queues `job`; its answer comes through whatever channel it carries.
    pub(crate) async fn push(&self, job: J) -> Result<(), StoreError> {
        self.queue.send(job).await.map_err(|_| StoreError::unavailable("the PostgreSQL writer has stopped"))
    }
}

/// The queue of a replica's writes.
pub(crate) struct Batcher {
    queue: Queue<Job>,
}

impl Batcher {
    pub(crate) fn start(writer: Arc<Writer>) -> Self {
        let batching = writer.batching;
        let queue = Queue::start(batching, move |jobs, starting| {
            let writer = writer.clone();
            async move { run(&writer, jobs, starting).await }
        });
        Self { queue }
    }

    /// Queues `op` and waits for its answer.
    pub(crate) async fn submit(&self, op: Op, ctx: RequestContext) -> Result<Done, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue.push(Job { op, ctx, reply }).await?;
        answer.await.map_err(|_| StoreError::internal("a PostgreSQL batch ended without answering"))?
    }
}

/// How a batch failed.
enum Stop {
    /// Before the commit: nothing was written.
    Before(StoreError),
    /// Before the commit, because the database is unreachable or overloaded: nothing was written, and
    /// running each request again would only wait as long again for the same answer.
    Down { retry_after: std::time::Duration, source: Box<dyn std::error::Error + Send + Sync> },
    /// At the commit, or with the connection lost during a write that commits itself: it may or may not
    /// have been written.
    Commit(sqlx::Error),
}

impl From<sqlx::Error> for Stop {
    fn from(e: sqlx::Error) -> Self {
        let retry = crate::retryable(&e);
        match error(e) {
            StoreError::Unavailable { retry_after, source } if !retry => Stop::Down { retry_after, source },
            e => Stop::Before(e),
        }
    }
}

async fn run(writer: &Arc<Writer>, jobs: Vec<Job>, starting: Starting) {
    match together(writer, &jobs, starting).await {
        Ok(answers) => {
            for (job, done) in jobs.into_iter().zip(answers) {
                match done {
                    Some(done) => {
                        let _ = job.reply.send(done);
                    }
                    // Its key was busy: it waits for it alone.
                    None => lone(writer, job),
                }
            }
        }
        Err(Stop::Commit(e)) => {
            tracing::warn!(error = %e, requests = jobs.len(), "postgres: a batch's commit failed");
            let message = e.to_string();
            for job in jobs {
                let _ = job.reply.send(Err(StoreError::unavailable(message.clone())));
            }
        }
        Err(Stop::Down { retry_after, source }) => {
            let message = source.to_string();
            for job in jobs {
                let e = StoreError::Unavailable { retry_after, source: message.clone().into() };
                let _ = job.reply.send(Err(e));
            }
        }
        Err(Stop::Before(e)) => {
            writer.fallbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("crm_postgres_batch_fallbacks_total").increment(1);
            tracing::debug!(error = %e, requests = jobs.len(), "postgres: a batch failed, running its requests alone");
            for job in jobs {
                lone(writer, job);
            }
        }
    }
}

/// Runs `job` alone, in a task of its own, and answers it.
fn lone(writer: &Arc<Writer>, job: Job) {
    let writer = writer.clone();
    tokio::spawn(async move {
        let done = alone(&writer, &job.op, &job.ctx).await;
        let _ = job.reply.send(done);
    });
}

/// Runs one write in its own transaction (see `write`), queued on its key's stripe.
pub(crate) async fn alone(w: &Writer, op: &Op, ctx: &RequestContext) -> Result<Done, StoreError> {
    let pool = &w.pool;
    match op {
        Op::Create(request) => {
            let _queued = w.stripes.of(request.match_key(w.matching).expose()).lock().await;
            write::retrying(|| write::create(pool, request, ctx, w.matching, w.events)).await.map(Done::Create)
        }
        Op::CloseWon { record_type, id, convert } => {
            let key = write::retrying(|| write::key_of(pool, *record_type, id)).await?;
            let _queued = w.stripes.of(&key).lock().await;
            write::retrying(|| write::close_won(pool, &key, *record_type, id, *convert, ctx, w.events))
                .await
                .map(Done::CloseWon)
        }
        Op::CloseLost { record_type, id } => {
            let key = write::retrying(|| write::key_of(pool, *record_type, id)).await?;
            let _queued = w.stripes.of(&key).lock().await;
            write::retrying(|| write::close_lost(pool, &key, *record_type, id, ctx, w.events))
                .await
                .map(Done::CloseLost)
        }
    }
}

/// A record the batch read or made, as the plans see it.
struct Rec {
    key: String,
    record_type: RecordType,
    status: Status,
    owner: OwnerId,
    product: Product,
    channel: String,
    converted: Option<String>,
}

/// What the batch knows of its keys: every record it read or made, and each key's open ones, newest first.
#[derive(Default)]
struct Model {
    records: HashMap<String, Rec>,
    open: HashMap<String, Vec<String>>,
}

impl Model {
    fn snapshot(&self, key: &str, customer_type: CustomerType) -> Snapshot {
        let ids = self.open.get(key).map(Vec::as_slice).unwrap_or_default();
        let open = ids
            .iter()
            .filter_map(|id| self.records.get(id).map(|r| (id, r)))
            // ETB never reads or changes leads (SPEC §2.1).
            .filter(|(_, r)| customer_type == CustomerType::Ntb || r.record_type == RecordType::Opportunity)
            .map(|(id, r)| OpenRecord { id: id.clone(), record_type: r.record_type, owner_id: r.owner.clone() })
            .collect();
        Snapshot { open }
    }

    fn target(&self, id: &str) -> Option<(Target, &Rec)> {
        self.records.get(id).map(|r| {
            let target = Target {
                id: id.to_owned(),
                record_type: r.record_type,
                status: r.status,
                converted_opportunity_id: r.converted.clone(),
            };
            (target, r)
        })
    }

    /// Sets `id` final: it leaves its key's open records.
    fn close(&mut self, id: &str, status: Status, converted: Option<&str>) {
        if let Some(r) = self.records.get_mut(id) {
            r.status = status;
            if let Some(c) = converted {
                r.converted = Some(c.to_owned());
            }
            if let Some(open) = self.open.get_mut(&r.key) {
                open.retain(|o| o != id);
            }
        }
    }
}

/// The rows the batch writes, a column per vector, in the order the requests ran.
#[derive(Default)]
struct Rows<'a> {
    // Status changes of existing records.
    changed_id: Vec<String>,
    changed_from: Vec<&'static str>,
    changed_to: Vec<&'static str>,
    changed_at: Vec<OffsetDateTime>,
    changed_converted: Vec<Option<String>>,
    // New records: `made_lead` is the lead a converted opportunity copies; the other columns are then unused.
    made_id: Vec<String>,
    made_lead: Vec<Option<String>>,
    made_type: Vec<&'static str>,
    made_status: Vec<&'static str>,
    made_key: Vec<Option<String>>,
    made_owner: Vec<Option<&'a str>>,
    made_customer_type: Vec<Option<&'static str>>,
    made_id_number: Vec<Option<&'a str>>,
    made_cif: Vec<Option<&'a str>>,
    made_name: Vec<Option<&'a str>>,
    made_phone: Vec<Option<&'a str>>,
    made_email: Vec<Option<&'a str>>,
    made_product: Vec<Option<&'a str>>,
    made_channel: Vec<Option<&'a str>>,
    made_journey: Vec<Option<&'a str>>,
    made_at: Vec<OffsetDateTime>,
    // A record made in this batch and closed later in it (a create replaced by the next one) is inserted
    // in its final state: its status, time of change and conversion are kept here, by its index.
    made_updated_at: Vec<OffsetDateTime>,
    made_converted: Vec<Option<String>>,
    made_index: HashMap<String, usize>,
    // History.
    history_record: Vec<String>,
    history_from: Vec<Option<&'static str>>,
    history_to: Vec<&'static str>,
    history_at: Vec<OffsetDateTime>,
    history_request: Vec<&'a str>,
    history_channel: Vec<&'a str>,
    history_reason: Vec<Option<&'a str>>,
    // The reports' daily counts (migration 0012): a close-lost change, from its record's channel and product,
    // and a hand-over, from the closed record's owner to the new record's.
    rejected_at: Vec<OffsetDateTime>,
    rejected_reason: Vec<&'a str>,
    rejected_channel: Vec<String>,
    rejected_product: Vec<String>,
    handed_at: Vec<OffsetDateTime>,
    handed_from: Vec<String>,
    handed_to: Vec<&'a str>,
    handed_channel: Vec<String>,
    handed_product: Vec<String>,
    // Answers kept for idempotency keys.
    answer_key: Vec<&'a str>,
    answer_holder: Vec<&'a str>,
    answer_status: Vec<i32>,
    answer_content_type: Vec<Option<String>>,
    answer_location: Vec<Option<String>>,
    answer_body: Vec<Vec<u8>>,
    // Events: the key, the changes, the request and its time.
    events: Vec<(String, Vec<events::Change>, &'a RequestContext, OffsetDateTime)>,
}

impl<'a> Rows<'a> {
    fn history(
        &mut self,
        record: &str,
        from: Option<Status>,
        to: Status,
        at: OffsetDateTime,
        ctx: &'a RequestContext,
        reason: Option<&'a Reason>,
    ) {
        self.history_record.push(record.to_owned());
        self.history_from.push(from.map(|s| s.as_str()));
        self.history_to.push(to.as_str());
        self.history_at.push(at);
        self.history_request.push(&ctx.request_id);
        self.history_channel.push(ctx.channel.as_str());
        self.history_reason.push(reason.map(Reason::as_str));
    }

    /// Counts a close-lost change of `rec` at `at` among the rejections.
    fn rejected(&mut self, rec: &Rec, at: OffsetDateTime, reason: Option<&'a Reason>) {
        self.rejected_at.push(at);
        self.rejected_reason.push(reason.map_or("", Reason::as_str));
        self.rejected_channel.push(rec.channel.clone());
        self.rejected_product.push(rec.product.as_str().to_owned());
    }

    /// Counts the hand-over of `rec`, closed at `at` for a record of `to`.
    fn handed(&mut self, rec: &Rec, to: &'a OwnerId, at: OffsetDateTime) {
        self.handed_at.push(at);
        self.handed_from.push(rec.owner.as_str().to_owned());
        self.handed_to.push(to.as_str());
        self.handed_channel.push(rec.channel.clone());
        self.handed_product.push(rec.product.as_str().to_owned());
    }

    /// Ends the row of the record just pushed onto the `made_` columns.
    fn made(&mut self, id: &str, at: OffsetDateTime) {
        self.made_at.push(at);
        self.made_updated_at.push(at);
        self.made_converted.push(None);
        self.made_index.insert(id.to_owned(), self.made_id.len() - 1);
    }

    fn change(&mut self, id: &str, from: Status, to: Status, at: OffsetDateTime, converted: Option<&str>) {
        if let Some(&i) = self.made_index.get(id) {
            // Not in the table yet: it goes in as it ends.
            self.made_status[i] = to.as_str();
            self.made_updated_at[i] = at;
            if let Some(c) = converted {
                self.made_converted[i] = Some(c.to_owned());
            }
            return;
        }
        self.changed_id.push(id.to_owned());
        self.changed_from.push(from.as_str());
        self.changed_to.push(to.as_str());
        self.changed_at.push(at);
        self.changed_converted.push(converted.map(str::to_owned));
    }

    fn is_empty(&self) -> bool {
        self.changed_id.is_empty() && self.made_id.is_empty() && self.answer_key.is_empty()
    }
}

/// The owner's-change reason, shared by every replaced record's history row.
static OWNER_CHANGED: std::sync::LazyLock<Reason> = std::sync::LazyLock::new(Reason::owner_changed);

/// What a batch reads: the time, then each record it needs (none if it needs none), newest first.
type Read = (
    OffsetDateTime,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<OffsetDateTime>,
    Option<String>,
);

/// Each request's answer, or `None` for one that runs again alone.
type Answers = Vec<Option<Result<Done, StoreError>>>;

/// How many times a batch reads and writes again, without the requests whose keys were busy or after
/// another writer overtook it, before its requests run alone.
const ROUNDS: usize = 3;

/// How a batch's write ended.
enum Wrote {
    /// Committed.
    Done,
    /// Nothing written: these keys' locks were busy.
    Busy(Vec<i64>),
    /// Nothing written: another writer changed what the batch read.
    Conflict,
}

/// Runs `jobs` together and answers each, or `None` for one whose key was busy.
async fn together(w: &Writer, jobs: &[Job], starting: Starting) -> Result<Answers, Stop> {
    let named: Vec<&str> = jobs
        .iter()
        .filter_map(|j| match &j.op {
            Op::CloseWon { id, .. } | Op::CloseLost { id, .. } => Some(id.as_str()),
            Op::Create(_) => None,
        })
        .collect();
    let mut create_keys: Vec<String> = jobs
        .iter()
        .filter_map(|j| match &j.op {
            Op::Create(request) => Some(request.match_key(w.matching).expose().to_owned()),
            _ => None,
        })
        .collect();
    create_keys.sort_unstable();
    create_keys.dedup();
    // The whole batch runs on one connection: taking one from the pool, and the ping sqlx sends as it goes
    // back, cost time even when one is free.
    let mut conn = w.batch_pool.acquire().await?;
    let mut starting = Some(starting);
    let mut busy: Vec<i64> = Vec::new();
    for _ in 0..ROUNDS {
        let rows = read(&mut conn, &create_keys, &named).await?;
        // The next batch may be taken now.
        drop(starting.take());
        let (answers, out, locks) = plan(w, jobs, &rows, &busy)?;
        if out.is_empty() {
            return Ok(answers);
        }
        match write(w, &mut conn, &out, &locks).await? {
            Wrote::Done => return Ok(answers),
            Wrote::Busy(found) => busy.extend(found),
            Wrote::Conflict => {
                w.conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                metrics::counter!("crm_postgres_batch_conflicts_total").increment(1);
            }
        }
    }
    // Overtaken again and again: each request waits for its key's lock alone.
    Ok(jobs.iter().map(|_| None).collect())
}

/// Reads what the plans need, with the time: the open records of the creates' keys and the records the
/// closes name. Without a lock: the write changes each record only from what this read, and fails whole
/// otherwise (see `write_rows`).
async fn read(conn: &mut sqlx::PgConnection, create_keys: &[String], named: &[&str]) -> Result<Vec<Read>, Stop> {
    let rows: Vec<Read> = sqlx::query_as(
        "SELECT c.at, r.id, r.match_key, r.record_type, r.status, r.owner_id, r.product,
             r.converted_opportunity_id, r.updated_at, r.channel
         FROM (SELECT clock_timestamp() AS at) AS c
         LEFT JOIN (
             SELECT seq, id, match_key, record_type, status, owner_id, product, converted_opportunity_id, updated_at,
                 channel
             FROM records WHERE match_key = ANY($1) AND status IN ('New Lead', 'New Opportunity')
             UNION
             SELECT seq, id, match_key, record_type, status, owner_id, product, converted_opportunity_id, updated_at,
                 channel
             FROM records WHERE id = ANY($2)
         ) AS r ON true
         ORDER BY r.seq DESC",
    )
    .bind(create_keys)
    .bind(named)
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Err(Stop::Before(StoreError::internal("no clock row")));
    }
    Ok(rows)
}

/// The batch's records, as the read found them.
fn model(rows: &[Read]) -> Result<Model, Stop> {
    let mut model = Model::default();
    for (_, id, key, record_type, status, owner, product, converted, _, channel) in rows {
        let (Some(id), Some(key), Some(record_type), Some(status), Some(owner), Some(product), Some(channel)) =
            (id, key, record_type, status, owner, product, channel)
        else {
            continue;
        };
        let status = Status::parse(status).map_err(|e| Stop::Before(StoreError::internal(e)))?;
        if status.is_open() {
            model.open.entry(key.clone()).or_default().push(id.clone());
        }
        let record_type = RecordType::parse(record_type).map_err(|e| Stop::Before(StoreError::internal(e)))?;
        let rec = Rec {
            key: key.clone(),
            record_type,
            status,
            owner: OwnerId::from_stored(owner.clone()),
            product: Product::from_stored(product.clone()),
            channel: channel.clone(),
            converted: converted.clone(),
        };
        model.records.insert(id.clone(), rec);
    }
    Ok(model)
}

/// Plans each request in turn, on the model as the ones before it left it, leaving out those whose key's
/// lock is in `busy`: their answers, the rows to write, and the locks of the keys whose records change.
fn plan<'a>(w: &Writer, jobs: &'a [Job], rows: &[Read], busy: &[i64]) -> Result<(Answers, Rows<'a>, Vec<i64>), Stop> {
    let mut model = model(rows)?;
    // Each request gets its own instant, a microsecond apart, after anything the batch read was changed.
    let now = rows.first().map_or(OffsetDateTime::UNIX_EPOCH, |r| r.0);
    let start = match rows.iter().filter_map(|r| r.8).max() {
        Some(latest) if latest >= now => latest + Duration::microseconds(1),
        _ => now,
    };
    let mut answers: Answers = jobs.iter().map(|_| None).collect();
    let mut out = Rows::default();
    let mut locks = Vec::new();
    for (n, (job, answer)) in jobs.iter().zip(answers.iter_mut()).enumerate() {
        let key = match &job.op {
            Op::Create(request) => request.match_key(w.matching).expose().to_owned(),
            Op::CloseWon { record_type, id, .. } | Op::CloseLost { record_type, id } => match model.records.get(id) {
                Some(r) if r.record_type == *record_type => r.key.clone(),
                _ => {
                    *answer = Some(Err(StoreError::NotFound));
                    continue;
                }
            },
        };
        let lock = key_lock_id(&key);
        if busy.contains(&lock) {
            continue;
        }
        let at = start + Duration::microseconds(n as i64);
        let rows_before = out.changed_id.len() + out.made_id.len();
        let done = match &job.op {
            Op::Create(request) => {
                plan_one_create(&mut model, &mut out, w.events, request, &job.ctx, &key, at).map(Done::Create)
            }
            Op::CloseWon { id, convert, .. } => {
                plan_one_close_won(&mut model, &mut out, w.events, id, *convert, &job.ctx, at).map(Done::CloseWon)
            }
            Op::CloseLost { id, .. } => {
                plan_one_close_lost(&mut model, &mut out, w.events, id, &job.ctx, at).map(Done::CloseLost)
            }
        };
        if out.changed_id.len() + out.made_id.len() > rows_before {
            locks.push(lock);
        }
        if let Ok(done) = &done {
            if let Some((key, holder, response)) = job.ctx.completion(done.answer()) {
                out.answer_key.push(key);
                out.answer_holder.push(holder);
                out.answer_status.push(i32::from(response.status));
                out.answer_content_type.push(response.content_type);
                out.answer_location.push(response.location);
                out.answer_body.push(response.body);
            }
        }
        *answer = Some(done);
    }
    locks.sort_unstable();
    locks.dedup();
    Ok((answers, out, locks))
}

/// Writes the batch's rows and commits, unless a key's lock was busy or another writer got there first.
///
/// Without events the write is one statement, which is its own transaction: PostgreSQL commits it before it
/// answers. Events need a second statement (their numbers come from the first), so the two then share a
/// transaction.
async fn write(w: &Writer, conn: &mut sqlx::PgConnection, out: &Rows<'_>, locks: &[i64]) -> Result<Wrote, Stop> {
    if !w.events || out.events.is_empty() {
        return match write_rows(conn, out, locks).await {
            Ok(busy) if busy.is_empty() => Ok(Wrote::Done),
            Ok(busy) => Ok(Wrote::Busy(busy)),
            Err(e) if refused(&e) && crate::retryable(&e) => Ok(Wrote::Conflict),
            Err(e) if refused(&e) => Err(Stop::from(e)),
            // The connection lost, the server stopping: it may or may not have committed.
            Err(e) => Err(Stop::Commit(e)),
        };
    }
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let written = match write_rows(&mut tx, out, locks).await {
        Ok(busy) if busy.is_empty() => crate::outbox::write_batch(&mut tx, &out.events).await,
        Ok(busy) => {
            tx.rollback().await?;
            return Ok(Wrote::Busy(busy));
        }
        Err(e) => Err(e),
    };
    match written {
        Ok(()) => {}
        Err(e) if crate::retryable(&e) => return Ok(Wrote::Conflict),
        Err(e) => return Err(Stop::from(e)),
    }
    tx.commit().await.map_err(Stop::Commit)?;
    Ok(Wrote::Done)
}

/// Whether PostgreSQL refused the statement (an error of severity `ERROR`), which then left nothing.
fn refused(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
        .is_some_and(|d| d.severity() == sqlx::postgres::PgSeverity::Error)
}

fn plan_one_create<'a>(
    model: &mut Model,
    out: &mut Rows<'a>,
    events: bool,
    request: &'a CreateRequest,
    ctx: &'a RequestContext,
    key: &str,
    at: OffsetDateTime,
) -> Result<CreateOutcome, StoreError> {
    let snapshot = model.snapshot(key, request.customer_type);
    let plan = plan_create(request.customer_type, &request.owner_id, &snapshot);
    let result = plan.result();
    let (record_type, close) = match plan {
        CreatePlan::Existing { record_type, id } => {
            return Ok(CreateOutcome {
                result,
                record_type,
                status: record_type.open_status(),
                id,
                owner_id: request.owner_id.clone(),
                closed_record_ids: Vec::new(),
            });
        }
        CreatePlan::Create { record_type, close } => (record_type, close),
    };
    let open = record_type.open_status();
    let id = write::new_id();
    for closed in &close {
        out.change(closed, open, Status::CloseLost, at, None);
        out.history(closed, Some(open), Status::CloseLost, at, ctx, Some(&OWNER_CHANGED));
        // The plan closes only records of the snapshot, which the model holds.
        let rec = model.records.get(closed).ok_or_else(|| StoreError::internal("closed a record it did not read"))?;
        out.rejected(rec, at, Some(&OWNER_CHANGED));
        out.handed(rec, &request.owner_id, at);
        model.close(closed, Status::CloseLost, None);
    }
    let c = &request.customer;
    out.made_id.push(id.clone());
    out.made_lead.push(None);
    out.made_type.push(record_type.as_str());
    out.made_status.push(open.as_str());
    out.made_key.push(Some(key.to_owned()));
    out.made_owner.push(Some(request.owner_id.as_str()));
    out.made_customer_type.push(Some(request.customer_type.as_str()));
    out.made_id_number.push(Some(c.id_number.expose()));
    out.made_cif.push(c.cif.as_ref().map(|v| v.expose()));
    out.made_name.push(c.full_name.as_ref().map(|v| v.expose()));
    out.made_phone.push(c.phone.as_ref().map(|v| v.expose()));
    out.made_email.push(c.email.as_ref().map(|v| v.expose()));
    out.made_product.push(Some(request.product.as_str()));
    out.made_channel.push(Some(request.channel.as_str()));
    out.made_journey.push(request.journey_id.as_ref().map(|v| v.as_str()));
    out.made(&id, at);
    out.history(&id, None, open, at, ctx, ctx.reason.as_ref());
    model.records.insert(
        id.clone(),
        Rec {
            key: key.to_owned(),
            record_type,
            status: open,
            owner: request.owner_id.clone(),
            product: request.product.clone(),
            channel: request.channel.as_str().to_owned(),
            converted: None,
        },
    );
    model.open.entry(key.to_owned()).or_default().insert(0, id.clone());
    let outcome = CreateOutcome {
        result,
        record_type,
        id,
        status: open,
        owner_id: request.owner_id.clone(),
        closed_record_ids: close,
    };
    if events {
        let changes = events::on_create(request, ctx, &snapshot, &outcome);
        out.events.push((key.to_owned(), changes, ctx, at));
    }
    Ok(outcome)
}

fn plan_one_close_won<'a>(
    model: &mut Model,
    out: &mut Rows<'a>,
    events: bool,
    id: &str,
    convert: bool,
    ctx: &'a RequestContext,
    at: OffsetDateTime,
) -> Result<CloseWonOutcome, StoreError> {
    let (before, rec) = model.target(id).ok_or(StoreError::NotFound)?;
    let (key, owner, product) = (rec.key.clone(), rec.owner.clone(), rec.product.clone());
    match plan_close_won(&before, convert) {
        CloseWonPlan::AlreadyWon => Ok(CloseWonOutcome::won(&before)),
        CloseWonPlan::Refuse => Err(StoreError::InvalidTransition { current: before.status }),
        CloseWonPlan::Win { convert } => {
            let opportunity = convert.then(write::new_id);
            out.change(id, before.status, Status::CloseWon, at, opportunity.as_deref());
            out.history(id, Some(before.status), Status::CloseWon, at, ctx, ctx.reason.as_ref());
            if let Some(opp) = &opportunity {
                out.made_id.push(opp.clone());
                out.made_lead.push(Some(id.to_owned()));
                out.made_type.push(RecordType::Opportunity.as_str());
                out.made_status.push(Status::CloseWon.as_str());
                for column in [
                    &mut out.made_owner,
                    &mut out.made_id_number,
                    &mut out.made_cif,
                    &mut out.made_name,
                    &mut out.made_phone,
                    &mut out.made_email,
                    &mut out.made_product,
                    &mut out.made_channel,
                    &mut out.made_journey,
                ] {
                    column.push(None);
                }
                out.made_key.push(None);
                out.made_customer_type.push(None);
                out.made(opp, at);
                out.history(opp, None, Status::CloseWon, at, ctx, ctx.reason.as_ref());
            }
            model.close(id, Status::CloseWon, opportunity.as_deref());
            let mut after = before.clone();
            if opportunity.is_some() {
                after.converted_opportunity_id = opportunity;
            }
            let outcome = CloseWonOutcome::won(&after);
            if events {
                let changes = events::on_close_won(&before, &owner, &product, ctx, &outcome);
                out.events.push((key, changes, ctx, at));
            }
            Ok(outcome)
        }
    }
}

fn plan_one_close_lost<'a>(
    model: &mut Model,
    out: &mut Rows<'a>,
    events: bool,
    id: &str,
    ctx: &'a RequestContext,
    at: OffsetDateTime,
) -> Result<RecordRef, StoreError> {
    let (before, rec) = model.target(id).ok_or(StoreError::NotFound)?;
    let (key, owner, product) = (rec.key.clone(), rec.owner.clone(), rec.product.clone());
    let outcome = RecordRef { id: id.to_owned(), status: Status::CloseLost };
    match plan_close_lost(&before) {
        CloseLostPlan::AlreadyLost => Ok(outcome),
        CloseLostPlan::Refuse => Err(StoreError::InvalidTransition { current: before.status }),
        CloseLostPlan::Lose => {
            out.change(id, before.status, Status::CloseLost, at, None);
            out.history(id, Some(before.status), Status::CloseLost, at, ctx, ctx.reason.as_ref());
            out.rejected(rec, at, ctx.reason.as_ref());
            model.close(id, Status::CloseLost, None);
            if events {
                let changes = events::on_close_lost(&before, &owner, &product, ctx);
                out.events.push((key, changes, ctx, at));
            }
            Ok(outcome)
        }
    }
}

/// Writes the batch's rows in one statement, a data-modifying clause per table, unless one of the keys' locks
/// is busy: then it writes nothing and returns the busy locks.
///
/// The locks are tried, not waited for: a batch never waits for a key that another transaction holds (a
/// lone write's, another replica's, or another batch's), so it never holds up the rest of its requests,
/// nor can two writers deadlock. Holding them, the statement changes each record only from the status it
/// was planned from and inserts a key's open record only where the partial unique index allows it; if any
/// change misses (another writer got there since the batch read), the statement raises a serialization
/// failure and nothing of it stays. So a lone write, which holds its key's lock while it reads and writes,
/// never sees a batch change its key meanwhile, and a batch never writes over what it did not read.
///
/// The clauses of one statement run in no set order, so the records' changes are made to come first: the
/// new records' insert reads how many changed (and inserts nothing unless all did), so the partial unique
/// index never sees a key's new open record beside the one it replaces. The history's foreign keys are
/// checked at the end of the statement, when the new records exist.
async fn write_rows(conn: &mut sqlx::PgConnection, out: &Rows<'_>, locks: &[i64]) -> Result<Vec<i64>, sqlx::Error> {
    let (busy, _): (Vec<i64>, Option<bool>) = sqlx::query_as(
        "WITH locked AS (
             SELECT coalesce(array_agg(l.id) FILTER (WHERE NOT pg_try_advisory_xact_lock(l.id)), '{}') AS busy
             FROM unnest($37::int8[]) AS l (id)
         ), go AS (
             SELECT cardinality(busy) = 0 AS ok FROM locked
         ), changed AS (
             UPDATE records AS r SET status = c.status, updated_at = c.at,
                 converted_opportunity_id = coalesce(c.converted, r.converted_opportunity_id)
             FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])
                 AS c (id, from_status, status, at, converted)
             WHERE r.id = c.id AND r.status = c.from_status AND (SELECT ok FROM go)
             RETURNING r.id
         ), made AS (
             -- In the order they were made (newest first reads `seq`); a converted opportunity copies
             -- its lead's customer, key and owner.
             INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number, cif,
                 full_name, phone, email, product, channel, journey_id, converted_from_lead_id, created_at,
                 updated_at, converted_opportunity_id)
             SELECT m.id, m.record_type, m.status, coalesce(m.match_key, l.match_key),
                 coalesce(m.owner_id, l.owner_id), coalesce(m.customer_type, l.customer_type),
                 coalesce(m.id_number, l.id_number), CASE WHEN m.lead IS NULL THEN m.cif ELSE l.cif END,
                 CASE WHEN m.lead IS NULL THEN m.full_name ELSE l.full_name END,
                 CASE WHEN m.lead IS NULL THEN m.phone ELSE l.phone END,
                 CASE WHEN m.lead IS NULL THEN m.email ELSE l.email END,
                 coalesce(m.product, l.product), coalesce(m.channel, l.channel),
                 CASE WHEN m.lead IS NULL THEN m.journey_id ELSE l.journey_id END, m.lead, m.at, m.updated_at,
                 m.converted
             FROM unnest($6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                     $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::text[],
                     $20::text[], $21::timestamptz[], $35::timestamptz[], $36::text[]) WITH ORDINALITY
                 AS m (id, lead, record_type, status, match_key, owner_id, customer_type, id_number, cif,
                     full_name, phone, email, product, channel, journey_id, at, updated_at, converted, n)
             LEFT JOIN records AS l ON l.id = m.lead
             WHERE (SELECT count(*) FROM changed) = cardinality($1::text[]) AND (SELECT ok FROM go)
             ORDER BY m.n
             RETURNING id
         ), written AS (
             INSERT INTO history (record_id, from_status, to_status, at, request_id, channel, reason)
             SELECT record_id, from_status, to_status, at, request_id, channel, reason
             FROM unnest($22::text[], $23::text[], $24::text[], $25::timestamptz[], $26::text[], $27::text[],
                     $28::text[]) WITH ORDINALITY
                 AS h (record_id, from_status, to_status, at, request_id, channel, reason, n)
             WHERE (SELECT ok FROM go)
             ORDER BY h.n
             RETURNING 1
         ), answered AS (
             -- As `idempotency::complete_with`, for each request holding a key.
             UPDATE idempotency_keys AS k
             SET state = 'done', locked_until = NULL, status = a.status, content_type = a.content_type,
                 location = a.location, body = a.body
             FROM unnest($29::text[], $30::text[], $31::int4[], $32::text[], $33::text[], $34::bytea[])
                 AS a (key, holder, status, content_type, location, body)
             WHERE k.key = a.key AND k.holder = a.holder AND k.state = 'running' AND (SELECT ok FROM go)
             RETURNING 1
         ), rejected AS (
             -- The reports' daily counts (migration 0012), appended as the history's trigger did.
             INSERT INTO report_rejections_new (source, day, reason, channel, product, n)
             SELECT 'records', (x.at AT TIME ZONE 'UTC')::date, x.reason, x.channel, x.product, count(*)
             FROM unnest($38::timestamptz[], $39::text[], $40::text[], $41::text[]) AS x (at, reason, channel, product)
             WHERE (SELECT ok FROM go)
             GROUP BY 2, 3, 4, 5
         ), handed AS (
             INSERT INTO report_handovers_new (source, day, from_owner, to_owner, channel, product, n)
             SELECT 'records', (x.at AT TIME ZONE 'UTC')::date, x.from_owner, x.to_owner, x.channel, x.product,
                 count(*)
             FROM unnest($42::timestamptz[], $43::text[], $44::text[], $45::text[], $46::text[])
                 AS x (at, from_owner, to_owner, channel, product)
             WHERE (SELECT ok FROM go)
             GROUP BY 2, 3, 4, 5, 6
         ), counts AS (
             SELECT (SELECT count(*) FROM changed) AS changed, (SELECT count(*) FROM made) AS made,
                 (SELECT count(*) FROM written) AS written
         )
         SELECT l.busy,
             CASE WHEN cardinality(l.busy) = 0 AND (n.changed, n.made, n.written)
                     <> (cardinality($1::text[]), cardinality($6::text[]), cardinality($22::text[]))
                 THEN crm_batch_conflict(format('%s of %s changes, %s of %s new records, %s of %s history rows',
                     n.changed, cardinality($1::text[]), n.made, cardinality($6::text[]), n.written,
                     cardinality($22::text[])))
             END
         FROM locked AS l, counts AS n",
    )
    .bind(&out.changed_id)
    .bind(&out.changed_from)
    .bind(&out.changed_to)
    .bind(&out.changed_at)
    .bind(&out.changed_converted)
    .bind(&out.made_id)
    .bind(&out.made_lead)
    .bind(&out.made_type)
    .bind(&out.made_status)
    .bind(&out.made_key)
    .bind(&out.made_owner)
    .bind(&out.made_customer_type)
    .bind(&out.made_id_number)
    .bind(&out.made_cif)
    .bind(&out.made_name)
    .bind(&out.made_phone)
    .bind(&out.made_email)
    .bind(&out.made_product)
    .bind(&out.made_channel)
    .bind(&out.made_journey)
    .bind(&out.made_at)
    .bind(&out.history_record)
    .bind(&out.history_from)
    .bind(&out.history_to)
    .bind(&out.history_at)
    .bind(&out.history_request)
    .bind(&out.history_channel)
    .bind(&out.history_reason)
    .bind(&out.answer_key)
    .bind(&out.answer_holder)
    .bind(&out.answer_status)
    .bind(&out.answer_content_type)
    .bind(&out.answer_location)
    .bind(&out.answer_body)
    .bind(&out.made_updated_at)
    .bind(&out.made_converted)
    .bind(locks)
    .bind(&out.rejected_at)
    .bind(&out.rejected_reason)
    .bind(&out.rejected_channel)
    .bind(&out.rejected_product)
    .bind(&out.handed_at)
    .bind(&out.handed_from)
    .bind(&out.handed_to)
    .bind(&out.handed_channel)
    .bind(&out.handed_product)
    .fetch_one(&mut *conn)
    .await?;
    Ok(busy)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a batch saw, and the switch that ends its start.
    type Seen = (Vec<u32>, oneshot::Sender<()>);

    #[tokio::test]
    async fn the_next_batch_is_taken_once_the_one_before_has_started() {
        let (seen_tx, mut seen) = mpsc::unbounded_channel::<Seen>();
        let queue = Queue::start(Batching { max_batch: 64, concurrent: 2 }, move |jobs, starting| {
            let seen_tx = seen_tx.clone();
            async move {
                let (go, started) = oneshot::channel();
                seen_tx.send((jobs, go)).unwrap();
                let _ = started.await;
                drop(starting);
                // The batch keeps its slot until the test ends.
                std::future::pending::<()>().await;
            }
        });
        queue.push(1).await.unwrap();
        let (first, go) = seen.recv().await.unwrap();
        assert_eq!(first, [1]);
        for n in 2..=5 {
            queue.push(n).await.unwrap();
        }
        // A slot is free, but the first batch is still starting: the jobs wait, together.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(seen.try_recv().is_err(), "a batch was taken while the one before was starting");
        go.send(()).unwrap();
        let (second, _go) = seen.recv().await.unwrap();
        assert_eq!(second, [2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn no_more_batches_run_at_once_than_there_are_slots() {
        let (seen_tx, mut seen) = mpsc::unbounded_channel::<Seen>();
        let queue = Queue::start(Batching { max_batch: 1, concurrent: 2 }, move |jobs, starting| {
            let seen_tx = seen_tx.clone();
            async move {
                drop(starting);
                let (go, done) = oneshot::channel();
                seen_tx.send((jobs, go)).unwrap();
                let _ = done.await;
            }
        });
        for n in 1..=3 {
            queue.push(n).await.unwrap();
        }
        let (first, go_first) = seen.recv().await.unwrap();
        let (second, _go_second) = seen.recv().await.unwrap();
        assert_eq!((first, second), (vec![1], vec![2]));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(seen.try_recv().is_err(), "a third batch ran beside two");
        go_first.send(()).unwrap();
        let (third, _go_third) = seen.recv().await.unwrap();
        assert_eq!(third, [3]);
    }
}
