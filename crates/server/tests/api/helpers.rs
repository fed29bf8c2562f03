use std::path::Path;

use integration_service::config::{Settings, StoreUrl};
use integration_service::startup::Application;
use reqwest::{Client, Response, StatusCode};
use salesforce_fake::{FakeOrg, OrgConfig};
use serde_json::{json, Value};
use store_postgres::scratch::ScratchDb;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const INT: &str = "/integration-service/int/api/crm/v1";
pub const CREATE: &str = "/integration-service/int/api/crm/v1/combo-create-lead-opportunity";
pub const CLOSE_WON: &str = "/integration-service/int/api/crm/v1/combo-update-lead-opportunity";
pub const LOST_OPP: &str = "/integration-service/api/crm/v1/update-opportunity-status";
pub const LOST_LEAD: &str = "/integration-service/api/crm/v1/update-lead-status";
pub const SEARCH: &str = "/integration-service/int/api/crm/v1/search";

/// The store a test runs on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// A fake org (as Salesforce documents it) with a local SQLite store beside it.
    Salesforce,
}

/// Keeps a test's database alive until the test ends.
enum Guard {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Pg(#[allow(dead_code)] ScratchDb),
    Org(#[allow(dead_code)] FakeOrg, #[allow(dead_code)] tempfile::TempDir),
    Gone,
}

/// The relationship managers the fake org knows: `R`, `RM0`–`RM9` and `RM000`–`RM099`.
pub fn fake_org_rms() -> Vec<String> {
    let rms = (0..10).map(|i| format!("RM{i}")).chain((0..100).map(|i| format!("RM{i:03}")));
    std::iter::once("R".to_owned()).chain(rms).collect()
}

/// A fake org with the test RMs as active users.
pub async fn fake_org() -> FakeOrg {
    let org = FakeOrg::start(OrgConfig::default()).await;
    for rm in fake_org_rms() {
        org.add_user(&rm, true);
    }
    org
}

/// The `[salesforce]` section for `org`, as an operator writes it, validated as the service does.
pub fn salesforce_settings(org: &FakeOrg, local_store: &str) -> store_salesforce::SalesforceConfig {
    let text = format!(
        "instance_url = \"{}\"\nauth = \"client_credentials\"\nclient_id = \"test-client-id\"\nlocal_store = \"{local_store}\"\ntimeout_ms = 5000\n",
        org.url()
    );
    let section: store_salesforce::SalesforceSection = toml::from_str(&text).unwrap();
    section.validate(Some("test-client-secret".into())).unwrap()
}

pub struct TestApp {
    pub base: String,
    pub client: Client,
    pub settings: Settings,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    guard: Guard,
}

/// Expands each `async fn name(app: TestApp) { … }` into a module `name` with three tests, `sqlite`,
/// `postgres` and `salesforce`, each running the body against the real app on a fresh store of that backend
/// (for Salesforce: a fresh fake org and a fresh local store).
#[macro_export]
macro_rules! both_backends {
    ($(async fn $name:ident($app:ident: TestApp) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn run($app: $crate::helpers::TestApp) $body
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                run($crate::helpers::spawn($crate::helpers::Backend::Sqlite).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                run($crate::helpers::spawn($crate::helpers::Backend::Postgres).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn salesforce() {
                run($crate::helpers::spawn($crate::helpers::Backend::Salesforce).await).await
            }
        }
    )*};
}

/// The real application on port 0 with a fresh database of `backend`.
pub async fn spawn(backend: Backend) -> TestApp {
    spawn_with(backend, |_| {}).await
}

/// The real application on port 0 with a fresh database of `backend` and settings changed by `tweak`.
pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let (store, guard) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            (StoreUrl::Sqlite(dir.path().join("crm.db")), Guard::Dir(dir))
        }
        Backend::Postgres => {
            let db = ScratchDb::create("crm_api").await;
            (StoreUrl::Postgres(db.url.clone()), Guard::Pg(db))
        }
        Backend::Salesforce => return spawn_on_org(fake_org().await, None, tweak).await,
    };
    start_with(Settings::default(), store, guard, tweak).await
}

/// The real application on the Salesforce backend, on `org`, with a local store at `local_store` (a
/// fresh SQLite file when `None`).
pub async fn spawn_on_org(org: FakeOrg, local_store: Option<String>, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let local = local_store.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("local.db").display()));
    let config = salesforce_settings(&org, &local);
    let base = Settings { salesforce: Some(config), ..Settings::default() };
    start_with(base, StoreUrl::Salesforce, Guard::Org(org, dir), tweak).await
}

async fn start_with(base: Settings, store: StoreUrl, guard: Guard, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = Settings { listen: "127.0.0.1:0".parse().unwrap(), store, ..base };
    tweak(&mut settings);
    start(settings, guard).await
}

