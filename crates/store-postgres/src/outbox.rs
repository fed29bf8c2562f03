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
    let rendered = events::render(changes, ctx, at, &key_id, last - n + 1);
    let ids: Vec<&str> = rendered.iter().map(|e| e.id.as_str()).collect();
    let subjects: Vec<&str> = rendered.iter().map(|e| e.subject.as_str()).collect();
    let bodies: Vec<&str> = rendered.iter().map(|e| e.body.as_str()).collect();
    // One statement for all of them; `WITH ORDINALITY` keeps their order in the outbox.
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
