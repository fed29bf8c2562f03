//! What the SQLite adapter guarantees beyond the shared contract: the database itself refuses a second
//! open record per key, migrations are idempotent, the matching mode cannot change under a store, and a
//! request that fails half-way through its writes leaves nothing behind in the batch that commits.

use lifecycle::Matching;
use rusqlite::Connection;
use store_sqlite::{migrate, OpenError, SqliteConfig, SqliteStore};

fn insert(conn: &Connection, id: &str, record_type: &str, status: &str) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number, product,
             channel, created_at, updated_at)
         VALUES (?1, ?2, ?3, 'K/P', 'RM1', 'NTB', 'K', 'P', 'C', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')",
        [id, record_type, status],
    )
}

#[test]
fn the_database_refuses_a_second_open_record_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.db");
    assert_eq!(migrate(&path).unwrap(), store_sqlite::MIGRATIONS.len());
    assert_eq!(migrate(&path).unwrap(), 0, "idempotent");
    let conn = Connection::open(&path).unwrap();
    insert(&conn, "l1", "LEAD", "New Lead").unwrap();
    let second = insert(&conn, "l2", "LEAD", "New Lead").unwrap_err();
    assert!(second.to_string().contains("UNIQUE"), "{second}");
    // Closed records and the other type are not limited.
    insert(&conn, "l3", "LEAD", "Close Lost").unwrap();
    insert(&conn, "l4", "LEAD", "Close Won").unwrap();
    insert(&conn, "o1", "OPPORTUNITY", "New Opportunity").unwrap();
    assert!(insert(&conn, "o2", "OPPORTUNITY", "New Opportunity").is_err());
    // A status that does not belong to the type is refused too.
    assert!(insert(&conn, "x", "LEAD", "New Opportunity").is_err());
}

#[tokio::test]
async fn records_written_outside_the_service_stay_readable_and_heal() {
    use lifecycle::{CreateResult, CustomerType, IdNumber, RecordType};
    use store::contract::{ctx, request};
    use store::Store;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.db");
    migrate(&path).unwrap();
    // A record another system wrote: a phone and an owner code the API would refuse.
    Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number, phone,
                 product, channel, created_at, updated_at)
             VALUES ('ext1', 'LEAD', 'New Lead', 'OUT1/CARD', ' rm 7 ', 'NTB', 'OUT1', '0901 234 567', 'CARD', 'CRM',
                 '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')",
            [],
        )
        .unwrap();
    let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
    let got = store.get(RecordType::Lead, "ext1").await.unwrap().unwrap();
    assert_eq!(got.record.phone.unwrap().expose(), "0901 234 567");
    assert_eq!(store.search(&IdNumber::parse("OUT1").unwrap(), None).await.unwrap().leads.len(), 1);
    let replaced = store.create(&request(CustomerType::Ntb, "OUT1", "CARD", "RM001"), &ctx("r")).await.unwrap();
    assert_eq!(replaced.result, CreateResult::Replaced);
    assert_eq!(replaced.closed_record_ids, vec!["ext1".to_owned()]);
    store.shutdown();
}

#[test]
fn an_unknown_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.db");
    Connection::open(&path).unwrap().pragma_update(None, "user_version", -1).unwrap();
    assert!(matches!(migrate(&path), Err(OpenError::TooNew { .. })));
    Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
    assert!(matches!(migrate(&path), Err(OpenError::TooNew { .. })));
}

#[test]
fn matching_cannot_change_under_an_existing_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.db");
    SqliteStore::open(SqliteConfig::new(&path)).unwrap().shutdown();
    let mut config = SqliteConfig::new(&path);
    config.matching = Matching::IdNumber;
    match SqliteStore::open(config) {
        Err(e @ OpenError::MatchingChanged { .. }) => assert!(e.to_string().contains("matching")),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("opened with a different matching mode"),
    }
}

