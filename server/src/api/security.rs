//! The bearer-JWT security scheme: runs before every other argument of an operation is read,
//! so a bad token is a 401 and a foreign `{user_id}` in the path a 403 before the body, the
//! query or the task is looked at.

use poem::{Request, http::header};
use poem_openapi::{SecurityScheme, auth::Bearer};

use crate::{
    AppState,
    auth::{AuthError, MAX_TOKEN_BYTES},
    error::ApiError,
};

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's subject: the owner of every task this request touches.
    pub user_id: String,
}

/// A JWT issued by Better Auth, sent as `Authorization: Bearer <token>`: HS256 with the secret
/// shared with Better Auth, or signed by its JWT plugin's key pair (EdDSA, ES256, RS256, PS256;
/// verified by `kid` against its JWKS, with `iss` and `aud` equal to Better Auth's base URL).
/// `exp` is required; the user id is `sub`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "authenticate")]
pub struct BearerAuth(pub Caller);

async fn authenticate(req: &Request, bearer: Bearer) -> poem::Result<Caller> {
    let state = req.data::<AppState>().ok_or(ApiError::Internal)?;
    let reject = |err: AuthError| {
        tracing::warn!(reason = %err, "rejected bearer token");
        ApiError::from(err)
    };
    if req.headers().get_all(header::AUTHORIZATION).iter().count() > 1 {
        return Err(reject(AuthError::Invalid("more than one Authorization header".into())).into());
    }
    if bearer.token.len() > MAX_TOKEN_BYTES {
        return Err(reject(AuthError::Invalid("token too long".into())).into());
    }
    let user_id = state.verifier.verify(&bearer.token).await.map_err(reject)?;
    if path_user(req.uri().path()).is_some_and(|path_user| path_user != user_id) {
        tracing::warn!("path user is not the token subject");
        return Err(ApiError::Forbidden.into());
    }
    Ok(Caller { user_id })
}

/// The `{user_id}` of an `/api/{user_id}/tasks…` path; `None` on the `/api/tasks…` routes.
/// (poem-openapi names path parameters by position, so the path itself is the reliable source.)
fn path_user(path: &str) -> Option<String> {
    let mut segments = path.strip_prefix("/api/")?.split('/');
    let first = segments.next()?;
    (first != "tasks" && segments.next() == Some("tasks")).then(|| percent_decode(first))
}

/// Path segments arrive still percent-encoded.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|pair| pair.iter().all(u8::is_ascii_hexdigit))
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::{path_user, percent_decode};

    #[test]
    fn finds_the_user_segment_only_on_user_paths() {
        assert_eq!(path_user("/api/tasks"), None);
        assert_eq!(path_user("/api/tasks/42/complete"), None);
        assert_eq!(path_user("/api/alice/tasks").as_deref(), Some("alice"));
        assert_eq!(path_user("/api/a%40b/tasks/1").as_deref(), Some("a@b"));
        assert_eq!(path_user("/health"), None);
    }

    #[test]
    fn decodes_percent_escapes_and_keeps_the_rest() {
        assert_eq!(percent_decode("user123"), "user123");
        assert_eq!(percent_decode("a%20b%2Fc"), "a b/c");
        assert_eq!(percent_decode("%E2%9C%93"), "✓");
        assert_eq!(percent_decode("50%"), "50%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%+1"), "%+1");
    }
}
