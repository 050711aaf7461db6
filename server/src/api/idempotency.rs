//! Safe retries: the `Idempotency-Key` header on the four writes (IETF HTTPAPI draft "The
//! Idempotency-Key HTTP Header Field"). Every write goes through [`run`], key or not, so the
//! rule lives in one place:
//!
//! - without a key, the write runs on its own, as it always did;
//! - the first request with a key runs in one transaction that holds the key, and its outcome
//!   (2xx, 404, 412 or 422) is kept with the key in that same transaction, so a crash leaves
//!   both or neither;
//! - the same key with the same request gets the kept response, byte for byte, with
//!   `Idempotent-Replayed: true`; with a different request a 422; while the first is still
//!   running a 409 with `Retry-After`. Nothing runs twice.
//!
//! "The same request" is [`fingerprint`]: the operation, the task, and the body compared as
//! canonical JSON (object keys sorted, no insignificant whitespace), so a retry that serialises
//! its fields in another order is still the same request. The two path styles are one request.

use poem::{
    IntoResponse, Response,
    http::{HeaderName, HeaderValue, StatusCode, header},
};
use poem_openapi::{ApiResponse, registry::MetaResponses, registry::Registry};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::security::Caller;
use crate::{
    AppState,
    error::{ApiError, FieldError},
    events::Hub,
    store::{Claim, IdempotencyKey, Writes},
};

/// Marks a response that was replayed from a kept one.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// The longest key accepted.
pub const MAX_KEY_CHARS: usize = 255;

/// The write a request makes, as far as "the same request" is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Operation {
    Create,
    Update(i64),
    Toggle(i64),
    Delete(i64),
}

/// A write request once its key (if any) has been looked at.
pub enum Begun {
    /// It runs: through [`Session::writes`], then [`Session::finish`].
    Run(Session),
    /// The same request ran before under this key: this is its answer.
    Replay(KeptResponse),
}

/// The writes of one request, and the key they run under, if any.
pub struct Session {
    writes: Box<dyn Writes>,
    keyed: bool,
    /// Woken once the writes commit: the owner's live streams on this instance.
    wake: Woken,
}

/// Whose live streams a commit wakes (at once on this instance; the others hear of it from the
/// database, see `crate::events`).
struct Woken {
    events: std::sync::Arc<Hub>,
    owner: std::sync::Arc<String>,
}

impl Woken {
    fn new(state: &AppState, caller: &Caller) -> Self {
        Self { events: state.events.clone(), owner: caller.user_id.clone() }
    }

    fn wake(self) {
        self.events.committed(&self.owner);
    }
}

/// Looks at the request's `Idempotency-Key`, if it sent one: a replay, a 422 for a key used
/// for another request, a 409 while the key's first request runs, or writes to run. `body` is
/// the request's JSON body, for the fingerprint.
pub async fn begin(
    state: &AppState,
    caller: &Caller,
    key: Option<&str>,
    operation: Operation,
    body: Option<&Value>,
) -> Result<Begun, ApiError> {
    let Some(key) = key.map(parse_key).transpose()? else {
        let writes = state.store.writes(&caller.user_id).await?;
        return Ok(Begun::Run(Session { writes, keyed: false, wake: Woken::new(state, caller) }));
    };
    let key = IdempotencyKey { key, fingerprint: fingerprint(operation, body) };
    match state.store.claim(&caller.user_id, &key).await? {
        Claim::First(writes) => {
            Ok(Begun::Run(Session { writes, keyed: true, wake: Woken::new(state, caller) }))
        }
        Claim::Replay(kept) => Ok(Begun::Replay(KeptResponse::decode(&kept)?)),
        Claim::Mismatch => Err(ApiError::Unprocessable(vec![FieldError::new(
            "Idempotency-Key",
            "was already used for a different request (another operation, task or body): use \
             a new key",
        )])),
        Claim::InFlight => Err(ApiError::IDEMPOTENCY_KEY_IN_FLIGHT),
    }
}

impl Session {
    pub fn writes(&mut self) -> &mut dyn Writes {
        &mut *self.writes
    }