/// Migration 0007: id numbers written before the service upper-cased them are brought into that form, and
/// two open records of one type whose keys then collide are merged (the older closed), never left failing.
#[tokio::test]
async fn id_numbers_are_upper_cased_and_colliding_open_records_merged() {
    use lifecycle::{CreateResult, CustomerType, IdNumber, Product, RecordType};
    use store::contract::{ctx, request};
    use store::Store;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.db");
    let index = store_sqlite::MIGRATIONS.iter().position(|(name, _)| *name == "0007_id_number_case").unwrap();
    {
        // A store as the release before wrote it.
        let conn = Connection::open(&path).unwrap();
        for (_, sql) in &store_sqlite::MIGRATIONS[..index] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", index as i64).unwrap();
        let row = |id: &str, record_type: &str, status: &str, id_number: &str, product: &str, owner: &str| {
            conn.execute(
                "INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number,
                     product, channel, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4 || '/' || ?5, ?6, 'NTB', ?4, ?5, 'C', '2026-01-01T00:00:00.000000Z',
                     '2026-01-01T00:00:00.000000Z')",
                [id, record_type, status, id_number, product, owner],
            )
            .unwrap();
        };
        row("old", "LEAD", "New Lead", "b1234567", "CARD", "RM1");
        row("new", "LEAD", "New Lead", "B1234567", "CARD", "RM2");
        row("won", "LEAD", "Close Won", "b1234567", "CARD", "RM1");
        row("opp", "OPPORTUNITY", "New Opportunity", "b1234567", "LOAN", "RM1");
        conn.execute(
            "INSERT INTO audit (record_id, record_type, match_key, to_status, at, request_id, channel)
             VALUES ('sf1', 'LEAD', 'x9/Card', 'New Lead', '2026-01-01T00:00:00.000000Z', 'r', 'C')",
            [],
        )
        .unwrap();
    }
    assert_eq!(migrate(&path).unwrap(), store_sqlite::MIGRATIONS.len() - index);
    let conn = Connection::open(&path).unwrap();
    let keys: Vec<(String, String, String)> = conn
        .prepare("SELECT id, id_number, match_key FROM records ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (id, id_number, key) in &keys {
        assert_eq!(id_number, "B1234567", "{id}");
        assert!(key.starts_with("B1234567/"), "{id}: {key}");
    }
    let audit: String = conn.query_row("SELECT match_key FROM audit", [], |r| r.get(0)).unwrap();
    assert_eq!(audit, "X9/Card", "the id part only; the product keeps its case");

    let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
    let old = store.get(RecordType::Lead, "old").await.unwrap().unwrap();
    assert_eq!(old.record.status.as_str(), "Close Lost", "the older of the colliding open leads");
    let merged = old.history.last().unwrap();
    assert_eq!(
        (merged.request_id.as_str(), merged.reason.as_ref().map(|r| r.as_str())),
        ("migration-0007", Some("ID_NUMBER_CASE_MERGED"))
    );
    assert_eq!(store.get(RecordType::Lead, "new").await.unwrap().unwrap().record.status.as_str(), "New Lead");
    assert_eq!(store.get(RecordType::Lead, "won").await.unwrap().unwrap().record.status.as_str(), "Close Won");
    // The keys work as the service now forms them, whatever case a request uses.
    let found = store.create(&request(CustomerType::Ntb, "b1234567", "CARD", "RM2"), &ctx("r1")).await.unwrap();
    assert_eq!((found.result, found.id.as_str()), (CreateResult::Existing, "new"));
    let opp = store.create(&request(CustomerType::Etb, "B1234567", "LOAN", "RM1"), &ctx("r2")).await.unwrap();
    assert_eq!((opp.result, opp.id.as_str()), (CreateResult::Existing, "opp"));
    let all = store.search(&IdNumber::parse("b1234567").unwrap(), Some(&Product::parse("CARD").unwrap())).await;
    assert_eq!(all.unwrap().leads.len(), 3);
    store.shutdown();
}

