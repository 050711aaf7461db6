//! Better Auth's session cookie cache (`session_data`), for same-origin deployments
//! (`AUTH_COOKIES=on`): finding it in the `Cookie` headers, verifying its default `compact`
//! form, and the cross-site request forgery rule that cookie authentication brings with it.
//!
//! Every format here is read from the pinned `better-auth` package
//! (`tests/better-auth/node_modules/better-auth/dist/cookies/`), whose `getCookieCache` in
//! `index.mjs` is Better Auth's own reader of this cookie for other servers.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use poem::http::{HeaderMap, Method, header};
use serde::Deserialize;
use serde_json::{Map, Value, value::RawValue};

use super::AuthError;
use crate::limits::MAX_SESSION_COOKIE_BYTES;

/// `createCookieGetter` in `cookies/index.mjs`: `${cookiePrefix}.${name}` with the default
/// prefix `better-auth`, and `__Secure-` in front when Better Auth's base URL is `https://`.
const SESSION_DATA: &str = "better-auth.session_data";
/// `SECURE_COOKIE_PREFIX` in `cookies/cookie-utils.mjs`.
const SECURE_PREFIX: &str = "__Secure-";
/// `MAX_COOKIE_CHUNKS` in `cookies/session-store.mjs`.
const MAX_CHUNKS: usize = 100;

/// `AUTH_COOKIES=on`: what cookie authentication needs besides the secret.
#[derive(Debug, Clone, Default)]
pub struct CookieAuth {
    /// The origins a cookie-authenticated write may come from (`BETTER_AUTH_URL` and
    /// `CORS_ORIGINS`): in a same-origin deployment, the frontend's own.
    pub allowed_origins: Vec<String>,
}

impl CookieAuth {
    /// Whether a cookie-authenticated request with this method and these headers may go on.
    /// Reads are always safe; a `POST`, `PUT`, `PATCH` or `DELETE` needs an `Origin` among the
    /// allowed ones or, without one (older browsers, some same-origin requests), a `Referer`
    /// whose origin is. A browser sets both itself and no page can forge them, which is what
    /// makes this enough: a form or a `fetch` from another site carries that site's origin.
    pub fn allows(&self, method: &Method, headers: &HeaderMap) -> bool {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return true;
        }
        let single = |name| {
            let mut values = headers.get_all(name).iter();
            match (values.next(), values.next()) {
                (Some(value), None) => value.to_str().ok(),
                _ => None,
            }
        };
        let origin = match single(header::ORIGIN) {
            Some(origin) => Some(origin),
            None if headers.contains_key(header::ORIGIN) => None,
            None => single(header::REFERER).and_then(origin_of_url),
        };
        origin.is_some_and(|origin| self.allowed_origins.iter().any(|allowed| allowed == origin))
    }
}

/// `https://app.example/tasks?x` → `https://app.example`.
fn origin_of_url(url: &str) -> Option<&str> {
    let scheme_end = url.find("://")? + 3;
    let end = url[scheme_end..].find(['/', '?', '#']).map_or(url.len(), |at| scheme_end + at);
    Some(&url[..end])
}

/// The `session_data` cookie among these `Cookie` headers: `None` when there is none, an error
/// when it is malformed or too large. Its `__Secure-` form wins over the plain one (only an
/// `https` page can set it); the whole cookie wins over chunks, which are `name.0`, `name.1`, …
/// joined in index order (`getChunkedCookie` and `parseCookieChunkIndex` in
/// `cookies/session-store.mjs`).
pub fn session_data(headers: &HeaderMap) -> Option<Result<String, AuthError>> {
    let pairs: Vec<(&str, &str)> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            let value = value.trim();
            // `unquoteCookieValue` in `cookies/cookie-utils.mjs`.
            let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
            Some((name.trim(), value))
        })
        .collect();
    let secure = format!("{SECURE_PREFIX}{SESSION_DATA}");
    [secure.as_str(), SESSION_DATA].into_iter().find_map(|name| named(&pairs, name))
}

/// The value of cookie `name`, whole or in chunks.
fn named(pairs: &[(&str, &str)], name: &str) -> Option<Result<String, AuthError>> {
    if let Some((_, value)) = pairs.iter().find(|(candidate, _)| *candidate == name) {
        return Some(checked((*value).to_owned()));
    }
    let mut chunks: Vec<(usize, &str)> = pairs
        .iter()
        .filter_map(|(candidate, value)| {
            let index = candidate.strip_prefix(name)?.strip_prefix('.')?;
            // A canonical decimal index only, as Better Auth reads them.
            let parsed: usize = index.parse().ok()?;
            (parsed.to_string() == index).then_some((parsed, *value))
        })
        .collect();
    if chunks.is_empty() {
        return None;
    }
    if chunks.len() > MAX_CHUNKS {
        return Some(Err(AuthError::Invalid("too many session_data chunks".into())));
    }
    chunks.sort_by_key(|(index, _)| *index);
    Some(checked(chunks.iter().map(|(_, value)| *value).collect()))
}

/// Both strategies' values are base64url (`compact`) or a JWT: nothing else is a cookie
/// Better Auth set, and nothing larger than [`MAX_SESSION_COOKIE_BYTES`] is worth decoding.
fn checked(value: String) -> Result<String, AuthError> {
    if value.is_empty() {
        return Err(AuthError::Missing);
    }
    if value.len() > MAX_SESSION_COOKIE_BYTES {
        return Err(AuthError::Invalid("session_data cookie too long".into()));
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.=".contains(&b)) {
        return Err(AuthError::Invalid(
            "session_data has characters Better Auth never sets".into(),
        ));
    }
    Ok(value)
}

