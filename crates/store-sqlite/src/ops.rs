//! The lifecycle operations as the writer runs them: read the snapshot, ask the rules, execute the plan.

use lifecycle::{
    plan_close_lost, plan_close_won, plan_create, CloseLostPlan, CloseWonPlan, CreatePlan, CustomerType, OpenRecord,
    OwnerId, Product, Reason, RecordType, Snapshot, Status, Target,
};
use rusqlite::{params, OptionalExtension, Transaction};
use store::{events, CloseWonOutcome, CreateOutcome, CreateRequest, RecordRef, RequestContext, StoreError};
use time::OffsetDateTime;

use crate::outbox;
use crate::read::{error, format_time};
use crate::writer::Settings;

/// The query of a create's snapshot. ETB never reads or changes leads (SPEC §2.1), so it asks for the open
/// opportunity alone; both keep the literal open statuses of the partial unique index, so that index serves
/// them.
pub(crate) fn snapshot_sql(customer_type: CustomerType) -> &'static str {
    match customer_type {
        CustomerType::Ntb => {
            "SELECT id, record_type, owner_id, channel, product FROM records
             WHERE match_key = ?1 AND status IN ('New Lead', 'New Opportunity')
             ORDER BY seq DESC"
        }
        CustomerType::Etb => {
            "SELECT id, record_type, owner_id, channel, product FROM records
             WHERE match_key = ?1 AND status IN ('New Lead', 'New Opportunity') AND record_type = 'OPPORTUNITY'
             ORDER BY seq DESC"
        }
    }
}

/// Where a record came from, as the reports count it: its channel and product.
struct Origin {
    channel: String,
    product: String,
}

/// The open records a create for `customer_type` sees (ETB: the opportunity alone), and the origin of each.
fn snapshot(
    tx: &Transaction<'_>,
    key: &str,
    customer_type: CustomerType,
) -> Result<(Snapshot, Vec<Origin>), StoreError> {
    let mut stmt = tx.prepare_cached(snapshot_sql(customer_type)).map_err(error)?;
    let mut rows = stmt.query([key]).map_err(error)?;
    let (mut open, mut origins) = (Vec::new(), Vec::new());
    while let Some(r) = rows.next().map_err(error)? {
        let record_type: String = r.get(1).map_err(error)?;
        open.push(OpenRecord {
            id: r.get(0).map_err(error)?,
            record_type: RecordType::parse(&record_type).map_err(StoreError::internal)?,
            owner_id: OwnerId::from_stored(r.get(2).map_err(error)?),
        });
        origins.push(Origin { channel: r.get(3).map_err(error)?, product: r.get(4).map_err(error)? });
    }
    Ok((Snapshot { open }, origins))
}

fn history(
    tx: &Transaction<'_>,
    record_id: &str,
    from: Option<Status>,
    to: Status,
    at: &str,
    ctx: &RequestContext,
    reason: Option<&Reason>,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO history (record_id, from_status, to_status, at, request_id, channel, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            record_id,
            from.map(Status::as_str),
            to.as_str(),
            at,
            ctx.request_id,
            ctx.channel.as_str(),
            reason.map(Reason::as_str)
        ])
    })
    .map_err(error)?;
    Ok(())
}

/// Adds a close-lost change, made at `at`, of a record from `origin` to the rejections report's count for its
/// day, reason, channel and product (docs/reports.md). Every close-lost history row is counted here.
fn count_rejection(tx: &Transaction<'_>, at: &str, reason: Option<&Reason>, origin: &Origin) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO report_rejections (source, day, reason, channel, product, n)
         VALUES ('records', substr(?1, 1, 10), COALESCE(?2, ''), ?3, ?4, 1)
         ON CONFLICT DO UPDATE SET n = n + 1",
    )
    .and_then(|mut s| s.execute(params![at, reason.map(Reason::as_str), origin.channel, origin.product]))
    .map_err(error)?;
    Ok(())
}

