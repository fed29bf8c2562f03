//! Running it (SPEC §5): health, the OpenAPI document, the offline /docs page, restarts, the binary's
//! settings errors, `migrate`, and SIGTERM finishing requests in flight.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use integration_service::api::auth::{ApiKey, ApiKeys};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_integration-service");

#[tokio::test]
async fn health_endpoints() {
    let app = spawn_app().await;
    for path in ["/health/live", "/health/ready"] {
        let r = app.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.json::<Value>().await.unwrap()["status"], "UP");
    }
}

#[tokio::test]
async fn openapi_document_covers_every_operation_and_error() {
    let app = spawn_app().await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let posts = [CREATE, CLOSE_WON, LOST_OPP, LOST_LEAD, SEARCH];
    for path in posts {
        let op = &doc["paths"][path]["post"];
        assert!(op.is_object(), "{path} documented");
        assert!(op["requestBody"]["content"]["application/json"]["schema"].is_object(), "{path} body");
        for status in ["400", "415", "422"] {
            assert!(op["responses"][status]["content"]["application/problem+json"].is_object(), "{path} {status}");
        }
    }
    for path in [format!("{INT}/leads/{{id}}"), format!("{INT}/opportunities/{{id}}")] {
        assert!(doc["paths"][&path]["get"]["responses"]["404"].is_object(), "{path}");
    }
    for path in ["/health/live", "/health/ready"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path}");
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "Problem",
        "FieldError",
        "CreateLeadOpportunityRequest",
        "NtbCreateRequest",
        "EtbCreateRequest",
        "NtbCustomer",
        "EtbCustomer",
        "CreateResponse",
        "CloseWonRequest",
        "CloseWonLeadRequest",
        "CloseWonOpportunityRequest",
        "CloseWonResponse",
        "CloseLostOpportunityRequest",
        "CloseLostLeadRequest",
        "SearchRequest",
        "SearchResponse",
        "Record",
        "Status",
        "RecordType",
        "CreateResult",
        "CustomerType",
    ] {
        assert!(schemas.contains_key(name), "schema {name}");
    }
    let statuses = &schemas["Status"]["enum"];
    assert_eq!(statuses, &serde_json::json!(["New Lead", "New Opportunity", "Close Won", "Close Lost"]));
    assert!(doc["paths"][CREATE]["post"]["responses"]["201"]["headers"]["Location"].is_object());
    assert!(doc["paths"][CREATE]["post"]["responses"]["503"]["headers"]["Retry-After"].is_object());
    assert!(doc["paths"][CREATE]["post"]["responses"]["500"].is_object());
    // The rules that span fields are the schema's too: ETB requires `cif`; close-won names one record.
    let branches = |name: &str| -> Vec<Value> {
        schemas[name]["oneOf"].as_array().unwrap_or_else(|| panic!("{name} is a oneOf")).to_vec()
    };
    assert_eq!(
        branches("CreateLeadOpportunityRequest"),
        [
            json!({"$ref": "#/components/schemas/NtbCreateRequest"}),
            json!({"$ref": "#/components/schemas/EtbCreateRequest"})
        ]
    );
    assert_eq!(branches("CloseWonRequest").len(), 2);
    let etb_customer = &schemas["EtbCustomer"]["allOf"][1];
    assert_eq!(etb_customer["required"], json!(["cif"]));
    let journey = schemas["Journey"]["required"].as_array().unwrap();
    for f in ["product", "ownerId", "channel"] {
        assert!(journey.contains(&Value::from(f)), "{f} required");
    }
    // Every string rule the parsers enforce is a pattern.
    for name in [
        "IdNumber",
        "Cif",
        "FullName",
        "Phone",
        "Email",
        "Product",
        "OwnerId",
        "Channel",
        "JourneyId",
        "Reason",
        "RecordId",
    ] {
        assert!(schemas[name]["pattern"].is_string(), "{name} has a pattern");
    }
}

