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
