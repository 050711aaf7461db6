//! Authentication: a bearer token in, the caller's subject (user id) out.
//!
//! Verification sits behind [`Verifier`] so that a second key source (Better Auth's JWKS) can be
//! added beside the shared secret without touching the handlers. The reason a token was rejected
//! is kept in [`AuthError`] for the log; the client only learns "expired" or "invalid token".

mod cookies;
mod jwks;
mod memo;
mod shared_secret;

use std::sync::Arc;

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

pub use cookies::{CookieAuth, is_jwt, session_data};
pub use jwks::{JwksSettings, JwksTiming, JwksVerifier};
pub use shared_secret::{SharedSecretVerifier, issue_dev_token};

use crate::limits::MAX_SUBJECT_CHARS;
pub use crate::limits::MAX_TOKEN_BYTES;
/// Allowed clock skew for `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("token expired")]
    Expired,
    /// The reason is for the log only.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// No key set could be had from the JWKS endpoint: the token cannot be judged (503).
    #[error("no JWKS key set is available")]
    KeysUnavailable,
}

/// Who a verified credential speaks for, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The user id: the owner of every task the request touches. Shared: a remembered
    /// credential's subject, and every task of a response, hold this one copy.
    pub id: Arc<String>,
    /// When the credential stops being valid, in seconds since the epoch: its `exp`, or the end
    /// of the session it embeds when that comes first (Better Auth's cookie cache). A live event
    /// stream ends there, and a remembered credential is verified again.
    pub expires_at: u64,
}

/// Turns a bearer token into the subject it was issued to.
#[async_trait]
pub trait Verifier: Send + Sync + 'static {
    async fn verify(&self, token: &str) -> Result<Subject, AuthError>;

    /// The subject of Better Auth's `session_data` cookie, in its `jwt` or `compact` strategy.
    /// Only the shared secret signs it: without one, no cookie is valid.
    async fn verify_session_cookie(&self, value: &str) -> Result<Subject, AuthError> {
        let _ = value;
        Err(AuthError::Invalid("a session cookie needs BETTER_AUTH_SECRET to verify".into()))
    }

    /// In JWKS mode, whether a key set has loaded; `None` without a JWKS.
    fn key_set_loaded(&self) -> Option<bool> {
        None
    }

    /// Changes whenever the keys change (a JWKS refreshed): a credential remembered under other
    /// keys is verified again. A shared secret changes only with a restart.
    fn key_set_generation(&self) -> u64 {
        0
    }
}

/// The key sources to verify tokens with: an HS256 shared secret, Better Auth's JWKS, or both.
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    /// The secret, and the issuer/audience its tokens must carry (enforced only when set).
    pub shared_secret: Option<(Vec<u8>, ClaimRules)>,
    /// Older secrets whose tokens are still accepted (a rotation in progress), under the same
    /// rules.
    pub previous_secrets: Vec<Vec<u8>>,
    pub jwks: Option<JwksSettings>,
}

/// The verifier for `sources`. With a JWKS, its key set starts loading in the background now
/// (this needs a Tokio runtime).
pub fn verifier(sources: KeySources) -> anyhow::Result<Arc<dyn Verifier>> {
    let previous = sources.previous_secrets;
    let shared_secret = sources.shared_secret.map(|(secret, rules)| {
        let secrets: Vec<&[u8]> =
            std::iter::once(secret.as_slice()).chain(previous.iter().map(Vec::as_slice)).collect();
        SharedSecretVerifier::new(&secrets, &rules)
    });
    let jwks = sources.jwks.map(JwksVerifier::start).transpose()?;
    let verifier: Arc<dyn Verifier> = match (shared_secret, jwks) {
        (Some(shared_secret), Some(jwks)) => Arc::new(EitherKeySource { shared_secret, jwks }),
        (Some(shared_secret), None) => Arc::new(shared_secret),
        (None, Some(jwks)) => jwks,
        (None, None) => anyhow::bail!("set BETTER_AUTH_SECRET or BETTER_AUTH_JWKS_URL"),
    };
    Ok(Arc::new(memo::RememberingVerifier::new(verifier)))
}