/// Adds a hand-over, at `at`, of a record from `origin` from its owner to the owner of the record that replaced
/// it, to the hand-overs report's count for the day, the two owners, the channel and the product.
fn count_handover(
    tx: &Transaction<'_>,
    at: &str,
    from: &OwnerId,
    to: &OwnerId,
    origin: &Origin,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO report_handovers (source, day, from_owner, to_owner, channel, product, n)
         VALUES ('records', substr(?1, 1, 10), ?2, ?3, ?4, ?5, 1)
         ON CONFLICT DO UPDATE SET n = n + 1",
    )
    .and_then(|mut s| s.execute(params![at, from.as_str(), to.as_str(), origin.channel, origin.product]))
    .map_err(error)?;
    Ok(())
}

/// Moves an open record to a final status; `false` when it was no longer open (it cannot happen under the
/// single writer, but the condition keeps the update honest).
fn set_status(tx: &Transaction<'_>, id: &str, from: Status, to: Status, at: &str) -> Result<bool, StoreError> {
    let n = tx
        .prepare_cached("UPDATE records SET status = ?1, updated_at = ?2 WHERE id = ?3 AND status = ?4")
        .and_then(|mut s| s.execute(params![to.as_str(), at, id, from.as_str()]))
        .map_err(error)?;
    Ok(n == 1)
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub(crate) fn create(
    tx: &Transaction<'_>,
    request: &CreateRequest,
    ctx: &RequestContext,
    settings: &Settings,
    now: OffsetDateTime,
) -> Result<CreateOutcome, StoreError> {
    let key = request.match_key(settings.matching);
    let (snapshot, origins) = snapshot(tx, key.expose(), request.customer_type)?;
    let plan = plan_create(request.customer_type, &request.owner_id, &snapshot);
    let result = plan.result();
    match plan {
        CreatePlan::Existing { record_type, id } => Ok(CreateOutcome {
            result,
            record_type,
            status: record_type.open_status(),
            id,
            owner_id: request.owner_id.clone(),
            closed_record_ids: Vec::new(),
        }),
        CreatePlan::Create { record_type, close } => {
            let at = format_time(now);
            let open = record_type.open_status();
            let owner_changed = Reason::owner_changed();
            for id in &close {
                if !set_status(tx, id, open, Status::CloseLost, &at)? {
                    return Err(StoreError::internal(format!("record {id} changed under the writer")));
                }
                history(tx, id, Some(open), Status::CloseLost, &at, ctx, Some(&owner_changed))?;
                // The plan closes only records of the snapshot, each of the new record's type.
                let i = snapshot
                    .open
                    .iter()
                    .position(|r| r.id == *id)
                    .ok_or_else(|| StoreError::internal("closed a record it did not read"))?;
                count_rejection(tx, &at, Some(&owner_changed), &origins[i])?;
                count_handover(tx, &at, &snapshot.open[i].owner_id, &request.owner_id, &origins[i])?;
            }
            let id = new_id();
            let c = &request.customer;
            tx.prepare_cached(
                "INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number, cif,
                     full_name, phone, email, product, channel, journey_id, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?15)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    record_type.as_str(),
                    open.as_str(),
                    key.expose(),
                    request.owner_id.as_str(),
                    request.customer_type.as_str(),
                    c.id_number.expose(),
                    c.cif.as_ref().map(|v| v.expose()),
                    c.full_name.as_ref().map(|v| v.expose()),
                    c.phone.as_ref().map(|v| v.expose()),
                    c.email.as_ref().map(|v| v.expose()),
                    request.product.as_str(),
                    request.channel.as_str(),
                    request.journey_id.as_ref().map(|v| v.as_str()),
                    at,
                ])
            })
            .map_err(error)?;
            history(tx, &id, None, open, &at, ctx, ctx.reason.as_ref())?;
            let outcome = CreateOutcome {
                result,
                record_type,
                id,
                status: open,
                owner_id: request.owner_id.clone(),
                closed_record_ids: close,
            };
            if settings.events {
                let changes = events::on_create(request, ctx, &snapshot, &outcome);
                outbox::write(tx, key.expose(), &changes, ctx, now)?;
            }
            Ok(outcome)
        }
    }
}

/// The record a close names, and what its events and the reports need of it: its matching key, owner, channel
/// and product.
struct Found {
    target: Target,
    key: String,
    owner: OwnerId,
    origin: Origin,
}

impl Found {
    fn product(&self) -> Product {
        Product::from_stored(self.origin.product.clone())
    }
}

