//! Tests that drive the service with outside tools, as a client would:
//! - schemathesis (PyPI) generates requests from the service's own `/openapi.json` and checks that no
//!   answer is a 5xx or breaks the document;
//! - headless Chromium (Debian's `chromium`, driven by playwright-core) loads `/docs`, finds the four
//!   operations and tries one.
//!
//! `scripts/test` installs both tools. Without them these tests fail, saying what is missing; they never
//! skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use integration_service::api::auth::{ApiKey, ApiKeys};
use integration_service::config::{Settings, StoreUrl};
use integration_service::startup::Application;
use lifecycle::Channel;
use serde_json::Value;
use store_postgres::scratch::ScratchDb;

struct Running {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

async fn start(api_keys: ApiKeys, postgres: Option<&ScratchDb>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let store = match postgres {
        Some(db) => StoreUrl::Postgres(db.url.clone()),
        None => StoreUrl::Sqlite(dir.path().join("crm.db")),
    };
    let settings = Settings { listen: "127.0.0.1:0".parse().unwrap(), store, api_keys, ..Settings::default() };
    let app = Application::build(&settings).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    Running { base, stop: Some(stop), _dir: dir }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn schemathesis() -> PathBuf {
    let candidates =
        [std::env::var_os("SCHEMATHESIS").map(PathBuf::from), Some(workspace().join(".tools/venv/bin/st"))];
    candidates.into_iter().flatten().find(|p| p.exists()).unwrap_or_else(|| {
        panic!("schemathesis is needed: run scripts/test (it installs it into .tools/venv) or set SCHEMATHESIS")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_breach_on_sqlite() {
    schemathesis_run(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_breach_on_postgres() {
    let db = ScratchDb::create("crm_schemathesis").await;
    schemathesis_run(Some(&db)).await;
}

async fn schemathesis_run(postgres: Option<&ScratchDb>) {
    let st = schemathesis();
    let channel = Channel::parse("MOBILE_APP").unwrap();
    let (key, entry) = ApiKey::generate(&channel).unwrap();
    let app = start(ApiKeys(vec![entry]), postgres).await;
    let url = format!("{}/openapi.json", app.base);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .current_dir(std::env::temp_dir()) // its example cache stays out of the source tree
            .args(["run", &url, "--checks", "all", "--exclude-checks", "positive_data_acceptance"])
            .args(["--max-examples", "25", "--seed", "20261127", "--no-color"])
            .args(["-H", &format!("Authorization: Bearer {key}")])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    assert!(text.contains("passed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_works_in_headless_chromium() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is needed: run scripts/test (npm ci in crates/server/tests/browser)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "Chromium is needed at {chromium}: run scripts/test (apt-get install chromium)"
    );
    let app = start(ApiKeys::default(), None).await;
    let base = app.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node").arg(browser_dir.join("docs.mjs")).arg(&base).env("CHROMIUM", chromium).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let seen: Value = serde_json::from_str(line)
        .unwrap_or_else(|_| panic!("no result from the browser: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["external"], serde_json::json!([]), "the page loads nothing from outside: {seen}");
    let operations: Vec<&str> = seen["operations"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for path in [
        "/integration-service/int/api/crm/v1/combo-create-lead-opportunity",
        "/integration-service/int/api/crm/v1/combo-update-lead-opportunity",
        "/integration-service/api/crm/v1/update-opportunity-status",
        "/integration-service/api/crm/v1/update-lead-status",
    ] {
        assert!(operations.iter().any(|o| o.contains(path)), "{path} listed: {operations:?}");
    }
    assert_eq!(seen["status"], "201", "trying create from the page works: {seen}");
    let body: Value = serde_json::from_str(seen["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["result"], "CREATED");
    // The record the page created is really there.
    let r =
        reqwest::get(format!("{}/integration-service/int/api/crm/v1/leads/{}", app.base, body["id"].as_str().unwrap()))
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
}
