//! The JSON line format, written straight into the line's buffer.
//!
//! The lines have the shape tracing-subscriber's own JSON format gives with `flatten_event(true)` and
//! `with_current_span(true)`:
//!
//! ```text
//! {"timestamp":"2026-11-27T21:18:49.128192Z","level":"INFO","message":"request completed","status":200,
//!  "target":"integration_service::api::request_id","span":{"request_id":"…","method":"GET","name":"request"}}
//! ```
//!
//! Unlike that format, `span` holds the request's fields (its task-local context, `super::request`), then
//! the fields of every span around the event, outermost first, so a line written inside a store call's span
//! still carries its request's id.
//!
//! That format goes through serde for every field of every line and of every new span, and through a UTF-8
//! check for each small piece it writes. Profiled with callgrind on `GET /health/live`, those two cost about
//! 28 000 instructions per request, more than twice a whole bare axum request; this writer does the same in
//! a fraction. It escapes strings as RFC 8259 requires, and writes a number that JSON cannot hold (NaN, an
//! infinity) as `null`.
//!
//! A line (or a span's fields) is put together in a per-thread buffer that keeps its capacity, with plain
//! pushes, and handed to tracing-subscriber's writer in one piece: writing each quote, colon and value through
//! that writer (a `dyn fmt::Write`) cost a call, a capacity check and often a `memcpy` each, and a span's
//! fields, written into the new span's empty string, grew it five times. Numbers are written by `itoa` and
//! `zmij` rather than `core::fmt` (a request's latency: 185 instructions with `zmij`, which serde_json
//! uses, 491 with `ryu`, about 660 with `core::fmt`).

use std::cell::{Cell, RefCell};
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as JSON lines (the event's fields flattened, the current span's fields under `span`).
pub struct JsonLines;

/// Formats a span's fields as the inside of a JSON object (`"a":1,"b":"x"`), kept with the span and
/// copied into each line written inside it.
pub struct JsonFields;

thread_local! {
    /// The buffer a line or a span's fields are put together in, kept from one to the next.
    static BUFFER: RefCell<String> = RefCell::new(String::with_capacity(1024));
}

/// Runs `f` on this thread's cleared buffer, or on a new one if that is in use (a field's `Debug` that logs
/// while a line is being written) or gone (a thread's last words).
pub(super) fn with_buffer<R>(f: impl FnOnce(&mut String) -> R) -> R {
    let mut f = Some(f);
    let reused = BUFFER.try_with(|cell| {
        let mut buffer = cell.try_borrow_mut().ok()?;
        buffer.clear();
        f.take().map(|f| f(&mut buffer))
    });
    match (reused, f) {
        (Ok(Some(r)), _) => r,
        (_, Some(f)) => f(&mut String::new()),
        (_, None) => unreachable!("f ran and returned"),
    }
}

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        with_buffer(|out| {
            fields.record(&mut Fields { out, first: true });
            writer.write_str(out)
        })
    }

    fn add_fields(&self, current: &'w mut FormattedFields<Self>, fields: &tracing::span::Record<'_>) -> fmt::Result {
        let first = current.fields.is_empty();
        fields.record(&mut Fields { out: &mut current.fields, first });
        Ok(())
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        with_buffer(|out| {
            let meta = event.metadata();
            out.push_str("{\"timestamp\":\"");
            timestamp(out, std::time::SystemTime::now());
            out.push_str("\",\"level\":\"");
            out.push_str(meta.level().as_str());
            out.push('"');
            event.record(&mut Fields { out, first: false });
            out.push_str(",\"target\":");
            string(out, meta.target());
            // The request's fields (its task-local context, see `request`), then those of every span around
            // the event, outermost first (a store call's span inside the request: the line carries both the
            // request id and the operation), named after the innermost span, or `request`.
            let scope = ctx.event_scope();
            let start = out.len();
            out.push_str(",\"span\":{");
            let in_request = super::request::write_fields(out, string);
            if in_request || scope.is_some() {
                let mut name = "request";
                for span in scope.into_iter().flat_map(|scope| scope.from_root()) {
                    let extensions = span.extensions();
                    if let Some(fields) = extensions.get::<FormattedFields<N>>().filter(|f| !f.fields.is_empty()) {
                        out.push_str(&fields.fields);
                        out.push(',');
                    }
                    name = span.name();
                }
                out.push_str("\"name\":");
                string(out, name);
                out.push('}');
            } else {
                out.truncate(start);
            }
            out.push_str("}\n");
            writer.write_str(out)
        })
    }
}

