//! Nothing acknowledged is lost, and nothing is left half done, when the process dies at any moment.
//!
//! The real binary serves a mix of creates (repeats of an open key, owner changes, new keys), close-wons
//! (half of them converting leads) and close-losts from many concurrent clients; at a random moment it is
//! killed with SIGKILL (no shutdown, no drain), restarted on the same store, and every answer it had
//! acknowledged so far is checked against what the restarted service reads:
//! - every acknowledged record exists, and every acknowledged close is its final status;
//! - every record a `REPLACED` answer closed is `Close Lost`;
//! - no key has two open leads or two open opportunities;
//! - every converted lead's opportunity exists, is `Close Won` and points back at the lead.
//!
//! Ten kills per store, on SQLite and on PostgreSQL. On SQLite the file itself is also checked after every kill
//! (`PRAGMA integrity_check`), before the service opens it again: a kill in the middle of a commit or of a
//! checkpoint must leave it sound.

use std::collections::{HashMap, HashSet};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use store_postgres::scratch::ScratchDb;

#[path = "common/binary.rs"]
mod binary;

const INT: &str = "/integration-service/int/api/crm/v1";
const KEYS: usize = 12;
const KILLS: usize = 10;

fn start(store: &str) -> (Child, String) {
    let (child, addr) = binary::serve(&["--store", store], &[("RUST_LOG", "warn,integration_service::startup=info")]);
    (child, format!("http://{addr}"))
}

/// What the clients were told, in the order the answers arrived.
#[derive(Default, Clone)]
struct Acknowledged {
    /// id → record type ("leads"/"opportunities") of every record an answer named.
    records: HashMap<String, &'static str>,
    /// Records whose close (won or lost) was acknowledged, with the status it set.
    closed: HashMap<String, &'static str>,
    /// Records that a `REPLACED` answer closed.
    replaced: HashSet<String>,
    /// Open leads and opportunities the clients know of, to close later.
    open_leads: Vec<String>,
    open_opps: Vec<String>,
    answers: usize,
}

fn customer(n: usize) -> String {
    format!("K{:04}", n % KEYS)
}

async fn one(client: &reqwest::Client, base: &str, ack: &Mutex<Acknowledged>, n: usize) {
    let pick = fastrand::u32(0..100);
    let (path, body) = if pick < 60 {
        let owner = format!("RM{}", fastrand::usize(0..3));
        let kind = if fastrand::bool() { "NTB" } else { "ETB" };
        let body = json!({"customerType": kind, "customer": {"idNumber": customer(n), "cif": "C1"},
            "product": "CARD", "ownerId": owner, "channel": "KILL", "journeyId": format!("J{n}")});
        (format!("{INT}/combo-create-lead-opportunity"), body)
    } else {
        let mut a = ack.lock().unwrap();
        let lead = pick % 2 == 0 && !a.open_leads.is_empty();
        let pool = if lead { &mut a.open_leads } else { &mut a.open_opps };
        if pool.is_empty() {
            return;
        }
        let id = pool.swap_remove(fastrand::usize(0..pool.len()));
        drop(a);
        let field = if lead { "leadId" } else { "opportunityId" };
        if pick < 85 {
            let body = json!({field: id, "channel": "KILL", "convertToOpportunity": fastrand::bool()});
            (format!("{INT}/combo-update-lead-opportunity"), body)
        } else {
            let path = if lead { "update-lead-status" } else { "update-opportunity-status" };
            let body = json!({field: id, "status": "Close Lost", "channel": "KILL", "reason": "NCB_REJECTED"});
            (format!("/integration-service/api/crm/v1/{path}"), body)
        }
    };
    let Ok(response) = client.post(format!("{base}{path}")).json(&body).send().await else { return };
    let status = response.status().as_u16();
    let Ok(answer) = response.json::<Value>().await else { return };
    if status != 200 && status != 201 {
        return;
    }
    let mut a = ack.lock().unwrap();
    a.answers += 1;
    if path.ends_with("combo-create-lead-opportunity") {
        let kind = if answer["recordType"] == "LEAD" { "leads" } else { "opportunities" };
        let id = answer["id"].as_str().unwrap().to_owned();
        a.records.insert(id.clone(), kind);
        for closed in answer["closedRecordIds"].as_array().unwrap() {
            let closed = closed.as_str().unwrap().to_owned();
            a.records.insert(closed.clone(), kind);
            a.replaced.insert(closed);
        }
        if kind == "leads" {
            a.open_leads.push(id)
        } else {
            a.open_opps.push(id)
        }
    } else if path.ends_with("combo-update-lead-opportunity") {
        for (field, kind) in [("lead", "leads"), ("opportunity", "opportunities")] {
            if let Some(id) = answer[field]["id"].as_str() {
                a.records.insert(id.to_owned(), kind);
                a.closed.insert(id.to_owned(), "Close Won");
            }
        }
    } else {
        let id = answer["leadId"].as_str().or(answer["opportunityId"].as_str()).unwrap().to_owned();
        let kind = if answer["leadId"].is_string() { "leads" } else { "opportunities" };
        a.records.insert(id.clone(), kind);
        a.closed.insert(id, "Close Lost");
    }
}

