//! The write operations: under the matching key's lock in the local store, read what the rules need
//! (one call), ask the rules, execute the plan (one composite call, or a conversion), and keep the audit
//! and the idempotent answer in the local store.
//!
//! With events on, the local store also writes the change's lifecycle events to its outbox, in the
//! transaction that keeps the audit: built from the plan by the same `store::events` functions the SQL
//! adapters use, with owners named by RM code (the org knows them as users; the lookups are made before the
//! write, so a failing lookup changes nothing).
//!
//! A write whose answer was lost ([`SfError::may_have_applied`]) is read back before answering: if the
//! org shows the plan's effect the answer is success, if it shows nothing changed and the org had answered
//! (a 5xx of its own, [`SfError::org_is_done`]) the answer is 503 (nothing changed, verified), and anything
//! else is 504 `CRM_OUTCOME_UNKNOWN`: after a timeout the org may still be working on the write, and apply
//! it after the read-back. Never "nothing changed" when something may have.

use std::collections::HashSet;

use lifecycle::{
    plan_close_lost, plan_close_won, plan_create, CloseLostPlan, CloseWonPlan, CreatePlan, CustomerType, OpenRecord,
    OwnerId, Product, Reason, RecordType, Snapshot, Status, Target,
};
use reqwest::Method;
use serde_json::Value;
use store::events::{self, Change, EventKind, Outgoing};
use store::{
    Answer, AuditEntry, CloseWonOutcome, CreateOutcome, CreateRequest, HistoryEntry, KeyLock, Origin, RecordRef,
    RequestContext, StoreError, StoredResponse,
};
use time::OffsetDateTime;

use crate::client::{Body, Label, Repeat};
use crate::composite::Composite;
use crate::error::SfError;
use crate::records::{self, close_body, new_record, open_query};
use crate::soql::{full_id, literal, sobject};
use crate::{lock_times, owners, read, soap, SalesforceStore};

fn label(operation: &'static str, step: &'static str) -> Label {
    Label { operation, step }
}

/// What a create reads of its key: the open records (newest first) and the request owner's `User` id.
struct KeyRead {
    snapshot: Snapshot,
    owner: Option<String>,
}

impl KeyRead {
    fn open_ids(&self) -> HashSet<&str> {
        self.snapshot.open.iter().map(|r| r.id.as_str()).collect()
    }
}

/// One call: the open opportunities (and, for NTB, leads) of the key, and the owner lookup when the cache
/// does not know the RM code. ETB reads no leads (SPEC §2.1).
async fn read_key(s: &SalesforceStore, request: &CreateRequest) -> Result<KeyRead, StoreError> {
    let client = &s.client;
    let mut c = Composite::new(false);
    let mut types = vec![RecordType::Opportunity];
    if request.customer_type == CustomerType::Ntb {
        types.push(RecordType::Lead);
    }
    for t in &types {
        c.query(client, sobject(*t), &open_query(&s.config, *t, request, s.matching));
    }
    let cached = s.owners.user_for(request.owner_id.as_str());
    if cached.is_none() {
        c.query(client, "owner", &owners::lookup_query(&s.config.owner_user_field, request.owner_id.as_str()));
    }
    let parts = c.send(client, label("create", "read"), Repeat::Safe).await.map_err(|e| s.error(e))?;
    let mut open = Vec::new();
    for (t, part) in types.iter().zip(&parts) {
        let product = records::matched_product(request, s.matching);
        for r in part.records().map_err(|e| s.error(e))? {
            if !records::is_of(&s.config, &r, &request.customer.id_number, product) {
                continue;
            }
            let (Some(id), Some(owner)) = (records::id(&r), records::owner_user(&r)) else { continue };
            open.push(OpenRecord {
                id: id.to_owned(),
                record_type: *t,
                owner_id: OwnerId::from_stored(owner.to_owned()),
            });
        }
    }
    let owner = match cached {
        Some(user) => user,
        None => {
            let users = parts[types.len()].records().map_err(|e| s.error(e))?;
            let user = owners::active_user(&users);
            s.owners.remember(request.owner_id.as_str(), user.clone());
            user
        }
    };
    Ok(KeyRead { snapshot: Snapshot { open }, owner })
}

