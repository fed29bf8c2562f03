//! Personal data never reaches a log unmasked (SPEC §4). Its own test binary, because it installs the
//! process's one global log subscriber: every event of every level from every crate (the service, axum,
//! hyper, sqlx, …) is captured while a whole range of requests runs on both backends, and the capture is
//! then searched for the raw values.

use std::io::Write;
use std::sync::{Arc, Mutex};

use integration_service::config::{LogFormat, Settings, StoreUrl};
use integration_service::startup::Application;
use integration_service::telemetry;
use salesforce_fake::{FakeOrg, OrgConfig};
use serde_json::{json, Value};
use store_postgres::scratch::ScratchDb;
use store_salesforce::SalesforceSection;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const ID_NUMBER: &str = "079912345678";
const CIF: &str = "CIF99887766";
const PHONE: &str = "+84987654321";
const EMAIL: &str = "tran.thi.b@example.org";
const FULL_NAME: &str = "Tran Thi Bich";
const SECRET: &str = "test-client-secret";

async fn exercise(store: StoreUrl) {
    exercise_with(Settings { store, ..Settings::default() }).await
}

async fn exercise_with(settings: Settings) {
    let settings = Settings { listen: "127.0.0.1:0".parse().unwrap(), ..settings };
    let app = Application::build(&settings).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        client.post(format!("{base}{path}")).header("idempotency-key", format!("k-{}", body)).json(&body).send()
    };
    let create = "/integration-service/int/api/crm/v1/combo-create-lead-opportunity";
    let customer = json!({"idNumber": ID_NUMBER, "cif": CIF, "fullName": FULL_NAME, "phone": PHONE, "email": EMAIL});
    let mut ids = Vec::new();
    for (kind, owner) in [("NTB", "RM001"), ("NTB", "RM002"), ("ETB", "RM001"), ("ETB", "RM003")] {
        let body = json!({"customerType": kind, "customer": customer, "product": "CARD", "ownerId": owner, "channel": "MOBILE_APP"});
        let r: Value = post(create, body.clone()).await.unwrap().json().await.unwrap();
        ids.push(r["id"].as_str().unwrap().to_owned());
        post(create, body).await.unwrap(); // replayed
    }
    // Refused requests that carry the values in bad shapes.
    for bad in [
        json!({"customerType": "NTB", "customer": {"idNumber": format!("{ID_NUMBER} x"), "phone": format!("{PHONE}x"), "email": EMAIL.replace('@', " ")}}),
        json!({"customerType": "ETB", "customer": {"idNumber": ID_NUMBER, "fullName": FULL_NAME}, "product": 1}),
        json!([ID_NUMBER, CIF, PHONE, EMAIL, FULL_NAME]),
    ] {
        post(create, bad).await.unwrap();
    }
    client
        .post(format!("{base}{create}"))
        .header("content-type", "application/json")
        .body(format!("{{\"idNumber\": \"{ID_NUMBER}\""))
        .send()
        .await
        .unwrap();
    client
        .post(format!("{base}{create}"))
        .header("content-type", "text/plain")
        .body(EMAIL.to_owned())
        .send()
        .await
        .unwrap();
    let search = "/integration-service/int/api/crm/v1/search";
    post(search, json!({"idNumber": ID_NUMBER})).await.unwrap();
    post(search, json!({"idNumber": ID_NUMBER, "product": "CARD"})).await.unwrap();
    client.get(format!("{base}/integration-service/int/api/crm/v1/leads/{}", ids[1])).send().await.unwrap();
    client.get(format!("{base}/integration-service/int/api/crm/v1/leads/{ID_NUMBER}")).send().await.unwrap();
    post(
        "/integration-service/int/api/crm/v1/combo-update-lead-opportunity",
        json!({"leadId": ids[1], "channel": "MOBILE_APP"}),
    )
    .await
    .unwrap();
    post(
        "/integration-service/api/crm/v1/update-opportunity-status",
        json!({"opportunityId": ids[3], "status": "Close Lost", "channel": "MOBILE_APP", "reason": "AML_REJECTED"}),
    )
    .await
    .unwrap();
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_personal_value_reaches_the_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    // The binary's own subscriber (its JSON lines), with every level of every crate let through.
    let filter = tracing_subscriber::EnvFilter::new("trace");
    telemetry::subscriber(LogFormat::Json, filter, move || writer.clone()).init();

    let dir = tempfile::tempdir().unwrap();
    exercise(StoreUrl::Sqlite(dir.path().join("crm.db"))).await;
    let db = ScratchDb::create("crm_logs").await;
    exercise(StoreUrl::Postgres(db.url.clone())).await;
    // Salesforce: a fake org in this process; its client secret and tokens must not be logged either.
    let org = FakeOrg::start(OrgConfig::default()).await;
    for rm in ["RM001", "RM002", "RM003"] {
        org.add_user(rm, true);
    }
    let section: SalesforceSection = toml::from_str(&format!(
        "instance_url = \"{}\"\nauth = \"client_credentials\"\nclient_id = \"test-client-id\"\nlocal_store = \"sqlite://{}\"\n",
        org.url(),
        dir.path().join("local.db").display()
    ))
    .unwrap();
    let salesforce = section.validate(Some(SECRET.into())).unwrap();
    exercise_with(Settings { store: StoreUrl::Salesforce, salesforce: Some(salesforce), ..Settings::default() }).await;
    assert!(org.calls().len() > 10, "the Salesforce run reached the org");

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(logs.lines().count() > 100, "the capture works: {} lines", logs.lines().count());
    assert!(logs.contains("request completed"), "request lines are captured");
    // The request line names the request, its matched route (never the raw path) and its outcome.
    let line = logs
        .lines()
        .find(|l| l.contains("request completed") && l.contains("combo-create-lead-opportunity"))
        .expect("a create's request line");
    let line: Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["route"], "/integration-service/int/api/crm/v1/combo-create-lead-opportunity");
    assert_eq!(line["method"], "POST");
    assert!(line["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{line}");
    assert!(line["status"].as_u64().is_some() && line["latency_ms"].as_f64().is_some(), "{line}");
    // Every store call runs in a span naming it: the database driver's events inside a create say so.
    let in_store_span = |l: &&str| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["span"]["name"] == "store" && v["span"]["operation"] == "create")
    };
    assert!(logs.lines().any(|l| in_store_span(&l)), "no line inside a store span");
    for raw in [ID_NUMBER, CIF, PHONE, &PHONE[1..], EMAIL, FULL_NAME, "Bich", SECRET, "access_token"] {
        let hit = logs.lines().find(|l| l.contains(raw));
        assert!(hit.is_none(), "{raw} is in the logs: {}", hit.unwrap_or_default());
    }
}
