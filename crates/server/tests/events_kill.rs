//! No event is lost or doubled when the process dies between a change's commit and its event's publication.
//!
//! The real binary, with events on, serves creates (new customers and owner changes) from concurrent
//! clients and is killed with SIGKILL:
//! 1. while NATS is down, so every acknowledged change's event is still in the outbox when it dies;
//! 2. while NATS is up and the relay publishes, so it may die between a publication and its bookkeeping.
//!
//! After each kill NATS runs and the binary is started again on the same store; then every acknowledged
//! record's `created` event is in the stream, no event is there twice, and each key's events are numbered
//! 1, 2, 3… in stream order. On SQLite, on PostgreSQL, and on Salesforce (a fake org, a SQLite local store).

use std::collections::HashSet;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use salesforce_fake::{FakeOrg, OrgConfig};
use serde_json::{json, Value};
use store_postgres::scratch::ScratchDb;

#[path = "common/binary.rs"]
mod binary;
#[path = "common/nats.rs"]
mod nats;

const INT: &str = "/integration-service/int/api/crm/v1";
const STREAM: &str = "CRM_EVENTS_KILL";

fn start(store: &str, nats: &nats::Nats, extra: &[(&str, String)]) -> (Child, String) {
    let url = nats.url();
    let mut env = vec![
        ("RUST_LOG", "warn,integration_service::startup=info"),
        ("CRM_EVENTS_NATS_URL", url.as_str()),
        ("CRM_EVENTS_STREAM", STREAM),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
    let (child, addr) = binary::serve(&["--store", store], &env);
    (child, format!("http://{addr}"))
}

/// Creates from `clients` concurrent clients until `acks` answers arrived; returns the acknowledged ids.
async fn traffic(base: &str, acks: usize, round: usize) -> HashSet<String> {
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let client = reqwest::Client::new();
    let clients = (0..8).map(|c| {
        let (acked, client, base) = (acked.clone(), client.clone(), base.to_owned());
        async move {
            let mut n = 0;
            while acked.lock().unwrap().len() < acks {
                n += 1;
                let body = json!({"customerType": "NTB", "customer": {"idNumber": format!("K{round}{c}{:02}", n % 5)},
                    "product": "CARD", "ownerId": format!("RM{}", n % 2), "channel": "KILL"});
                let sent = client.post(format!("{base}{INT}/combo-create-lead-opportunity")).json(&body).send().await;
                let Ok(r) = sent else { break };
                if r.status().is_success() {
                    let v: Value = r.json().await.unwrap();
                    if v["result"] != "EXISTING" {
                        acked.lock().unwrap().insert(v["id"].as_str().unwrap().to_owned());
                    }
                }
            }
        }
    });
    futures::future::join_all(clients).await;
    let acked = acked.lock().unwrap().clone();
    acked
}

fn kill(mut child: Child) {
    child.kill().unwrap(); // SIGKILL: no shutdown, no drain
    child.wait().unwrap();
}

/// Waits until the restarted service's outbox is empty.
async fn drained(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready: Value = reqwest::get(format!("{base}/health/ready")).await.unwrap().json().await.unwrap();
        if ready["details"]["events"]["outboxPending"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the outbox was not emptied: {ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn check(nats: &nats::Nats, acked: &HashSet<String>) {
    // The outbox may look empty before the restarted relay's first look: wait for the events themselves.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = nats::messages(&nats.url(), STREAM).await;
        let created: HashSet<&str> =
            events.iter().filter(|e| e["type"] == "lead.created").map(|e| e["recordId"].as_str().unwrap()).collect();
        let lost: Vec<&String> = acked.iter().filter(|id| !created.contains(id.as_str())).collect();
        if lost.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            nats::check_once_in_order(&nats::messages(&nats.url(), STREAM).await, &["K0", "K1"]);
            return;
        }
        assert!(Instant::now() < deadline, "the events of acknowledged records were lost: {lost:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn kills(store: &str, extra: &[(&str, String)]) {
    let mut nats = nats::Nats::start();
    let mut acked = HashSet::new();

    // 1. NATS down: every acknowledged change is committed, none published, when the process dies.
    nats.stop();
    let (child, base) = start(store, &nats, extra);
    acked.extend(traffic(&base, 40, 0).await);
    kill(child);
    nats.resume();
    let (child, base) = start(store, &nats, extra);
    drained(&base).await;
    check(&nats, &acked).await;

    // 2. NATS up: the process dies while its relay publishes.
    let started = Instant::now();
    acked.extend(traffic(&base, 120, 1).await);
    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..20))).await;
    kill(child);
    assert!(started.elapsed() < Duration::from_secs(60));
    let (child, base) = start(store, &nats, extra);
    drained(&base).await;
    check(&nats, &acked).await;
    kill(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_kill_loses_and_doubles_no_event() {
    let dir = tempfile::tempdir().unwrap();
    kills(&format!("sqlite://{}", dir.path().join("crm.db").display()), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_kill_loses_and_doubles_no_event() {
    let db = ScratchDb::create("crm_events_kill").await;
    kills(&db.url, &[]).await;
}

/// On Salesforce the events go to the local store's outbox in the transaction that keeps the audit and
/// completes the request, after the org accepted the change; the org (a fake in this process) outlives the
/// killed service.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn salesforce_kill_loses_and_doubles_no_event() {
    let org = FakeOrg::start(OrgConfig::default()).await;
    for rm in ["RM0", "RM1"] {
        org.add_user(rm, true);
    }
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("CRM_SALESFORCE_INSTANCE_URL", org.url().to_string()),
        ("CRM_SALESFORCE_AUTH", "client_credentials".to_owned()),
        ("CRM_SALESFORCE_CLIENT_ID", OrgConfig::default().client_id),
        ("CRM_SALESFORCE_CLIENT_SECRET", OrgConfig::default().client_secret),
        ("CRM_SALESFORCE_LOCAL_STORE", format!("sqlite://{}", dir.path().join("local.db").display())),
    ];
    kills("salesforce", &env).await;
    assert!(org.calls().len() > 100, "the changes went through the org");
}
