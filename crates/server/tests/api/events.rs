//! Lifecycle events through the real application to a real `nats-server -js` of the test's own: every
//! operation's event arrives once, in order per key, without personal data and matching the published
//! schema (docs/events.schema.json); an outage loses and doubles nothing; two replicas publish each once.
//! On every backend: for Salesforce, the events come from the local store's outbox, written with the audit
//! once the (fake) org accepted each change.

use std::time::Duration;

use integration_service::config::{EventsSettings, Settings};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::nats::{self, Nats};

const STREAM: &str = "CRM_EVENTS_TEST";
const PERSONAL: &[&str] = &["079123456789", "079000000002", "Nguyen", "+84901234567", "a@example.com", "CIF0001"];
const WAIT: Duration = Duration::from_secs(20);

fn events_to(nats: &Nats) -> impl FnOnce(&mut Settings) {
    let url = nats.url();
    move |s: &mut Settings| {
        s.events = Some(EventsSettings { nats_url: url, stream: STREAM.into(), subject_prefix: "bank.crm".into() });
    }
}

/// The JSON Schema of docs/events.schema.json, compiled.
fn schema() -> jsonschema::Validator {
    let text = include_str!("../../../../docs/events.schema.json");
    jsonschema::validator_for(&serde_json::from_str(text).unwrap()).expect("the schema compiles")
}

fn assert_valid(events: &[Value]) {
    let schema = schema();
    for e in events {
        let mut body = e.clone();
        body.as_object_mut().unwrap().remove("_subject");
        let errors: Vec<String> = schema.iter_errors(&body).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{body} breaks the schema: {errors:?}");
    }
}

/// A create, a hand-over, a close-won with conversion, a second customer's opportunity lost: 7 events.
async fn the_operations(app: &TestApp) {
    let (s, first) = app.create(&ntb("079123456789", "CREDIT_CARD", "RM001")).await;
    assert_eq!(s, 201);
    let (s, _) = app.create(&ntb("079123456789", "CREDIT_CARD", "RM001")).await;
    assert_eq!(s, 200, "EXISTING: no event");
    let (s, second) = app.create(&ntb("079123456789", "CREDIT_CARD", "RM002")).await;
    assert_eq!((s.as_u16(), second["result"].as_str()), (201, Some("REPLACED")));
    let (s, _) = app.call(CLOSE_WON, &json!({"leadId": second["id"], "channel": "MOBILE_APP", "reason": "OK"})).await;
    assert_eq!(s, 200);
    let (s, opp) = app.create(&etb("079000000002", "AUTO_LOAN", "RM003")).await;
    assert_eq!(s, 201);
    let lost =
        json!({"opportunityId": opp["id"], "status": "Close Lost", "channel": "LENDING_APP", "reason": "NCB_REJECTED"});
    assert_eq!(app.call(LOST_OPP, &lost).await.0, 200);
    assert_eq!(app.call(LOST_OPP, &lost).await.0, 200, "already lost: no event");
    let _ = first;
}

const TYPES: &[&str] = &[
    "lead.created",
    "lead.handed_over",
    "lead.created",
    "lead.won",
    "opportunity.converted",
    "opportunity.created",
    "opportunity.lost",
];

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

async fn ready_events(app: &TestApp) -> Value {
    let r = app.get("/health/ready").await;
    assert_eq!(r.status(), 200, "a lag never makes the service unready");
    r.json::<Value>().await.unwrap()["details"]["events"].clone()
}

