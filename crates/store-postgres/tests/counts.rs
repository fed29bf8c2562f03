//! Migration 0012: the service's write statements append the reports' daily counts themselves, and the
//! history's trigger counts only for sessions that do not (a replica of an earlier release during a rolling
//! upgrade, a program writing the history by hand).

use lifecycle::{Channel, CreateResult, CustomerType, Reason, RecordType};
use sqlx::{Connection, PgConnection};
use store::contract::request;
use store::{RequestContext, Store};
use store_postgres::check::{COUNTS_FROM_HISTORY, COUNTS_KEPT};
use store_postgres::scratch::ScratchDb;
use store_postgres::{Batching, PgConfig, PgStore};

use store_postgres::check::CountRow as Row;

/// Runs 400 changes of every kind, several at once so that batches gather them, and returns how many records
/// creates closed and how many close-losts were made.
async fn run(store: &PgStore) -> (usize, usize) {
    let channels = ["MOBILE_APP", "LENDING_APP", "CARDS_APP"];
    let products = ["CARD", "LOAN"];
    let reasons = ["NCB_REJECTED", "AML_REJECTED", "CUSTOMER_DECLINED"];
    let mut open: Vec<(RecordType, String)> = Vec::new();
    let (mut replaced, mut lost) = (0, 0);
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for round in 0..100 {
        // Four creates on distinct keys at once, then a close of what is open.
        let mut creates = Vec::new();
        for k in 0..4 {
            let channel = Channel::parse(channels[next(3)]).unwrap();
            let customer_type = if next(2) == 0 { CustomerType::Ntb } else { CustomerType::Etb };
            let owner = format!("RM00{}", 1 + next(3));
            let mut r = request(customer_type, &format!("K{}{k}", next(3)), products[next(2)], &owner);
            r.channel = channel.clone();
            creates.push((r, RequestContext::new(format!("c{round}-{k}"), channel, None)));
        }
        let c = |i: usize| store.create(&creates[i].0, &creates[i].1);
        let (a, b, x, y) = tokio::join!(c(0), c(1), c(2), c(3));
        for out in [a, b, x, y] {
            let out = out.unwrap();
            assert_eq!(out.result == CreateResult::Replaced, !out.closed_record_ids.is_empty());
            replaced += out.closed_record_ids.len();
            open.retain(|(_, id)| !out.closed_record_ids.contains(id));
            if out.result != CreateResult::Existing {
                open.push((out.record_type, out.id));
            }
        }
        if open.is_empty() {
            continue;
        }
        let (record_type, id) = open.swap_remove(next(open.len()));
        let channel = Channel::parse(channels[next(3)]).unwrap();
        if next(3) == 0 {
            let ctx = RequestContext::new(format!("w{round}"), channel, None);
            store.close_won(record_type, &id, record_type == RecordType::Lead, &ctx).await.unwrap();
        } else {
            let reason = Reason::parse(reasons[next(3)]).unwrap();
            let ctx = RequestContext::new(format!("l{round}"), channel, Some(reason));
            store.close_lost(record_type, &id, &ctx).await.unwrap();
            lost += 1;
        }
    }
    (replaced, lost)
}

async fn counts_match_the_history(batching: Batching) {
    let db = ScratchDb::create("crm_counts").await;
    let mut config = PgConfig::new(&db.url);
    config.batching = batching;
    let store = PgStore::open(config).await.unwrap();
    let (replaced, lost) = run(&store).await;
    assert!(replaced > 20 && lost > 20, "replaced {replaced}, lost {lost}");
    let kept: Vec<Row> = sqlx::query_as(COUNTS_KEPT).fetch_all(store.pool()).await.unwrap();
    let recounted: Vec<Row> = sqlx::query_as(COUNTS_FROM_HISTORY).fetch_all(store.pool()).await.unwrap();
    let total = |kind: &str| kept.iter().filter(|r| r.0 == kind).map(|r| r.6).sum::<i64>() as usize;
    assert_eq!(total("handover"), replaced, "hand-overs");
    assert_eq!(total("rejection"), replaced + lost, "rejections");
    assert_eq!(kept, recounted);
    assert_eq!(store.batch_fallbacks(), 0, "no batch fell back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_writes_count_what_the_history_holds() {
    counts_match_the_history(Batching::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_writes_count_what_the_history_holds() {
    counts_match_the_history(Batching { max_batch: 1, ..Batching::default() }).await;
}

/// A session without `crm.counts_by_writer` (an earlier release's, or a program's) is still counted by the
/// trigger; one with it is left to its own statements.
#[tokio::test]
async fn the_trigger_counts_only_for_sessions_that_do_not() {
    let db = ScratchDb::create("crm_counts").await;
    PgStore::open(PgConfig::new(&db.url)).await.unwrap().shutdown().await;
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number, product,
             channel, created_at, updated_at)
         VALUES ('old', 'LEAD', 'Close Lost', 'K/CARD', 'RM1', 'NTB', 'K', 'CARD', 'BRANCH', now(), now())",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let lose = "INSERT INTO history (record_id, from_status, to_status, at, request_id, channel, reason)
                VALUES ('old', 'New Lead', 'Close Lost', now(), 'r', 'BRANCH', 'NCB_REJECTED')";
    let counted = "SELECT COALESCE(sum(n), 0)::bigint FROM report_rejections_new WHERE channel = 'BRANCH'";
    sqlx::query(lose).execute(&mut conn).await.unwrap();
    let n: i64 = sqlx::query_scalar(counted).fetch_one(&mut conn).await.unwrap();
    assert_eq!(n, 1, "a session without the setting is counted by the trigger");
    sqlx::query("SET crm.counts_by_writer = on").execute(&mut conn).await.unwrap();
    sqlx::query(lose).execute(&mut conn).await.unwrap();
    let n: i64 = sqlx::query_scalar(counted).fetch_one(&mut conn).await.unwrap();
    assert_eq!(n, 1, "a session with it is left to its own statements");
}
