//! Cross-cutting HTTP layers: the API beside the routes that are not operations, request ids,
//! access logs and request metrics, the body-size limit, and CORS.

use std::{panic::AssertUnwindSafe, time::Instant};

use crate::{
    error::{ApiError, problem_response},
    limits::MAX_BODY_BYTES,
    telemetry::{RequestFields, in_request},
};
use futures::{FutureExt as _, StreamExt as _, future::BoxFuture};
use poem::{
    Endpoint, IntoResponse, Request, Response,
    endpoint::{BoxEndpoint, DynEndpoint},
    error::ParsePathError,
    http::{HeaderName, HeaderValue, Method, header},
    middleware::Cors,
};
use poem_openapi::OperationId;

/// Most of an oversized body read before answering 413.
const MAX_DRAINED_BYTES: usize = 1024 * 1024;
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const MAX_REQUEST_ID_LEN: usize = 128;

/// The checks every request passes before the API, and the API beside the routes that are not
/// operations, in one layer: the body read and limited ([`read_body`]), the headers the API
/// parses made unambiguous ([`strict_headers`]), the state handed to the handlers as request
/// data, the request routed, and every error answered as a problem. A layer per concern nested a
/// future in a future, each holding the request: building that chain (a future moved into the
/// next at every level) was a sixth of the server's instructions per request
/// (`docs/benchmarks.md`, issue 19 step 12).
///
/// A request for the document, Swagger UI or metrics goes to `beside`, every other one straight
/// to the API, whose own router answers 404 or 405. A `Route` nesting the API at `/` did the
/// same at the cost of a second route look-up, a rebuilt URI and one more boxed future per
/// request (step 9).
// Both boxed, as the `Route` they replace was: the type of the middleware stack's future is deep
// enough already (a `Route`'s own future here overflowed the compiler's depth limit in the tests).
// The API's box was there before; the other is taken only by the rare requests beside it.
pub struct Front<S> {
    pub api: BoxEndpoint<'static, Response>,
    pub beside: BoxEndpoint<'static, Response>,
    /// What the handlers read as `Data<&S>`.
    pub state: S,
}

impl<S: Clone + Send + Sync + 'static> Endpoint for Front<S> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let answered = match check(&mut req).await {
            Ok(()) => self.route(req).await,
            Err(err) => Err(err),
        };
        // Here, inside CORS, so that error responses carry CORS headers too.
        Ok(answered.unwrap_or_else(problem_response))
    }
}

impl<S: Clone + Send + Sync + 'static> Front<S> {
    /// The endpoint's own boxed future, returned as it is: an `async` wrapper around it (as
    /// `BoxEndpoint`'s `Endpoint::call` is) would hold the request a second time.
    fn route(&self, mut req: Request) -> BoxFuture<'_, poem::Result<Response>> {
        req.extensions_mut().insert(self.state.clone());
        let endpoint = if is_beside_api(req.uri().path()) { &self.beside } else { &self.api };
        DynEndpoint::call(endpoint.as_ref(), req)
    }
}

/// The body read and limited, then the headers and the path checked. The body first: a 400 for
/// a header goes out once the body has been read, never under a client that is still sending
/// it.
async fn check(req: &mut Request) -> poem::Result<()> {
    read_body(req).await?;
    strict_headers(req)?;
    // What the nest refused (a 400): a path that does not decode to UTF-8 has no `{user_id}` or
    // `{id}` in it to speak of.
    let path = req.uri().path();
    if path.contains('%') && percent_encoding::percent_decode_str(path).decode_utf8().is_err() {
        return Err(ParsePathError.into());
    }
    Ok(())
}

/// The paths that [`Front`] sends beside the API: `/openapi.json`, `/metrics` (served only
/// when metrics are on the API's listener, a 404 otherwise) and `/docs…`.
fn is_beside_api(path: &str) -> bool {
    matches!(path, "/openapi.json" | "/metrics" | "/docs") || path.starts_with("/docs/")
}

/// Gives every request an id (the caller's `X-Request-Id` when it is sane, else a new one),
/// names it in every line logged while it is handled, echoes the id, and logs one line per
/// response. An error that reaches it (CORS's refusals: [`Front`] answers all the others) is
/// answered as a problem, and a bug that panics as a 500 problem, after the panic hook has
/// printed the panic (inside the request's scope, so with its id).
pub async fn trace_request<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .filter(|id| is_sane_request_id(id))
        .cloned()
        .unwrap_or_else(new_request_id);
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let fields = RequestFields { id: request_id.clone(), method: method.clone(), uri: uri.clone() };
    let started = Instant::now();
    let handled = in_request(fields, AssertUnwindSafe(next.call(req)).catch_unwind()).await;
    let mut response = match handled {
        Ok(Ok(response)) => response.into_response(),
        Ok(Err(err)) => problem_response(err),
        Err(_panic) => ApiError::Internal.into_response(),
    };
    let id = request_id.to_str().unwrap_or_default();
    let elapsed = started.elapsed();
    let operation = response.data::<OperationId>().map_or("none", |operation| operation.0);
    crate::metrics::request(operation, response.status(), elapsed);
    // Outside `in_request`, with the same fields at the top level: the line is about the request.
    tracing::info!(
        id,
        method = %method,
        path = uri.path(),
        status = response.status().as_u16(),
        operation,
        micros = elapsed.as_micros() as u64,
        "response"
    );
    response.headers_mut().insert(REQUEST_ID, request_id);
    Ok(response)
}

