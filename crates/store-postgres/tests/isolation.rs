//! The adapter's guarantees do not depend on the database's default isolation level: a bank may run
//! PostgreSQL with `default_transaction_isolation = serializable`, and the per-key steps must still see
//! what the previous holder of the key committed.

use std::sync::Arc;

use sqlx::Connection;
use store::Backend;
use store_postgres::scratch::ScratchDb;
use store_postgres::{PgConfig, PgStore};

async fn strict() -> (Arc<PgStore>, ScratchDb) {
    let db = ScratchDb::create("crm_isolation").await;
    let mut conn = sqlx::PgConnection::connect(&store_postgres::scratch::admin_url()).await.unwrap();
    sqlx::query(&format!("ALTER DATABASE \"{}\" SET default_transaction_isolation TO 'serializable'", db.name))
        .execute(&mut conn)
        .await
        .unwrap();
    let store = PgStore::open(PgConfig::new(&db.url)).await.unwrap();
    (Arc::new(store), db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_adapter_runs_read_committed_anyway() {
    let (store, _db) = strict().await;
    let level: String = sqlx::query_scalar("SHOW transaction_isolation").fetch_one(store.pool()).await.unwrap();
    assert_eq!(level, "read committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn competing_owners_under_a_serializable_default() {
    let (store, _db) = strict().await;
    store::contract::concurrent_competing_owners(store as Arc<dyn Backend>).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_creates_under_a_serializable_default() {
    let (store, _db) = strict().await;
    store::contract::concurrent_identical_creates(store as Arc<dyn Backend>).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closes_and_creates_under_a_serializable_default() {
    let (store, _db) = strict().await;
    store::contract::concurrent_closes_and_creates(store as Arc<dyn Backend>).await;
}
