//! The call budget, counted on the fake org, and the exact requests the adapter sends: create ≤ 2 calls
//! (EXISTING 1), close lost ≤ 2, close won ≤ 2, close won with conversion ≤ 3, on a cold owner cache too.
//! Token requests and the start-up check are not counted (the org's call log starts after them).

mod support;

use lifecycle::{CreateResult, CustomerType, RecordType, Status};
use salesforce_fake::CallKind;
use serde_json::{json, Value};
use store::contract::{ctx, request};
use store::Store;

/// The calls since the last look, and their kinds.
fn take(org: &salesforce_fake::FakeOrg) -> Vec<salesforce_fake::Call> {
    let calls = org.calls();
    org.clear_calls();
    calls
}

fn decoded(url: &str) -> String {
    url::form_urlencoded::parse(url.split_once('?').map_or("", |(_, q)| q).as_bytes())
        .map(|(_, v)| v.into_owned())
        .collect::<Vec<_>>()
        .join("&")
}

#[tokio::test]
async fn create_reads_once_and_writes_once_even_on_a_cold_cache() {
    let env = support::env().await;
    env.org.clear_calls();
    let ntb = request(CustomerType::Ntb, "079123456789", "CREDIT_CARD", "RM001");

    let first = env.store.create(&ntb, &ctx("r1")).await.unwrap();
    assert_eq!(first.result, CreateResult::Created);
    let calls = take(&env.org);
    assert_eq!(calls.len(), 2, "read + write: {:?}", calls.iter().map(|c| &c.path).collect::<Vec<_>>());
    assert!(calls.iter().all(|c| c.kind == CallKind::Composite && c.path.ends_with("/services/data/v62.0/composite")));
    // The read: open opportunities, open leads and the owner lookup, all queries, in one call.
    let read = &calls[0];
    assert_eq!(read.body.as_ref().unwrap()["allOrNone"], json!(false));
    let queries: Vec<String> = read
        .subrequests
        .iter()
        .map(|(m, u)| {
            assert_eq!(m, "GET");
            decoded(u)
        })
        .collect();
    assert_eq!(queries.len(), 3, "{queries:?}");
    assert!(queries[0].contains("FROM Opportunity") && queries[0].contains("IsClosed = false"), "{}", queries[0]);
    assert!(queries[0].contains("IdNumber__c = '079123456789'") && queries[0].contains("Product__c = 'CREDIT_CARD'"));
    assert!(queries[1].contains("FROM Lead") && queries[1].contains("IsConverted = false"), "{}", queries[1]);
    assert!(queries[1].contains("Status != 'Closed - Not Converted'"));
    assert!(queries[2].contains("FROM User WHERE FederationIdentifier = 'RM001'"), "{}", queries[2]);
    // The write: one allOrNone composite creating the lead with every field the org requires.
    let write = calls[1].body.as_ref().unwrap();
    assert_eq!(write["allOrNone"], json!(true));
    let subs = write["compositeRequest"].as_array().unwrap();
    assert_eq!(subs.len(), 2, "the create, and the org's creation time read by reference");
    assert_eq!(subs[1]["method"], "GET");
    assert!(decoded(subs[1]["url"].as_str().unwrap()).contains("WHERE Id = '@{created.id}'"));
    assert_eq!(
        (subs[0]["method"].as_str(), subs[0]["url"].as_str()),
        (Some("POST"), Some("/services/data/v62.0/sobjects/Lead"))
    );
    let body = &subs[0]["body"];
    assert_eq!(body["LastName"], "Nguyen Van A");
    assert_eq!(body["Company"], "Nguyen Van A");
    assert_eq!(body["Status"], "Open - Not Contacted");
    assert_eq!(body["IdNumber__c"], "079123456789");
    assert_eq!(body["Product__c"], "CREDIT_CARD");
    assert_eq!(body["CustomerType__c"], "NTB");
    assert_eq!(body["Channel__c"], "MOBILE_APP");
    assert_eq!(body["JourneyId__c"], "J-1");
    assert_eq!(body["Email"], "a@example.com");
    let rm001 = env.org.records("User").into_iter().find(|u| u["FederationIdentifier"] == "RM001").unwrap();
    assert_eq!(body["OwnerId"], rm001["Id"]);
    // The org holds the lead as asked.
    let lead = env.org.record("Lead", &first.id).unwrap();
    assert_eq!(lead["OwnerId"], rm001["Id"]);

    // EXISTING: one call (the cache knows RM001 now, so no lookup rides along).
    let again = env.store.create(&ntb, &ctx("r2")).await.unwrap();
    assert_eq!((again.result, again.id.as_str()), (CreateResult::Existing, first.id.as_str()));
    let calls = take(&env.org);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].subrequests.len(), 2, "opportunities and leads, no owner lookup");

    // REPLACED with an owner not yet cached: still two calls; the close and the create are one composite.
    let replaced = env
        .store
        .create(&request(CustomerType::Ntb, "079123456789", "CREDIT_CARD", "RM002"), &ctx("r3"))
        .await
        .unwrap();
    assert_eq!(replaced.result, CreateResult::Replaced);
    let calls = take(&env.org);
    assert_eq!(calls.len(), 2);
    let subs = calls[1].body.as_ref().unwrap()["compositeRequest"].as_array().unwrap().clone();
    assert_eq!(subs.len(), 3);
    assert_eq!(subs[0]["method"], "PATCH");
    assert_eq!(subs[0]["url"], format!("/services/data/v62.0/sobjects/Lead/{}", first.id));
    assert_eq!(subs[0]["body"], json!({"Status": "Closed - Not Converted"}));
    assert_eq!(subs[1]["method"], "POST");
    assert_eq!(env.org.record("Lead", &first.id).unwrap()["Status"], "Closed - Not Converted");
}

