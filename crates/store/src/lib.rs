//! The storage port: what the HTTP layer asks of a backend, and what every backend (embedded SQLite,
//! PostgreSQL, Salesforce) implements.
//!
//! An adapter owns atomicity: for each operation it takes the lock or transaction of the matching key,
//! reads the snapshot the lifecycle rules ask for, calls [`lifecycle::plan_create`] (or its close
//! siblings) and executes the returned plan before it lets go. No adapter re-implements a rule.
//!
//! The [`contract`] module (feature `contract`) is the one behaviour suite every adapter's tests run.

use std::time::Duration;

use async_trait::async_trait;
use lifecycle::{
    Channel, Cif, CreateResult, CustomerType, Email, FullName, IdNumber, JourneyId, OwnerId, Phone, Product, Reason,
    RecordId, RecordType, Status,
};
use time::OffsetDateTime;

pub use claim::{decide_claim, ClaimDecision, KeptKey};
pub use lifecycle::CreateRequest;

mod claim;

#[cfg(feature = "contract")]
pub mod contract;
#[cfg(feature = "contract")]
pub mod contract_reports;
pub mod events;
#[cfg(feature = "contract")]
pub mod outbox_contract;
pub mod reports;

pub use reports::Reports;

/// Who asked, for the history of every status change (SPEC §1), and the `Idempotency-Key` the request
/// holds, if any: the store records the answer with the operation itself, in one transaction, so a failure
/// between the two cannot let a retry run the operation again.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub channel: Channel,
    pub reason: Option<Reason>,
    pub idempotency: Option<Ticket>,
}

impl RequestContext {
    pub fn new(request_id: impl Into<String>, channel: Channel, reason: Option<Reason>) -> Self {
        Self { request_id: request_id.into(), channel, reason, idempotency: None }
    }

    /// The key, the claim's holder token and the response to keep for this request's `Idempotency-Key`,
    /// rendered from `answer`; `None` without a key.
    pub fn completion(&self, answer: Answer<'_>) -> Option<(&str, &str, StoredResponse)> {
        self.idempotency.as_ref().map(|t| (t.key.as_str(), t.holder.as_str(), (t.render)(answer)))
    }
}

/// A successful operation's answer, as the HTTP layer renders it into the response an `Idempotency-Key`
/// replays.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    Create(&'a CreateOutcome),
    CloseWon(&'a CloseWonOutcome),
    CloseLost(&'a RecordRef),
}

/// Renders an [`Answer`] into the exact bytes the HTTP layer sends for it.
pub type Render = std::sync::Arc<dyn Fn(Answer<'_>) -> StoredResponse + Send + Sync>;

/// A claimed `Idempotency-Key` (see [`Idempotency::claim`]) and how to render the answer to keep for it.
#[derive(Clone)]
pub struct Ticket {
    pub key: String,
    /// The token the claim was taken with: only this holder's answer is kept, so a run whose claim was taken
    /// over (its lease ran out) cannot overwrite the answer of the run that took it.
    pub holder: String,
    pub render: Render,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("key", &self.key).finish_non_exhaustive()
    }
}

/// The answer to a create (SPEC §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOutcome {
    pub result: CreateResult,
    pub record_type: RecordType,
    pub id: RecordId,
    pub status: Status,
    pub owner_id: OwnerId,
    /// What this call set to `Close Lost`; empty unless `REPLACED`.
    pub closed_record_ids: Vec<RecordId>,
}

/// A record's id and status, as the close operations answer them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef {
    pub id: RecordId,
    pub status: Status,
}

/// The answer to a close-won (SPEC §2.2): the lead (if the target was one) and the opportunity (the target,
/// or the one converted from the lead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseWonOutcome {
    pub lead: Option<RecordRef>,
    pub opportunity: Option<RecordRef>,
}

impl CloseWonOutcome {
    /// The answer for `target` once it is `Close Won`: a lead with the opportunity converted from it (if
    /// any), or the opportunity alone. The same whether it was won now or before (SPEC §2.2).
    pub fn won(target: &lifecycle::Target) -> Self {
        let me = Some(RecordRef { id: target.id.clone(), status: Status::CloseWon });
        match target.record_type {
            RecordType::Lead => Self {
                lead: me,
                opportunity: target
                    .converted_opportunity_id
                    .clone()
                    .map(|id| RecordRef { id, status: Status::CloseWon }),
            },
            RecordType::Opportunity => Self { lead: None, opportunity: me },
        }
    }
}

/// One record with every field of SPEC §1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: RecordId,
    pub record_type: RecordType,
    pub status: Status,
    pub owner_id: OwnerId,
    pub customer_type: CustomerType,
    pub id_number: IdNumber,
    pub cif: Option<Cif>,
    pub full_name: Option<FullName>,
    pub phone: Option<Phone>,
    pub email: Option<Email>,
    pub product: Product,
    pub channel: Channel,
    pub journey_id: Option<JourneyId>,
    pub converted_opportunity_id: Option<RecordId>,
    pub converted_from_lead_id: Option<RecordId>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// One status change (SPEC §1). `from` is `None` at creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub from: Option<Status>,
    pub to: Status,
    pub at: OffsetDateTime,
    pub request_id: String,
    pub channel: Channel,
    pub reason: Option<Reason>,
}

