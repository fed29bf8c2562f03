//! The outbox behaviour every SQL adapter must show (feature `contract`), written once: each status change
//! writes its event in the operation's own transaction, numbered per matching key, free of personal data;
//! nothing when events are off; one relay lease at a time. And for a CRM backend's local store: the events
//! handed to [`crate::Sidecar::record`] are written with the audit, numbered per matching key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lifecycle::*;
use serde_json::Value;

use crate::contract::{audit, ctx, request, response, HOUR};
use crate::events::{self, Change, Outbox, Outgoing, Pending};
use crate::{Backend, Claim, CreateOutcome, RequestContext, Sidecar};

/// Expands to one `#[tokio::test]` per outbox case. `$make` is
/// `async fn(bool) -> (Arc<dyn Backend>, Arc<dyn Outbox>, G)`: a fresh, empty store with events on (`true`)
/// or off, the outbox its events wait in (its own, or for a CRM backend its local store's), and what keeps
/// them alive.
#[macro_export]
macro_rules! outbox_suite {
    ($make:path) => {
        $crate::outbox_suite!(@cases $make;
            outbox_every_change_once_in_order,
            outbox_nothing_when_events_are_off,
            outbox_relay_lease_is_exclusive,
            outbox_sequences_follow_the_key_under_concurrency,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                $crate::outbox_contract::$case(|events| $make(events)).await;
            }
        )*
    };
}

/// Expands to the `#[tokio::test]` of the events a local store writes for a CRM backend. `$make` is
/// `async fn() -> (Arc<dyn Sidecar>, Arc<dyn Outbox>, G)`: one fresh store seen through both ports, and
/// what keeps it alive.
#[macro_export]
macro_rules! sidecar_outbox_suite {
    ($make:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn sidecar_record_writes_its_events_with_the_audit() {
            let (sidecar, outbox, _guard) = $make().await;
            $crate::outbox_contract::sidecar_record_writes_its_events_with_the_audit(sidecar, outbox).await;
        }
    };
}

/// What a test case gets: a way to open a fresh store with events on or off.
pub trait Open<G>: Fn(bool) -> Self::Fut {
    type Fut: std::future::Future<Output = (Arc<dyn Backend>, Arc<dyn Outbox>, G)>;
}

impl<G, F, Fut> Open<G> for F
where
    F: Fn(bool) -> Fut,
    Fut: std::future::Future<Output = (Arc<dyn Backend>, Arc<dyn Outbox>, G)>,
{
    type Fut = Fut;
}

/// Every pending event's body, parsed, oldest first.
pub async fn bodies(outbox: &dyn Outbox) -> Vec<Value> {
    let pending: Vec<Pending> = outbox.pending(10_000).await.unwrap();
    pending.iter().map(|p| serde_json::from_str(&p.event.body).expect("an event body is JSON")).collect()
}

/// Fails when a body holds any of the personal values the contract requests carry.
pub fn assert_no_personal_data(body: &str) {
    for personal in ["079123456789", "079000000001", "CIF001", "Nguyen", "+84901234567", "a@example.com"] {
        assert!(!body.contains(personal), "personal data {personal:?} in an event: {body}");
    }
}

fn with_reason(request_id: &str, reason: &str) -> RequestContext {
    let mut c = ctx(request_id);
    c.reason = Some(Reason::parse(reason).unwrap());
    c
}

fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
    v.get(name).unwrap_or_else(|| panic!("no {name} in {v}"))
}

fn owners(e: &Value) -> (Option<&str>, Option<&str>) {
    (field(e, "ownerBefore").as_str(), field(e, "ownerAfter").as_str())
}

fn statuses(e: &Value) -> (Option<&str>, Option<&str>) {
    (field(e, "fromStatus").as_str(), field(e, "toStatus").as_str())
}

