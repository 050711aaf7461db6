//! The HTTP API: operations, their types, and the OpenAPI document built from them.
//! `service()` needs no database and no server, so the xtask and `main` share it.

mod changes;
mod conditional;
mod cursor;
mod events;
mod health;
mod idempotency;
mod payload;
mod security;
mod spec;
mod tasks;
mod types;
mod validation;

use bytes::Bytes;
use poem::{Endpoint, Response, Route, endpoint::make_sync};

pub use idempotency::REPLAYED;
use poem_openapi::{LicenseObject, OpenApiService, ServerObject, Tags};
pub(crate) use types::Timestamp;

#[derive(Tags)]
pub enum ApiTags {
    /// Your tasks; the owner is the token's subject.
    Tasks,
    /// The same operations under `/api/{user_id}/tasks`, as the original frontend calls them:
    /// `{user_id}` must be the token's subject, else 403 (before anything else is read).
    #[oai(rename = "Tasks by user path")]
    UserTasks,
    /// Service health.
    Health,
}

pub type Api = (tasks::TasksApi, tasks::UserTasksApi, health::HealthApi);

const DESCRIPTION: &str = "Create, list, read, update, complete and delete your own tasks. \
Every `/api` operation needs `Authorization: Bearer <JWT>` (a Better Auth token); nobody ever \
sees or touches another user's task: another user's task answers 404, exactly like a missing \
one. Errors are RFC 9457 problem details (`application/problem+json`).\n\n\
**Safe retries.** Creates, updates, toggles and deletes take an `Idempotency-Key` header: a \
retry with the same key and request gets the first response again instead of running twice.\n\n\
**Sync.** `GET /api/tasks/changes` hands out every change (including deletions) after a \
cursor, so a second device or an offline copy stays exact without downloading the list again.";

/// The API definition, the single source of `openapi.json`.
pub fn service() -> OpenApiService<Api, ()> {
    OpenApiService::new(
        (tasks::TasksApi, tasks::UserTasksApi, health::HealthApi::default()),
        "Task API",
        env!("CARGO_PKG_VERSION"),
    )
    .description(DESCRIPTION)
    .license(LicenseObject::new("MIT").url("https://opensource.org/licenses/MIT"))
    // Relative: the API is where its document is served (Swagger UI calls the same origin).
    .server(ServerObject::new("/").description("the server this document is served by"))
}

/// The OpenAPI document as committed in `openapi.json` and served at `/openapi.json`.
pub fn openapi_json() -> String {
    let mut spec = serde_json::to_string_pretty(&spec::publish(&service().spec()))
        .expect("the document is JSON");
    spec.push('\n');
    spec
}

/// The published document, and Swagger UI's page (its ~3 MB of assets embedded, no CDN) over
/// it; built once, served as shared bytes (a request clones a pointer, not the page).
pub fn documents() -> (Bytes, Bytes) {
    let spec = openapi_json();
    // poem-openapi's page inlines the document of its service: take the page of an empty one
    // (so its copies of the page do not carry ours) and put the published document in its place.
    let empty = OpenApiService::new((), "", "");
    let (page, placeholder) = (empty.swagger_ui_html(), empty.spec());
    let (head, tail) =
        page.split_once(&placeholder).expect("Swagger UI's page no longer inlines the document");
    let mut html = String::with_capacity(head.len() + spec.len() + tail.len());
    html.extend([head, spec.as_str(), tail]);
    (Bytes::from(spec), Bytes::from(html))
}

/// Swagger UI at `/`, from [`documents`]' page.
pub fn swagger_ui(page: Bytes) -> impl Endpoint + 'static {
    let page = make_sync(move |_| {
        Response::builder().content_type("text/html; charset=utf-8").body(page.clone())
    });
    Route::new().at("/", page)
}

#[cfg(test)]
mod tests {
    /// `cargo test` alone catches a spec that no longer matches the code.
    #[test]
    fn committed_openapi_json_matches_the_code() {
        let committed = include_str!("../../../openapi.json");
        assert!(
            committed == super::openapi_json(),
            "openapi.json is stale: run `cargo xtask openapi` and commit it"
        );
    }

    #[test]
    fn every_operation_has_a_unique_snake_case_operation_id() {
        let spec: serde_json::Value = serde_json::from_str(&super::openapi_json()).unwrap();
        let mut ids = Vec::new();
        for (_, path) in spec["paths"].as_object().unwrap() {
            for (_, operation) in path.as_object().unwrap() {
                let id = operation["operationId"].as_str().expect("operationId").to_owned();
                assert!(id.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{id}");
                assert!(operation["tags"].as_array().is_some_and(|t| !t.is_empty()), "{id}");
                assert!(operation["summary"].is_string(), "{id}");
                ids.push(id);
            }
        }
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "duplicate operationId");
        assert_eq!(count, 19);
    }
}
