//! Logging setup: `RUST_LOG` filters (default `info`), `LOG_FORMAT` picks pretty or JSON lines,
//! and the request a line was logged in.
//!
//! Lines are formatted on the thread that logs them and written by a background thread through
//! a 64 KiB buffer, flushed whenever the queue is empty: under load many lines per `write(2)`
//! instead of one locked write per line on the request's worker (with uuid's `fast-rng`,
//! 60 → 55 µs of server CPU per request, see `docs/benchmarks.md`), and an idle server's lines
//! are not held back. If the writer falls more than [`BUFFERED_LINES`] lines behind, new lines
//! are dropped rather than slowing requests down.
//!
//! A line logged while a request is handled names that request (`"request":{"id","method",
//! "path"}`) from a task-local set by [`in_request`], not from a `tracing` span: a span is
//! entered and left by the subscriber at every poll of the request and of every sqlx query
//! inside it (read locks in `EnvFilter`, reference counts in the registry), and its fields are
//! formatted once per request whether or not anything is logged inside it. The task-local costs
//! two pointer swaps per poll; only a line logged inside a request pays for naming it.

use std::{
    cell::RefCell,
    fmt::{self, Write as _},
    future::Future,
};

use poem::http::{HeaderValue, Method, Uri};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::{
    EnvFilter,
    fmt::{
        FmtContext, FormatEvent, FormatFields, FormattedFields,
        format::{self, Writer},
    },
    registry::LookupSpan,
};

use crate::config::LogFormat;

/// Lines that may wait for the writer thread before new ones are dropped.
const BUFFERED_LINES: usize = 128 * 1024;

/// Keeps the log writer running; dropping it writes out what is queued.
#[must_use = "logs stop being written when the guard is dropped"]
pub struct LogGuard(#[allow(dead_code)] WorkerGuard);

pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .lossy(true)
        .thread_name("log-writer")
        .finish(stderr);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Json => {
            builder.fmt_fields(format::JsonFields::new()).event_format(json_lines()).init()
        }
        LogFormat::Pretty => builder.event_format(WithRequest(format::format().compact())).init(),
    }
    LogGuard(guard)
}

/// One JSON object per line, the event's fields at the top level, and the request it was
/// logged in under `request`. Public so that the test harness logs exactly as the service does.
pub fn json_lines() -> WithRequest<JsonLine> {
    WithRequest(JsonLine)
}

/// A line as JSON: `timestamp` (RFC 3339, UTC, microseconds, as the API spells its timestamps),
/// `level`, the event's fields, `target`, and the current span (its name and fields) if there
/// is one; the keys and values tracing-subscriber's JSON format wrote with `flatten_event`.
///
/// Written straight into the line, where that format first spelled the time into a `String` of
/// its own, then drove serde_json's map serializer through an adaptor per value: the access line
/// is written for every request (`docs/benchmarks.md`, issue 19 step 10).
pub struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // A record from the `log` crate names its own level and target, not the bridge's.
        let normalized = event.normalized_metadata();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
        writer.write_str(r#"{"timestamp":""#)?;
        crate::api::Timestamp(chrono::Utc::now()).spelled(|text| writer.write_str(text))?;
        write!(writer, r#"","level":"{}""#, metadata.level())?;
        let mut fields = JsonFieldsVisitor { writer: &mut writer, result: Ok(()) };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(r#","target":"#)?;
        write_json_str(&mut writer, metadata.target())?;
        let span = event.parent().and_then(|id| ctx.span(id)).or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            writer.write_str(r#","span":{"name":"#)?;
            write_json_str(&mut writer, span.name())?;
            let extensions = span.extensions();
            // `JsonFields` keeps a span's fields as the text of a JSON object.
            let recorded = extensions.get::<FormattedFields<N>>().map(|fields| fields.as_str());
            match recorded.and_then(|object| object.strip_prefix('{')) {
                Some(rest) if !rest.starts_with('}') => write!(writer, ",{rest}")?,
                _ => writer.write_char('}')?,
            }
        }
        writer.write_str("}\n")
    }
}

/// Writes each field of an event as `,"name":value`: a string for anything but a boolean or a
/// 64-bit number (as tracing-serde did: 128-bit numbers are strings, through `record_debug`).
struct JsonFieldsVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl JsonFieldsVisitor<'_, '_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self
                .writer
                .write_char(',')
                .and_then(|()| write_json_str(self.writer, field.name()))
                .and_then(|()| self.writer.write_char(':'))
                .and_then(|()| value(self.writer));
        }
    }
}

