//! SPEC §4: every error is problem+json with `code`, `errors` and `requestId`, and bad input changes nothing.

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

both_backends! {
    async fn malformed_json_is_400(app: TestApp) {
        for body in ["{", "not json", "{\"a\":}", "", "\u{0}", "{\"customerType\":\"NTB\",}"] {
            let r = app.post_raw(CREATE, Some("application/json"), body.to_owned()).await;
            problem(r, 400, "MALFORMED_REQUEST").await;
        }
        let r = app.post_raw(CREATE, Some("application/json"), vec![0xff, 0xfe, b'{']).await;
        problem(r, 400, "MALFORMED_REQUEST").await;
        let deep = "[".repeat(10_000);
        problem(app.post_raw(CREATE, Some("application/json"), deep).await, 400, "MALFORMED_REQUEST").await;
    }

    async fn wrong_content_type_is_415(app: TestApp) {
        let body = ntb("E1", "CARD", "RM001").to_string();
        for ct in
            [None, Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("application/json; charset=latin1")]
        {
            let r = app.post_raw(CREATE, ct, body.clone()).await;
            problem(r, 415, "UNSUPPORTED_MEDIA_TYPE").await;
        }
        let r = app.post_raw(CREATE, Some("application/json; charset=utf-8"), body).await;
        assert_eq!(r.status(), 201);
    }

    async fn bodies_over_64_kib_are_413_and_at_the_limit_are_read(app: TestApp) {
        let mut body = ntb("E2", "CARD", "RM001");
        body["padding"] = json!("");
        let base = body.to_string().len();
        body["padding"] = json!("x".repeat(64 * 1024 - base));
        let exact = body.to_string();
        assert_eq!(exact.len(), 64 * 1024);
        assert_eq!(app.post_raw(CREATE, Some("application/json"), exact).await.status(), 201);
        body["padding"] = json!("x".repeat(64 * 1024 - base + 1));
        let r = app.post_raw(CREATE, Some("application/json"), body.to_string()).await;
        problem(r, 413, "PAYLOAD_TOO_LARGE").await;
        // A declared 10 MiB body is refused from its Content-Length, before a byte of it is read.
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(app.base.trim_start_matches("http://")).unwrap();
        let head = format!(
            "POST {CREATE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            10 * 1024 * 1024
        );
        conn.write_all(head.as_bytes()).unwrap(); // one write (see `chunked_status`)
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = conn.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 413") && text.contains("PAYLOAD_TOO_LARGE"), "{text}");
    }

    async fn validation_names_every_offending_field(app: TestApp) {
        let cases: Vec<(Value, Vec<&str>)> = vec![
            (json!({}), vec!["channel", "customer", "customerType", "ownerId", "product"]),
            (json!([]), vec!["body"]),
            (json!("NTB"), vec!["body"]),
            (json!(null), vec!["body"]),
            (
                json!({"customerType": "XYZ", "customer": "me", "product": "", "ownerId": 1, "channel": [], "journeyId": 5}),
                vec!["channel", "customer", "customerType", "journeyId", "ownerId", "product"],
            ),
            (
                json!({"customerType": "ETB", "customer": {"idNumber": "12 34", "phone": "12", "email": "nope", "fullName": 3},
                    "product": "P".repeat(65), "ownerId": "RM1", "channel": "C"}),
                vec![
                    "customer.cif",
                    "customer.email",
                    "customer.fullName",
                    "customer.idNumber",
                    "customer.phone",
                    "product",
                ],
            ),
            (
                json!({"customerType": "NTB", "customer": {}, "product": "P", "ownerId": "   ", "channel": "C"}),
                vec!["customer.idNumber", "ownerId"],
            ),
            (
                json!({"customerType": "NTB", "customer": {"idNumber": "A".repeat(33)}, "product": "P", "ownerId": "R", "channel": "C\u{7}"}),
                vec!["channel", "customer.idNumber"],
            ),
        ];
        for (body, expected) in cases {
            let p = problem(app.post(CREATE, &body).await, 422, "VALIDATION_FAILED").await;
            assert_eq!(fields(&p), expected, "{body}");
            for e in p["errors"].as_array().unwrap() {
                assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
            }
        }
        // Optional fields may be null or absent.
        let (status, _) = app
            .create(&json!({"customerType": "NTB", "customer": {"idNumber": "OK1", "cif": null, "email": null},
            "product": "P", "ownerId": "R", "channel": "C", "journeyId": null}))
            .await;
        assert_eq!(status, 201);
        // Nothing was written by the refused requests.
        assert_eq!(app.search("V-1234").await, json!({"leads": [], "opportunities": []}));
        // A number out of f64's range in an ignored field is still well-formed JSON.
        let mut body = ntb("BIG1", "CARD", "RM001").to_string();
        body.insert_str(1, "\"unknown\": 1e999, ");
        assert_eq!(app.post_raw(CREATE, Some("application/json"), body).await.status(), 201);
        // A path that cannot be decoded is a 400 about the path.
        let p = problem(app.get(&format!("{INT}/leads/%FF")).await, 400, "MALFORMED_REQUEST").await;
        assert!(p["detail"].as_str().unwrap().contains("path"), "{p}");
    }

    async fn unknown_paths_and_methods_are_problems(app: TestApp) {
        problem(app.get("/nothing/here").await, 404, "NOT_FOUND").await;
        problem(app.get(CREATE).await, 405, "METHOD_NOT_ALLOWED").await;
        let r = app.client.delete(format!("{}{INT}/leads/x", app.base)).send().await.unwrap();
        problem(r, 405, "METHOD_NOT_ALLOWED").await;
    }

    async fn request_ids_are_echoed_or_generated_and_reach_the_history(app: TestApp) {
        let r = app
            .client
            .post(format!("{}{CREATE}", app.base))
            .header("x-request-id", "channel-req-42")
            .json(&ntb("E3", "CARD", "RM001"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-request-id"], "channel-req-42");
        let created: Value = r.json().await.unwrap();
        let lead = app.record("leads", created["id"].as_str().unwrap()).await;
        assert_eq!(lead["history"][0]["requestId"], "channel-req-42");

        let r = app
            .client
            .post(format!("{}{CREATE}", app.base))
            .header("x-request-id", "bad id with spaces")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let generated = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(generated, "bad id with spaces");
        assert!(!generated.is_empty());
        let p = problem(r, 422, "VALIDATION_FAILED").await;
        assert_eq!(p["requestId"], generated.as_str());

        let a = app.get("/health/live").await.headers()["x-request-id"].clone();
        let b = app.get("/health/live").await.headers()["x-request-id"].clone();
        assert_ne!(a, b, "a new id per request");
    }

}

/// Sends a request head declaring a 1000-byte body, 10 bytes of it, then hangs up its sending side, and
/// returns the status line of the answer.
fn hang_up_mid_body(app: &TestApp, key: Option<&str>) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(app.base.trim_start_matches("http://")).unwrap();
    let key = key.map(|k| format!("Idempotency-Key: {k}\r\n")).unwrap_or_default();
    write!(
        conn,
        "POST {CREATE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{key}Content-Length: 1000\r\n\r\n{{\"a\": 1, "
    )
    .unwrap();
    conn.flush().unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut text = Vec::new();
    let _ = conn.read_to_end(&mut text);
    String::from_utf8_lossy(&text).lines().next().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_is_not_too_large() {
    let app = spawn_app().await;
    for key in [None, Some("hang-up-1")] {
        let status = tokio::task::block_in_place(|| hang_up_mid_body(&app, key));
        assert!(status.starts_with("HTTP/1.1 400"), "key {key:?}: {status:?}");
    }
    // Nothing was claimed for the key: the same key runs a real request.
    let r = app.post_key(CREATE, "hang-up-1", &ntb("HANG1", "CARD", "RM001")).await;
    assert_eq!(r.status(), 201);
}

/// Sends `head` and the start of a chunked body of `size` bytes, then reads the status line of the answer.
/// (The rest is never sent: a server that decides from the head answers at once; one that reads the body
/// first answers only at its request timeout, and not 415.)
fn chunked_status(app: &TestApp, head: &str, size: usize) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(app.base.trim_start_matches("http://")).unwrap();
    // One write: pieces arriving after the service has answered and closed would make it reset the
    // connection, and the answer could be lost.
    conn.write_all(format!("{head}Transfer-Encoding: chunked\r\n\r\n{size:x}\r\nxxxx").as_bytes()).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(40))).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_owned()
}

