//! HS256 tokens signed with the secret shared with Better Auth (`BETTER_AUTH_SECRET`).

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value, json};

use super::{AuthError, ClaimRules, Verifier, check_key_id, classify, subject_from_claims};

pub struct SharedSecretVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl SharedSecretVerifier {
    pub fn new(secret: &[u8], rules: &ClaimRules) -> Self {
        Self {
            key: DecodingKey::from_secret(secret),
            // Only HS256: a token whose header names any other algorithm is rejected.
            validation: rules.validation(&[Algorithm::HS256]),
        }
    }
}

#[async_trait]
impl Verifier for SharedSecretVerifier {
    async fn verify(&self, token: &str) -> Result<String, AuthError> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(classify)?;
        check_key_id(&data.header)?;
        subject_from_claims(&data.claims)
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
