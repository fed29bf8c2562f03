//! Faults of the org, as Salesforce documents them, and what the adapter makes of each: an expired session
//! is renewed once, transient failures of reads are retried, a write whose answer is lost is read back, the
//! daily limit and a persistent outage open the circuit breaker, and a conversion cut short is finished by
//! the next call (with its `opportunity.converted` event, still owed).

mod support;

use std::time::Duration;

use lifecycle::{CreateResult, CustomerType, RecordType, Status};
use salesforce_fake::Fault;
use serde_json::json;
use store::contract::{ctx, request};
use store::events::Outbox;
use store::{Store, StoreError};

fn ntb(id: &str) -> store::CreateRequest {
    request(CustomerType::Ntb, id, "CARD", "RM001")
}

#[tokio::test]
async fn an_expired_session_is_renewed_once_and_the_call_repeated() {
    let env = support::env().await;
    let tokens = env.org.token_requests();
    env.org.fail_next(Fault::SessionExpired, 1);
    let created = env.store.create(&ntb("S1"), &ctx("r1")).await.unwrap();
    assert_eq!(created.result, CreateResult::Created);
    assert_eq!(env.org.token_requests(), tokens + 1, "exactly one new token");
    // Several calls finding the session expired at once fetch one token between them.
    env.org.expire_sessions();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = env.store.clone();
            tokio::spawn(async move { store.get(RecordType::Lead, &format!("00Q000000000{i:03}")).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(env.org.token_requests(), tokens + 2);
}

#[tokio::test]
async fn transient_failures_of_reads_are_retried() {
    let env = support::env().await;
    env.org.fail_next(Fault::ServerUnavailable, 2);
    let created = env.store.create(&ntb("T1"), &ctx("r1")).await.unwrap();
    assert_eq!(created.result, CreateResult::Created, "the read was retried past two 503s");
    env.org.fail_next(Fault::UnableToLockRow, 1);
    let lost = env.store.close_lost(RecordType::Lead, &created.id, &ctx("r2")).await.unwrap();
    assert_eq!(lost.status, Status::CloseLost, "a write refused with UNABLE_TO_LOCK_ROW (rolled back) is retried");
    // Inside a composite the row lock comes as a subresponse of an HTTP 200: retried too.
    env.org.fail_next(Fault::DelayBefore(Duration::ZERO), 1); // the key read
    env.org.fail_next(Fault::UnableToLockRow, 1);
    let replaced = env.store.create(&request(CustomerType::Ntb, "T1", "CARD", "RM002"), &ctx("r3")).await;
    assert_eq!(replaced.unwrap().result, CreateResult::Created, "the composite was sent again after the rollback");
}

#[tokio::test]
async fn a_write_whose_answer_is_lost_is_read_back() {
    // The org applies the create, then answers after the client has given up.
    let env = support::env_on(support::org().await, |c| c.timeout = Duration::from_millis(300)).await;
    let ntb = ntb("L1");
    env.store.create(&request(CustomerType::Ntb, "WARM", "CARD", "RM001"), &ctx("warm")).await.unwrap();
    env.org.clear_calls();
    env.org.fail_next(Fault::DelayBefore(Duration::ZERO), 1); // the read goes through
    env.org.fail_next(Fault::DelayAfter(Duration::from_millis(900)), 1);
    let created = env.store.create(&ntb, &ctx("r1")).await;
    let leads = env.org.records("Lead");
    let ours: Vec<_> = leads.iter().filter(|l| l["IdNumber__c"] == "L1").collect();
    assert_eq!(ours.len(), 1, "the write happened once");
    let created = created.expect("the read-back found the write");
    assert_eq!(created.result, CreateResult::Created);
    assert_eq!(json!(created.id), ours[0]["Id"]);
    let history = env.store.get(RecordType::Lead, &created.id).await.unwrap().unwrap().history;
    assert_eq!(history.len(), 1, "the audit has the creation");
}

#[tokio::test]
async fn a_write_lost_before_the_org_saw_it_is_unavailable_and_changed_nothing() {
    let env = support::env_on(support::org().await, |c| c.timeout = Duration::from_millis(300)).await;
    env.store.create(&request(CustomerType::Ntb, "WARM", "CARD", "RM001"), &ctx("warm")).await.unwrap();
    env.org.fail_next(Fault::DelayBefore(Duration::ZERO), 1);
    // The composite is answered 503 (not processed); the read-back proves nothing changed.
    env.org.fail_next(Fault::ServerUnavailable, 1);
    let r = env.store.create(&ntb("N1"), &ctx("r1")).await;
    assert!(matches!(r, Err(StoreError::Unavailable { .. })), "{r:?}");
    assert!(env.org.records("Lead").iter().all(|l| l["IdNumber__c"] != "N1"));
}

#[tokio::test]
async fn the_daily_limit_opens_the_breaker_and_readiness_tells() {
    let env = support::env().await;
    env.store.ready().await.unwrap();
    env.org.fail_next(Fault::RequestLimitExceeded, 1);
    let r = env.store.create(&ntb("D1"), &ctx("r1")).await;
    match r {
        Err(StoreError::Unavailable { retry_after, .. }) => {
            assert!(retry_after >= Duration::from_secs(60), "{retry_after:?}")
        }
        other => panic!("{other:?}"),
    }
    env.org.clear_calls();
    // While open, no call reaches the org: the outage does not pile up requests.
    let r = env.store.create(&ntb("D2"), &ctx("r2")).await;
    assert!(matches!(r, Err(StoreError::Unavailable { .. })), "{r:?}");
    assert!(env.org.calls().is_empty());
    assert!(matches!(env.store.ready().await, Err(StoreError::Unavailable { .. })));
}

#[tokio::test]
async fn a_persistent_outage_opens_the_breaker_then_it_recovers() {
    let env = support::env_on(support::org().await, |c| {
        c.breaker_failures = 3;
        c.breaker_cooldown = Duration::from_millis(400);
        c.max_attempts = 1;
    })
    .await;
    env.org.fail_next(Fault::ServerUnavailable, 3);
    for i in 0..3 {
        let r = env.store.create(&ntb(&format!("O{i}")), &ctx("r")).await;
        assert!(matches!(r, Err(StoreError::Unavailable { .. })), "{r:?}");
    }
    let before = env.org.calls().len();
    let r = env.store.get(RecordType::Lead, "00Q000000000001").await;
    assert!(matches!(r, Err(StoreError::Unavailable { .. })));
    assert_eq!(env.org.calls().len(), before, "open: failed fast, no call");
    assert!(env.store.ready().await.is_err());
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.store.ready().await.unwrap();
    assert_eq!(env.store.create(&ntb("O9"), &ctx("r")).await.unwrap().result, CreateResult::Created);
}

#[tokio::test]
async fn a_conversion_cut_short_is_finished_by_the_retry() {
    let env = support::env_on(support::org().await, |c| c.events = true).await;
    // (type, record, request) of each event in the local store's outbox.
    let events = || async {
        let pending = env.local.pending(100).await.unwrap();
        let bodies = pending.iter().map(|p| serde_json::from_str::<serde_json::Value>(&p.event.body).unwrap());
        let text = |e: &serde_json::Value, name: &str| e[name].as_str().unwrap_or_default().to_owned();
        bodies.map(|e| (text(&e, "type"), text(&e, "recordId"), text(&e, "requestId"))).collect::<Vec<_>>()
    };
    let lead = env.store.create(&ntb("C1"), &ctx("r1")).await.unwrap();
    // Read and convertLead go through; the update that sets the won stage fails.
    env.org.fail_next(Fault::DelayBefore(Duration::ZERO), 2);
    // Every attempt of the update (three by default) meets a row lock.
    env.org.fail_next(Fault::UnableToLockRow, 3);
    let r = env.store.close_won(RecordType::Lead, &lead.id, true, &ctx("r2")).await;
    assert!(r.is_err(), "{r:?}");
    let converted = env.org.record("Lead", &lead.id).unwrap();
    assert_eq!(converted["IsConverted"], json!(true));
    let opp = converted["ConvertedOpportunityId"].as_str().unwrap().to_owned();
    assert_eq!(env.org.record("Opportunity", &opp).unwrap()["IsWon"], json!(false), "half done");
    let lead_events = vec![
        ("lead.created".to_owned(), lead.id.clone(), "r1".to_owned()),
        ("lead.won".to_owned(), lead.id.clone(), "r2".to_owned()),
    ];
    assert_eq!(events().await, lead_events, "the lead's change stands, and so does its event");

    env.org.clear_calls();
    let won = env.store.close_won(RecordType::Lead, &lead.id, true, &ctx("r3")).await.unwrap();
    assert!(env.org.calls().len() <= 3, "the retry finishes within the conversion budget");
    assert_eq!(won.opportunity.as_ref().map(|o| o.id.as_str()), Some(opp.as_str()));
    assert_eq!(env.org.record("Opportunity", &opp).unwrap()["StageName"], "Closed Won");
    let history = env.store.get(RecordType::Opportunity, &opp).await.unwrap().unwrap().history;
    assert_eq!(history.len(), 1);
    assert_eq!((history[0].from, history[0].to), (None, Status::CloseWon));
    let converted = ("opportunity.converted".to_owned(), opp.clone(), "r3".to_owned());
    assert_eq!(events().await, [lead_events.clone(), vec![converted.clone()]].concat(), "the event still owed");
    // Done now: a further repeat changes nothing and reads once.
    env.org.clear_calls();
    env.store.close_won(RecordType::Lead, &lead.id, true, &ctx("r4")).await.unwrap();
    assert_eq!(env.org.calls().len(), 1);
    assert_eq!(events().await, [lead_events, vec![converted]].concat(), "and no event twice");
}

#[tokio::test]
async fn a_write_whose_client_timed_out_is_never_answered_nothing_changed() {
    // The org is slow: the client gives up on the composite while the org is still working on it. A real org
    // finishes a transaction whose client has left, so a read-back made meanwhile can see the key unchanged
    // and the write land after it. (The fake org drops a request whose client has gone, so here the write
    // never lands; the answer must not depend on that.)
    let env = support::env_on(support::org().await, |c| c.timeout = Duration::from_millis(300)).await;
    env.store.create(&request(CustomerType::Ntb, "WARM", "CARD", "RM001"), &ctx("warm")).await.unwrap();
    env.org.fail_next(Fault::DelayBefore(Duration::ZERO), 1); // the read goes through
    env.org.fail_next(Fault::DelayBefore(Duration::from_millis(700)), 1);
    let r = env.store.create(&ntb("SLOW1"), &ctx("r1")).await;
    assert!(matches!(r, Err(StoreError::OutcomeUnknown(_))), "a create: {r:?}");

    let lead = env.store.create(&ntb("SLOW2"), &ctx("r2")).await.unwrap();
    env.org.fail_next(Fault::DelayBefore(Duration::ZERO), 1);
    env.org.fail_next(Fault::DelayBefore(Duration::from_millis(700)), 1);
    let r = env.store.close_lost(RecordType::Lead, &lead.id, &ctx("r3")).await;
    assert!(matches!(r, Err(StoreError::OutcomeUnknown(_))), "a status change: {r:?}");

    let lead = env.store.create(&ntb("SLOW3"), &ctx("r4")).await.unwrap();
    env.org.fail_next(Fault::DelayBefore(Duration::ZERO), 1);
    env.org.fail_next(Fault::DelayBefore(Duration::from_millis(700)), 1);
    let r = env.store.close_won(RecordType::Lead, &lead.id, true, &ctx("r5")).await;
    assert!(matches!(r, Err(StoreError::OutcomeUnknown(_))), "a conversion: {r:?}");
}

#[tokio::test]
async fn after_an_unknown_outcome_the_key_stays_locked_while_the_write_may_still_land() {
    let env = support::env_on(support::org().await, |c| {
        c.timeout = Duration::from_millis(300);
        c.lock_wait = Duration::from_millis(200);
    })
    .await;
    env.store.create(&request(CustomerType::Ntb, "WARM", "CARD", "RM001"), &ctx("warm")).await.unwrap();
    env.org.fail_next(Fault::DelayBefore(Duration::ZERO), 1); // the read goes through
    env.org.fail_next(Fault::DelayBefore(Duration::from_millis(700)), 1);
    let r = env.store.create(&ntb("HOLD1"), &ctx("r1")).await;
    assert!(matches!(r, Err(StoreError::OutcomeUnknown(_))), "{r:?}");
    // Another request for the customer is kept out while the org may still apply the first …
    let blocked = env.store.create(&request(CustomerType::Ntb, "HOLD1", "CARD", "RM002"), &ctx("r2")).await;
    assert!(matches!(blocked, Err(StoreError::Unavailable { .. })), "{blocked:?}");
    // … other customers are not …
    env.store.create(&ntb("OTHER"), &ctx("r3")).await.unwrap();
    // … and once the hold is over (three call timeouts), the customer is served again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let later = env.store.create(&request(CustomerType::Ntb, "HOLD1", "CARD", "RM002"), &ctx("r4")).await.unwrap();
    assert_ne!(later.result, CreateResult::Existing);
}
