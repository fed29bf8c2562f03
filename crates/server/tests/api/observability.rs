//! `/metrics`, load shedding and the per-channel rate limit, through HTTP.

use std::io::Write;
use std::num::NonZeroU32;
use std::time::Duration;

use crate::helpers::*;

/// The value of one series in the Prometheus text, 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_outcomes_and_store_calls() {
    let app = spawn_app().await;
    let requests = format!("http_requests_total{{method=\"POST\",route=\"{CREATE}\",status=\"201\"}}");
    let created = "crm_lifecycle_outcomes_total{operation=\"create\",result=\"CREATED\",record_type=\"LEAD\"}";
    let store = "crm_store_duration_seconds_count{operation=\"create\",outcome=\"ok\"}";
    let before = app.get("/metrics").await.text().await.unwrap();
    let (status, _) = app.create(&ntb("M1", "CARD", "RM001")).await;
    assert_eq!(status, 201);
    let r = app.get("/metrics").await;
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let after = r.text().await.unwrap();
    for series in [requests.as_str(), created, store] {
        assert!(value(&after, series) >= value(&before, series) + 1.0, "{series} did not grow:\n{after}");
    }
    assert!(after.contains("http_request_duration_seconds_bucket{"), "latency histogram");
    assert!(!after.contains("M1"), "no personal data in labels");
    // The route label is the template, never the raw path with an id in it.
    app.get(&format!("{INT}/leads/some-id")).await;
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(text.contains("route=\"/integration-service/int/api/crm/v1/leads/{id}\""), "{text}");
    assert!(!text.contains("some-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_in_flight_bound_are_shed_at_once() {
    let app = spawn_app_with(|s| s.max_in_flight = 1).await;
    // One request holds the only permit: its body is still on the way.
    let mut slow = std::net::TcpStream::connect(app.base.trim_start_matches("http://")).unwrap();
    write!(slow, "POST {CREATE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{{")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = app.post(CREATE, &ntb("M2", "CARD", "RM001")).await;
    assert_eq!(r.headers()["retry-after"], "1");
    problem(r, 503, "OVERLOADED").await;
    // The orchestrator's endpoints still answer: an overloaded replica is not a dead one.
    for path in ["/health/live", "/health/ready", "/metrics"] {
        assert_eq!(app.get(path).await.status(), 200, "{path}");
    }
    // The waiting request counts among those in flight (the gauge is the process's, shared with the tests
    // running beside this one, so only its lower bound is known).
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(value(&text, "http_requests_in_flight") >= 1.0, "{text}");
    drop(slow);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = app.create(&ntb("M2", "CARD", "RM001")).await;
    assert_eq!(status, 201, "the permit came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_over_its_rate_gets_429() {
    let app = spawn_app_with(|s| s.rate_limit = Some((NonZeroU32::new(1).unwrap(), NonZeroU32::new(2).unwrap()))).await;
    let body = ntb("M3", "CARD", "RM001");
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..4 {
        let r = app.post(CREATE, &body).await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            limited = Some(r);
        }
    }
    assert_eq!(&statuses[..2], &[201, 200], "the burst is allowed: {statuses:?}");
    let r = limited.expect("rate limited");
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait));
    problem(r, 429, "RATE_LIMITED").await;
    // Operations endpoints are not limited.
    assert_eq!(app.get("/health/live").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_batch_run_again_is_counted_and_keeps_nothing_of_the_failed_request() {
    let app = spawn(Backend::Sqlite).await;
    let integration_service::config::StoreUrl::Sqlite(path) = &app.settings.store else { unreachable!() };
    // The database refuses the first history row of one owner's records, after the record itself is in:
    // the request fails having written, so its batch runs again job by job.
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON history
             WHEN NEW.from_status IS NULL AND (SELECT owner_id FROM records WHERE id = NEW.record_id) = 'RM666'
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .unwrap();
    let series = "crm_sqlite_batch_reruns_total";
    let before = value(&app.get("/metrics").await.text().await.unwrap(), series);
    let (status, _) = app.create(&ntb("RR1", "CARD", "RM666")).await;
    assert_ne!(status, 201, "the refused record was not created");
    let after = value(&app.get("/metrics").await.text().await.unwrap(), series);
    assert!(after >= before + 1.0, "{series}: {before} then {after}");
    let found = app.search("RR1").await;
    assert_eq!(found["leads"], serde_json::json!([]), "nothing of the refused request remains: {found}");
    let (status, _) = app.create(&ntb("RR2", "CARD", "RM001")).await;
    assert_eq!(status, 201, "other owners' records are still written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_batch_that_falls_back_is_counted() {
    let app = spawn(Backend::Postgres).await;
    let integration_service::config::StoreUrl::Postgres(url) = &app.settings.store else { unreachable!() };
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    // A rule a DBA might add: the database refuses every record of one owner, so the batch holding such a
    // request fails before its commit and each of its requests runs again alone.
    for sql in [
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$",
        "CREATE TRIGGER refuse BEFORE INSERT ON records FOR EACH ROW WHEN (NEW.owner_id = 'RM666')
         EXECUTE FUNCTION refuse()",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let series = "crm_postgres_batch_fallbacks_total";
    let before = value(&app.get("/metrics").await.text().await.unwrap(), series);
    let (status, _) = app.create(&ntb("FB1", "CARD", "RM666")).await;
    assert_ne!(status, 201, "the refused record was not created");
    let after = value(&app.get("/metrics").await.text().await.unwrap(), series);
    assert!(after >= before + 1.0, "{series}: {before} then {after}");
    let (status, _) = app.create(&ntb("FB2", "CARD", "RM001")).await;
    assert_eq!(status, 201, "other owners' records are still written");
}
