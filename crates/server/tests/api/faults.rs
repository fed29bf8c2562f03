//! The database going away and coming back (issue: faults). A throwaway PostgreSQL cluster, made with
//! initdb in a temporary folder, is stopped under the service and started again:
//! - while it is down every write answers 503 `BACKEND_UNAVAILABLE` with `Retry-After`, and
//!   `/health/ready` is 503;
//! - whatever was acknowledged is there afterwards, and nothing is half done;
//! - when it is back the service recovers by itself, without a restart.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use futures::future::join_all;
use integration_service::config::StoreUrl;
use serde_json::{json, Value};

use crate::helpers::*;

/// A PostgreSQL cluster of the test's own, in a temporary folder.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

fn pg_bindir() -> PathBuf {
    let out =
        Command::new("pg_config").arg("--bindir").output().expect("pg_config (PostgreSQL server binaries) is required");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false)
}

impl Cluster {
    /// PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user.
    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn create() -> Cluster {
        let dir = tempfile::Builder::new().prefix("crm-pg-").tempdir().unwrap();
        if is_root() {
            assert!(Command::new("chown").args(["postgres:postgres"]).arg(dir.path()).status().unwrap().success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cluster = Cluster { bin: pg_bindir(), dir, port };
        let out = cluster
            .command("initdb")
            .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
            .arg(cluster.data())
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        cluster.start();
        cluster
    }

    fn start(&self) {
        let opts =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.path().display());
        let log = self.dir.path().join("log");
        let out = self
            .command("pg_ctl")
            .args(["-w", "-t", "30", "-o", &opts, "-l"])
            .arg(&log)
            .arg("-D")
            .arg(self.data())
            .arg("start")
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Stops at once, as a crash or a failover would: connections are cut mid-transaction.
    fn crash(&self) {
        let out =
            self.command("pg_ctl").args(["-w", "-m", "immediate", "-D"]).arg(self.data()).arg("stop").output().unwrap();
        assert!(out.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").args(["-m", "immediate", "-D"]).arg(self.data()).arg("stop").output();
    }
}

async fn ready_status(app: &TestApp) -> u16 {
    app.get("/health/ready").await.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_going_away_and_coming_back() {
    let cluster = Cluster::create();
    assert!(cluster.data().join("PG_VERSION").exists());
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&cluster.url("postgres")).await.unwrap();
    sqlx::query("CREATE DATABASE crm").execute(&mut admin).await.unwrap();
    drop(admin);
    let store = StoreUrl::Postgres(cluster.url("crm"));
    let app = spawn_with(Backend::Sqlite, |s| {
        s.store = store;
        s.postgres_acquire_timeout = Duration::from_millis(800);
    })
    .await;
    let (status, first) = app.create(&ntb("F1", "CARD", "RM001")).await;
    assert_eq!(status, 201);
    assert_eq!(ready_status(&app).await, 200);

    // A burst of competing writes, provably in flight when the database crashes: the customer's lock is
    // held elsewhere, so they are all waiting inside the service.
    let lock = hold_key(&cluster.url("crm"), "F2/CARD").await;
    let bodies: Vec<Value> = (0..12).map(|i| ntb("F2", "CARD", &format!("RM{}", i % 4))).collect();
    let others: Vec<Value> = (0..12).map(|i| ntb(&format!("F3-{i}"), "CARD", "RM001")).collect();
    let burst = join_all(bodies.iter().chain(others.iter()).map(|b| app.create(b)));
    let crash = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        cluster.crash();
    };
    let (answers, ()) = tokio::join!(burst, crash);
    drop(lock);
    for (status, body) in &answers {
        assert!(matches!(status.as_u16(), 200 | 201 | 503), "{status} {body}");
    }
    let blocked = &answers[..bodies.len()];
    assert!(blocked.iter().all(|(s, _)| *s == 503), "the waiting writes failed cleanly: {blocked:?}");
    for (_, body) in blocked {
        assert_eq!(body["code"], "BACKEND_UNAVAILABLE");
    }

    // Down: writes and reads are 503 with Retry-After, and readiness says so.
    let r = app.post(CREATE, &ntb("F1", "CARD", "RM002")).await;
    assert!(r.headers().contains_key("retry-after"));
    let p = problem(r, 503, "BACKEND_UNAVAILABLE").await;
    assert!(!p["detail"].as_str().unwrap().contains("postgres"), "no internals: {p}");
    let r = app.post(SEARCH, &json!({"idNumber": "F1"})).await;
    problem(r, 503, "BACKEND_UNAVAILABLE").await;
    assert_eq!(ready_status(&app).await, 503);

    // Back: the same process recovers by itself.
    cluster.start();
    let mut recovered = false;
    for _ in 0..50 {
        if ready_status(&app).await == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "ready again without a restart");
    let (status, replaced) = app.create(&ntb("F1", "CARD", "RM002")).await;
    assert_eq!((status.as_u16(), &replaced["result"]), (201, &json!("REPLACED")));
    assert_eq!(replaced["closedRecordIds"], json!([first["id"]]));

    // Nothing acknowledged was lost, nothing is half done.
    assert_eq!(app.search("F2").await["leads"], json!([]), "none of the failed writes left anything");
    for (status, body) in &answers[bodies.len()..] {
        if status.is_success() {
            let id = body["id"].as_str().unwrap();
            assert_eq!(app.record("leads", id).await["status"], "New Lead", "acknowledged {id} is there");
        }
    }
    let leads = app.search("F1").await["leads"].as_array().unwrap().clone();
    let open: Vec<_> = leads.iter().filter(|l| l["status"] == "New Lead").collect();
    assert_eq!(open.len(), 1, "{leads:?}");
    for lead in &leads {
        let full = app.record("leads", lead["id"].as_str().unwrap()).await;
        let history = full["history"].as_array().unwrap();
        assert_eq!(history.last().unwrap()["to"], full["status"], "history complete for {full}");
    }
    app.stop().await;
}