#[allow(clippy::too_many_arguments)]
fn audit(
    record_id: &str,
    record_type: RecordType,
    key: &str,
    from: Option<Status>,
    to: Status,
    at: OffsetDateTime,
    ctx: &RequestContext,
    reason: Option<Reason>,
) -> AuditEntry {
    AuditEntry {
        record_id: record_id.to_owned(),
        record_type,
        match_key: key.to_owned(),
        entry: HistoryEntry { from, to, at, request_id: ctx.request_id.clone(), channel: ctx.channel.clone(), reason },
        origin: None,
    }
}

/// Keeps the audit entries, their events and the idempotent answer in the local store, in one
/// transaction. The org's change already stands, so a local failure is retried, then logged; the answer
/// stays the org's truth (and the change has no audit and no event).
async fn keep(
    s: &SalesforceStore,
    entries: &[AuditEntry],
    events: Option<&Outgoing>,
    completion: Option<(&str, &str, StoredResponse)>,
) {
    if entries.is_empty() && events.is_none() && completion.is_none() {
        return;
    }
    for attempt in 1..=3u32 {
        match s.sidecar.record(entries, events, completion.clone()).await {
            Ok(()) => return,
            Err(e) if attempt == 3 => {
                let events = events.map_or(0, |o| o.changes.len());
                tracing::error!(error = %e, entries = entries.len(), events, "salesforce: the org changed but the local audit could not be written");
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50 * u64::from(attempt))).await,
        }
    }
}

/// The events of a change made at `at` on the matching key `key`, for the local store; `None` when events
/// are off or the change has none.
fn outgoing(
    s: &SalesforceStore,
    key: &str,
    ctx: &RequestContext,
    at: OffsetDateTime,
    changes: Vec<Change>,
) -> Option<Outgoing> {
    (s.config.events && !changes.is_empty()).then(|| Outgoing { key: key.to_owned(), changes, ctx: ctx.clone(), at })
}

/// The RM code of the org user `user`; a queue or a user without a code keeps the org's id, as reads show
/// it.
fn code_of(codes: &std::collections::HashMap<String, String>, user: &str) -> OwnerId {
    OwnerId::from_stored(codes.get(user).cloned().unwrap_or_else(|| user.to_owned()))
}

/// `snapshot` with its owners named by RM code, as the events of the records a create replaces name them.
async fn by_code(s: &SalesforceStore, snapshot: &Snapshot) -> Result<Snapshot, StoreError> {
    let codes = read::owner_codes(s, snapshot.open.iter().map(|r| r.owner_id.as_str()), "create").await?;
    let open = snapshot.open.iter().map(|r| OpenRecord { owner_id: code_of(&codes, r.owner_id.as_str()), ..r.clone() });
    Ok(Snapshot { open: open.collect() })
}

/// The locked record's owner (by RM code) and product, as its events name them; `None` when events are off.
async fn described(
    s: &SalesforceStore,
    l: &Locked,
    operation: &'static str,
) -> Result<Option<(OwnerId, Product)>, StoreError> {
    if !s.config.events {
        return Ok(None);
    }
    let user = records::owner_user(&l.record).unwrap_or_default();
    let codes = read::owner_codes(s, std::iter::once(user), operation).await?;
    let product = l.record.get(s.config.fields.product.as_str()).and_then(Value::as_str).unwrap_or_default();
    Ok(Some((code_of(&codes, user), Product::from_stored(product.to_owned()))))
}

/// After a write whose outcome is unknown (its answer was lost), the org may still be applying it. The key
/// stays locked a while longer (three call timeouts), so that no other request for the customer reads a
/// state the late write would change and plans on it; a second open record would follow.
fn linger<T>(result: Result<T, StoreError>, lock: KeyLock, s: &SalesforceStore) -> Result<T, StoreError> {
    if let Err(StoreError::OutcomeUnknown(_)) = &result {
        let hold = s.config.timeout * 3;
        tracing::warn!(hold_ms = hold.as_millis() as u64, "salesforce: holding the key after an unknown outcome");
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            drop(lock);
        });
    }
    result
}

