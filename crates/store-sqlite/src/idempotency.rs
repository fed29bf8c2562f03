//! Idempotency keys in the embedded store. Every call is a writer job, so claims are serialized with
//! everything else and durable before they are answered.
//!
//! A completion lands only on the claim it belongs to: the same key and holder token, still running. So a
//! response an operation recorded in its own transaction (see [`answer`]) is never overwritten by a later
//! `complete`, and a claim taken over by a retry after its lease ended is not completed by the old holder's
//! late answer.

use std::time::Duration;

use rusqlite::{params, OptionalExtension, Transaction};
use store::{decide_claim, Answer, Claim, ClaimDecision, KeptKey, RequestContext, StoreError, StoredResponse};
use time::OffsetDateTime;

use crate::read::{error, format_time, parse_time};

type Row = (String, String, Option<String>, String, Option<u16>, Option<String>, Option<String>, Option<Vec<u8>>);

/// Claims `key`: the kept row is read and [`store::decide_claim`] says what to do with it.
pub(crate) fn claim(
    tx: &Transaction<'_>,
    key: &str,
    fingerprint: &str,
    holder: &str,
    lease: Duration,
    ttl: Duration,
    now: OffsetDateTime,
) -> Result<Claim, StoreError> {
    let row: Option<Row> = tx
        .prepare_cached(
            "SELECT fingerprint, state, locked_until, expires_at, status, content_type, location, body
             FROM idempotency_keys WHERE key = ?1",
        )
        .and_then(|mut s| {
            s.query_row([key], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
            })
            .optional()
        })
        .map_err(error)?;
    let kept = match &row {
        Some((fp, state, until, expires, ..)) => Some(KeptKey {
            fingerprint: fp,
            done: state == "done",
            locked_until: until.as_deref().map(parse_time).transpose()?,
            expires_at: parse_time(expires)?,
        }),
        None => None,
    };
    let locked_until = format_time(now + lease);
    match decide_claim(kept.as_ref(), fingerprint, now) {
        ClaimDecision::Mismatch => Ok(Claim::Mismatch),
        ClaimDecision::InUse => Ok(Claim::InUse),
        ClaimDecision::Replay => {
            let (_, _, _, _, status, content_type, location, body) = row.unwrap_or_default();
            Ok(Claim::Replay(StoredResponse {
                status: status.unwrap_or(200),
                content_type,
                location,
                body: body.unwrap_or_default(),
            }))
        }
        ClaimDecision::TakeOver => {
            tx.execute(
                "UPDATE idempotency_keys SET locked_until = ?1, holder = ?3 WHERE key = ?2",
                params![locked_until, key, holder],
            )
            .map_err(error)?;
            Ok(Claim::Proceed)
        }
        ClaimDecision::Fresh => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO idempotency_keys (key, fingerprint, state, locked_until, expires_at, holder)
                 VALUES (?1, ?2, 'running', ?3, ?4, ?5)",
            )
            .and_then(|mut s| s.execute(params![key, fingerprint, locked_until, format_time(now + ttl), holder]))
            .map_err(error)?;
            Ok(Claim::Proceed)
        }
    }
}

pub(crate) fn complete(tx: &Transaction<'_>, key: &str, holder: &str, r: &StoredResponse) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE idempotency_keys
         SET state = 'done', locked_until = NULL, status = ?3, content_type = ?4, location = ?5, body = ?6
         WHERE key = ?1 AND holder = ?2 AND state = 'running'",
    )
    .and_then(|mut s| s.execute(params![key, holder, r.status, r.content_type, r.location, r.body]))
    .map_err(error)?;
    Ok(())
}

/// Completes the request's own key (if it holds one) with `answer`, inside the operation's transaction: the
/// changes and the response to replay commit together, or neither does.
///
/// The rendering runs on the writer thread, which every request shares: a render that panics fails this
/// job alone instead of the writer.
pub(crate) fn answer(tx: &Transaction<'_>, ctx: &RequestContext, answer: Answer<'_>) -> Result<(), StoreError> {
    let completion = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.completion(answer)))
        .map_err(|_| StoreError::internal("rendering the idempotent answer panicked"))?;
    match completion {
        Some((key, holder, response)) => complete(tx, key, holder, &response),
        None => Ok(()),
    }
}

pub(crate) fn release(tx: &Transaction<'_>, key: &str, holder: &str) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM idempotency_keys WHERE key = ?1 AND holder = ?2 AND state = 'running'",
        params![key, holder],
    )
    .map_err(error)?;
    Ok(())
}

/// Extends `holder`'s running claim to `now + lease`; whether it is still `holder`'s.
pub(crate) fn renew(
    tx: &Transaction<'_>,
    key: &str,
    holder: &str,
    lease: Duration,
    now: OffsetDateTime,
) -> Result<bool, StoreError> {
    let n = tx
        .prepare_cached(
            "UPDATE idempotency_keys SET locked_until = ?3 WHERE key = ?1 AND holder = ?2 AND state = 'running'",
        )
        .and_then(|mut s| s.execute(params![key, holder, format_time(now + lease)]))
        .map_err(error)?;
    Ok(n == 1)
}

pub(crate) fn purge(tx: &Transaction<'_>, now: OffsetDateTime) -> Result<u64, StoreError> {
    let n = tx.execute("DELETE FROM idempotency_keys WHERE expires_at <= ?1", [format_time(now)]).map_err(error)?;
    Ok(n as u64)
}