/// A record and its history, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordWithHistory {
    pub record: Record,
    pub history: Vec<HistoryEntry>,
}

/// Every record of one customer (and product), newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchResult {
    pub leads: Vec<Record>,
    pub opportunities: Vec<Record>,
}

/// How an operation can fail. Rejections the lifecycle makes are variants too, so the HTTP layer maps
/// them in one place.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No record of that type with that id. HTTP 404 `NOT_FOUND`.
    #[error("no such record")]
    NotFound,
    /// The lifecycle forbids the change (a final record). HTTP 409 `INVALID_TRANSITION`.
    #[error("the record is {} and cannot change", .current.as_str())]
    InvalidTransition { current: Status },
    /// The backend does not know this relationship manager's code. HTTP 422 naming `ownerId`.
    #[error("unknown owner")]
    UnknownOwner,
    /// The CRM refused the request's data (a validation rule, a duplicate rule, a restricted picklist value
    /// the request chose); nothing was changed. HTTP 422 `CRM_REJECTED` naming the CRM's `code`.
    #[error("the CRM rejected the request: {code}")]
    Rejected { code: String, field: Option<String>, message: String },
    /// The CRM refused because of this service's own configuration (a field or picklist value the org lacks,
    /// missing permissions); nothing was changed. HTTP 502 `CRM_ERROR`; the details go to the log.
    #[error("the CRM refused the service's configuration")]
    Misconfigured(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A write was sent and its outcome could not be established, even by reading back: it may or may not
    /// have taken effect. HTTP 504 `CRM_OUTCOME_UNKNOWN`; a retry with the same `Idempotency-Key` is safe.
    #[error("the outcome of a write is unknown")]
    OutcomeUnknown(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend is down, overloaded or rate-limited; nothing was changed. HTTP 503 `BACKEND_UNAVAILABLE`
    /// with `Retry-After`.
    #[error("backend unavailable")]
    Unavailable {
        retry_after: Duration,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bug or corrupt data; the cause goes to the log, never to the client. HTTP 500 `INTERNAL`.
    #[error("internal store error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(e.into())
    }
    pub fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Unavailable { retry_after: Duration::from_secs(1), source: e.into() }
    }
}

/// The storage port. Every write is atomic per matching key and durable once it returns `Ok`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// SPEC §2.1: decide with [`lifecycle::plan_create`] and execute, atomically for the request's key.
    async fn create(&self, request: &CreateRequest, ctx: &RequestContext) -> Result<CreateOutcome, StoreError>;

    /// SPEC §2.2: `Close Won`, converting a lead when `convert` is true.
    async fn close_won(
        &self,
        record_type: RecordType,
        id: &str,
        convert: bool,
        ctx: &RequestContext,
    ) -> Result<CloseWonOutcome, StoreError>;

    /// SPEC §2.3 / §2.4: `Close Lost`. Returns the record's status afterwards.
    async fn close_lost(
        &self,
        record_type: RecordType,
        id: &str,
        ctx: &RequestContext,
    ) -> Result<RecordRef, StoreError>;

    /// SPEC §3: one record with its history, `None` when unknown.
    async fn get(&self, record_type: RecordType, id: &str) -> Result<Option<RecordWithHistory>, StoreError>;

    /// SPEC §3: every record of a customer (and product), newest first.
    async fn search(&self, id_number: &IdNumber, product: Option<&Product>) -> Result<SearchResult, StoreError>;

    /// Whether the backend answers, for `/health/ready`.
    async fn ready(&self) -> Result<(), StoreError>;
}

/// A response kept for an `Idempotency-Key`, replayed byte for byte (SPEC §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

/// What a request carrying an `Idempotency-Key` may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is now this request's (new, expired, or abandoned by a crashed holder): run it.
    Proceed,
    /// The same request already ran: answer with its response, change nothing.
    Replay(StoredResponse),
    /// The same request is running right now (here or on another replica): 409 `IDEMPOTENCY_KEY_IN_USE`.
    InUse,
    /// The key was used for a different request: 422 `IDEMPOTENCY_KEY_REUSED`.
    Mismatch,
}

