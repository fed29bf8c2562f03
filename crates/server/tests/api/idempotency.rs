//! `Idempotency-Key` (SPEC §4) through HTTP, on both backends, across restarts and replicas.

use std::time::Duration;

use futures::future::join_all;
use reqwest::Response;
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

async fn parts(r: Response) -> (u16, Option<String>, Option<String>, String) {
    let status = r.status().as_u16();
    let replayed = r.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap().to_owned());
    let location = r.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
    (status, replayed, location, r.text().await.unwrap())
}

both_backends! {
    async fn a_repeat_replays_the_first_response_and_changes_nothing(app: TestApp) {
        let body = ntb("I1", "CARD", "RM001");
        let (s1, r1, l1, b1) = parts(app.post_key(CREATE, "key-1", &body).await).await;
        assert_eq!((s1, r1.as_deref()), (201, None));
        // The same document with other key order and spacing is the same request.
        let reordered = serde_json::to_string_pretty(&json!({
            "journeyId": body["journeyId"], "channel": body["channel"], "ownerId": body["ownerId"],
            "product": body["product"], "customer": body["customer"], "customerType": body["customerType"]
        })).unwrap();
        let r = app.client.post(format!("{}{CREATE}", app.base)).header("idempotency-key", "key-1")
            .header("content-type", "application/json").body(reordered).send().await.unwrap();
        let (s2, r2, l2, b2) = parts(r).await;
        assert_eq!((s2, r2.as_deref(), &l2, &b2), (201, Some("true"), &l1, &b1), "byte for byte");
        assert_eq!(app.search("I1").await["leads"].as_array().unwrap().len(), 1);
        // Without the key the same request is simply EXISTING: the replay above was not a re-run.
        let (s3, _) = app.create(&body).await;
        assert_eq!(s3, 200);

        // Errors are answers too: a 404 is replayed as well.
        let lost = json!({"leadId": "missing", "status": "Close Lost", "channel": "C"});
        let (s, _, _, first) = parts(app.post_key(LOST_LEAD, "key-404", &lost).await).await;
        assert_eq!(s, 404);
        let (s, replayed, _, again) = parts(app.post_key(LOST_LEAD, "key-404", &lost).await).await;
        assert_eq!((s, replayed.as_deref(), again), (404, Some("true"), first));
    }

    async fn a_key_reused_for_another_request_is_422(app: TestApp) {
        let body = ntb("I2", "CARD", "RM001");
        assert_eq!(app.post_key(CREATE, "key-2", &body).await.status(), 201);
        let other = ntb("I2", "CARD", "RM002");
        let p = problem(app.post_key(CREATE, "key-2", &other).await, 422, "IDEMPOTENCY_KEY_REUSED").await;
        assert!(p["detail"].as_str().unwrap().contains("different request"));
        // Same body on another path is another request too.
        problem(app.post_key(SEARCH, "key-2", &body).await, 422, "IDEMPOTENCY_KEY_REUSED").await;
        // Nothing changed: RM001's lead is still the open one.
        let leads = app.search("I2").await["leads"].clone();
        assert_eq!(leads.as_array().unwrap().len(), 1);
        assert_eq!(leads[0]["ownerId"], "RM001");
    }

    async fn replays_survive_a_restart(app: TestApp) {
        let body = etb("I3", "LOAN", "RM001");
        let (s, _, _, first) = parts(app.post_key(CREATE, "key-3", &body).await).await;
        assert_eq!(s, 201);
        let app = app.restart().await;
        let (s, replayed, _, again) = parts(app.post_key(CREATE, "key-3", &body).await).await;
        assert_eq!((s, replayed.as_deref(), again), (201, Some("true"), first));
        app.stop().await;
    }

    async fn bad_keys_are_refused(app: TestApp) {
        let body = ntb("I4", "CARD", "RM001");
        for key in ["", &"k".repeat(256)] {
            let p = problem(app.post_key(CREATE, key, &body).await, 422, "VALIDATION_FAILED").await;
            assert_eq!(fields(&p), ["Idempotency-Key"]);
        }
        let r = app.client.post(format!("{}{CREATE}", app.base))
            .header("idempotency-key", reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap())
            .json(&body).send().await.unwrap();
        problem(r, 422, "VALIDATION_FAILED").await;
        assert_eq!(app.search("I4").await["leads"], json!([]), "nothing was created");
        assert_eq!(app.post_key(CREATE, &"k".repeat(255), &body).await.status(), 201);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_expire_after_the_configured_time() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = spawn_with(backend, |s| s.idempotency_ttl = Duration::from_secs(1)).await;
        assert_eq!(app.post_key(CREATE, "key-5", &ntb("I5", "CARD", "RM001")).await.status(), 201);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Expired: the key is free, so a different request with it runs.
        let (s, replayed, _, body) = parts(app.post_key(CREATE, "key-5", &ntb("I5", "CARD", "RM002")).await).await;
        assert_eq!((s, replayed), (201, None), "{backend:?}: {body}");
        assert!(body.contains("REPLACED"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeat_while_the_first_runs_is_409_in_use() {
    let app = spawn(Backend::Postgres).await;
    let url = app.postgres_url().unwrap();
    let lock = hold_key(&url, "IU1/CARD").await;
    let body = ntb("IU1", "CARD", "RM001");
    let first = {
        let (client, base, body) = (app.client.clone(), app.base.clone(), body.clone());
        tokio::spawn(async move {
            client.post(format!("{base}{CREATE}")).header("idempotency-key", "key-iu").json(&body).send().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = app.post_key(CREATE, "key-iu", &body).await;
    assert_eq!(r.headers()["retry-after"], "1");
    problem(r, 409, "IDEMPOTENCY_KEY_IN_USE").await;
    sqlx::Connection::close(lock).await.unwrap();
    let (s, replayed, _, first_body) = parts(first.await.unwrap()).await;
    assert_eq!((s, replayed), (201, None));
    let (s, replayed, _, again) = parts(app.post_key(CREATE, "key-iu", &body).await).await;
    assert_eq!((s, replayed.as_deref(), again), (201, Some("true"), first_body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_gives_up_still_gets_the_replay() {
    let app = spawn(Backend::Postgres).await;
    let lock = hold_key(&app.postgres_url().unwrap(), "IG1/CARD").await;
    let body = ntb("IG1", "CARD", "RM001");
    // The client gives up while the create waits for the customer's lock.
    let gave_up = app
        .client
        .post(format!("{}{CREATE}", app.base))
        .header("idempotency-key", "key-gave-up")
        .timeout(Duration::from_millis(300))
        .json(&body)
        .send()
        .await;
    assert!(gave_up.is_err(), "the client timed out");
    sqlx::Connection::close(lock).await.unwrap();
    // The request ran to the end anyway and its answer was kept: the retry replays it.
    let mut answer = None;
    for _ in 0..50 {
        let (s, replayed, _, text) = parts(app.post_key(CREATE, "key-gave-up", &body).await).await;
        if s != 409 {
            answer = Some((s, replayed, text));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, replayed, text) = answer.expect("the first run finished");
    assert_eq!((s, replayed.as_deref()), (201, Some("true")), "{text}");
    assert!(text.contains("CREATED"));
    assert_eq!(app.search("IG1").await["leads"].as_array().unwrap().len(), 1);
}

both_backends! {
    // Two replicas on one database (for SQLite, two writers on one file, as two processes would be).
    async fn two_replicas_racing_on_one_key_run_it_once(a: TestApp) {
        let b = a.replica().await;
        let body = ntb("IR1", "CARD", "RM001");
        let calls = (0..30).map(|i| {
            let app = if i % 2 == 0 { &a } else { &b };
            app.post_key(CREATE, "key-race", &body)
        });
        let answers = join_all(calls).await;
        let mut ran = 0;
        let mut bodies = Vec::new();
        for r in answers {
            let (s, replayed, _, text) = parts(r).await;
            match (s, replayed.as_deref()) {
                (201, None) => ran += 1,
                (201, Some("true")) => bodies.push(text),
                (409, None) => assert!(text.contains("IDEMPOTENCY_KEY_IN_USE"), "{text}"),
                other => panic!("unexpected answer {other:?}: {text}"),
            }
        }
        assert_eq!(ran, 1, "exactly one replica ran the request");
        assert_eq!(a.search("IR1").await["leads"].as_array().unwrap().len(), 1);
        // Whoever asks afterwards, on either replica, gets the one response.
        let (_, _, _, from_a) = parts(a.post_key(CREATE, "key-race", &body).await).await;
        let (_, replayed, _, from_b) = parts(b.post_key(CREATE, "key-race", &body).await).await;
        assert_eq!((from_a.clone(), replayed.as_deref()), (from_b, Some("true")));
        let v: Value = serde_json::from_str(&from_a).unwrap();
        assert_eq!(v["result"], "CREATED");
        assert!(bodies.iter().all(|b| *b == from_a));
    }
}

/// Everything a replay must repeat: status, `Content-Type`, `Location` and the body's bytes.
async fn exact(r: Response) -> (u16, Option<String>, Option<String>, Vec<u8>, Option<String>) {
    let header = |name: &str| r.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let (content_type, location, replayed) =
        (header("content-type"), header("location"), header("idempotent-replayed"));
    (r.status().as_u16(), content_type, location, r.bytes().await.unwrap().to_vec(), replayed)
}

both_backends! {
    // The store records a write's answer with the write, rendered by the handler's own function: the
    // replay must be the first answer exactly, for every write and for the ones that changed nothing.
    async fn every_write_replays_its_first_answer_byte_for_byte(app: TestApp) {
        let (_, lead) = app.create(&ntb("IB1", "CARD", "RM001")).await;
        let (_, opp) = app.create(&etb("IB2", "LOAN", "RM001")).await;
        let (lead_id, opp_id) = (lead["id"].as_str().unwrap(), opp["id"].as_str().unwrap());
        let lost_opp = |reason: Option<&str>| {
            json!({"opportunityId": opp_id, "status": "Close Lost", "channel": "MOBILE_APP", "reason": reason})
        };
        let calls = [
            ("created", CREATE, ntb("IB3", "CARD", "RM001"), 201),
            ("existing", CREATE, ntb("IB1", "CARD", "RM001"), 200),
            ("replaced", CREATE, ntb("IB1", "CARD", "RM002"), 201),
            ("lost-opportunity", LOST_OPP, lost_opp(Some("NCB_REJECTED")), 200),
            ("already-lost", LOST_OPP, lost_opp(None), 200),
            ("lost-lead", LOST_LEAD, json!({"leadId": lead_id, "status": "Close Lost", "channel": "MOBILE_APP"}), 200),
        ];
        for (name, path, body, status) in calls {
            let first = exact(app.post_key(path, &format!("key-{name}"), &body).await).await;
            assert_eq!((first.0, first.4.as_deref()), (status, None), "{name}: {}", String::from_utf8_lossy(&first.3));
            assert_eq!(first.1.as_deref(), Some("application/json"), "{name}");
            let again = exact(app.post_key(path, &format!("key-{name}"), &body).await).await;
            assert_eq!(again.4.as_deref(), Some("true"), "{name}: replayed");
            assert_eq!((again.0, &again.1, &again.2, &again.3), (first.0, &first.1, &first.2, &first.3), "{name}");
            if status == 201 {
                let id = serde_json::from_slice::<Value>(&first.3).unwrap()["id"].as_str().unwrap().to_owned();
                assert!(first.2.as_deref().unwrap().ends_with(&id), "{name}: Location names the new record");
            }
        }
        // Close won: a lead converted, then the same again (no second conversion), and an opportunity.
        let (_, fresh) = app.create(&ntb("IB4", "CARD", "RM001")).await;
        let (_, fresh_opp) = app.create(&etb("IB5", "CARD", "RM001")).await;
        let calls = [
            ("won-lead", json!({"leadId": fresh["id"], "channel": "MOBILE_APP"})),
            ("already-won", json!({"leadId": fresh["id"], "channel": "MOBILE_APP", "reason": "AGAIN"})),
            ("won-opportunity", json!({"opportunityId": fresh_opp["id"], "channel": "MOBILE_APP"})),
        ];
        for (name, body) in calls {
            let first = exact(app.post_key(CLOSE_WON, &format!("key-{name}"), &body).await).await;
            assert_eq!((first.0, first.4.as_deref()), (200, None), "{name}: {}", String::from_utf8_lossy(&first.3));
            let again = exact(app.post_key(CLOSE_WON, &format!("key-{name}"), &body).await).await;
            assert_eq!(again.4.as_deref(), Some("true"), "{name}: replayed");
            assert_eq!((again.0, &again.1, &again.2, &again.3), (first.0, &first.1, &first.2, &first.3), "{name}");
        }
        let won = app.search("IB4").await;
        assert_eq!(won["opportunities"].as_array().unwrap().len(), 1, "converted once");
        // An answer the store did not record (a refusal) is still kept, by the middleware.
        let refused = json!({"leadId": fresh["id"], "status": "Close Lost", "channel": "MOBILE_APP"});
        let first = exact(app.post_key(LOST_LEAD, "key-refused", &refused).await).await;
        assert_eq!(first.0, 409);
        let again = exact(app.post_key(LOST_LEAD, "key-refused", &refused).await).await;
        assert_eq!((again.0, &again.1, &again.3, again.4.as_deref()), (409, &first.1, &first.3, Some("true")));
    }
}

/// Posts a create with `key` and returns its status (the client waits for its answer).
async fn keyed_status(app: &TestApp, key: &str, body: &Value) -> u16 {
    app.post_key(CREATE, key, body).await.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_run_is_not_repeated_by_a_retry() {
    // The run outlives its client's request timeout (408) and, many times over, the claim's lease: the lease
    // is renewed while it runs, so a retry is told the first run is still going, then gets its answer.
    let app = spawn_with(Backend::Postgres, |s| s.request_timeout = Duration::from_secs(1)).await;
    let lock = hold_key(&app.postgres_url().unwrap(), "SLOW1/CARD").await;
    let body = ntb("SLOW1", "CARD", "RM001");
    let started = std::time::Instant::now();
    assert_eq!(keyed_status(&app, "key-slow", &body).await, 408);
    // Past the lease (1 s) and past the old lease (the request timeout plus 5 s).
    tokio::time::sleep(Duration::from_secs(7).saturating_sub(started.elapsed())).await;
    let r = app.post_key(CREATE, "key-slow", &body).await;
    problem(r, 409, "IDEMPOTENCY_KEY_IN_USE").await;
    sqlx::Connection::close(lock).await.unwrap();
    let mut answer = None;
    for _ in 0..100 {
        let (s, replayed, _, text) = parts(app.post_key(CREATE, "key-slow", &body).await).await;
        if s != 409 {
            answer = Some((s, replayed, text));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, replayed, text) = answer.expect("the first run finished");
    assert_eq!((s, replayed.as_deref()), (201, Some("true")), "{text}");
    assert!(text.contains("CREATED"), "{text}");
    let leads = app.search("SLOW1").await["leads"].as_array().unwrap().len();
    assert_eq!(leads, 1, "one run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_that_goes_on_after_408_still_counts_in_flight() {
    let app = spawn_with(Backend::Postgres, |s| {
        s.request_timeout = Duration::from_secs(1);
        s.max_in_flight = 1;
    })
    .await;
    let lock = hold_key(&app.postgres_url().unwrap(), "SLOW2/CARD").await;
    assert_eq!(keyed_status(&app, "key-slow-2", &ntb("SLOW2", "CARD", "RM001")).await, 408);
    // The run goes on, holding the only place: another request is shed.
    problem(app.get(&format!("{INT}/leads/nothing")).await, 503, "OVERLOADED").await;
    sqlx::Connection::close(lock).await.unwrap();
    // Once it ends, the place is free again.
    let mut status = 0;
    for _ in 0..100 {
        status = app.get(&format!("{INT}/leads/nothing")).await.status().as_u16();
        if status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 404);
}