    /// Commits the writes and answers with `outcome`; under a key, a kept outcome (see
    /// [`is_kept`]) is stored with the key in the same transaction first. An outcome that is
    /// not kept commits nothing (the writes roll back when dropped).
    pub async fn finish<T: IntoResponse>(
        self,
        outcome: Result<T, ApiError>,
    ) -> Result<Keyed<T>, ApiError> {
        if !self.keyed {
            let response = outcome?;
            self.writes.commit(None).await?;
            self.wake.wake();
            return Ok(Keyed::Fresh(response));
        }
        let response = match outcome {
            Ok(response) => response.into_response(),
            Err(err) if is_kept(poem::error::ResponseError::status(&err)) => err.into_response(),
            Err(err) => return Err(err),
        };
        let kept = KeptResponse::capture(response).await?;
        self.writes.commit(Some(&kept.encode())).await?;
        self.wake.wake();
        Ok(Keyed::Kept { response: kept, replayed: false })
    }
}

impl<T> From<KeptResponse> for Keyed<T> {
    /// A replay.
    fn from(response: KeptResponse) -> Self {
        Keyed::Kept { response, replayed: true }
    }
}

/// Outcomes worth keeping: what running the request again would only repeat or contradict.
/// 400, 401, 403, 413, 415, 429 and 5xx are not (nothing ran, or a retry may succeed).
fn is_kept(status: StatusCode) -> bool {
    status.is_success()
        || matches!(
            status,
            StatusCode::NOT_FOUND
                | StatusCode::PRECONDITION_FAILED
                | StatusCode::UNPROCESSABLE_ENTITY
        )
}

/// The key of an `Idempotency-Key` header: a structured-field string (`"…"`) or the same
/// characters bare, 1 to [`MAX_KEY_CHARS`] of `A-Z a-z 0-9 - _ . : ~`; else a 400.
pub fn parse_key(value: &str) -> Result<String, ApiError> {
    let bare = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
    let valid = (1..=MAX_KEY_CHARS).contains(&bare.len())
        && bare.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:~".contains(&b));
    if valid {
        Ok(bare.to_owned())
    } else {
        Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_CHARS} characters of A-Z a-z 0-9 - _ . : ~, \
             bare or in double quotes"
        )))
    }
}

/// SHA-256 of the operation, its task and the canonical JSON of its body.
pub fn fingerprint(operation: Operation, body: Option<&Value>) -> Vec<u8> {
    let (name, id) = match operation {
        Operation::Create => ("create", None),
        Operation::Update(id) => ("update", Some(id)),
        Operation::Toggle(id) => ("toggle", Some(id)),
        Operation::Delete(id) => ("delete", Some(id)),
    };
    let mut text = Vec::with_capacity(128);
    text.extend_from_slice(name.as_bytes());
    text.push(0);
    if let Some(id) = id {
        text.extend_from_slice(id.to_string().as_bytes());
    }
    text.push(0);
    if let Some(body) = body {
        canonical_json(body, &mut text);
    }
    Sha256::digest(&text).to_vec()
}

/// JSON with object keys sorted and no whitespace.
fn canonical_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(object) => {
            let mut entries: Vec<_> = object.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (name, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, name).expect("a string serialises");
                out.push(b':');
                canonical_json(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("a scalar serialises"),
    }
}

/// A write's response: the operation's own, or one kept under its key.
pub enum Keyed<T> {
    Fresh(T),
    Kept { response: KeptResponse, replayed: bool },
}