impl Visit for JsonFieldsVisitor<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |writer| {
            writer.write_char('"')?;
            write!(JsonEscaped(writer), "{value:?}")?;
            writer.write_char('"')
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |writer| write_json_str(writer, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |writer| write!(writer, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |writer| write!(writer, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |writer| write!(writer, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: serde_json wrote `null` for them.
        match value.is_finite() {
            true => self.entry(field, |writer| write!(writer, "{value:?}")),
            false => self.entry(field, |writer| writer.write_str("null")),
        }
    }
}

/// `text` as a JSON string, quotes included.
fn write_json_str(writer: &mut Writer<'_>, text: &str) -> fmt::Result {
    writer.write_char('"')?;
    JsonEscaped(writer).write_str(text)?;
    writer.write_char('"')
}

/// Escapes what it is given as the inside of a JSON string, as serde_json does: `"`, `\` and
/// the control characters; everything else as it is (UTF-8 needs no escaping).
struct JsonEscaped<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for JsonEscaped<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // Most of what a line holds has nothing to escape: tested sixteen bytes at a time,
        // without a branch per byte, and then written whole (~2,700 instructions per request
        // byte by byte, ~1,800 this way: `docs/benchmarks.md`, issue 19 step 15).
        let escapes = |byte: u8| (byte < 0x20) | (byte == b'"') | (byte == b'\\');
        let plain_text = text
            .as_bytes()
            .chunks(16)
            .all(|chunk| !chunk.iter().fold(false, |any, &byte| any | escapes(byte)));
        if plain_text {
            return self.0.write_str(text);
        }
        let mut plain = 0;
        for (at, byte) in text.bytes().enumerate() {
            let escaped = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x00..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&text[plain..at])?;
            match escaped {
                "" => write!(self.0, "\\u{byte:04x}")?,
                escaped => self.0.write_str(escaped)?,
            }
            plain = at + 1;
        }
        self.0.write_str(&text[plain..])
    }
}

/// The request a task is handling, as its log lines name it. Cheap to make: clones of
/// reference-counted values.
pub struct RequestFields {
    pub id: HeaderValue,
    pub method: Method,
    pub uri: Uri,
}

tokio::task_local! {
    static REQUEST: RequestFields;
}

/// Runs `handling` with every line it logs naming `request`.
// Not an `async fn`: its future would keep `handling` twice, as its argument and inside the scope
// it awaits (`docs/benchmarks.md`, issue 19 step 12).
pub fn in_request<F: Future>(
    request: RequestFields,
    handling: F,
) -> impl Future<Output = F::Output> {
    REQUEST.scope(request, handling)
}

/// Adds the current request (if any) to the lines of the format it wraps.
pub struct WithRequest<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithRequest<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let named = REQUEST.try_with(|request| {
            LINE.with(|line| {
                // Busy only if formatting a line logged another one: that one goes out plain.
                let mut line = line.try_borrow_mut().ok()?;
                line.clear();
                Some(
                    self.0
                        .format_event(ctx, Writer::new(&mut *line), event)
                        .and_then(|()| write_naming(&mut writer, &line, request)),
                )
            })
        });
        match named {
            Ok(Some(written)) => written,
            _ => self.0.format_event(ctx, writer, event),
        }
    }
}

