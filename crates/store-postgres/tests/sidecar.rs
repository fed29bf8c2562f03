//! The sidecar contract (what a CRM backend keeps beside the CRM) on PostgreSQL, a fresh database per test,
//! plus what only a session lock shows: a holder whose connection died loses the key at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Connection;
use store::{Sidecar, StoreError};
use store_postgres::scratch::{admin_url, ScratchDb};
use store_postgres::{PgConfig, PgStore};

async fn fresh() -> (Arc<dyn Sidecar>, ScratchDb) {
    let db = ScratchDb::create("crm_sidecar").await;
    let store = PgStore::open(PgConfig::new(&db.url)).await.unwrap();
    (Arc::new(store), db)
}

async fn replica(db: &ScratchDb) -> Arc<dyn Sidecar> {
    Arc::new(PgStore::open(PgConfig::new(&db.url)).await.unwrap())
}

store::sidecar_suite!(fresh, replica);

async fn with_outbox() -> (Arc<dyn Sidecar>, Arc<dyn store::events::Outbox>, ScratchDb) {
    let db = ScratchDb::create("crm_sidecar").await;
    let store = Arc::new(PgStore::open(PgConfig::new(&db.url)).await.unwrap());
    (store.clone(), store, db)
}

store::sidecar_outbox_suite!(with_outbox);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_connection_died_loses_the_key() {
    let db = ScratchDb::create("crm_sidecar").await;
    let (dying, alive) =
        (PgStore::open(PgConfig::new(&db.url)).await.unwrap(), PgStore::open(PgConfig::new(&db.url)).await.unwrap());
    let lease = Duration::from_secs(30);
    let held = dying.lock_key("K", lease, Duration::ZERO).await.unwrap();
    let early = alive.lock_key("K", lease, Duration::from_millis(100)).await;
    assert!(matches!(early, Err(StoreError::Unavailable { .. })), "{early:?}");
    // The holder's session ends (its process was killed, its network went away).
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
         WHERE l.locktype = 'advisory' AND d.datname = $1",
    )
    .bind(&db.name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(killed, [true], "one session held the key");
    let started = Instant::now();
    let lock = alive.lock_key("K", lease, Duration::from_secs(5)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "taken over only after {:?}", started.elapsed());
    // The dead holder's release fails quietly, and does not free the new holder's lock.
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = dying.lock_key("K", lease, Duration::from_millis(100)).await;
    assert!(matches!(refused, Err(StoreError::Unavailable { .. })), "{refused:?}");
    drop(lock);
    drop(dying.lock_key("K", lease, Duration::from_secs(5)).await.unwrap());
    let _ = admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_in_one_process_do_not_hold_connections() {
    let db = ScratchDb::create("crm_sidecar").await;
    let mut config = PgConfig::new(&db.url);
    // One for the holder, one for the single waiter that polls, one for everything else.
    config.max_connections = 3;
    let store = Arc::new(PgStore::open(config).await.unwrap());
    let held = store.lock_key("busy", Duration::from_secs(30), Duration::ZERO).await.unwrap();
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            // Each lets go at once: a hold kept in a finished task would block the others.
            tokio::spawn(async move {
                store.lock_key("busy", Duration::from_secs(30), Duration::from_secs(30)).await.map(drop)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Eight waiters on one key, three connections: another key and readiness still get through.
    // (Generous waits: a new connection can be slow on a busy test machine.)
    drop(store.lock_key("other", Duration::from_secs(30), Duration::from_secs(10)).await.unwrap());
    assert!(waiters.iter().all(|w| !w.is_finished()), "the waiters still wait");
    store.sidecar_ready().await.unwrap();
    drop(held);
    for w in waiters {
        w.await.unwrap().unwrap();
    }
}