pub(crate) async fn create(
    s: &SalesforceStore,
    request: &CreateRequest,
    ctx: &RequestContext,
) -> Result<CreateOutcome, StoreError> {
    let key = request.match_key(s.matching);
    let (lease, wait) = lock_times(&s.config);
    let lock = s.sidecar.lock_key(key.expose(), lease, wait).await?;
    let result = create_held(s, request, ctx, &key).await;
    linger(result, lock, s)
}

async fn create_held(
    s: &SalesforceStore,
    request: &CreateRequest,
    ctx: &RequestContext,
    key: &lifecycle::MatchKey,
) -> Result<CreateOutcome, StoreError> {
    let before = read_key(s, request).await?;
    let owner_user = before.owner.clone().ok_or(StoreError::UnknownOwner)?;
    let plan = plan_create(request.customer_type, &OwnerId::from_stored(owner_user.clone()), &before.snapshot);
    let result = plan.result();
    let (record_type, close) = match plan {
        CreatePlan::Existing { record_type, id } => {
            let outcome = CreateOutcome {
                result,
                record_type,
                id,
                status: record_type.open_status(),
                owner_id: request.owner_id.clone(),
                closed_record_ids: Vec::new(),
            };
            keep(s, &[], None, ctx.completion(Answer::Create(&outcome))).await;
            return Ok(outcome);
        }
        CreatePlan::Create { record_type, close } => (record_type, close),
    };
    // A hand-over's events name the replaced records' owners, which the org knows only as users.
    let named = if s.config.events && !close.is_empty() { Some(by_code(s, &before.snapshot).await?) } else { None };
    let client = &s.client;
    let today = OffsetDateTime::now_utc().date();
    let mut c = Composite::new(true);
    for (i, id) in close.iter().enumerate() {
        c.update(
            client,
            &format!("close{i}"),
            sobject(record_type),
            id,
            close_body(&s.config, record_type, Status::CloseLost),
        );
    }
    c.create(client, "created", sobject(record_type), new_record(&s.config, record_type, request, &owner_user, today));
    // The org's own creation time, in the same call, so the history says what the record says.
    let stamp = format!("SELECT CreatedDate FROM {} WHERE Id = '", sobject(record_type));
    c.query_with_reference(client, "stamp", &stamp, "created.id", "'");
    let (id, at) = match c.send(client, label("create", "write"), Repeat::Once).await {
        Ok(parts) => {
            let id = parts[parts.len() - 2]
                .body
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| StoreError::OutcomeUnknown("a create answered without an id".into()))?;
            let stamp = parts[parts.len() - 1].records().ok().and_then(|r| r.into_iter().next());
            let at = stamp
                .map(|r| records::parse_time(r.get("CreatedDate")))
                .filter(|t| *t != OffsetDateTime::UNIX_EPOCH)
                .unwrap_or_else(OffsetDateTime::now_utc);
            (id, at)
        }
        Err(e) if e.may_have_applied() => {
            let id = resolve_create(s, request, &before, record_type, &close, &owner_user, e).await?;
            (id, OffsetDateTime::now_utc())
        }
        Err(e) => {
            // A request value holding `@{` is read by the org as a reference it cannot resolve.
            let halted = e.org_error().filter(|o| o.code == "PROCESSING_HALTED");
            if let (Some(o), Some(field)) = (halted, records::value_read_as_reference(request)) {
                return Err(StoreError::Rejected {
                    code: o.code.clone(),
                    field: Some(field.to_owned()),
                    message: o.message.clone(),
                });
            }
            return Err(s.error(e));
        }
    };
    let open = record_type.open_status();
    let mut entries: Vec<AuditEntry> = close
        .iter()
        .map(|old| {
            audit(old, record_type, key.expose(), Some(open), Status::CloseLost, at, ctx, Some(Reason::owner_changed()))
        })
        .collect();
    let created = Origin::Created { owner_id: request.owner_id.clone(), product: request.product.clone() };
    entries.push(AuditEntry {
        origin: Some(created),
        ..audit(&id, record_type, key.expose(), None, open, at, ctx, ctx.reason.clone())
    });
    let outcome = CreateOutcome {
        result,
        record_type,
        id,
        status: open,
        owner_id: request.owner_id.clone(),
        closed_record_ids: close,
    };
    let changes = events::on_create(request, ctx, named.as_ref().unwrap_or(&before.snapshot), &outcome);
    let events = outgoing(s, key.expose(), ctx, at, changes);
    keep(s, &entries, events.as_ref(), ctx.completion(Answer::Create(&outcome))).await;
    Ok(outcome)
}

