//! The HTTP error type and its one mapping to RFC 9457 problem responses.
//!
//! Handlers return [`ApiError`]; the framework's own failures (bad JSON, bad parameters, missing
//! auth header, unknown route, wrong method, wrong content type) arrive as `poem::Error` and are
//! turned into an `ApiError` by [`problem_response`], so that every error body has one shape and
//! none carries internals.

use poem::{
    IntoResponse, Response,
    error::{CorsError, MethodNotAllowedError, NotFoundError, ResponseError},
    http::{HeaderValue, StatusCode, header},
};
use poem_openapi::{
    ApiResponse, Enum, Object, OperationId,
    error::{ContentTypeError, ParseParamError, ParsePathError, ParseRequestPayloadError},
    registry::{MetaMediaType, MetaResponse, MetaResponses, Registry},
    types::Type,
};

use crate::{auth::AuthError, store::StoreError};

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";
/// Seconds a client should wait after a 503.
pub const RETRY_AFTER_SECS: &str = "2";

/// An RFC 9457 problem details body.
#[derive(Debug, Clone, Object)]
pub struct Problem {
    #[oai(rename = "type")]
    pub kind: ProblemType,
    /// The status code's reason phrase.
    pub title: String,
    pub status: u16,
    /// A human-readable explanation a frontend can show as is.
    pub detail: String,
    /// On 422: one entry per invalid field.
    #[oai(skip_serializing_if_is_none)]
    pub errors: Option<Vec<FieldError>>,
}

/// Always `about:blank`: the status code says what kind of problem it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum ProblemType {
    #[oai(rename = "about:blank")]
    AboutBlank,
}