/// Drives the mix with `workers` clients until the service stops answering.
async fn drive(base: String, ack: Arc<Mutex<Acknowledged>>, workers: usize) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (client, base, ack) = (client.clone(), base.clone(), ack.clone());
            tokio::spawn(async move {
                let mut n = w;
                let mut failures = 0;
                while failures < 3 {
                    let before = ack.lock().unwrap().answers;
                    one(&client, &base, &ack, n).await;
                    n += workers;
                    if ack.lock().unwrap().answers == before
                        && client.get(format!("{base}/health/live")).send().await.is_err()
                    {
                        failures += 1;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

async fn check(base: &str, ack: &Acknowledged) {
    let client = reqwest::Client::new();
    let mut converted = 0;
    for (id, kind) in &ack.records {
        let r = client.get(format!("{base}{INT}/{kind}/{id}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "acknowledged record {kind}/{id} is missing after the kill");
        let record: Value = r.json().await.unwrap();
        let status = record["status"].as_str().unwrap();
        if let Some(closed) = ack.closed.get(id) {
            assert_eq!(status, *closed, "{kind}/{id}: acknowledged {closed}, found {status}");
        }
        if ack.replaced.contains(id) {
            assert_eq!(status, "Close Lost", "{kind}/{id} was closed by a REPLACED answer");
        }
        let history = record["history"].as_array().unwrap();
        assert_eq!(history.last().unwrap()["to"], status, "{kind}/{id}: history ends at the status");
        if let Some(opp) = record["convertedOpportunityId"].as_str() {
            converted += 1;
            let o: Value =
                client.get(format!("{base}{INT}/opportunities/{opp}")).send().await.unwrap().json().await.unwrap();
            assert_eq!(o["status"], "Close Won", "conversion of {id} half done");
            assert_eq!(o["convertedFromLeadId"], json!(id));
        }
    }
    for n in 0..KEYS {
        let all: Value = client
            .post(format!("{base}{INT}/search"))
            .json(&json!({"idNumber": customer(n), "product": "CARD"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for (list, open) in [("leads", "New Lead"), ("opportunities", "New Opportunity")] {
            let count = all[list].as_array().unwrap().iter().filter(|r| r["status"] == open).count();
            assert!(count <= 1, "{} has {count} open {list}", customer(n));
        }
    }
    eprintln!(
        "checked {} acknowledged records ({} closes, {converted} conversions)",
        ack.records.len(),
        ack.closed.len()
    );
}

async fn kill_and_restart_repeatedly(store: String, after_kill: impl Fn()) {
    let ack = Arc::new(Mutex::new(Acknowledged::default()));
    for round in 0..KILLS {
        let (mut child, base) = start(&store);
        if round > 0 {
            // Everything acknowledged before the previous kill is still there.
            let seen = ack.lock().unwrap().clone();
            check(&base, &seen).await;
        }
        let driver = tokio::spawn(drive(base.clone(), ack.clone(), 24));
        tokio::time::sleep(Duration::from_millis(fastrand::u64(150..900))).await;
        child.kill().unwrap(); // SIGKILL: no drain, no shutdown hook
        child.wait().unwrap();
        driver.await.unwrap();
        after_kill();
    }
    let (mut child, base) = start(&store);
    let ack = ack.lock().unwrap().clone();
    check(&base, &ack).await;
    assert!(ack.answers > 100, "the mix ran: {} answers", ack.answers);
    assert!(!ack.replaced.is_empty() && !ack.closed.is_empty(), "owner changes and closes happened");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_acknowledged_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.db");
    let sound = || {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let found: Vec<String> = conn
            .prepare("PRAGMA integrity_check")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(found, ["ok"], "the database file after a kill");
    };
    kill_and_restart_repeatedly(format!("sqlite://{}", path.display()), sound).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_acknowledged_on_postgres() {
    let db = ScratchDb::create("crm_kill").await;
    kill_and_restart_repeatedly(db.url.clone(), || {}).await;
}
