//! Batched writes (the adapter's `batch` module): a request the database refuses inside a batch answers for
//! itself, and the others of its batch still commit, each with its own answer.

use std::sync::Arc;
use std::time::Duration;

use lifecycle::{CreateResult, CustomerType, IdNumber, Matching, RecordType};
use sqlx::Connection;
use store::contract::{ctx, request};
use store::{Claim, Idempotency, Store, StoreError};
use store_postgres::scratch::ScratchDb;
use store_postgres::{key_lock_id, Batching, PgConfig, PgStore};

const REFUSED: &str = "079999999999";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_request_does_not_sink_its_batch() {
    let db = ScratchDb::create("crm_batch").await;
    let mut config = PgConfig::new(&db.url);
    config.max_connections = 2;
    config.batching = Batching { max_batch: 64, concurrent: 1 };
    let store = Arc::new(PgStore::open(config).await.unwrap());
    // The database refuses every record of one customer, as a rule a DBA added might.
    sqlx::query(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$",
    )
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(&format!(
        "CREATE TRIGGER refuse BEFORE INSERT ON records FOR EACH ROW WHEN (NEW.id_number = '{REFUSED}')
         EXECUTE FUNCTION refuse()"
    ))
    .execute(store.pool())
    .await
    .unwrap();

    // The one batch slot is held up: its batch waits to read the records, which are locked here, while the
    // next requests queue behind it and form one batch.
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut held = holder.begin().await.unwrap();
    sqlx::query("LOCK TABLE records IN ACCESS EXCLUSIVE MODE").execute(&mut *held).await.unwrap();
    let spawn = |id_number: &str| {
        let (store, req) = (store.clone(), request(CustomerType::Ntb, id_number, "CREDIT_CARD", "RM001"));
        tokio::spawn(async move { store.create(&req, &ctx("r")).await })
    };
    let waiting = spawn("079000000000");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let good: Vec<String> = (1..=8).map(|n| format!("07900000000{n}")).collect();
    let mut queued: Vec<_> = good.iter().map(|n| spawn(n)).collect();
    queued.insert(4, spawn(REFUSED));
    tokio::time::sleep(Duration::from_millis(200)).await;
    held.rollback().await.unwrap();

    assert_eq!(waiting.await.unwrap().unwrap().result, CreateResult::Created);
    let refused = queued.remove(4).await.unwrap();
    assert!(matches!(refused, Err(StoreError::Internal(_))), "{refused:?}");
    for (id_number, answer) in good.iter().zip(queued) {
        let outcome = answer.await.unwrap().unwrap();
        assert_eq!(outcome.result, CreateResult::Created);
        let kept = store.get(RecordType::Lead, &outcome.id).await.unwrap().expect("the answered record is stored");
        assert_eq!(kept.record.id_number.expose(), id_number);
        assert_eq!(kept.history.len(), 1);
    }
    let found = store.search(&IdNumber::parse(REFUSED).unwrap(), None).await.unwrap();
    assert!(found.leads.is_empty() && found.opportunities.is_empty());
    // They were one batch, which fell back to running each request alone.
    assert_eq!(store.batch_fallbacks(), 1);
}

/// A batch tries its keys' locks: a key another transaction holds leaves the batch and waits alone, and the
/// rest of the batch does not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_key_waits_alone() {
    busy_key_waits_alone(false).await;
}

/// The same with events on, where the batch's write and its events share an explicit transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_key_waits_alone_with_events() {
    busy_key_waits_alone(true).await;
}

async fn busy_key_waits_alone(events: bool) {
    let db = ScratchDb::create("crm_batch").await;
    let store = one_slot(&db, events).await;
    let busy = request(CustomerType::Ntb, "079100000000", "CREDIT_CARD", "RM001");
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(key_lock_id(busy.match_key(Matching::default()).expose()))
        .execute(&mut holder)
        .await
        .unwrap();
    let spawn = |id_number: String| {
        let (store, req) = (store.clone(), request(CustomerType::Ntb, &id_number, "CREDIT_CARD", "RM002"));
        tokio::spawn(async move { store.create(&req, &ctx("r")).await })
    };
    let waiting: Vec<_> = (0..3).map(|_| spawn("079100000000".into())).collect();
    let others: Vec<_> = (1..=16).map(|n| spawn(format!("0791000001{n:02}"))).collect();
    // Every other customer is answered while the busy key is still held (a batch waiting for it would
    // never answer them, and the guard below would fail the test).
    for answer in others {
        let outcome = tokio::time::timeout(Duration::from_secs(20), answer).await.expect("answered").unwrap().unwrap();
        assert_eq!(outcome.result, CreateResult::Created);
        assert!(store.get(RecordType::Lead, &outcome.id).await.unwrap().is_some(), "answered but not stored");
    }
    assert!(waiting.iter().all(|w| !w.is_finished()), "the busy key's requests waited for its lock");
    sqlx::query("SELECT pg_advisory_unlock_all()").execute(&mut holder).await.unwrap();
    let mut results = Vec::new();
    for w in waiting {
        results.push(w.await.unwrap().unwrap().result);
    }
    results.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(results, [CreateResult::Created, CreateResult::Existing, CreateResult::Existing]);
}