#[tokio::test]
async fn etb_reads_no_leads() {
    let env = support::env().await;
    env.org.clear_calls();
    let etb = request(CustomerType::Etb, "X1", "LOAN", "RM001");
    let created = env.store.create(&etb, &ctx("r1")).await.unwrap();
    let calls = take(&env.org);
    assert_eq!(calls.len(), 2);
    assert!(calls[0].subrequests.iter().all(|(_, u)| !decoded(u).contains("FROM Lead")), "{:?}", calls[0].subrequests);
    let body = &calls[1].body.as_ref().unwrap()["compositeRequest"][0]["body"];
    assert_eq!(body["StageName"], "Prospecting");
    assert_eq!(body["Cif__c"], "CIF001");
    assert_eq!(body["CustomerType__c"], "ETB");
    assert!(body["Name"].as_str().unwrap().starts_with("LOAN - "));
    assert!(body["CloseDate"].as_str().unwrap().len() == 10);
    assert_eq!(env.org.record("Opportunity", &created.id).unwrap()["IsClosed"], json!(false));
}

#[tokio::test]
async fn closes_and_conversion_stay_within_budget() {
    let env = support::env().await;
    let ntb = request(CustomerType::Ntb, "079123456789", "CREDIT_CARD", "RM001");
    let etb = request(CustomerType::Etb, "ETB1", "CREDIT_CARD", "RM001");
    let lead = env.store.create(&ntb, &ctx("r1")).await.unwrap();
    let opp = env.store.create(&etb, &ctx("r2")).await.unwrap();

    env.org.clear_calls();
    env.store.close_won(RecordType::Opportunity, &opp.id, true, &ctx("r3")).await.unwrap();
    let calls = take(&env.org);
    assert_eq!(calls.len(), 2, "close won: read + write");
    assert_eq!(env.org.record("Opportunity", &opp.id).unwrap()["StageName"], "Closed Won");
    assert_eq!(env.org.record("Opportunity", &opp.id).unwrap()["IsWon"], json!(true));

    let won = env.store.close_won(RecordType::Lead, &lead.id, true, &ctx("r4")).await.unwrap();
    let calls = take(&env.org);
    assert_eq!(calls.len(), 3, "conversion: read + convertLead + update");
    assert_eq!(calls.iter().filter(|c| c.kind == CallKind::Soap).count(), 1);
    let soap = calls.iter().find(|c| c.kind == CallKind::Soap).unwrap();
    assert_eq!(soap.path, "/services/Soap/u/62.0");
    assert!(soap.raw_body.contains("<urn:convertedStatus>Closed - Converted</urn:convertedStatus>"));
    assert!(soap.raw_body.contains(&format!("<urn:leadId>{}</urn:leadId>", lead.id)));
    let opp_id = won.opportunity.unwrap().id;
    let lead_rec = env.org.record("Lead", &lead.id).unwrap();
    assert_eq!(lead_rec["IsConverted"], json!(true));
    assert_eq!(lead_rec["Status"], "Closed - Converted");
    assert_eq!(lead_rec["ConvertedOpportunityId"], json!(opp_id));
    let o = env.org.record("Opportunity", &opp_id).unwrap();
    assert_eq!((o["StageName"].as_str(), &o["IsWon"]), (Some("Closed Won"), &json!(true)));
    assert_eq!(o["IdNumber__c"], "079123456789", "our fields follow the lead onto its opportunity");

    // A repeat answers as the first time with one read.
    env.store.close_won(RecordType::Lead, &lead.id, true, &ctx("r5")).await.unwrap();
    assert_eq!(take(&env.org).len(), 1);

    let other = env.store.create(&request(CustomerType::Ntb, "Z9", "CARD", "RM001"), &ctx("r6")).await.unwrap();
    env.org.clear_calls();
    env.store.close_lost(RecordType::Lead, &other.id, &ctx("r7")).await.unwrap();
    assert_eq!(take(&env.org).len(), 2, "close lost: read + write");
    assert_eq!(env.org.record("Lead", &other.id).unwrap()["Status"], "Closed - Not Converted");
    // Mistyped or malformed ids are refused without a call.
    let _ = env.store.close_lost(RecordType::Opportunity, &other.id, &ctx("r8")).await;
    let _ = env.store.get(RecordType::Lead, "'; DELETE").await;
    assert_eq!(take(&env.org).len(), 0);
}

