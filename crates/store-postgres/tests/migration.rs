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

/// Migration 0008: the daily counts of rejections and hand-overs start with what the store already holds (its
/// history, and a CRM backend's audit), the triggers count what comes after, and folding changes no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_counts_start_from_what_is_stored_and_follow_the_audit() {
    use store::reports::{HandoverRow, Period, RejectionRow};
    use store::{Reports, Sidecar};
    use time::macros::datetime;

    let db = ScratchDb::create("crm_rollups").await;
    let pool = PgPool::connect(&db.url).await.unwrap();
    let before: Vec<_> = MIGRATOR.migrations.iter().filter(|m| m.version < 8).cloned().collect();
    assert!(before.len() < MIGRATOR.migrations.len(), "0008 is among the migrations");
    Migrator { migrations: before.into(), ..Migrator::DEFAULT }.run(&pool).await.unwrap();

    // Records: a (RM1) replaced by b (RM2) on 2026-01-01; b lost to the credit bureau on 2026-01-02.
    for (id, owner, created, updated) in [
        ("a", "RM1", "2026-01-01T08:00:00Z", "2026-01-01T09:00:00Z"),
        ("b", "RM2", "2026-01-01T09:00:00Z", "2026-01-02T10:00:00Z"),
    ] {
        sqlx::query(
            "INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number, product,
                 channel, created_at, updated_at)
             VALUES ($1, 'LEAD', 'Close Lost', 'K/CARD', $2, 'NTB', 'K', 'CARD', 'MOBILE_APP', $3::timestamptz,
                 $4::timestamptz)",
        )
        .bind(id)
        .bind(owner)
        .bind(created)
        .bind(updated)
        .execute(&pool)
        .await
        .unwrap();
    }
    // The history, and the same story in the audit (records s1, s2 of a CRM), each change in its own table.
    let changes = [
        ("a", "s1", None, "New Lead", "2026-01-01T08:00:00Z", None, Some("RM1")),
        ("a", "s1", Some("New Lead"), "Close Lost", "2026-01-01T09:00:00Z", Some("OWNER_CHANGED"), None),
        ("b", "s2", None, "New Lead", "2026-01-01T09:00:00Z", None, Some("RM2")),
        ("b", "s2", Some("New Lead"), "Close Lost", "2026-01-02T10:00:00Z", Some("NCB_REJECTED"), None),
    ];
    let write = |stored: bool| {
        let pool = pool.clone();
        async move {
            for (record, crm, from, to, at, reason, owner) in changes {
                if stored {
                    sqlx::query(
                        "INSERT INTO history (record_id, from_status, to_status, at, request_id, channel, reason)
                         VALUES ($1, $2, $3, $4::timestamptz, 'r', 'MOBILE_APP', $5)",
                    )
                    .bind(record)
                    .bind(from)
                    .bind(to)
                    .bind(at)
                    .bind(reason)
                    .execute(&pool)
                    .await
                    .unwrap();
                }
                sqlx::query(
                    "INSERT INTO audit (record_id, record_type, match_key, from_status, to_status, at, request_id,
                         channel, reason, owner_id, product)
                     VALUES ($1, 'LEAD', $2, $3, $4, $5::timestamptz, 'r', 'MOBILE_APP', $6, $7,
                             CASE WHEN $7::text IS NULL THEN NULL ELSE 'CARD' END)",
                )
                .bind(if stored { crm.to_owned() } else { format!("late-{crm}") })
                .bind(if stored { "K/CARD" } else { "L/CARD" })
                .bind(from)
                .bind(to)
                .bind(at)
                .bind(reason)
                .bind(owner)
                .execute(&pool)
                .await
                .unwrap();
            }
        }
    };
    write(true).await;

    let store = PgStore::open(PgConfig::new(&db.url)).await.unwrap();
    // The same story again in the audit, after the migration: the triggers count it.
    write(false).await;

    let rejection = |reason: &str, count| RejectionRow {
        reason: Some(lifecycle::Reason::parse(reason).unwrap()),
        channel: lifecycle::Channel::parse("MOBILE_APP").unwrap(),
        product: Product::parse("CARD").unwrap(),
        count,
    };
    let handover = |count| HandoverRow {
        from_owner: lifecycle::OwnerId::parse("RM1").unwrap(),
        to_owner: lifecycle::OwnerId::parse("RM2").unwrap(),
        count,
    };
    let audit = store.audit_reports();
    for round in ["before folding", "folded"] {
        if round == "folded" {
            assert!(store.fold().await.unwrap() > 0, "the audit's later changes were waiting to be folded");
            assert_eq!(store.fold().await.unwrap(), 0, "nothing twice");
        }
        for (from, to) in [
            (datetime!(2026-01-01 00:00 UTC), datetime!(2026-01-03 00:00 UTC)), // whole days: the counts
            (datetime!(2026-01-01 07:00 UTC), datetime!(2026-01-02 11:00 UTC)), // the changes themselves
        ] {
            let period = Period::new(from, to);
            let what = format!("{round}, {from} - {to}");
            let records = store.rejections(&period).await.unwrap().rows;
            assert_eq!(records, [rejection("NCB_REJECTED", 1), rejection("OWNER_CHANGED", 1)], "{what}");
            assert_eq!(store.handovers(&period).await.unwrap().rows, [handover(1)], "{what}");
            let crm = audit.rejections(&period).await.unwrap().rows;
            assert_eq!(crm, [rejection("NCB_REJECTED", 2), rejection("OWNER_CHANGED", 2)], "audit: {what}");
            assert_eq!(audit.handovers(&period).await.unwrap().rows, [handover(2)], "audit: {what}");
        }
    }
    drop(store);
}