/// A request's closing line (`api::request_id`), as [`JsonLines`] writes the event
/// `tracing::info!(request_id, method, route, channel, status, latency_ms, "<message>")` of `target`, outside
/// any span: the same keys in the same order.
pub(super) fn request_line(out: &mut String, target: &str, line: &super::RequestLine<'_>) {
    out.push_str("{\"timestamp\":\"");
    timestamp(out, std::time::SystemTime::now());
    out.push_str("\",\"level\":\"INFO\",\"message\":");
    string(out, line.message);
    out.push_str(",\"request_id\":");
    string(out, line.id);
    out.push_str(",\"method\":");
    string(out, line.method);
    out.push_str(",\"route\":");
    string(out, line.route);
    out.push_str(",\"channel\":");
    string(out, line.channel);
    out.push_str(",\"status\":");
    out.push_str(itoa::Buffer::new().format(line.status));
    out.push_str(",\"latency_ms\":");
    if line.latency_ms.is_finite() {
        out.push_str(zmij::Buffer::new().format_finite(line.latency_ms));
    } else {
        out.push_str("null");
    }
    out.push_str(",\"target\":");
    string(out, target);
    out.push_str("}\n");
}

/// Writes `"name":value` pairs, separated by commas (the first one too, unless `first`).
struct Fields<'a> {
    out: &'a mut String,
    first: bool,
}

impl Fields<'_> {
    /// Starts a pair: the separator and `"name":`; the caller writes the value.
    #[inline]
    fn key(&mut self, field: &Field) -> &mut String {
        if !std::mem::take(&mut self.first) {
            self.out.push(',');
        }
        string(self.out, field.name());
        self.out.push(':');
        self.out
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        string(self.key(field), value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field).push_str(if value { "true" } else { "false" });
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field).push_str(itoa::Buffer::new().format(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field).push_str(itoa::Buffer::new().format(value));
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        self.key(field).push_str(itoa::Buffer::new().format(value));
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        self.key(field).push_str(itoa::Buffer::new().format(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        let out = self.key(field);
        if value.is_finite() {
            out.push_str(zmij::Buffer::new().format_finite(value));
        } else {
            out.push_str("null");
        }
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let out = self.key(field);
        out.push('"');
        let _ = write!(Escaping(out), "{value}");
        out.push('"');
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let out = self.key(field);
        out.push('"');
        let _ = write!(Escaping(out), "{value:?}");
        out.push('"');
    }
}

/// A JSON string: quoted and escaped.
#[inline]
fn string(out: &mut String, s: &str) {
    out.push('"');
    escape(out, s);
    out.push('"');
}

/// Appends `s` escaped for the inside of a JSON string: `"` and `\`, and every control character (U+0000 to
/// U+001F; the common ones by their short forms). Text with nothing to escape, nearly all of it, is copied
/// whole.
#[inline]
fn escape(out: &mut String, s: &str) {
    if clean(s.as_bytes()) {
        out.push_str(s);
    } else {
        escape_each(out, s);
    }
}

#[cold]
#[inline(never)]
fn escape_each(out: &mut String, s: &str) {
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(short);
        }
        from = i + 1;
    }
    out.push_str(&s[from..]);
}

/// Whether `bytes` hold nothing to escape (no `"`, `\` or byte below 0x20), looked at eight at a time (the
/// last eight overlapping the word before when the length is not a multiple of eight).
#[inline]
fn clean(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Whether a byte of `v` is below `n` (n <= 0x80): the classic "has less" bit trick, exact as a whole.
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGH != 0;
    let clean_word = |word: &[u8]| {
        let v = u64::from_ne_bytes(word.try_into().unwrap_or_default());
        !(below(v, 0x20) | below(v ^ (ONES * u64::from(b'"')), 1) | below(v ^ (ONES * u64::from(b'\\')), 1))
    };
    if bytes.len() < 8 {
        return bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\');
    }
    bytes.chunks_exact(8).all(clean_word) && clean_word(&bytes[bytes.len() - 8..])
}

/// Escapes what is formatted into it (a `Debug` or `Display` value).
struct Escaping<'a>(&'a mut String);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape(self.0, s);
        Ok(())
    }
}

thread_local! {
    /// The second of the last timestamp this thread wrote, and its text up to the fraction.
    static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
}

