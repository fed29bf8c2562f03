//! Lifecycle events: what each status change tells the rest of the bank, built in one place from what the
//! lifecycle plan decided, so every adapter writes the very same events into its outbox.
//!
//! An adapter that has events switched on, inside the transaction that executes a plan:
//! 1. turns the plan into [`Change`]s with [`on_create`], [`on_close_won`] or [`on_close_lost`];
//! 2. takes the next sequence numbers of the matching key (its own table, under the key's lock);
//! 3. renders each change with [`Change::event`] and inserts the [`Event`] into its outbox.
//!
//! A relay (the `events` crate) reads the outbox through the [`Outbox`] port and publishes.
//!
//! No personal data reaches an event: the matching key (which holds the id number) is replaced by a random
//! id the adapter keeps beside it, and the customer's id number, CIF, name, phone and email are never read
//! here.

use std::time::Duration;

use async_trait::async_trait;
use lifecycle::{OwnerId, Product, Reason, RecordId, RecordType, Snapshot, Status, Target};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::{CloseWonOutcome, CreateOutcome, RequestContext, StoreError};

/// What happened to a record; the last part of an event's subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A record was created in its open status.
    Created,
    /// A record was set to `Close Won`.
    Won,
    /// An opportunity was created `Close Won` from a lead that was won with conversion.
    Converted,
    /// A record was set to `Close Lost` by a close-lost request.
    Lost,
    /// A record was set to `Close Lost` because a create for another relationship manager replaced it.
    HandedOver,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Won => "won",
            Self::Converted => "converted",
            Self::Lost => "lost",
            Self::HandedOver => "handed_over",
        }
    }
}

/// One status change, as the lifecycle decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: EventKind,
    pub record_type: RecordType,
    pub record_id: RecordId,
    pub from: Option<Status>,
    pub to: Status,
    /// The owner before the change: the replaced record's for a hand-over and for the record that replaced
    /// it; `None` for a plain creation.
    pub owner_before: Option<OwnerId>,
    pub owner_after: OwnerId,
    pub product: Product,
    pub reason: Option<Reason>,
    /// The other record of the change: the record that replaced a handed-over one, the lead an opportunity
    /// was converted from, the opportunity a won lead was converted into.
    pub related_record_id: Option<RecordId>,
}

/// The changes a create made: each replaced record handed over, then the new record. Empty for `EXISTING`.
/// `snapshot` is the one the plan was made on (it knows the replaced records' owners).
pub fn on_create(
    request: &crate::CreateRequest,
    ctx: &RequestContext,
    snapshot: &Snapshot,
    outcome: &CreateOutcome,
) -> Vec<Change> {
    if outcome.result == lifecycle::CreateResult::Existing {
        return Vec::new();
    }
    let owner_of = |id: &str| snapshot.open.iter().find(|r| r.id == id).map(|r| r.owner_id.clone());
    let open = outcome.record_type.open_status();
    let mut changes: Vec<Change> = outcome
        .closed_record_ids
        .iter()
        .map(|id| Change {
            kind: EventKind::HandedOver,
            record_type: outcome.record_type,
            record_id: id.clone(),
            from: Some(open),
            to: Status::CloseLost,
            owner_before: owner_of(id),
            owner_after: request.owner_id.clone(),
            product: request.product.clone(),
            reason: Some(Reason::owner_changed()),
            related_record_id: Some(outcome.id.clone()),
        })
        .collect();
    let replaced = outcome.closed_record_ids.first();
    changes.push(Change {
        kind: EventKind::Created,
        record_type: outcome.record_type,
        record_id: outcome.id.clone(),
        from: None,
        to: open,
        owner_before: replaced.and_then(|id| owner_of(id)),
        owner_after: request.owner_id.clone(),
        product: request.product.clone(),
        reason: ctx.reason.clone(),
        related_record_id: replaced.cloned(),
    });
    changes
}

/// The changes a close-won made: `before` is the target as read before the change, `owner` and `product`
/// its own. Empty unless the target was open.
pub fn on_close_won(
    before: &Target,
    owner: &OwnerId,
    product: &Product,
    ctx: &RequestContext,
    outcome: &CloseWonOutcome,
) -> Vec<Change> {
    if !before.status.is_open() {
        return Vec::new();
    }
    let converted = match before.record_type {
        RecordType::Lead => outcome.opportunity.as_ref().map(|o| o.id.clone()),
        RecordType::Opportunity => None,
    };
    // The converted opportunity is new: like a creation, it had no owner before (`from` is None too).
    let won = |kind, record_type, record_id: &RecordId, from: Option<Status>, related: Option<RecordId>| Change {
        kind,
        record_type,
        record_id: record_id.clone(),
        from,
        to: Status::CloseWon,
        owner_before: from.map(|_| owner.clone()),
        owner_after: owner.clone(),
        product: product.clone(),
        reason: ctx.reason.clone(),
        related_record_id: related,
    };
    let mut changes = vec![won(EventKind::Won, before.record_type, &before.id, Some(before.status), converted.clone())];
    if let Some(opp) = &converted {
        changes.push(won(EventKind::Converted, RecordType::Opportunity, opp, None, Some(before.id.clone())));
    }
    changes
}

