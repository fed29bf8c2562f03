//! Bulk pre-loading: `n` open records written straight into a migrated store, in one statement each for
//! records and history, so a store of ten million records takes minutes, not hours of HTTP.
//!
//! Record `i` is `P{i:09}`; even ones are NTB leads, odd ones ETB opportunities, all open and owned by
//! `RM001`, each on its own matching key `PK{i:09}/CARD`. The mix (`mix.lua`) knows this layout.

const SQLITE: &str = "
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1)
INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number, cif, full_name,
                     phone, email, product, channel, journey_id, created_at, updated_at)
SELECT printf('P%09d', i),
       CASE WHEN i % 2 = 0 THEN 'LEAD' ELSE 'OPPORTUNITY' END,
       CASE WHEN i % 2 = 0 THEN 'New Lead' ELSE 'New Opportunity' END,
       printf('PK%09d/CARD', i), 'RM001',
       CASE WHEN i % 2 = 0 THEN 'NTB' ELSE 'ETB' END,
       printf('PK%09d', i),
       CASE WHEN i % 2 = 1 THEN 'CIF1' END,
       'Bench Customer', '+84901234567', 'bench@example.com', 'CARD', 'BENCH', NULL,
       '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z'
FROM n;
INSERT INTO history (record_id, from_status, to_status, at, request_id, channel, reason)
SELECT id, NULL, status, created_at, 'preload', 'BENCH', NULL FROM records WHERE channel = 'BENCH';";

const POSTGRES_RECORDS: &str = "
INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number, cif, full_name,
                     phone, email, product, channel, journey_id, created_at, updated_at)
SELECT 'P' || lpad(i::text, 9, '0'),
       CASE WHEN i % 2 = 0 THEN 'LEAD' ELSE 'OPPORTUNITY' END,
       CASE WHEN i % 2 = 0 THEN 'New Lead' ELSE 'New Opportunity' END,
       'PK' || lpad(i::text, 9, '0') || '/CARD', 'RM001',
       CASE WHEN i % 2 = 0 THEN 'NTB' ELSE 'ETB' END,
       'PK' || lpad(i::text, 9, '0'),
       CASE WHEN i % 2 = 1 THEN 'CIF1' END,
       'Bench Customer', '+84901234567', 'bench@example.com', 'CARD', 'BENCH', NULL, now(), now()
FROM generate_series(0, $1 - 1) AS i";

const POSTGRES_HISTORY: &str = "
INSERT INTO history (record_id, from_status, to_status, at, request_id, channel, reason)
SELECT id, NULL, status, created_at, 'preload', 'BENCH', NULL FROM records WHERE channel = 'BENCH'";

pub async fn run(url: &str, n: u64) -> Result<(), Box<dyn std::error::Error>> {
    if n == 0 {
        return Ok(());
    }
    if let Some(path) = url.strip_prefix("sqlite://") {
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; BEGIN;")?;
        let mut statements = SQLITE.split_inclusive(';');
        let records = statements.next().ok_or("no statement")?;
        conn.execute(records, [n as i64])?;
        for rest in statements {
            conn.execute_batch(rest)?;
        }
        // No ANALYZE: the service never runs it, so a store filled through the API has no statistics, and
        // with them (SQLite's STAT4 samples) the create's read by key is re-prepared on every run.
        conn.execute_batch("COMMIT;")?;
        return Ok(());
    }
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query(POSTGRES_RECORDS).bind(n as i64).execute(&mut conn).await?;
    sqlx::query(POSTGRES_HISTORY).execute(&mut conn).await?;
    // What an operator does after a bulk load, so the measurement sees the steady state rather than the
    // load's aftermath: autovacuum's pass over millions of freshly inserted rows, hint bits set on first
    // reads, and the checkpoint the load's WAL would trigger.
    sqlx::query("VACUUM (ANALYZE)").execute(&mut conn).await?;
    if let Err(e) = sqlx::query("CHECKPOINT").execute(&mut conn).await {
        eprintln!("preload: no CHECKPOINT ({e}); the load's checkpoint may fall in the measurement");
    }
    conn.close().await?;
    Ok(())
}
