//! HS256 tokens signed with the secret shared with Better Auth (`BETTER_AUTH_SECRET`, or the
//! versioned `BETTER_AUTH_SECRETS` during a rotation), Better Auth's cookie cache as a JWT
//! included.

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde_json::{Map, Value, json};

use super::{
    AuthError, ClaimRules, LEEWAY_SECS, Subject, Verifier, check_key_id, classify, cookies,
    is_cookie_cache, subject_from_claims,
};

pub struct SharedSecretVerifier {
    /// The current secret first, then older ones still accepted.
    keys: Vec<DecodingKey>,
    validation: Validation,
    /// The cookie cache's rules: Better Auth signs it without `iss` or `aud`.
    cookie_cache: Validation,
}

impl SharedSecretVerifier {
    pub fn new(secrets: &[&[u8]], rules: &ClaimRules) -> Self {
        Self {
            keys: secrets.iter().map(|secret| DecodingKey::from_secret(secret)).collect(),
            // Only HS256: a token whose header names any other algorithm is rejected.
            validation: rules.validation(&[Algorithm::HS256]),
            cookie_cache: ClaimRules::default().validation(&[Algorithm::HS256]),
        }
    }
}

#[async_trait]
impl Verifier for SharedSecretVerifier {
    async fn verify(&self, token: &str) -> Result<Subject, AuthError> {
        let mut failure = AuthError::Invalid("no secret is configured".into());
        for key in &self.keys {
            let claims =
                match jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation) {
                    Ok(data) => {
                        check_key_id(&data.header)?;
                        data.claims
                    }
                    // Signed with another secret: maybe an older one.
                    Err(err) if matches!(err.kind(), ErrorKind::InvalidSignature) => {
                        failure = classify(err);
                        continue;
                    }
                    // A configured issuer or audience is missing: fine for the cookie cache only,
                    // which never carries them (see `is_cookie_cache`).
                    Err(err) if matches!(err.kind(), ErrorKind::MissingRequiredClaim(_)) => {
                        match jsonwebtoken::decode::<Map<String, Value>>(
                            token,
                            key,
                            &self.cookie_cache,
                        ) {
                            Ok(data) if is_cookie_cache(&data.claims) => {
                                check_key_id(&data.header)?;
                                data.claims
                            }
                            Ok(_) => return Err(classify(err)),
                            // Expired, or not yet valid: say so rather than "no issuer".
                            Err(other) => return Err(classify(other)),
                        }
                    }
                    Err(err) => return Err(classify(err)),
                };
            return subject_from_claims(&claims);
        }
        Err(failure)
    }

    async fn verify_session_cookie(&self, value: &str) -> Result<Subject, AuthError> {
        if cookies::is_jwt(value) {
            return self.verify(value).await;
        }
        let claims = cookies::verify_compact(value, &self.keys)?;
        if !is_cookie_cache(&claims) {
            return Err(AuthError::Invalid("compact session_data without session and user".into()));
        }
        let expires = claims.get("exp").and_then(Value::as_f64).unwrap_or(0.0);
        if expires + (LEEWAY_SECS as f64) < jsonwebtoken::get_current_timestamp() as f64 {
            return Err(AuthError::Expired);
        }
        subject_from_claims(&claims)
    }
}

/// A token for local development (`server token --sub alice`), signed like Better Auth's.
pub fn issue_dev_token(
    secret: &[u8],
    subject: &str,
    ttl_secs: u64,
    rules: &ClaimRules,
) -> anyhow::Result<String> {
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = json!({ "sub": subject, "iat": now, "exp": now + ttl_secs });
    if let Some(issuer) = &rules.issuer {
        claims["iss"] = json!(issuer);
    }
    if let Some(audience) = &rules.audience {
        claims["aud"] = json!(audience);
    }
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], claims: Value) -> String {
        let key = EncodingKey::from_secret(secret);
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    fn cookie_cache(user: &str, session_user: &str) -> Value {
        let now = jsonwebtoken::get_current_timestamp();
        json!({
            "session": {"id": "s1", "userId": session_user, "token": "t"},
            "user": {"id": user, "email": "a@example.com"},
            "updatedAt": now * 1000, "iat": now, "exp": now + 300
        })
    }

    #[tokio::test]
    async fn the_cookie_cache_needs_no_issuer_but_must_be_one() {
        let rules = ClaimRules { issuer: Some("https://auth.example".into()), audience: None };
        let verifier = SharedSecretVerifier::new(&[b"current", b"older"], &rules);
        let token = sign(b"older", cookie_cache("u1", "u1"));
        assert_eq!(verifier.verify(&token).await.unwrap().id.as_str(), "u1");
        let disagreeing = sign(b"current", cookie_cache("u1", "u2"));
        assert!(matches!(verifier.verify(&disagreeing).await, Err(AuthError::Invalid(_))));
        // A `user.id` without a session is not the cookie cache: the issuer rule holds.
        let now = jsonwebtoken::get_current_timestamp();
        let bare = sign(b"current", json!({"user": {"id": "u1"}, "exp": now + 300}));
        assert!(matches!(verifier.verify(&bare).await, Err(AuthError::Invalid(_))));
        let unknown = sign(b"never-configured", cookie_cache("u1", "u1"));
        assert!(matches!(verifier.verify(&unknown).await, Err(AuthError::Invalid(_))));
        let mut expired = cookie_cache("u1", "u1");
        expired["exp"] = json!(now - 3600);
        expired["iat"] = json!(now - 4000);
        let expired = sign(b"current", expired);
        assert!(matches!(verifier.verify(&expired).await, Err(AuthError::Expired)));
    }
}
