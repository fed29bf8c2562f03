//! Injected faults: each one fails the way Salesforce does, then stops.
mod support;

use salesforce_fake::Fault;
use serde_json::json;
use std::time::Duration;
use support::*;

#[tokio::test]
async fn session_expired_really_invalidates_the_token() {
    let mut c = start().await;
    c.org.fail_next(Fault::SessionExpired, 1);
    let a = c.get(&format!("{V}/sobjects/Lead/describe")).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.json(), json!([{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]));
    assert_eq!(c.get(&format!("{V}/sobjects/Lead/describe")).await.status, 401, "the old token stays dead");
    c.token = token(&c.org, &c.http).await;
    assert_eq!(c.get(&format!("{V}/sobjects/Lead/describe")).await.status, 200);
}

#[tokio::test]
async fn server_unavailable_is_html_and_applies_nothing() {
    let c = start().await;
    c.org.fail_next(Fault::ServerUnavailable, 2);
    for _ in 0..2 {
        let a = c.create("Lead", json!({"LastName": "A", "Company": "A"})).await;
        assert_eq!(a.status, 503);
        assert!(serde_json::from_str::<serde_json::Value>(&a.text).is_err(), "not JSON");
        assert!(a.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    }
    assert!(c.org.records("Lead").is_empty());
    assert_eq!(
        c.create("Lead", json!({"LastName": "A", "Company": "A"})).await.status,
        201,
        "the fault stops after N calls"
    );
    assert_eq!(c.org.calls().len(), 3);
}

#[tokio::test]
async fn request_limit_exceeded_applies_nothing() {
    let c = start().await;
    c.org.set_api_usage(100_000, 100_000);
    c.org.fail_next(Fault::RequestLimitExceeded, 1);
    let a = c.create("Lead", json!({"LastName": "A", "Company": "A"})).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.json(), json!([{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]));
    assert_eq!(a.headers["sforce-limit-info"], "api-usage=100000/100000");
    assert!(c.org.records("Lead").is_empty());
}

#[tokio::test]
async fn unable_to_lock_row_rolls_a_composite_back_and_fails_a_plain_write() {
    let c = start().await;
    c.org.fail_next(Fault::UnableToLockRow, 1);
    let body = json!({"allOrNone": true, "compositeRequest": [
        {"method": "GET", "url": format!("{V}/query?q=SELECT+Id+FROM+Lead"), "referenceId": "q"},
        {"method": "POST", "url": format!("{V}/sobjects/Lead"), "referenceId": "a", "body": {"LastName": "A", "Company": "A"}},
        {"method": "POST", "url": format!("{V}/sobjects/Lead"), "referenceId": "b", "body": {"LastName": "B", "Company": "B"}},
    ]});
    let a = c.composite(body).await;
    let r = a.json()["compositeResponse"].clone();
    assert_eq!(r[1]["body"][0]["errorCode"], "UNABLE_TO_LOCK_ROW");
    assert_eq!(r[1]["body"][0]["message"], "unable to obtain exclusive access to this record");
    assert_eq!(r[0]["body"][0]["errorCode"], "PROCESSING_HALTED");
    assert_eq!(r[2]["body"][0]["errorCode"], "PROCESSING_HALTED");
    assert!(c.org.records("Lead").is_empty());
    c.org.fail_next(Fault::UnableToLockRow, 1);
    let a = c.create("Lead", json!({"LastName": "A", "Company": "A"})).await;
    assert_eq!((a.status, a.error_code().as_str()), (400, "UNABLE_TO_LOCK_ROW"));
    assert!(c.org.records("Lead").is_empty());
}

#[tokio::test]
async fn delay_before_then_normal_processing() {
    let c = start().await;
    c.org.fail_next(Fault::DelayBefore(Duration::from_millis(300)), 1);
    let started = std::time::Instant::now();
    assert_eq!(c.create("Lead", json!({"LastName": "A", "Company": "A"})).await.status, 201);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(c.org.records("Lead").len(), 1);
}

#[tokio::test]
async fn delay_after_commits_although_the_client_times_out() {
    let c = start().await;
    c.org.fail_next(Fault::DelayAfter(Duration::from_millis(1500)), 1);
    let res = c
        .http
        .post(format!("{}{V}/sobjects/Lead", c.org.url()))
        .bearer_auth(&c.token)
        .json(&json!({"LastName": "A", "Company": "A"}))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(res.is_err(), "the client gave up");
    assert_eq!(c.org.records("Lead").len(), 1, "yet the write happened");
}

#[tokio::test]
async fn token_requests_never_consume_faults() {
    let c = start().await;
    c.org.fail_next(Fault::ServerUnavailable, 1);
    let _ = token(&c.org, &c.http).await;
    assert_eq!(c.get(&format!("{V}/sobjects/Lead/describe")).await.status, 503);
    assert_eq!(c.get(&format!("{V}/sobjects/Lead/describe")).await.status, 200);
}

#[tokio::test]
async fn soap_faults() {
    let c = start().await;
    let l = c.org.insert("Lead", json!({"LastName": "A", "Company": "A"}));
    c.org.fail_next(Fault::UnableToLockRow, 1);
    let a = c.convert(&l, "").await;
    assert!(a.text.contains("<statusCode>UNABLE_TO_LOCK_ROW</statusCode>"), "{}", a.text);
    assert_eq!(c.org.record("Lead", &l).unwrap()["IsConverted"], false);
    c.org.fail_next(Fault::SessionExpired, 1);
    let a = c.convert(&l, "").await;
    assert_eq!(a.status, 500);
    assert!(a.text.contains("sf:INVALID_SESSION_ID"));
}
