//! [`store::Sidecar`] on the embedded store: what a CRM backend keeps in a local SQLite file beside the CRM
//! (its audit history, its idempotency keys and the per-key locks that serialize every process sharing the
//! file).
//!
//! A key lock is a lease row in `key_locks`, written through the writer like everything else. SQLite has no
//! lock that outlives a statement and is shared between processes, and a row is visible to all of them; the
//! lease bounds how long a holder that died (process killed) keeps others out. In front of the row sits an
//! in-process mutex per key, so the waiters of one process queue in memory and only the first of them polls
//! the table. A holder that is alive but outlives its lease loses the key too: the lease must be longer than
//! any hold (the CRM calls made under it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use lifecycle::{Reason, Status};
use rusqlite::{params, OptionalExtension};
use store::events::Outgoing;
use store::{AuditEntry, HistoryEntry, KeyLock, Origin, Sidecar, Store, StoreError, StoredResponse};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, OwnedMutexGuard};
use tokio::time::Instant;

use crate::read::{error, format_time};
use crate::{idempotency, outbox, writer, SqliteStore};

/// The longest pause between two looks at a held key: short enough that a freed key is taken promptly,
/// long enough that waiters of other processes do not keep the readers busy.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// In-process mutexes, one per key while anyone holds or waits for it.
#[derive(Default)]
pub(crate) struct LocalLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl LocalLocks {
    fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lock) = map.get(key).and_then(Weak::upgrade) {
            return lock;
        }
        // Forget keys nobody holds any more, in amortized O(1): only when the map has doubled.
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, lock| lock.strong_count() > 0);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(key.to_owned(), Arc::downgrade(&lock));
        lock
    }
}

fn busy() -> StoreError {
    // The key is a customer's matching key (an id number): it stays out of errors and logs.
    StoreError::unavailable("the key is held by another request")
}

/// Takes the lease row unless another holder's lease is still running; whether it was taken.
fn take(tx: &rusqlite::Transaction<'_>, key: &str, holder: &str, lease: Duration) -> Result<bool, StoreError> {
    let now = OffsetDateTime::now_utc();
    let n = tx
        .prepare_cached(
            "INSERT INTO key_locks (key, holder, until) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, until = excluded.until
             WHERE key_locks.until <= ?4",
        )
        .and_then(|mut s| s.execute(params![key, holder, format_time(now + lease), format_time(now)]))
        .map_err(error)?;
    Ok(n == 1)
}

/// Whether the key looks free (no row, or a lease that ran out): read without the writer, so a process
/// waiting for a key costs no write transactions.
fn looks_free(conn: &rusqlite::Connection, key: &str) -> Result<bool, StoreError> {
    let until: Option<String> = conn
        .prepare_cached("SELECT until FROM key_locks WHERE key = ?1")
        .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
        .map_err(error)?;
    Ok(until.is_none_or(|until| until <= format_time(OffsetDateTime::now_utc())))
}

/// Deletes the lease row if it is still `holder`'s, then lets the next waiter of this process in. Does not
/// block: the delete is queued for the writer, and `local` is dropped with the job's answer, once the delete
/// is committed. If the job cannot be queued, the row stays until its lease ends.
fn release(jobs: mpsc::Sender<writer::Job>, key: String, holder: String, local: OwnedMutexGuard<()>) {
    // Nobody waits for the answer: delivering it drops the guard it carries.
    let (reply, _) = oneshot::channel();
    let mut local = Some(local);
    let job = writer::job(
        move |tx, _| {
            tx.prepare_cached("DELETE FROM key_locks WHERE key = ?1 AND holder = ?2")
                .and_then(|mut s| s.execute(params![key, holder]))
                .map_err(error)?;
            // The guard goes with the first run's answer. If the batch runs again, the second answer has
            // none and the guard is dropped then, before the commit: harmless, since the next waiter's own
            // write queues behind this batch and so sees the delete.
            Ok(local.take())
        },
        reply,
    );
    if let Err(mpsc::error::TrySendError::Full(job)) = jobs.try_send(job) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = jobs.send(job).await;
            });
        }
    }
}