thread_local! {
    /// The line being formatted inside a request, reused from line to line.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Writes `line` (a JSON object or a plain line, each ending in a newline) with `request` in it:
/// a `request` object first in a JSON line, `request.id=…` fields at the end of a plain one.
fn write_naming(writer: &mut Writer<'_>, line: &str, request: &RequestFields) -> fmt::Result {
    let id = String::from_utf8_lossy(request.id.as_bytes());
    let (method, path) = (request.method.as_str(), request.uri.path());
    if let Some(fields) = line.strip_prefix('{') {
        let quoted = |text: &str| serde_json::to_string(text).map_err(|_| fmt::Error);
        let (id, method, path) = (quoted(&id)?, quoted(method)?, quoted(path)?);
        let separator = if fields.starts_with('}') { "" } else { "," };
        write!(
            writer,
            r#"{{"request":{{"id":{id},"method":{method},"path":{path}}}{separator}{fields}"#
        )
    } else {
        let line = line.strip_suffix('\n').unwrap_or(line);
        writeln!(writer, "{line} request.id={id} request.method={method} request.path={path:?}")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::{MakeWriter, format::JsonFields};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    const NASTY: &str =
        "quotes \" back\\slash\nnew\rline\ttab \u{0} \u{8} \u{c} \u{1f} \u{7f} ünïcode ✓";

    /// Logs the same events (every kind of field value, in and out of a span) through
    /// `format` and returns the lines as JSON.
    fn logged<F>(format: F) -> Vec<serde_json::Value>
    where
        F: FormatEvent<tracing_subscriber::Registry, JsonFields> + Send + Sync + 'static,
    {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(captured.clone())
            .fmt_fields(JsonFields::new())
            .event_format(format)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                text = NASTY,
                shown = %NASTY,
                debugged = ?Some(NASTY),
                signed = -7i64,
                unsigned = u64::MAX,
                big = i128::MIN,
                yes = true,
                ratio = 0.25f64,
                nan = f64::NAN,
                "message with {} {NASTY}",
                "args"
            );
            let span = tracing::warn_span!("handling", id = 42u64, path = NASTY);
            span.in_scope(|| tracing::error!(error = %std::io::Error::other(NASTY), "failed"));
            let empty = tracing::info_span!("bare");
            empty.in_scope(|| tracing::debug!("inside"));
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|line| serde_json::from_str(line).expect(line)).collect()
    }

    #[test]
    fn lines_are_what_tracing_subscribers_json_format_wrote() {
        let ours = logged(JsonLine);
        let theirs = logged(format::format().json().flatten_event(true).with_span_list(false));
        assert_eq!(ours.len(), 3);
        for (mut ours, mut theirs) in ours.into_iter().zip(theirs) {
            let stamp = ours["timestamp"].take();
            assert!(chrono::DateTime::parse_from_rfc3339(stamp.as_str().unwrap()).is_ok());
            theirs["timestamp"].take();
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut line = String::new();
        write_json_str(&mut Writer::new(&mut line), NASTY).unwrap();
        assert_eq!(line, serde_json::to_string(NASTY).unwrap());
        assert_eq!(serde_json::from_str::<String>(&line).unwrap(), NASTY);
        // Plain text, and one character to escape at every place of the sixteen-byte chunks.
        let plain = "a plain path: /api/tasks/42?limit=50 ü".repeat(2);
        let mut cases = vec![plain.clone()];
        for at in 0..plain.len() {
            for special in ["\"", "\\", "\n", "\u{1f}"] {
                if plain.is_char_boundary(at) {
                    cases.push(format!("{}{special}{}", &plain[..at], &plain[at..]));
                }
            }
        }
        for text in cases {
            let mut line = String::new();
            write_json_str(&mut Writer::new(&mut line), &text).unwrap();
            assert_eq!(line, serde_json::to_string(&text).unwrap());
        }
    }
}
