//! The sidecar contract (what a CRM backend keeps beside the CRM) on the embedded store, plus what only a
//! lease lock shows: a holder that died loses the key when its lease ends, and two stores opened on one
//! file (as two processes would) never hold one key at once.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use store::{Sidecar, StoreError};
use store_sqlite::{SqliteConfig, SqliteStore};

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(SqliteConfig::new(path)).unwrap()
}

async fn fresh() -> (Arc<dyn Sidecar>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("crm.db"));
    (Arc::new(store), dir)
}

async fn replica(dir: &tempfile::TempDir) -> Arc<dyn Sidecar> {
    Arc::new(open(&dir.path().join("crm.db")))
}

store::sidecar_suite!(fresh, replica);

async fn with_outbox() -> (Arc<dyn Sidecar>, Arc<dyn store::events::Outbox>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir.path().join("crm.db")));
    (store.clone(), store, dir)
}

store::sidecar_outbox_suite!(with_outbox);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let (dead, alive) = (open(&dir.path().join("crm.db")), open(&dir.path().join("crm.db")));
    let lease = Duration::from_millis(600);
    let taken = Instant::now();
    // The holder dies without releasing: its guard never runs, its row stays.
    std::mem::forget(dead.lock_key("K", lease, Duration::ZERO).await.unwrap());
    let early = alive.lock_key("K", lease, Duration::from_millis(100)).await;
    assert!(matches!(early, Err(StoreError::Unavailable { .. })), "{early:?}");
    let lock = alive.lock_key("K", Duration::from_secs(30), Duration::from_secs(5)).await.unwrap();
    let after = taken.elapsed();
    assert!(after >= lease, "taken over after {after:?}, before the lease ended");
    assert!(after < lease + Duration::from_secs(1), "taken over only after {after:?}");
    // The new hold is a real one.
    let refused = dead.lock_key("K", lease, Duration::from_millis(100)).await;
    assert!(matches!(refused, Err(StoreError::Unavailable { .. })), "{refused:?}");
    drop(lock);
}

/// Two stores on one file, each on its own thread and runtime as two processes would be, taking one key in
/// turns: no two holders at once, and every turn is served.
#[test]
fn two_stores_on_one_file_compete_for_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.db");
    drop(open(&path)); // created and migrated once, as the first process would
    let inside = Arc::new(AtomicUsize::new(0));
    let turns = Arc::new(AtomicUsize::new(0));
    let replicas: Vec<_> = (0..2)
        .map(|_| {
            let (path, inside, turns) = (path.clone(), inside.clone(), turns.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async move {
                    let store = Arc::new(open(&path));
                    let tasks: Vec<_> = (0..10)
                        .map(|_| {
                            let (store, inside, turns) = (store.clone(), inside.clone(), turns.clone());
                            tokio::spawn(async move {
                                let lock = store.lock_key(
                                    "079123456789/CARD",
                                    Duration::from_secs(30),
                                    Duration::from_secs(30),
                                );
                                let _lock = lock.await.unwrap();
                                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders at once");
                                tokio::time::sleep(Duration::from_millis(5)).await;
                                inside.fetch_sub(1, Ordering::SeqCst);
                                turns.fetch_add(1, Ordering::SeqCst);
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                    // Let the last release reach the writer before the store goes.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                });
            })
        })
        .collect();
    for r in replicas {
        r.join().unwrap();
    }
    assert_eq!(turns.load(Ordering::SeqCst), 20);
    let left: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM key_locks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "every hold was released");
}
