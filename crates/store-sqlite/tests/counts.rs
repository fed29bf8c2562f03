//! Migration 0011: the writer adds up the rejections and hand-overs reports' counts itself. After a long run
//! of every kind of change through the store, its counts must be exactly what counting the history from
//! scratch gives.

use lifecycle::{Channel, CreateResult, CustomerType, Reason, RecordType};
use rusqlite::Connection;
use store::contract::request;
use store::{RequestContext, Store};
use store_sqlite::{recount_from_history, SqliteConfig, SqliteStore};

/// The rows of both counts tables for this store's own records, in a fixed order.
fn counts(conn: &Connection) -> Vec<String> {
    let mut rows = Vec::new();
    for sql in [
        "SELECT day, reason, channel, product, n FROM report_rejections WHERE source = 'records' ORDER BY 1, 2, 3, 4",
        "SELECT day, from_owner, to_owner, channel, product, n FROM report_handovers WHERE source = 'records'
         ORDER BY 1, 2, 3, 4, 5",
    ] {
        let mut stmt = conn.prepare(sql).unwrap();
        let n = stmt.column_count();
        let mut q = stmt.query([]).unwrap();
        while let Some(r) = q.next().unwrap() {
            let fields: Vec<String> = (0..n)
                .map(|i| {
                    r.get_ref(i)
                        .unwrap()
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|_| r.get::<_, i64>(i).unwrap().to_string())
                })
                .collect();
            rows.push(fields.join("|"));
        }
    }
    rows
}

#[tokio::test]
async fn the_writers_counts_are_what_the_history_adds_up_to() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.db");
    let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
    let channels = ["MOBILE_APP", "LENDING_APP", "CARDS_APP"];
    let products = ["CARD", "LOAN"];
    let reasons = ["NCB_REJECTED", "AML_REJECTED", "CUSTOMER_DECLINED"];
    let mut open: Vec<(RecordType, String)> = Vec::new();
    let (mut replaced, mut lost, mut converted) = (0, 0, 0);
    // xorshift: the same run every time, with every kind of change mixed in.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for i in 0..600 {
        let channel = Channel::parse(channels[next(3)]).unwrap();
        match next(10) {
            0..=5 => {
                let customer_type = if next(2) == 0 { CustomerType::Ntb } else { CustomerType::Etb };
                let owner = format!("RM00{}", 1 + next(3));
                let mut r = request(customer_type, &format!("K{}", next(8)), products[next(2)], &owner);
                r.channel = channel.clone();
                let ctx = RequestContext::new(format!("c{i}"), channel, None);
                let out = store.create(&r, &ctx).await.unwrap();
                replaced += out.closed_record_ids.len();
                assert_eq!(out.result == CreateResult::Replaced, !out.closed_record_ids.is_empty());
                open.retain(|(_, id)| !out.closed_record_ids.contains(id));
                if out.result != CreateResult::Existing {
                    open.push((out.record_type, out.id));
                }
            }
            6 | 7 if !open.is_empty() => {
                let (record_type, id) = open.swap_remove(next(open.len()));
                let ctx = RequestContext::new(format!("w{i}"), channel, None);
                let convert = record_type == RecordType::Lead && next(2) == 0;
                let out = store.close_won(record_type, &id, convert, &ctx).await.unwrap();
                converted += usize::from(out.opportunity.is_some() && record_type == RecordType::Lead);
            }
            _ if !open.is_empty() => {
                let (record_type, id) = open.swap_remove(next(open.len()));
                let reason = Reason::parse(reasons[next(3)]).unwrap();
                let ctx = RequestContext::new(format!("l{i}"), channel, Some(reason));
                store.close_lost(record_type, &id, &ctx).await.unwrap();
                lost += 1;
            }
            _ => {}
        }
    }
    store.shutdown();
    assert!(replaced > 20 && lost > 20 && converted > 5, "replaced {replaced}, lost {lost}, converted {converted}");

    let conn = Connection::open(&path).unwrap();
    let kept = counts(&conn);
    let handovers: i64 = conn
        .query_row("SELECT COALESCE(SUM(n), 0) FROM report_handovers WHERE source = 'records'", [], |r| r.get(0))
        .unwrap();
    let rejections: i64 = conn
        .query_row("SELECT COALESCE(SUM(n), 0) FROM report_rejections WHERE source = 'records'", [], |r| r.get(0))
        .unwrap();
    // Every record a create closed was of the new record's type, and closed for an owner change.
    assert_eq!(handovers as usize, replaced, "hand-overs");
    assert_eq!(rejections as usize, replaced + lost, "rejections");
    recount_from_history(&conn).unwrap();
    assert_eq!(kept, counts(&conn));
}
