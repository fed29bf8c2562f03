//! The writer thread: batches of jobs, one transaction and one fsync per batch.
//!
//! A job is any closure over the transaction; its answer is held back until the batch's commit is durable,
//! and turned into an "unavailable, nothing changed" error if the commit fails.
//!
//! Jobs first run one after another with nothing between them. A job that fails having changed nothing (a
//! refused transition, an unknown id) needs no undoing. A job that fails after writing poisons the batch:
//! the transaction is rolled back and every job of the batch runs again, each in its own savepoint, so the
//! failed one leaves nothing behind and the rest go on. A savepoint per job on every batch cost the writer
//! about a quarter of its time running jobs (31–41 µs a job with them, 24.5–29.3 µs without, in the mix).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lifecycle::Matching;
use rusqlite::{Connection, Transaction, TransactionBehavior};
use store::StoreError;
use tokio::sync::{mpsc, oneshot};

use crate::read::error;

pub(crate) struct Settings {
    pub matching: Matching,
    pub max_batch: usize,
    /// Whether the operations write their events to the outbox.
    pub events: bool,
    /// Batches run again job by job because a job failed after writing.
    pub reruns: Arc<AtomicU64>,
}

/// What the writer's queue carries: a write, or the order to stop once everything before it is done.
pub(crate) enum Job {
    Write(Box<dyn Work>),
    Stop,
}

pub(crate) trait Work: Send {
    /// Runs the job in `tx` and keeps its result for [`Work::send`]; `true` when the job failed. A job may
    /// run twice (see the module's doc); the second result replaces the first.
    fn run(&mut self, tx: &Transaction<'_>, settings: &Settings) -> bool;
    /// Keeps `error` as the job's result: the writer could not run it.
    fn refuse(&mut self, error: StoreError);
    /// The batch is durable: send the kept result. A caller that went away no longer needs it; the write
    /// stands.
    fn send(self: Box<Self>);
    /// The job never ran, or its batch was rolled back: nothing of it happened.
    fn fail(self: Box<Self>, why: &str);
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

struct Task<T, F> {
    work: F,
    reply: Reply<T>,
    result: Option<Result<T, StoreError>>,
}

/// A job running `work` in the writer's transaction and answering on `reply`.
pub(crate) fn job<T, F>(work: F, reply: Reply<T>) -> Job
where
    T: Send + 'static,
    F: FnMut(&Transaction<'_>, &Settings) -> Result<T, StoreError> + Send + 'static,
{
    Job::Write(Box::new(Task { work, reply, result: None }))
}

impl<T: Send + 'static, F> Work for Task<T, F>
where
    F: FnMut(&Transaction<'_>, &Settings) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, tx: &Transaction<'_>, settings: &Settings) -> bool {
        let result = (self.work)(tx, settings);
        let failed = result.is_err();
        self.result = Some(result);
        failed
    }

    fn refuse(&mut self, error: StoreError) {
        self.result = Some(Err(error));
    }

    fn send(self: Box<Self>) {
        let result = self.result.unwrap_or_else(|| Err(StoreError::internal("a job was answered without running")));
        let _ = self.reply.send(result);
    }

    fn fail(self: Box<Self>, why: &str) {
        let _ = self.reply.send(Err(StoreError::unavailable(why.to_owned())));
    }
}

/// Runs `job` in its own savepoint, rolled back if the job fails.
fn in_savepoint(tx: &Transaction<'_>, job: &mut dyn Work, settings: &Settings) {
    // Prepared once and kept: parsing them for every job cost about 5 000 instructions a request (callgrind).
    let run = |sql: &str| tx.prepare_cached(sql).and_then(|mut s| s.execute([])).map(|_| ()).map_err(error);
    if let Err(e) = run("SAVEPOINT job") {
        return job.refuse(e);
    }
    if job.run(tx, settings) {
        if let Err(e) = run("ROLLBACK TO job") {
            job.refuse(e);
        }
    }
    if let Err(e) = run("RELEASE job") {
        job.refuse(e);
    }
}

/// How a pass over a batch's jobs ended.
#[derive(Debug, PartialEq)]
enum Pass {
    /// Every job ran; the failed ones changed nothing.
    Done,
    /// A job failed after writing: what it wrote is in the transaction.
    Poisoned,
    /// SQLite rolled the transaction back by itself (a full disk, an I/O error, lack of memory).
    RolledBack,
}

fn run_jobs(tx: &Transaction<'_>, jobs: &mut [Box<dyn Work>], settings: &Settings, guarded: bool) -> Pass {
    for job in jobs.iter_mut() {
        let poisoned = if guarded {
            in_savepoint(tx, job.as_mut(), settings);
            false
        } else {
            // Counts every row a statement (or its triggers) inserted, updated or deleted; a statement that
            // failed and was undone by SQLite counts nothing.
            let before = tx.total_changes();
            job.run(tx, settings) && tx.total_changes() != before
        };
        // After SQLite's own rollback, further jobs would commit one by one outside the batch: stop.
        if tx.is_autocommit() {
            return Pass::RolledBack;
        }
        if poisoned {
            return Pass::Poisoned;
        }
    }
    Pass::Done
}

fn begin(conn: &mut Connection) -> Result<Transaction<'_>, String> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| {
        tracing::error!(error = %e, "sqlite: cannot begin a transaction");
        format!("cannot begin a transaction: {e}")
    })
}

