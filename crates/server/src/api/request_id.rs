//! Request ids and the per-request log line.
//!
//! Every response carries `X-Request-Id`: the caller's if it sent a valid one (1–128 of
//! `A-Z a-z 0-9 . _ : -`), else a new UUID. The id is held in the request's task-local context
//! (`telemetry::request`) for the request's lifetime, so problem documents, history rows and every log line
//! of the request carry the same id.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;

use super::error::ApiError;
use crate::telemetry::{self, request};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn valid(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The layer of every route: assigns the id, runs the request in its context (id, method, matched route,
/// never the raw path, which may carry a record id), logs one line and counts the request in the metrics
/// when it ends, and echoes the id.
///
/// It also bounds the whole request, body reading included, by `timeout` (408 beyond it), so a stalled
/// client cannot hold a connection (or a shutdown) forever, and turns a panic below it into a 500 (logged
/// in the request's context), so a bug answers like any internal error instead of dropping the connection.
///
/// A `tower::Layer` of its own rather than `axum::middleware::from_fn`: a `from_fn` layer boxes the
/// service below it and its own future again on every request, and with one future and one task-local scope
/// for all of it, this layer runs on every request of every route at the cost of one box.
/// Panics are caught here too (`futures_util`'s `catch_unwind`) rather than by tower-http's `CatchPanic`
/// layer, which boxed every response body twice more (and axum then once again).
#[derive(Debug, Clone, Copy)]
pub struct RequestLayer {
    timeout: Duration,
}

impl RequestLayer {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> tower::Layer<S> for RequestLayer {
    type Service = RequestService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestService { inner, timeout: self.timeout }
    }
}

/// See [`RequestLayer`].
#[derive(Debug, Clone)]
pub struct RequestService<S> {
    inner: S,
    timeout: Duration,
}

impl<S> tower::Service<Request> for RequestService<S>
where
    S: tower::Service<Request, Error = Infallible>,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The caller's id when it is a valid one (its header value is then echoed as it came), else a new one.
        let given = request.headers().get(&X_REQUEST_ID).and_then(|value| {
            let id = value.to_str().ok().filter(|id| valid(id))?;
            Some((id.to_owned(), value.clone()))
        });
        let (id, header) = match given {
            Some((id, value)) => (id, Some(value)),
            None => {
                let id = new_id();
                let header = HeaderValue::from_str(&id).ok();
                (id, header)
            }
        };
        let route = request.extensions().get::<MatchedPath>().cloned();
        let context = request::Context::new(id, request.method().clone(), route);
        let line = RequestLine { context: context.clone(), started: Instant::now(), status: None };
        // The routes below do their work when polled, so all of it runs in the context set up here.
        let inner = std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request)));
        let limit = self.timeout;
        let run = async move {
            let answered = match inner {
                Ok(inner) => tokio::time::timeout(limit, AssertUnwindSafe(inner).catch_unwind()).await,
                Err(panic) => Ok(Err(panic)),
            };
            match answered {
                Ok(Ok(Ok(response))) => response.into_response(),
                Ok(Err(_)) => {
                    tracing::error!("a handler panicked");
                    ApiError::Internal.into_response()
                }
                Err(_) => {
                    tracing::warn!(timeout_ms = limit.as_millis() as u64, "request timed out");
                    ApiError::Timeout.into_response()
                }
            }
        };
        Box::pin(async move {
            let mut line = line; // the whole line, not only the field set below: it logs when dropped
            let mut response = request::scope(context, run).await;
            line.status = Some(response.status().as_u16());
            if let Some(header) = header {
                response.headers_mut().insert(X_REQUEST_ID.clone(), header);
            }
            Ok(response)
        })
    }
}

/// A new request id: a random (version 4) UUID. The random bits come from a per-thread generator seeded
/// once from the operating system, not from a `getrandom` system call per request (the profile of a busy
/// service showed that call on every request). Ids need to be unique, not secret.
fn new_id() -> String {
    let uuid = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    uuid.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).to_owned()
}

/// The request's one log line and its metrics, written when the request ends, however it ends: a client
/// that goes away mid-request drops the handler, and the line then says `cancelled` (status 499).
struct RequestLine {
    context: Arc<request::Context>,
    started: Instant,
    status: Option<u16>,
}

