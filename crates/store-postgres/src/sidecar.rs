//! [`store::Sidecar`] on PostgreSQL: what a CRM backend keeps in a database beside the CRM (its audit
//! history, its idempotency keys, and the per-key locks that serialize its replicas).
//!
//! A key lock is a session-level advisory lock (`sidecar:` namespace) on a connection taken from the pool
//! and held for as long as the [`KeyLock`]: unlike the transaction-level locks of the write operations, it
//! has to outlive any one transaction (a CRM backend holds it across its calls to the CRM). A holder that
//! dies loses it with its session, so no lease is needed. The lock is tried in a loop rather than waited
//! for in the server, so `wait` is honoured to the millisecond and a waiter that gives up leaves nothing
//! queued. In front sit the in-process stripes (as for the writes), so the waiters of one process queue in
//! memory instead of each holding a pooled connection.

use std::time::Duration;

use async_trait::async_trait;
use lifecycle::{Reason, Status};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres};
use store::events::Outgoing;
use store::{AuditEntry, HistoryEntry, KeyLock, Origin, Sidecar, Store, StoreError, StoredResponse};
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use crate::idempotency::complete_with;
use crate::read::history_entry;
use crate::{error, PgStore};

/// The longest pause between two tries of a held key.
const MAX_PAUSE: Duration = Duration::from_millis(50);

fn busy() -> StoreError {
    // The key is a customer's matching key (an id number): it stays out of errors and logs.
    StoreError::unavailable("the key is held by another request")
}

/// A pooled connection that may hold a session lock. Unless [`Session::give_back`] says it holds none, it
/// is closed instead of returned to the pool, so a lock can never outlive its holder on an idle pooled
/// connection (a `lock_key` cancelled mid-query, a failed unlock, a runtime going away).
struct Session(Option<PoolConnection<Postgres>>);

impl Session {
    fn conn(&mut self) -> &mut PgConnection {
        self.0.as_mut().expect("a session is used only until it is given back")
    }

    /// Returns the connection to the pool: it holds no lock.
    fn give_back(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Detached from the pool and dropped: the socket closes and the server ends the session, with its
        // locks. Needs no runtime, unlike returning it to the pool.
        if let Some(conn) = self.0.take() {
            drop(conn.detach());
        }
    }
}

const TRY_LOCK: &str = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))";
const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtextextended($1, 0))";

/// Unlocks and returns the connection, then lets the next waiter of this process in. Does not block: the
/// work is spawned on the current runtime; without one (or if the task never runs) the session is closed,
/// which frees the lock all the same.
fn release(mut session: Session, name: String, local: OwnedMutexGuard<()>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return; // `session` is closed and `local` released as they drop
    };
    runtime.spawn(async move {
        let unlocked = sqlx::query_scalar::<_, bool>(UNLOCK).bind(&name).fetch_one(session.conn()).await;
        match unlocked {
            Ok(true) => session.give_back(),
            Ok(false) => tracing::warn!("sidecar: a key lock was not held at release; closing its connection"),
            Err(e) => tracing::warn!(error = %e, "sidecar: cannot unlock a key; closing its connection"),
        }
        drop(local);
    });
}

#[async_trait]
impl Sidecar for PgStore {
    /// `lease` is not needed here: a holder that dies loses the lock with its session.
    async fn lock_key(&self, key: &str, _lease: Duration, wait: Duration) -> Result<KeyLock, StoreError> {
        let deadline = Instant::now() + wait;
        let name = format!("sidecar:{key}");
        let local =
            tokio::time::timeout_at(deadline, self.stripe(&name).clone().lock_owned()).await.map_err(|_| busy())?;
        // Not bounded by `wait`, which is for another holder: the pool's own acquire timeout bounds this.
        let mut session = Session(Some(self.pool().acquire().await.map_err(error)?));
        let mut pause = Duration::from_millis(2);
        loop {
            let taken: bool =
                sqlx::query_scalar(TRY_LOCK).bind(&name).fetch_one(session.conn()).await.map_err(error)?;
            if taken {
                return Ok(KeyLock::new(move || release(session, name, local)));
            }
            let now = Instant::now();
            if now >= deadline {
                session.give_back(); // it holds no lock
                return Err(busy());
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    async fn record(
        &self,
        entries: &[AuditEntry],
        events: Option<&Outgoing>,
        completion: Option<(&str, &str, StoredResponse)>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await.map_err(error)?;
        for a in entries {
            let e = &a.entry;
            let (created, converted_from) = match &a.origin {
                Some(Origin::Created { owner_id, product }) => (Some((owner_id, product)), None),
                Some(Origin::ConvertedFrom(lead)) => (None, Some(lead.as_str())),
                None => (None, None),
            };
            sqlx::query(
                "INSERT INTO audit (record_id, record_type, match_key, from_status, to_status, at, request_id,
                     channel, reason, owner_id, product, converted_from)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(&a.record_id)
            .bind(a.record_type.as_str())
            .bind(&a.match_key)
            .bind(e.from.map(Status::as_str))
            .bind(e.to.as_str())
            .bind(e.at)
            .bind(&e.request_id)
            .bind(e.channel.as_str())
            .bind(e.reason.as_ref().map(Reason::as_str))
            .bind(created.map(|(owner, _)| owner.as_str()))
            .bind(created.map(|(_, product)| product.as_str()))
            .bind(converted_from)
            .execute(&mut *tx)
            .await
            .map_err(error)?;
        }
        if let Some(o) = events {
            crate::outbox::write(&mut tx, &o.key, &o.changes, &o.ctx, o.at).await.map_err(error)?;
        }
        if let Some((key, holder, response)) = completion {
            complete_with(&mut *tx, key, holder, &response).await.map_err(error)?;
        }
        tx.commit().await.map_err(error)
    }

    async fn history(&self, record_id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT from_status, to_status, at, request_id, channel, reason FROM audit
             WHERE record_id = $1 ORDER BY seq",
        )
        .bind(record_id)
        .fetch_all(self.pool())
        .await
        .map_err(error)?;
        rows.iter().map(history_entry).collect()
    }

    async fn key_of(&self, record_id: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT match_key FROM audit WHERE record_id = $1 LIMIT 1")
            .bind(record_id)
            .fetch_optional(self.pool())
            .await
            .map_err(error)
    }

    fn audit_reports(&self) -> std::sync::Arc<dyn store::Reports> {
        std::sync::Arc::new(crate::reports::Reporter { pool: self.pool.clone(), source: store::reports::Source::AUDIT })
    }

    async fn sidecar_ready(&self) -> Result<(), StoreError> {
        Store::ready(self).await
    }
}
