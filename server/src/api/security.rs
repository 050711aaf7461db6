//! The security schemes (a bearer JWT; Better Auth's session cookie as the alternative), one
//! extractor per path style. It is the first argument of every operation, so a bad token is a
//! 401 and a foreign `{user_id}` (or a cross-site cookie write) a 403 before the body, the query
//! or the task is looked at.
//!
//! Which style an operation has is its type, [`BearerAuth`] or [`UserPathBearerAuth`], not a
//! guess from the request path: on the user-path routes `{user_id}` is whatever the router
//! matched there, `tasks` included. Both document themselves as the same two schemes, so
//! Swagger UI's "Authorize" asks for the token once.

use std::sync::Arc;

use poem::{Request, RequestBody, http::header};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions,
    registry::{MetaSecurityScheme, Registry},
};

use crate::{
    AppState,
    auth::{self, AuthError, MAX_TOKEN_BYTES},
    error::ApiError,
};

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's subject: the owner of every task this request touches.
    pub user_id: Arc<String>,
    /// When the credential expires (seconds since the epoch): an event stream ends then.
    pub expires_at: u64,
}

/// The scheme's name in the OpenAPI document.
const SCHEME: &str = "BearerAuth";

const DESCRIPTION: &str = "A JWT issued by Better Auth, sent as `Authorization: Bearer <token>`: \
HS256 with the secret shared with Better Auth (any of `BETTER_AUTH_SECRETS`), or signed by its \
JWT plugin's key pair (EdDSA or Ed25519, ES256, RS256, PS256; verified by `kid` against its \
JWKS, with `iss` and `aud` equal to Better Auth's base URL). `exp` is required; the user id is \
`sub` (or, in Better Auth's cookie cache as a JWT, `user.id`).";

/// The cookie alternative's name in the OpenAPI document: listed after the bearer scheme, so
/// that generated clients keep sending the header.
const COOKIE_SCHEME: &str = "CookieAuth";

const COOKIE_DESCRIPTION: &str = "Same-origin deployments only (the service started with \
`AUTH_COOKIES=on`, behind the frontend's `/api` proxy): the browser's Better Auth cookie cache, \
`better-auth.session_data` (or `__Secure-better-auth.session_data`, or its chunks), in its \
`compact` or `jwt` strategy, verified with the shared secret and its own expiry. An \
`Authorization` header wins over it. A `POST`, `PUT`, `PATCH` or `DELETE` signed in this way \
needs an `Origin` (else a `Referer`) among the allowed origins, else 403.";

/// The caller of an `/api/tasks…` operation: the owner is the token's subject.
pub struct BearerAuth(pub Caller);

/// The caller of an `/api/{user_id}/tasks…` operation: also 403 unless `{user_id}` is the
/// token's subject.
pub struct UserPathBearerAuth(pub Caller);

/// poem-openapi registers path parameters by position (`param0`, `param1`, …); `{user_id}` is
/// the first of every user-path route. A value that is not valid UTF-8 once percent-decoded is
/// not registered at all, and then matches no subject either.
const USER_ID_PARAM: &str = "param0";

macro_rules! bearer_extractor {
    ($ty:ident, |$req:ident, $caller:ident| $check:expr) => {
        impl<'a> ApiExtractor<'a> for $ty {
            const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
            type ParamType = ();
            type ParamRawType = ();

            fn register(registry: &mut Registry) {
                register(registry);
            }

            fn security_schemes() -> Vec<&'static str> {
                vec![SCHEME, COOKIE_SCHEME]
            }

            async fn from_request(
                $req: &'a Request,
                _body: &mut RequestBody,
                _options: ExtractParamOptions<()>,
            ) -> poem::Result<Self> {
                let $caller = authenticate($req).await?;
                $check?;
                Ok(Self($caller))
            }
        }
    };
}

bearer_extractor!(BearerAuth, |_req, _caller| Ok::<(), ApiError>(()));
bearer_extractor!(UserPathBearerAuth, |req, caller| check_path_user(req, &caller));

fn register(registry: &mut Registry) {
    registry.create_security_scheme(
        SCHEME,
        MetaSecurityScheme {
            ty: "http",
            description: Some(DESCRIPTION),
            name: None,
            key_in: None,
            scheme: Some("bearer"),
            bearer_format: Some("JWT"),
            flows: None,
            openid_connect_url: None,
        },
    );
    registry.create_security_scheme(
        COOKIE_SCHEME,
        MetaSecurityScheme {
            ty: "apiKey",
            description: Some(COOKIE_DESCRIPTION),
            name: Some("better-auth.session_data"),
            key_in: Some("cookie"),
            scheme: None,
            bearer_format: None,
            flows: None,
            openid_connect_url: None,
        },
    );
}

fn check_path_user(req: &Request, caller: &Caller) -> Result<(), ApiError> {
    if req.raw_path_param(USER_ID_PARAM) == Some(caller.user_id.as_str()) {
        Ok(())
    } else {
        tracing::warn!("path user is not the token subject");
        Err(ApiError::NOT_THE_PATH_USER)
    }
}

/// Where a request's credentials came from: the log and the metrics say which.
#[derive(Debug, Clone, Copy)]
enum Source {
    Bearer,
    /// Better Auth's `session_data` cookie (`AUTH_COOKIES=on`).
    Cookie,
}

