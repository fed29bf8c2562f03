//! The behaviour every adapter of [`Store`] must show, written once.
//!
//! An adapter's test file calls [`crate::contract_suite!`] with an async function that returns a fresh,
//! empty store plus whatever guard keeps it alive (a temporary folder, a throwaway database); the macro
//! expands to one `#[tokio::test]` per case below.

use std::collections::HashSet;
use std::sync::Arc;

use lifecycle::*;

use std::time::Duration;

use crate::{
    Answer, AuditEntry, Backend, Claim, HistoryEntry, RequestContext, Sidecar, Store, StoreError, StoredResponse,
    Ticket,
};

/// Expands to one `#[tokio::test]` per contract case, each on a fresh store from `$make`
/// (`async fn() -> (Arc<dyn Backend>, impl Any)`; the second value is kept alive for the test).
#[macro_export]
macro_rules! contract_suite {
    ($make:path) => {
        $crate::contract_suite!(@cases $make;
            ntb_create_then_existing_then_replaced,
            etb_rows_and_leads_untouched,
            ntb_checks_opportunities_first,
            closed_records_never_block,
            product_scoping,
            close_won_opportunity,
            close_won_lead_converts_once,
            close_won_lead_without_conversion,
            close_lost_both_types,
            unknown_and_mistyped_ids,
            search_newest_first,
            history_records_every_change,
            concurrent_identical_creates,
            concurrent_competing_owners,
            concurrent_closes_and_creates,
            idempotency_claim_replay_mismatch,
            idempotency_leases_and_expiry,
            idempotency_concurrent_claims,
            idempotency_only_the_holder_completes,
            idempotency_renewal_keeps_a_slow_run,
            operations_record_their_idempotent_answer,
            unchanged_answers_are_recorded_too,
            refusals_and_foreign_tickets_record_nothing,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let (store, _guard) = $make().await;
                $crate::contract::$case(store).await;
            }
        )*
    };
}

pub fn ctx(request_id: &str) -> RequestContext {
    RequestContext::new(request_id, Channel::parse("MOBILE_APP").unwrap(), None)
}

pub fn request(customer_type: CustomerType, id_number: &str, product: &str, owner: &str) -> CreateRequest {
    CreateRequest {
        customer_type,
        customer: Customer {
            id_number: IdNumber::parse(id_number).unwrap(),
            cif: (customer_type == CustomerType::Etb).then(|| Cif::parse("CIF001").unwrap()),
            full_name: Some(FullName::parse("Nguyen Van A").unwrap()),
            phone: Some(Phone::parse("+84901234567").unwrap()),
            email: Some(Email::parse("a@example.com").unwrap()),
        },
        product: Product::parse(product).unwrap(),
        owner_id: OwnerId::parse(owner).unwrap(),
        channel: Channel::parse("MOBILE_APP").unwrap(),
        journey_id: Some(JourneyId::parse("J-1").unwrap()),
    }
}

fn ntb(owner: &str) -> CreateRequest {
    request(CustomerType::Ntb, "079123456789", "CREDIT_CARD", owner)
}

fn etb(owner: &str) -> CreateRequest {
    request(CustomerType::Etb, "079123456789", "CREDIT_CARD", owner)
}

async fn status_of(store: &dyn Store, record_type: RecordType, id: &str) -> Status {
    store.get(record_type, id).await.unwrap().expect("record exists").record.status
}

pub async fn ntb_create_then_existing_then_replaced(store: Arc<dyn Backend>) {
    let first = store.create(&ntb("RM001"), &ctx("r1")).await.unwrap();
    assert_eq!(first.result, CreateResult::Created, "N5");
    assert_eq!((first.record_type, first.status), (RecordType::Lead, Status::NewLead));
    assert_eq!(first.owner_id.as_str(), "RM001");
    assert!(first.closed_record_ids.is_empty());

    let again = store.create(&ntb("RM001"), &ctx("r2")).await.unwrap();
    assert_eq!((again.result, again.id.as_str()), (CreateResult::Existing, first.id.as_str()), "N3");
    assert!(again.closed_record_ids.is_empty());

    let other = store.create(&ntb("RM002"), &ctx("r3")).await.unwrap();
    assert_eq!(other.result, CreateResult::Replaced, "N4");
    assert_eq!((other.record_type, other.status), (RecordType::Lead, Status::NewLead));
    assert_eq!(other.closed_record_ids, vec![first.id.clone()]);
    assert_ne!(other.id, first.id);
    assert_eq!(status_of(&*store, RecordType::Lead, &first.id).await, Status::CloseLost);
    let old = store.get(RecordType::Lead, &first.id).await.unwrap().unwrap();
    let last = old.history.last().unwrap();
    assert_eq!(last.reason.as_ref().map(Reason::as_str), Some("OWNER_CHANGED"));
    assert_eq!(last.request_id, "r3");

    let record = store.get(RecordType::Lead, &other.id).await.unwrap().unwrap().record;
    assert_eq!(record.owner_id.as_str(), "RM002");
    assert_eq!(record.customer_type, CustomerType::Ntb);
    assert_eq!(record.id_number.expose(), "079123456789");
    assert_eq!(record.product.as_str(), "CREDIT_CARD");
    assert_eq!(record.channel.as_str(), "MOBILE_APP");
    assert_eq!(record.journey_id.as_ref().map(JourneyId::as_str), Some("J-1"));
    assert_eq!(record.email.as_ref().map(Email::expose), Some("a@example.com"));
    assert!(record.cif.is_none());
}

