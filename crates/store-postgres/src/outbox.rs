//! The outbox of lifecycle events in PostgreSQL (see `store::events`): written by the operations in their
//! transaction, under the matching key's advisory lock (so a key's sequence numbers follow its commits),
//! and read by the relay through [`Outbox`]. One replica's relay holds the lease row at a time, so each
//! event is published by one replica, in the order of the outbox.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgConnection;
use store::events::{self, Change, Lag, Outbox, Pending};
use store::{RequestContext, StoreError};
use time::OffsetDateTime;

use crate::{error, PgStore};

/// Writes the events of `changes` (made at `at` on the matching key `key`): reserves the key's next
/// sequence numbers, then inserts one outbox row per change.
pub(crate) async fn write(
    conn: &mut PgConnection,
    key: &str,
    changes: &[Change],
    ctx: &RequestContext,
    at: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let n = changes.len() as i64;
    let (key_id, last): (String, i64) = sqlx::query_as(
        "INSERT INTO outbox_keys (match_key, key_id, last_sequence) VALUES ($1, $2, $3)
         ON CONFLICT (match_key) DO UPDATE SET last_sequence = outbox_keys.last_sequence + $3
         RETURNING key_id, last_sequence",
    )
    .bind(key)
    .bind(events::new_key_id())
    .bind(n)
    .fetch_one(&mut *conn)
    .await?;
    insert(conn, &events::render(changes, ctx, at, &key_id, last - n + 1)).await
}

/// The events of a batch of writes (see `batch`): for each write, its matching key, its changes, its
/// request and its time, in the order the writes ran. One statement reserves every key's sequence numbers,
/// one inserts every event.
pub(crate) async fn write_batch(
    conn: &mut PgConnection,
    writes: &[(String, Vec<Change>, &RequestContext, OffsetDateTime)],
) -> Result<(), sqlx::Error> {
    // Each key once (a key may be written twice in a batch), with how many events it takes.
    let mut keys: Vec<&str> = Vec::new();
    let mut counts: Vec<i64> = Vec::new();
    for (key, changes, _, _) in writes.iter().filter(|w| !w.1.is_empty()) {
        match keys.iter().position(|k| k == key) {
            Some(i) => counts[i] += changes.len() as i64,
            None => {
                keys.push(key);
                counts.push(changes.len() as i64);
            }
        }
    }
    if keys.is_empty() {
        return Ok(());
    }
    let fresh: Vec<String> = keys.iter().map(|_| events::new_key_id()).collect();
    let reserved: Vec<(String, String, i64)> = sqlx::query_as(
        "INSERT INTO outbox_keys (match_key, key_id, last_sequence)
         SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])
         ON CONFLICT (match_key) DO UPDATE SET last_sequence = outbox_keys.last_sequence + excluded.last_sequence
         RETURNING match_key, key_id, last_sequence",
    )
    .bind(&keys)
    .bind(&fresh)
    .bind(&counts)
    .fetch_all(&mut *conn)
    .await?;
    // Each key's next number: the first of the ones just reserved.
    let mut next: std::collections::HashMap<String, (String, i64)> = reserved
        .into_iter()
        .map(|(key, key_id, last)| {
            let count = keys.iter().position(|k| *k == key).map_or(0, |i| counts[i]);
            (key, (key_id, last - count + 1))
        })
        .collect();
    let mut rendered = Vec::new();
    for (key, changes, ctx, at) in writes.iter().filter(|w| !w.1.is_empty()) {
        let Some((key_id, first)) = next.get_mut(key) else {
            return Err(sqlx::Error::Protocol("an outbox key was not reserved".into()));
        };
        rendered.extend(events::render(changes, ctx, *at, key_id, *first));
        *first += changes.len() as i64;
    }
    insert(conn, &rendered).await
}

/// Inserts rendered events in one statement; `WITH ORDINALITY` keeps their order in the outbox.
async fn insert(conn: &mut PgConnection, rendered: &[events::Event]) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = rendered.iter().map(|e| e.id.as_str()).collect();
    let subjects: Vec<&str> = rendered.iter().map(|e| e.subject.as_str()).collect();
    let bodies: Vec<&str> = rendered.iter().map(|e| e.body.as_str()).collect();
    sqlx::query(
        "INSERT INTO outbox (event_id, subject, body)
         SELECT id, subject, body FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY
             AS e (id, subject, body, n)
         ORDER BY n",
    )
    .bind(&ids)
    .bind(&subjects)
    .bind(&bodies)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[async_trait]
impl Outbox for PgStore {
    async fn lease_relay(&self, holder: &str, lease: Duration) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO outbox_relay (id, holder, until) VALUES (1, $1, clock_timestamp() + $2 * interval '1 millisecond')
             ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, until = excluded.until
             WHERE outbox_relay.holder = excluded.holder OR outbox_relay.until <= clock_timestamp()",
        )
        .bind(holder)
        .bind(lease.as_millis() as f64)
        .execute(self.pool())
        .await
        .map_err(error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn pending(&self, limit: usize) -> Result<Vec<Pending>, StoreError> {
        let rows: Vec<(i64, String, String, String)> =
            sqlx::query_as("SELECT position, event_id, subject, body FROM outbox ORDER BY position LIMIT $1")
                .bind(limit as i64)
                .fetch_all(self.pool())
                .await
                .map_err(error)?;
        Ok(rows
            .into_iter()
            .map(|(position, id, subject, body)| Pending { position, event: events::Event { id, subject, body } })
            .collect())
    }

    async fn delivered(&self, positions: &[i64]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM outbox WHERE position = ANY($1)")
            .bind(positions)
            .execute(self.pool())
            .await
            .map_err(error)?;
        Ok(())
    }

    async fn lag(&self) -> Result<Lag, StoreError> {
        let (count, oldest): (i64, Option<OffsetDateTime>) =
            sqlx::query_as("SELECT count(*), min(created_at) FROM outbox")
                .fetch_one(self.pool())
                .await
                .map_err(error)?;
        Ok(Lag { count: count as u64, oldest_age: events::age(oldest) })
    }
}
