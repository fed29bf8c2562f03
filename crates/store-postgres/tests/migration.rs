//! Migration 0007 on PostgreSQL: id numbers written before the service upper-cased them are brought into that
//! form, and two open records of one type whose keys then collide are merged (the older closed), never left
//! failing on the unique index.

use lifecycle::{CreateResult, CustomerType, IdNumber, Product, RecordType};
use sqlx::migrate::Migrator;
use sqlx::PgPool;
use store::contract::{ctx, request};
use store::Store;
use store_postgres::scratch::ScratchDb;
use store_postgres::{PgConfig, PgStore, MIGRATOR};

async fn row(pool: &PgPool, id: &str, record_type: &str, status: &str, id_number: &str, product: &str) {
    sqlx::query(
        "INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number, product,
             channel, created_at, updated_at)
         VALUES ($1, $2, $3, $4 || '/' || $5, 'RM1', 'NTB', $4, $5, 'C', now(), now())",
    )
    .bind(id)
    .bind(record_type)
    .bind(status)
    .bind(id_number)
    .bind(product)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_numbers_are_upper_cased_and_colliding_open_records_merged() {
    let db = ScratchDb::create("crm_migration").await;
    let pool = PgPool::connect(&db.url).await.unwrap();
    // The schema as the release before left it.
    let before: Vec<_> = MIGRATOR.migrations.iter().filter(|m| m.version < 7).cloned().collect();
    assert!(before.len() < MIGRATOR.migrations.len(), "0007 is among the migrations");
    Migrator { migrations: before.into(), ..Migrator::DEFAULT }.run(&pool).await.unwrap();
    row(&pool, "old", "LEAD", "New Lead", "b1234567", "CARD").await;
    row(&pool, "new", "LEAD", "New Lead", "B1234567", "CARD").await;
    row(&pool, "won", "LEAD", "Close Won", "b1234567", "CARD").await;
    row(&pool, "opp", "OPPORTUNITY", "New Opportunity", "b1234567", "LOAN").await;
    sqlx::query(
        "INSERT INTO audit (record_id, record_type, match_key, to_status, at, request_id, channel)
         VALUES ('sf1', 'LEAD', 'x9/Card', 'New Lead', now(), 'r', 'C')",
    )
    .execute(&pool)
    .await
    .unwrap();

    let store = PgStore::open(PgConfig::new(&db.url)).await.unwrap();
    let keys: Vec<(String, String, String)> =
        sqlx::query_as("SELECT id, id_number, match_key FROM records").fetch_all(&pool).await.unwrap();
    for (id, id_number, key) in &keys {
        assert_eq!(id_number, "B1234567", "{id}");
        assert!(key.starts_with("B1234567/"), "{id}: {key}");
    }
    let audit: String = sqlx::query_scalar("SELECT match_key FROM audit").fetch_one(&pool).await.unwrap();
    assert_eq!(audit, "X9/Card", "the id part only; the product keeps its case");

    let old = store.get(RecordType::Lead, "old").await.unwrap().unwrap();
    assert_eq!(old.record.status.as_str(), "Close Lost", "the older of the colliding open leads");
    let merged = old.history.last().unwrap();
    assert_eq!(merged.request_id, "migration-0007");
    assert_eq!(merged.reason.as_ref().map(|r| r.as_str()), Some("ID_NUMBER_CASE_MERGED"));
    assert_eq!(store.get(RecordType::Lead, "new").await.unwrap().unwrap().record.status.as_str(), "New Lead");
    assert_eq!(store.get(RecordType::Lead, "won").await.unwrap().unwrap().record.status.as_str(), "Close Won");
    let found = store.create(&request(CustomerType::Ntb, "b1234567", "CARD", "RM1"), &ctx("r1")).await.unwrap();
    assert_eq!((found.result, found.id.as_str()), (CreateResult::Existing, "new"));
    let opp = store.create(&request(CustomerType::Etb, "B1234567", "LOAN", "RM1"), &ctx("r2")).await.unwrap();
    assert_eq!((opp.result, opp.id.as_str()), (CreateResult::Existing, "opp"));
    let all = store.search(&IdNumber::parse("b1234567").unwrap(), Some(&Product::parse("CARD").unwrap())).await;
    assert_eq!(all.unwrap().leads.len(), 3);
    pool.close().await;
}