/// The four operations in the order of a journey, then the reads, then operations.
#[tokio::test]
async fn openapi_document_lists_the_journey_in_order() {
    let app = spawn_app().await;
    // Read as text: a JSON object's order is what a client sees, and `Value` would sort the keys.
    let text = app.get("/openapi.json").await.text().await.unwrap();
    let at = |path: &str| text.find(&format!("\"{path}\":{{")).unwrap_or_else(|| panic!("{path} in {text}"));
    let journey: Vec<usize> = [CREATE, CLOSE_WON, LOST_OPP, LOST_LEAD].into_iter().map(at).collect();
    assert!(journey.windows(2).all(|w| w[0] < w[1]), "{journey:?}");
    for other in [&format!("{INT}/leads/{{id}}"), SEARCH, "/health/live", "/metrics"] {
        assert!(at(other) > journey[3], "{other} after the journey");
    }
}

/// Open, the document declares no security; with API keys, the `bearer` scheme on every API operation,
/// 401 on each, and 403 on the four the key's channel must match and on the reports (a reporting key's).
#[tokio::test]
async fn openapi_document_declares_security_only_with_api_keys() {
    let open = spawn_app().await;
    let doc: Value = open.get("/openapi.json").await.json().await.unwrap();
    let text = doc.to_string();
    assert!(!text.contains("securitySchemes") && !text.contains("\"security\"") && !text.contains("\"401\""), "{text}");

    let (_, entry) = ApiKey::generate(&lifecycle::Channel::parse("MOBILE_APP").unwrap()).unwrap();
    let keyed = spawn_app_with(move |s| s.api_keys = ApiKeys(vec![entry])).await;
    let doc: Value = keyed.get("/openapi.json").await.json().await.unwrap();
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let api = path.starts_with("/integration-service/");
            assert_eq!(op["security"].is_array(), api, "{method} {path}");
            assert_eq!(op["responses"]["401"].is_object(), api, "{method} {path}");
            // 403: a lifecycle operation for a key of another channel; a report for a key without the role.
            let lifecycle = [CREATE, CLOSE_WON, LOST_OPP, LOST_LEAD].contains(&path.as_str());
            let report = path.contains("/reports/");
            assert_eq!(op["responses"]["403"].is_object(), lifecycle || report, "{method} {path}");
        }
    }
}

#[tokio::test]
async fn docs_page_is_served_without_internet() {
    let app = spawn_app().await;
    let r = app.get("/docs/").await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    // Every asset the page refers to is served by the service itself.
    let mut assets = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            assets.push(part.split('"').next().unwrap().to_owned());
        }
    }
    assert!(assets.len() >= 3, "{assets:?}");
    for asset in assets {
        assert!(
            !asset.starts_with("http:") && !asset.starts_with("https:") && !asset.starts_with("//"),
            "external asset {asset}"
        );
        let r = app.get(&format!("/docs/{}", asset.trim_start_matches("./"))).await;
        assert_eq!(r.status(), 200, "{asset}");
        assert!(!r.bytes().await.unwrap().is_empty());
    }
    let init = app.get("/docs/swagger-initializer.js").await.text().await.unwrap();
    assert!(init.contains("/openapi.json"), "{init}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_cut_by_the_request_timeout() {
    let app = spawn_app_with(|s| s.request_timeout = Duration::from_millis(300)).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut conn = TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST {CREATE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    )
    .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut response = vec![0u8; 4096];
    let n = conn.read(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("REQUEST_TIMEOUT"), "{text}");
}

