//! The write operations: one transaction each, under the advisory lock of the matching key.
//!
//! Round trips are what a write costs here (the service and the database share a machine, or a network
//! hop apart), so each operation takes four: `BEGIN` and the key's lock in one simple query, one read of
//! what the plan needs (with the time, taken once the lock is held), one statement making every change
//! (data-modifying `WITH` clauses), and `COMMIT`. Recording an idempotent answer, and events, add theirs.
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

/// The advisory lock id of a matching key: FNV-1a over the key's bytes, in a namespace of its own. Computed
/// here, not by the database, so that taking it rides in the `BEGIN` round trip with no text of the
/// request in the statement. Every replica computes the same id (the function is fixed, not `std`'s
/// hasher, which may change between builds).
pub fn key_lock_id(key: &str) -> i64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = b"key:".iter().chain(key.as_bytes()).fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME));
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Begins a transaction holding the lock of `key` (until it ends), in one round trip.
///
/// Its statements use their prepared generic plans: they are lookups by key or id and inserts, whose best
/// plan does not depend on the values, and re-planning them on every run (PostgreSQL's default for a
/// statement's first runs, and for good whenever a custom plan looks cheaper) was a fifth of the database's
/// CPU under the benchmark's mix. Only this transaction is affected; reports keep custom plans.
async fn begin_locked(pool: &PgPool, key: &str) -> Result<Tx, sqlx::Error> {
    pool.begin_with(format!(
        "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SELECT pg_advisory_xact_lock({})",
        key_lock_id(key)
    ))
    .await
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

pub(crate) fn new_id() -> String {
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
    let mut tx = begin_locked(pool, key.expose()).await?;
    // ETB never reads or changes leads (SPEC §2.1): its snapshot is the open opportunity alone. Both queries
    // keep the literal open statuses of the partial unique index, so that index serves them. The time is
    // read in the same statement, after the lock was taken: every write of the step is stamped with it, so
    // the history of a key is in the order its steps really ran (`now()` would be the transaction's start).
    let sql = match request.customer_type {
        CustomerType::Ntb => {
            "SELECT c.at, r.id, r.record_type, r.owner_id FROM (SELECT clock_timestamp() AS at) AS c
             LEFT JOIN records AS r ON r.match_key = $1 AND r.status IN ('New Lead', 'New Opportunity')
             ORDER BY r.seq DESC"
        }
        CustomerType::Etb => {
            "SELECT c.at, r.id, r.record_type, r.owner_id FROM (SELECT clock_timestamp() AS at) AS c
             LEFT JOIN records AS r ON r.match_key = $1 AND r.status IN ('New Lead', 'New Opportunity')
                 AND r.record_type = 'OPPORTUNITY'
             ORDER BY r.seq DESC"
        }
    };
    type Row = (OffsetDateTime, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(sql).bind(key.expose()).fetch_all(&mut *tx).await?;
    let at = rows.first().map(|r| r.0).ok_or_else(|| StoreError::internal("no clock row"))?;
    let mut open = Vec::with_capacity(rows.len());
    for (_, id, record_type, owner) in rows {
        let (Some(id), Some(record_type), Some(owner)) = (id, record_type, owner) else { continue };
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
    let id = new_id();
    let c = &request.customer;
    // The replaced records close first (the new record's insert reads how many did, so it runs after them
    // and only if all did: the partial unique index never sees two open records of the key), then one
    // history insert writes their changes and the creation, in that order.
    let written: Vec<i32> = sqlx::query_scalar(
        "WITH closed AS (
             UPDATE records SET status = 'Close Lost', updated_at = $15
             WHERE id = ANY($16) AND status = $3
             RETURNING id, owner_id, channel, product
         ), rejected AS (
             -- The reports' daily counts (migration 0012): each replaced record is a close-lost change and a
             -- hand-over to the new record's owner. Nothing of the statement stays unless all of it does.
             INSERT INTO report_rejections_new (source, day, reason, channel, product, n)
             SELECT 'records', ($15 AT TIME ZONE 'UTC')::date, $18, channel, product, count(*)
             FROM closed GROUP BY channel, product
         ), handed AS (
             INSERT INTO report_handovers_new (source, day, from_owner, to_owner, channel, product, n)
             SELECT 'records', ($15 AT TIME ZONE 'UTC')::date, owner_id, $5, channel, product, count(*)
             FROM closed GROUP BY owner_id, channel, product
         ), created AS (
             INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number, cif,
                 full_name, phone, email, product, channel, journey_id, created_at, updated_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15
             WHERE (SELECT count(*) FROM closed) = cardinality($16)
             RETURNING id
         )
         INSERT INTO history (record_id, from_status, to_status, at, request_id, channel, reason)
         SELECT change.id, change.from_status, change.to_status, $15, $17, $20, change.reason
         FROM (
             SELECT 0 AS n, array_position($16, closed.id) AS k, closed.id, $3 AS from_status,
                 'Close Lost' AS to_status, $18 AS reason
             FROM closed
             UNION ALL
             SELECT 1, 0, created.id, NULL, $3, $19 FROM created
         ) AS change
         ORDER BY change.n, change.k
         RETURNING 1",
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
    .bind(&close)
    .bind(&ctx.request_id)
    .bind(Reason::owner_changed().as_str())
    .bind(ctx.reason.as_ref().map(Reason::as_str))
    .bind(ctx.channel.as_str())
    .fetch_all(&mut *tx)
    .await?;
    if written.len() != close.len() + 1 {
        return Err(StoreError::internal("a replaced record changed under the key lock").into());
    }
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

/// Begins a transaction holding the lock of `key` and reads the record `id` names under it, with the time.
async fn locked_target(pool: &PgPool, key: &str, record_type: RecordType, id: &str) -> Result<(Tx, Locked), Failure> {
    let mut tx = begin_locked(pool, key).await?;
    let (at, status, converted, owner, product): (OffsetDateTime, String, Option<String>, String, String) =
        sqlx::query_as(
            "SELECT clock_timestamp(), status, converted_opportunity_id, owner_id, product
             FROM records WHERE id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    let target = Target {
        id: id.to_owned(),
        record_type,
        status: Status::parse(&status).map_err(StoreError::internal)?,
        converted_opportunity_id: converted,
    };
    Ok((tx, Locked { target, owner: OwnerId::from_stored(owner), product: Product::from_stored(product), at }))
}

/// Checks that a change statement wrote the history rows it should have: fewer means the record was not in
/// the status read under the lock, which the lock rules out.
fn wrote(rows: usize, expected: usize, id: &str) -> Result<(), Failure> {
    if rows == expected {
        Ok(())
    } else {
        Err(StoreError::internal(format!("record {id} changed under the key lock")).into())
    }
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
    let (tx, locked) = locked_target(pool, key, record_type, id).await?;
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
            let mut tx = tx;
            let opp = convert.then(new_id);
            // The win, the converted opportunity (a copy of the lead, won, pointing back at it) and the
            // history of both, in one statement.
            let rows: Vec<i32> = sqlx::query_scalar(
                "WITH won AS (
                     UPDATE records SET status = 'Close Won', updated_at = $3,
                         converted_opportunity_id = coalesce($4, converted_opportunity_id)
                     WHERE id = $1 AND status = $2
                     RETURNING *
                 ), opportunity AS (
                     INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number,
                         cif, full_name, phone, email, product, channel, journey_id, converted_from_lead_id,
                         created_at, updated_at)
                     SELECT $4, 'OPPORTUNITY', 'Close Won', match_key, owner_id, customer_type, id_number, cif,
                         full_name, phone, email, product, channel, journey_id, id, $3, $3
                     FROM won WHERE $4 IS NOT NULL
                     RETURNING id
                 )
                 INSERT INTO history (record_id, from_status, to_status, at, request_id, channel, reason)
                 SELECT change.id, change.from_status, 'Close Won', $3, $5, $6, $7
                 FROM (
                     SELECT 0 AS n, won.id, $2 AS from_status FROM won
                     UNION ALL
                     SELECT 1, opportunity.id, NULL FROM opportunity
                 ) AS change
                 ORDER BY change.n
                 RETURNING 1",
            )
            .bind(id)
            .bind(t.status.as_str())
            .bind(at)
            .bind(opp.as_deref())
            .bind(&ctx.request_id)
            .bind(ctx.channel.as_str())
            .bind(ctx.reason.as_ref().map(Reason::as_str))
            .fetch_all(&mut *tx)
            .await?;
            wrote(rows.len(), 1 + usize::from(opp.is_some()), id)?;
            if opp.is_some() {
                t.converted_opportunity_id = opp;
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
    let (tx, locked) = locked_target(pool, key, record_type, id).await?;
    let (t, at) = (&locked.target, locked.at);
    let outcome = RecordRef { id: t.id.clone(), status: Status::CloseLost };
    match plan_close_lost(t) {
        CloseLostPlan::AlreadyLost => finish_unchanged(tx, ctx, Answer::CloseLost(&outcome)).await?,
        CloseLostPlan::Refuse => {
            tx.rollback().await?;
            return Err(StoreError::InvalidTransition { current: t.status }.into());
        }
        CloseLostPlan::Lose => {
            let mut tx = tx;
            let rows: Vec<i32> = sqlx::query_scalar(
                "WITH lost AS (
                     UPDATE records SET status = 'Close Lost', updated_at = $3
                     WHERE id = $1 AND status = $2
                     RETURNING id, channel, product
                 ), rejected AS (
                     -- The rejections' daily count (migration 0012).
                     INSERT INTO report_rejections_new (source, day, reason, channel, product, n)
                     SELECT 'records', ($3 AT TIME ZONE 'UTC')::date, COALESCE($6, ''), channel, product, 1
                     FROM lost
                 )
                 INSERT INTO history (record_id, from_status, to_status, at, request_id, channel, reason)
                 SELECT id, $2, 'Close Lost', $3, $4, $5, $6 FROM lost
                 RETURNING 1",
            )
            .bind(id)
            .bind(t.status.as_str())
            .bind(at)
            .bind(&ctx.request_id)
            .bind(ctx.channel.as_str())
            .bind(ctx.reason.as_ref().map(Reason::as_str))
            .fetch_all(&mut *tx)
            .await?;
            wrote(rows.len(), 1, id)?;
            if with_events {
                let changes = events::on_close_lost(t, &locked.owner, &locked.product, ctx);
                outbox::write(&mut tx, key, &changes, ctx, at).await?;
            }
            finish(tx, ctx, Answer::CloseLost(&outcome)).await?;
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::key_lock_id;

    /// The lock id is part of the deployment's protocol: replicas built apart must compute the same one.
    #[test]
    fn lock_ids_are_fixed_fnv1a_values() {
        assert_eq!(key_lock_id(""), 6_348_314_981_938_600_866);
        assert_eq!(key_lock_id("079123456789/CREDIT_CARD"), -4_934_901_712_637_119_894);
        assert_ne!(key_lock_id("A/CARD"), key_lock_id("B/CARD"));
    }
}