macro_rules! every_backend {
    ($(async fn $name:ident($backend:ident: Backend) $body:block)*) => {$(
        mod $name {
            use super::*;
            async fn run($backend: Backend) $body
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                run(Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                run(Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn salesforce() {
                run(Backend::Salesforce).await
            }
        }
    )*};
}

/// The owners of an event, as (before, after).
fn owners(e: &Value) -> (Option<&str>, Option<&str>) {
    (e["ownerBefore"].as_str(), e["ownerAfter"].as_str())
}

every_backend! {
    async fn every_operation_publishes_its_event_once(backend: Backend) {
        let nats = Nats::start();
        let events_on = events_to(&nats);
        let app = spawn_with(backend, |s| {
            events_on(s);
            // Salesforce: no cached RM codes, so every event's owners are looked up in the org.
            if let Some(sf) = s.salesforce.as_mut() {
                sf.owner_cache = Duration::ZERO;
            }
        })
        .await;
        the_operations(&app).await;
        let events = nats::wait_for(&nats.url(), STREAM, TYPES.len(), WAIT).await;
        assert_eq!(types(&events), TYPES);
        nats::check_once_in_order(&events, PERSONAL);
        assert_valid(&events);
        assert!(events.iter().all(|e| e["_subject"].as_str().unwrap().starts_with("bank.crm.")));
        assert_eq!(events[5]["channel"], "LENDING_APP");
        assert_eq!(events[6]["reason"], "NCB_REJECTED");
        // Owners by relationship manager code on every backend (the org knows them as users).
        assert_eq!(owners(&events[0]), (None, Some("RM001")));
        assert_eq!(owners(&events[1]), (Some("RM001"), Some("RM002")), "a hand-over names both owners");
        assert_eq!(owners(&events[2]), (Some("RM001"), Some("RM002")));
        assert_eq!(owners(&events[3]), (Some("RM002"), Some("RM002")));
        assert_eq!(owners(&events[4]), (None, Some("RM002")), "a converted opportunity had no owner before");
        assert_eq!(owners(&events[6]), (Some("RM003"), Some("RM003")));
        assert_eq!((events[6]["product"].as_str(), events[4]["product"].as_str()), (Some("AUTO_LOAN"), Some("CREDIT_CARD")));
        assert_eq!(events[1]["relatedRecordId"], events[2]["recordId"]);
        assert_eq!((events[3]["relatedRecordId"].as_str(), events[4]["relatedRecordId"].as_str()), (events[4]["recordId"].as_str(), events[3]["recordId"].as_str()));
        // Delivered events leave the outbox.
        let deadline = std::time::Instant::now() + WAIT;
        while ready_events(&app).await["outboxPending"] != 0 {
            assert!(std::time::Instant::now() < deadline, "the outbox was not emptied");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let details = ready_events(&app).await;
        assert_eq!((details["natsConnected"].as_bool(), details["publishing"].as_bool()), (Some(true), Some(true)));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(nats::messages(&nats.url(), STREAM).await.len(), TYPES.len(), "nothing published twice");
        app.stop().await;
    }

    async fn an_outage_loses_and_doubles_nothing(backend: Backend) {
        let mut nats = Nats::start();
        let app = spawn_with(backend, events_to(&nats)).await;
        let (s, lead) = app.create(&ntb("079123456789", "CREDIT_CARD", "RM001")).await;
        assert_eq!(s, 201);
        assert_eq!(nats::wait_for(&nats.url(), STREAM, 1, WAIT).await.len(), 1);

        nats.stop();
        // Requests go on succeeding; their events wait in the outbox.
        let (s, _) = app.call(CLOSE_WON, &json!({"leadId": lead["id"], "channel": "MOBILE_APP"})).await;
        assert_eq!(s, 200);
        for i in 0..10 {
            let (s, _) = app.create(&ntb(&format!("07900000{i:04}"), "CARD", &format!("RM00{}", i % 2))).await;
            assert_eq!(s, 201);
            let (s, _) = app.create(&ntb(&format!("07900000{i:04}"), "CARD", "RM009")).await;
            assert_eq!(s, 201, "replaced");
        }
        let expected = 1 + 2 + 10 * 3;
        // The relay looks at the outbox between its (backed-off) tries: wait for its next look.
        let deadline = std::time::Instant::now() + WAIT;
        let mut details = ready_events(&app).await;
        while details["outboxPending"].as_u64() != Some(expected as u64 - 1) {
            assert!(std::time::Instant::now() < deadline, "the lag is not shown: {details}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            details = ready_events(&app).await;
        }
        assert_eq!(details["natsConnected"], false, "{details}");
        assert!(details["outboxOldestAgeSeconds"].as_f64().unwrap() > 0.0);
        let metrics = app.get("/metrics").await.text().await.unwrap();
        assert!(metrics.contains("crm_events_outbox_pending"), "the lag is a metric");

        nats.resume();
        let events = nats::wait_for(&nats.url(), STREAM, expected, WAIT).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let events = if events.len() == expected { nats::messages(&nats.url(), STREAM).await } else { events };
        assert_eq!(events.len(), expected, "every event once after the outage: {:?}", types(&events));
        let per_key = nats::check_once_in_order(&events, PERSONAL);
        assert_eq!(per_key.len(), 11);
        assert_valid(&events);
        app.stop().await;
    }
}

/// Two replicas on one PostgreSQL database, each with its relay, under concurrent writes through both:
/// a consumer sees each event once, in order per key; only one replica publishes at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_publish_each_event_once() {
    let nats = Nats::start();
    let a = spawn_with(Backend::Postgres, events_to(&nats)).await;
    let b = a.replica().await;
    let writes = (0..40).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let owner = format!("RM00{}", i % 3);
        async move {
            let (s, body) = app.create(&ntb(&format!("0791000000{:02}", i % 8), "CARD", &owner)).await;
            assert!(s == 200 || s == 201, "{s}");
            // What the answer says changed: a creation, and the records it closed (none for EXISTING).
            match body["result"].as_str() {
                Some("EXISTING") => 0,
                _ => 1 + body["closedRecordIds"].as_array().map_or(0, Vec::len),
            }
        }
    });
    let expected: usize = futures::future::join_all(writes).await.into_iter().sum();
    assert!(expected >= 8, "at least one creation per key: {expected}");
    // The relays' status (/health/ready) is refreshed on their own rounds, so it may still say an empty
    // outbox just after the writes: wait for the events the answers promise instead, then for stragglers.
    let events = nats::wait_for(&nats.url(), STREAM, expected, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = if events.len() == expected { nats::messages(&nats.url(), STREAM).await } else { events };
    assert_eq!(events.len(), expected, "every change's event, once: {:?}", types(&events));
    let per_key = nats::check_once_in_order(&events, PERSONAL);
    assert_eq!(per_key.len(), 8);
    let (da, db) = (ready_events(&a).await, ready_events(&b).await);
    assert!(da["publishing"] != db["publishing"], "one replica publishes: {da} {db}");
    b.stop().await;
    a.stop().await;
}