/// RFC 3339 in UTC with microseconds, as `2026-11-27T21:18:49.128192Z`. The date and time of day are worked
/// out once a second per thread; the microseconds are written digit by digit.
fn timestamp(out: &mut String, now: std::time::SystemTime) {
    let since = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (second, micros) = (since.as_secs(), since.subsec_micros());
    let (cached, mut text) = SECOND.get();
    if cached != second {
        let t = time::OffsetDateTime::UNIX_EPOCH + since;
        text = *b"0000-00-00T00:00:00.";
        put(&mut text[0..4], t.year().clamp(0, 9999) as u32);
        put(&mut text[5..7], u8::from(t.month()).into());
        put(&mut text[8..10], t.day().into());
        put(&mut text[11..13], t.hour().into());
        put(&mut text[14..16], t.minute().into());
        put(&mut text[17..19], t.second().into());
        SECOND.set((second, text));
    }
    let mut line = *b"0000-00-00T00:00:00.000000Z";
    line[..20].copy_from_slice(&text);
    put(&mut line[20..26], micros);
    out.push_str(std::str::from_utf8(&line).unwrap_or_default());
}

/// Writes `value`'s last `digits.len()` decimal digits into `digits`.
fn put(digits: &mut [u8], mut value: u32) {
    for d in digits.iter_mut().rev() {
        *d = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = String::new();
        string(&mut out, s);
        out
    }

    #[test]
    fn strings_are_escaped_as_json_requires() {
        for s in ["plain", "quote \" and \\ backslash", "line\nbreak\r\ttab", "\u{0}\u{1f}\u{7f}", "ünï €", ""] {
            let out = escaped(s);
            let back: String = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
            assert_eq!(back, s);
        }
        assert_eq!(escaped("a\u{1}b"), "\"a\\u0001b\"");
        assert_eq!(escaped("\n"), "\"\\n\"");
    }

    proptest::proptest! {
        /// Any text, with a character that needs escaping at any place of a longer run of clean text (the
        /// check looks at eight bytes at a time), reads back as itself, and clean text is copied as it is.
        #[test]
        fn any_text_reads_back(s in ".*", at in 0usize..40, special in proptest::sample::select(vec!['"', '\\', '\n', '\u{0}', '\u{1f}', ' ', '\u{7f}', 'é'])) {
            let mut text: String = "abcdefgh".repeat(5);
            text.insert(at.min(text.len()), special);
            text.push_str(&s);
            let out = escaped(&text);
            let back: String = serde_json::from_str(&out).unwrap();
            proptest::prop_assert_eq!(&back, &text);
            if !text.chars().any(|c| c < ' ' || c == '"' || c == '\\') {
                proptest::prop_assert_eq!(out, format!("\"{text}\""));
            }
        }
    }

    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_json_objects_with_the_event_flattened_and_the_span_nested() {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields)
            .event_format(JsonLines)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(count = 3u64, "outside \"any\" span");
            let span = tracing::info_span!("request", request_id = "r-1", channel = tracing::field::Empty);
            let _entered = span.enter();
            span.record("channel", "MOBILE_APP");
            tracing::warn!(ratio = 0.5, nan = f64::NAN, ok = true, delta = -2i64, what = ?("a\nb"), "inside");
            let store = tracing::info_span!("store", operation = "create");
            store.in_scope(|| tracing::info!("nested"));
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(
            lines[2]["span"],
            serde_json::json!({"request_id": "r-1", "channel": "MOBILE_APP", "operation": "create", "name": "store"})
        );
        assert_eq!(lines[0]["message"], "outside \"any\" span");
        assert_eq!(lines[0]["count"], 3);
        assert_eq!(lines[0]["level"], "INFO");
        assert!(lines[0].get("span").is_none());
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["ratio"], 0.5);
        assert!(lines[1]["nan"].is_null());
        assert_eq!(lines[1]["ok"], true);
        assert_eq!(lines[1]["delta"], -2);
        assert_eq!(lines[1]["what"], "\"a\\nb\"");
        assert_eq!(lines[1]["target"], module_path!());
        assert_eq!(
            lines[1]["span"],
            serde_json::json!({"request_id": "r-1", "channel": "MOBILE_APP", "name": "request"})
        );
        assert!(lines[1]["timestamp"].as_str().is_some_and(|t| t.len() == 27 && t.ends_with('Z')));
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let at = |t: time::OffsetDateTime| {
            let mut out = String::new();
            timestamp(&mut out, t.into());
            out
        };
        assert_eq!(at(time::macros::datetime!(2026-01-02 03:04:05.000678 UTC)), "2026-01-02T03:04:05.000678Z");
        // The same second again (its text is kept), then the next one.
        assert_eq!(at(time::macros::datetime!(2026-01-02 03:04:05.9 UTC)), "2026-01-02T03:04:05.900000Z");
        assert_eq!(at(time::macros::datetime!(2026-12-31 23:59:59.999999 UTC)), "2026-12-31T23:59:59.999999Z");
        assert_eq!(at(time::macros::datetime!(2027-01-01 00:00:00 UTC)), "2027-01-01T00:00:00.000000Z");
    }
}
