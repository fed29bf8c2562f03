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
    ("0010_checks_without_in_lists", include_str!("../migrations/0010_checks_without_in_lists.sql")),
    ("0011_history_counts_in_writer", include_str!("../migrations/0011_history_counts_in_writer.sql")),
];

/// A migration that rewrites a CREATE statement in `sqlite_schema` itself (SQLite's procedure for a change
/// that leaves every stored row as it is) says so; the runner then increments the schema version, as that
/// procedure requires, so that every other connection reads the schema again. The connection that migrated
/// does not (it holds the new version already), so [`crate::SqliteStore::open`] opens a new one after it.
const WRITES_SCHEMA: &str = "PRAGMA writable_schema = ON";

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
        if sql.contains(WRITES_SCHEMA) {
            let version: i64 = tx.query_row("PRAGMA schema_version", [], |r| r.get(0)).map_err(err)?;
            tx.pragma_update(None, "schema_version", version + 1).map_err(err)?;
        }
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

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    /// How many temporary B-trees a statement opens, by `EXPLAIN`.
    fn ephemeral_tables(conn: &Connection, sql: &str) -> usize {
        let mut explain = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
        let ops: Vec<String> = explain.query_map([], |r| r.get(1)).unwrap().collect::<Result<_, _>>().unwrap();
        ops.iter().filter(|op| *op == "OpenEphemeral").count()
    }

    /// Migration 0010: the CHECK rules are checked without a temporary B-tree, and the status rule still
    /// refuses every status the record's type does not have.
    #[test]
    fn the_status_rule_needs_no_temporary_table_and_refuses_what_it_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crm.db");
        let mut conn = Connection::open(&path).unwrap();
        super::migrate(&mut conn, &path).unwrap();
        let update = "UPDATE records SET status = 'Close Won', updated_at = 'x' WHERE id = 'a'";
        let insert = "INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number,
                          product, channel, created_at, updated_at)
                      VALUES (?1, ?2, ?3, ?1, 'RM1', 'NTB', 'N1', 'CARD', 'C', 't', 't')";
        // An insert of a row into `table` (`EXPLAIN` only: every column NULL).
        let insert_into = |conn: &Connection, table: &str| -> String {
            let n: usize = conn
                .query_row("SELECT count(*) FROM pragma_table_info(?1)", [table], |r| r.get::<_, i64>(0))
                .unwrap() as usize;
            format!("INSERT INTO {table} VALUES ({})", vec!["NULL"; n].join(", "))
        };
        // The connection that migrated keeps the schema it had read (it wrote the new version itself), so the
        // store opens its writer's connection anew after migrating.
        drop(conn);
        let conn = Connection::open(&path).unwrap();
        {
            let c = &conn;
            let literal = insert.replace("?1", "'x'").replace("?2", "'LEAD'").replace("?3", "'x'");
            let (claim, audit) = (insert_into(c, "idempotency_keys"), insert_into(c, "audit"));
            for sql in [update, literal.as_str(), &claim, &audit] {
                assert_eq!(ephemeral_tables(c, sql), 0, "{sql}");
            }
        }
        let tables: String = conn
            .query_row("SELECT group_concat(sql, ';') FROM sqlite_schema WHERE type = 'table'", [], |r| r.get(0))
            .unwrap();
        assert!(!tables.contains(" IN ("), "a CHECK with a list is left: {tables}");
        let statuses = ["New Lead", "New Opportunity", "Close Won", "Close Lost", "new lead", "Closed", ""];
        for (n, record_type) in ["LEAD", "OPPORTUNITY"].into_iter().enumerate() {
            for (m, status) in statuses.into_iter().enumerate() {
                let allowed = match status {
                    "New Lead" => record_type == "LEAD",
                    "New Opportunity" => record_type == "OPPORTUNITY",
                    "Close Won" | "Close Lost" => true,
                    _ => false,
                };
                let stored = conn.execute(insert, [format!("r{n}{m}").as_str(), record_type, status]);
                assert_eq!(stored.is_ok(), allowed, "{record_type} {status:?}: {stored:?}");
            }
        }
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
    }
}