/// The writer's page cache for a database file of `bytes`, in KiB: a sixteenth of the file, between 8 and
/// 32 MiB. SQLite's default is 2 MiB; at ten million records (6.5 GB) the writer then read index pages from
/// the operating system on most writes and the mix's p99 doubled, and 32 MiB holds the upper levels of the
/// indexes. A store of some hundred thousand records needs far less, and a fixed 32 MiB was most of the
/// service's memory there, so the cache follows the file as it grows.
pub(crate) fn cache_kib(bytes: u64) -> u64 {
    const MIN: u64 = 8 * 1024;
    const MAX: u64 = 32 * 1024;
    (bytes / 16 / 1024).clamp(MIN, MAX)
}

/// Sets the connection's page cache from the size of its database file ([`cache_kib`]); it only grows.
pub(crate) fn size_cache(conn: &Connection) -> rusqlite::Result<()> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let wanted = cache_kib((pages.max(0) as u64).saturating_mul(page_size.max(0) as u64));
    // A negative cache_size is a size in KiB; a positive one, a number of pages.
    let now: i64 = conn.query_row("PRAGMA cache_size", [], |r| r.get(0))?;
    let now_kib = if now < 0 { now.unsigned_abs() } else { now.unsigned_abs() * page_size.max(0) as u64 / 1024 };
    if wanted > now_kib {
        conn.pragma_update(None, "cache_size", -(wanted as i64))?;
    }
    Ok(())
}

/// Batches between two looks at the database's size for [`size_cache`].
const RESIZE_EVERY: u32 = 1024;

pub(crate) fn run(mut conn: Connection, mut queue: mpsc::Receiver<Job>, settings: Settings) {
    let mut batch: Vec<Box<dyn Work>> = Vec::with_capacity(settings.max_batch);
    let mut stopping = false;
    let mut batches = 0u32;
    while !stopping {
        match queue.blocking_recv() {
            Some(Job::Write(work)) => batch.push(work),
            Some(Job::Stop) | None => break,
        }
        while batch.len() < settings.max_batch {
            match queue.try_recv() {
                Ok(Job::Write(work)) => batch.push(work),
                Ok(Job::Stop) => {
                    stopping = true;
                    break;
                }
                Err(_) => break,
            }
        }
        execute(&mut conn, std::mem::take(&mut batch), &settings);
        batches = batches.wrapping_add(1);
        if batches.is_multiple_of(RESIZE_EVERY) {
            if let Err(e) = size_cache(&conn) {
                tracing::warn!(error = %e, "sqlite: cannot size the writer's page cache");
            }
        }
    }
    // Whatever arrived after the stop order is refused, not lost silently.
    queue.close();
    while let Ok(job) = queue.try_recv() {
        if let Job::Write(work) = job {
            work.fail("the SQLite writer has stopped");
        }
    }
    tracing::debug!("sqlite writer stopped");
}