/// One invalid field of a request body.
#[derive(Debug, Clone, PartialEq, Eq, Object)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self { field: field.to_owned(), message: message.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// Build it with `From<AuthError>`, which turns an unavailable key set into a 503.
    #[error("{0}")]
    Unauthorized(AuthError),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request conflicts with the state of things: `detail` says how; with `retry_after`,
    /// waiting that many seconds may resolve it.
    #[error("{detail}")]
    Conflict { detail: &'static str, retry_after_secs: Option<u64> },
    #[error("{0}")]
    Gone(&'static str),
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("validation failed")]
    Unprocessable(Vec<FieldError>),
    #[error("too many requests")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("service unavailable")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub const TASK_NOT_FOUND: ApiError = ApiError::NotFound("task not found");
    /// A request with the same `Idempotency-Key` is running: its response will be replayed.
    pub const IDEMPOTENCY_KEY_IN_FLIGHT: ApiError = ApiError::Conflict {
        detail: "a request with this Idempotency-Key is still running: retry shortly to get its \
                 response",
        retry_after_secs: Some(1),
    };
    /// `MAX_TASKS_PER_USER`: the caller holds as many tasks as allowed.
    pub const TASK_LIMIT_REACHED: ApiError =
        ApiError::Conflict { detail: "task limit reached", retry_after_secs: None };
    /// `{user_id}` in the path is not the caller.
    pub const NOT_THE_PATH_USER: ApiError =
        ApiError::Forbidden("the user in the path is not the authenticated user");
    /// A cookie-authenticated write from a page the service does not trust: what cross-site
    /// request forgery looks like.
    pub const CROSS_SITE_WRITE: ApiError = ApiError::Forbidden(
        "a write authenticated by cookie must come from an allowed origin (Origin or Referer)",
    );
    /// A request whose `Origin` is not among the allowed ones (refused by CORS).
    pub const FOREIGN_ORIGIN: ApiError =
        ApiError::Forbidden("the request's Origin is not an allowed origin");
    /// `EVENT_STREAMS_PER_USER`: the caller holds as many live streams here as allowed.
    pub const TOO_MANY_STREAMS: ApiError = ApiError::TooManyRequests { retry_after_secs: 5 };
    /// A change-log cursor that can no longer be served.
    pub const CURSOR_GONE: ApiError = ApiError::Gone(
        "this cursor is older than the deletions kept (or not of this database): start over \
         without `since`",
    );

    fn detail(&self) -> String {
        match self {
            ApiError::BadRequest(detail) => detail.clone(),
            ApiError::Unauthorized(AuthError::Missing) => {
                "missing bearer token in the Authorization header".into()
            }
            ApiError::Unauthorized(AuthError::Expired) => "token expired".into(),
            ApiError::Unauthorized(AuthError::Invalid(_) | AuthError::KeysUnavailable) => {
                "invalid token".into()
            }
            ApiError::Forbidden(detail) | ApiError::NotFound(detail) => (*detail).into(),
            ApiError::MethodNotAllowed => "method not allowed on this resource".into(),
            ApiError::Conflict { detail, .. } | ApiError::Gone(detail) => (*detail).into(),
            ApiError::PreconditionFailed => {
                "the task has changed: If-Match does not match its current ETag".into()
            }
            ApiError::PayloadTooLarge => {
                format!("request body is larger than {} bytes", crate::limits::MAX_BODY_BYTES)
            }
            ApiError::UnsupportedMediaType => "request body must be application/json".into(),
            ApiError::Unprocessable(errors) => errors
                .iter()
                .map(|e| format!("{} {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "),
            ApiError::TooManyRequests { retry_after_secs } => {
                format!("too many requests: try again in {retry_after_secs} s")
            }
            ApiError::Unavailable => {
                "the service is temporarily unavailable, try again shortly".into()
            }
            ApiError::Internal => "internal server error".into(),
        }
    }

    fn problem(&self) -> Problem {
        let status = ResponseError::status(self);
        Problem {
            kind: ProblemType::AboutBlank,
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: self.detail(),
            errors: match self {
                ApiError::Unprocessable(errors) => Some(errors.clone()),
                _ => None,
            },
        }
    }
}

impl ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn as_response(&self) -> Response {
        let body = serde_json::to_vec(&poem_openapi::types::ToJSON::to_json(&self.problem()))
            .unwrap_or_default();
        let mut response = Response::builder()
            .status(ResponseError::status(self))
            .content_type(PROBLEM_CONTENT_TYPE)
            .body(body);
        let headers = response.headers_mut();
        match self {
            // RFC 6750 §3: no error code when no credentials were sent.
            ApiError::Unauthorized(AuthError::Missing) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tasks\""),
                );
            }
            ApiError::Unauthorized(AuthError::Expired) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"tasks\", error=\"invalid_token\", error_description=\"token expired\"",
                    ),
                );
            }
            ApiError::Unauthorized(AuthError::Invalid(_) | AuthError::KeysUnavailable) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tasks\", error=\"invalid_token\""),
                );
            }
            ApiError::Unavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
            }
            ApiError::TooManyRequests { retry_after_secs }
            | ApiError::Conflict { retry_after_secs: Some(retry_after_secs), .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::KeysUnavailable => {
                crate::metrics::unavailable("key_set");
                ApiError::Unavailable
            }
            other => ApiError::Unauthorized(other),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "database unavailable");
                crate::metrics::unavailable("database");
                ApiError::Unavailable
            }
            StoreError::KeyTaken => ApiError::IDEMPOTENCY_KEY_IN_FLIGHT,
            StoreError::TaskLimitReached => ApiError::TASK_LIMIT_REACHED,
            StoreError::Internal(err) => {
                tracing::error!(error = ?err, "store error");
                ApiError::Internal
            }
        }
    }
}

/// Error responses are documented per operation by `api::spec` (from [`ApiError::documented`]).
/// Here only the one every operation has, a 500, which keeps the problem schema in the document
/// (poem-openapi drops schemas nothing refers to).
impl ApiResponse for ApiError {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "A bug; the detail is generic.",
                status: Some(500),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: PROBLEM_CONTENT_TYPE,
                    schema: Problem::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        Problem::register(registry);
    }
}

/// How the OpenAPI document describes one error status.
pub struct ErrorDoc {
    pub description: String,
    /// Headers sent with it: name, description, and whether it is always sent.
    pub headers: Vec<(&'static str, &'static str, bool)>,
    /// A body this server really sends with that status.
    pub example: serde_json::Value,
}

