//! Metrics for operators, in the Prometheus text format at `GET /metrics` (no auth; not part of
//! the OpenAPI document; `METRICS=off` turns it off, `METRICS_ADDR` moves it to a listener of
//! its own). Recorded through the `metrics` facade into `metrics-exporter-prometheus`'s recorder,
//! installed once per process:
//!
//! - `http_requests_total` and `http_request_duration_seconds` by `operation` (the operationId,
//!   `none` for what is no operation) and `status` class (`2xx` … `5xx`);
//! - `auth_rejected_tokens_total` by `reason` (`missing`, `expired`, `invalid`);
//! - `unavailable_responses_total` (503s) by `cause` (`database`, `key_set`);
//! - `db_pool_connections` and `db_pool_idle_connections`, read at each scrape;
//! - `jwks_fetches_total` by `outcome` (`ok`, `error`);
//! - `health_database_checks_total` by `outcome` (`ok`, `unreachable`): the database queries the
//!   health probes cost (at most about one a second however many probes arrive);
//! - `refused_connections_total` by `reason` (`address_cap`, `http2`, `write_timeout`: a client that stopped reading);
//! - `event_streams_open` (live event streams now) and `events_sent_total` by `event`
//!   (`upsert`, `delete`, `resync`).

use std::{
    collections::HashMap,
    sync::{LazyLock, OnceLock, PoisonError, RwLock},
    time::Duration,
};

use ::metrics::{Counter, Histogram};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use poem::{Endpoint, Response, endpoint::make_sync, http::StatusCode};

use crate::store::TaskStore;

/// Request latency buckets, in seconds: sub-millisecond to the 1.8 s call deadline and beyond.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The process's recorder, installed on first use (another one installed first, as in some
/// test binaries, leaves this one unused: its render then lists nothing).
fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS)
            .expect("latency buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if ::metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was installed already: /metrics reports nothing");
        }
        spawn_upkeep(handle.clone());
        handle
    })
}

/// How often recorded latencies are folded into the histogram's buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The recorder keeps every latency sample until it is folded into the buckets, which only a
/// scrape or an upkeep does: without this, an instance nobody scrapes grows with every request
/// (at c = 50 in the benchmark, peak RSS 54–56 MB without, 41.5 MB with). A plain thread, so
/// that it runs whatever runtime, if any, installed the recorder.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            handle.run_upkeep();
        }
    });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "could not start the metrics upkeep thread");
    }
}

/// Installs the recorder now, so that nothing recorded before the first scrape is lost.
pub fn install() {
    handle();
}

/// `GET /metrics`: the pool gauges are read now, everything else was counted as it happened.
pub fn endpoint(store: std::sync::Arc<dyn TaskStore>) -> impl Endpoint + 'static {
    install();
    make_sync(move |_| {
        let pool = store.pool_status();
        ::metrics::gauge!("db_pool_connections").set(pool.size as f64);
        ::metrics::gauge!("db_pool_idle_connections").set(pool.idle as f64);
        Response::builder()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(handle().render())
    })
}

/// One answered request.
pub fn request(operation: &'static str, status: StatusCode, elapsed: Duration) {
    let class = match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let (requests, latency) = request_handles(operation, class);
    requests.increment(1);
    latency.record(elapsed.as_secs_f64());
}

/// The two series of an operation and status class. The `counter!` and `histogram!` macros
/// would build the key, allocate its labels and look it up in the recorder on every request;
/// the handles are the same every time, so each pair is looked up once. Handles taken before a
/// recorder is installed go nowhere, so the first request must come after [`install`] (the
/// router installs it when it mounts `/metrics`).
fn request_handles(operation: &'static str, class: &'static str) -> (Counter, Histogram) {
    type Handles = HashMap<(&'static str, &'static str), (Counter, Histogram)>;
    static HANDLES: LazyLock<RwLock<Handles>> = LazyLock::new(RwLock::default);
    if let Some(handles) =
        HANDLES.read().unwrap_or_else(PoisonError::into_inner).get(&(operation, class))
    {
        return handles.clone();
    }
    let labels = [("operation", operation), ("status", class)];
    let handles = (
        ::metrics::counter!("http_requests_total", &labels),
        ::metrics::histogram!("http_request_duration_seconds", &labels),
    );
    let mut cached = HANDLES.write().unwrap_or_else(PoisonError::into_inner);
    cached.entry((operation, class)).or_insert(handles).clone()
}

/// A bearer token refused: `missing`, `expired` or `invalid`.
pub fn rejected_token(reason: &'static str) {
    ::metrics::counter!("auth_rejected_tokens_total", "reason" => reason).increment(1);
}

/// A 503: `database` or `key_set`.
pub fn unavailable(cause: &'static str) {
    ::metrics::counter!("unavailable_responses_total", "cause" => cause).increment(1);
}

/// A fetch of Better Auth's key set.
pub fn jwks_fetch(succeeded: bool) {
    let outcome = if succeeded { "ok" } else { "error" };
    ::metrics::counter!("jwks_fetches_total", "outcome" => outcome).increment(1);
}

/// A database check made for the health probes (the others in its second reuse its answer).
pub fn health_database_check(reachable: bool) {
    let outcome = if reachable { "ok" } else { "unreachable" };
    ::metrics::counter!("health_database_checks_total", "outcome" => outcome).increment(1);
}

/// A connection closed by a limit: `address_cap` (its address had `MAX_CONNECTIONS_PER_ADDRESS`
/// open), `http2` (it opened with the HTTP/2 preface) or `write_timeout` (its client stopped
/// reading a response).
pub fn refused_connection(reason: &'static str) {
    ::metrics::counter!("refused_connections_total", "reason" => reason).increment(1);
}

/// A live event stream opened (`1`) or ended (`-1`).
pub fn event_streams(delta: f64) {
    ::metrics::gauge!("event_streams_open").increment(delta);
}

/// An event written to a live stream.
pub fn event_sent(event: &'static str) {
    ::metrics::counter!("events_sent_total", "event" => event).increment(1);
}