/// The real application on port 0 with a fresh embedded database.
pub async fn spawn_app() -> TestApp {
    spawn(Backend::Sqlite).await
}

/// The real application on port 0 with a fresh embedded database and settings changed by `tweak`.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_with(Backend::Sqlite, tweak).await
}

/// The real application on port 0 over the database file `db` (which may already exist).
pub async fn spawn_app_at(db: &Path) -> TestApp {
    let settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: StoreUrl::Sqlite(db.to_owned()),
        ..Settings::default()
    };
    start(settings, Guard::Gone).await
}

async fn start(settings: Settings, guard: Guard) -> TestApp {
    let app = Application::build(&settings).await.expect("the app starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    TestApp { base, client: Client::new(), settings, stop: Some(stop), server: Some(server), guard }
}

impl TestApp {
    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.client.post(format!("{}{path}", self.base)).json(body).send().await.unwrap()
    }

    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: impl Into<reqwest::Body>) -> Response {
        let mut req = self.client.post(format!("{}{path}", self.base)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(format!("{}{path}", self.base)).send().await.unwrap()
    }

    /// POST and return (status, body as JSON).
    pub async fn call(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let r = self.post(path, body).await;
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn create(&self, body: &Value) -> (StatusCode, Value) {
        self.call(CREATE, body).await
    }

    pub async fn record(&self, kind: &str, id: &str) -> Value {
        let r = self.get(&format!("{INT}/{kind}/{id}")).await;
        assert_eq!(r.status(), 200, "{kind}/{id}");
        r.json().await.unwrap()
    }

    pub async fn search(&self, id_number: &str) -> Value {
        let (status, body) = self.call(SEARCH, &json!({ "idNumber": id_number })).await;
        assert_eq!(status, 200);
        body
    }

    /// A second replica: another server on the same database.
    pub async fn replica(&self) -> TestApp {
        start(self.settings.clone(), Guard::Gone).await
    }

    /// The fake org this app runs on, if it runs on Salesforce.
    pub fn org(&self) -> Option<&FakeOrg> {
        match &self.guard {
            Guard::Org(org, _) => Some(org),
            _ => None,
        }
    }

    /// The PostgreSQL URL of this app's database, if it runs on PostgreSQL.
    pub fn postgres_url(&self) -> Option<String> {
        match &self.settings.store {
            StoreUrl::Postgres(url) => Some(url.clone()),
            _ => None,
        }
    }

    /// POST with an `Idempotency-Key`.
    pub async fn post_key(&self, path: &str, key: &str, body: &Value) -> Response {
        self.client.post(format!("{}{path}", self.base)).header("idempotency-key", key).json(body).send().await.unwrap()
    }

    /// Stops the server and starts a new one on the same database.
    pub async fn restart(mut self) -> TestApp {
        let guard = std::mem::replace(&mut self.guard, Guard::Gone);
        let settings = self.settings.clone();
        self.stop().await;
        start(settings, guard).await
    }

    /// Stops the server (graceful shutdown) and waits for the store to drain.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

pub fn ntb(id_number: &str, product: &str, owner: &str) -> Value {
    json!({
        "customerType": "NTB",
        "customer": { "idNumber": id_number, "cif": null, "fullName": "Nguyen Van A",
                      "phone": "+84901234567", "email": "a@example.com" },
        "product": product,
        "ownerId": owner,
        "channel": "MOBILE_APP",
        "journeyId": "J-2026-000123"
    })
}

pub fn etb(id_number: &str, product: &str, owner: &str) -> Value {
    json!({
        "customerType": "ETB",
        "customer": { "idNumber": id_number, "cif": "CIF0001" },
        "product": product,
        "ownerId": owner,
        "channel": "LENDING_APP"
    })
}

/// Asserts a problem document of SPEC §4 and returns it.
pub async fn problem(r: Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status().as_u16(), status, "status");
    let ct = r.headers().get("content-type").unwrap().to_str().unwrap().to_owned();
    assert_eq!(ct, "application/problem+json");
    let header_id = r.headers().get("x-request-id").expect("x-request-id").to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert_eq!(body["requestId"], header_id.as_str());
    for key in ["type", "title", "detail"] {
        assert!(body[key].as_str().is_some_and(|s| !s.is_empty()), "{key} in {body}");
    }
    assert!(body["errors"].is_array());
    body
}

/// The `field` names of a problem's `errors`, sorted.
pub fn fields(problem: &Value) -> Vec<String> {
    let mut f: Vec<String> =
        problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_owned()).collect();
    f.sort();
    f
}

/// Holds the per-key lock of `key` on PostgreSQL so a create for it waits, as a slow request would.
pub async fn hold_key(url: &str, key: &str) -> sqlx::PgConnection {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)").bind(store_postgres::key_lock_id(key)).execute(&mut conn).await.unwrap();
    conn
}
