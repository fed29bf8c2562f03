//! The writer thread: batches of jobs, one transaction and one fsync per batch, a savepoint per job.
//!
//! A job is any closure over the transaction; its answer is held back until the batch's commit is durable,
//! and turned into an "unavailable, nothing changed" error if the commit fails.

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
}

/// What the writer's queue carries: a write, or the order to stop once everything before it is done.
pub(crate) enum Job {
    Write(Box<dyn Work>),
    Stop,
}

/// An answer computed inside the transaction, waiting for the commit.
type Pending = Box<dyn Deliver>;

pub(crate) trait Work: Send {
    /// Runs in its own savepoint: a job that fails leaves nothing behind, and the rest of the batch goes on.
    fn run(self: Box<Self>, tx: &Transaction<'_>, settings: &Settings) -> Pending;
    /// The job was never run: answer it as failed.
    fn fail(self: Box<Self>, why: &str);
}

pub(crate) trait Deliver: Send {
    /// The batch is durable: send the answer. A caller that went away no longer needs it; the write stands.
    fn send(self: Box<Self>);
    /// The batch was rolled back: nothing of it happened.
    fn fail(self: Box<Self>, why: &str);
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

struct Task<T, F> {
    work: F,
    reply: Reply<T>,
}

struct Answer<T> {
    result: Result<T, StoreError>,
    reply: Reply<T>,
}

/// A job running `work` in the writer's transaction and answering on `reply`.
pub(crate) fn job<T, F>(work: F, reply: Reply<T>) -> Job
where
    T: Send + 'static,
    F: FnOnce(&Transaction<'_>, &Settings) -> Result<T, StoreError> + Send + 'static,
{
    Job::Write(Box::new(Task { work, reply }))
}

impl<T: Send + 'static, F> Work for Task<T, F>
where
    F: FnOnce(&Transaction<'_>, &Settings) -> Result<T, StoreError> + Send,
{
    fn run(self: Box<Self>, tx: &Transaction<'_>, settings: &Settings) -> Pending {
        let Task { work, reply } = *self;
        let result = in_savepoint(tx, |tx| work(tx, settings));
        Box::new(Answer { result, reply })
    }

    fn fail(self: Box<Self>, why: &str) {
        let _ = self.reply.send(Err(StoreError::unavailable(why.to_owned())));
    }
}

impl<T: Send> Deliver for Answer<T> {
    fn send(self: Box<Self>) {
        let _ = self.reply.send(self.result);
    }

    fn fail(self: Box<Self>, why: &str) {
        let _ = self.reply.send(Err(StoreError::unavailable(why.to_owned())));
    }
}

fn in_savepoint<T>(
    tx: &Transaction<'_>,
    f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // Prepared once and kept: parsing them for every job cost about 5 000 instructions a request (callgrind).
    let run = |sql: &str| tx.prepare_cached(sql).and_then(|mut s| s.execute([])).map_err(error);
    run("SAVEPOINT job")?;
    let result = f(tx);
    if result.is_err() {
        run("ROLLBACK TO job")?;
    }
    run("RELEASE job")?;
    result
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
        execute(&mut conn, batch.drain(..), &settings);
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

fn execute(conn: &mut Connection, jobs: impl Iterator<Item = Box<dyn Work>>, settings: &Settings) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::error!(error = %e, "sqlite: cannot begin a transaction");
            let why = format!("cannot begin a transaction: {e}");
            jobs.for_each(|job| job.fail(&why));
            return;
        }
    };
    let mut done: Vec<Pending> = Vec::new();
    for job in jobs {
        // On a full disk, an I/O error or lack of memory SQLite rolls the whole transaction back by itself.
        // Running further jobs then would commit them one by one outside the batch, so they are not run.
        if tx.is_autocommit() {
            job.fail("the transaction was rolled back by SQLite");
            continue;
        }
        done.push(job.run(&tx, settings));
    }
    if tx.is_autocommit() {
        tracing::error!(jobs = done.len(), "sqlite: the transaction was rolled back under the batch");
        done.into_iter().for_each(|d| d.fail("the transaction was rolled back by SQLite"));
        return;
    }
    match tx.commit() {
        Ok(()) => done.into_iter().for_each(|d| d.send()),
        Err(e) => {
            tracing::error!(error = %e, jobs = done.len(), "sqlite: commit failed, the batch is rolled back");
            let why = format!("commit failed: {e}");
            done.into_iter().for_each(|d| d.fail(&why));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{cache_kib, size_cache};
    use rusqlite::Connection;

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
