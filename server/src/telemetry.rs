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

use std::{cell::RefCell, fmt, future::Future};

use poem::http::{HeaderValue, Method, Uri};
use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{
    EnvFilter,
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::{self, Writer},
        time::FormatTime,
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
pub fn json_lines() -> WithRequest<format::Format<format::Json, LogClock>> {
    WithRequest(
        format::format().json().flatten_event(true).with_span_list(false).with_timer(LogClock),
    )
}

/// A line's time, spelled as the API spells its timestamps (RFC 3339, UTC, microseconds, as
/// `tracing`'s own clock spells it), in one write: that clock wrote a dozen pieces through
/// `core::fmt` into a string that grew three times, on every line.
pub struct LogClock;

impl FormatTime for LogClock {
    fn format_time(&self, writer: &mut Writer<'_>) -> std::fmt::Result {
        crate::api::Timestamp(chrono::Utc::now()).spelled(|text| writer.write_str(text))
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
pub async fn in_request<F: Future>(request: RequestFields, handling: F) -> F::Output {
    REQUEST.scope(request, handling).await
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
