//! Logging setup: `RUST_LOG` filters (default `info`), `LOG_FORMAT` picks pretty or JSON lines.
//!
//! Lines are formatted on the thread that logs them and written by a background thread through
//! a 64 KiB buffer, flushed whenever the queue is empty: under load many lines per `write(2)`
//! instead of one locked write per line on the request's worker (with uuid's `fast-rng`,
//! 60 → 55 µs of server CPU per request, see `docs/benchmarks.md`), and an idle server's lines
//! are not held back. If the writer falls more than [`BUFFERED_LINES`] lines behind, new lines
//! are dropped rather than slowing requests down.

use std::io::{BufWriter, Stderr};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Lines that may wait for the writer thread before new ones are dropped.
const BUFFERED_LINES: usize = 128 * 1024;

/// Keeps the log writer running; dropping it writes out what is queued.
#[must_use = "logs stop being written when the guard is dropped"]
pub struct LogGuard(#[allow(dead_code)] WorkerGuard);

pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr: BufWriter<Stderr> = BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .lossy(true)
        .thread_name("log-writer")
        .finish(stderr);
    let builder = fmt().with_env_filter(filter).with_writer(writer);
    match format {
        // The request span once per line (`span`), not again as a one-element `spans` list.
        LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init()
        }
        LogFormat::Pretty => builder.compact().init(),
    }
    LogGuard(guard)
}
