//! The write operations: one transaction each, under the advisory lock of the matching key.
//!
//! When the request holds an `Idempotency-Key`, its answer is recorded in the same transaction as the
//! changes (a failure between the two would let a retry run the operation again). An answer that changed
//! nothing (`EXISTING`, already won or lost) is still one to keep, so then the transaction commits that
//! one cheap write instead of rolling back.

use std::future::Future;

use lifecycle::{
    plan_close_lost, plan_close_won, plan_create, CloseLostPlan, CloseWonPlan, CreatePlan, CustomerType, Matching,
    OpenRecord, OwnerId, Product, Reason, RecordType, Snapshot, Status, Target,
};
use sqlx::{PgPool, Postgres, Transaction};
use store::{events, Answer, CloseWonOutcome, CreateOutcome, CreateRequest, RecordRef, RequestContext, StoreError};
use time::OffsetDateTime;

use crate::idempotency::answer;
use crate::outbox;
use crate::{error, retryable};

/// A step that failed either for a reason to report, or on a conflict worth running it again for.
pub(crate) enum Failure {
    Report(StoreError),
    Retry(sqlx::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        if retryable(&e) {
            Failure::Retry(e)
        } else {
            Failure::Report(error(e))
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Report(e)
    }
}

const ATTEMPTS: usize = 5;

/// Runs a transactional step, again on a conflict (a rollback leaves nothing behind, so this is safe).
pub(crate) async fn retrying<T, F, Fut>(mut step: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut last = None;
    for attempt in 1..=ATTEMPTS {
        match step().await {
            Ok(v) => return Ok(v),
            Err(Failure::Report(e)) => return Err(e),
            Err(Failure::Retry(e)) => {
                tracing::debug!(attempt, error = %e, "postgres: conflict, running the step again");
                last = Some(e);
            }
        }
    }
    Err(last.map(error).unwrap_or_else(|| StoreError::internal("no attempt made")))
}

type Tx = Transaction<'static, Postgres>;

/// Takes the key's lock and returns the time once it is held: every write of the step is stamped with it,
/// so the history of a key is in the order its steps really ran (`now()` would be the transaction's start,
/// before the wait).
async fn lock_key(tx: &mut Tx, key: &str) -> Result<OffsetDateTime, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT clock_timestamp() FROM (SELECT pg_advisory_xact_lock(hashtextextended($1, 0))) AS locked",
    )
    .bind(key)
    .fetch_one(&mut **tx)
    .await
}

async fn history(
    tx: &mut Tx,
    at: OffsetDateTime,
    record_id: &str,
    from: Option<Status>,
    to: Status,
    ctx: &RequestContext,
    reason: Option<&Reason>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO history (record_id, from_status, to_status, at, request_id, channel, reason)
         VALUES ($1, $2, $3, $7, $4, $5, $6)",
    )
    .bind(record_id)
    .bind(from.map(Status::as_str))
    .bind(to.as_str())
    .bind(&ctx.request_id)
    .bind(ctx.channel.as_str())
    .bind(reason.map(Reason::as_str))
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn set_status(tx: &mut Tx, at: OffsetDateTime, id: &str, from: Status, to: Status) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE records SET status = $1, updated_at = $4 WHERE id = $2 AND status = $3")
        .bind(to.as_str())
        .bind(id)
        .bind(from.as_str())
        .bind(at)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Ends a step that changed nothing. Without an idempotency key there is nothing to keep: roll back, which
/// spares a commit's fsync. With one, its answer is recorded and committed.
async fn finish_unchanged(mut tx: Tx, ctx: &RequestContext, outcome: Answer<'_>) -> Result<(), sqlx::Error> {
    if ctx.idempotency.is_some() {
        answer(&mut tx, ctx, outcome).await?;
        tx.commit().await
    } else {
        tx.rollback().await
    }
}