/// Claims of one fresh key that arrive together share a batch, and only one of them proceeds, whoever
/// holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_a_batch_of_claims_of_a_key_proceeds() {
    let db = ScratchDb::create("crm_batch").await;
    let mut config = PgConfig::new(&db.url);
    config.max_connections = 2;
    config.batching = Batching { max_batch: 64, concurrent: 1 };
    let store = Arc::new(PgStore::open(config).await.unwrap());
    // The pool's connection is held (the other of the two is the write batches'): a first claim takes the
    // one batch slot and waits for it, while the claims behind it queue up and go in together once it is
    // done.
    let held = store.pool().acquire().await.unwrap();
    let hour = Duration::from_secs(3600);
    let first = {
        let store = store.clone();
        tokio::spawn(async move { store.claim("first", "fp", "h", hour, hour).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let claims: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.claim("together", "fp", "same-holder", hour, hour).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(held);
    assert!(matches!(first.await.unwrap().unwrap(), Claim::Proceed));
    let mut proceed = 0;
    for c in claims {
        match c.await.unwrap().unwrap() {
            Claim::Proceed => proceed += 1,
            Claim::InUse => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(proceed, 1);
}

/// A batch reads without its keys' locks and writes in one statement that changes each record only from
/// the status it read: when another writer changes a record in between, the statement leaves nothing
/// behind (no history, no answer), and the batch reads again and answers from what is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_overtaken_by_another_writer_writes_nothing_and_reads_again() {
    overtaken(false).await;
}

/// The same with events on: the batch's explicit transaction leaves nothing either, its events included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_overtaken_with_events_writes_nothing_and_reads_again() {
    overtaken(true).await;
}

async fn overtaken(events: bool) {
    let db = ScratchDb::create("crm_batch").await;
    let store = one_slot(&db, events).await;
    let lead = store.create(&request(CustomerType::Ntb, "079200000000", "CREDIT_CARD", "RM001"), &ctx("r1")).await;
    let lead = lead.unwrap().id;

    // Another writer holds the lead's row: the batch reads it open, then its write waits for the row.
    let mut other = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM records WHERE id = $1 FOR UPDATE").bind(&lead).execute(&mut *tx).await.unwrap();
    let lost = {
        let (store, lead) = (store.clone(), lead.clone());
        tokio::spawn(async move { store.close_lost(RecordType::Lead, &lead, &ctx("r2")).await })
    };
    let mut waited = false;
    for _ in 0..200 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'WITH locked%'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        if waiting > 0 {
            waited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(waited, "the batch's write did not wait for the row");
    // The other writer closes the lead won first.
    sqlx::query("UPDATE records SET status = 'Close Won', updated_at = clock_timestamp() WHERE id = $1")
        .bind(&lead)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let answer = lost.await.unwrap();
    assert!(
        matches!(answer, Err(StoreError::InvalidTransition { current: lifecycle::Status::CloseWon })),
        "{answer:?}"
    );
    assert_eq!((store.batch_conflicts(), store.batch_fallbacks()), (1, 0));
    let kept = store.get(RecordType::Lead, &lead).await.unwrap().unwrap();
    assert_eq!(kept.record.status, lifecycle::Status::CloseWon);
    assert_eq!(kept.history.len(), 1, "the batch's history row was left behind: {:?}", kept.history);
    if events {
        let lost_events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE subject LIKE '%.lost'")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(lost_events, 0, "the batch's event was left behind");
    }
}

/// One request after another, nothing else writing: each batch reads everything its plans need, so its
/// write is never refused by the database (which would count a conflict) and never falls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_alone_reads_all_it_needs() {
    let db = ScratchDb::create("crm_batch").await;
    let mut config = PgConfig::new(&db.url);
    config.batching = Batching { max_batch: 64, concurrent: 2 };
    let store = PgStore::open(config).await.unwrap();
    let lead = |owner: &str| request(CustomerType::Ntb, "079300000000", "CREDIT_CARD", owner);
    let first = store.create(&lead("RM001"), &ctx("r1")).await.unwrap();
    assert_eq!(first.result, CreateResult::Created);
    let again = store.create(&lead("RM001"), &ctx("r2")).await.unwrap();
    assert_eq!((again.result, &again.id), (CreateResult::Existing, &first.id));
    let handed = store.create(&lead("RM002"), &ctx("r3")).await.unwrap();
    assert_eq!(handed.result, CreateResult::Replaced);
    let won = store.close_won(RecordType::Lead, &handed.id, true, &ctx("r4")).await.unwrap();
    assert!(won.opportunity.is_some(), "converted");
    let etb = request(CustomerType::Etb, "079300000000", "CREDIT_CARD", "RM002");
    let opportunity = store.create(&etb, &ctx("r5a")).await.unwrap();
    assert_eq!(opportunity.result, CreateResult::Created);
    let opportunity = opportunity.id;
    let existing = store.create(&etb, &ctx("r5b")).await.unwrap();
    assert_eq!((existing.result, &existing.id), (CreateResult::Existing, &opportunity));
    // A change is stamped with the time it was made, not just after the record's previous change.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before: time::OffsetDateTime =
        sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(store.pool()).await.unwrap();
    store.close_lost(RecordType::Opportunity, &opportunity, &ctx("r6")).await.unwrap();
    let kept = store.get(RecordType::Opportunity, &opportunity).await.unwrap().unwrap();
    let lost_at = kept.history.last().unwrap().at;
    assert!(lost_at >= before, "stamped {lost_at}, before the request ({before})");
    let lost_again = store.close_lost(RecordType::Opportunity, &opportunity, &ctx("r7")).await.unwrap();
    assert_eq!(lost_again.status, lifecycle::Status::CloseLost);
    assert!(matches!(store.close_lost(RecordType::Lead, &opportunity, &ctx("r8")).await, Err(StoreError::NotFound)));
    // And after the record's last change, even when that is stamped later than the database's clock.
    let other = store.create(&request(CustomerType::Ntb, "079300000001", "CREDIT_CARD", "RM001"), &ctx("r9")).await;
    let other = other.unwrap().id;
    let ahead: time::OffsetDateTime = sqlx::query_scalar(
        "UPDATE records SET updated_at = clock_timestamp() + interval '1 hour' WHERE id = $1 RETURNING updated_at",
    )
    .bind(&other)
    .fetch_one(store.pool())
    .await
    .unwrap();
    store.close_won(RecordType::Lead, &other, false, &ctx("r10")).await.unwrap();
    let kept = store.get(RecordType::Lead, &other).await.unwrap().unwrap();
    let won_at = kept.history.last().unwrap().at;
    assert!(won_at > ahead, "stamped {won_at}, not after the record's last change ({ahead})");
    assert_eq!((store.batch_conflicts(), store.batch_fallbacks()), (0, 0));
}

/// Requests of one batch are stamped in the order they ran: a record created by one and replaced by the
/// next closes after it was created.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_of_one_batch_keep_their_order_in_time() {
    let db = ScratchDb::create("crm_batch").await;
    let store = one_slot(&db, false).await;
    // The one batch slot is held up reading the locked records while the two requests queue behind it.
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut held = holder.begin().await.unwrap();
    sqlx::query("LOCK TABLE records IN ACCESS EXCLUSIVE MODE").execute(&mut *held).await.unwrap();
    let spawn = |id_number: &str, owner: &str| {
        let (store, req) = (store.clone(), request(CustomerType::Ntb, id_number, "CREDIT_CARD", owner));
        tokio::spawn(async move { store.create(&req, &ctx("r")).await })
    };
    let waiting = spawn("079400000000", "RM001");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = spawn("079400000001", "RM001");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = spawn("079400000001", "RM002");
    tokio::time::sleep(Duration::from_millis(100)).await;
    held.rollback().await.unwrap();

    waiting.await.unwrap().unwrap();
    let first = first.await.unwrap().unwrap();
    let second = second.await.unwrap().unwrap();
    assert_eq!((first.result, second.result), (CreateResult::Created, CreateResult::Replaced));
    assert_eq!(second.closed_record_ids, std::slice::from_ref(&first.id));
    let replaced = store.get(RecordType::Lead, &first.id).await.unwrap().unwrap();
    let (created, closed) = (replaced.history[0].at, replaced.history[1].at);
    assert!(closed > created, "closed at {closed}, created at {created}");
    assert_eq!(store.batch_fallbacks(), 0);
}

/// A store whose writes go through one batch slot.
async fn one_slot(db: &ScratchDb, events: bool) -> Arc<PgStore> {
    let mut config = PgConfig::new(&db.url);
    config.events = events;
    config.batching = Batching { max_batch: 64, concurrent: 1 };
    Arc::new(PgStore::open(config).await.unwrap())
}
