//! The Salesforce adapter of the storage port: the lifecycle runs in a Salesforce org, through its REST
//! API (composite requests) and its SOAP API (lead conversion), with a local store beside it.
//!
//! A guided tour:
//! - [`config`]: the `[salesforce]` section, validated once.
//! - `client`: every call to the org (token, 401 renewal, retries with jitter, `Sforce-Limit-Info`, the
//!   circuit breaker, the per-operation call counter); `auth`: the two OAuth flows.
//! - `composite`, `soap`, `soql`: the wire formats.
//! - `records`: org records ↔ ours; `owners`: RM codes ↔ `User` ids.
//! - `ops` (creates and closes), `read` (reads and search), `check` (the start-up mapping check).
//!
//! **How the invariant holds across replicas.** Salesforce has no lock a client can hold, and a composite
//! request cannot branch on what it reads. So every write of a matching key runs under that key's lock in
//! the local store (a PostgreSQL advisory lock shared by every replica, or a lease row in the SQLite
//! file): the snapshot read and the plan's writes of one key never interleave with another replica's.
//! Writes made by hand in the org are healed by the rules (SPEC §6 reading 3), as on the SQL backends.
//!
//! **Call budget.** Reading a key is one `/composite` call (the owner lookup rides in it on a cold cache);
//! a plan's writes are one `/composite` call with `allOrNone`; a conversion is one SOAP `convertLead` and
//! one update. With events on, a change whose event names an owner the cache lacks adds one user lookup.
//! The local store's calls cost no API allowance.

pub mod config;

mod auth;
mod check;
mod client;
mod composite;
mod error;
mod metrics;
mod ops;
mod owners;
mod read;
mod records;
mod soap;
mod soql;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lifecycle::{IdNumber, Matching, Product, RecordType};
use store::reports::{FunnelRow, GroupBy, HandoverRow, Period, RejectionRow, Rows, StalePage, StaleQuery};
use store::{
    Claim, CloseWonOutcome, CreateOutcome, CreateRequest, Idempotency, RecordRef, RecordWithHistory, Reports,
    RequestContext, SearchResult, Sidecar, Store, StoreError, StoredResponse,
};

pub use config::{SalesforceConfig, SalesforceSection};
pub use error::SfError;

/// Why the backend could not start: one line naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("salesforce: {0}")]
    Connect(SfError),
    #[error("salesforce mapping: {0}")]
    Mapping(String),
}

/// The Salesforce backend.
pub struct SalesforceStore {
    client: client::Client,
    config: Arc<SalesforceConfig>,
    sidecar: Arc<dyn Sidecar>,
    matching: Matching,
    owners: owners::Owners,
}

impl SalesforceStore {
    /// Connects (fetches a token), checks the mapping against the org, and is ready. `sidecar` is the
    /// local store (already opened and migrated).
    pub async fn open(
        config: SalesforceConfig,
        sidecar: Arc<dyn Sidecar>,
        matching: Matching,
    ) -> Result<Self, OpenError> {
        let store = Self::connect(config, sidecar, matching)?;
        store.client.authenticate().await.map_err(OpenError::Connect)?;
        store.check().await?;
        Ok(store)
    }

    /// The backend without touching the org (no token, no check): for tests of start-up paths.
    pub fn connect(config: SalesforceConfig, sidecar: Arc<dyn Sidecar>, matching: Matching) -> Result<Self, OpenError> {
        let config = Arc::new(config);
        let client = client::Client::new(config.clone()).map_err(OpenError::Connect)?;
        let owners = owners::Owners::new(config.owner_cache);
        Ok(Self { client, config, sidecar, matching, owners })
    }

    /// Verifies the mapping against the org: every field exists, every configured picklist value exists
    /// and has the meaning we give it. `integration-service check` and start-up run it.
    pub async fn check(&self) -> Result<(), OpenError> {
        check::run(&self.client, &self.config).await
    }

    fn error(&self, e: SfError) -> StoreError {
        e.into_store(|f| records::request_field(&self.config, f))
    }
}

/// The wait for a key's lock, bounded by the request timeout in practice.
fn lock_times(config: &SalesforceConfig) -> (Duration, Duration) {
    (config.lock_lease, config.lock_wait)
}

#[async_trait]
impl Store for SalesforceStore {
    async fn create(&self, request: &CreateRequest, ctx: &RequestContext) -> Result<CreateOutcome, StoreError> {
        ops::create(self, request, ctx).await
    }

    async fn close_won(
        &self,
        record_type: RecordType,
        id: &str,
        convert: bool,
        ctx: &RequestContext,
    ) -> Result<CloseWonOutcome, StoreError> {
        ops::close_won(self, record_type, id, convert, ctx).await
    }

    async fn close_lost(
        &self,
        record_type: RecordType,
        id: &str,
        ctx: &RequestContext,
    ) -> Result<RecordRef, StoreError> {
        ops::close_lost(self, record_type, id, ctx).await
    }

    async fn get(&self, record_type: RecordType, id: &str) -> Result<Option<RecordWithHistory>, StoreError> {
        read::get(self, record_type, id).await
    }

    async fn search(&self, id_number: &IdNumber, product: Option<&Product>) -> Result<SearchResult, StoreError> {
        read::search(self, id_number, product).await
    }

    /// Ready when the local store answers and the breaker is closed. The org itself is not called: a probe
    /// every few seconds would spend the daily API allowance.
    async fn ready(&self) -> Result<(), StoreError> {
        self.sidecar.sidecar_ready().await?;
        match self.client.breaker_open_for() {
            Some(retry_after) => Err(StoreError::Unavailable {
                retry_after,
                source: "the Salesforce circuit breaker is open after repeated failures".into(),
            }),
            None => Ok(()),
        }
    }
}

/// The reports, from the local store's audit: the org's records as this service made and changed them
/// (records made or changed by hand in the org are not in it).
#[async_trait]
impl Reports for SalesforceStore {
    async fn funnel(&self, period: &Period, group_by: GroupBy) -> Result<Rows<FunnelRow>, StoreError> {
        self.sidecar.audit_reports().funnel(period, group_by).await
    }
    async fn rejections(&self, period: &Period) -> Result<Rows<RejectionRow>, StoreError> {
        self.sidecar.audit_reports().rejections(period).await
    }
    async fn fold(&self) -> Result<u64, StoreError> {
        self.sidecar.audit_reports().fold().await
    }
    async fn handovers(&self, period: &Period) -> Result<Rows<HandoverRow>, StoreError> {
        self.sidecar.audit_reports().handovers(period).await
    }
    async fn stale(&self, query: &StaleQuery) -> Result<StalePage, StoreError> {
        self.sidecar.audit_reports().stale(query).await
    }
}

#[async_trait]
impl Idempotency for SalesforceStore {
    async fn claim(
        &self,
        key: &str,
        fingerprint: &str,
        holder: &str,
        lease: Duration,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        self.sidecar.claim(key, fingerprint, holder, lease, ttl).await
    }
    async fn renew(&self, key: &str, holder: &str, lease: Duration) -> Result<bool, StoreError> {
        self.sidecar.renew(key, holder, lease).await
    }
    async fn complete(&self, key: &str, holder: &str, response: &StoredResponse) -> Result<(), StoreError> {
        self.sidecar.complete(key, holder, response).await
    }
    async fn release(&self, key: &str, holder: &str) -> Result<(), StoreError> {
        self.sidecar.release(key, holder).await
    }
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.sidecar.purge_expired().await
    }
}
