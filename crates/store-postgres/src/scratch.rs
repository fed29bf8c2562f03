//! Throwaway databases, for the test suites and the replica check: each gets a fresh database on the
//! server named by `CRM_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`), dropped
//! when the guard goes. An unreachable server is a loud failure, never a skip.

use sqlx::{Connection, PgConnection};

/// The administrative URL used to create and drop scratch databases.
pub fn admin_url() -> String {
    std::env::var("CRM_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, empty database, dropped (with its connections) on drop.
pub struct ScratchDb {
    admin: String,
    pub name: String,
    pub url: String,
    keep: bool,
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[after_scheme..].find('/') {
        Some(slash) => &base[..after_scheme + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

impl ScratchDb {
    /// Creates the database. Panics, naming the server, when PostgreSQL cannot be reached.
    pub async fn create(prefix: &str) -> Self {
        let admin = admin_url();
        let name = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is required for these tests and is not reachable at {admin} (set CRM_TEST_POSTGRES_URL): {e}")
        });
        sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut conn).await.expect("CREATE DATABASE");
        let _ = conn.close().await;
        let url = with_database(&admin, &name);
        Self { admin, name, url, keep: false }
    }

    /// Leaves the database in place after the guard goes (for inspection).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs outside any runtime guarantee: use a thread with its own small runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_names_replace_the_path() {
        assert_eq!(super::with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(super::with_database("postgres://u@h:5432", "x"), "postgres://u@h:5432/x");
        assert_eq!(super::with_database("postgres://u@h/db?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
    }
}
