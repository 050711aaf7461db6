//! The task API: a multi-user todo service whose contract is its OpenAPI document.
//!
//! Layout: [`api`] (HTTP types and handlers), [`auth`] (token → subject), [`store`] (one storage
//! trait, PostgreSQL and SQLite), [`config`], [`error`] (problem responses), [`http`]
//! (middleware), [`limits`] (every size limit, once), [`telemetry`]. [`serve`] runs the service on a listener until a shutdown
//! signal, which is how `main` and the tests start it.

pub mod api;
pub mod auth;
pub mod config;
pub mod connections;
pub mod error;
pub mod events;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod rate_limit;
pub mod serving;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod upkeep;

use std::{future::Future, sync::Arc};

use poem::{Endpoint, EndpointExt, IntoEndpoint as _, Response, Route, endpoint::make_sync};

use crate::{
    auth::{CookieAuth, Verifier},
    config::Config,
    connections::ConnectionLimits,
    events::Hub,
    rate_limit::RateLimits,
    shutdown::Draining,
    store::{ConnectOptions, TaskStore},
};

/// What every request needs, handed to handlers as request data.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn TaskStore>,
    pub verifier: Arc<dyn Verifier>,
    /// `None` when rate limiting is off.
    pub rate_limits: Option<Arc<RateLimits>>,
    /// `None` unless `AUTH_COOKIES=on`.
    pub cookie_auth: Option<Arc<CookieAuth>>,
    /// Set once a shutdown has begun: readiness turns 503.
    pub draining: Draining,
    /// Who follows live changes here, and what wakes them.
    pub events: Arc<Hub>,
}

impl AppState {
    /// Sets up token verification (a JWKS starts loading in the background at once) and
    /// connects to the configured database, migrating it.
    pub async fn from_config(config: &Config) -> anyhow::Result<Self> {
        let verifier = auth::verifier(config.key_sources())?;
        let options = ConnectOptions {
            statement_cache_capacity: config.statement_cache_capacity,
            retention: config.retention,
            max_tasks_per_user: config.max_tasks_per_user,
            max_connections: config.database_max_connections,
            ..ConnectOptions::default()
        };
        let store = store::connect(config.database_url.expose(), &options).await?;
        upkeep::spawn(store.clone(), config.retention);
        let events = Hub::new(config.event_streams_per_user);
        events.spawn(store.clone(), config.event_source());
        let rate_limits = RateLimits::start(&config.rate_limits)?;
        let cookie_auth = config.cookie_auth().map(Arc::new);
        let draining = Draining::default();
        Ok(Self { store, verifier, rate_limits, cookie_auth, draining, events })
    }
}

/// How the HTTP application is put together.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// Origins allowed by CORS.
    pub cors_origins: Vec<String>,
    /// Serve `GET /metrics` beside the API.
    pub metrics: bool,
}

impl AppOptions {
    pub fn from_config(config: &Config) -> Self {
        Self {
            cors_origins: config.cors_origins.clone(),
            metrics: config.metrics == config::MetricsListener::Api,
        }
    }
}

/// The whole HTTP application: the API, `/openapi.json`, `/docs`, `/metrics` (unless moved or
/// off), and the middleware stack.
pub fn app(state: AppState, options: &AppOptions) -> impl Endpoint + 'static {
    let api = api::service();
    let (spec, page) = api::documents();
    let docs = api::swagger_ui(page);
    let spec =
        make_sync(move |_| Response::builder().content_type("application/json").body(spec.clone()));
    let mut beside = Route::new().at("/openapi.json", poem::get(spec)).nest("/docs", docs);
    if options.metrics {
        beside = beside.at("/metrics", poem::get(metrics::endpoint(state.store.clone())));
    }
    let cors_origins = &options.cors_origins;
    http::Front { api: api.into_endpoint(), beside: beside.boxed(), state }
        .with_if(!cors_origins.is_empty(), http::cors(cors_origins))
        .around(http::trace_request)
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish;
/// with the default connection limits.
pub async fn serve(
    listener: std::net::TcpListener,
    app: impl Endpoint + 'static,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with(listener, app, shutdown, ConnectionLimits::default()).await
}

pub use serving::serve_with;