/// Sends a head declaring `Content-Length: size` and only a few bytes of the body, then reads the whole
/// answer (head and body). A client that wrote the whole body could fail on a broken pipe: the service
/// answers such a request, and closes, without reading what it refuses.
fn declared_answer(app: &TestApp, head: &str, size: usize) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(app.base.trim_start_matches("http://")).unwrap();
    conn.write_all(format!("{head}Content-Length: {size}\r\n\r\nxxxx").as_bytes()).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(40))).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_type_is_checked_before_size_with_or_without_a_key() {
    let app = spawn_app().await;
    let big = 70 * 1024;
    for key in [None, Some("order-1")] {
        let head = |media_type: &str| {
            format!(
                "POST {CREATE} HTTP/1.1\r\nHost: x\r\nContent-Type: {media_type}\r\n{}",
                key.map(|k| format!("Idempotency-Key: {k}\r\n")).unwrap_or_default()
            )
        };
        // Declared too large (Content-Length) and not JSON: 415 first.
        let answer = tokio::task::block_in_place(|| declared_answer(&app, &head("text/plain"), big));
        assert!(answer.starts_with("HTTP/1.1 415"), "key {key:?}: {answer}");
        assert!(answer.contains("application/problem+json") && answer.contains("UNSUPPORTED_MEDIA_TYPE"), "{answer}");
        // The same without a declared length (chunked).
        let status = tokio::task::block_in_place(|| chunked_status(&app, &head("text/plain"), big));
        assert!(status.starts_with("HTTP/1.1 415"), "key {key:?}: {status}");
        // JSON but too large: 413.
        let answer = tokio::task::block_in_place(|| declared_answer(&app, &head("application/json"), big));
        assert!(answer.starts_with("HTTP/1.1 413"), "key {key:?}: {answer}");
        assert!(answer.contains("application/problem+json") && answer.contains("PAYLOAD_TOO_LARGE"), "{answer}");
    }
}
