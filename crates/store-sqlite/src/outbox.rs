//! The outbox of lifecycle events in the embedded store (see `store::events`): written by the operations
//! in the same job as the change, read by the relay through [`Outbox`].
//!
//! SQLite is single-process by design, but a second process may open the same file (`BEGIN IMMEDIATE`
//! keeps that safe), so the relay still takes the lease row before it publishes.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Transaction};
use store::events::{self, Change, Lag, Outbox, Pending};
use store::{RequestContext, StoreError};
use time::OffsetDateTime;

use crate::read::{error, format_time, parse_time};
use crate::SqliteStore;

/// Writes the events of `changes` (made at `at` on the matching key `key`): reserves the key's next
/// sequence numbers, then inserts one outbox row per change.
pub(crate) fn write(
    tx: &Transaction<'_>,
    key: &str,
    changes: &[Change],
    ctx: &RequestContext,
    at: OffsetDateTime,
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let n = changes.len() as i64;
    let (key_id, last): (String, i64) = tx
        .prepare_cached(
            "INSERT INTO outbox_keys (match_key, key_id, last_sequence) VALUES (?1, ?2, ?3)
             ON CONFLICT (match_key) DO UPDATE SET last_sequence = last_sequence + ?3
             RETURNING key_id, last_sequence",
        )
        .and_then(|mut s| s.query_row(params![key, events::new_key_id(), n], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(error)?;
    let mut insert = tx
        .prepare_cached("INSERT INTO outbox (event_id, subject, body, created_at) VALUES (?1, ?2, ?3, ?4)")
        .map_err(error)?;
    let created = format_time(OffsetDateTime::now_utc());
    for e in events::render(changes, ctx, at, &key_id, last - n + 1) {
        insert.execute(params![e.id, e.subject, e.body, created]).map_err(error)?;
    }
    Ok(())
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn lease_relay(&self, holder: &str, lease: Duration) -> Result<bool, StoreError> {
        let holder = holder.to_owned();
        self.submit(move |tx, _| {
            let now = OffsetDateTime::now_utc();
            tx.prepare_cached(
                "INSERT INTO outbox_relay (id, holder, until) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, until = excluded.until
                 WHERE outbox_relay.holder = excluded.holder OR outbox_relay.until <= ?3",
            )
            .and_then(|mut s| s.execute(params![holder, format_time(now + lease), format_time(now)]))
            .map(|n| n == 1)
            .map_err(error)
        })
        .await
    }

    async fn pending(&self, limit: usize) -> Result<Vec<Pending>, StoreError> {
        self.readers
            .run(move |conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT position, event_id, subject, body FROM outbox ORDER BY position LIMIT ?1")
                    .map_err(error)?;
                let rows = stmt
                    .query_map([limit as i64], |r| {
                        Ok(Pending {
                            position: r.get(0)?,
                            event: events::Event { id: r.get(1)?, subject: r.get(2)?, body: r.get(3)? },
                        })
                    })
                    .map_err(error)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(error)
            })
            .await
    }

    async fn delivered(&self, positions: &[i64]) -> Result<(), StoreError> {
        let positions = positions.to_vec();
        self.submit(move |tx, _| {
            let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE position = ?1").map_err(error)?;
            for p in &positions {
                delete.execute([p]).map_err(error)?;
            }
            Ok(())
        })
        .await
    }

    async fn lag(&self) -> Result<Lag, StoreError> {
        self.readers
            .run(|conn| {
                let (count, oldest): (i64, Option<String>) = conn
                    .prepare_cached("SELECT count(*), min(created_at) FROM outbox")
                    .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
                    .map_err(error)?;
                let oldest = oldest.as_deref().map(parse_time).transpose()?;
                Ok(Lag { count: count as u64, oldest_age: events::age(oldest) })
            })
            .await
    }
}