pub async fn etb_rows_and_leads_untouched(store: Arc<dyn Backend>) {
    let lead = store.create(&ntb("RM001"), &ctx("r0")).await.unwrap();
    let e3 = store.create(&etb("RM001"), &ctx("r1")).await.unwrap();
    assert_eq!(
        (e3.result, e3.record_type, e3.status),
        (CreateResult::Created, RecordType::Opportunity, Status::NewOpportunity)
    );
    let e1 = store.create(&etb("RM001"), &ctx("r2")).await.unwrap();
    assert_eq!((e1.result, e1.id.as_str()), (CreateResult::Existing, e3.id.as_str()));
    let e2 = store.create(&etb("RM002"), &ctx("r3")).await.unwrap();
    assert_eq!(e2.result, CreateResult::Replaced);
    assert_eq!(e2.record_type, RecordType::Opportunity);
    assert_eq!(e2.closed_record_ids, vec![e3.id.clone()]);
    assert_eq!(status_of(&*store, RecordType::Opportunity, &e3.id).await, Status::CloseLost);
    let record = store.get(RecordType::Opportunity, &e2.id).await.unwrap().unwrap().record;
    assert_eq!(record.cif.as_ref().map(Cif::expose), Some("CIF001"));
    // ETB never reads or changes leads.
    assert_eq!(status_of(&*store, RecordType::Lead, &lead.id).await, Status::NewLead);
}

pub async fn ntb_checks_opportunities_first(store: Arc<dyn Backend>) {
    let lead = store.create(&ntb("RM001"), &ctx("r0")).await.unwrap();
    let opp = store.create(&etb("RM001"), &ctx("r1")).await.unwrap();
    let n1 = store.create(&ntb("RM001"), &ctx("r2")).await.unwrap();
    assert_eq!(
        (n1.result, n1.record_type, n1.id.as_str()),
        (CreateResult::Existing, RecordType::Opportunity, opp.id.as_str()),
        "N1"
    );
    let n2 = store.create(&ntb("RM002"), &ctx("r3")).await.unwrap();
    assert_eq!((n2.result, n2.record_type), (CreateResult::Replaced, RecordType::Opportunity), "N2");
    assert_eq!(n2.closed_record_ids, vec![opp.id.clone()]);
    assert_eq!(status_of(&*store, RecordType::Lead, &lead.id).await, Status::NewLead, "N2 leaves leads");
}

pub async fn closed_records_never_block(store: Arc<dyn Backend>) {
    // Reading 1: an NTB customer with only closed opportunities goes on to the lead check.
    let opp = store.create(&etb("RM001"), &ctx("r1")).await.unwrap();
    store.close_lost(RecordType::Opportunity, &opp.id, &ctx("r2")).await.unwrap();
    let lead = store.create(&ntb("RM001"), &ctx("r3")).await.unwrap();
    assert_eq!((lead.result, lead.record_type), (CreateResult::Created, RecordType::Lead));
    // Reading 2: a Close Won lead is not open, so a new journey gets a new lead.
    store.close_won(RecordType::Lead, &lead.id, false, &ctx("r4")).await.unwrap();
    let next = store.create(&ntb("RM001"), &ctx("r5")).await.unwrap();
    assert_eq!((next.result, next.record_type), (CreateResult::Created, RecordType::Lead));
    assert_ne!(next.id, lead.id);
    // A Close Won opportunity does not block an ETB create either.
    let won = store.create(&etb("RM001"), &ctx("r6")).await.unwrap();
    store.close_won(RecordType::Opportunity, &won.id, true, &ctx("r7")).await.unwrap();
    let again = store.create(&etb("RM001"), &ctx("r8")).await.unwrap();
    assert_eq!(again.result, CreateResult::Created);
}

pub async fn product_scoping(store: Arc<dyn Backend>) {
    let card = store.create(&request(CustomerType::Ntb, "X1", "CREDIT_CARD", "RM001"), &ctx("r1")).await.unwrap();
    let loan = store.create(&request(CustomerType::Ntb, "X1", "PERSONAL_LOAN", "RM002"), &ctx("r2")).await.unwrap();
    assert_eq!(loan.result, CreateResult::Created);
    assert_ne!(card.id, loan.id);
    assert_eq!(status_of(&*store, RecordType::Lead, &card.id).await, Status::NewLead);
    let other_customer =
        store.create(&request(CustomerType::Ntb, "X2", "CREDIT_CARD", "RM002"), &ctx("r3")).await.unwrap();
    assert_eq!(other_customer.result, CreateResult::Created);
}

pub async fn close_won_opportunity(store: Arc<dyn Backend>) {
    let opp = store.create(&etb("RM001"), &ctx("r1")).await.unwrap();
    let won = store.close_won(RecordType::Opportunity, &opp.id, true, &ctx("r2")).await.unwrap();
    assert!(won.lead.is_none());
    let o = won.opportunity.clone().unwrap();
    assert_eq!((o.id.as_str(), o.status), (opp.id.as_str(), Status::CloseWon));
    let repeat = store.close_won(RecordType::Opportunity, &opp.id, true, &ctx("r3")).await.unwrap();
    assert_eq!(repeat, won, "idempotent repeat");
    let lost = store.close_lost(RecordType::Opportunity, &opp.id, &ctx("r4")).await;
    assert!(matches!(lost, Err(StoreError::InvalidTransition { current: Status::CloseWon })), "{lost:?}");
    let history = store.get(RecordType::Opportunity, &opp.id).await.unwrap().unwrap().history;
    assert_eq!(history.len(), 2, "the repeat and the refusal change nothing");
}