/// Who is this? Decided here, once, for every source: the `Authorization` header first (when
/// it carries a bearer token, it wins); then, only with `AUTH_COOKIES=on`, Better Auth's
/// `session_data` cookie, whose writes must also come from an allowed origin (403, before the
/// cookie is even verified). Every source ends in the same subject rules and the same 401s.
///
/// Within the rate limit: a valid credential's subject spends from the subject's bucket; a
/// request without one from its client address's, and past that it is a 429 rather than a 401.
async fn authenticate(req: &Request) -> Result<Caller, ApiError> {
    let state = req.data::<AppState>().ok_or(ApiError::Internal)?;
    let limits = state.rate_limits.as_deref();
    let (source, verified) = match (bearer_token(req), state.cookie_auth.as_deref()) {
        (Err(AuthError::Missing), Some(cookie_auth)) => match auth::session_data(req.headers()) {
            None => (Source::Bearer, Err(AuthError::Missing)),
            Some(_) if !cookie_auth.allows(req.method(), req.headers()) => {
                limits.map_or(Ok(()), |limits| limits.check_address(req))?;
                tracing::warn!("cookie-authenticated write from an origin that is not allowed");
                return Err(ApiError::CROSS_SITE_WRITE);
            }
            Some(Ok(cookie)) => {
                (Source::Cookie, state.verifier.verify_session_cookie(&cookie).await)
            }
            Some(Err(err)) => (Source::Cookie, Err(err)),
        },
        // The cookie cache's `compact` form is no JWT, but a frontend may send it as its token.
        (Ok(token), _) if !auth::is_jwt(token) => {
            (Source::Bearer, state.verifier.verify_session_cookie(token).await)
        }
        (Ok(token), _) => (Source::Bearer, state.verifier.verify(token).await),
        (Err(err), _) => (Source::Bearer, Err(err)),
    };
    match verified {
        Ok(subject) => {
            limits.map_or(Ok(()), |limits| limits.check_user(&subject.id))?;
            Ok(Caller { user_id: subject.id, expires_at: subject.expires_at })
        }
        Err(err) => {
            limits.map_or(Ok(()), |limits| limits.check_address(req))?;
            Err(reject(source, err))
        }
    }
}

fn reject(source: Source, err: AuthError) -> ApiError {
    let reason = match err {
        AuthError::Missing => Some("missing"),
        AuthError::Expired => Some("expired"),
        AuthError::Invalid(_) => Some("invalid"),
        // Not the credential's fault: a 503, counted as such.
        AuthError::KeysUnavailable => None,
    };
    if let Some(reason) = reason {
        tracing::warn!(?source, reason = %err, "rejected credentials");
        crate::metrics::rejected_token(reason);
    }
    ApiError::from(err)
}

/// The token of the one `Authorization: Bearer <token>` header (RFC 6750 §2.1). No header,
/// another scheme or an empty token is "missing"; a bearer token that is not a `b64token`
/// (non-ASCII bytes, spaces, quotes), too long, or sent twice is invalid.
fn bearer_token(req: &Request) -> Result<&str, AuthError> {
    let mut headers = req.headers().get_all(header::AUTHORIZATION).iter();
    let value = match (headers.next(), headers.next()) {
        (None, _) => return Err(AuthError::Missing),
        (Some(_), Some(_)) => {
            return Err(AuthError::Invalid("more than one Authorization header".into()));
        }
        (Some(value), None) => value.as_bytes(),
    };
    let (scheme, token) = match value.iter().position(|&b| b == b' ') {
        Some(space) => (&value[..space], value[space + 1..].trim_ascii()),
        None => (value, &[][..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") || token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Invalid("token too long".into()));
    }
    let b64token = |b: &u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(b);
    if !token.iter().all(b64token) {
        return Err(AuthError::Invalid("the bearer token has characters a JWT cannot".into()));
    }
    // Only ASCII bytes remain.
    std::str::from_utf8(token).map_err(|_| AuthError::Invalid("not ASCII".into()))
}

#[cfg(test)]
mod tests {
    use poem::http::HeaderValue;

    use super::*;

    fn token_of(values: &[&[u8]]) -> Result<String, String> {
        let mut req = Request::builder().finish();
        for value in values {
            req.headers_mut()
                .append(header::AUTHORIZATION, HeaderValue::from_bytes(value).unwrap());
        }
        bearer_token(&req).map(str::to_owned).map_err(|err| err.to_string())
    }

    #[test]
    fn reads_one_bearer_token() {
        assert_eq!(token_of(&[b"Bearer abc.def-_~+/=="]).unwrap(), "abc.def-_~+/==");
        assert_eq!(token_of(&[b"bearer  abc "]).unwrap(), "abc");
    }

    #[test]
    fn missing_unless_a_bearer_token_was_sent() {
        for value in [&b"Basic YWxpY2U6cGFzcw=="[..], b"Bearer", b"Bearer ", b"bearer", b"Token x"]
        {
            assert_eq!(token_of(&[value]).unwrap_err(), "missing bearer token");
        }
        assert_eq!(token_of(&[]).unwrap_err(), "missing bearer token");
    }

    #[test]
    fn invalid_when_the_token_is_not_a_b64token_or_sent_twice() {
        for value in ["Bearer Ω≈ç√".as_bytes(), b"Bearer a b", b"Bearer \"quoted\"", b"Bearer \xff"]
        {
            assert!(token_of(&[value]).unwrap_err().starts_with("invalid token"), "{value:?}");
        }
        assert!(token_of(&[b"Bearer a", b"Bearer b"]).unwrap_err().starts_with("invalid token"));
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert!(token_of(&[long.as_bytes()]).unwrap_err().starts_with("invalid token"));
    }
}