impl Drop for RequestLine {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let status = self.status.unwrap_or(499);
        let context = &self.context;
        let (id, method, route, channel) = (context.id(), context.method(), context.route(), context.channel());
        crate::observability::http_request(method, route, status, elapsed);
        if !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
        let latency_ms = elapsed.as_micros() as f64 / 1000.0;
        let message = if self.status.is_some() { "request completed" } else { "request cancelled by the client" };
        let line = telemetry::RequestLine { message, id, method, route, channel, status, latency_ms };
        if telemetry::write_request_line(module_path!(), &line) {
            return;
        }
        // Any other subscriber: the same line as an event. It carries the request's fields itself: it is
        // written once the request's context has ended.
        tracing::info!(request_id = id, method, route, channel, status, latency_ms, "{message}");
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use axum::extract::Request;
    use axum::response::Response;

    #[test]
    fn validity() {
        assert!(super::valid("abc-123_x.y:z"));
        assert!(!super::valid(""));
        assert!(!super::valid("has space"));
        assert!(!super::valid(&"a".repeat(129)));
        assert!(!super::valid("ünï"));
    }

    /// The layer over a service that answers with `answer` after `delay`, or panics.
    async fn through_layer(request: Request, delay: Duration, panic: bool) -> Response {
        use tower::{Layer, ServiceExt};
        let below = tower::service_fn(move |_: Request| async move {
            tokio::time::sleep(delay).await;
            assert!(!panic, "a handler's bug");
            Ok::<_, Infallible>(axum::http::StatusCode::NO_CONTENT)
        });
        super::RequestLayer::new(Duration::from_millis(200)).layer(below).oneshot(request).await.unwrap()
    }

    fn request(id: Option<&str>) -> Request {
        let mut builder = Request::builder().uri("/x");
        if let Some(id) = id {
            builder = builder.header("x-request-id", id);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn answers_carry_the_callers_valid_id_or_a_new_one() {
        let response = through_layer(request(Some("onb-0001")), Duration::ZERO, false).await;
        assert_eq!(response.status(), 204);
        assert_eq!(response.headers()["x-request-id"], "onb-0001");
        let response = through_layer(request(Some("not valid")), Duration::ZERO, false).await;
        let id = response.headers()["x-request-id"].to_str().unwrap();
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
    }

    #[tokio::test]
    async fn a_panic_below_is_a_500_problem_with_the_request_id() {
        let response = through_layer(request(Some("r-panic")), Duration::ZERO, true).await;
        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()["x-request-id"], "r-panic");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
    }

    #[tokio::test]
    async fn a_request_over_the_timeout_is_a_408() {
        let response = through_layer(request(None), Duration::from_secs(5), false).await;
        assert_eq!(response.status(), 408);
        assert!(response.headers().contains_key("x-request-id"));
    }

    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_request_line_names_the_request_and_the_callers_channel() {
        use tower::{Layer, ServiceExt};
        let capture = Capture::default();
        let writer = capture.clone();
        let filter = tracing_subscriber::EnvFilter::new("info");
        let subscriber = crate::telemetry::subscriber(crate::config::LogFormat::Json, filter, move || writer.clone());
        let _default = tracing::subscriber::set_default(subscriber);
        // What the auth layer does once it knows the key, and a line logged inside the request.
        let below = tower::service_fn(|_: Request| async {
            crate::telemetry::request::set_channel("MOBILE_APP");
            tracing::info!("inside");
            tracing::info_span!("store", operation = "create").in_scope(|| tracing::info!("in a store call"));
            tokio::time::sleep(Duration::from_millis(1_050)).await;
            Ok::<_, Infallible>(axum::http::StatusCode::CREATED)
        });
        let service = super::RequestLayer::new(Duration::from_secs(5)).layer(below);
        let response = service.oneshot(request(Some("r-line"))).await.unwrap();
        assert_eq!(response.status(), 201);

        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["message"], "inside");
        assert_eq!(
            lines[0]["span"],
            serde_json::json!({"request_id": "r-line", "method": "GET", "route": "unmatched",
                               "channel": "MOBILE_APP", "name": "request"})
        );
        // A span inside the request nests under the request's fields and names the line.
        assert_eq!(lines[1]["message"], "in a store call");
        assert_eq!(
            lines[1]["span"],
            serde_json::json!({"request_id": "r-line", "method": "GET", "route": "unmatched",
                               "channel": "MOBILE_APP", "operation": "create", "name": "store"})
        );
        let line = &lines[2];
        assert_eq!(line["message"], "request completed");
        for (field, value) in
            [("request_id", "r-line"), ("method", "GET"), ("route", "unmatched"), ("channel", "MOBILE_APP")]
        {
            assert_eq!(line[field], value, "{line}");
        }
        assert_eq!(line["status"], 201);
        // In milliseconds: the handler slept 1 050 ms, past a whole second, so that a latency in another unit,
        // or wrapped below a second, fails.
        assert!(line["latency_ms"].as_f64().is_some_and(|ms| (1_050.0..60_000.0).contains(&ms)), "{line}");
        assert!(line.get("span").is_none(), "the line carries its fields itself: {line}");
    }