/// Ends a step that changed records: records the request's answer beside the changes and commits both.
async fn finish(mut tx: Tx, ctx: &RequestContext, outcome: Answer<'_>) -> Result<(), sqlx::Error> {
    answer(&mut tx, ctx, outcome).await?;
    tx.commit().await
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub(crate) async fn create(
    pool: &PgPool,
    request: &CreateRequest,
    ctx: &RequestContext,
    matching: Matching,
    with_events: bool,
) -> Result<CreateOutcome, Failure> {
    let key = request.match_key(matching);
    let mut tx = pool.begin().await?;
    let at = lock_key(&mut tx, key.expose()).await?;
    // ETB never reads or changes leads (SPEC §2.1): its snapshot is the open opportunity alone. Both queries
    // keep the literal open statuses of the partial unique index, so that index serves them.
    let sql = match request.customer_type {
        CustomerType::Ntb => {
            "SELECT id, record_type, owner_id FROM records
             WHERE match_key = $1 AND status IN ('New Lead', 'New Opportunity')
             ORDER BY seq DESC"
        }
        CustomerType::Etb => {
            "SELECT id, record_type, owner_id FROM records
             WHERE match_key = $1 AND status IN ('New Lead', 'New Opportunity') AND record_type = 'OPPORTUNITY'
             ORDER BY seq DESC"
        }
    };
    let rows: Vec<(String, String, String)> = sqlx::query_as(sql).bind(key.expose()).fetch_all(&mut *tx).await?;
    let mut open = Vec::with_capacity(rows.len());
    for (id, record_type, owner) in rows {
        open.push(OpenRecord {
            id,
            record_type: RecordType::parse(&record_type).map_err(StoreError::internal)?,
            owner_id: OwnerId::from_stored(owner),
        });
    }
    let snapshot = Snapshot { open };
    let plan = plan_create(request.customer_type, &request.owner_id, &snapshot);
    let result = plan.result();
    let (record_type, close) = match plan {
        CreatePlan::Existing { record_type, id } => {
            let outcome = CreateOutcome {
                result,
                record_type,
                status: record_type.open_status(),
                id,
                owner_id: request.owner_id.clone(),
                closed_record_ids: Vec::new(),
            };
            finish_unchanged(tx, ctx, Answer::Create(&outcome)).await?;
            return Ok(outcome);
        }
        CreatePlan::Create { record_type, close } => (record_type, close),
    };
    let open = record_type.open_status();
    let owner_changed = Reason::owner_changed();
    for id in &close {
        if !set_status(&mut tx, at, id, open, Status::CloseLost).await? {
            return Err(StoreError::internal(format!("record {id} changed under the key lock")).into());
        }
        history(&mut tx, at, id, Some(open), Status::CloseLost, ctx, Some(&owner_changed)).await?;
    }
    let id = new_id();
    let c = &request.customer;
    sqlx::query(
        "INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number, cif,
             full_name, phone, email, product, channel, journey_id, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15)",
    )
    .bind(&id)
    .bind(record_type.as_str())
    .bind(open.as_str())
    .bind(key.expose())
    .bind(request.owner_id.as_str())
    .bind(request.customer_type.as_str())
    .bind(c.id_number.expose())
    .bind(c.cif.as_ref().map(|v| v.expose()))
    .bind(c.full_name.as_ref().map(|v| v.expose()))
    .bind(c.phone.as_ref().map(|v| v.expose()))
    .bind(c.email.as_ref().map(|v| v.expose()))
    .bind(request.product.as_str())
    .bind(request.channel.as_str())
    .bind(request.journey_id.as_ref().map(|v| v.as_str()))
    .bind(at)
    .execute(&mut *tx)
    .await?;
    history(&mut tx, at, &id, None, open, ctx, ctx.reason.as_ref()).await?;
    let outcome = CreateOutcome {
        result,
        record_type,
        id,
        status: open,
        owner_id: request.owner_id.clone(),
        closed_record_ids: close,
    };
    if with_events {
        let changes = events::on_create(request, ctx, &snapshot, &outcome);
        outbox::write(&mut tx, key.expose(), &changes, ctx, at).await?;
    }
    finish(tx, ctx, Answer::Create(&outcome)).await?;
    Ok(outcome)
}

/// Locks the key of the record `id` names and reads it; `NotFound` when there is no such record.
/// The matching key of the record `id` names, read without a lock (a record's key never changes), so
/// the caller can take the key's locks before its transaction; `NotFound` when there is no such record.
pub(crate) async fn key_of(pool: &PgPool, record_type: RecordType, id: &str) -> Result<String, Failure> {
    let key: Option<String> = sqlx::query_scalar("SELECT match_key FROM records WHERE id = $1 AND record_type = $2")
        .bind(id)
        .bind(record_type.as_str())
        .fetch_optional(pool)
        .await?;
    Ok(key.ok_or(StoreError::NotFound)?)
}