type TargetRow = (String, Option<String>, String, String, String, String);

fn target(tx: &Transaction<'_>, record_type: RecordType, id: &str) -> Result<Found, StoreError> {
    let (status, converted, key, owner, channel, product): TargetRow = tx
        .prepare_cached(
            "SELECT status, converted_opportunity_id, match_key, owner_id, channel, product FROM records
             WHERE id = ?1 AND record_type = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![id, record_type.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })
            .optional()
        })
        .map_err(error)?
        .ok_or(StoreError::NotFound)?;
    Ok(Found {
        target: Target {
            id: id.to_owned(),
            record_type,
            status: Status::parse(&status).map_err(StoreError::internal)?,
            converted_opportunity_id: converted,
        },
        key,
        owner: OwnerId::from_stored(owner),
        origin: Origin { channel, product },
    })
}

pub(crate) fn close_won(
    tx: &Transaction<'_>,
    record_type: RecordType,
    id: &str,
    convert: bool,
    ctx: &RequestContext,
    settings: &Settings,
    now: OffsetDateTime,
) -> Result<CloseWonOutcome, StoreError> {
    let found = target(tx, record_type, id)?;
    let mut t = found.target.clone();
    match plan_close_won(&t, convert) {
        CloseWonPlan::AlreadyWon => Ok(CloseWonOutcome::won(&t)),
        CloseWonPlan::Refuse => Err(StoreError::InvalidTransition { current: t.status }),
        CloseWonPlan::Win { convert } => {
            let at = format_time(now);
            set_status(tx, id, t.status, Status::CloseWon, &at)?;
            history(tx, id, Some(t.status), Status::CloseWon, &at, ctx, ctx.reason.as_ref())?;
            if convert {
                let opp = new_id();
                // The opportunity takes the lead's customer, product, owner, channel and journey.
                tx.prepare_cached(
                    "INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number, cif,
                         full_name, phone, email, product, channel, journey_id, converted_from_lead_id,
                         created_at, updated_at)
                     SELECT ?1, 'OPPORTUNITY', 'Close Won', match_key, owner_id, customer_type, id_number, cif,
                         full_name, phone, email, product, channel, journey_id, id, ?2, ?2
                     FROM records WHERE id = ?3",
                )
                .and_then(|mut s| s.execute(params![opp, at, id]))
                .map_err(error)?;
                tx.prepare_cached("UPDATE records SET converted_opportunity_id = ?1 WHERE id = ?2")
                    .and_then(|mut s| s.execute(params![opp, id]))
                    .map_err(error)?;
                history(tx, &opp, None, Status::CloseWon, &at, ctx, ctx.reason.as_ref())?;
                t.converted_opportunity_id = Some(opp);
            }
            let outcome = CloseWonOutcome::won(&t);
            if settings.events {
                let changes = events::on_close_won(&found.target, &found.owner, &found.product(), ctx, &outcome);
                outbox::write(tx, &found.key, &changes, ctx, now)?;
            }
            Ok(outcome)
        }
    }
}

pub(crate) fn close_lost(
    tx: &Transaction<'_>,
    record_type: RecordType,
    id: &str,
    ctx: &RequestContext,
    settings: &Settings,
    now: OffsetDateTime,
) -> Result<RecordRef, StoreError> {
    let found = target(tx, record_type, id)?;
    let t = &found.target;
    match plan_close_lost(t) {
        CloseLostPlan::AlreadyLost => {}
        CloseLostPlan::Refuse => return Err(StoreError::InvalidTransition { current: t.status }),
        CloseLostPlan::Lose => {
            let at = format_time(now);
            set_status(tx, id, t.status, Status::CloseLost, &at)?;
            history(tx, id, Some(t.status), Status::CloseLost, &at, ctx, ctx.reason.as_ref())?;
            count_rejection(tx, &at, ctx.reason.as_ref(), &found.origin)?;
            if settings.events {
                let changes = events::on_close_lost(t, &found.owner, &found.product(), ctx);
                outbox::write(tx, &found.key, &changes, ctx, now)?;
            }
        }
    }
    Ok(RecordRef { id: t.id.clone(), status: Status::CloseLost })
}
