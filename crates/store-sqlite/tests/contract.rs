//! The storage contract suite against the embedded SQLite adapter, a fresh database file per test.

use std::sync::Arc;

use store::Backend;
use store_sqlite::{SqliteConfig, SqliteStore};

async fn fresh() -> (Arc<dyn Backend>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("crm.db"))).unwrap();
    (Arc::new(store), dir)
}

store::contract_suite!(fresh);

async fn with_events(events: bool) -> (Arc<dyn Backend>, Arc<dyn store::events::Outbox>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqliteConfig::new(dir.path().join("crm.db"));
    config.events = events;
    let store = Arc::new(SqliteStore::open(config).unwrap());
    (store.clone(), store, dir)
}

store::outbox_suite!(with_events);

store::reports_suite!(fresh);