#[async_trait]
impl Sidecar for SqliteStore {
    async fn lock_key(&self, key: &str, lease: Duration, wait: Duration) -> Result<KeyLock, StoreError> {
        let deadline = Instant::now() + wait;
        let local =
            tokio::time::timeout_at(deadline, self.local_locks.get(key).lock_owned()).await.map_err(|_| busy())?;
        let holder = uuid::Uuid::new_v4().to_string();
        let mut pause = Duration::from_millis(2);
        loop {
            let (k, h) = (key.to_owned(), holder.clone());
            if self.submit(move |tx, _| take(tx, &k, &h, lease)).await? {
                let (jobs, key) = (self.jobs.clone(), key.to_owned());
                return Ok(KeyLock::new(move || release(jobs, key, holder, local)));
            }
            // Held by another process: look (cheaply) until it is free, then try again.
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return Err(busy());
                }
                tokio::time::sleep(pause.min(deadline - now)).await;
                pause = (pause * 2).min(MAX_PAUSE);
                let k = key.to_owned();
                if self.readers.run(move |conn| looks_free(conn, &k)).await? {
                    break;
                }
            }
        }
    }

    async fn record(
        &self,
        entries: &[AuditEntry],
        events: Option<&Outgoing>,
        completion: Option<(&str, &str, StoredResponse)>,
    ) -> Result<(), StoreError> {
        let entries = entries.to_vec();
        let events = events.cloned();
        let completion = completion.map(|(key, holder, r)| (key.to_owned(), holder.to_owned(), r));
        self.submit(move |tx, _| {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO audit (record_id, record_type, match_key, from_status, to_status, at, request_id,
                         channel, reason, owner_id, product, converted_from)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .map_err(error)?;
            for a in &entries {
                let e = &a.entry;
                let (created, converted_from) = match &a.origin {
                    Some(Origin::Created { owner_id, product }) => (Some((owner_id, product)), None),
                    Some(Origin::ConvertedFrom(lead)) => (None, Some(lead.as_str())),
                    None => (None, None),
                };
                insert
                    .execute(params![
                        a.record_id,
                        a.record_type.as_str(),
                        a.match_key,
                        e.from.map(Status::as_str),
                        e.to.as_str(),
                        format_time(e.at),
                        e.request_id,
                        e.channel.as_str(),
                        e.reason.as_ref().map(Reason::as_str),
                        created.map(|(owner, _)| owner.as_str()),
                        created.map(|(_, product)| product.as_str()),
                        converted_from,
                    ])
                    .map_err(error)?;
            }
            if let Some(o) = &events {
                outbox::write(tx, &o.key, &o.changes, &o.ctx, o.at)?;
            }
            match &completion {
                Some((key, holder, response)) => idempotency::complete(tx, key, holder, response),
                None => Ok(()),
            }
        })
        .await
    }

    async fn history(&self, record_id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let record_id = record_id.to_owned();
        self.readers
            .run(move |conn| {
                crate::read::history_of(
                    conn,
                    "SELECT from_status, to_status, at, request_id, channel, reason FROM audit
                     WHERE record_id = ?1 ORDER BY seq",
                    &record_id,
                )
            })
            .await
    }

    async fn key_of(&self, record_id: &str) -> Result<Option<String>, StoreError> {
        let record_id = record_id.to_owned();
        self.readers
            .run(move |conn| {
                conn.prepare_cached("SELECT match_key FROM audit WHERE record_id = ?1 LIMIT 1")
                    .and_then(|mut s| s.query_row([record_id], |r| r.get(0)).optional())
                    .map_err(error)
            })
            .await
    }

    async fn sidecar_ready(&self) -> Result<(), StoreError> {
        // The same check as the store's: the writer runs (records need it) and a reader answers.
        Store::ready(self).await
    }

    fn audit_reports(&self) -> Arc<dyn store::Reports> {
        Arc::new(crate::reports::Reporter { readers: self.readers.clone(), source: store::reports::Source::AUDIT })
    }
}