#[test]
fn a_bad_setting_stops_start_up_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["serve", "--listen", "nonsense"], vec![], "listen"),
        (vec!["serve"], vec![("CRM_LISTEN", "300.1.1.1:80")], "listen"),
        (vec!["serve"], vec![("CRM_STORE", "mysql://db")], "store"),
        (vec!["serve", "--config", "/no/such/file.toml"], vec![], "--config"),
        (vec!["serve", "--log-format", "bogus"], vec![], "log format"),
        (vec!["serve", "--listen", "0.0.0.0:8080"], vec![], "loopback"),
        // Every file key has its variable, checked like the file's value and named in the error.
        (vec!["serve"], vec![("CRM_MATCHING", "by_name")], "CRM_MATCHING"),
        (vec!["serve"], vec![("CRM_SQLITE_MAX_BATCH", "0")], "CRM_SQLITE_MAX_BATCH"),
        (vec!["serve"], vec![("CRM_REQUEST_TIMEOUT_MS", "0")], "CRM_REQUEST_TIMEOUT_MS"),
        (vec!["serve"], vec![("CRM_IDEMPOTENCY_TTL_SECS", "99999999")], "CRM_IDEMPOTENCY_TTL_SECS"),
        (vec!["serve"], vec![("CRM_MAX_IN_FLIGHT", "0")], "CRM_MAX_IN_FLIGHT"),
        (vec!["serve"], vec![("CRM_POSTGRES_ACQUIRE_TIMEOUT_MS", "0")], "CRM_POSTGRES_ACQUIRE_TIMEOUT_MS"),
        (vec!["serve"], vec![("CRM_POSTGRES_MAX_BATCH", "0")], "CRM_POSTGRES_MAX_BATCH"),
        (vec!["serve"], vec![("CRM_POSTGRES_BATCHES", "1001")], "CRM_POSTGRES_BATCHES"),
        (vec!["serve"], vec![("CRM_RATE_LIMIT_BURST", "5")], "rate_limit_burst"),
        (vec!["serve"], vec![("CRM_LOG_FILTER", "[[[")], "CRM_LOG_FILTER"),
        (
            vec!["serve"],
            vec![("CRM_STORE", "salesforce"), ("CRM_SALESFORCE_TIMEOUT_MS", "soon")],
            "CRM_SALESFORCE_TIMEOUT_MS",
        ),
        (
            vec!["serve"],
            vec![("CRM_STORE", "salesforce"), ("CRM_SALESFORCE_INSTANCE_URL", "https://org.example")],
            "salesforce",
        ),
    ];
    for (args, env, name) in cases {
        let out = Command::new(BIN).args(&args).envs(env.clone()).current_dir(dir.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(name), "{err} names {name}");
    }
}

#[test]
fn migrate_applies_embedded_migrations_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("m/crm.db").display());
    let first = Command::new(BIN).args(["migrate", "--store", &store]).output().unwrap();
    assert!(first.status.success(), "{first:?}");
    let applied = format!("{} migration(s) applied", store_sqlite::MIGRATIONS.len());
    assert!(String::from_utf8_lossy(&first.stdout).contains(&applied), "{first:?}");
    let second = Command::new(BIN).args(["migrate", "--store", &store]).output().unwrap();
    assert!(String::from_utf8_lossy(&second.stdout).contains("0 migration(s) applied"), "{second:?}");
}

/// On Salesforce, `migrate` migrates the local store beside the org, without calling the org.
#[test]
fn migrate_on_salesforce_migrates_its_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let local = format!("sqlite://{}", dir.path().join("local.db").display());
    let out = Command::new(BIN)
        .args(["migrate", "--store", "salesforce"])
        .env("CRM_SALESFORCE_INSTANCE_URL", "https://127.0.0.1:9")
        .env("CRM_SALESFORCE_AUTH", "client_credentials")
        .env("CRM_SALESFORCE_CLIENT_ID", "test-client")
        .env("CRM_SALESFORCE_CLIENT_SECRET", "test-secret")
        .env("CRM_SALESFORCE_LOCAL_STORE", &local)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let applied = format!("{} migration(s) applied", store_sqlite::MIGRATIONS.len());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&applied), "{out:?}");
    assert!(dir.path().join("local.db").exists());
}