pub async fn close_won_lead_converts_once(store: Arc<dyn Backend>) {
    let lead = store.create(&ntb("RM001"), &ctx("r1")).await.unwrap();
    let won = store.close_won(RecordType::Lead, &lead.id, true, &ctx("r2")).await.unwrap();
    let l = won.lead.clone().unwrap();
    let o = won.opportunity.clone().expect("converted");
    assert_eq!((l.id.as_str(), l.status, o.status), (lead.id.as_str(), Status::CloseWon, Status::CloseWon));
    let repeat = store.close_won(RecordType::Lead, &lead.id, true, &ctx("r3")).await.unwrap();
    assert_eq!(repeat, won, "same body, no second conversion");
    let all = store.search(&IdNumber::parse("079123456789").unwrap(), None).await.unwrap();
    assert_eq!(all.opportunities.len(), 1);

    let lead_rec = store.get(RecordType::Lead, &lead.id).await.unwrap().unwrap().record;
    let opp = store.get(RecordType::Opportunity, &o.id).await.unwrap().unwrap();
    assert_eq!(lead_rec.converted_opportunity_id.as_deref(), Some(o.id.as_str()));
    assert_eq!(opp.record.converted_from_lead_id.as_deref(), Some(lead.id.as_str()));
    assert_eq!(opp.record.owner_id, lead_rec.owner_id);
    assert_eq!(opp.record.product, lead_rec.product);
    assert_eq!(opp.record.id_number, lead_rec.id_number);
    assert_eq!(opp.record.journey_id, lead_rec.journey_id);
    assert_eq!(opp.record.channel, lead_rec.channel);
    assert_eq!(opp.history.len(), 1);
    assert_eq!((opp.history[0].from, opp.history[0].to), (None, Status::CloseWon));

    let lost = store.close_lost(RecordType::Lead, &lead.id, &ctx("r4")).await;
    assert!(matches!(lost, Err(StoreError::InvalidTransition { .. })), "{lost:?}");
    // The converted opportunity is final: it does not block the next journey.
    let next = store.create(&ntb("RM001"), &ctx("r5")).await.unwrap();
    assert_eq!((next.result, next.record_type), (CreateResult::Created, RecordType::Lead));
}

pub async fn close_won_lead_without_conversion(store: Arc<dyn Backend>) {
    let lead = store.create(&ntb("RM001"), &ctx("r1")).await.unwrap();
    let won = store.close_won(RecordType::Lead, &lead.id, false, &ctx("r2")).await.unwrap();
    assert!(won.opportunity.is_none());
    assert_eq!(won.lead.as_ref().unwrap().status, Status::CloseWon);
    // A repeat asking for conversion answers as the first time.
    let repeat = store.close_won(RecordType::Lead, &lead.id, true, &ctx("r3")).await.unwrap();
    assert_eq!(repeat, won);
    let all = store.search(&IdNumber::parse("079123456789").unwrap(), None).await.unwrap();
    assert!(all.opportunities.is_empty());
}

pub async fn close_lost_both_types(store: Arc<dyn Backend>) {
    for (record_type, req) in [(RecordType::Lead, ntb("RM001")), (RecordType::Opportunity, etb("RM001"))] {
        let created = store.create(&req, &ctx("r1")).await.unwrap();
        let mut c = ctx("r2");
        c.reason = Some(Reason::parse("NCB_REJECTED").unwrap());
        let lost = store.close_lost(record_type, &created.id, &c).await.unwrap();
        assert_eq!((lost.id.as_str(), lost.status), (created.id.as_str(), Status::CloseLost));
        let again = store.close_lost(record_type, &created.id, &ctx("r3")).await.unwrap();
        assert_eq!(again, lost);
        let won = store.close_won(record_type, &created.id, true, &ctx("r4")).await;
        assert!(matches!(won, Err(StoreError::InvalidTransition { current: Status::CloseLost })), "{won:?}");
        let got = store.get(record_type, &created.id).await.unwrap().unwrap();
        assert_eq!(got.history.len(), 2, "repeat and refusal leave no history");
        assert_eq!(got.history[1].reason.as_ref().map(Reason::as_str), Some("NCB_REJECTED"));
    }
}

