//! Idempotency keys shared by every replica. A claim runs under an advisory lock on the key (in its own
//! namespace, `idem:`), so two replicas racing on one key see each other's claim; times come from the
//! database's clock, so replicas with skewed clocks agree on leases and expiry.
//!
//! A completion lands only on the claim it belongs to: the same key and holder token, still running. So the
//! response a write recorded in its own transaction (see [`answer`]) is never overwritten by a later
//! `complete`, nor a claim a retry took over (after its lease ran out) by the old holder's late answer.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{PgExecutor, Postgres, Row, Transaction};
use store::{
    decide_claim, Answer, Claim, ClaimDecision, Idempotency, KeptKey, RequestContext, StoreError, StoredResponse,
};
use time::OffsetDateTime;

use crate::write::{retrying, Failure};
use crate::PgStore;

fn interval(d: Duration) -> String {
    format!("{} milliseconds", d.as_millis())
}

/// Claims a key nobody holds, in one statement: `true` if it was not there. A key that is there (live,
/// expired or being claimed) is left to [`claim_once`], whose decision needs what is kept. Most keys are
/// fresh, and this spares them four round trips (`BEGIN`, the lock, the read, `COMMIT`).
///
/// It races safely with `claim_once`: an insert of the same key by either waits for the other's transaction
/// on the primary key, and `claim_once` overwrites only an expired key, so of two claims of one key at most
/// one proceeds.
async fn claim_fresh(
    store: &PgStore,
    key: &str,
    fingerprint: &str,
    holder: &str,
    lease: &str,
    ttl: &str,
) -> Result<bool, sqlx::Error> {
    insert_running(store.pool(), key, fingerprint, holder, lease, ttl, "DO NOTHING").await
}

/// A fresh claim waiting for its batch (see [`claim_fresh_together`]).
pub(crate) struct FreshClaim {
    key: String,
    fingerprint: String,
    holder: String,
    lease: String,
    ttl: String,
    reply: tokio::sync::oneshot::Sender<Result<bool, StoreError>>,
}

/// The fresh claims of concurrent requests, in one statement and one commit: each answers whether its row
/// was written, as [`claim_fresh`] does. The keys go in in their sort order, so two batches inserting the
/// same keys wait for each other in one order and cannot deadlock. If the statement fails, each claim runs
/// again alone.
pub(crate) async fn claim_fresh_together(pool: &sqlx::PgPool, mut claims: Vec<FreshClaim>) {
    // A key claimed twice in the batch: the first claim is the one tried; the others find the key taken,
    // whoever holds them.
    claims.sort_by(|a, b| a.key.cmp(&b.key));
    let mut repeats = Vec::new();
    let mut i = 1;
    while i < claims.len() {
        if claims[i].key == claims[i - 1].key {
            repeats.push(claims.remove(i));
        } else {
            i += 1;
        }
    }
    for c in repeats {
        let _ = c.reply.send(Ok(false));
    }
    let column = |f: fn(&FreshClaim) -> &str| claims.iter().map(f).collect::<Vec<&str>>();
    let written: Result<Vec<(String, String)>, sqlx::Error> = sqlx::query_as(
        "INSERT INTO idempotency_keys (key, fingerprint, state, locked_until, expires_at, holder)
         SELECT c.key, c.fingerprint, 'running', now() + c.lease::interval, now() + c.ttl::interval, c.holder
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY
             AS c (key, fingerprint, lease, ttl, holder, n)
         ORDER BY c.n
         ON CONFLICT (key) DO NOTHING
         RETURNING key, holder",
    )
    .bind(column(|c| &c.key))
    .bind(column(|c| &c.fingerprint))
    .bind(column(|c| &c.lease))
    .bind(column(|c| &c.ttl))
    .bind(column(|c| &c.holder))
    .fetch_all(pool)
    .await;
    match written {
        Ok(written) => {
            for c in claims {
                let mine = written.iter().any(|(k, h)| *k == c.key && *h == c.holder);
                let _ = c.reply.send(Ok(mine));
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, claims = claims.len(), "postgres: a batch of claims failed, claiming alone");
            for c in claims {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let done = insert_running(&pool, &c.key, &c.fingerprint, &c.holder, &c.lease, &c.ttl, "DO NOTHING")
                        .await
                        .map_err(crate::error);
                    let _ = c.reply.send(done);
                });
            }
        }
    }
}

/// Inserts `key` as a running claim (lease and expiry from the database's clock), `on_conflict` deciding
/// what becomes of a key already there: `true` if a row was written.
async fn insert_running<'e>(
    db: impl PgExecutor<'e>,
    key: &str,
    fingerprint: &str,
    holder: &str,
    lease: &str,
    ttl: &str,
    on_conflict: &str,
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "INSERT INTO idempotency_keys (key, fingerprint, state, locked_until, expires_at, holder)
         VALUES ($1, $2, 'running', now() + $3::interval, now() + $4::interval, $5)
         ON CONFLICT (key) {on_conflict}"
    );
    let done = sqlx::query(&sql).bind(key).bind(fingerprint).bind(lease).bind(ttl).bind(holder).execute(db).await?;
    Ok(done.rows_affected() == 1)
}

