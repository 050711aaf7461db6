//! Test harness: starts a real server on 127.0.0.1:0 over a fresh database (a SQLite file, or a
//! new database in a throwaway PostgreSQL cluster, or in `TEST_DATABASE_URL`'s server), and
//! hands out generated clients and tokens for it. Every response of every test server is held
//! to `openapi.json` ([`contract`]) and scanned for secrets ([`logs`]); a server that saw a
//! violation fails its test when it is dropped.

pub mod contract;
pub mod logs;
pub mod pgbouncer;
pub mod postgres;

use futures::StreamExt as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response};
use serde_json::{Value, json};
use server::{
    AppOptions, AppState,
    auth::{ClaimRules, CookieAuth, JwksSettings, KeySources},
    connections::ConnectionLimits,
    rate_limit::{RateLimitSettings, RateLimits},
    store::ConnectOptions,
};
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::sync::oneshot;

pub use postgres::PgCluster;

/// The HS256 secret every test server is configured with.
pub const SECRET: &str = "test-secret-test-secret-test-secret!";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// PostgreSQL behind PgBouncer in transaction mode, with the statement cache off
    /// (`DATABASE_STATEMENT_CACHE=0`), as behind a pooler without prepared statements.
    PgBouncer,
}

impl Backend {
    /// How the service connects to this backend.
    pub fn connect_options(self) -> ConnectOptions {
        match self {
            Backend::PgBouncer => {
                ConnectOptions { statement_cache_capacity: 0, ..ConnectOptions::default() }
            }
            Backend::Sqlite | Backend::Postgres => ConnectOptions::default(),
        }
    }
}

/// A running server and the database behind it; stops when dropped.
pub struct TestServer {
    pub base_url: String,
    /// The database the server uses (tests may inspect or tweak it directly).
    pub database_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    /// Responses that broke the contract, one line each.
    violations: Violations,
    /// Whether requests that are no operation of the document are expected (else a violation).
    undeclared_expected: Arc<AtomicBool>,
    /// Log lines the capture had seen when this server started.
    log_lines_at_start: u64,
    _database: Option<Database>,
}

type Violations = Arc<std::sync::Mutex<Vec<String>>>;

/// What the document does not describe on purpose.
const UNDOCUMENTED_ENDPOINTS: [&str; 4] = ["/docs", "/docs/", "/openapi.json", "/metrics"];

/// A fresh, empty database: a SQLite file in a temporary directory (removed on drop), or a new
/// database on the test PostgreSQL server.
pub struct Database {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Database {
    /// Databases made on `TEST_DATABASE_URL`'s server are dropped (a throwaway cluster goes
    /// whole).
    fn drop(&mut self) {
        if self._dir.is_none() {
            postgres::drop_on_shared_server(&self.url);
        }
    }
}

impl Database {
    pub async fn fresh(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("tasks.db").display());
                Self { url, _dir: Some(dir) }
            }
            Backend::Postgres => Self { url: postgres::fresh_database().await, _dir: None },
            Backend::PgBouncer => Self { url: postgres::fresh_pooled_database().await, _dir: None },
        }
    }

    /// The same database without a pooler in between (the URL itself, but behind PgBouncer).
    pub fn direct_url(&self) -> String {
        postgres::direct_url(&self.url)
    }
}

/// Extra knobs for [`TestServer::start_with`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub cors_origins: Vec<String>,
    /// Serve `/metrics` beside the API.
    pub metrics: bool,
    /// Rate limits (production's defaults unless a test says otherwise).
    pub rate_limits: RateLimitSettings,
    /// Connection limits (production's defaults unless a test says otherwise).
    pub connections: ConnectionLimits,
    /// The issuer and audience enforced on shared-secret tokens.
    pub rules: ClaimRules,
    /// Better Auth's JWKS, as a second (or the only) key source.
    pub jwks: Option<JwksSettings>,
    /// Leave out the shared secret (JWKS only).
    pub no_shared_secret: bool,
    /// Older shared secrets still accepted beside [`SECRET`] (a rotation in progress).
    pub previous_secrets: Vec<Vec<u8>>,
    /// `AUTH_COOKIES=on`, with `cors_origins` as the origins cookie writes may come from.
    pub auth_cookies: bool,
    /// `SHUTDOWN_DRAIN_SECS`: served, not ready, this long after [`TestServer::begin_shutdown`]
    /// (none by default).
    pub shutdown_drain: std::time::Duration,
    /// How live streams learn of other instances' writes; by default as the service decides
    /// for the database (PostgreSQL: `LISTEN` on it, or a poll behind a pooler).
    pub event_source: Option<server::events::Source>,
    /// `EVENT_STREAMS_PER_USER` (default 8).
    pub event_streams_per_user: Option<usize>,
    /// How the store connects: production's defaults unless a test says otherwise (retention,
    /// the task cap); [`TestServer::start_with`] sets what the backend decides.
    pub connect: ConnectOptions,
}