pub async fn unknown_and_mistyped_ids(store: Arc<dyn Backend>) {
    let lead = store.create(&ntb("RM001"), &ctx("r1")).await.unwrap();
    assert!(matches!(
        store.close_won(RecordType::Opportunity, &lead.id, true, &ctx("r2")).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(store.close_lost(RecordType::Opportunity, &lead.id, &ctx("r3")).await, Err(StoreError::NotFound)));
    assert!(matches!(store.close_lost(RecordType::Lead, "no-such-id", &ctx("r4")).await, Err(StoreError::NotFound)));
    assert!(store.get(RecordType::Opportunity, &lead.id).await.unwrap().is_none());
    assert!(store.get(RecordType::Lead, "'; DROP TABLE records; --").await.unwrap().is_none());
    assert_eq!(status_of(&*store, RecordType::Lead, &lead.id).await, Status::NewLead);
}

pub async fn search_newest_first(store: Arc<dyn Backend>) {
    let a = store.create(&ntb("RM001"), &ctx("r1")).await.unwrap();
    let b = store.create(&ntb("RM002"), &ctx("r2")).await.unwrap();
    let c = store.create(&request(CustomerType::Ntb, "079123456789", "LOAN", "RM001"), &ctx("r3")).await.unwrap();
    let o = store.create(&etb("RM001"), &ctx("r4")).await.unwrap();
    store.create(&request(CustomerType::Ntb, "OTHER", "CREDIT_CARD", "RM001"), &ctx("r5")).await.unwrap();
    let id = IdNumber::parse("079123456789").unwrap();
    let all = store.search(&id, None).await.unwrap();
    let ids: Vec<_> = all.leads.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [c.id.as_str(), b.id.as_str(), a.id.as_str()]);
    assert_eq!(all.opportunities.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [o.id.as_str()]);
    let card = store.search(&id, Some(&Product::parse("CREDIT_CARD").unwrap())).await.unwrap();
    assert_eq!(card.leads.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [b.id.as_str(), a.id.as_str()]);
    let none = store.search(&IdNumber::parse("NOBODY").unwrap(), None).await.unwrap();
    assert!(none.leads.is_empty() && none.opportunities.is_empty());
}

pub async fn history_records_every_change(store: Arc<dyn Backend>) {
    let lead = store.create(&ntb("RM001"), &ctx("req-create")).await.unwrap();
    let mut c = ctx("req-won");
    c.reason = Some(Reason::parse("ONBOARDED").unwrap());
    store.close_won(RecordType::Lead, &lead.id, true, &c).await.unwrap();
    let h = store.get(RecordType::Lead, &lead.id).await.unwrap().unwrap().history;
    assert_eq!(h.len(), 2);
    assert_eq!((h[0].from, h[0].to, h[0].request_id.as_str()), (None, Status::NewLead, "req-create"));
    assert_eq!((h[1].from, h[1].to, h[1].request_id.as_str()), (Some(Status::NewLead), Status::CloseWon, "req-won"));
    assert_eq!(h[1].channel.as_str(), "MOBILE_APP");
    assert_eq!(h[1].reason.as_ref().map(Reason::as_str), Some("ONBOARDED"));
    assert!(h[0].at <= h[1].at);
}

pub async fn concurrent_identical_creates(store: Arc<dyn Backend>) {
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.create(&ntb("RM001"), &ctx(&format!("c{i}"))).await.unwrap() })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let created = outcomes.iter().filter(|o| o.result == CreateResult::Created).count();
    assert_eq!(created, 1, "exactly one record created");
    let ids: HashSet<_> = outcomes.iter().map(|o| o.id.clone()).collect();
    assert_eq!(ids.len(), 1, "every answer names the same record");
    assert!(outcomes.iter().all(|o| o.result != CreateResult::Replaced));
    let all = store.search(&IdNumber::parse("079123456789").unwrap(), None).await.unwrap();
    assert_eq!(all.leads.len(), 1);
}