/// After a create whose answer was lost: the plan ran all or nothing, so either every record it closed is
/// closed and one new open record of ours is there, or nothing changed.
async fn resolve_create(
    s: &SalesforceStore,
    request: &CreateRequest,
    before: &KeyRead,
    record_type: RecordType,
    close: &[String],
    owner_user: &str,
    cause: SfError,
) -> Result<String, StoreError> {
    tracing::warn!(error = %cause, "salesforce: a create's answer was lost; reading back");
    let after = read_key(s, request).await.map_err(|_| StoreError::OutcomeUnknown(Box::new(cause.clone())))?;
    let old = before.open_ids();
    let new =
        after.snapshot.open.iter().find(|r| {
            r.record_type == record_type && r.owner_id.as_str() == owner_user && !old.contains(r.id.as_str())
        });
    let now = after.open_ids();
    match new {
        Some(r) if close.iter().all(|id| !now.contains(id.as_str())) => Ok(r.id.clone()),
        _ if now == old && cause.org_is_done() => {
            Err(StoreError::Unavailable { retry_after: std::time::Duration::from_secs(1), source: Box::new(cause) })
        }
        _ => Err(StoreError::OutcomeUnknown(Box::new(cause))),
    }
}

/// The record `id` names, read in full (one call). `None` when the org has no such record.
pub(crate) async fn read_one(
    s: &SalesforceStore,
    record_type: RecordType,
    id: &str,
    operation: &'static str,
) -> Result<Option<Value>, StoreError> {
    let soql = format!(
        "SELECT {} FROM {} WHERE Id = {}",
        records::select(&s.config, record_type),
        sobject(record_type),
        literal(id)
    );
    let path = s.client.data_path(&format!("/query?q={}", crate::soql::encode_query(&soql)));
    let answer = s
        .client
        .call(label(operation, "read"), Method::GET, &path, Body::None, Repeat::Safe)
        .await
        .map_err(|e| s.error(e))?;
    Ok(answer.get("records").and_then(Value::as_array).and_then(|r| r.first()).cloned())
}

/// A record to change, read under its key's lock.
struct Locked {
    record: Value,
    key: String,
    _lock: KeyLock,
}

impl Locked {
    fn target(&self, s: &SalesforceStore, record_type: RecordType) -> Target {
        Target {
            id: records::id(&self.record).unwrap_or_default().to_owned(),
            record_type,
            status: records::status(&s.config, record_type, &self.record),
            converted_opportunity_id: match record_type {
                RecordType::Lead => {
                    self.record.get("ConvertedOpportunityId").and_then(Value::as_str).map(str::to_owned)
                }
                RecordType::Opportunity => None,
            },
        }
    }
}

/// Takes the lock of the record's key and reads the record under it. The key of a record the service
/// wrote is in the local store, so the lock comes first and one read suffices. For a record made by hand,
/// the read comes first (to learn its key); if another replica wrote the record meanwhile, the local store
/// says so once the lock is ours, and the record is read again.
async fn locked(
    s: &SalesforceStore,
    record_type: RecordType,
    id: &str,
    operation: &'static str,
) -> Result<Locked, StoreError> {
    // The local store knows a record by its 18-character id: a 15-character one would miss its key, and
    // with it the re-read that catches another replica's change made before the lock was ours.
    let Some(id) = full_id(record_type, id) else {
        return Err(StoreError::NotFound);
    };
    let id = id.as_str();
    let (lease, wait) = lock_times(&s.config);
    if let Some(key) = s.sidecar.key_of(id).await? {
        let lock = s.sidecar.lock_key(&key, lease, wait).await?;
        let record = read_one(s, record_type, id, operation).await?.ok_or(StoreError::NotFound)?;
        return Ok(Locked { record, key, _lock: lock });
    }
    let record = read_one(s, record_type, id, operation).await?.ok_or(StoreError::NotFound)?;
    let key = records::match_key(&s.config, record_type, &record, s.matching);
    let lock = s.sidecar.lock_key(&key, lease, wait).await?;
    let record = match s.sidecar.key_of(id).await? {
        Some(_) => read_one(s, record_type, id, operation).await?.ok_or(StoreError::NotFound)?,
        None => record,
    };
    Ok(Locked { record, key, _lock: lock })
}

