//! The request a log line belongs to.
//!
//! The request layer (`api::request_id`) runs each request inside a task-local [`Context`]: its id, method,
//! matched route and, once the auth layer knows the caller's key, its channel. Every line logged inside the
//! request carries those fields under `span`, as a tracing span's fields would be (`"span":{"request_id":
//! …,"name":"request"}`), and problem documents and history rows take the id from it.
//!
//! A task-local rather than a tracing span: the span cost about 3 100 instructions on every request
//! (created with its fields formatted, entered and exited on every poll, closed), an eighth of a whole
//! `GET /health/live`, for lines that most requests never write; the task-local's fields are only read
//! when a line is written. Spans inside a request (a store call's) still nest under it in the line.

use std::fmt::{self, Write as _};
use std::future::Future;
use std::sync::{Arc, OnceLock};

use axum::extract::MatchedPath;
use axum::http::Method;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// What every line of a request names. Built once per request by the request layer.
#[derive(Debug)]
pub struct Context {
    id: String,
    method: Option<Method>,
    route: Option<MatchedPath>,
    channel: OnceLock<String>,
}

tokio::task_local! {
    static CURRENT: Arc<Context>;
}

impl Context {
    /// A request's context: `route` is the matched route (never the raw path, which may carry a record id);
    /// `None` when no route matched.
    pub fn new(id: String, method: Method, route: Option<MatchedPath>) -> Arc<Self> {
        Arc::new(Self { id, method: Some(method), route, channel: OnceLock::new() })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn method(&self) -> &str {
        self.method.as_ref().map_or("", Method::as_str)
    }

    pub fn route(&self) -> &str {
        self.route.as_ref().map_or("unmatched", MatchedPath::as_str)
    }

    /// The caller's channel, once the auth layer has found its key; empty before (or with no keys set).
    pub fn channel(&self) -> &str {
        self.channel.get().map_or("", String::as_str)
    }
}

/// Runs `f` inside `context`.
pub fn scope<F: Future>(context: Arc<Context>, f: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(context, f)
}

/// Runs `f`, a task the current request hands work to, inside the request's context (an empty one outside
/// a request).
pub fn carry<F: Future>(f: F) -> impl Future<Output = F::Output> {
    let context = CURRENT.try_with(Arc::clone).unwrap_or_else(|_| {
        Arc::new(Context { id: String::new(), method: None, route: None, channel: OnceLock::new() })
    });
    CURRENT.scope(context, f)
}

/// The current request's id, inside a request.
pub fn current_id() -> Option<String> {
    CURRENT.try_with(|context| context.id.clone()).ok()
}

/// Names the caller's channel in the current request's lines (the auth layer, once the key is known).
pub fn set_channel(channel: &str) {
    let _ = CURRENT.try_with(|context| context.channel.set(channel.to_owned()));
}

/// Writes the current request's fields as JSON pairs, each followed by a comma
/// (`"request_id":"…","method":"…","route":"…",` and `"channel":"…",` once known); `false`, writing nothing,
/// outside a request.
pub(super) fn write_fields(out: &mut String, string: fn(&mut String, &str)) -> bool {
    CURRENT
        .try_with(|context| {
            out.push_str("\"request_id\":");
            string(out, &context.id);
            if let Some(method) = &context.method {
                out.push_str(",\"method\":");
                string(out, method.as_str());
                out.push_str(",\"route\":");
                string(out, context.route());
            }
            if let Some(channel) = context.channel.get() {
                out.push_str(",\"channel\":");
                string(out, channel);
            }
            out.push(',');
        })
        .is_ok()
}

/// The human (compact) format with the request's fields appended to each line written inside a request
/// (`… request_id=… method=POST route=/…`).
pub(super) struct Appended<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for Appended<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let ends_line = line.ends_with('\n');
        if ends_line {
            line.pop();
        }
        let _ = CURRENT.try_with(|context| {
            let _ = write!(line, " request_id={}", context.id);
            if context.method.is_some() {
                let _ = write!(line, " method={} route={}", context.method(), context.route());
            }
            if let Some(channel) = context.channel.get() {
                let _ = write!(line, " channel={channel}");
            }
        });
        if ends_line {
            line.push('\n');
        }
        writer.write_str(&line)
    }
}
