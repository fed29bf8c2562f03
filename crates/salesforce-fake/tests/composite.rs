//! The composite resource: references, allOrNone rollback, limits, malformed bodies.
mod support;

use salesforce_fake::CallKind;
use serde_json::{json, Value};
use support::*;

fn sub(method: &str, url: &str, reference: &str, body: Option<Value>) -> Value {
    let mut s = json!({"method": method, "url": url, "referenceId": reference});
    if let Some(b) = body {
        s["body"] = b;
    }
    s
}

#[tokio::test]
async fn references_chain_subrequests_and_the_request_is_one_call() {
    let c = start().await;
    let rm = c.org.add_user("RM001", true);
    let body = json!({"allOrNone": true, "compositeRequest": [
        sub("GET", &format!("{V}/query?q=SELECT+Id+FROM+User+WHERE+FederationIdentifier+%3D+%27RM001%27"), "owner", None),
        sub("POST", &format!("{V}/sobjects/Lead"), "newLead", Some(json!({"LastName": "A", "Company": "A", "OwnerId": "@{owner.records[0].Id}"}))),
        sub("GET", &format!("{V}/sobjects/Lead/@{{newLead.id}}"), "readBack", None),
        sub("PATCH", &format!("{V}/sobjects/Lead/@{{newLead.id}}"), "touch", Some(json!({"FirstName": "From @{readBack.LastName}"}))),
    ]});
    let a = c.composite(body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let r = a.json()["compositeResponse"].clone();
    assert_eq!(r[1]["httpStatusCode"], 201);
    assert_eq!(r[1]["referenceId"], "newLead");
    let id = r[1]["body"]["id"].as_str().unwrap().to_string();
    assert_eq!(r[1]["httpHeaders"]["Location"], format!("{V}/sobjects/Lead/{id}"));
    assert_eq!(r[2]["body"]["OwnerId"], rm.as_str());
    assert_eq!(r[3]["httpStatusCode"], 204);
    assert_eq!(r[3]["body"], Value::Null);
    assert_eq!(c.org.record("Lead", &id).unwrap()["FirstName"], "From A");
    let calls = c.org.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].kind, CallKind::Composite);
    assert_eq!(calls[0].subrequests.len(), 4);
    assert_eq!(calls[0].subrequests[1].0, "POST");
    assert_eq!(a.headers["sforce-limit-info"], "api-usage=1/100000");
}

#[tokio::test]
async fn all_or_none_rolls_everything_back_and_halts_the_others() {
    let c = start().await;
    let rm = c.org.add_user("RM001", true);
    let old = c.org.insert(
        "Opportunity",
        json!({"Name": "Old", "StageName": "Prospecting", "CloseDate": "2026-12-31", "OwnerId": rm}),
    );
    let before = (c.org.records("Lead"), c.org.records("Opportunity"));
    let body = json!({"allOrNone": true, "compositeRequest": [
        sub("PATCH", &format!("{V}/sobjects/Opportunity/{old}"), "closeOld", Some(json!({"StageName": "Closed Lost"}))),
        sub("POST", &format!("{V}/sobjects/Lead"), "newLead", Some(lead(&rm, "K1"))),
        sub("POST", &format!("{V}/sobjects/Lead"), "badLead", Some(json!({"LastName": "B", "Company": "B", "Status": "Nope"}))),
        sub("GET", &format!("{V}/sobjects/Lead/@{{newLead.id}}"), "after", None),
    ]});
    let a = c.composite(body).await;
    assert_eq!(a.status, 200);
    let r = a.json()["compositeResponse"].clone();
    assert_eq!(r.as_array().unwrap().len(), 4);
    assert_eq!(r[2]["httpStatusCode"], 400);
    assert_eq!(r[2]["body"][0]["errorCode"], "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
    for i in [0, 1, 3] {
        assert_eq!(r[i]["httpStatusCode"], 400, "{i}");
        assert_eq!(
            r[i]["body"],
            json!([{"errorCode": "PROCESSING_HALTED", "message": "The transaction was rolled back since another operation in the same transaction failed."}])
        );
    }
    assert_eq!((c.org.records("Lead"), c.org.records("Opportunity")), before, "state unchanged");
    // the rolled-back key is free again
    assert_eq!(c.create("Lead", lead(&rm, "K1")).await.status, 201);
}

#[tokio::test]
async fn a_missing_reference_fails_that_subrequest() {
    let c = start().await;
    let body = json!({"allOrNone": false, "compositeRequest": [
        sub("GET", &format!("{V}/query?q=SELECT+Id+FROM+User+WHERE+FederationIdentifier+%3D+%27NOBODY%27"), "owner", None),
        sub("POST", &format!("{V}/sobjects/Lead"), "newLead", Some(json!({"LastName": "A", "Company": "A", "OwnerId": "@{owner.records[0].Id}"}))),
        sub("POST", &format!("{V}/sobjects/Lead"), "other", Some(json!({"LastName": "B", "Company": "B"}))),
        sub("PATCH", &format!("{V}/sobjects/Lead/@{{newLead.id}}"), "dependent", Some(json!({"FirstName": "x"}))),
    ]});
    let a = c.composite(body).await;
    let r = a.json()["compositeResponse"].clone();
    assert_eq!(r[0]["httpStatusCode"], 200);
    assert_eq!(r[1]["httpStatusCode"], 400);
    assert_eq!(r[1]["body"][0]["errorCode"], "PROCESSING_HALTED");
    assert_eq!(
        r[1]["body"][0]["message"],
        "Invalid reference specified. No value for owner.records[0].Id found in owner"
    );
    assert_eq!(r[2]["httpStatusCode"], 201, "allOrNone false: later independent subrequests run");
    assert_eq!(r[3]["httpStatusCode"], 400);
    assert_eq!(r[3]["body"][0]["errorCode"], "PROCESSING_HALTED");
    assert_eq!(c.org.records("Lead").len(), 1);
}

#[tokio::test]
async fn limits_and_malformed_bodies_are_top_level_400s() {
    let c = start().await;
    let many: Vec<Value> =
        (0..26).map(|i| sub("GET", &format!("{V}/sobjects/Lead/describe"), &format!("r{i}"), None)).collect();
    let a = c.composite(json!({"compositeRequest": many})).await;
    assert_eq!(a.status, 400);
    let queries: Vec<Value> =
        (0..6).map(|i| sub("GET", &format!("{V}/query?q=SELECT+Id+FROM+Lead"), &format!("q{i}"), None)).collect();
    let a = c.composite(json!({"compositeRequest": queries})).await;
    assert_eq!(a.status, 400);
    let five: Vec<Value> =
        (0..5).map(|i| sub("GET", &format!("{V}/query?q=SELECT+Id+FROM+Lead"), &format!("q{i}"), None)).collect();
    assert_eq!(c.composite(json!({"compositeRequest": five})).await.status, 200);
    for bad in [
        json!({"allOrNone": true}),
        json!({"compositeRequest": [{"method": "GET"}]}),
        json!([1, 2]),
        json!({"allOrNone": "yes", "compositeRequest": []}),
    ] {
        let a = c.composite(bad.clone()).await;
        assert_eq!((a.status, a.error_code().as_str()), (400, "JSON_PARSER_ERROR"), "{bad}");
    }
    let raw =
        c.http.post(format!("{}{V}/composite", c.org.url())).bearer_auth(&c.token).body("{").send().await.unwrap();
    assert_eq!(raw.status(), 400);
    let v: Value = raw.json().await.unwrap();
    assert_eq!(v[0]["errorCode"], "JSON_PARSER_ERROR");
}