    /// One request through the layer under `subscriber`, with a channel that needs escaping.
    async fn one_request(subscriber: Box<dyn tracing::Subscriber + Send + Sync>) {
        use tower::{Layer, ServiceExt};
        let _default = tracing::subscriber::set_default(subscriber);
        let below = tower::service_fn(|_: Request| async {
            crate::telemetry::request::set_channel("CARDS \"x\"");
            Ok::<_, Infallible>(axum::http::StatusCode::CREATED)
        });
        let service = super::RequestLayer::new(Duration::from_secs(5)).layer(below);
        service.oneshot(request(Some("r-fast:1"))).await.unwrap();
    }

    /// The binary's subscriber has the request line written by `telemetry::write_request_line`, any other
    /// one through tracing: the two lines are the same text but for the instant and the latency.
    #[tokio::test]
    async fn the_fast_request_line_is_the_events_line() {
        use crate::config::LogFormat;
        use crate::telemetry::{self, lines};
        let filter = || tracing_subscriber::EnvFilter::new("info");
        let direct = telemetry::RequestLine {
            message: "m",
            id: "i",
            method: "GET",
            route: "/r",
            channel: "",
            status: 200,
            latency_ms: 1.5,
        };
        let written =
            |subscriber| tracing::subscriber::with_default(subscriber, || telemetry::write_request_line("t", &direct));

        let fast = Capture::default();
        let (writer, guard) = lines::spawn(fast.clone()).unwrap();
        assert!(written(telemetry::subscriber(LogFormat::Json, filter(), writer.clone())));
        one_request(telemetry::subscriber(LogFormat::Json, filter(), writer)).await;
        drop(guard); // writes what is waiting

        let slow = Capture::default();
        let writer = slow.clone();
        let capture = telemetry::subscriber(LogFormat::Json, filter(), move || writer.clone());
        assert!(!written(capture), "not the binary's subscriber");
        let writer = slow.clone();
        one_request(telemetry::subscriber(LogFormat::Json, filter(), move || writer.clone())).await;
        let (writer, _guard) = lines::spawn(std::io::sink()).unwrap();
        assert!(!written(telemetry::subscriber(LogFormat::Compact, filter(), writer)), "not the JSON format");

        // The last line, without the instant and the latency, which differ from one request to the next.
        let comparable = |capture: &Capture| {
            let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
            let line = text.lines().last().unwrap_or_default().to_owned();
            let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            let (at, latency) = (json["timestamp"].as_str().unwrap(), json["latency_ms"].to_string());
            (text.clone(), line.replace(at, "T").replace(&format!(":{latency},"), ":L,"))
        };
        let (fast_text, fast_line) = comparable(&fast);
        let (_, slow_line) = comparable(&slow);
        assert_eq!(fast_text.lines().count(), 2, "{fast_text}");
        assert!(fast_text.starts_with("{\"timestamp\":\""), "{fast_text}");
        assert!(fast_text.contains(r#","status":200,"latency_ms":1.5,"target":"t"}"#), "{fast_text}");
        assert_eq!(fast_line, slow_line);
        assert!(fast_line.contains(r#""request_id":"r-fast:1","#), "{fast_line}");
        assert!(fast_line.contains(r#""channel":"CARDS \"x\"","#), "{fast_line}");
    }

    #[tokio::test]
    async fn the_human_format_appends_the_request_to_lines_inside_it() {
        use tower::{Layer, ServiceExt};
        let capture = Capture::default();
        let writer = capture.clone();
        let filter = tracing_subscriber::EnvFilter::new("info");
        let subscriber =
            crate::telemetry::subscriber(crate::config::LogFormat::Compact, filter, move || writer.clone());
        let _default = tracing::subscriber::set_default(subscriber);
        tracing::info!("outside");
        let below = tower::service_fn(|_: Request| async {
            crate::telemetry::request::set_channel("LENDING");
            tracing::info!("inside");
            Ok::<_, Infallible>(axum::http::StatusCode::NO_CONTENT)
        });
        let service = super::RequestLayer::new(Duration::from_secs(5)).layer(below);
        service.oneshot(request(Some("r-human"))).await.unwrap();

        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("outside") && !lines[0].contains("request_id="), "{text}");
        assert!(
            lines[1].contains("inside")
                && lines[1].ends_with(" request_id=r-human method=GET route=unmatched channel=LENDING"),
            "{text}"
        );
    }

    #[test]
    fn new_ids_are_distinct_version_4_uuids() {
        let a = super::new_id();
        let b = super::new_id();
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert!(super::valid(&a));
    }
}