/// Moves one record to a final status (one call), reading back when the answer was lost.
async fn write_status(
    s: &SalesforceStore,
    record_type: RecordType,
    id: &str,
    from: Status,
    body: Value,
    to: Status,
    operation: &'static str,
) -> Result<(), StoreError> {
    let path = s.client.data_path(&format!("/sobjects/{}/{id}", sobject(record_type)));
    match s.client.call(label(operation, "write"), Method::PATCH, &path, Body::Json(&body), Repeat::Once).await {
        Ok(_) => Ok(()),
        Err(e) if e.may_have_applied() => {
            tracing::warn!(error = %e, "salesforce: a status change's answer was lost; reading back");
            let now = read_one(s, record_type, id, operation)
                .await
                .map_err(|_| StoreError::OutcomeUnknown(Box::new(e.clone())))?;
            match now.map(|r| records::status(&s.config, record_type, &r)) {
                Some(status) if status == to => Ok(()),
                Some(status) if status == from && e.org_is_done() => {
                    Err(StoreError::Unavailable { retry_after: std::time::Duration::from_secs(1), source: Box::new(e) })
                }
                _ => Err(StoreError::OutcomeUnknown(Box::new(e))),
            }
        }
        Err(e) => Err(s.error(e)),
    }
}

pub(crate) async fn close_lost(
    s: &SalesforceStore,
    record_type: RecordType,
    id: &str,
    ctx: &RequestContext,
) -> Result<RecordRef, StoreError> {
    let l = locked(s, record_type, id, "close_lost").await?;
    let result = close_lost_held(s, &l, record_type, ctx).await;
    linger(result, l._lock, s)
}

async fn close_lost_held(
    s: &SalesforceStore,
    l: &Locked,
    record_type: RecordType,
    ctx: &RequestContext,
) -> Result<RecordRef, StoreError> {
    let t = l.target(s, record_type);
    let answer = RecordRef { id: t.id.clone(), status: Status::CloseLost };
    let (entries, events) = match plan_close_lost(&t) {
        CloseLostPlan::Refuse => return Err(StoreError::InvalidTransition { current: t.status }),
        CloseLostPlan::AlreadyLost => (Vec::new(), None),
        CloseLostPlan::Lose => {
            let named = described(s, l, "close_lost").await?;
            let body = close_body(&s.config, record_type, Status::CloseLost);
            write_status(s, record_type, &t.id, t.status, body, Status::CloseLost, "close_lost").await?;
            let at = OffsetDateTime::now_utc();
            let changes = named.map(|(owner, product)| events::on_close_lost(&t, &owner, &product, ctx));
            let entry =
                audit(&t.id, record_type, &l.key, Some(t.status), Status::CloseLost, at, ctx, ctx.reason.clone());
            (vec![entry], outgoing(s, &l.key, ctx, at, changes.unwrap_or_default()))
        }
    };
    keep(s, &entries, events.as_ref(), ctx.completion(Answer::CloseLost(&answer))).await;
    Ok(answer)
}

pub(crate) async fn close_won(
    s: &SalesforceStore,
    record_type: RecordType,
    id: &str,
    convert: bool,
    ctx: &RequestContext,
) -> Result<CloseWonOutcome, StoreError> {
    let l = locked(s, record_type, id, "close_won").await?;
    let result = close_won_held(s, &l, record_type, convert, ctx).await;
    linger(result, l._lock, s)
}

