//! Token flows and session checks.
mod support;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use salesforce_fake::FakeOrg;
use serde_json::{json, Value};
use support::*;

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn assertion(key: &[u8], aud: &str, exp: i64, sub: &str) -> String {
    let claims = json!({ "iss": "test-client-id", "sub": sub, "aud": aud, "exp": exp });
    encode(&Header::new(Algorithm::RS256), &claims, &EncodingKey::from_rsa_pem(key).unwrap()).unwrap()
}

async fn jwt(org: &FakeOrg, assertion: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/services/oauth2/token", org.url()))
        .form(&[("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", assertion)])
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn client_credentials_answers_salesforce_token_shape() {
    let org = FakeOrg::start(config()).await;
    let res = reqwest::Client::new()
        .post(format!("{}/services/oauth2/token", org.url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "test-client-id"),
            ("client_secret", "test-client-secret"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    for key in ["access_token", "instance_url", "id", "token_type", "issued_at", "signature", "scope"] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["instance_url"], org.url());
    assert!(v["issued_at"].as_str().unwrap().parse::<u64>().is_ok());
    assert!(v.get("refresh_token").is_none() && v.get("expires_in").is_none());
    assert_eq!(org.token_requests(), 1);
    assert!(org.calls().is_empty(), "token requests are not API calls");
}

#[tokio::test]
async fn client_credentials_bad_secret_is_invalid_client() {
    let org = FakeOrg::start(config()).await;
    let res = reqwest::Client::new()
        .post(format!("{}/services/oauth2/token", org.url()))
        .form(&[("grant_type", "client_credentials"), ("client_id", "test-client-id"), ("client_secret", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"], "invalid_client");
    assert!(v["error_description"].is_string());
}

#[tokio::test]
async fn unknown_grant_type_is_refused() {
    let org = FakeOrg::start(config()).await;
    let res = reqwest::Client::new()
        .post(format!("{}/services/oauth2/token", org.url()))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"], "unsupported_grant_type");
}

#[tokio::test]
async fn jwt_signed_with_test_key_gets_a_working_token() {
    let org = FakeOrg::start(config()).await;
    let (status, v) =
        jwt(&org, &assertion(&private_key(), "https://login.salesforce.com", now() + 120, "integration@bank.example"))
            .await;
    assert_eq!(status, 200, "{v}");
    assert!(v.get("refresh_token").is_none());
    let token = v["access_token"].as_str().unwrap();
    let res = reqwest::Client::new()
        .get(format!("{}{V}/sobjects/Lead/describe", org.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn jwt_with_my_domain_audience_is_invalid_grant() {
    let org = FakeOrg::start(config()).await;
    let (status, v) = jwt(&org, &assertion(&private_key(), &org.url(), now() + 120, "integration@bank.example")).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"], "invalid_grant");
    assert_eq!(v["error_description"], "audience is invalid");
}

#[tokio::test]
async fn jwt_signed_with_another_key_expired_or_wrong_user_is_refused() {
    let org = FakeOrg::start(config()).await;
    let aud = "https://login.salesforce.com";
    for a in [
        assertion(&other_private_key(), aud, now() + 120, "integration@bank.example"),
        assertion(&private_key(), aud, now() - 10, "integration@bank.example"),
        assertion(&private_key(), aud, now() + 3600, "integration@bank.example"),
        assertion(&private_key(), aud, now() + 120, "someone@else.example"),
        "not-a-jwt".to_string(),
    ] {
        let (status, v) = jwt(&org, &a).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"], "invalid_grant", "{v}");
    }
}

#[tokio::test]
async fn jwt_flow_is_disabled_without_a_public_key() {
    let org = FakeOrg::start(salesforce_fake::OrgConfig::default()).await;
    let (status, v) =
        jwt(&org, &assertion(&private_key(), "https://login.salesforce.com", now() + 120, "integration@bank.example"))
            .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"], "invalid_grant");
}

#[tokio::test]
async fn calls_without_valid_token_get_invalid_session_id() {
    let c = start().await;
    let res = c.http.get(format!("{}{V}/sobjects/Lead/describe", c.org.url())).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("sforce-limit-info").is_some());
    let v: Value = res.json().await.unwrap();
    assert_eq!(v, json!([{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]));
    let res =
        c.http.get(format!("{}{V}/sobjects/Lead/describe", c.org.url())).bearer_auth("made-up").send().await.unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn expired_sessions_refuse_old_tokens_until_a_new_one_is_fetched() {
    let mut c = start().await;
    assert_eq!(c.get(&format!("{V}/sobjects/Lead/describe")).await.status, 200);
    c.org.expire_sessions();
    let a = c.get(&format!("{V}/sobjects/Lead/describe")).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.error_code(), "INVALID_SESSION_ID");
    c.token = token(&c.org, &c.http).await;
    assert_eq!(c.get(&format!("{V}/sobjects/Lead/describe")).await.status, 200);
    assert_eq!(c.org.token_requests(), 2);
}

#[tokio::test]
async fn soap_with_bad_session_is_a_soap_fault() {
    let c = start().await;
    let a = c.soap("bogus", "<urn:convertLead><urn:leadConverts><urn:leadId>00Q000000000000</urn:leadId></urn:leadConverts></urn:convertLead>").await;
    assert_eq!(a.status, 500);
    assert!(a.text.contains("<faultcode>sf:INVALID_SESSION_ID</faultcode>"), "{}", a.text);
    assert!(a.text.contains("<sf:exceptionCode>INVALID_SESSION_ID</sf:exceptionCode>"));
}
