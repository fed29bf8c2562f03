//! Migrations embedded in the binary, tracked with SQLite's `user_version`.

use std::path::Path;

use lifecycle::Matching;
use rusqlite::{Connection, TransactionBehavior};

use crate::OpenError;

/// Every migration, in order; the position (from 1) is the schema version it brings the database to.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_records", include_str!("../migrations/0001_records.sql")),
    ("0002_idempotency", include_str!("../migrations/0002_idempotency.sql")),
    ("0003_sidecar", include_str!("../migrations/0003_sidecar.sql")),
    ("0004_idempotency_holder", include_str!("../migrations/0004_idempotency_holder.sql")),
    ("0005_outbox", include_str!("../migrations/0005_outbox.sql")),
    ("0006_report_indexes", include_str!("../migrations/0006_report_indexes.sql")),
    ("0007_id_number_case", include_str!("../migrations/0007_id_number_case.sql")),
    ("0008_report_rollups", include_str!("../migrations/0008_report_rollups.sql")),
    ("0009_drop_key_creation_index", include_str!("../migrations/0009_drop_key_creation_index.sql")),
];

pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<usize, OpenError> {
    let err = |source| OpenError::Migrate { path: path.to_owned(), source };
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
    let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(err)?;
    let known = MIGRATIONS.len() as i64;
    if current > known || current < 0 {
        return Err(OpenError::TooNew { path: path.to_owned(), found: current, known });
    }
    for (_, sql) in &MIGRATIONS[current as usize..] {
        tx.execute_batch(sql).map_err(err)?;
    }
    tx.pragma_update(None, "user_version", known).map_err(err)?;
    tx.commit().map_err(err)?;
    Ok((known - current) as usize)
}

/// The matching mode decides which key the unique index guards, so it is fixed when the store is created.
pub(crate) fn check_matching(conn: &Connection, path: &Path, matching: Matching) -> Result<(), OpenError> {
    let err = |source| OpenError::Migrate { path: path.to_owned(), source };
    // Insert-if-absent then read, so two processes creating the store at once agree on one value.
    conn.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('matching', ?1)", [matching.as_str()])
        .map_err(err)?;
    let stored: String =
        conn.query_row("SELECT value FROM meta WHERE name = 'matching'", [], |r| r.get(0)).map_err(err)?;
    if stored == matching.as_str() {
        Ok(())
    } else {
        Err(OpenError::MatchingChanged { path: path.to_owned(), stored, configured: matching.as_str() })
    }
}
