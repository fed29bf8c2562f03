//! What any input can do to the queries and the matching: request values with SOQL's and the composite
//! API's special characters, ids in either of Salesforce's two forms, and id numbers that differ only in case.

mod support;

use lifecycle::{CreateResult, CustomerType, IdNumber, Product, RecordType};
use serde_json::json;
use store::contract::{ctx, request};
use store::{Store, StoreError};

/// `@{…}` is how a composite subrequest names an earlier one's result; in a request value it is only text.
#[tokio::test]
async fn a_composite_reference_in_a_request_value_is_only_text() {
    let env = support::env().await;
    let rm = "RM@{Opportunity.records[0].Id}";
    let user = env.org.add_user(rm, true);
    // Made by hand in the org: the reads must find it by the exact text of its product and owner code.
    for product in ["P@{x}", "@{Opportunity.records[0].Id}", "A'@{owner.records[0].Id}\\"] {
        let lead = env.org.insert(
            "Lead",
            json!({"LastName": "Tran", "Company": "Tran", "OwnerId": user, "IdNumber__c": "REF1", "Product__c": product}),
        );
        let r = request(CustomerType::Ntb, "REF1", product, rm);
        let found = env.store.create(&r, &ctx("e")).await.unwrap();
        assert_eq!((found.result, found.id.as_str()), (CreateResult::Existing, lead.as_str()), "{product}");
        let got = env.store.get(RecordType::Lead, &lead).await.unwrap().unwrap();
        assert_eq!((got.record.product.as_str(), got.record.owner_id.as_str()), (product, rm));
        let id_number = IdNumber::parse("REF1").unwrap();
        let search = env.store.search(&id_number, Some(&Product::parse(product).unwrap())).await.unwrap();
        assert_eq!(search.leads.len(), 1, "{product}");
    }
    // A value the service writes: the org reads it as a reference and refuses it. That is the request's
    // data, not our configuration, and nothing is written.
    let r = request(CustomerType::Ntb, "REF2", "Q@{x}", "RM001");
    match env.store.create(&r, &ctx("c")).await {
        Err(StoreError::Rejected { field, .. }) => assert_eq!(field.as_deref(), Some("product")),
        other => panic!("{other:?}"),
    }
    assert!(env.org.records("Lead").iter().all(|l| l["IdNumber__c"] != "REF2"));
}

/// `idNumber` is compared without regard to case (the service upper-cases it at the edge, and SOQL's `=`
/// ignores case too), so `ab12` and `AB12` are one customer, a lead made by hand in lower case included. A
/// product that differs only in case is still another product, as on the SQL backends.
#[tokio::test]
async fn id_numbers_match_whatever_their_case_products_do_not() {
    let env = support::env().await;
    let upper = env.store.create(&request(CustomerType::Ntb, "AB12", "CARD", "RM001"), &ctx("r1")).await.unwrap();
    assert_eq!(env.org.record("Lead", &upper.id).unwrap()["IdNumber__c"], "AB12");
    let lower = env.store.create(&request(CustomerType::Ntb, "ab12", "CARD", "RM001"), &ctx("r2")).await.unwrap();
    assert_eq!((lower.result, lower.id.as_str()), (CreateResult::Existing, upper.id.as_str()), "{lower:?}");
    let product = env.store.create(&request(CustomerType::Ntb, "AB12", "Card", "RM002"), &ctx("r3")).await.unwrap();
    assert_eq!(product.result, CreateResult::Created, "{product:?}");
    assert_eq!(env.org.record("Lead", &upper.id).unwrap()["Status"], "Open - Not Contacted", "left open");
    for asked in ["ab12", "AB12"] {
        let search = env.store.search(&IdNumber::parse(asked).unwrap(), Some(&Product::parse("CARD").unwrap())).await;
        assert_eq!(search.unwrap().leads.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(), vec![upper.id.as_str()]);
    }
    // Made by hand in the org, in lower case: found by the upper-cased request, and replaced like any other.
    let rm9 = env.org.add_user("RM9", true);
    let by_hand = env.org.insert(
        "Lead",
        json!({"LastName": "Tran", "Company": "Tran", "OwnerId": rm9, "IdNumber__c": "cd34", "Product__c": "CARD"}),
    );
    let found = env.store.create(&request(CustomerType::Ntb, "CD34", "CARD", "RM9"), &ctx("r4")).await.unwrap();
    assert_eq!((found.result, found.id.as_str()), (CreateResult::Existing, by_hand.as_str()));
    let replaced = env.store.create(&request(CustomerType::Ntb, "cd34", "CARD", "RM001"), &ctx("r5")).await.unwrap();
    assert_eq!(replaced.closed_record_ids, vec![by_hand.clone()]);
    // It keeps the case it was made with; the service does not rewrite records it did not make.
    assert_eq!(env.org.record("Lead", &by_hand).unwrap()["IdNumber__c"], "cd34");
}

/// A 15-character id names the same record as its 18-character form: same history, same key and lock.
#[tokio::test]
async fn a_fifteen_character_id_is_the_same_record() {
    let env = support::env().await;
    let lead = env.store.create(&request(CustomerType::Ntb, "ID15", "CARD", "RM001"), &ctx("r1")).await.unwrap();
    let short = &lead.id[..15];
    let got = env.store.get(RecordType::Lead, short).await.unwrap().unwrap();
    assert_eq!(got.record.id, lead.id);
    assert_eq!(got.history.len(), 1, "the creation, kept under the record's id");
    env.store.close_lost(RecordType::Lead, short, &ctx("r2")).await.unwrap();
    assert_eq!(env.store.get(RecordType::Lead, short).await.unwrap().unwrap().history.len(), 2);
}