/// Both key sources at once: HMAC tokens go to the shared secret, the others to the JWKS.
pub struct EitherKeySource {
    pub shared_secret: SharedSecretVerifier,
    pub jwks: Arc<JwksVerifier>,
}

#[async_trait]
impl Verifier for EitherKeySource {
    async fn verify(&self, token: &str) -> Result<Subject, AuthError> {
        if let Some(header) = ed25519_header(token) {
            return self.jwks.verify_ed25519(token, header).await;
        }
        let header = jsonwebtoken::decode_header(token).map_err(classify)?;
        match header.alg.family() {
            AlgorithmFamily::Hmac => self.shared_secret.verify(token).await,
            _ => self.jwks.verify_parsed(token, header).await,
        }
    }

    async fn verify_session_cookie(&self, value: &str) -> Result<Subject, AuthError> {
        self.shared_secret.verify_session_cookie(value).await
    }

    fn key_set_loaded(&self) -> Option<bool> {
        self.jwks.key_set_loaded()
    }

    fn key_set_generation(&self) -> u64 {
        self.jwks.key_set_generation()
    }
}

/// The issuer and audience to enforce, when configured. A trailing slash on either side is
/// ignored (`http://app` and `http://app/` are the same base URL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimRules {
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// `value` and `value/` (or `value` without its trailing slash).
fn with_and_without_trailing_slash(value: &str) -> [String; 2] {
    let bare = value.trim_end_matches('/');
    [bare.to_owned(), format!("{bare}/")]
}

impl ClaimRules {
    /// A `Validation` that accepts exactly `algorithms`, requires `exp`, honours `nbf`, and
    /// checks `iss`/`aud` only when configured (Better Auth always sets both); an `aud` array
    /// passes when it contains the audience.
    fn validation(&self, algorithms: &[Algorithm]) -> Validation {
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.to_vec();
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // A configured issuer or audience must also be present, not merely not contradicted.
        let mut required = vec!["exp"];
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&with_and_without_trailing_slash(audience));
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&with_and_without_trailing_slash(issuer));
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation
    }
}

/// Longest `kid` we look at.
const MAX_KID_CHARS: usize = 128;

/// Rejects a header `kid` that could only be an attack on a key lookup (path traversal, SQL,
/// control characters): key ids are short tokens of URL-safe characters.
fn check_key_id(header: &jsonwebtoken::Header) -> Result<(), AuthError> {
    match header.kid.as_deref() {
        Some(kid)
            if kid.is_empty()
                || kid.len() > MAX_KID_CHARS
                || kid.contains("..")
                || !kid
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=')) =>
        {
            Err(AuthError::Invalid("suspicious kid in the header".into()))
        }
        _ => Ok(()),
    }
}

/// `user.id` of Better Auth's cookie cache (`better-auth/dist/cookies/index.mjs`,
/// `setCookieCache`: the JWT strategy signs `{session, user, updatedAt, version}` with HS256 and
/// the current secret, and no `sub`).
fn cookie_cache_user(claims: &Map<String, Value>) -> Option<&Value> {
    claims.get("user")?.get("id").filter(|id| !id.is_null())
}

/// Whether `claims` are Better Auth's cookie cache: a `user` with an id and a `session` object.
fn is_cookie_cache(claims: &Map<String, Value>) -> bool {
    cookie_cache_user(claims).is_some() && claims.get("session").is_some_and(Value::is_object)
}

/// The cookie cache's own session must still be live: `session.expiresAt` (an ISO date) not
/// past, as `isEmbeddedSessionExpired` in `better-auth/dist/cookies/index.mjs` holds it (a
/// missing or unreadable date is not an expiry there, and not here). The cookie cache outlives
/// a session that ends sooner than its `maxAge`. Returns that end, when the cookie has one.
fn check_embedded_session(claims: &Map<String, Value>) -> Result<Option<i64>, AuthError> {
    let expires_at = claims
        .get("session")
        .and_then(|session| session.get("expiresAt"))
        .and_then(Value::as_str)
        .and_then(|date| chrono::DateTime::parse_from_rfc3339(date).ok())
        .map(|at| at.timestamp());
    match expires_at {
        Some(at) if at + (LEEWAY_SECS as i64) < chrono::Utc::now().timestamp() => {
            Err(AuthError::Expired)
        }
        _ => Ok(expires_at),
    }
}

