//! `GET /health`: liveness plus a bounded database round trip, for load balancers and humans.

use std::time::Duration;

use poem::web::Data;
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};

use super::ApiTags;
use crate::AppState;

const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// The service's health.
#[derive(Debug, Object)]
pub struct Health {
    /// `healthy` or `unhealthy`.
    pub status: String,
    /// `ok` or `unreachable`.
    pub database: String,
}

#[derive(ApiResponse)]
pub enum HealthResponse {
    /// The service and its database answer.
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
    /// No authentication. 200 when a `SELECT 1` succeeds within a second, else 503.
    #[oai(path = "/health", method = "get", operation_id = "health", tag = "ApiTags::Health")]
    async fn health(&self, state: Data<&AppState>) -> HealthResponse {
        match tokio::time::timeout(PING_TIMEOUT, state.store.ping()).await {
            Ok(Ok(())) => HealthResponse::Healthy(Json(Health {
                status: "healthy".into(),
                database: "ok".into(),
            })),
            outcome => {
                tracing::warn!(timed_out = outcome.is_err(), "health check: database unreachable");
                HealthResponse::Unhealthy(
                    Json(Health { status: "unhealthy".into(), database: "unreachable".into() }),
                    crate::error::RETRY_AFTER_SECS.into(),
                )
            }
        }
    }
}