/// The change a close-lost made: `before` is the target as read before it. Empty unless it was open.
pub fn on_close_lost(before: &Target, owner: &OwnerId, product: &Product, ctx: &RequestContext) -> Vec<Change> {
    if !before.status.is_open() {
        return Vec::new();
    }
    vec![Change {
        kind: EventKind::Lost,
        record_type: before.record_type,
        record_id: before.id.clone(),
        from: Some(before.status),
        to: Status::CloseLost,
        owner_before: Some(owner.clone()),
        owner_after: owner.clone(),
        product: product.clone(),
        reason: ctx.reason.clone(),
        related_record_id: None,
    }]
}

/// The changes a CRM backend made, handed to its local store with their audit ([`crate::Sidecar::record`]):
/// the org holds the records, so the local store's transaction that keeps the audit is the one place the
/// events can be written atomically with something. Rendered and numbered there, as the SQL adapters do.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The matching key the records belong to: the events are numbered among its own.
    pub key: String,
    pub changes: Vec<Change>,
    pub ctx: RequestContext,
    /// When the org made the change.
    pub at: OffsetDateTime,
}

/// An event as it waits in an outbox: its id (the `Nats-Msg-Id` that lets the broker drop a second copy),
/// its subject below the configured prefix (`lead.created`) and its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub subject: String,
    pub body: String,
}

fn record_type_subject(record_type: RecordType) -> &'static str {
    match record_type {
        RecordType::Lead => "lead",
        RecordType::Opportunity => "opportunity",
    }
}

impl Change {
    /// The event of this change. `key_id` is the opaque id of the record's matching key and `sequence` the
    /// number of this event among that key's (from 1, no gaps); `at` is when the change was made.
    pub fn event(&self, ctx: &RequestContext, at: OffsetDateTime, key_id: &str, sequence: i64) -> Event {
        let id = uuid::Uuid::now_v7().to_string();
        let subject = format!("{}.{}", record_type_subject(self.record_type), self.kind.as_str());
        let body = json!({
            "eventId": id,
            "type": subject,
            "recordType": self.record_type.as_str(),
            "recordId": self.record_id,
            "relatedRecordId": self.related_record_id,
            "fromStatus": self.from.map(Status::as_str),
            "toStatus": self.to.as_str(),
            "ownerBefore": self.owner_before.as_ref().map(OwnerId::as_str),
            "ownerAfter": self.owner_after.as_str(),
            "channel": ctx.channel.as_str(),
            "product": self.product.as_str(),
            "reason": self.reason.as_ref().map(Reason::as_str),
            "requestId": ctx.request_id,
            "occurredAt": at.format(&Rfc3339).unwrap_or_default(),
            "keyId": key_id,
            "sequence": sequence,
        });
        Event { id, subject, body: body.to_string() }
    }
}

/// A random id for a matching key seen for the first time: events name a customer's key by it, never by
/// the key itself (which holds the id number).
pub fn new_key_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An event read back from an outbox, oldest first by `position` (the outbox's own order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub position: i64,
    pub event: Event,
}

/// How far the outbox is behind: events not yet delivered, and how long the oldest has waited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Lag {
    pub count: u64,
    pub oldest_age: Duration,
}

/// An adapter's outbox, as the relay sees it. Shared by every replica of the service.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Takes or renews the relay's lease for `holder`: `true` when `holder` is now the one relay that may
    /// publish, until `lease` from now. Another holder takes it only once it ran out.
    async fn lease_relay(&self, holder: &str, lease: Duration) -> Result<bool, StoreError>;

    /// Up to `limit` undelivered events, oldest first.
    async fn pending(&self, limit: usize) -> Result<Vec<Pending>, StoreError>;

    /// Forgets delivered events (the broker acknowledged them).
    async fn delivered(&self, positions: &[i64]) -> Result<(), StoreError>;

    /// The outbox's lag.
    async fn lag(&self) -> Result<Lag, StoreError>;
}

/// Age of the oldest of `oldest` (a creation time), as of now; zero when there is none.
pub fn age(oldest: Option<OffsetDateTime>) -> Duration {
    oldest.map(|t| (OffsetDateTime::now_utc() - t).try_into().unwrap_or_default()).unwrap_or_default()
}

/// The events of `changes`, numbered from `first` on (the key's sequence numbers the adapter reserved).
pub fn render(changes: &[Change], ctx: &RequestContext, at: OffsetDateTime, key_id: &str, first: i64) -> Vec<Event> {
    changes.iter().zip(first..).map(|(c, n)| c.event(ctx, at, key_id, n)).collect()
}

/// A backend with an outbox: what the server hands the relay.
pub trait EventBackend: crate::Backend + Outbox {}

impl<T: crate::Backend + Outbox> EventBackend for T {}