fn execute(conn: &mut Connection, mut jobs: Vec<Box<dyn Work>>, settings: &Settings) {
    let fail_all = |jobs: Vec<Box<dyn Work>>, why: &str| jobs.into_iter().for_each(|job| job.fail(why));
    let mut tx = match begin(conn) {
        Ok(tx) => tx,
        Err(why) => return fail_all(jobs, &why),
    };
    let mut pass = run_jobs(&tx, &mut jobs, settings, false);
    if pass == Pass::Poisoned {
        settings.reruns.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("crm_sqlite_batch_reruns_total").increment(1);
        tracing::warn!(jobs = jobs.len(), "sqlite: a job failed after writing; the batch runs again job by job");
        if let Err(e) = tx.rollback() {
            tracing::error!(error = %e, "sqlite: cannot roll back a batch");
            return fail_all(jobs, &format!("cannot roll back: {e}"));
        }
        tx = match begin(conn) {
            Ok(tx) => tx,
            Err(why) => return fail_all(jobs, &why),
        };
        pass = run_jobs(&tx, &mut jobs, settings, true);
    }
    if pass == Pass::RolledBack {
        tracing::error!(jobs = jobs.len(), "sqlite: the transaction was rolled back under the batch");
        return fail_all(jobs, "the transaction was rolled back by SQLite");
    }
    match tx.commit() {
        Ok(()) => jobs.into_iter().for_each(|job| job.send()),
        Err(e) => {
            tracing::error!(error = %e, jobs = jobs.len(), "sqlite: commit failed, the batch is rolled back");
            fail_all(jobs, &format!("commit failed: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{cache_kib, execute, job, size_cache, Job, Settings, Work};
    use rusqlite::{params, Connection, OptionalExtension};
    use std::sync::atomic::Ordering;
    use store::StoreError;
    use tokio::sync::oneshot;

    type Answer = oneshot::Receiver<Result<i64, StoreError>>;

    fn settings() -> Settings {
        Settings { matching: Default::default(), max_batch: 16, events: false, reruns: Default::default() }
    }

    fn table() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (name TEXT PRIMARY KEY, n INTEGER NOT NULL)").unwrap();
        conn
    }

    /// A job running `f`, and the receiver of its answer.
    fn work<F>(f: F) -> (Box<dyn Work>, Answer)
    where
        F: FnMut(&rusqlite::Transaction<'_>, &Settings) -> Result<i64, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let Job::Write(work) = job(f, reply) else { unreachable!("job() makes writes") };
        (work, answer)
    }

    /// A job inserting `name` and answering its row id; with `fail_after_write` it then fails.
    fn insert(name: &'static str, fail_after_write: bool) -> (Box<dyn Work>, Answer) {
        work(move |tx, _| {
            tx.execute("INSERT INTO t (name, n) VALUES (?1, 1)", [name]).map_err(super::error)?;
            if fail_after_write {
                return Err(StoreError::internal(format!("{name} fails after writing")));
            }
            Ok(tx.last_insert_rowid())
        })
    }

    /// A job that reads and then fails without writing anything (like a refused transition).
    fn refuse() -> (Box<dyn Work>, Answer) {
        work(|tx, _| {
            let n: i64 = tx.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).map_err(super::error)?;
            Err(StoreError::internal(format!("refused after reading {n} rows")))
        })
    }

    fn stored(conn: &Connection, name: &str) -> Option<i64> {
        conn.query_row("SELECT n FROM t WHERE name = ?1", params![name], |r| r.get(0)).optional().unwrap()
    }

    #[test]
    fn a_job_failing_after_writing_is_undone_and_the_rest_of_its_batch_commits() {
        let mut conn = table();
        let settings = settings();
        let (a, a_answer) = insert("a", false);
        let (b, b_answer) = insert("b", true);
        let (c, c_answer) = insert("c", false);
        execute(&mut conn, vec![a, b, c], &settings);

        assert_eq!(settings.reruns.load(Ordering::Relaxed), 1, "the poisoned batch ran again once");
        assert!(a_answer.blocking_recv().unwrap().is_ok());
        let b_error = b_answer.blocking_recv().unwrap().unwrap_err();
        assert!(format!("{b_error:?}").contains("b fails after writing"), "{b_error:?}");
        assert!(c_answer.blocking_recv().unwrap().is_ok(), "the job after the failed one ran in the second pass");
        assert_eq!(stored(&conn, "a"), Some(1), "written once, not twice");
        assert_eq!(stored(&conn, "b"), None, "the failed job left nothing");
        assert_eq!(stored(&conn, "c"), Some(1));
        let rows: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 2);
        assert!(conn.is_autocommit(), "the batch's transaction is over");
    }

    #[test]
    fn a_job_failing_without_writing_does_not_run_its_batch_again() {
        let mut conn = table();
        let settings = settings();
        let (a, a_answer) = insert("a", false);
        let (r, r_answer) = refuse();
        let (c, c_answer) = insert("c", false);
        execute(&mut conn, vec![a, r, c], &settings);

        assert_eq!(settings.reruns.load(Ordering::Relaxed), 0);
        assert_eq!(a_answer.blocking_recv().unwrap().unwrap(), 1);
        let refused = r_answer.blocking_recv().unwrap().unwrap_err();
        assert!(format!("{refused:?}").contains("refused after reading 1 rows"), "{refused:?}");
        assert_eq!(c_answer.blocking_recv().unwrap().unwrap(), 2);
        assert_eq!((stored(&conn, "a"), stored(&conn, "c")), (Some(1), Some(1)));
    }

    #[test]
    fn a_batch_whose_commit_fails_answers_every_job_unavailable_and_keeps_nothing() {
        // A deferred foreign key is checked at the commit, which then fails for the whole batch.
        let mut conn = table();
        conn.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE child (parent TEXT REFERENCES t (name) DEFERRABLE INITIALLY DEFERRED);",
        )
        .unwrap();
        let settings = settings();
        let (a, a_answer) = insert("a", false);
        let (orphan, orphan_answer) = work(|tx, _| {
            tx.execute("INSERT INTO child (parent) VALUES ('nobody')", []).map(|n| n as i64).map_err(super::error)
        });
        execute(&mut conn, vec![a, orphan], &settings);

        for answer in [a_answer, orphan_answer] {
            let error = answer.blocking_recv().expect("answered, not dropped").unwrap_err();
            assert!(matches!(error, StoreError::Unavailable { .. }), "{error:?}");
            assert!(format!("{error:?}").contains("commit failed"), "{error:?}");
        }
        assert_eq!(stored(&conn, "a"), None, "the batch was rolled back");
        assert!(conn.is_autocommit());
    }

    #[test]
    fn after_sqlite_ends_the_transaction_no_further_job_runs() {
        // What SQLite does by itself on a full disk or an I/O error, done here by a job: the transaction is
        // gone. The jobs after it must not run in autocommit, each committing on its own.
        let mut conn = table();
        let settings = settings();
        let (a, a_answer) = insert("a", false);
        let (ender, ender_answer) = work(|tx, _| {
            tx.execute_batch("ROLLBACK").map_err(super::error)?;
            Ok(0)
        });
        let (c, c_answer) = insert("c", false);
        execute(&mut conn, vec![a, ender, c], &settings);

        for answer in [a_answer, ender_answer, c_answer] {
            let error = answer.blocking_recv().expect("answered").unwrap_err();
            assert!(format!("{error:?}").contains("rolled back by SQLite"), "{error:?}");
        }
        assert_eq!((stored(&conn, "a"), stored(&conn, "c")), (None, None), "nothing committed");
    }

    #[test]
    fn a_savepoint_that_cannot_be_released_fails_its_job() {
        // The second job releases the writer's savepoint itself, so the writer's own RELEASE fails: the job
        // is answered with that error rather than with its own result.
        let mut conn = table();
        let settings = settings();
        let (poison, _) = insert("p", true);
        let (rogue, rogue_answer) = work(|tx, _| {
            tx.execute_batch("RELEASE job").map_err(super::error)?;
            Ok(7)
        });
        execute(&mut conn, vec![poison, rogue], &settings);

        assert_eq!(settings.reruns.load(Ordering::Relaxed), 1);
        let answer = rogue_answer.blocking_recv().unwrap();
        assert!(answer.is_err(), "not its own result: {answer:?}");
    }

    #[test]
    fn a_job_whose_statement_fails_is_not_counted_as_a_write() {
        // The duplicate insert fails inside SQLite, which undoes that statement; nothing else of the job
        // was written, so the batch needs no second pass.
        let mut conn = table();
        let settings = settings();
        let (a, _) = insert("a", false);
        let (again, again_answer) = insert("a", false);
        let (c, c_answer) = insert("c", false);
        execute(&mut conn, vec![a, again, c], &settings);

        assert_eq!(settings.reruns.load(Ordering::Relaxed), 0);
        assert!(again_answer.blocking_recv().unwrap().is_err(), "the duplicate is refused");
        assert!(c_answer.blocking_recv().unwrap().is_ok());
        assert_eq!((stored(&conn, "a"), stored(&conn, "c")), (Some(1), Some(1)));
    }

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn the_cache_is_a_sixteenth_of_the_file_between_8_and_32_mib() {
        assert_eq!(cache_kib(0), 8 * 1024);
        assert_eq!(cache_kib(128 * MIB), 8 * 1024);
        assert_eq!(cache_kib(128 * MIB + 16 * 1024), 8 * 1024 + 1);
        assert_eq!(cache_kib(256 * MIB), 16 * 1024);
        assert_eq!(cache_kib(512 * MIB), 32 * 1024);
        assert_eq!(cache_kib(6_500 * MIB), 32 * 1024);
        assert_eq!(cache_kib(u64::MAX), 32 * 1024);
    }

    fn cache_size(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA cache_size", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_connection_gets_the_cache_of_its_file_and_it_never_shrinks() {
        let conn = Connection::open_in_memory().unwrap();
        size_cache(&conn).unwrap();
        assert_eq!(cache_size(&conn), -8192, "a small database: the floor, in KiB");
        conn.pragma_update(None, "cache_size", -20_000).unwrap();
        size_cache(&conn).unwrap();
        assert_eq!(cache_size(&conn), -20_000, "a larger cache stays");
        conn.pragma_update(None, "cache_size", 100).unwrap();
        size_cache(&conn).unwrap();
        assert_eq!(cache_size(&conn), -8192, "100 pages of 4 KiB are less than the floor");
        // Read in the right unit: 4 000 KiB is less than the floor, 3 000 pages of 4 KiB are more.
        conn.pragma_update(None, "cache_size", -4_000).unwrap();
        size_cache(&conn).unwrap();
        assert_eq!(cache_size(&conn), -8192, "4 000 KiB grow to the floor");
        conn.pragma_update(None, "cache_size", 3_000).unwrap();
        size_cache(&conn).unwrap();
        assert_eq!(cache_size(&conn), 3_000, "3 000 pages (12 000 KiB) stay");
    }
}
