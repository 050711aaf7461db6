//! `GET /health`: liveness plus a bounded database round trip, for load balancers and humans;
//! in JWKS mode it also says whether Better Auth's key set has loaded.

use std::time::Duration;

use poem::web::Data;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, payload::Json};

use super::ApiTags;
use crate::AppState;

const PING_TIMEOUT: Duration = Duration::from_secs(1);

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
/// has not loaded; `unhealthy`: the database does not answer (then the status code is 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
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

pub struct HealthApi;

#[OpenApi]
impl HealthApi {
    /// Check health
    ///
    /// No authentication. 200 when a `SELECT 1` succeeds within a second, else 503. In JWKS
    /// mode, `jwks` says whether Better Auth's key set has loaded; when it has not, the status
    /// is `degraded` (still 200).
    #[oai(path = "/health", method = "get", operation_id = "health", tag = "ApiTags::Health")]
    async fn health(&self, state: Data<&AppState>) -> HealthResponse {
        let jwks = state.verifier.key_set_loaded().map(|loaded| match loaded {
            true => JwksStatus::Ok,
            false => JwksStatus::Unavailable,
        });
        match tokio::time::timeout(PING_TIMEOUT, state.store.ping()).await {
            Ok(Ok(())) => HealthResponse::Healthy(Json(Health {
                status: match jwks {
                    Some(JwksStatus::Unavailable) => HealthStatus::Degraded,
                    _ => HealthStatus::Healthy,
                },
                database: DatabaseStatus::Ok,
                jwks,
            })),
            outcome => {
                tracing::warn!(timed_out = outcome.is_err(), "health check: database unreachable");
                HealthResponse::Unhealthy(
                    Json(Health {
                        status: HealthStatus::Unhealthy,
                        database: DatabaseStatus::Unreachable,
                        jwks,
                    }),
                    crate::error::RETRY_AFTER_SECS.into(),
                )
            }
        }
    }
}