/// A new request id: a random UUID, spelled on the stack and copied once into the header value.
fn new_request_id() -> HeaderValue {
    let mut spelled = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let spelled = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut spelled);
    HeaderValue::from_str(spelled).expect("a UUID is a valid header value")
}

fn is_sane_request_id(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID_LEN
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Reads at most [`MAX_BODY_BYTES`] of the body, whether or not `Content-Length` is sent
/// (chunked uploads included). Unlike poem's `SizeLimit`, a request without a body is fine.
///
/// An oversized body is still read (and dropped) up to [`MAX_DRAINED_BYTES`] before the 413 goes
/// out: closing the connection under a client that is still sending would make it see a reset
/// instead of the answer.
///
/// Only `POST` and `PUT` take a body; on every other method one sent is drained the same way
/// and ignored, as the contract says, and so never answered with a 413.
async fn read_body(req: &mut Request) -> poem::Result<()> {
    let body = req.take_body();
    if body.is_empty() {
        // Nothing to read or to limit (a GET, a DELETE): the request goes on as it came.
        req.set_body(body);
        return Ok(());
    }
    let takes_body = matches!(*req.method(), Method::POST | Method::PUT);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if takes_body && declared.is_some_and(|len| len > MAX_DRAINED_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge.into());
    }
    let mut chunks = body.into_bytes_stream();
    let mut body = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = chunks.next().await {
        let chunk =
            chunk.map_err(|_| ApiError::BadRequest("the request body could not be read".into()))?;
        seen += chunk.len();
        if seen > MAX_DRAINED_BYTES {
            break;
        }
        if takes_body && seen <= MAX_BODY_BYTES {
            body.extend_from_slice(&chunk);
        }
    }
    if takes_body && seen > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge.into());
    }
    req.set_body(body);
    Ok(())
}

/// `Idempotency-Key`, the one request header the API reads that must not repeat.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Makes the request headers the API parses itself unambiguous before any handler sees them.
/// poem-openapi silently skips a header value that is not visible ASCII, which would turn a
/// keyed or conditional write into a plain one: such a value is a 400 here. Repeated
/// `If-Match`/`If-None-Match` fields are one list (RFC 9110 §5.3) and are joined, since the
/// handlers read only the first; a repeated `Idempotency-Key` is a 400. Only the task
/// operations (`/api/…`) read these headers.
fn strict_headers(req: &mut Request) -> poem::Result<()> {
    if !req.uri().path().starts_with("/api/") {
        return Ok(());
    }
    let headers = req.headers_mut();
    for name in [header::IF_MATCH, header::IF_NONE_MATCH, IDEMPOTENCY_KEY] {
        let values: Vec<&HeaderValue> = headers.get_all(&name).iter().collect();
        if values.iter().any(|value| value.to_str().is_err()) {
            return Err(
                ApiError::BadRequest(format!("the {name} header must be visible ASCII")).into()
            );
        }
        if values.len() > 1 {
            if name == IDEMPOTENCY_KEY {
                return Err(ApiError::BadRequest(format!("send one {name} header")).into());
            }
            let joined = values.iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
            let joined = HeaderValue::from_str(&joined.join(", "))
                .map_err(|_| ApiError::BadRequest(format!("the {name} header is malformed")))?;
            headers.insert(name, joined);
        }
    }
    Ok(())
}

/// CORS for the frontend's origins; preflights need no token.
pub fn cors(origins: &[String]) -> Cors {
    Cors::new()
        .allow_origins(origins.iter().map(String::as_str))
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            IDEMPOTENCY_KEY,
            REQUEST_ID,
        ])
        .expose_headers([
            HeaderName::from_static("x-total-count"),
            header::LINK,
            header::LOCATION,
            header::ETAG,
            crate::api::REPLAYED,
            REQUEST_ID,
        ])
        .allow_credentials(true)
        .max_age(600)
}

#[cfg(test)]
mod tests {
    use poem::{EndpointExt as _, endpoint::make_sync, http::StatusCode};

    use super::*;

    /// What `CatchPanic` and the problem layers around CORS did before [`trace_request`] took
    /// them over: a panic and an error that reach it are problems, with the request's id.
    #[tokio::test]
    async fn a_panic_or_an_error_that_reaches_the_outer_layer_is_answered_as_a_problem() {
        let panics = make_sync(|_| -> &'static str { panic!("a bug") }).around(trace_request);
        let refuses = make_sync(|_| -> poem::Result<&'static str> {
            Err(poem::error::CorsError::OriginNotAllowed.into())
        })
        .around(trace_request);
        for (app, status) in [
            (panics.boxed(), StatusCode::INTERNAL_SERVER_ERROR),
            (refuses.boxed(), StatusCode::FORBIDDEN),
        ] {
            let request = Request::builder().header(REQUEST_ID, "the-id").finish();
            let response = app.get_response(request).await;
            assert_eq!(response.status(), status);
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
            assert_eq!(response.headers()[REQUEST_ID], "the-id");
            let body: serde_json::Value =
                serde_json::from_slice(&response.into_body().into_vec().await.unwrap()).unwrap();
            assert_eq!(body["status"], status.as_u16(), "{body}");
        }
    }
}