/// Migration 0008: the daily counts of rejections and hand-overs start with what the store already holds, so
/// reports over whole days answer as the changes themselves do.
#[tokio::test]
async fn daily_counts_start_from_the_history_already_stored() {
    use store::reports::{HandoverRow, Period, RejectionRow};
    use store::Reports;
    use time::macros::datetime;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.db");
    let index = store_sqlite::MIGRATIONS.iter().position(|(name, _)| *name == "0008_report_rollups").unwrap();
    {
        let conn = Connection::open(&path).unwrap();
        for (_, sql) in &store_sqlite::MIGRATIONS[..index] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", index as i64).unwrap();
        // a (RM1) replaced by b (RM2) on 2026-01-01; c lost to the credit bureau on 2026-01-02.
        let record = |id: &str, status: &str, owner: &str, created: &str, updated: &str| {
            conn.execute(
                "INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number,
                     product, channel, created_at, updated_at)
                 VALUES (?1, 'LEAD', ?2, 'K/CARD', ?3, 'NTB', 'K', 'CARD', 'MOBILE_APP', ?4, ?5)",
                [id, status, owner, created, updated],
            )
            .unwrap();
        };
        let change = |id: &str, from: Option<&str>, to: &str, at: &str, reason: Option<&str>| {
            conn.execute(
                "INSERT INTO history (record_id, from_status, to_status, at, request_id, channel, reason)
                 VALUES (?1, ?2, ?3, ?4, 'r', 'MOBILE_APP', ?5)",
                rusqlite::params![id, from, to, at, reason],
            )
            .unwrap();
        };
        let (t0, t1, t2) =
            ("2026-01-01T08:00:00.000000Z", "2026-01-01T09:00:00.000000Z", "2026-01-02T10:00:00.000000Z");
        record("a", "Close Lost", "RM1", t0, t1);
        record("b", "Close Lost", "RM2", t1, t2);
        change("a", None, "New Lead", t0, None);
        change("a", Some("New Lead"), "Close Lost", t1, Some("OWNER_CHANGED"));
        change("b", None, "New Lead", t1, None);
        change("b", Some("New Lead"), "Close Lost", t2, Some("NCB_REJECTED"));
    }
    let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
    let rejection = |reason: &str, count| RejectionRow {
        reason: Some(lifecycle::Reason::parse(reason).unwrap()),
        channel: lifecycle::Channel::parse("MOBILE_APP").unwrap(),
        product: lifecycle::Product::parse("CARD").unwrap(),
        count,
    };
    let handover = HandoverRow {
        from_owner: lifecycle::OwnerId::parse("RM1").unwrap(),
        to_owner: lifecycle::OwnerId::parse("RM2").unwrap(),
        count: 1,
    };
    for (from, to) in [
        (datetime!(2026-01-01 00:00 UTC), datetime!(2026-01-03 00:00 UTC)), // whole days: the counts
        (datetime!(2026-01-01 07:00 UTC), datetime!(2026-01-02 11:00 UTC)), // the changes themselves
    ] {
        let period = Period::new(from, to);
        let rejections = store.rejections(&period).await.unwrap().rows;
        assert_eq!(rejections, [rejection("NCB_REJECTED", 1), rejection("OWNER_CHANGED", 1)], "{from} - {to}");
        assert_eq!(store.handovers(&period).await.unwrap().rows, std::slice::from_ref(&handover), "{from} - {to}");
    }
    // One day only: the hand-over's.
    let first = Period::new(datetime!(2026-01-01 00:00 UTC), datetime!(2026-01-02 00:00 UTC));
    assert_eq!(store.rejections(&first).await.unwrap().rows, [rejection("OWNER_CHANGED", 1)]);
    store.shutdown();
}

#[tokio::test]
async fn a_request_that_fails_after_writing_leaves_nothing_of_itself() {
    use lifecycle::{CreateResult, CustomerType, IdNumber, RecordType, Status};
    use store::contract::{ctx, request};
    use store::Store;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.db");
    let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
    let first = store.create(&request(CustomerType::Ntb, "REF1", "CARD", "RM001"), &ctx("r1")).await.unwrap();
    // The database refuses the new record's first history row, after the owner change has closed the old
    // record, written its history, and inserted the new record: the request fails half-way through.
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse_rm666 BEFORE INSERT ON history
             WHEN NEW.from_status IS NULL AND (SELECT owner_id FROM records WHERE id = NEW.record_id) = 'RM666'
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
    let refused = store.create(&request(CustomerType::Ntb, "REF1", "CARD", "RM666"), &ctx("r2")).await;
    assert!(refused.is_err(), "the refused request failed: {refused:?}");
    assert_eq!(store.batch_reruns(), 1, "its batch ran again, job by job, to undo it");

    let old = store.get(RecordType::Lead, &first.id).await.unwrap().unwrap();
    assert_eq!(old.record.status, Status::NewLead, "the close of the old record was undone");
    assert_eq!(old.history.len(), 1, "and its history with it");
    let found = store.search(&IdNumber::parse("REF1").unwrap(), None).await.unwrap();
    assert_eq!(found.leads.len(), 1, "no record of the refused request remains");
    let again = store.create(&request(CustomerType::Ntb, "REF1", "CARD", "RM001"), &ctx("r3")).await.unwrap();
    assert_eq!((again.result, again.id), (CreateResult::Existing, first.id));
    store.shutdown();
}