async fn claim_once(
    store: &PgStore,
    key: &str,
    fingerprint: &str,
    holder: &str,
    lease: &str,
    ttl: &str,
) -> Result<Claim, Failure> {
    let mut tx = store.pool().begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('idem:' || $1, 0))").bind(key).execute(&mut *tx).await?;
    let row = sqlx::query(
        "SELECT now() AS now, fingerprint, state, locked_until, expires_at, status, content_type, location, body
         FROM (SELECT 1) AS one LEFT JOIN idempotency_keys ON key = $1",
    )
    .bind(key)
    .fetch_one(&mut *tx)
    .await?;
    let now: OffsetDateTime = row.try_get("now")?;
    let kept_fingerprint: Option<String> = row.try_get("fingerprint")?;
    let kept = match &kept_fingerprint {
        Some(fingerprint) => Some(KeptKey {
            fingerprint,
            done: row.try_get::<String, _>("state")? == "done",
            locked_until: row.try_get("locked_until")?,
            expires_at: row.try_get("expires_at")?,
        }),
        None => None,
    };
    let claim = match decide_claim(kept.as_ref(), fingerprint, now) {
        ClaimDecision::Mismatch => Claim::Mismatch,
        ClaimDecision::InUse => Claim::InUse,
        ClaimDecision::Replay => Claim::Replay(StoredResponse {
            status: row.try_get::<Option<i32>, _>("status")?.and_then(|s| u16::try_from(s).ok()).unwrap_or(200),
            content_type: row.try_get("content_type")?,
            location: row.try_get("location")?,
            body: row.try_get::<Option<Vec<u8>>, _>("body")?.unwrap_or_default(),
        }),
        ClaimDecision::TakeOver => {
            sqlx::query("UPDATE idempotency_keys SET locked_until = now() + $2::interval, holder = $3 WHERE key = $1")
                .bind(key)
                .bind(lease)
                .bind(holder)
                .execute(&mut *tx)
                .await?;
            Claim::Proceed
        }
        ClaimDecision::Fresh => {
            // Replaces only a key that has expired: one [`claim_fresh`] inserted since the read (it takes no
            // advisory lock) is a live claim, so the step runs again and reads it.
            const REPLACE_EXPIRED: &str = "DO UPDATE SET fingerprint = excluded.fingerprint, state = 'running',
                     locked_until = excluded.locked_until, expires_at = excluded.expires_at,
                     holder = excluded.holder, status = NULL, content_type = NULL, location = NULL, body = NULL
                 WHERE idempotency_keys.expires_at <= now()";
            if !insert_running(&mut *tx, key, fingerprint, holder, lease, ttl, REPLACE_EXPIRED).await? {
                return Err(Failure::Retry(sqlx::Error::Protocol("a fresh claim of the key came first".into())));
            }
            Claim::Proceed
        }
    };
    tx.commit().await?;
    Ok(claim)
}

/// Stores the response of the running claim `holder` took on `key`, on `db` (the pool, or the
/// transaction of the write the response answers).
pub(crate) async fn complete_with<'e>(
    db: impl PgExecutor<'e>,
    key: &str,
    holder: &str,
    r: &StoredResponse,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys
         SET state = 'done', locked_until = NULL, status = $3, content_type = $4, location = $5, body = $6
         WHERE key = $1 AND holder = $2 AND state = 'running'",
    )
    .bind(key)
    .bind(holder)
    .bind(i32::from(r.status))
    .bind(&r.content_type)
    .bind(&r.location)
    .bind(&r.body)
    .execute(db)
    .await?;
    Ok(())
}

/// Completes the request's own key (if it holds one) with `answer`, in the write's transaction: the changes
/// and the response to replay commit together, or neither does.
pub(crate) async fn answer(
    tx: &mut Transaction<'static, Postgres>,
    ctx: &RequestContext,
    answer: Answer<'_>,
) -> Result<(), sqlx::Error> {
    match ctx.completion(answer) {
        Some((key, holder, response)) => complete_with(&mut **tx, key, holder, &response).await,
        None => Ok(()),
    }
}

#[async_trait]
impl Idempotency for PgStore {
    async fn claim(
        &self,
        key: &str,
        fingerprint: &str,
        holder: &str,
        lease: Duration,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let (lease, ttl) = (interval(lease), interval(ttl));
        let fresh = match &self.claims {
            Some(queue) => {
                let (reply, answer) = tokio::sync::oneshot::channel();
                let (key, fingerprint, holder) = (key.to_owned(), fingerprint.to_owned(), holder.to_owned());
                let (lease, ttl) = (lease.clone(), ttl.clone());
                queue.push(FreshClaim { key, fingerprint, holder, lease, ttl, reply }).await?;
                answer.await.map_err(|_| StoreError::internal("a batch of claims ended without answering"))??
            }
            None => claim_fresh(self, key, fingerprint, holder, &lease, &ttl).await.map_err(crate::error)?,
        };
        if fresh {
            return Ok(Claim::Proceed);
        }
        retrying(|| claim_once(self, key, fingerprint, holder, &lease, &ttl)).await
    }

    async fn renew(&self, key: &str, holder: &str, lease: Duration) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE idempotency_keys SET locked_until = now() + $3::interval
             WHERE key = $1 AND holder = $2 AND state = 'running'",
        )
        .bind(key)
        .bind(holder)
        .bind(interval(lease))
        .execute(self.pool())
        .await
        .map_err(crate::error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn complete(&self, key: &str, holder: &str, r: &StoredResponse) -> Result<(), StoreError> {
        complete_with(self.pool(), key, holder, r).await.map_err(crate::error)
    }

    async fn release(&self, key: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM idempotency_keys WHERE key = $1 AND holder = $2 AND state = 'running'")
            .bind(key)
            .bind(holder)
            .execute(self.pool())
            .await
            .map_err(crate::error)?;
        Ok(())
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= now()")
            .execute(self.pool())
            .await
            .map_err(crate::error)?;
        Ok(done.rows_affected())
    }
}
