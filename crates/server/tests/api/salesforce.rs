//! The Salesforce backend through HTTP, beyond the shared tests: two replicas racing on one key (local
//! store SQLite and PostgreSQL), the calls each operation costs, the org's refusals (422 `CRM_REJECTED`,
//! 502 `CRM_ERROR`), outages (503 with `Retry-After`, readiness), the start-up mapping check, and the JWT
//! bearer flow.

use futures::future::join_all;
use salesforce_fake::{FakeOrg, Fault, OrgConfig, Schema};
use serde_json::{json, Value};
use store_postgres::scratch::ScratchDb;

use crate::helpers::*;

fn open_leads(org: &FakeOrg, id_number: &str) -> Vec<Value> {
    org.records("Lead")
        .into_iter()
        .filter(|l| {
            l["IdNumber__c"] == id_number && l["IsConverted"] == json!(false) && l["Status"] != "Closed - Not Converted"
        })
        .collect()
}

async fn race_two_replicas(local_store: Option<String>) {
    let org = fake_org().await;
    let a = spawn_on_org(org.clone(), local_store, |_| {}).await;
    let b = a.replica().await;
    let bodies: Vec<Value> = (0..40).map(|i| ntb("RACE1", "CARD", &format!("RM{}", i % 4))).collect();
    let answers = join_all(bodies.iter().enumerate().map(|(i, body)| {
        let app = if i % 2 == 0 { &a } else { &b };
        app.create(body)
    }))
    .await;
    assert!(answers.iter().all(|(s, _)| *s == 200 || *s == 201), "{answers:?}");
    assert_eq!(open_leads(&org, "RACE1").len(), 1, "one open lead in the org");
    let leads = org.records("Lead");
    for (_, body) in &answers {
        for closed in body["closedRecordIds"].as_array().unwrap() {
            let rec = leads.iter().find(|l| &l["Id"] == closed).expect("closed lead exists");
            assert_eq!(rec["Status"], "Closed - Not Converted");
        }
    }
    // Identical creates on both replicas: exactly one record.
    let same = ntb("RACE2", "CARD", "RM001");
    let answers = join_all((0..24).map(|i| if i % 2 == 0 { a.create(&same) } else { b.create(&same) })).await;
    assert_eq!(answers.iter().filter(|(s, _)| *s == 201).count(), 1, "{answers:?}");
    assert_eq!(org.records("Lead").iter().filter(|l| l["IdNumber__c"] == "RACE2").count(), 1);
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_race_on_one_key_with_a_shared_sqlite_local_store() {
    race_two_replicas(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_race_on_one_key_with_a_shared_postgres_local_store() {
    let db = ScratchDb::create("crm_sf_local").await;
    race_two_replicas(Some(db.url.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_operation_costs_its_budget_of_calls_and_the_metrics_say_so() {
    let app = spawn(Backend::Salesforce).await;
    let org = app.org().unwrap().clone();
    let calls = |org: &FakeOrg| {
        let n = org.calls().len();
        org.clear_calls();
        n
    };
    org.clear_calls();
    let (s, lead) = app.create(&ntb("B1", "CARD", "RM001")).await;
    assert_eq!((s.as_u16(), calls(&org)), (201, 2), "create, cold cache");
    let (s, _) = app.create(&ntb("B1", "CARD", "RM001")).await;
    assert_eq!((s.as_u16(), calls(&org)), (200, 1), "EXISTING");
    let (s, opp) = app.create(&etb("B2", "CARD", "RM002")).await;
    assert_eq!((s.as_u16(), calls(&org)), (201, 2), "ETB create");
    let (s, _) = app.call(CLOSE_WON, &json!({"opportunityId": opp["id"], "channel": "LENDING_APP"})).await;
    assert_eq!((s.as_u16(), calls(&org)), (200, 2), "close won");
    let (s, won) = app.call(CLOSE_WON, &json!({"leadId": lead["id"], "channel": "MOBILE_APP"})).await;
    assert_eq!((s.as_u16(), calls(&org)), (200, 3), "close won with conversion");
    assert_eq!(won["opportunity"]["status"], "Close Won");
    let (_, other) = app.create(&ntb("B3", "CARD", "RM001")).await;
    calls(&org);
    let (s, _) = app
        .call(
            LOST_LEAD,
            &json!({"leadId": other["id"], "status": "Close Lost", "channel": "MOBILE_APP", "reason": "NCB_REJECTED"}),
        )
        .await;
    assert_eq!((s.as_u16(), calls(&org)), (200, 2), "close lost");

    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("crm_backend_calls_total{")
            && l.contains("backend=\"salesforce\"")
            && l.contains("operation=\"close_won\"")
            && l.contains("step=\"convert\"")),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l.starts_with("crm_backend_api_usage{") && l.contains("limit=\"api-usage\"")),
        "Sforce-Limit-Info exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_org_refusing_the_data_is_422_crm_rejected_and_changes_nothing() {
    let app = spawn(Backend::Salesforce).await;
    let org = app.org().unwrap();
    org.validation_rule("Lead", "Product__c", "RESTRICTED", "Prospects cannot apply for this product");
    let r = app.post(CREATE, &ntb("V1", "RESTRICTED", "RM001")).await;
    let body = problem(r, 422, "CRM_REJECTED").await;
    assert_eq!(body["errors"][0]["message"], "FIELD_CUSTOM_VALIDATION_EXCEPTION", "{body}");
    assert!(org.records("Lead").is_empty());

    let r = app.post(CREATE, &ntb("V2", "CARD", "RM_UNKNOWN")).await;
    let body = problem(r, 422, "VALIDATION_FAILED").await;
    assert_eq!(fields(&body), ["ownerId"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refusal_caused_by_our_configuration_is_502_crm_error() {
    // The integration user may not set the channel field: the mapping exists, the org refuses the write.
    let mut config = OrgConfig::default();
    config.schema.object_mut("Lead").unwrap().field_mut("Channel__c").unwrap().createable = false;
    let org = FakeOrg::start(config).await;
    org.add_user("RM001", true);
    let app = spawn_on_org(org.clone(), None, |_| {}).await;
    let r = app.post(CREATE, &ntb("M1", "CARD", "RM001")).await;
    let body = problem(r, 502, "CRM_ERROR").await;
    assert!(!body["detail"].as_str().unwrap().contains("Channel__c"), "details stay in the log");
    assert!(org.records("Lead").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exhausted_daily_limit_is_503_with_retry_after_and_readiness_tells() {
    let app = spawn(Backend::Salesforce).await;
    assert_eq!(app.get("/health/ready").await.status(), 200);
    app.org().unwrap().fail_next(Fault::RequestLimitExceeded, 1);
    let r = app.post(CREATE, &ntb("L1", "CARD", "RM001")).await;
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 60, "{retry}");
    problem(r, 503, "BACKEND_UNAVAILABLE").await;
    assert_eq!(app.get("/health/ready").await.status(), 503);
    // The breaker keeps further requests away from the org.
    let before = app.org().unwrap().calls().len();
    let r = app.post(CREATE, &ntb("L2", "CARD", "RM001")).await;
    problem(r, 503, "BACKEND_UNAVAILABLE").await;
    assert_eq!(app.org().unwrap().calls().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotent_retry_after_a_lost_answer_replays_the_first_result() {
    let app = spawn_on_org(fake_org().await, None, |s| {
        let sf = s.salesforce.as_mut().unwrap();
        sf.timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let org = app.org().unwrap().clone();
    app.create(&ntb("WARM", "CARD", "RM001")).await;
    org.fail_next(Fault::DelayBefore(std::time::Duration::ZERO), 1);
    org.fail_next(Fault::DelayAfter(std::time::Duration::from_millis(800)), 1);
    let body = ntb("I1", "CARD", "RM001");
    let first = app.post_key(CREATE, "key-lost-1", &body).await;
    assert_eq!(first.status(), 201, "read back: the create happened");
    let first: Value = first.json().await.unwrap();
    let again = app.post_key(CREATE, "key-lost-1", &body).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first);
    assert_eq!(org.records("Lead").iter().filter(|l| l["IdNumber__c"] == "I1").count(), 1);
}

fn config_file(dir: &std::path::Path, org: &FakeOrg, extra: &str) -> std::path::PathBuf {
    let path = dir.join("service.toml");
    let text = format!(
        "store = \"salesforce\"\n[salesforce]\ninstance_url = \"{}\"\nauth = \"client_credentials\"\nclient_id = \"test-client-id\"\nlocal_store = \"sqlite://{}\"\n{extra}",
        org.url(),
        dir.join("local.db").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_command_names_a_mapping_the_org_lacks_in_one_line() {
    const BIN: &str = env!("CARGO_BIN_EXE_integration-service");
    let dir = tempfile::tempdir().unwrap();
    let org = fake_org().await;
    let file = config_file(dir.path(), &org, "");
    let run = |file: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(BIN)
                .args(["check", "--config"])
                .arg(file)
                .env("CRM_SALESFORCE_CLIENT_SECRET", "test-client-secret")
                .output()
                .unwrap()
        })
    };
    let ok = run(file.clone()).await.unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));

    let mut schema = Schema::standard();
    schema.object_mut("Lead").unwrap().remove_field("IdNumber__c");
    let lacking = FakeOrg::start(OrgConfig { schema, ..OrgConfig::default() }).await;
    let out = run(config_file(dir.path(), &lacking, "")).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "integration-service: salesforce mapping: Lead has no field IdNumber__c (salesforce.fields.id_number)"
    );

    let out =
        run(config_file(dir.path(), &org, "[salesforce.opportunity_stage]\nwon = \"Closed Lost\"\n")).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("must be closed and won (salesforce.opportunity_stage.won)"), "{stderr}");

    let out = tokio::task::spawn_blocking({
        let file = file.clone();
        move || {
            std::process::Command::new(BIN)
                .args(["check", "--config"])
                .arg(file)
                .env("CRM_SALESFORCE_CLIENT_SECRET", "wrong")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refused the service's credentials") && !stderr.contains("wrong"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_jwt_bearer_flow_signs_in_with_the_private_key() {
    let testdata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../salesforce-fake/testdata");
    let public = std::fs::read_to_string(testdata.join("jwt_test_public.pem")).unwrap();
    let org = FakeOrg::start(OrgConfig { jwt_public_key_pem: Some(public), ..OrgConfig::default() }).await;
    org.add_user("RM001", true);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "instance_url = \"{}\"\nauth = \"jwt_bearer\"\nclient_id = \"test-client-id\"\nusername = \"integration@bank.example\"\nprivate_key_file = \"{}\"\nlocal_store = \"sqlite://{}\"\n",
        org.url(),
        testdata.join("jwt_test_private.pem").display(),
        dir.path().join("local.db").display()
    );
    let section: store_salesforce::SalesforceSection = toml::from_str(&text).unwrap();
    let config = section.validate(None).unwrap();
    let app = spawn_on_org(org.clone(), None, |s| s.salesforce = Some(config)).await;
    let (status, _) = app.create(&ntb("J1", "CARD", "RM001")).await;
    assert_eq!(status, 201);
    assert_eq!(org.token_requests(), 1);

    // A key the org does not trust stops start-up.
    let text = text.replace("jwt_test_private.pem", "other_private.pem");
    let section: store_salesforce::SalesforceSection = toml::from_str(&text).unwrap();
    let mut settings = app.settings.clone();
    settings.salesforce = Some(section.validate(None).unwrap());
    let e = integration_service::startup::Application::build(&settings).await.err().expect("refused");
    assert!(e.to_string().contains("refused the service's credentials"), "{e}");
}
