//! Structured logs: JSON lines by default (one object per event, with the request's fields under `span`, so
//! every line carries its `request_id`), or a compact human format.
//!
//! Lines are written by a dedicated thread (the `lines` module): a request formats its line and appends
//! it to a buffer, instead of taking the stdout lock and making a `write` system call of its own. Under
//! load that was the largest cost of a request that does no I/O (the profile of `/health/live` showed the
//! handler threads blocked in `writev` on stdout). Nothing is dropped: when the writer falls behind,
//! requests wait for room; the returned guard writes what is left when the process ends.
//!
//! The line that closes every request is written straight into that buffer by [`write_request_line`], in
//! the JSON format's shape, without tracing's event path (a test holds both ways to the same text).

mod json;
pub mod lines;
pub mod request;

use std::io::Write as _;

pub use json::{JsonFields, JsonLines};
use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// The subscriber the binary runs, writing its lines to `writer`: the one construction, so a test that
/// captures the lines (the personal-data test) sees exactly what production writes.
pub fn subscriber<W>(format: LogFormat, filter: EnvFilter, writer: W) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Json => Box::new(builder.fmt_fields(json::JsonFields).event_format(json::JsonLines).finish()),
        LogFormat::Compact => {
            let compact = fmt::format().compact();
            Box::new(builder.event_format(request::Appended(compact)).finish())
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides `filter`. Safe to call more than once. Keep the
/// guard until the process exits: dropping it writes the lines still waiting. Without a thread for the
/// lines (the system refused one), each line is written to stdout by its request.
pub fn init(format: LogFormat, filter: &str) -> Option<lines::Guard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    match lines::spawn(std::io::stdout()) {
        Ok((writer, guard)) => {
            let _ = subscriber(format, filter, writer).try_init();
            Some(guard)
        }
        Err(_) => {
            let _ = subscriber(format, filter, std::io::stdout).try_init();
            None
        }
    }
}

/// What a request's closing line says (`api::request_id` writes one for every request).
pub struct RequestLine<'a> {
    pub message: &'static str,
    pub id: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub channel: &'a str,
    pub status: u16,
    pub latency_ms: f64,
}

/// The subscriber [`init`] installs with the JSON format and the line thread.
type Binary = tracing_subscriber::fmt::Subscriber<JsonFields, JsonLines, EnvFilter, lines::Lines>;

/// Writes `line` as the event `tracing::info!(request_id, method, route, channel, status, latency_ms,
/// "<message>")` of `target` would be written, when the installed subscriber is exactly the binary's JSON
/// one over the line thread; `false`, writing nothing, under any other (a test's capture, the human
/// format, a subscriber with a layer more), and the caller then logs the event through tracing. The caller
/// checks first that `target`'s INFO lines are let through (`tracing::enabled!`).
///
/// One line a request went through tracing's whole event path: the dispatch, the filter, a visit of each
/// field through `dyn` calls, the key of each escaped at run time. Callgrind of `GET /health/live` put that
/// at about 3 400 of the request's 21 000 instructions; here the keys are constants and the values are
/// written in place. The test `the_fast_request_line_is_the_events_line` (`api::request_id`) holds both ways
/// to the same text.
pub fn write_request_line(target: &str, line: &RequestLine<'_>) -> bool {
    tracing::dispatcher::get_default(|dispatch| {
        let Some(lines) = dispatch.downcast_ref::<Binary>().and(dispatch.downcast_ref::<lines::Lines>()) else {
            return false;
        };
        json::with_buffer(|out| {
            json::request_line(out, target, line);
            let _ = lines.make_writer().write_all(out.as_bytes());
        });
        true
    })
}
