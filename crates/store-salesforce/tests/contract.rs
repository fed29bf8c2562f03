//! The storage contract suite against the Salesforce adapter: a fake org that behaves as Salesforce
//! documents it, and a fresh local SQLite store, per test.

mod support;

use std::sync::Arc;

use store::Backend;

async fn fresh() -> (Arc<dyn Backend>, support::Env) {
    let env = support::env().await;
    (env.store.clone(), env)
}

store::contract_suite!(fresh);
store::reports_suite!(fresh);