impl TestServer {
    /// A server over a fresh, empty database of `backend`.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, mut options: Options) -> Self {
        let database = Database::fresh(backend).await;
        options.connect.statement_cache_capacity =
            backend.connect_options().statement_cache_capacity;
        let mut server = Self::start_on(&database.url, options).await;
        server._database = Some(database);
        server
    }

    /// A server over an existing database URL.
    pub async fn start_on(database_url: &str, options: Options) -> Self {
        logs::capture();
        let store = server::store::connect(database_url, &options.connect)
            .await
            .expect("connect the store");
        let sources = KeySources {
            shared_secret: (!options.no_shared_secret)
                .then(|| (SECRET.as_bytes().to_vec(), options.rules.clone())),
            previous_secrets: options.previous_secrets.clone(),
            jwks: options.jwks.clone(),
        };
        server::upkeep::spawn(store.clone(), options.connect.retention);
        let verifier = server::auth::verifier(sources).expect("key sources");
        let violations = Violations::default();
        let seen = violations.clone();
        let undeclared_expected = Arc::new(AtomicBool::new(false));
        let expected = undeclared_expected.clone();
        let app_options =
            AppOptions { cors_origins: options.cors_origins.clone(), metrics: options.metrics };
        let rate_limits = RateLimits::start(&options.rate_limits).expect("rate limits");
        let cookie_auth = options
            .auth_cookies
            .then(|| Arc::new(CookieAuth { allowed_origins: options.cors_origins.clone() }));
        let draining = server::shutdown::Draining::default();
        let source = options.event_source.clone().unwrap_or_else(|| {
            server::events::Source::for_database(
                database_url,
                None,
                options.connect.statement_cache_capacity,
            )
        });
        let events = server::events::Hub::new(options.event_streams_per_user.unwrap_or(8));
        events.spawn(store.clone(), source);
        let state = AppState {
            store,
            verifier,
            rate_limits,
            cookie_auth,
            draining: draining.clone(),
            events,
        };
        let app = server::app(state, &app_options)
            .around(move |next, req| check_response(next, req, seen.clone(), expected.clone()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let address = listener.local_addr().unwrap();
        let (shutdown, stop) = oneshot::channel::<()>();
        let limits = options.connections;
        let stopped = draining.after(
            async {
                let _ = stop.await;
            },
            options.shutdown_drain,
        );
        tokio::spawn(server::serve_with(listener, app, stopped, limits));
        // The socket is bound and listening already, so the server is ready as soon as it is
        // spawned: connections made now wait in the backlog.
        Self {
            base_url: format!("http://{address}"),
            database_url: database_url.to_owned(),
            shutdown: Some(shutdown),
            violations,
            undeclared_expected,
            log_lines_at_start: logs::leaks().1,
            _database: None,
        }
    }

    /// Sends the shutdown signal, as SIGTERM does to the binary: not ready at once, served for
    /// the drain period, then closed.
    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Says that this test sends requests that are no operation of `openapi.json` on purpose
    /// (unknown routes, other methods, preflights): else each one fails the test.
    pub fn expect_undeclared_requests(&self) {
        self.undeclared_expected.store(true, Ordering::Relaxed);
    }

    /// The generated client, authenticated as `user`.
    pub fn client(&self, user: &str) -> client_sdk::Client {
        client_sdk::authenticated(&self.base_url, &token(user)).expect("client")
    }

    /// The generated client without credentials.
    pub fn anonymous(&self) -> client_sdk::Client {
        client_sdk::anonymous(&self.base_url).expect("client")
    }

    /// A plain HTTP client for requests the generated client cannot express.
    pub fn raw(&self) -> RawClient {
        RawClient {
            base_url: self.base_url.clone(),
            http: client_sdk::http_client_builder().build().expect("http client"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if !std::thread::panicking() {
            let (leaks, lines) = logs::leaks();
            assert!(leaks.is_empty(), "a secret, password or token was logged: {leaks:?}");
            // Every request logs a line: a scan that saw none proves nothing.
            assert!(lines > self.log_lines_at_start, "no log line was captured: is the scan on?");
            let violations = self.violations.lock().unwrap();
            assert!(violations.is_empty(), "responses broke openapi.json: {violations:#?}");
        }
    }
}

/// Holds every response to the contract, and looks at it (headers and body) for secrets,
/// passwords and tokens.
async fn check_response<E: Endpoint>(
    next: E,
    req: Request,
    violations: Violations,
    undeclared_expected: Arc<AtomicBool>,
) -> poem::Result<Response> {
    let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
    let mut response = next.call(req).await?.into_response();
    if is_event_stream(&response) {
        return Ok(check_event_stream(method, path, response, violations));
    }
    let body = response.take_body().into_bytes().await.unwrap_or_default();
    let status = response.status().as_u16();
    match contract::Contract::get().check(&method, &path, status, response.headers(), &body) {
        Ok(true) => {}
        Ok(false)
            if undeclared_expected.load(Ordering::Relaxed)
                || UNDOCUMENTED_ENDPOINTS.contains(&path.as_str()) => {}
        Ok(false) => violations.lock().unwrap().push(format!(
            "{method} {path} ({status}): no operation of openapi.json (a test that means it \
             calls expect_undeclared_requests)"
        )),
        Err(violation) => violations.lock().unwrap().push(format!("{method} {path}: {violation}")),
    }
    let text = String::from_utf8_lossy(&body);
    if logs::is_secret_bearing(&text) {
        logs::record_leak(format!("response body: {text}"));
    }
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        if logs::is_secret_bearing(&value) {
            logs::record_leak(format!("response header {name}: {value}"));
        }
    }
    response.set_body(body);
    Ok(response)
}

fn is_event_stream(response: &Response) -> bool {
    response.content_type().is_some_and(|value| value.starts_with("text/event-stream"))
}

/// An event stream never ends by itself: its events are held to the document one by one as
/// they pass, without holding the stream back.
fn check_event_stream(
    method: String,
    path: String,
    mut response: Response,
    violations: Violations,
) -> Response {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let contract = contract::Contract::get();
    if let Err(violation) = contract.check(&method, &path, status, &headers, b"") {
        violations.lock().unwrap().push(format!("{method} {path}: {violation}"));
    }
    let mut pending = Vec::new();
    let body = response.take_body().into_bytes_stream().map(move |chunk| {
        if let Ok(bytes) = &chunk {
            pending.extend_from_slice(bytes);
            while let Some(end) = pending.windows(2).position(|pair| pair == b"\n\n") {
                let event: Vec<u8> = pending.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&event);
                if logs::is_secret_bearing(&text) {
                    logs::record_leak(format!("event: {text}"));
                }
                if let Err(violation) = contract.check(&method, &path, status, &headers, &event) {
                    violations.lock().unwrap().push(format!("{method} {path}: {violation}"));
                }
            }
        }
        chunk
    });
    response.set_body(poem::Body::from_bytes_stream(body));
    response
}

/// reqwest with the base URL filled in.
pub struct RawClient {
    base_url: String,
    pub http: reqwest::Client,
}

impl RawClient {
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{}", self.base_url, path))
    }
}