/// Persisted idempotency keys, shared by every replica. Each call is atomic.
///
/// A key is claimed with a lease before the operation runs and completed with its response afterwards.
/// Each claim is taken with a `holder` token (unique per run); the running request renews its lease while
/// it is alive ([`Idempotency::renew`]), so however long it waits (for a busy customer, for the CRM) no
/// retry takes the key over. If the holder dies, the lease runs out and a retry takes the key over with its
/// own token and runs the operation again, which is safe: every operation of SPEC §2 is idempotent in
/// effect (a repeated create answers `EXISTING`, a repeated close answers as the first time). Only the
/// current holder completes or releases a claim, so a stale run never overwrites the answer of the one
/// that took over.
#[async_trait]
pub trait Idempotency: Send + Sync + 'static {
    /// Claims `key` for a request with `fingerprint`, as `holder`; a running claim is held for `lease`, a
    /// completed one is kept for `ttl` from the claim.
    async fn claim(
        &self,
        key: &str,
        fingerprint: &str,
        holder: &str,
        lease: Duration,
        ttl: Duration,
    ) -> Result<Claim, StoreError>;

    /// Extends the lease of `holder`'s running claim on `key` to `lease` from now. `false` when the claim is
    /// no longer `holder`'s (completed, released, or taken over after its lease ran out).
    async fn renew(&self, key: &str, holder: &str, lease: Duration) -> Result<bool, StoreError>;

    /// Stores the response of the request that holds `key`: only a running claim taken by `holder` is
    /// completed, so a response already kept (by the operation itself, through
    /// [`RequestContext::idempotency`]) is never overwritten, nor is a claim another run took over.
    async fn complete(&self, key: &str, holder: &str, response: &StoredResponse) -> Result<(), StoreError>;

    /// Gives up `holder`'s claim without a response (the request failed in a way worth retrying).
    async fn release(&self, key: &str, holder: &str) -> Result<(), StoreError>;

    /// Deletes expired keys; returns how many.
    async fn purge_expired(&self) -> Result<u64, StoreError>;
}

/// A complete backend: the lifecycle store, its idempotency keys and its reports, in one place so a key's
/// response and the records it changed live and fail together.
pub trait Backend: Store + Idempotency + Reports {}

impl<T: Store + Idempotency + Reports> Backend for T {}

/// One history entry as a CRM backend keeps it beside the CRM: the record it belongs to and its matching key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub record_id: RecordId,
    pub record_type: RecordType,
    /// The matching key the record belongs to ([`lifecycle::MatchKey::expose`]).
    pub match_key: String,
    pub entry: HistoryEntry,
    /// On the entry that creates a record: where its owner and product come from, for the reports.
    pub origin: Option<Origin>,
}

/// What the entry creating a record tells the reports about it (a CRM's records live in the CRM, so the
/// audit keeps the few facts the reports group by).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Made by a create: its owner and product (its channel is the entry's).
    Created { owner_id: OwnerId, product: Product },
    /// Made by converting this lead: it takes the lead's owner, product and channel.
    ConvertedFrom(RecordId),
}

/// An exclusive hold on one matching key, across every replica that shares the local store. Released when
/// dropped; a holder that dies loses it when its lease ends (SQLite) or its session closes (PostgreSQL).
pub struct KeyLock {
    // In a mutex so the hold is `Sync` (it lives across awaits) whatever the closure captures.
    release: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl KeyLock {
    /// A hold that runs `release` when dropped (the closure must not block: spawn what needs I/O).
    pub fn new(release: impl FnOnce() + Send + 'static) -> Self {
        Self { release: std::sync::Mutex::new(Some(Box::new(release))) }
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        let release = self.release.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(release) = release {
            release();
        }
    }
}

impl std::fmt::Debug for KeyLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyLock")
    }
}

/// What a CRM backend (Salesforce) keeps in a local store beside the CRM, for what the CRM cannot hold:
/// idempotency keys, the service's own audit history, and the per-key locks that serialize the replicas.
/// The embedded SQLite and the PostgreSQL adapters implement it next to [`Store`].
#[async_trait]
pub trait Sidecar: Idempotency {
    /// Takes the exclusive hold on `key`, waiting at most `wait` for another holder (then `Unavailable`).
    /// `lease` bounds how long a holder that died keeps others out.
    async fn lock_key(&self, key: &str, lease: Duration, wait: Duration) -> Result<KeyLock, StoreError>;

    /// Appends `entries`, writes the lifecycle events of `events` to the outbox (the caller hands them over
    /// only when events are on) and, when given, completes an idempotency key (key, holder, response: see
    /// [`RequestContext::completion`]) with its response, all in one transaction.
    async fn record(
        &self,
        entries: &[AuditEntry],
        events: Option<&events::Outgoing>,
        completion: Option<(&str, &str, StoredResponse)>,
    ) -> Result<(), StoreError>;

    /// The history of `record_id`, oldest first (empty for a record the service never changed).
    async fn history(&self, record_id: &str) -> Result<Vec<HistoryEntry>, StoreError>;

    /// The matching key of a record the service has written, if any.
    async fn key_of(&self, record_id: &str) -> Result<Option<String>, StoreError>;

    /// Whether the local store answers.
    async fn sidecar_ready(&self) -> Result<(), StoreError>;

    /// The reports, computed from the audit (the CRM's records as this service made and changed them).
    fn audit_reports(&self) -> std::sync::Arc<dyn Reports>;
}
