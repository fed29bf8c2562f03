//! The checkpointer thread: copies the pages the writer committed to the write-ahead log into the database
//! file, on a connection of its own.
//!
//! SQLite's default runs that copy (and its fsync of the database file) inside the commit that makes the log
//! pass 1000 pages, so the writer's batch, and every answer waiting on it, waited for it too. Here the
//! writer only appends to the log; this thread checkpoints every few milliseconds without blocking it
//! (`PASSIVE`). The writer keeps SQLite's own checkpoint as a safety net, at a far larger log, should this
//! thread fall behind.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// How often the log is copied into the database file.
const EVERY: Duration = Duration::from_millis(100);

/// The writer's own checkpoint, in pages of the log: only when this thread has fallen far behind.
pub(crate) const WRITER_FALLBACK_PAGES: i64 = 10_000;

pub(crate) struct Checkpointer {
    stop: mpsc::Sender<()>,
    handle: JoinHandle<()>,
}

impl Checkpointer {
    pub(crate) fn start(conn: Connection) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new().name("sqlite-checkpointer".into()).spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EVERY) {
                let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                });
                if let Err(e) = done {
                    tracing::warn!(error = %e, "sqlite: checkpoint failed; the writer checkpoints in its place");
                }
            }
        })?;
        Ok(Self { stop, handle })
    }

    /// Stops the thread and waits for it.
    pub(crate) fn stop(self) {
        drop(self.stop);
        let _ = self.handle.join();
    }
}
