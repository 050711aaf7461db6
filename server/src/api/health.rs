//! Health for load balancers, orchestrators and humans, without authentication:
//! - `GET /health`: a bounded database round trip; in JWKS mode also whether Better Auth's key
//!   set has loaded (the existing frontend's check; a missing key set is only `degraded`);
//! - `GET /health/live`: the process serves (no database call): restart it if not;
//! - `GET /health/ready`: the database answers, in JWKS mode a key set has loaded, and no
//!   shutdown has begun: send it traffic only then.
//!
//! The database's answer is kept for a second and shared by every probe in that second (one
//! refresh at a time, the others wait for it): a flood of probes costs one query a second, not
//! one per probe, and cannot take the pool's connections from the requests.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use poem::web::Data;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, payload::Json};

use super::ApiTags;
use crate::AppState;

const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one database check answers for.
const CHECK_MAX_AGE: Duration = Duration::from_secs(1);

/// The service's health.
#[derive(Debug, Object)]
pub struct Health {
    pub status: HealthStatus,
    pub database: DatabaseStatus,
    /// Present only in JWKS mode (`BETTER_AUTH_JWKS_URL` set): whether Better Auth's key set
    /// has loaded. Without it, asymmetric tokens get 503s; HS256 tokens, if a shared secret is
    /// configured too, still work, so this alone makes the service `degraded`, not a 503.
    #[oai(skip_serializing_if_is_none)]
    pub jwks: Option<JwksStatus>,
}

/// `healthy`: everything answers; `degraded`: the database answers but Better Auth's key set
/// has not loaded; `unhealthy`: the database does not answer (then the status code is 503);
/// `draining`: shutting down, still serving for `SHUTDOWN_DRAIN_SECS` (then readiness is 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
    Draining,
}

/// Whether `SELECT 1` succeeded within a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum DatabaseStatus {
    Ok,
    Unreachable,
}

/// Whether Better Auth's key set has loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum JwksStatus {
    Ok,
    Unavailable,
}

#[derive(ApiResponse)]
pub enum HealthResponse {
    /// The service and its database answer (`status` is `degraded` when a configured JWKS has
    /// not loaded).
    #[oai(status = 200)]
    Healthy(Json<Health>),
    /// The database did not answer `SELECT 1` within a second.
    #[oai(status = 503)]
    Unhealthy(
        Json<Health>,
        /// Seconds to wait before asking again.
        #[oai(header = "Retry-After")]
        String,
    ),
}

/// The process is alive.
#[derive(Debug, Object)]
pub struct Liveness {
    pub status: LiveStatus,
}

/// Always `alive` (a process that is not answers nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum LiveStatus {
    Alive,
}

#[derive(ApiResponse)]
pub enum LiveResponse {
    /// The process serves requests.
    #[oai(status = 200)]
    Alive(Json<Liveness>),
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// Ready for traffic: the database answers and, in JWKS mode, a key set has loaded.
    #[oai(status = 200)]
    Ready(Json<Health>),
    /// Not ready: the database does not answer within a second, (in JWKS mode) no key set has
    /// loaded yet, or the instance is shutting down (`draining`).
    #[oai(status = 503)]
    NotReady(
        Json<Health>,
        /// Seconds to wait before asking again.
        #[oai(header = "Retry-After")]
        String,
    ),
}

#[derive(Default)]
pub struct HealthApi {
    database: Arc<DatabaseCheck>,
}

/// The last database check, and a turn to refresh it.
#[derive(Default)]
struct DatabaseCheck {
    last: Mutex<Option<(Instant, DatabaseStatus)>>,
    refresh: tokio::sync::Mutex<()>,
}

impl DatabaseCheck {
    fn fresh(&self) -> Option<DatabaseStatus> {
        let last = *self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        last.filter(|(at, _)| at.elapsed() < CHECK_MAX_AGE).map(|(_, status)| status)
    }

