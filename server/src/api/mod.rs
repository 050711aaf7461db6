//! The HTTP API: operations, their types, and the OpenAPI document built from them.
//! `service()` needs no database and no server, so the xtask and `main` share it.

mod health;
mod security;
mod tasks;
mod types;
mod validation;

use poem_openapi::{OpenApiService, Tags};

pub use security::Caller;

#[derive(Tags)]
pub enum ApiTags {
    /// Your tasks; the owner is the token's subject.
    Tasks,
    /// The same operations under `/api/{user_id}/tasks`, as the original frontend calls them.
    #[oai(rename = "Tasks by user path")]
    UserTasks,
    /// Service health.
    Health,
}

pub type Api = (tasks::TasksApi, health::HealthApi);

const DESCRIPTION: &str = "Create, list, read, update, complete and delete your own tasks. \
Every `/api` operation needs `Authorization: Bearer <JWT>` (a Better Auth token); nobody ever \
sees or touches another user's task: another user's task answers 404, exactly like a missing \
one. Errors are RFC 9457 problem details (`application/problem+json`).";

/// The API definition, the single source of `openapi.json`.
pub fn service() -> OpenApiService<Api, ()> {
    OpenApiService::new(
        (tasks::TasksApi, health::HealthApi),
        "Task API",
        env!("CARGO_PKG_VERSION"),
    )
    .description(DESCRIPTION)
}

/// The OpenAPI document as committed in `openapi.json` and served at `/openapi.json`.
pub fn openapi_json() -> String {
    let mut spec = service().spec();
    spec.push('\n');
    spec
}
