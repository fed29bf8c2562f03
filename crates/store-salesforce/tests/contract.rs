//! The storage contract suite against the Salesforce adapter: a fake org that behaves as Salesforce
//! documents it, and a fresh local SQLite store, per test. The outbox cases read the local store's outbox,
//! where the adapter's events wait (as the service's relay reads it).

mod support;

use std::sync::Arc;

use store::Backend;

async fn fresh() -> (Arc<dyn Backend>, support::Env) {
    let env = support::env().await;
    (env.store.clone(), env)
}

store::contract_suite!(fresh);

async fn with_events(events: bool) -> (Arc<dyn Backend>, Arc<dyn store::events::Outbox>, support::Env) {
    let env = support::env_on(support::org().await, |c| c.events = events).await;
    (env.store.clone(), env.local.clone(), env)
}

store::outbox_suite!(with_events);
store::reports_suite!(fresh);
