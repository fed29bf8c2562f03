//! The decision tables of SPEC §2 as pure functions from (request, snapshot) to a plan.
//!
//! An adapter of the storage port, holding the lock or transaction of the matching key, reads the
//! snapshot these functions ask for, calls them, and executes the plan they return in the same atomic
//! step. The functions never fail: a refused transition is a plan too.

use crate::domain::{CustomerType, OwnerId, RecordType, Status};

/// A record's id as the backend assigned it: opaque to the rules.
pub type RecordId = String;

/// One open record of the matching key, as the create rules need to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRecord {
    pub id: RecordId,
    pub record_type: RecordType,
    pub owner_id: OwnerId,
}

/// What the create rules see: the open records of the matching key, **newest first** (the adapter's
/// query orders them). Closed records are not part of it: they never block a creation (SPEC §2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub open: Vec<OpenRecord>,
}

/// The `result` of a create, on the wire `CREATED`, `REPLACED`, `EXISTING`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CreateResult {
    Created,
    Replaced,
    Existing,
}

impl CreateResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Replaced => "REPLACED",
            Self::Existing => "EXISTING",
        }
    }
}

/// What a create does: the row of SPEC §2.1 it falls in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreatePlan {
    /// E1, N1, N3: return this record; change nothing.
    Existing { record_type: RecordType, id: RecordId },
    /// E2, E3, N2, N4, N5: set each of `close` to `Close Lost` (reason `OWNER_CHANGED`), then create one
    /// record of `record_type` in its open status, all in one atomic step.
    Create { record_type: RecordType, close: Vec<RecordId> },
}

impl CreatePlan {
    pub fn result(&self) -> CreateResult {
        match self {
            Self::Existing { .. } => CreateResult::Existing,
            Self::Create { close, .. } if close.is_empty() => CreateResult::Created,
            Self::Create { .. } => CreateResult::Replaced,
        }
    }
}

/// Of the open records of one type, the newest owned by `owner`, or else all of them (to close).
enum Found<'a> {
    SameOwner(&'a OpenRecord),
    OthersOnly(Vec<RecordId>),
    None,
}

fn find<'a>(snapshot: &'a Snapshot, record_type: RecordType, owner: &OwnerId) -> Found<'a> {
    let mut others = Vec::new();
    for r in snapshot.open.iter().filter(|r| r.record_type == record_type) {
        if &r.owner_id == owner {
            // Newest first, so the first match is the newest such (SPEC §6, reading 3).
            return Found::SameOwner(r);
        }
        others.push(r.id.clone());
    }
    if others.is_empty() {
        Found::None
    } else {
        Found::OthersOnly(others)
    }
}

/// SPEC §2.1: decide a create for a customer of `customer_type` and relationship manager `owner`.
///
/// Opportunities are checked first for both customer types; only NTB goes on to the leads, and only when
/// no opportunity is open (SPEC §6, reading 1). ETB never reads or changes leads.
pub fn plan_create(customer_type: CustomerType, owner: &OwnerId, snapshot: &Snapshot) -> CreatePlan {
    match find(snapshot, RecordType::Opportunity, owner) {
        Found::SameOwner(r) => {
            return CreatePlan::Existing { record_type: r.record_type, id: r.id.clone() };
        }
        Found::OthersOnly(close) => return CreatePlan::Create { record_type: RecordType::Opportunity, close },
        Found::None => {}
    }
    if customer_type == CustomerType::Etb {
        return CreatePlan::Create { record_type: RecordType::Opportunity, close: Vec::new() };
    }
    match find(snapshot, RecordType::Lead, owner) {
        Found::SameOwner(r) => CreatePlan::Existing { record_type: r.record_type, id: r.id.clone() },
        Found::OthersOnly(close) => CreatePlan::Create { record_type: RecordType::Lead, close },
        Found::None => CreatePlan::Create { record_type: RecordType::Lead, close: Vec::new() },
    }
}

/// The state of the record a close-won or close-lost names, as the rules need to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: RecordId,
    pub record_type: RecordType,
    pub status: Status,
    /// For a lead that was converted: the opportunity made from it.
    pub converted_opportunity_id: Option<RecordId>,
}

/// What a close-won does (SPEC §2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseWonPlan {
    /// Open → `Close Won`; for a lead with `convert`, also create a `Close Won` opportunity linked both ways.
    Win { convert: bool },
    /// Already `Close Won`: answer as the first time (with the conversion made then, if any), change nothing.
    AlreadyWon,
    /// `Close Lost` is final: 409 `INVALID_TRANSITION`.
    Refuse,
}

/// SPEC §2.2. `convert` is the request's `convertToOpportunity`; it only matters for an open lead.
pub fn plan_close_won(target: &Target, convert: bool) -> CloseWonPlan {
    match target.status {
        Status::NewLead | Status::NewOpportunity => {
            CloseWonPlan::Win { convert: convert && target.record_type == RecordType::Lead }
        }
        Status::CloseWon => CloseWonPlan::AlreadyWon,
        Status::CloseLost => CloseWonPlan::Refuse,
    }
}

/// What a close-lost does (SPEC §2.3, §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseLostPlan {
    /// Open → `Close Lost`.
    Lose,
    /// Already `Close Lost`: 200, unchanged.
    AlreadyLost,
    /// `Close Won` is final: 409 `INVALID_TRANSITION`.
    Refuse,
}

/// SPEC §2.3 and §2.4.
pub fn plan_close_lost(target: &Target) -> CloseLostPlan {
    match target.status {
        Status::NewLead | Status::NewOpportunity => CloseLostPlan::Lose,
        Status::CloseLost => CloseLostPlan::AlreadyLost,
        Status::CloseWon => CloseLostPlan::Refuse,
    }
}