/// Whether `value` is the `jwt` strategy's form (a JWS) rather than the `compact` one.
pub fn is_jwt(value: &str) -> bool {
    value.bytes().filter(|&b| b == b'.').count() == 2
}

/// The `compact` strategy's layout (`setCookieCache` in `cookies/index.mjs`):
/// `base64url(JSON.stringify({session, expiresAt, signature}))`, where `session` is
/// `{session, user, updatedAt, version}`, `expiresAt` milliseconds since the epoch, and
/// `signature` the unpadded base64url HMAC-SHA256, with the secret, of
/// `JSON.stringify({...session, expiresAt})`.
#[derive(Deserialize)]
struct Compact<'a> {
    #[serde(borrow)]
    session: &'a RawValue,
    #[serde(rename = "expiresAt", borrow)]
    expires_at: &'a RawValue,
    signature: String,
}

/// The claims of a `compact` cookie signed with one of `keys`, with `exp` in seconds set from
/// its `expiresAt`, so that it meets the same expiry rule as every token.
///
/// The signed text is rebuilt from the cookie's own bytes rather than re-serialized: it was
/// written by the same `JSON.stringify` that Better Auth signs, so the `session` object's text
/// with `,"expiresAt":…` spliced before its closing brace is exactly the signed string, with
/// no reliance on how either side formats numbers or escapes strings.
pub fn verify_compact(value: &str, keys: &[DecodingKey]) -> Result<Map<String, Value>, AuthError> {
    let invalid = |reason: &str| AuthError::Invalid(format!("compact session_data: {reason}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|_| invalid("not base64url"))?;
    let compact: Compact = serde_json::from_slice(&bytes).map_err(|_| invalid("not its JSON"))?;
    let session = compact.session.get();
    let expires_at = compact.expires_at.get();
    let body = session
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(|| invalid("session is not an object"))?;
    let separator = if body.is_empty() { "" } else { "," };
    let signed = format!("{{{body}{separator}\"expiresAt\":{expires_at}}}");
    let signature_is = |key| {
        jsonwebtoken::crypto::verify(&compact.signature, signed.as_bytes(), key, Algorithm::HS256)
            .unwrap_or(false)
    };
    if !keys.iter().any(signature_is) {
        return Err(invalid("the signature matches no secret"));
    }
    let expires_at: f64 = expires_at.parse().map_err(|_| invalid("expiresAt is not a number"))?;
    let mut claims: Map<String, Value> =
        serde_json::from_str(session).map_err(|_| invalid("session is not an object"))?;
    claims.insert("exp".into(), Value::from((expires_at / 1000.0).floor()));
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use poem::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn cookie(value: &str) -> Option<Result<String, String>> {
        session_data(&headers(&[(header::COOKIE, value)]))
            .map(|found| found.map_err(|err| err.to_string()))
    }

    #[test]
    fn finds_the_cookie_whole_secure_or_in_chunks() {
        assert_eq!(
            cookie("a=1; better-auth.session_data=abc.def.ghi; b=2"),
            Some(Ok("abc.def.ghi".into()))
        );
        let both = "better-auth.session_data=plain; __Secure-better-auth.session_data=secure";
        assert_eq!(cookie(both), Some(Ok("secure".into())));
        let chunks = "better-auth.session_data.1=def; better-auth.session_data.0=abc; \
                      better-auth.session_data.01=no; better-auth.session_data.x=no";
        assert_eq!(cookie(chunks), Some(Ok("abcdef".into())));
        assert_eq!(cookie("better-auth.session_data=\"quoted\""), Some(Ok("quoted".into())));
        assert_eq!(cookie("better-auth.session_token=opaque.sig"), None);
        assert!(cookie("better-auth.session_data=a%20b").unwrap().is_err());
        let many: Vec<String> =
            (0..=MAX_CHUNKS).map(|i| format!("better-auth.session_data.{i}=a")).collect();
        assert!(cookie(&many.join("; ")).unwrap().is_err());
    }

    #[test]
    fn writes_need_an_allowed_origin_or_referer() {
        let policy = CookieAuth { allowed_origins: vec!["https://app.example".into()] };
        let allows = |method: Method, pairs: &[(header::HeaderName, &str)]| {
            policy.allows(&method, &headers(pairs))
        };
        assert!(allows(Method::GET, &[]));
        assert!(!allows(Method::POST, &[]));
        assert!(allows(Method::POST, &[(header::ORIGIN, "https://app.example")]));
        assert!(!allows(Method::DELETE, &[(header::ORIGIN, "https://evil.example")]));
        assert!(!allows(Method::PUT, &[(header::ORIGIN, "null")]));
        assert!(allows(Method::PATCH, &[(header::REFERER, "https://app.example/tasks?x=1")]));
        assert!(!allows(Method::PATCH, &[(header::REFERER, "https://app.example.evil/x")]));
        // A foreign Origin is not excused by an allowed Referer.
        let both =
            [(header::ORIGIN, "https://evil.example"), (header::REFERER, "https://app.example/")];
        assert!(!allows(Method::POST, &both));
    }
}