async fn close_won_held(
    s: &SalesforceStore,
    l: &Locked,
    record_type: RecordType,
    convert: bool,
    ctx: &RequestContext,
) -> Result<CloseWonOutcome, StoreError> {
    let mut t = l.target(s, record_type);
    match plan_close_won(&t, convert) {
        CloseWonPlan::Refuse => return Err(StoreError::InvalidTransition { current: t.status }),
        CloseWonPlan::AlreadyWon => {
            if let Some(opp) = t.converted_opportunity_id.clone() {
                heal_conversion(s, l, &t, &opp, ctx).await?;
            }
        }
        CloseWonPlan::Win { .. } if record_type == RecordType::Opportunity => {
            let named = described(s, l, "close_won").await?;
            let body = close_body(&s.config, record_type, Status::CloseWon);
            write_status(s, record_type, &t.id, t.status, body, Status::CloseWon, "close_won").await?;
            let at = OffsetDateTime::now_utc();
            let entry =
                audit(&t.id, record_type, &l.key, Some(t.status), Status::CloseWon, at, ctx, ctx.reason.clone());
            let won = CloseWonOutcome::won(&Target { status: Status::CloseWon, ..t.clone() });
            let changes = named.map(|(owner, product)| events::on_close_won(&t, &owner, &product, ctx, &won));
            keep(s, &[entry], outgoing(s, &l.key, ctx, at, changes.unwrap_or_default()).as_ref(), None).await;
        }
        CloseWonPlan::Win { convert } => {
            let named = described(s, l, "close_won").await?;
            let opportunity = convert_lead(s, l, &t, convert).await?;
            let won = Target { status: Status::CloseWon, converted_opportunity_id: opportunity.clone(), ..t.clone() };
            let won = CloseWonOutcome::won(&won);
            let mut changes =
                named.map(|(owner, product)| events::on_close_won(&t, &owner, &product, ctx, &won)).unwrap_or_default();
            // The opportunity's `converted` goes with the opportunity's own audit, written once it is won.
            let converted = changes.split_off(changes.len().min(1));
            // The lead's change stands whatever happens next: keep it now, so that a retry after a failure
            // below finds the lead won and only finishes the opportunity.
            let at = OffsetDateTime::now_utc();
            let entry =
                audit(&t.id, record_type, &l.key, Some(t.status), Status::CloseWon, at, ctx, ctx.reason.clone());
            keep(s, &[entry], outgoing(s, &l.key, ctx, at, changes).as_ref(), None).await;
            if let Some(opp) = &opportunity {
                win_opportunity(s, l, opp, ctx, converted).await?;
            }
            t.converted_opportunity_id = opportunity;
        }
    }
    let outcome = CloseWonOutcome::won(&Target { status: Status::CloseWon, ..t });
    keep(s, &[], None, ctx.completion(Answer::CloseWon(&outcome))).await;
    Ok(outcome)
}

