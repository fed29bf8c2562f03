//! Checkpoints on a thread of their own, so that the writer spends its time on writes.
//!
//! In WAL mode every commit appends the pages it changed to the `-wal` file, and a checkpoint copies them back
//! into the database file and syncs it. By default the committing connection does that itself whenever the
//! WAL passes 1 000 pages; under the benchmark's mix that was every few batches, and a sixth of the writer
//! thread's time, during which no request could commit.
//!
//! Here a second connection checkpoints (PASSIVE: it never blocks the writer or a reader) whenever the writer
//! has committed since its last pass, at most every [`PAUSE`]. Pages changed again within that time are
//! copied once. Copying never makes a commit durable, the commit's own fsync of the WAL does, so nothing
//! acknowledged depends on this thread.
//!
//! The WAL file only starts again from its beginning when a write finds every page of it already copied, which
//! a checkpointer trailing the writer never quite achieves. So the writer keeps its own automatic checkpoint,
//! at [`WAL_BOUND`] pages: by then the background passes have copied almost everything, the writer's pass
//! copies the rest, and the WAL restarts. The file stays under about 128 MiB.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// The size, in pages, at which the writer checkpoints itself (SQLite's `wal_autocheckpoint`).
pub(crate) const WAL_BOUND: u32 = 32_768;

/// The shortest time between two background checkpoints.
pub(crate) const PAUSE: Duration = Duration::from_millis(5);

/// The writer's side: tells the checkpointer that something was committed. Dropping it stops the thread
/// (after one last pass, if something was committed since the previous one) and waits for it.
pub(crate) struct Checkpointer {
    committed: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread on its own connection to `path`.
    pub(crate) fn start(conn: Connection, path: PathBuf) -> std::io::Result<Self> {
        // One pending signal is enough: a pass copies everything committed before it starts.
        let (committed, signals) = sync_channel(1);
        let thread =
            std::thread::Builder::new().name("sqlite-checkpoint".into()).spawn(move || run(conn, path, signals))?;
        Ok(Self { committed: Some(committed), thread: Some(thread) })
    }

    /// A batch was committed; never blocks.
    pub(crate) fn committed(&self) {
        if let Some(tx) = &self.committed {
            match tx.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => {} // the thread ended; the writer's own checkpoint remains
            }
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.committed.take();
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark(); // cut its pause short
            let _ = thread.join();
        }
    }
}

fn run(conn: Connection, path: PathBuf, signals: Receiver<()>) {
    while signals.recv().is_ok() {
        let pass = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match pass {
            Ok((_busy, wal_pages, copied)) => tracing::trace!(wal_pages, copied, "sqlite checkpoint"),
            Err(e) => tracing::warn!(error = %e, path = %path.display(), "sqlite: background checkpoint failed"),
        }
        // Woken early only by the writer stopping.
        std::thread::park_timeout(PAUSE);
    }
}