pub async fn outbox_every_change_once_in_order<G>(open: impl Open<G>) {
    let (store, outbox, _guard) = open(true).await;
    let ntb = |owner| request(CustomerType::Ntb, "079123456789", "CREDIT_CARD", owner);
    let first = store.create(&ntb("RM001"), &ctx("r1")).await.unwrap();
    store.create(&ntb("RM001"), &ctx("r2")).await.unwrap(); // EXISTING: no event
    let second = store.create(&ntb("RM002"), &ctx("r3")).await.unwrap();
    let won = store.close_won(RecordType::Lead, &second.id, true, &with_reason("r4", "APPROVED")).await.unwrap();
    store.close_won(RecordType::Lead, &second.id, true, &ctx("r5")).await.unwrap(); // already won: no event
    let opp_id = won.opportunity.unwrap().id;
    let etb = request(CustomerType::Etb, "079000000001", "PERSONAL_LOAN", "RM009");
    let opp = store.create(&etb, &ctx("r6")).await.unwrap();
    store.close_lost(RecordType::Opportunity, &opp.id, &with_reason("r7", "NCB_REJECTED")).await.unwrap();
    store.close_lost(RecordType::Opportunity, &opp.id, &ctx("r8")).await.unwrap(); // already lost: no event

    let pending = outbox.pending(10_000).await.unwrap();
    for p in &pending {
        assert_no_personal_data(&p.event.body);
    }
    let events = bodies(&*outbox).await;
    let seen: Vec<(&str, &str, i64, &str)> = events
        .iter()
        .map(|e| {
            (
                field(e, "type").as_str().unwrap(),
                field(e, "recordId").as_str().unwrap(),
                field(e, "sequence").as_i64().unwrap(),
                field(e, "requestId").as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("lead.created", first.id.as_str(), 1, "r1"),
            ("lead.handed_over", first.id.as_str(), 2, "r3"),
            ("lead.created", second.id.as_str(), 3, "r3"),
            ("lead.won", second.id.as_str(), 4, "r4"),
            ("opportunity.converted", opp_id.as_str(), 5, "r4"),
            ("opportunity.created", opp.id.as_str(), 1, "r6"),
            ("opportunity.lost", opp.id.as_str(), 2, "r7"),
        ],
        "every change once, in order, numbered per key"
    );
    for (p, e) in pending.iter().zip(&events) {
        assert_eq!(field(e, "eventId").as_str(), Some(p.event.id.as_str()), "the outbox id is the event's");
        assert_eq!(field(e, "type").as_str(), Some(p.event.subject.as_str()), "the subject is the type");
        assert_eq!(field(e, "channel").as_str(), Some("MOBILE_APP"));
        assert!(field(e, "occurredAt").as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
    }
    let key = |e: &Value| field(e, "keyId").as_str().unwrap().to_owned();
    assert!(events[..5].iter().all(|e| key(e) == key(&events[0])), "one key id per matching key");
    assert_ne!(key(&events[0]), key(&events[5]), "another customer, another key id");

    assert_eq!((owners(&events[0]), statuses(&events[0])), ((None, Some("RM001")), (None, Some("New Lead"))));
    assert_eq!(owners(&events[1]), (Some("RM001"), Some("RM002")), "a hand-over names both owners");
    assert_eq!(statuses(&events[1]), (Some("New Lead"), Some("Close Lost")));
    assert_eq!(field(&events[1], "reason").as_str(), Some("OWNER_CHANGED"));
    assert_eq!(field(&events[1], "relatedRecordId").as_str(), Some(second.id.as_str()));
    assert_eq!(owners(&events[2]), (Some("RM001"), Some("RM002")));
    assert_eq!(field(&events[2], "relatedRecordId").as_str(), Some(first.id.as_str()));
    assert_eq!(statuses(&events[3]), (Some("New Lead"), Some("Close Won")));
    assert_eq!(field(&events[3], "reason").as_str(), Some("APPROVED"));
    assert_eq!(field(&events[3], "relatedRecordId").as_str(), Some(opp_id.as_str()));
    assert_eq!(
        (field(&events[4], "recordType").as_str(), statuses(&events[4])),
        (Some("OPPORTUNITY"), (None, Some("Close Won")))
    );
    assert_eq!(field(&events[4], "relatedRecordId").as_str(), Some(second.id.as_str()));
    assert_eq!(field(&events[4], "product").as_str(), Some("CREDIT_CARD"));
    assert_eq!(owners(&events[4]), (None, Some("RM002")), "a converted opportunity had no owner before");
    assert_eq!(owners(&events[6]), (Some("RM009"), Some("RM009")));
    assert_eq!(field(&events[6], "product").as_str(), Some("PERSONAL_LOAN"));
    assert_eq!(field(&events[6], "reason").as_str(), Some("NCB_REJECTED"));

    let lag = outbox.lag().await.unwrap();
    assert_eq!(lag.count, 7);
    assert!(lag.oldest_age < Duration::from_secs(60), "{lag:?}");
    outbox.delivered(&pending[..3].iter().map(|p| p.position).collect::<Vec<_>>()).await.unwrap();
    let rest = outbox.pending(10_000).await.unwrap();
    assert_eq!(rest, pending[3..].to_vec(), "delivered events are gone, the rest wait in order");
    assert_eq!(outbox.pending(2).await.unwrap(), pending[3..5].to_vec(), "the limit holds");
    outbox.delivered(&rest.iter().map(|p| p.position).collect::<Vec<_>>()).await.unwrap();
    assert_eq!(outbox.lag().await.unwrap().count, 0);
}

pub async fn outbox_nothing_when_events_are_off<G>(open: impl Open<G>) {
    let (store, outbox, _guard) = open(false).await;
    let created = store.create(&request(CustomerType::Ntb, "079123456789", "CREDIT_CARD", "RM001"), &ctx("r1")).await;
    let id = created.unwrap().id;
    store.create(&request(CustomerType::Ntb, "079123456789", "CREDIT_CARD", "RM002"), &ctx("r2")).await.unwrap();
    let etb = store.create(&request(CustomerType::Etb, "079123456789", "AUTO", "RM001"), &ctx("r3")).await.unwrap();
    store.close_won(RecordType::Opportunity, &etb.id, false, &ctx("r4")).await.unwrap();
    assert_eq!(store.get(RecordType::Lead, &id).await.unwrap().unwrap().record.status, Status::CloseLost);
    assert!(outbox.pending(100).await.unwrap().is_empty(), "events off: the outbox stays empty");
    assert_eq!(outbox.lag().await.unwrap().count, 0);
}

pub async fn outbox_relay_lease_is_exclusive<G>(open: impl Open<G>) {
    let (_store, outbox, _guard) = open(true).await;
    let short = Duration::from_millis(300);
    assert!(outbox.lease_relay("a", short).await.unwrap(), "a free lease is taken");
    assert!(!outbox.lease_relay("b", short).await.unwrap(), "a running lease is another's");
    assert!(outbox.lease_relay("a", short).await.unwrap(), "its holder renews it");
    tokio::time::sleep(short + Duration::from_millis(100)).await;
    assert!(outbox.lease_relay("b", short).await.unwrap(), "a lease that ran out is taken over");
    assert!(!outbox.lease_relay("a", short).await.unwrap(), "and the old holder has lost it");
}

pub async fn outbox_sequences_follow_the_key_under_concurrency<G>(open: impl Open<G>) {
    let (store, outbox, _guard) = open(true).await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let owner = format!("RM{:03}", i % 4);
                let r = request(CustomerType::Ntb, "079123456789", "CREDIT_CARD", &owner);
                store.create(&r, &ctx(&format!("c{i}"))).await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let events = bodies(&*outbox).await;
    assert!(!events.is_empty());
    let sequences: Vec<i64> = events.iter().map(|e| field(e, "sequence").as_i64().unwrap()).collect();
    assert_eq!(sequences, (1..=events.len() as i64).collect::<Vec<_>>(), "one key: 1, 2, 3… in outbox order");
    // Each created record is handed over at most once, after it was created.
    let mut created_at: HashMap<&str, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let id = field(e, "recordId").as_str().unwrap();
        match field(e, "type").as_str().unwrap() {
            "lead.created" => assert!(created_at.insert(id, i).is_none(), "created twice: {id}"),
            "lead.handed_over" => assert!(created_at.remove(id).is_some(), "handed over before created: {id}"),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created_at.len(), 1, "exactly one lead stays open");
}

/// What a CRM backend hands over with its audit: a create that replaced a record, then a close-lost, on
/// one key, and a create on another. The events land in the outbox with their audit and the idempotent
/// answer, numbered per key, free of personal data; a recording without events adds none.
pub async fn sidecar_record_writes_its_events_with_the_audit(sidecar: Arc<dyn Sidecar>, outbox: Arc<dyn Outbox>) {
    let key = "079123456789/CREDIT_CARD";
    let at = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let replaced =
        OpenRecord { id: "00QOLD".into(), record_type: RecordType::Lead, owner_id: OwnerId::parse("RM001").unwrap() };
    let outcome = CreateOutcome {
        result: CreateResult::Replaced,
        record_type: RecordType::Lead,
        id: "00QNEW".into(),
        status: Status::NewLead,
        owner_id: OwnerId::parse("RM002").unwrap(),
        closed_record_ids: vec!["00QOLD".into()],
    };
    let ntb = request(CustomerType::Ntb, "079123456789", "CREDIT_CARD", "RM002");
    let changes = events::on_create(&ntb, &ctx("r1"), &Snapshot { open: vec![replaced] }, &outcome);
    let outgoing = |key: &str, changes: Vec<Change>, request_id: &str| Outgoing {
        key: key.into(),
        changes,
        ctx: ctx(request_id),
        at,
    };
    let entries = [
        audit("00QOLD", key, Some(Status::NewLead), Status::CloseLost, 0, "r1"),
        audit("00QNEW", key, None, Status::NewLead, 0, "r1"),
    ];
    assert_eq!(sidecar.claim("k", "fp", "fp", HOUR, HOUR).await.unwrap(), Claim::Proceed);
    let answer = response("{}");
    let first = outgoing(key, changes, "r1");
    sidecar.record(&entries, Some(&first), Some(("k", "fp", answer.clone()))).await.unwrap();
    assert_eq!(sidecar.claim("k", "fp", "fp", HOUR, HOUR).await.unwrap(), Claim::Replay(answer));
    // An audit without events (events off, or a change that has none) adds no event.
    let later = audit("00QSIDE", key, None, Status::NewLead, 1, "r2");
    sidecar.record(std::slice::from_ref(&later), None, None).await.unwrap();
    let target = Target {
        id: "00QNEW".into(),
        record_type: RecordType::Lead,
        status: Status::NewLead,
        converted_opportunity_id: None,
    };
    let (owner, product) = (OwnerId::parse("RM002").unwrap(), Product::parse("CREDIT_CARD").unwrap());
    let lost = events::on_close_lost(&target, &owner, &product, &ctx("r3"));
    let lost_entry = audit("00QNEW", key, Some(Status::NewLead), Status::CloseLost, 2, "r3");
    sidecar.record(std::slice::from_ref(&lost_entry), Some(&outgoing(key, lost, "r3")), None).await.unwrap();
    let other =
        CreateOutcome { result: CreateResult::Created, id: "00QOTHER".into(), closed_record_ids: vec![], ..outcome };
    let created = events::on_create(&ntb, &ctx("r4"), &Snapshot::default(), &other);
    let other_entry = audit("00QOTHER", "OTHER/LOAN", None, Status::NewLead, 3, "r4");
    sidecar
        .record(std::slice::from_ref(&other_entry), Some(&outgoing("OTHER/LOAN", created, "r4")), None)
        .await
        .unwrap();

    let pending = outbox.pending(100).await.unwrap();
    for p in &pending {
        assert_no_personal_data(&p.event.body);
        assert!(!p.event.body.contains(key), "the matching key is not in an event: {}", p.event.body);
    }
    let events: Vec<Value> = pending.iter().map(|p| serde_json::from_str(&p.event.body).unwrap()).collect();
    let seen: Vec<(&str, &str, i64, &str)> = events
        .iter()
        .map(|e| {
            let text = |name| field(e, name).as_str().unwrap();
            (text("type"), text("recordId"), field(e, "sequence").as_i64().unwrap(), text("requestId"))
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("lead.handed_over", "00QOLD", 1, "r1"),
            ("lead.created", "00QNEW", 2, "r1"),
            ("lead.lost", "00QNEW", 3, "r3"),
            ("lead.created", "00QOTHER", 1, "r4"),
        ],
        "each recording's events once, in order, numbered per key"
    );
    assert_eq!(owners(&events[0]), (Some("RM001"), Some("RM002")), "a hand-over names both owners");
    assert_eq!(field(&events[0], "occurredAt").as_str(), Some("2027-01-15T08:00:00Z"), "when the org changed it");
    let key_id = |e: &Value| field(e, "keyId").as_str().unwrap().to_owned();
    assert!(events[..3].iter().all(|e| key_id(e) == key_id(&events[0])), "one key id per matching key");
    assert_ne!(key_id(&events[0]), key_id(&events[3]), "another key, another key id");
    assert_eq!(sidecar.history("00QNEW").await.unwrap().len(), 2, "the audit was kept with them");
}