#[tokio::test]
async fn records_made_by_hand_are_found_and_healed() {
    let env = support::env().await;
    let rm9 = env.org.add_user("RM9", true);
    // Two open leads for one key made by RMs in the org (reading 3), neither ours.
    let fields = |owner: &str| json!({"LastName": "Tran", "Company": "Tran", "OwnerId": owner, "IdNumber__c": "H1", "Product__c": "CARD"});
    let a = env.org.insert("Lead", fields(&rm9));
    let b = env.org.insert("Lead", fields(&rm9));
    let same = env.store.create(&request(CustomerType::Ntb, "H1", "CARD", "RM9"), &ctx("r1")).await.unwrap();
    assert_eq!((same.result, same.id.as_str()), (CreateResult::Existing, b.as_str()), "the newest of the same owner");
    let other = env.store.create(&request(CustomerType::Ntb, "H1", "CARD", "RM001"), &ctx("r2")).await.unwrap();
    assert_eq!(other.result, CreateResult::Replaced);
    let mut closed = other.closed_record_ids.clone();
    closed.sort();
    assert_eq!(closed, vec![a.clone(), b.clone()]);
    for id in [&a, &b] {
        let got = env.store.get(RecordType::Lead, id).await.unwrap().unwrap();
        assert_eq!(got.record.status, Status::CloseLost);
        assert_eq!(got.record.owner_id.as_str(), "RM9", "owner shown as the RM code");
    }
    // A lead made by hand is closed by id as well (its key learned from the org).
    let c = env.org.insert("Lead", fields(&rm9));
    env.store.close_lost(RecordType::Lead, &c, &ctx("r3")).await.unwrap();
    assert_eq!(env.org.record("Lead", &c).unwrap()["Status"], "Closed - Not Converted");
}