/// A valid HS256 token for `subject`, expiring in an hour.
pub fn token(subject: &str) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    sign(&json!({ "sub": subject, "iat": now, "exp": now + 3600 }))
}

/// `claims` signed with the test secret (HS256).
pub fn sign(claims: &Value) -> String {
    sign_with(Algorithm::HS256, SECRET.as_bytes(), claims)
}

pub fn sign_with(algorithm: Algorithm, secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, &EncodingKey::from_secret(secret))
        .expect("sign")
}

/// Seconds since the epoch, for building claims.
pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A unique user id, so tests sharing a database never see each other's tasks.
pub fn user(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Asserts a raw response is a problem with `status`, and returns its body.
pub async fn expect_problem(response: reqwest::Response, status: reqwest::StatusCode) -> Value {
    assert_eq!(response.status(), status, "status");
    assert_eq!(
        response.headers()[reqwest::header::CONTENT_TYPE],
        "application/problem+json",
        "content type of a {status} problem"
    );
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status.as_u16());
    assert_eq!(body["type"], "about:blank");
    assert!(body["title"].is_string());
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    body
}

/// The problem body of an API error from the generated client, or a panic naming what came.
pub fn problem<T: std::fmt::Debug>(
    result: Result<T, client_sdk::Error<client_sdk::types::Problem>>,
) -> client_sdk::types::Problem {
    match result {
        Err(client_sdk::Error::ErrorResponse(response)) => response.into_inner(),
        other => panic!("expected a problem response, got {other:?}"),
    }
}

/// Runs the same async test body on every backend: `on_every_database!(name, …)` expects an
/// `async fn name(backend: Backend)` in scope and makes `sqlite::name`, `postgres::name` and
/// `pgbouncer::name`.
#[macro_export]
macro_rules! on_every_database {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await
                }
            )*
        }
        mod pgbouncer {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::PgBouncer).await
                }
            )*
        }
    };
}

/// Reads (and discards) what the server sends until it closes the connection, on a task of its
/// own; the task answers how long after `started` that was. For tests of cut-off deadlines.
pub fn time_until_closed(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    started: std::time::Instant,
) -> tokio::task::JoinHandle<std::time::Duration> {
    use tokio::io::AsyncReadExt;
    tokio::spawn(async move {
        let mut buffer = [0u8; 1024];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
}