/// The record a close names, read under its key's lock, with what its events need: owner and product.
struct Locked {
    target: Target,
    owner: OwnerId,
    product: Product,
    at: OffsetDateTime,
}

/// Locks `key` and reads the record `id` names under it.
async fn locked_target(tx: &mut Tx, key: &str, record_type: RecordType, id: &str) -> Result<Locked, Failure> {
    let at = lock_key(tx, key).await?;
    let (status, converted, owner, product): (String, Option<String>, String, String) = sqlx::query_as(
        "SELECT status, converted_opportunity_id, owner_id, product FROM records WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    let target = Target {
        id: id.to_owned(),
        record_type,
        status: Status::parse(&status).map_err(StoreError::internal)?,
        converted_opportunity_id: converted,
    };
    Ok(Locked { target, owner: OwnerId::from_stored(owner), product: Product::from_stored(product), at })
}

pub(crate) async fn close_won(
    pool: &PgPool,
    key: &str,
    record_type: RecordType,
    id: &str,
    convert: bool,
    ctx: &RequestContext,
    with_events: bool,
) -> Result<CloseWonOutcome, Failure> {
    let mut tx = pool.begin().await?;
    let locked = locked_target(&mut tx, key, record_type, id).await?;
    let (mut t, at) = (locked.target.clone(), locked.at);
    match plan_close_won(&t, convert) {
        CloseWonPlan::AlreadyWon => {
            let outcome = CloseWonOutcome::won(&t);
            finish_unchanged(tx, ctx, Answer::CloseWon(&outcome)).await?;
            Ok(outcome)
        }
        CloseWonPlan::Refuse => {
            tx.rollback().await?;
            Err(StoreError::InvalidTransition { current: t.status }.into())
        }
        CloseWonPlan::Win { convert } => {
            set_status(&mut tx, at, id, t.status, Status::CloseWon).await?;
            history(&mut tx, at, id, Some(t.status), Status::CloseWon, ctx, ctx.reason.as_ref()).await?;
            if convert {
                let opp = new_id();
                sqlx::query(
                    "INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number, cif,
                         full_name, phone, email, product, channel, journey_id, converted_from_lead_id,
                         created_at, updated_at)
                     SELECT $1, 'OPPORTUNITY', 'Close Won', match_key, owner_id, customer_type, id_number, cif,
                         full_name, phone, email, product, channel, journey_id, id, $3, $3
                     FROM records WHERE id = $2",
                )
                .bind(&opp)
                .bind(id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE records SET converted_opportunity_id = $1 WHERE id = $2")
                    .bind(&opp)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                history(&mut tx, at, &opp, None, Status::CloseWon, ctx, ctx.reason.as_ref()).await?;
                t.converted_opportunity_id = Some(opp);
            }
            let outcome = CloseWonOutcome::won(&t);
            if with_events {
                let changes = events::on_close_won(&locked.target, &locked.owner, &locked.product, ctx, &outcome);
                outbox::write(&mut tx, key, &changes, ctx, at).await?;
            }
            finish(tx, ctx, Answer::CloseWon(&outcome)).await?;
            Ok(outcome)
        }
    }
}

pub(crate) async fn close_lost(
    pool: &PgPool,
    key: &str,
    record_type: RecordType,
    id: &str,
    ctx: &RequestContext,
    with_events: bool,
) -> Result<RecordRef, Failure> {
    let mut tx = pool.begin().await?;
    let locked = locked_target(&mut tx, key, record_type, id).await?;
    let (t, at) = (&locked.target, locked.at);
    let outcome = RecordRef { id: t.id.clone(), status: Status::CloseLost };
    match plan_close_lost(t) {
        CloseLostPlan::AlreadyLost => finish_unchanged(tx, ctx, Answer::CloseLost(&outcome)).await?,
        CloseLostPlan::Refuse => {
            tx.rollback().await?;
            return Err(StoreError::InvalidTransition { current: t.status }.into());
        }
        CloseLostPlan::Lose => {
            set_status(&mut tx, at, id, t.status, Status::CloseLost).await?;
            history(&mut tx, at, id, Some(t.status), Status::CloseLost, ctx, ctx.reason.as_ref()).await?;
            if with_events {
                let changes = events::on_close_lost(t, &locked.owner, &locked.product, ctx);
                outbox::write(&mut tx, key, &changes, ctx, at).await?;
            }
            finish(tx, ctx, Answer::CloseLost(&outcome)).await?;
        }
    }
    Ok(outcome)
}
