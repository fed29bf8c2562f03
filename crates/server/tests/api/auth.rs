//! API keys per channel (SPEC §4) through HTTP.

use std::process::{Command, Stdio};

use integration_service::api::auth::{ApiKey, ApiKeys};
use lifecycle::Channel;
use serde_json::json;

use crate::helpers::*;

struct Keys {
    mobile: String,
    lending: String,
    config: ApiKeys,
}

fn keys() -> Keys {
    let (mobile, m) = ApiKey::generate(&Channel::parse("MOBILE_APP").unwrap()).unwrap();
    let (lending, l) = ApiKey::generate(&Channel::parse("LENDING_APP").unwrap()).unwrap();
    Keys { mobile, lending, config: ApiKeys(vec![m, l]) }
}

async fn with_key(app: &TestApp, path: &str, key: Option<&str>, body: &serde_json::Value) -> reqwest::Response {
    let mut req = app.client.post(format!("{}{path}", app.base)).json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_authenticate_channels() {
    let k = keys();
    let config = k.config.clone();
    let app = spawn_app_with(move |s| s.api_keys = config).await;
    let body = ntb("A1", "CARD", "RM001"); // channel MOBILE_APP

    let r = with_key(&app, CREATE, None, &body).await;
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    problem(r, 401, "UNAUTHENTICATED").await;
    problem(with_key(&app, CREATE, Some("crm_not-a-key"), &body).await, 401, "UNAUTHENTICATED").await;
    let r = app
        .client
        .post(format!("{}{CREATE}", app.base))
        .header("authorization", format!("Basic {}", k.mobile))
        .json(&body)
        .send()
        .await
        .unwrap();
    problem(r, 401, "UNAUTHENTICATED").await;

    // The lending app's key cannot act as the mobile app.
    problem(with_key(&app, CREATE, Some(&k.lending), &body).await, 403, "FORBIDDEN").await;
    let r = with_key(&app, CREATE, Some(&k.mobile), &body).await;
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = r.json().await.unwrap();
    let close = json!({"leadId": created["id"], "status": "Close Lost", "channel": "MOBILE_APP"});
    problem(with_key(&app, LOST_LEAD, Some(&k.lending), &close).await, 403, "FORBIDDEN").await;

    // Reads need a key too, any channel's; operations endpoints do not.
    let lead_path = format!("{}{INT}/leads/{}", app.base, created["id"].as_str().unwrap());
    assert_eq!(app.client.get(&lead_path).send().await.unwrap().status(), 401);
    let r = app.client.get(&lead_path).bearer_auth(&k.lending).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let lead: serde_json::Value = r.json().await.unwrap();
    assert_eq!(lead["status"], "New Lead", "the refused close changed nothing");
    assert_eq!(lead["history"].as_array().unwrap().len(), 1);
    for path in ["/health/live", "/health/ready", "/openapi.json", "/docs/"] {
        assert_eq!(app.get(path).await.status(), 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_belong_to_their_channel() {
    let k = keys();
    let config = k.config.clone();
    let app = spawn_app_with(move |s| s.api_keys = config).await;
    let mobile = ntb("A2", "CARD", "RM001");
    let mut lending = etb("A2", "LOAN", "RM001");
    lending["channel"] = json!("LENDING_APP");
    for (key, body) in [(&k.mobile, &mobile), (&k.lending, &lending)] {
        let r = app
            .client
            .post(format!("{}{CREATE}", app.base))
            .bearer_auth(key)
            .header("idempotency-key", "shared-key")
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "each channel's key is its own");
        assert!(r.headers().get("idempotent-replayed").is_none());
    }
}

#[test]
fn with_keys_the_service_may_listen_beyond_loopback() {
    let bin = env!("CARGO_BIN_EXE_integration-service");
    let out = Command::new(bin).args(["generate-key", "--channel", "MOBILE_APP"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().find(|l| l.starts_with("crm_")).unwrap();
    let env_line = text.lines().find(|l| l.starts_with("CRM_API_KEYS=")).unwrap();
    assert!(!env_line.contains(key), "only the hash is configured");
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "0.0.0.0:0", "--store", &format!("sqlite://{}/crm.db", dir.path().display())])
        .env("CRM_API_KEYS", env_line.trim_start_matches("CRM_API_KEYS="))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut first).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.contains("listening") && first.contains("0.0.0.0"), "{first}");
}
