//! The storage contract suite against PostgreSQL, a fresh database per test.

use std::sync::Arc;

use store::Backend;
use store_postgres::scratch::ScratchDb;
use store_postgres::{PgConfig, PgStore};

async fn fresh() -> (Arc<dyn Backend>, Batched) {
    let db = ScratchDb::create("crm_contract").await;
    let store = Arc::new(PgStore::open(PgConfig::new(&db.url)).await.unwrap());
    (store.clone(), Batched { store, _db: db })
}

/// Fails a test that passed only because its batches fell back to running their requests alone (which
/// gives the right answers whatever the batch's planning did): every case of the suite runs its writes
/// through batches, and none of them should fail.
struct Batched {
    store: Arc<PgStore>,
    _db: ScratchDb,
}

impl Drop for Batched {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_eq!(self.store.batch_fallbacks(), 0, "a batch fell back to running its requests alone");
        }
    }
}

store::contract_suite!(fresh);

/// The same suite with each write in its own transaction: the path a batch falls back to.
mod alone {
    use super::*;
    use store_postgres::Batching;

    async fn fresh() -> (Arc<dyn Backend>, ScratchDb) {
        let db = ScratchDb::create("crm_contract").await;
        let mut config = PgConfig::new(&db.url);
        config.batching = Batching { max_batch: 1, ..Batching::default() };
        let store = PgStore::open(config).await.unwrap();
        (Arc::new(store), db)
    }

    store::contract_suite!(fresh);
    store::reports_suite!(fresh);
}

async fn with_events(events: bool) -> (Arc<dyn Backend>, Arc<dyn store::events::Outbox>, ScratchDb) {
    let db = ScratchDb::create("crm_outbox").await;
    let mut config = PgConfig::new(&db.url);
    config.events = events;
    let store = Arc::new(PgStore::open(config).await.unwrap());
    (store.clone(), store, db)
}

store::outbox_suite!(with_events);

store::reports_suite!(fresh);
