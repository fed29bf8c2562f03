//! The storage contract suite against PostgreSQL, a fresh database per test.

use std::sync::Arc;

use store::Backend;
use store_postgres::scratch::ScratchDb;
use store_postgres::{PgConfig, PgStore};

async fn fresh() -> (Arc<dyn Backend>, ScratchDb) {
    let db = ScratchDb::create("crm_contract").await;
    let store = PgStore::open(PgConfig::new(&db.url)).await.unwrap();
    (Arc::new(store), db)
}

store::contract_suite!(fresh);

async fn with_events(events: bool) -> (Arc<dyn Backend>, Arc<dyn store::events::Outbox>, ScratchDb) {
    let db = ScratchDb::create("crm_outbox").await;
    let mut config = PgConfig::new(&db.url);
    config.events = events;
    let store = Arc::new(PgStore::open(config).await.unwrap());
    (store.clone(), store, db)
}

store::outbox_suite!(with_events);

store::reports_suite!(fresh);