#[tokio::test]
async fn unknown_and_inactive_owners_are_refused() {
    let env = support::env().await;
    env.org.add_user("RM_GONE", false);
    for rm in ["RM_NOBODY", "RM_GONE"] {
        let r = env.store.create(&request(CustomerType::Ntb, "U1", "CARD", rm), &ctx("r")).await;
        assert!(matches!(r, Err(store::StoreError::UnknownOwner)), "{rm}: {r:?}");
    }
    assert!(env.org.records("Lead").is_empty(), "nothing written");
}

#[tokio::test]
async fn the_org_refusing_the_data_is_a_rejection_naming_its_code() {
    let env = support::env().await;
    env.org.validation_rule("Lead", "Product__c", "BANNED", "This product cannot be sold to prospects");
    let r = env.store.create(&request(CustomerType::Ntb, "V1", "BANNED", "RM001"), &ctx("r")).await;
    match r {
        Err(store::StoreError::Rejected { code, .. }) => assert_eq!(code, "FIELD_CUSTOM_VALIDATION_EXCEPTION"),
        other => panic!("{other:?}"),
    }
    // A replacing create refused by the org leaves the old lead open: the composite rolled back.
    let old = env.store.create(&request(CustomerType::Ntb, "V2", "CARD", "RM001"), &ctx("r1")).await.unwrap();
    env.org.validation_rule(
        "Lead",
        "OwnerId",
        env.org.records("User").into_iter().find(|u| u["FederationIdentifier"] == "RM002").unwrap()["Id"]
            .as_str()
            .unwrap(),
        "RM002 takes no leads",
    );
    let r = env.store.create(&request(CustomerType::Ntb, "V2", "CARD", "RM002"), &ctx("r2")).await;
    assert!(matches!(r, Err(store::StoreError::Rejected { .. })), "{r:?}");
    assert_eq!(env.org.record("Lead", &old.id).unwrap()["Status"], "Open - Not Contacted", "rolled back");
    let leads: Vec<Value> = env.org.records("Lead");
    assert_eq!(leads.len(), 1);

    // A duplicate rule of the org (same e-mail on another prospect) is the request's data too.
    env.org.duplicate_rule("Lead", "Email");
    let r = env.store.create(&request(CustomerType::Ntb, "V3", "CARD", "RM001"), &ctx("r3")).await;
    match r {
        Err(store::StoreError::Rejected { code, field, .. }) => {
            assert_eq!(code, "DUPLICATES_DETECTED");
            assert_eq!(field, None, "a duplicate rule names no field");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(env.org.records("Lead").len(), 1, "nothing written");
}

/// With events on, a hand-over's event names the replaced record's owner by RM code: known from the cache
/// it costs nothing more; unknown, one user lookup, made before the write.
#[tokio::test]
async fn events_name_a_replaced_owner_with_at_most_one_lookup() {
    for (cache, expected) in [(std::time::Duration::from_secs(300), 2), (std::time::Duration::ZERO, 3)] {
        let env = support::env_on(support::org().await, |c| {
            c.events = true;
            c.owner_cache = cache;
        })
        .await;
        env.store.create(&request(CustomerType::Ntb, "079123456789", "CARD", "RM001"), &ctx("r1")).await.unwrap();
        take(&env.org);
        let replaced = request(CustomerType::Ntb, "079123456789", "CARD", "RM002");
        assert_eq!(env.store.create(&replaced, &ctx("r2")).await.unwrap().result, CreateResult::Replaced);
        let calls = take(&env.org);
        assert_eq!(calls.len(), expected, "cache {cache:?}: {:?}", calls.iter().map(|c| &c.path).collect::<Vec<_>>());
        if expected == 3 {
            let lookup: Vec<String> = calls[1].subrequests.iter().map(|(_, u)| decoded(u)).collect();
            assert!(lookup.len() == 1 && lookup[0].contains("FROM User WHERE Id IN"), "{lookup:?}");
        }
    }
}