/// Documented as `T`; the replay header is added to the document by `api::spec`.
impl<T: ApiResponse> ApiResponse for Keyed<T> {
    fn meta() -> MetaResponses {
        T::meta()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: IntoResponse> IntoResponse for Keyed<T> {
    fn into_response(self) -> Response {
        match self {
            Keyed::Fresh(response) => response.into_response(),
            Keyed::Kept { response, replayed } => {
                let mut response = response.into_response();
                if replayed {
                    response.headers_mut().insert(REPLAYED, HeaderValue::from_static("true"));
                }
                response
            }
        }
    }
}

/// The parts of a response that are kept: status, body, and the headers that describe them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeptResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// The headers a kept response keeps.
const KEPT_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::LOCATION, header::ETAG];

impl KeptResponse {
    async fn capture(response: Response) -> Result<Self, ApiError> {
        let status = response.status().as_u16();
        let headers = KEPT_HEADERS
            .iter()
            .filter_map(|name| {
                let value = response.headers().get(name)?.to_str().ok()?;
                Some((name.as_str().to_owned(), value.to_owned()))
            })
            .collect();
        let body = response.into_body().into_string().await.map_err(|_| ApiError::Internal)?;
        Ok(Self { status, headers, body })
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a kept response serialises")
    }

    fn decode(bytes: &[u8]) -> Result<Self, ApiError> {
        serde_json::from_slice(bytes).map_err(|err| {
            tracing::error!(error = %err, "a kept response does not decode");
            ApiError::Internal
        })
    }

    fn into_response(self) -> Response {
        let mut response = Response::builder()
            .status(StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .body(self.body);
        for (name, value) in self.headers {
            if let (Ok(name), Ok(value)) =
                (HeaderName::try_from(name), HeaderValue::try_from(value))
            {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn keys_are_bare_or_quoted_tokens_of_safe_characters() {
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(parse_key(uuid).unwrap(), uuid);
        assert_eq!(parse_key(&format!("\"{uuid}\"")).unwrap(), uuid);
        assert_eq!(parse_key("a.b:c~d_e").unwrap(), "a.b:c~d_e");
        assert_eq!(parse_key(&"k".repeat(255)).unwrap().len(), 255);
        for bad in ["", "\"\"", "\"abc", "a b", "a/b", "ключ", "a\"b", &"k".repeat(256)] {
            assert!(matches!(parse_key(bad), Err(ApiError::BadRequest(_))), "{bad:?}");
        }
    }

    #[test]
    fn the_same_request_is_the_same_operation_task_and_canonical_body() {
        let body = json!({"title": "a", "completed": false, "tags": ["x", {"b": 1, "a": 2}]});
        let reordered = serde_json::from_str::<Value>(
            r#"{ "tags": ["x", {"a": 2, "b": 1}],  "completed": false, "title": "a" }"#,
        )
        .unwrap();
        let create = fingerprint(Operation::Create, Some(&body));
        assert_eq!(create, fingerprint(Operation::Create, Some(&reordered)));
        assert_ne!(create, fingerprint(Operation::Create, Some(&json!({"title": "b"}))));
        assert_ne!(create, fingerprint(Operation::Update(1), Some(&body)));
        assert_ne!(fingerprint(Operation::Update(1), Some(&body)), {
            fingerprint(Operation::Update(2), Some(&body))
        });
        assert_ne!(
            fingerprint(Operation::Toggle(1), None),
            fingerprint(Operation::Delete(1), None)
        );
        // Array order is meaningful.
        assert_ne!(
            fingerprint(Operation::Create, Some(&json!({"tags": ["a", "b"]}))),
            fingerprint(Operation::Create, Some(&json!({"tags": ["b", "a"]})))
        );
    }

    #[tokio::test]
    async fn a_kept_response_comes_back_as_it_was() {
        let original = Response::builder()
            .status(StatusCode::CREATED)
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .header(header::LOCATION, "/api/tasks/7")
            .header(header::ETAG, "\"1\"")
            .header("x-other", "dropped")
            .body("{\"id\":7}");
        let kept = KeptResponse::capture(original).await.unwrap();
        let decoded = KeptResponse::decode(&kept.encode()).unwrap();
        assert_eq!(decoded, kept);
        let replay = Keyed::<()>::Kept { response: decoded, replayed: true }.into_response();
        assert_eq!(replay.status(), StatusCode::CREATED);
        assert_eq!(replay.headers()[header::LOCATION], "/api/tasks/7");
        assert_eq!(replay.headers()[REPLAYED], "true");
        assert!(replay.headers().get("x-other").is_none());
        assert_eq!(replay.into_body().into_string().await.unwrap(), "{\"id\":7}");
    }
}