    /// The database's status at most [`CHECK_MAX_AGE`] ago: a bounded `SELECT 1`.
    async fn status(&self, state: &AppState) -> DatabaseStatus {
        if let Some(status) = self.fresh() {
            return status;
        }
        let _turn = self.refresh.lock().await;
        // Whoever held the turn may have just refreshed it.
        if let Some(status) = self.fresh() {
            return status;
        }
        let status = match tokio::time::timeout(PING_TIMEOUT, state.store.ping()).await {
            Ok(Ok(())) => DatabaseStatus::Ok,
            outcome => {
                tracing::warn!(timed_out = outcome.is_err(), "health check: database unreachable");
                DatabaseStatus::Unreachable
            }
        };
        crate::metrics::health_database_check(status == DatabaseStatus::Ok);
        *self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some((Instant::now(), status));
        status
    }
}

#[OpenApi]
impl HealthApi {
    /// Check liveness
    ///
    /// No authentication, no database call: 200 whenever the process serves requests.
    #[oai(path = "/health/live", method = "get", operation_id = "live", tag = "ApiTags::Health")]
    async fn live(&self) -> LiveResponse {
        LiveResponse::Alive(Json(Liveness { status: LiveStatus::Alive }))
    }

    /// Check readiness
    ///
    /// No authentication. 200 when a `SELECT 1` succeeds within a second and, in JWKS mode,
    /// Better Auth's key set has loaded; else 503 with the same body as `/health`. From a
    /// shutdown signal on, 503 with `draining` while requests are still served for
    /// `SHUTDOWN_DRAIN_SECS`, so that load balancers stop sending new ones first.
    #[oai(path = "/health/ready", method = "get", operation_id = "ready", tag = "ApiTags::Health")]
    async fn ready(&self, state: Data<&AppState>) -> ReadyResponse {
        let health = self.check(&state).await;
        match health.status {
            HealthStatus::Healthy => ReadyResponse::Ready(Json(health)),
            _ => ReadyResponse::NotReady(Json(health), crate::error::RETRY_AFTER_SECS.into()),
        }
    }

    /// Check health
    ///
    /// No authentication. 200 when a `SELECT 1` succeeds within a second, else 503. In JWKS
    /// mode, `jwks` says whether Better Auth's key set has loaded; when it has not, the status
    /// is `degraded` (still 200).
    #[oai(path = "/health", method = "get", operation_id = "health", tag = "ApiTags::Health")]
    async fn health(&self, state: Data<&AppState>) -> HealthResponse {
        let health = self.check(&state).await;
        match health.database {
            DatabaseStatus::Ok => HealthResponse::Healthy(Json(health)),
            DatabaseStatus::Unreachable => {
                HealthResponse::Unhealthy(Json(health), crate::error::RETRY_AFTER_SECS.into())
            }
        }
    }
}

impl HealthApi {
    /// The database (a bounded `SELECT 1`, at most a second old) and, in JWKS mode, the key set
    /// (always current: it costs nothing to ask).
    async fn check(&self, state: &AppState) -> Health {
        let jwks = state.verifier.key_set_loaded().map(|loaded| match loaded {
            true => JwksStatus::Ok,
            false => JwksStatus::Unavailable,
        });
        let database = self.database.status(state).await;
        let mut health = health(database, jwks);
        if state.draining.is_draining() && health.status != HealthStatus::Unhealthy {
            health.status = HealthStatus::Draining;
        }
        health
    }
}

fn health(database: DatabaseStatus, jwks: Option<JwksStatus>) -> Health {
    let status = match (database, jwks) {
        (DatabaseStatus::Unreachable, _) => HealthStatus::Unhealthy,
        (DatabaseStatus::Ok, Some(JwksStatus::Unavailable)) => HealthStatus::Degraded,
        (DatabaseStatus::Ok, _) => HealthStatus::Healthy,
    };
    Health { status, database, jwks }
}