/// RFC 9864's fully specified name for EdDSA over Ed25519, which deprecates the polymorphic
/// `EdDSA`; Better Auth means to emit it. jsonwebtoken parses only `EdDSA`.
const ED25519: &str = "Ed25519";

/// The header of a token whose `alg` is [`ED25519`], with `alg` read as `EdDSA` (the same
/// signature scheme for an Ed25519 key); `None` for any other token.
fn ed25519_header(token: &str) -> Option<jsonwebtoken::Header> {
    use base64::Engine as _;
    let encoded = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded).ok()?;
    let mut header: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    if header.get("alg")?.as_str()? != ED25519 {
        return None;
    }
    header.insert("alg".into(), Value::from("EdDSA"));
    serde_json::from_value(Value::Object(header)).ok()
}

/// The claims of a token whose signature has been verified apart (an [`ED25519`] one), checked
/// by the library's own rules in `validation` (`exp`, `nbf`, `iss`, `aud`): the payload,
/// byte for byte, under a header the library knows, signed again with a key that never leaves
/// this process.
fn claims_checked(payload: &str, validation: &Validation) -> Result<Map<String, Value>, AuthError> {
    use base64::Engine as _;
    static PROCESS_KEY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let secret = PROCESS_KEY.get_or_init(|| {
        [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()].iter().flat_map(|id| *id.as_bytes()).collect()
    });
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#);
    let message = format!("{header}.{payload}");
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).map_err(classify)?;
    let mut validation = validation.clone();
    validation.algorithms = vec![Algorithm::HS256];
    let token = format!("{message}.{signature}");
    let key = jsonwebtoken::DecodingKey::from_secret(secret);
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation);
    Ok(data.map_err(classify)?.claims)
}

/// Maps a library error to ours, keeping the reason for the log.
fn classify(err: jsonwebtoken::errors::Error) -> AuthError {
    match err.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        kind => AuthError::Invalid(format!("{kind:?}")),
    }
}

/// The subject: `sub`, else `id`, else `user_id`, else `user.id` (Better Auth's cookie cache as a
/// JWT, whose `session.userId` must then agree); 1 to 255 characters, none of them a control
/// character (a NUL cannot even be stored by PostgreSQL).
/// Also rejects an `iat` in the future (beyond the leeway), which the library does not check.
fn subject_from_claims(claims: &Map<String, Value>) -> Result<Subject, AuthError> {
    if let Some(iat) = claims.get("iat") {
        let iat = iat.as_f64().ok_or_else(|| AuthError::Invalid("iat is not a number".into()))?;
        let now = jsonwebtoken::get_current_timestamp() as f64;
        if iat > now + LEEWAY_SECS as f64 {
            return Err(AuthError::Invalid("iat is in the future".into()));
        }
    }
    let claim = ["sub", "id", "user_id"]
        .iter()
        .find_map(|name| claims.get(*name).filter(|value| !value.is_null()))
        .or_else(|| cookie_cache_user(claims))
        .ok_or_else(|| AuthError::Invalid("no sub, id, user_id or user.id claim".into()))?;
    if let (Some(user), Some(session_user)) =
        (cookie_cache_user(claims), claims.get("session").and_then(|s| s.get("userId")))
        && user != session_user
    {
        return Err(AuthError::Invalid("user.id and session.userId disagree".into()));
    }
    let session_ends_at =
        if is_cookie_cache(claims) { check_embedded_session(claims)? } else { None };
    match claim.as_str() {
        Some(subject)
            if !subject.is_empty()
                && subject.chars().count() <= MAX_SUBJECT_CHARS
                && !subject.chars().any(char::is_control) =>
        {
            // Every source requires `exp` (the compact cookie's is its own expiry).
            let exp = claims.get("exp").and_then(Value::as_f64).unwrap_or(0.0).max(0.0) as u64;
            let expires_at = session_ends_at.map_or(exp, |at| exp.min(at.max(0) as u64));
            Ok(Subject { id: Arc::new(subject.to_owned()), expires_at })
        }
        _ => Err(AuthError::Invalid(format!(
            "subject is not 1 to {MAX_SUBJECT_CHARS} characters without control characters"
        ))),
    }
}