/// A container needs no file: the settings come from the environment of the real binary, and take effect.
#[tokio::test]
async fn every_setting_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("env.db").display());
    let env = [
        ("CRM_STORE", store.as_str()),
        ("CRM_MATCHING", "id_number"),
        ("CRM_LOG_FILTER", "warn,integration_service::startup=info"),
        ("CRM_SQLITE_MAX_BATCH", "8"),
        ("CRM_REQUEST_TIMEOUT_MS", "5000"),
        ("CRM_SHUTDOWN_GRACE_MS", "2000"),
        ("CRM_IDEMPOTENCY_TTL_SECS", "600"),
        ("CRM_MAX_IN_FLIGHT", "64"),
        ("CRM_RATE_LIMIT_PER_SECOND", "1"),
        ("CRM_RATE_LIMIT_BURST", "3"),
    ];
    let (mut child, addr) = crate::binary::serve(&[], &env);
    let client = reqwest::Client::new();
    let create =
        |product: &str| client.post(format!("http://{addr}{CREATE}")).json(&ntb("ENV1", product, "RM001")).send();
    let first = create("CARD").await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    // CRM_MATCHING=id_number: another product of the same customer is the same key.
    let second: Value = create("LOAN").await.unwrap().json().await.unwrap();
    assert_eq!((&second["result"], &second["id"]), (&Value::from("EXISTING"), &first["id"]), "{second}");
    // CRM_RATE_LIMIT_*: a burst of 3 at 1 per second, so of 8 more requests at once some are refused.
    let burst: Vec<_> = (0..8).map(|_| tokio::spawn(create("CARD"))).collect();
    let mut statuses = Vec::new();
    for r in burst {
        statuses.push(r.await.unwrap().unwrap().status().as_u16());
    }
    assert!(statuses.contains(&429) && statuses.contains(&200), "{statuses:?}");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// Starts the binary on port 0 and returns it with the address it logged. The caller waits for it.
#[allow(clippy::zombie_processes)]
fn start_binary(db: &std::path::Path) -> (std::process::Child, String) {
    crate::binary::serve(&["--store", &format!("sqlite://{}", db.display())], &[])
}

#[tokio::test]
async fn sigterm_finishes_requests_in_flight_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crm.db");
    let (mut child, addr) = start_binary(&db);
    let body = ntb("T1", "CARD", "RM001").to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let mut conn = TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST {CREATE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Request-Id: in-flight\r\n\r\n{head}",
        body.len()
    )
    .unwrap();
    conn.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    std::thread::sleep(Duration::from_millis(300));
    // The request began before the signal: it is finished and answered.
    conn.write_all(tail.as_bytes()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut response = String::new();
    let _ = conn.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit 0 after SIGTERM");
    // And what was acknowledged is on disk.
    let app = spawn_app_at(&db).await;
    let found = app.search("T1").await;
    assert_eq!(found["leads"][0]["history"], Value::Null);
    assert_eq!(found["leads"].as_array().unwrap().len(), 1);
    app.stop().await;
}

both_backends! {
    async fn data_survives_a_restart(app: TestApp) {
        let (_, lead) = app.create(&ntb("S1", "CARD", "RM001")).await;
        let (_, opp) = app.create(&etb("S1", "LOAN", "RM001")).await;
        app.call(CLOSE_WON, &serde_json::json!({"opportunityId": opp["id"], "channel": "C"})).await;
        let app = app.restart().await;
        assert_eq!(app.record("leads", lead["id"].as_str().unwrap()).await["status"], "New Lead");
        assert_eq!(app.record("opportunities", opp["id"].as_str().unwrap()).await["status"], "Close Won");
        let (status, again) = app.create(&ntb("S1", "CARD", "RM001")).await;
        assert_eq!((status.as_u16(), &again["id"]), (200, &lead["id"]));
        app.stop().await;
    }
}
