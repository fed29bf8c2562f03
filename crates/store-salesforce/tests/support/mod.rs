//! A fake org with the users the tests name, a local store in a temporary folder, and the adapter between.

#![allow(dead_code)]

use std::sync::Arc;

use lifecycle::Matching;
use salesforce_fake::{FakeOrg, OrgConfig};
use store::Sidecar;
use store_salesforce::{SalesforceConfig, SalesforceSection, SalesforceStore};
use store_sqlite::{SqliteConfig, SqliteStore};

/// The minimal `[salesforce]` section for an org at `url`, as an operator would write it.
pub fn config(url: &str) -> SalesforceConfig {
    let text = format!("instance_url = \"{url}\"\nauth = \"client_credentials\"\nclient_id = \"test-client-id\"\n");
    let section: SalesforceSection = toml_like(&text);
    let mut config = section.validate(Some("test-client-secret".into())).unwrap();
    config.timeout = std::time::Duration::from_millis(1500);
    config
}

/// The three keys of [`config`], without pulling a TOML parser into the tests.
fn toml_like(text: &str) -> SalesforceSection {
    let value = |key: &str| {
        text.lines().find_map(|l| l.strip_prefix(&format!("{key} = \""))).map(|v| v.trim_end_matches('"').to_owned())
    };
    SalesforceSection {
        instance_url: value("instance_url"),
        auth: value("auth"),
        client_id: value("client_id"),
        ..Default::default()
    }
}

pub const RMS: &[&str] = &["RM000", "RM001", "RM002", "RM003", "RM009", "RM0", "RM1", "RM2", "RM3", "RM4"];

pub async fn org() -> FakeOrg {
    let org = FakeOrg::start(OrgConfig::default()).await;
    for rm in RMS {
        org.add_user(rm, true);
    }
    org
}

pub struct Env {
    pub org: FakeOrg,
    pub store: Arc<SalesforceStore>,
    pub local: Arc<SqliteStore>,
    pub dir: tempfile::TempDir,
}

pub async fn env() -> Env {
    let org = org().await;
    env_on(org, |_| {}).await
}

pub async fn env_on(org: FakeOrg, tweak: impl FnOnce(&mut SalesforceConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut local = SqliteConfig::new(dir.path().join("local.db"));
    let mut config = config(&org.url());
    tweak(&mut config);
    // As the service opens them: events on in both, or in neither.
    local.events = config.events;
    let local = Arc::new(SqliteStore::open(local).unwrap());
    let sidecar: Arc<dyn Sidecar> = local.clone();
    let store = Arc::new(SalesforceStore::open(config, sidecar, Matching::default()).await.unwrap());
    Env { org, store, local, dir }
}