impl ApiError {
    /// The documentation of an error status an operation can answer. The example is built by
    /// the same code that answers real requests.
    pub fn documented(status: u16) -> ErrorDoc {
        let (error, description): (ApiError, String) = match status {
            400 => (
                ApiError::BadRequest("request body is not valid JSON".into()),
                "A path or query parameter does not parse, or the body is not valid JSON.".into(),
            ),
            401 => (
                ApiError::Unauthorized(AuthError::Invalid(String::new())),
                "The bearer token is missing, malformed, expired or not valid.".into(),
            ),
            403 => (
                ApiError::NOT_THE_PATH_USER,
                "The user id in the path is not the token's subject; or (a write signed in by \
                 cookie, `AUTH_COOKIES=on`) its `Origin`, else its `Referer`, is not an allowed \
                 origin. Nothing was changed."
                    .into(),
            ),
            404 => (
                ApiError::TASK_NOT_FOUND,
                "No such task for this user (another user's task is reported the same way).".into(),
            ),
            409 => (
                ApiError::IDEMPOTENCY_KEY_IN_FLIGHT,
                "A request with the same `Idempotency-Key` is still running; `Retry-After` says \
                 when to ask again (the first request's response comes back then). On create, \
                 also: the caller holds `MAX_TASKS_PER_USER` tasks already (\"task limit \
                 reached\", no `Retry-After`); nothing was created."
                    .into(),
            ),
            410 => (
                ApiError::CURSOR_GONE,
                "`since` is older than the deletions the service keeps \
                 (`TOMBSTONE_RETENTION_SECS`): sync again from the start, without it."
                    .into(),
            ),
            412 => (
                ApiError::PreconditionFailed,
                "`If-Match` does not match the task's current `ETag`; nothing changed.".into(),
            ),
            413 => (
                ApiError::PayloadTooLarge,
                format!("The request body is larger than {} bytes.", crate::limits::MAX_BODY_BYTES),
            ),
            415 => (
                ApiError::UnsupportedMediaType,
                "A request body was sent without `Content-Type: application/json`.".into(),
            ),
            422 => (
                ApiError::Unprocessable(vec![FieldError::new(
                    "title",
                    format!("must be at most {} characters", crate::limits::TITLE_MAX_CHARS),
                )]),
                "The JSON body (or a number in the query) breaks the schema; `errors` lists each \
                 field."
                    .into(),
            ),
            429 => (
                ApiError::TooManyRequests { retry_after_secs: 1 },
                "The caller's rate limit (per user; without a valid token, per client address) is \
                 used up; `Retry-After` says when to try again."
                    .into(),
            ),
            500 => (ApiError::Internal, "A bug; the detail is generic.".into()),
            503 => (
                ApiError::Unavailable,
                "The database is unreachable or timed out, or (in JWKS mode) no key set could be \
                 had yet."
                    .into(),
            ),
            other => panic!("no documentation for error status {other}"),
        };
        let headers = match status {
            401 => vec![("WWW-Authenticate", "The bearer challenge (RFC 6750).", true)],
            409 => {
                vec![("Retry-After", "Seconds to wait before retrying (a key in flight).", false)]
            }
            429 | 503 => vec![("Retry-After", "Seconds to wait before retrying.", true)],
            _ => vec![],
        };
        let example =
            poem_openapi::types::ToJSON::to_json(&error.problem()).expect("a problem is JSON");
        ErrorDoc { description, headers, example }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.as_response()
    }
}

/// The catch-all: every error that reaches the top becomes a problem response (which keeps the
/// operation's id, for the access log and the metrics).
pub fn problem_response(err: poem::Error) -> Response {
    let mut response = match err.downcast_ref::<ApiError>() {
        Some(api_error) => api_error.as_response(),
        None => from_framework(&err).as_response(),
    };
    if let Some(operation) = err.data::<OperationId>() {
        response.set_data(*operation);
    }
    response
}

/// Classifies the framework's own errors, with details that name the culprit but no internals.
fn from_framework(err: &poem::Error) -> ApiError {
    if err.is::<ParseRequestPayloadError>() {
        ApiError::BadRequest("request body is not valid JSON".into())
    } else if err.is::<ParsePathError>() {
        // The task id is the only typed path parameter (poem-openapi names it `param1`).
        ApiError::BadRequest("the task id in the path must be an integer".into())
    } else if let Some(ParseParamError { name, .. }) = err.downcast_ref::<ParseParamError>() {
        ApiError::BadRequest(format!("query parameter `{name}` has an invalid value"))
    } else if err.is::<ContentTypeError>() {
        ApiError::UnsupportedMediaType
    } else if err.is::<NotFoundError>() {
        ApiError::NotFound("no such resource")
    } else if err.is::<MethodNotAllowedError>() {
        ApiError::MethodNotAllowed
    } else if err.is::<CorsError>() {
        ApiError::FOREIGN_ORIGIN
    } else {
        match err.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::NOT_FOUND => ApiError::NotFound("no such resource"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
            status if status.is_client_error() => ApiError::BadRequest("bad request".into()),
            _ => {
                tracing::error!(error = %err, "unhandled error");
                ApiError::Internal
            }
        }
    }
}
