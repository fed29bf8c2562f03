//! Structured logs: JSON lines by default (one object per event, with the request's fields under `span`, so
//! every line carries its `request_id`), or a compact human format.
//!
//! Lines are written by a dedicated thread (the `lines` module): a request formats its line and appends
//! it to a buffer, instead of taking the stdout lock and making a `write` system call of its own. Under
//! load that was the largest cost of a request that does no I/O (the profile of `/health/live` showed the
//! handler threads blocked in `writev` on stdout). Nothing is dropped: when the writer falls behind,
//! requests wait for room; the returned guard writes what is left when the process ends.

mod json;
pub mod lines;
pub mod request;

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
