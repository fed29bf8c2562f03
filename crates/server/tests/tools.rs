//! Tests that drive the service with outside tools, as a client would:
//! - schemathesis (PyPI) generates requests from the service's own `/openapi.json` and runs every check:
//!   no 5xx, every answer as documented, every request the document allows accepted and every one it
//!   forbids refused, authentication honoured; with API keys and in open mode;
//! - openapi-python-client (PyPI) generates a Python client from the document, with no warning;
//! - headless Chromium (Debian's `chromium`, driven by playwright-core) loads `/docs`, finds the four
//!   operations and tries one.
//!
//! `scripts/test` installs both tools. Without them these tests fail, saying what is missing; they never
//! skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use integration_service::api::auth::{ApiKey, ApiKeys, Role};
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

/// A tool scripts/test installs into .tools/venv, or where `env` says.
fn venv_tool(env: &str, name: &str) -> PathBuf {
    let candidates = [std::env::var_os(env).map(PathBuf::from), Some(workspace().join(".tools/venv/bin").join(name))];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is needed: run scripts/test (it installs it into .tools/venv) or set {env}"))
}

fn schemathesis() -> PathBuf {
    venv_tool("SCHEMATHESIS", "st")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_generates_from_the_document_without_warning_and_imports() {
    let generator = venv_tool("OPENAPI_PYTHON_CLIENT", "openapi-python-client");
    // The generator's own virtualenv runs the generated package.
    let python = generator.with_file_name("python");
    for keys in [ApiKeys::default(), ApiKeys(vec![ApiKey::generate(&Channel::parse("MOBILE_APP").unwrap()).unwrap().1])]
    {
        let keyed = !keys.is_empty();
        let app = start(keys, None).await;
        let work = tempfile::tempdir().unwrap();
        // No post-generation formatting hooks: they need ruff, which is not what is tested here.
        std::fs::write(work.path().join("config.yml"), "post_hooks: []\n").unwrap();
        let url = format!("{}/openapi.json", app.base);
        let (generator, python, dir) = (generator.clone(), python.clone(), work.path().to_owned());
        let (generated, imported) = tokio::task::spawn_blocking(move || {
            let generated = Command::new(&generator)
                .current_dir(&dir)
                .args(["generate", "--url", &url, "--config", "config.yml", "--output-path", "client"])
                .output()
                .unwrap();
            let imported = Command::new(&python)
                .current_dir(dir.join("client"))
                .args(["-c", "from integration_service_client import AuthenticatedClient, Client\n\
                    from integration_service_client.api.lifecycle import create, close_won, close_lost_opportunity, close_lost_lead\n\
                    from integration_service_client.models import NtbCreateRequest, EtbCreateRequest, CloseWonLeadRequest\n\
                    print('imported')"])
                .output()
                .unwrap();
            (generated, imported)
        })
        .await
        .unwrap();
        let text =
            String::from_utf8_lossy(&generated.stdout).into_owned() + &String::from_utf8_lossy(&generated.stderr);
        assert!(generated.status.success(), "keys: {keyed}: {text}");
        assert!(
            !text.to_lowercase().contains("warning") && !text.to_lowercase().contains("error"),
            "keys: {keyed}: {text}"
        );
        let out = String::from_utf8_lossy(&imported.stdout).into_owned() + &String::from_utf8_lossy(&imported.stderr);
        assert!(imported.status.success() && out.contains("imported"), "keys: {keyed}: {out}");
    }
}

/// Generated cases each embedded-store run must reach, per mode.
const MIN_CASES: u64 = 5_000;
/// What `--max-examples` makes of it: the fuzzing phase draws up to that many per operation, and the coverage
/// and stateful phases add their own. Measured at 650: 5 037 cases open and 5 206 keyed, so 720 leaves a margin.
const MAX_EXAMPLES: &str = "720";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_with_every_check_finds_nothing_with_api_keys_on_sqlite() {
    let cases = schemathesis_run(Mode::Keyed, None, MAX_EXAMPLES).await;
    assert!(cases >= MIN_CASES, "only {cases} cases");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_with_every_check_finds_nothing_in_open_mode_on_sqlite() {
    let cases = schemathesis_run(Mode::Open, None, MAX_EXAMPLES).await;
    assert!(cases >= MIN_CASES, "only {cases} cases");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_with_every_check_finds_nothing_on_postgres() {
    let db = ScratchDb::create("crm_schemathesis").await;
    schemathesis_run(Mode::Keyed, Some(&db), "25").await;
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// One API key (MOBILE_APP) configured; schemathesis authenticates through the document's `bearer`
    /// scheme, so it can also leave the key out or spoil it where a check asks for that.
    Keyed,
    /// No API keys: the document declares no security.
    Open,
}

/// Runs schemathesis with every check (positive data acceptance, negative data rejection, the stateful
/// ones, ...) against a fresh service, without a fixed seed; returns how many cases it generated.
async fn schemathesis_run(mode: Mode, postgres: Option<&ScratchDb>, max_examples: &str) -> u64 {
    let st = schemathesis();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("schemathesis.toml");
    let (keys, key) = match mode {
        Mode::Keyed => {
            let (key, entry) = ApiKey::generate(&Channel::parse("MOBILE_APP").unwrap()).unwrap();
            (ApiKeys(vec![entry]), key)
        }
        Mode::Open => (ApiKeys::default(), String::new()),
    };
    let auth = match mode {
        Mode::Keyed => "[auth.openapi.bearer]\nbearer = \"${CRM_TEST_API_KEY}\"\n",
        Mode::Open => "",
    };
    std::fs::write(&config, auth).unwrap();
    let app = start(keys, postgres).await;
    let url = format!("{}/openapi.json", app.base);
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis_hooks.py");
    let max_examples = max_examples.to_owned();
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .current_dir(work.path()) // its example cache stays out of the source tree
            .env("CRM_TEST_API_KEY", key)
            .env("SCHEMATHESIS_HOOKS", hooks)
            .arg("--config-file")
            .arg(&config)
            .args(["run", &url, "--checks", "all", "--max-examples", &max_examples, "--workers", "1", "--no-color"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "schemathesis found problems ({mode:?}):\n{text}");
    let summary = text.lines().find(|l| l.contains(" generated, ")).unwrap_or_else(|| panic!("no summary: {text}"));
    let cases: u64 = summary.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap();
    assert!(summary.contains(&format!("{cases} passed")), "{summary}");
    eprintln!("schemathesis ({mode:?}, postgres: {}): {summary} in {:.0?}", postgres.is_some(), started.elapsed());
    cases
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
    // The four operations come first on the page, in the order of a journey.
    let journey = [
        "/integration-service/int/api/crm/v1/combo-create-lead-opportunity",
        "/integration-service/int/api/crm/v1/combo-update-lead-opportunity",
        "/integration-service/api/crm/v1/update-opportunity-status",
        "/integration-service/api/crm/v1/update-lead-status",
    ];
    assert!(operations.len() > journey.len(), "{operations:?}");
    for (shown, path) in operations.iter().zip(journey) {
        assert!(shown.contains(path), "{path} expected in journey order: {operations:?}");
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

/// A few journeys through the API, so the dashboard has something to draw: leads and opportunities on two
/// channels and three products, some won, some lost for a reason, some handed over to another RM.
async fn seed_journeys(base: &str, keys: &[(&str, &str)]) {
    let client = reqwest::Client::new();
    let key = |channel: &str| keys.iter().find(|(c, _)| *c == channel).unwrap().1.to_owned();
    let post = |path: &'static str, channel: &'static str, body: Value| {
        let (client, key) = (client.clone(), key(channel));
        async move {
            let r = client.post(format!("{base}{path}")).bearer_auth(key).json(&body).send().await.unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            r.json::<Value>().await.unwrap()
        }
    };
    const CREATE: &str = "/integration-service/int/api/crm/v1/combo-create-lead-opportunity";
    const WON: &str = "/integration-service/int/api/crm/v1/combo-update-lead-opportunity";
    const LOST_LEAD: &str = "/integration-service/api/crm/v1/update-lead-status";
    const LOST_OPP: &str = "/integration-service/api/crm/v1/update-opportunity-status";
    let products = ["CREDIT_CARD", "PERSONAL_LOAN", "SAVINGS"];
    for i in 0..18 {
        let product = products[i % 3];
        let owner = format!("RM00{}", 1 + i % 4);
        if i % 3 != 1 {
            let body = serde_json::json!({
                "customerType": "NTB", "customer": { "idNumber": format!("D{i}"), "fullName": "Dash Board" },
                "product": product, "ownerId": owner, "channel": "MOBILE_APP"
            });
            let lead = post(CREATE, "MOBILE_APP", body.clone()).await;
            match i % 4 {
                0 => {
                    post(WON, "MOBILE_APP", serde_json::json!({"leadId": lead["id"], "channel": "MOBILE_APP"})).await;
                }
                1 => {
                    let reason = if i % 5 == 0 { "AML_REJECTED" } else { "NCB_REJECTED" };
                    let b = serde_json::json!({"leadId": lead["id"], "status": "Close Lost", "channel": "MOBILE_APP", "reason": reason});
                    post(LOST_LEAD, "MOBILE_APP", b).await;
                }
                2 => {
                    let mut again = body;
                    again["ownerId"] = Value::from("RM009");
                    post(CREATE, "MOBILE_APP", again).await;
                }
                _ => {}
            }
        } else {
            let body = serde_json::json!({
                "customerType": "ETB", "customer": { "idNumber": format!("D{i}"), "cif": format!("CIF{i}") },
                "product": product, "ownerId": owner, "channel": "LENDING_APP"
            });
            let opp = post(CREATE, "LENDING_APP", body).await;
            if i % 2 == 0 {
                let b = serde_json::json!({"opportunityId": opp["id"], "status": "Close Lost", "channel": "LENDING_APP", "reason": "NCB_REJECTED"});
                post(LOST_OPP, "LENDING_APP", b).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_what_the_reports_say_in_headless_chromium() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(browser_dir.join("node_modules/playwright-core").exists(), "playwright-core is needed: run scripts/test");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&chromium).exists(), "Chromium is needed at {chromium}: run scripts/test");
    let (mobile, m) = ApiKey::generate(&Channel::parse("MOBILE_APP").unwrap()).unwrap();
    let (lending, l) = ApiKey::generate(&Channel::parse("LENDING_APP").unwrap()).unwrap();
    let (report, r) = ApiKey::generate_with(&Channel::parse("ANALYTICS").unwrap(), Role::Reporting).unwrap();
    let app = start(ApiKeys(vec![m, l, r]), None).await;
    seed_journeys(&app.base, &[("MOBILE_APP", &mobile), ("LENDING_APP", &lending)]).await;

    let today = time::OffsetDateTime::now_utc().date();
    let (from, to) = ((today - time::Duration::days(6)).to_string(), today.to_string());
    let screenshot = workspace().join("docs/dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let (base, key, f, t, shot) = (app.base.clone(), report.clone(), from.clone(), to.clone(), screenshot.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(browser_dir.join("dashboard.mjs"))
            .args([&base, &key, &f, &t])
            .arg(&shot)
            .env("CHROMIUM", chromium)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("no result from the browser: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["external"], serde_json::json!([]), "the page loads nothing from outside: {seen}");
    assert_eq!(seen["state"], "ready", "{seen}");
    assert_eq!(seen["stored"], true, "the key is kept for the session");
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000, "a screenshot was saved");

    // What the JSON reports say, for the same period, read with the same key.
    let client = reqwest::Client::new();
    let get = |report_name: &str, extra: &str| {
        let url =
            format!("{}/integration-service/int/api/crm/v1/reports/{report_name}?from={from}&to={to}{extra}", app.base);
        let (client, key) = (client.clone(), report.clone());
        async move { client.get(url).bearer_auth(key).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let mut want = Vec::new();
    let funnel = get("funnel", "&groupBy=channel").await;
    for g in funnel["groups"].as_array().unwrap() {
        for series in ["leads", "opportunities", "closeWon", "closeLost", "open"] {
            want.push(
                serde_json::json!({"chart": "funnel", "group": g["group"], "series": series, "value": g[series]}),
            );
        }
    }
    for r in get("rejections", "").await["rows"].as_array().unwrap() {
        let group = format!(
            "{} · {} · {}",
            r["reason"].as_str().unwrap(),
            r["channel"].as_str().unwrap(),
            r["product"].as_str().unwrap()
        );
        want.push(serde_json::json!({"chart": "rejections", "group": group, "series": "count", "value": r["count"]}));
    }
    for h in get("handovers", "").await["rows"].as_array().unwrap() {
        let group = format!("{} → {}", h["fromOwner"].as_str().unwrap(), h["toOwner"].as_str().unwrap());
        want.push(serde_json::json!({"chart": "handovers", "group": group, "series": "count", "value": h["count"]}));
    }
    assert_eq!(seen["bars"], Value::from(want.clone()), "the charts draw exactly the reports' numbers");
    let labels: Vec<Value> = want.iter().filter(|w| w["chart"] == "funnel").map(|w| w["value"].clone()).collect();
    assert_eq!(seen["labels"], Value::from(labels), "each funnel bar is labelled with its number");
    // The seeded journeys are all there: 15 leads on MOBILE_APP (12, and 3 that replaced one), 6 opportunities on LENDING_APP.
    assert_eq!(funnel["groups"][1]["leads"], 15, "{funnel}");
    assert_eq!(funnel["groups"][0]["opportunities"], 6, "{funnel}");
}