/// SOAP `convertLead` (one call): with `convert`, an opportunity is made; without, the lead is converted
/// with `doNotCreateOpportunity` (a lead is won in Salesforce only by conversion). Returns the
/// opportunity's id. A lost answer is resolved by reading the lead back.
async fn convert_lead(
    s: &SalesforceStore,
    l: &Locked,
    t: &Target,
    convert: bool,
) -> Result<Option<String>, StoreError> {
    let config = &s.config;
    let f = &config.fields;
    let text = |field: &str| l.record.get(field).and_then(Value::as_str).map(str::to_owned);
    let full_name = [text("FirstName"), text("LastName").filter(|n| n != records::NO_NAME)]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    let name = records::opportunity_name(
        &text(&f.product).unwrap_or_default(),
        (!full_name.is_empty()).then_some(full_name.as_str()),
        text(&f.journey_id).as_deref(),
    );
    let lead_id = t.id.clone();
    let status = config.statuses.lead_converted.clone();
    let opportunity_name = convert.then_some(name);
    let envelope = move |session: &str| {
        soap::convert_envelope(
            &soap::Convert {
                lead_id: &lead_id,
                converted_status: &status,
                opportunity_name: opportunity_name.as_deref(),
            },
            session,
        )
    };
    let path = format!("/services/Soap/u/{}", config.api_version);
    let answer =
        s.client.call(label("close_won", "convert"), Method::POST, &path, Body::Soap(&envelope), Repeat::Once).await;
    let lost = match answer {
        Ok(Value::String(xml)) => match soap::parse_converted(&xml) {
            Some(c) if c.success => return Ok(c.opportunity_id),
            Some(c) => return Err(s.error(SfError::Api { status: 200, errors: c.errors })),
            None => SfError::Unexpected { status: 200, detail: "a convertLead answer without a result".into() },
        },
        Ok(_) => SfError::Unexpected { status: 200, detail: "a convertLead answer that is not XML".into() },
        Err(e) if e.may_have_applied() => e,
        Err(e) => return Err(s.error(e)),
    };
    tracing::warn!(error = %lost, "salesforce: a conversion's answer was lost; reading the lead back");
    let now = read_one(s, RecordType::Lead, &t.id, "close_won")
        .await
        .map_err(|_| StoreError::OutcomeUnknown(Box::new(lost.clone())))?;
    match now {
        Some(lead) if records::status(config, RecordType::Lead, &lead) == Status::CloseWon => {
            Ok(lead.get("ConvertedOpportunityId").and_then(Value::as_str).map(str::to_owned))
        }
        Some(lead) if records::status(config, RecordType::Lead, &lead) == t.status && lost.org_is_done() => {
            Err(StoreError::Unavailable { retry_after: std::time::Duration::from_secs(1), source: Box::new(lost) })
        }
        _ => Err(StoreError::OutcomeUnknown(Box::new(lost))),
    }
}

/// The second step of a conversion (one call): the new opportunity at the won stage, with our fields.
/// `converted` is its event (empty when events are off).
async fn win_opportunity(
    s: &SalesforceStore,
    l: &Locked,
    opp: &str,
    ctx: &RequestContext,
    converted: Vec<Change>,
) -> Result<(), StoreError> {
    let body = records::won_conversion(&s.config, &l.record, OffsetDateTime::now_utc().date());
    write_status(s, RecordType::Opportunity, opp, Status::NewOpportunity, body, Status::CloseWon, "close_won").await?;
    let at = OffsetDateTime::now_utc();
    let entry = AuditEntry {
        origin: records::id(&l.record).map(|lead| Origin::ConvertedFrom(lead.to_owned())),
        ..audit(opp, RecordType::Opportunity, &l.key, None, Status::CloseWon, at, ctx, ctx.reason.clone())
    };
    keep(s, &[entry], outgoing(s, &l.key, ctx, at, converted).as_ref(), None).await;
    Ok(())
}

/// A converted lead whose opportunity the service never saw won: a conversion cut short after
/// `convertLead` (the process died, or the update failed), or one made by hand. Finish it, unless the
/// opportunity was closed meanwhile. `lead` is the converted lead.
async fn heal_conversion(
    s: &SalesforceStore,
    l: &Locked,
    lead: &Target,
    opp: &str,
    ctx: &RequestContext,
) -> Result<(), StoreError> {
    if s.sidecar.history(opp).await?.iter().any(|h| h.to == Status::CloseWon) {
        return Ok(());
    }
    match read_one(s, RecordType::Opportunity, opp, "close_won").await? {
        Some(o) if records::status(&s.config, RecordType::Opportunity, &o) == Status::NewOpportunity => {
            tracing::info!("salesforce: finishing a conversion left half done");
            // The lead's `won` was kept with its conversion; the `converted` event still owed is the one
            // the conversion of the open lead makes, and it goes with the opportunity's audit, as always.
            let converted = match described(s, l, "close_won").await? {
                Some((owner, product)) => {
                    let open = Target { status: RecordType::Lead.open_status(), ..lead.clone() };
                    let won = CloseWonOutcome::won(lead);
                    let changes = events::on_close_won(&open, &owner, &product, ctx, &won);
                    changes.into_iter().filter(|c| c.kind == EventKind::Converted).collect()
                }
                None => Vec::new(),
            };
            win_opportunity(s, l, opp, ctx, converted).await
        }
        _ => Ok(()),
    }
}
