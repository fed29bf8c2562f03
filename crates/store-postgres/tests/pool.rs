//! The adapter's connection pool: connections are not pinged on every use, yet one that the server closed
//! while it sat idle is never handed to a request.

use std::time::Duration;

use lifecycle::{CreateResult, CustomerType, RecordType};
use sqlx::Connection;
use store::contract::{ctx, request};
use store::Store;
use store_postgres::scratch::ScratchDb;
use store_postgres::{PgConfig, PgStore};

/// Closes, from the server's side, every connection the service holds to `url`'s database; returns how many.
async fn drop_service_connections(url: &str) -> i64 {
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    let closed: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'integration-service'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    admin.close().await.unwrap();
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_server_closed_while_idle_are_not_used() {
    let db = ScratchDb::create("crm_pool").await;
    let mut config = PgConfig::new(&db.url);
    config.max_connections = 4;
    let store = PgStore::open(config).await.unwrap();
    // Writes (batched) and reads leave their connections idle in the pool.
    let first = store.create(&request(CustomerType::Ntb, "079200000000", "CREDIT_CARD", "RM001"), &ctx("a")).await;
    let first = first.unwrap();
    assert!(store.get(RecordType::Lead, &first.id).await.unwrap().is_some());

    // A database restart, or a firewall dropping quiet connections, closes them while they wait.
    assert!(drop_service_connections(&db.url).await >= 1, "the service held a connection");
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // Every step still succeeds: the closed connections are found out before a request uses them.
    let second = store.create(&request(CustomerType::Ntb, "079200000001", "CREDIT_CARD", "RM001"), &ctx("b")).await;
    assert_eq!(second.unwrap().result, CreateResult::Created);
    let kept = store.get(RecordType::Lead, &first.id).await.unwrap();
    assert_eq!(kept.expect("the first record is stored").record.id, first.id);
    let reused = store.create(&request(CustomerType::Ntb, "079200000000", "CREDIT_CARD", "RM001"), &ctx("c")).await;
    assert_eq!(reused.unwrap().result, CreateResult::Existing);
}

/// A server setting asked for in the store's URL (`options[NAME]=VALUE`, sqlx's form of libpq's `options`)
/// reaches the service's sessions beside the settings the adapter adds itself: the README's way of having
/// the service's own log compressed (`wal_compression`) without changing the whole server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_in_the_url_reach_the_sessions_beside_the_adapters_own() {
    let db = ScratchDb::create("crm_pool_options").await;
    let sep = if db.url.contains('?') { '&' } else { '?' };
    let store = PgStore::open(PgConfig::new(format!("{}{sep}options[wal_compression]=lz4", db.url))).await.unwrap();
    let created = store.create(&request(CustomerType::Ntb, "079200000002", "CREDIT_CARD", "RM001"), &ctx("d")).await;
    assert_eq!(created.unwrap().result, CreateResult::Created);
    let (compression, counts): (String, String) =
        sqlx::query_as("SELECT current_setting('wal_compression'), current_setting('crm.counts_by_writer')")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(compression, "lz4");
    assert_eq!(counts, "on", "the adapter's own setting is still there");
}