pub async fn concurrent_competing_owners(store: Arc<dyn Backend>) {
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let store = store.clone();
            let req = if i % 2 == 0 { ntb(&format!("RM{}", i % 5)) } else { etb(&format!("RM{}", i % 5)) };
            tokio::spawn(async move { store.create(&req, &ctx(&format!("c{i}"))).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let all = store.search(&IdNumber::parse("079123456789").unwrap(), None).await.unwrap();
    let open_leads = all.leads.iter().filter(|r| r.status.is_open()).count();
    let open_opps = all.opportunities.iter().filter(|r| r.status.is_open()).count();
    assert!(open_leads <= 1, "{open_leads} open leads");
    assert_eq!(open_opps, 1, "{open_opps} open opportunities");
}

pub async fn concurrent_closes_and_creates(store: Arc<dyn Backend>) {
    // Closes racing with replacing creates: every record ends in exactly one final state, at most one open.
    let seed = store.create(&etb("RM000"), &ctx("seed")).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let store = store.clone();
        let seed_id = seed.id.clone();
        tasks.push(tokio::spawn(async move {
            match i % 4 {
                0 => {
                    let _ = store.close_won(RecordType::Opportunity, &seed_id, true, &ctx("w")).await;
                }
                1 => {
                    let _ = store.close_lost(RecordType::Opportunity, &seed_id, &ctx("l")).await;
                }
                _ => {
                    store.create(&etb(&format!("RM{}", i % 3)), &ctx("c")).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = store.search(&IdNumber::parse("079123456789").unwrap(), None).await.unwrap();
    assert!(all.opportunities.iter().filter(|r| r.status.is_open()).count() <= 1);
    for r in &all.opportunities {
        let h = store.get(RecordType::Opportunity, &r.id).await.unwrap().unwrap().history;
        assert!(h.len() <= 2, "a record changed status after it was final: {h:?}");
        assert_eq!(h.last().unwrap().to, r.status, "history ends at the record's status");
    }
}

pub(crate) const HOUR: Duration = Duration::from_secs(3600);

pub(crate) fn response(body: &str) -> StoredResponse {
    StoredResponse {
        status: 201,
        content_type: Some("application/json".into()),
        location: Some("/x/1".into()),
        body: body.as_bytes().to_vec(),
    }
}

pub async fn idempotency_claim_replay_mismatch(store: Arc<dyn Backend>) {
    assert_eq!(store.claim("k1", "fp-a", "fp-a", HOUR, HOUR).await.unwrap(), Claim::Proceed);
    assert_eq!(store.claim("k1", "fp-a", "fp-a", HOUR, HOUR).await.unwrap(), Claim::InUse, "still running");
    assert_eq!(store.claim("k1", "fp-b", "fp-b", HOUR, HOUR).await.unwrap(), Claim::Mismatch);
    let r = response("{\"id\":\"x\"}\u{e9}");
    store.complete("k1", "fp-a", &r).await.unwrap();
    assert_eq!(store.claim("k1", "fp-a", "fp-a", HOUR, HOUR).await.unwrap(), Claim::Replay(r.clone()));
    assert_eq!(store.claim("k1", "fp-b", "fp-b", HOUR, HOUR).await.unwrap(), Claim::Mismatch);
    // Released claims leave the key free.
    assert_eq!(store.claim("k2", "fp-a", "fp-a", HOUR, HOUR).await.unwrap(), Claim::Proceed);
    store.release("k2", "fp-a").await.unwrap();
    assert_eq!(store.claim("k2", "fp-b", "fp-b", HOUR, HOUR).await.unwrap(), Claim::Proceed);
    // Releasing does not touch a completed key.
    store.release("k1", "fp-a").await.unwrap();
    assert_eq!(store.claim("k1", "fp-a", "fp-a", HOUR, HOUR).await.unwrap(), Claim::Replay(r));
}

pub async fn idempotency_leases_and_expiry(store: Arc<dyn Backend>) {
    let short = Duration::from_millis(150);
    // A holder that died: its lease runs out and a retry takes the key over.
    assert_eq!(store.claim("lease", "fp", "fp", short, HOUR).await.unwrap(), Claim::Proceed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.claim("lease", "fp", "fp", HOUR, HOUR).await.unwrap(), Claim::Proceed);
    // An expired key is free for any request, and purged.
    assert_eq!(store.claim("ttl", "fp-a", "fp-a", HOUR, short).await.unwrap(), Claim::Proceed);
    store.complete("ttl", "fp-a", &response("{}")).await.unwrap();
    assert_eq!(store.claim("keep", "fp", "fp", HOUR, HOUR).await.unwrap(), Claim::Proceed);
    assert_eq!(store.claim("gone", "fp-a", "fp-a", HOUR, short).await.unwrap(), Claim::Proceed);
    store.complete("gone", "fp-a", &response("{}")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Expired but not purged yet: it is free too, and the new claim is live.
    assert_eq!(store.claim("gone", "fp-b", "fp-b", HOUR, HOUR).await.unwrap(), Claim::Proceed);
    assert_eq!(store.claim("gone", "fp-b", "fp-b", HOUR, HOUR).await.unwrap(), Claim::InUse);
    assert_eq!(store.purge_expired().await.unwrap(), 1, "only the expired key is purged");
    assert_eq!(store.claim("ttl", "fp-b", "fp-b", HOUR, HOUR).await.unwrap(), Claim::Proceed);
    assert_eq!(store.claim("keep", "fp", "fp", HOUR, HOUR).await.unwrap(), Claim::InUse);
}

pub async fn idempotency_concurrent_claims(store: Arc<dyn Backend>) {
    let tasks: Vec<_> = (0..24)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.claim("race", "fp", "fp", HOUR, HOUR).await.unwrap() })
        })
        .collect();
    let mut proceed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Claim::Proceed => proceed += 1,
            Claim::InUse => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(proceed, 1, "exactly one request runs");
}

/// A run stalls past its lease and a retry takes the key over: from then on the stalled run's answer lands
/// nowhere (not by `complete`, not in its operation's transaction), nor do its renewal and release.
pub async fn idempotency_only_the_holder_completes(store: Arc<dyn Backend>) {
    let short = Duration::from_millis(150);
    assert_eq!(store.claim("stale", "fp", "run-a", short, HOUR).await.unwrap(), Claim::Proceed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.claim("stale", "fp", "run-b", HOUR, HOUR).await.unwrap(), Claim::Proceed, "taken over");
    assert!(!store.renew("stale", "run-a", HOUR).await.unwrap(), "no longer run-a's");
    store.complete("stale", "run-a", &response("from run-a")).await.unwrap();
    store.release("stale", "run-a").await.unwrap();
    let first = store.create(&ntb("RM001"), &with_ticket("r-a", "stale", "run-a")).await.unwrap();
    assert_eq!(first.result, CreateResult::Created);
    assert_eq!(store.claim("stale", "fp", "run-c", HOUR, HOUR).await.unwrap(), Claim::InUse, "still run-b's");
    // The holder's own answer is the one kept, and a stale one after it changes nothing.
    let second = store.create(&ntb("RM001"), &with_ticket("r-b", "stale", "run-b")).await.unwrap();
    assert_eq!(second.result, CreateResult::Existing);
    let kept = Claim::Replay(render(Answer::Create(&second)));
    assert_eq!(store.claim("stale", "fp", "run-c", HOUR, HOUR).await.unwrap(), kept);
    store.complete("stale", "run-a", &response("late")).await.unwrap();
    store.complete("stale", "run-b", &response("late")).await.unwrap();
    assert_eq!(store.claim("stale", "fp", "run-c", HOUR, HOUR).await.unwrap(), kept);
}

/// A run that renews its lease keeps the key however long it takes; once answered it cannot renew.
pub async fn idempotency_renewal_keeps_a_slow_run(store: Arc<dyn Backend>) {
    let lease = Duration::from_millis(400);
    assert_eq!(store.claim("slow", "fp", "run-a", lease, HOUR).await.unwrap(), Claim::Proceed);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(store.renew("slow", "run-a", lease).await.unwrap(), "renewed");
    }
    // 900 ms after the claim, well past its first lease: still the slow run's.
    assert_eq!(store.claim("slow", "fp", "run-b", HOUR, HOUR).await.unwrap(), Claim::InUse);
    let r = response("{\"slow\":true}");
    store.complete("slow", "run-a", &r).await.unwrap();
    assert!(!store.renew("slow", "run-a", lease).await.unwrap(), "answered");
    assert_eq!(store.claim("slow", "fp", "run-b", HOUR, HOUR).await.unwrap(), Claim::Replay(r));
}

/// A stand-in for the HTTP layer's rendering: every answer gets distinct bytes (its full debug text), so a
/// replay equal to the rendering proves the store kept exactly what this render produced for that answer.
fn render(answer: Answer<'_>) -> StoredResponse {
    let (status, location) = match answer {
        Answer::Create(o) if o.result != CreateResult::Existing => (201, Some(format!("/records/{}", o.id))),
        _ => (200, None),
    };
    StoredResponse {
        status,
        content_type: Some("application/json".into()),
        location,
        body: format!("{answer:?}\u{e9}").into_bytes(),
    }
}

/// A context holding the claim on `key` taken by `holder`, rendered by [`render`].
fn with_ticket(request_id: &str, key: &str, holder: &str) -> RequestContext {
    let mut c = ctx(request_id);
    c.idempotency = Some(Ticket { key: key.into(), holder: holder.into(), render: Arc::new(render) });
    c
}

/// Claims `key`, runs `op` with a ticket for it, and checks that a second claim replays exactly what the
/// ticket rendered for the answer, although nobody called `complete`.
async fn claim_run_replay<T, F, Fut>(store: &Arc<dyn Backend>, key: &str, op: F) -> T
where
    F: FnOnce(RequestContext) -> Fut,
    Fut: std::future::Future<Output = (T, StoredResponse)>,
{
    assert_eq!(store.claim(key, "fp", "fp", HOUR, HOUR).await.unwrap(), Claim::Proceed, "{key}");
    let (outcome, expected) = op(with_ticket(key, key, "fp")).await;
    assert_eq!(store.claim(key, "fp", "fp", HOUR, HOUR).await.unwrap(), Claim::Replay(expected), "{key}");
    outcome
}

pub async fn operations_record_their_idempotent_answer(store: Arc<dyn Backend>) {
    let s = store.clone();
    let lead = claim_run_replay(&store, "k-create", |c| async move {
        let o = s.create(&ntb("RM001"), &c).await.unwrap();
        assert_eq!(o.result, CreateResult::Created);
        let r = render(Answer::Create(&o));
        (o, r)
    })
    .await;
    let s = store.clone();
    let won = claim_run_replay(&store, "k-won", |c| async move {
        let o = s.close_won(RecordType::Lead, &lead.id, true, &c).await.unwrap();
        assert!(o.opportunity.is_some(), "converted");
        let r = render(Answer::CloseWon(&o));
        (o, r)
    })
    .await;
    let opp = store.create(&etb("RM001"), &ctx("r-etb")).await.unwrap();
    let s = store.clone();
    claim_run_replay(&store, "k-lost", |c| async move {
        let o = s.close_lost(RecordType::Opportunity, &opp.id, &c).await.unwrap();
        let r = render(Answer::CloseLost(&o));
        (o, r)
    })
    .await;
    // The operations ran once each: the replays above changed nothing.
    let all = store.search(&IdNumber::parse("079123456789").unwrap(), None).await.unwrap();
    assert_eq!((all.leads.len(), all.opportunities.len()), (1, 2), "{all:?}");
    assert_eq!(won.lead.unwrap().status, Status::CloseWon);
    // What the operation kept is not overwritten by a late `complete` of the same request.
    store.complete("k-create", "fp", &response("late")).await.unwrap();
    assert!(
        matches!(store.claim("k-create", "fp", "fp", HOUR, HOUR).await.unwrap(), Claim::Replay(r) if r.status == 201)
    );
}

pub async fn unchanged_answers_are_recorded_too(store: Arc<dyn Backend>) {
    let lead = store.create(&ntb("RM001"), &ctx("r1")).await.unwrap();
    let (s, id) = (store.clone(), lead.id.clone());
    claim_run_replay(&store, "k-existing", |c| async move {
        let o = s.create(&ntb("RM001"), &c).await.unwrap();
        assert_eq!((o.result, o.id.as_str()), (CreateResult::Existing, id.as_str()));
        let r = render(Answer::Create(&o));
        (o, r)
    })
    .await;
    store.close_won(RecordType::Lead, &lead.id, true, &ctx("r2")).await.unwrap();
    let s = store.clone();
    let id = lead.id.clone();
    claim_run_replay(&store, "k-already-won", |c| async move {
        let o = s.close_won(RecordType::Lead, &id, true, &c).await.unwrap();
        let r = render(Answer::CloseWon(&o));
        (o, r)
    })
    .await;
    let opp = store.create(&etb("RM001"), &ctx("r3")).await.unwrap();
    store.close_lost(RecordType::Opportunity, &opp.id, &ctx("r4")).await.unwrap();
    let s = store.clone();
    claim_run_replay(&store, "k-already-lost", |c| async move {
        let o = s.close_lost(RecordType::Opportunity, &opp.id, &c).await.unwrap();
        let r = render(Answer::CloseLost(&o));
        (o, r)
    })
    .await;
    let h = store.get(RecordType::Lead, &lead.id).await.unwrap().unwrap().history;
    assert_eq!(h.len(), 2, "the unchanged answers changed no record");
}

pub async fn refusals_and_foreign_tickets_record_nothing(store: Arc<dyn Backend>) {
    // A refusal is not the store's to keep (the HTTP layer completes the key with its problem response).
    assert_eq!(store.claim("k-404", "fp", "fp", HOUR, HOUR).await.unwrap(), Claim::Proceed);
    let missing = store.close_lost(RecordType::Lead, "no-such-id", &with_ticket("r1", "k-404", "fp")).await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");
    assert_eq!(store.claim("k-404", "fp", "fp", HOUR, HOUR).await.unwrap(), Claim::InUse, "still running");
    // A ticket only completes the claim it names: the same key for another request is left alone, and an
    // unclaimed key is not created.
    assert_eq!(store.claim("k-other", "fp-a", "fp-a", HOUR, HOUR).await.unwrap(), Claim::Proceed);
    store.create(&ntb("RM001"), &with_ticket("r2", "k-other", "fp-b")).await.unwrap();
    assert_eq!(store.claim("k-other", "fp-a", "fp-a", HOUR, HOUR).await.unwrap(), Claim::InUse);
    store.create(&ntb("RM001"), &with_ticket("r3", "k-unclaimed", "fp")).await.unwrap();
    assert_eq!(store.claim("k-unclaimed", "fp", "fp", HOUR, HOUR).await.unwrap(), Claim::Proceed);
}

/// Expands to one `#[tokio::test]` per case of the [`Sidecar`] contract. `$make` is
/// `async fn() -> (Arc<dyn Sidecar>, G)` (a fresh, empty store and what keeps it alive); `$replica` is
/// `async fn(&G) -> Arc<dyn Sidecar>`, a second store on the same database, as another replica would open.
#[macro_export]
macro_rules! sidecar_suite {
    ($make:path, $replica:path) => {
        $crate::sidecar_suite!(@cases $make, $replica;
            sidecar_lock_excludes,
            sidecar_dropped_lock_frees_the_key_promptly,
            sidecar_lock_excludes_across_replicas,
            sidecar_record_and_history_round_trip,
            sidecar_record_completes_the_key,
            sidecar_key_of,
        );
    };
    (@cases $make:path, $replica:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let (store, guard) = $make().await;
                let replica = $replica(&guard).await;
                $crate::contract::$case(store, replica).await;
            }
        )*
    };
}

const LEASE: Duration = Duration::from_secs(30);
const NO_WAIT: Duration = Duration::from_millis(200);

/// Whether `lock_key` on `key` is refused as unavailable after waiting (about) `NO_WAIT`.
async fn refused(store: &dyn Sidecar, key: &str) -> bool {
    let started = std::time::Instant::now();
    match store.lock_key(key, LEASE, NO_WAIT).await {
        Err(StoreError::Unavailable { .. }) => {
            assert!(started.elapsed() >= NO_WAIT, "gave up before the wait: {:?}", started.elapsed());
            assert!(started.elapsed() < NO_WAIT * 10, "waited far longer than asked: {:?}", started.elapsed());
            true
        }
        Ok(_) => false,
        Err(e) => panic!("unexpected {e:?}"),
    }
}

pub async fn sidecar_lock_excludes(store: Arc<dyn Sidecar>, _replica: Arc<dyn Sidecar>) {
    let held = store.lock_key("079123456789/CREDIT_CARD", LEASE, NO_WAIT).await.unwrap();
    assert!(refused(&*store, "079123456789/CREDIT_CARD").await, "a second holder of one key");
    // Other keys are not blocked.
    let other = store.lock_key("079123456789/LOAN", LEASE, NO_WAIT).await.unwrap();
    let third = store.lock_key("OTHER/CREDIT_CARD", LEASE, NO_WAIT).await.unwrap();
    drop(held);
    let again = store.lock_key("079123456789/CREDIT_CARD", LEASE, Duration::from_secs(5)).await.unwrap();
    assert!(refused(&*store, "079123456789/LOAN").await, "the other key is still held");
    drop((other, third, again));
}

pub async fn sidecar_dropped_lock_frees_the_key_promptly(store: Arc<dyn Sidecar>, _replica: Arc<dyn Sidecar>) {
    let held = store.lock_key("k", LEASE, NO_WAIT).await.unwrap();
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            let lock = store.lock_key("k", LEASE, Duration::from_secs(10)).await.unwrap();
            (lock, std::time::Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "the waiter got a held key");
    let dropped = std::time::Instant::now();
    drop(held);
    let (_lock, got) = waiter.await.unwrap();
    assert!(got - dropped < Duration::from_secs(1), "the key was freed {:?} after the drop", got - dropped);
    // Many holders one after another, each released by drop: no hold outlives its guard.
    for _ in 0..20 {
        drop(store.lock_key("quick", LEASE, Duration::from_secs(2)).await.unwrap());
    }
}

pub async fn sidecar_lock_excludes_across_replicas(a: Arc<dyn Sidecar>, b: Arc<dyn Sidecar>) {
    let held = a.lock_key("shared", LEASE, NO_WAIT).await.unwrap();
    assert!(refused(&*b, "shared").await, "another replica took a held key");
    drop(b.lock_key("elsewhere", LEASE, NO_WAIT).await.unwrap());
    drop(held);
    drop(b.lock_key("shared", LEASE, Duration::from_secs(5)).await.unwrap());
    // Both replicas hammering one key: never two holders at once.
    let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let inside = inside.clone();
            tokio::spawn(async move {
                let _lock = store.lock_key("contended", LEASE, Duration::from_secs(30)).await.unwrap();
                assert_eq!(inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst), 0, "two holders at once");
                tokio::time::sleep(Duration::from_millis(10)).await;
                inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

pub(crate) fn audit(
    record_id: &str,
    key: &str,
    from: Option<Status>,
    to: Status,
    at_micros: i64,
    request_id: &str,
) -> AuditEntry {
    AuditEntry {
        record_id: record_id.into(),
        record_type: RecordType::Lead,
        match_key: key.into(),
        entry: HistoryEntry {
            from,
            to,
            at: time::OffsetDateTime::from_unix_timestamp_nanos(
                1_700_000_000_000_000_000 + i128::from(at_micros) * 1000,
            )
            .unwrap(),
            request_id: request_id.into(),
            channel: Channel::parse("MOBILE_APP").unwrap(),
            reason: (to == Status::CloseLost).then(|| Reason::parse("NCB_REJECTED").unwrap()),
        },
        origin: None,
    }
}

pub async fn sidecar_record_and_history_round_trip(store: Arc<dyn Sidecar>, _replica: Arc<dyn Sidecar>) {
    let created = audit("006A", "K1", None, Status::NewLead, 123_456, "r1");
    let other = audit("006B", "K1", None, Status::NewLead, 200_000, "r1");
    store.record(&[created.clone(), other.clone()], None, None).await.unwrap();
    let lost = audit("006A", "K1", Some(Status::NewLead), Status::CloseLost, 1_000_001, "r2");
    store.record(std::slice::from_ref(&lost), None, None).await.unwrap();
    assert_eq!(store.history("006A").await.unwrap(), vec![created.entry, lost.entry], "oldest first, exact");
    assert_eq!(store.history("006B").await.unwrap(), vec![other.entry]);
    assert_eq!(store.history("never-changed").await.unwrap(), vec![]);
    store.record(&[], None, None).await.unwrap();
    store.sidecar_ready().await.unwrap();
}

pub async fn sidecar_record_completes_the_key(store: Arc<dyn Sidecar>, _replica: Arc<dyn Sidecar>) {
    assert_eq!(store.claim("k", "fp", "fp", HOUR, HOUR).await.unwrap(), Claim::Proceed);
    let r = response("{\"id\":\"006A\"}");
    let entry = audit("006A", "K1", None, Status::NewLead, 0, "r1");
    store.record(std::slice::from_ref(&entry), None, Some(("k", "fp", r.clone()))).await.unwrap();
    assert_eq!(store.claim("k", "fp", "fp", HOUR, HOUR).await.unwrap(), Claim::Replay(r.clone()));
    assert_eq!(store.history("006A").await.unwrap().len(), 1);
    // Only the claim it names: another request's fingerprint, or a key already answered, is left alone.
    assert_eq!(store.claim("k2", "fp-a", "fp-a", HOUR, HOUR).await.unwrap(), Claim::Proceed);
    store.record(&[], None, Some(("k2", "fp-b", response("no")))).await.unwrap();
    assert_eq!(store.claim("k2", "fp-a", "fp-a", HOUR, HOUR).await.unwrap(), Claim::InUse);
    store.record(&[], None, Some(("k", "fp", response("late")))).await.unwrap();
    assert_eq!(store.claim("k", "fp", "fp", HOUR, HOUR).await.unwrap(), Claim::Replay(r));
}

pub async fn sidecar_key_of(store: Arc<dyn Sidecar>, _replica: Arc<dyn Sidecar>) {
    assert_eq!(store.key_of("006A").await.unwrap(), None);
    store
        .record(
            &[
                audit("006A", "079123456789/CREDIT_CARD", None, Status::NewLead, 0, "r1"),
                audit("006B", "OTHER/LOAN", None, Status::NewLead, 1, "r1"),
            ],
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(store.key_of("006A").await.unwrap().as_deref(), Some("079123456789/CREDIT_CARD"));
    assert_eq!(store.key_of("006B").await.unwrap().as_deref(), Some("OTHER/LOAN"));
    assert_eq!(store.key_of("006C").await.unwrap(), None);
}
