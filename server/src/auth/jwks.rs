//! Better Auth's JWT plugin: asymmetric tokens (EdDSA by default; ES256, RS256, PS256 possible)
//! verified against the key set it publishes (`{BETTER_AUTH_URL}/api/auth/jwks`), by `kid`.
//!
//! Keys are cached. An unknown `kid` triggers a refetch at most once per `refetch_interval`
//! (30 s in production), so made-up kids cannot turn us into a flood against the auth server;
//! key rotation is picked up on the first token that carries the new kid after that. A failed
//! fetch never lets a token through: without any key set yet it is a 503, otherwise a 401.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use jsonwebtoken::{
    Algorithm, DecodingKey, Header, Validation,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet},
};
use serde_json::{Map, Value};
use tokio::sync::{Mutex, RwLock};

use super::{AuthError, ClaimRules, Verifier, check_key_id, classify, subject_from_claims};

/// Production's pause between refetches triggered by unknown kids.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// After a failed fetch with no keys at all, the next request may try again this soon.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);
/// A fetch must answer within this, so that a request waiting on it still gets its 503 fast.
const FETCH_TIMEOUT: Duration = Duration::from_millis(1500);

pub struct JwksVerifier {
    url: String,
    http: reqwest::Client,
    rules: ClaimRules,
    refetch_interval: Duration,
    cache: RwLock<KeyCache>,
    /// One fetch at a time; the others wait for its result.
    fetching: Mutex<()>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, Arc<VerifyingKey>>,
    /// When the last fetch (successful or not) finished, and whether it succeeded.
    last_fetch: Option<(Instant, bool)>,
    loaded: bool,
}

struct VerifyingKey {
    key: DecodingKey,
    /// Pinned to the key's own algorithm: the token's header cannot choose another.
    validation: Validation,
}

impl JwksVerifier {
    pub fn new(url: &str, rules: &ClaimRules, refetch_interval: Duration) -> anyhow::Result<Self> {
        // reqwest is built without a bundled crypto provider; use ring, as sqlx does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().timeout(FETCH_TIMEOUT).build()?;
        Ok(Self {
            url: url.to_owned(),
            http,
            rules: rules.clone(),
            refetch_interval,
            cache: RwLock::default(),
            fetching: Mutex::default(),
        })
    }

    async fn key(&self, kid: &str) -> Result<Arc<VerifyingKey>, AuthError> {
        if let Some(key) = self.cache.read().await.keys.get(kid) {
            return Ok(key.clone());
        }
        let _fetching = self.fetching.lock().await;
        {
            // Someone else may have fetched while we waited for the lock.
            let cache = self.cache.read().await;
            if let Some(key) = cache.keys.get(kid) {
                return Ok(key.clone());
            }
            if let Some((at, succeeded)) = cache.last_fetch {
                let pause = if succeeded { self.refetch_interval } else { RETRY_AFTER_FAILURE };
                if at.elapsed() < pause {
                    return Err(unknown(kid, cache.loaded));
                }
            }
        }
        let fetched = self.fetch().await;
        let mut cache = self.cache.write().await;
        match fetched {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "fetched the JWKS");
                cache.keys = keys;
                cache.loaded = true;
                cache.last_fetch = Some((Instant::now(), true));
            }
            Err(err) => {
                tracing::warn!(error = %err, "fetching the JWKS failed");
                cache.last_fetch = Some((Instant::now(), false));
            }
        }
        cache.keys.get(kid).cloned().ok_or_else(|| unknown(kid, cache.loaded))
    }

    async fn fetch(&self) -> anyhow::Result<HashMap<String, Arc<VerifyingKey>>> {
        let set: JwkSet = self.http.get(&self.url).send().await?.error_for_status()?.json().await?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            match verifying_key(jwk, &self.rules) {
                Some(key) => {
                    keys.insert(kid, Arc::new(key));
                }
                None => {
                    tracing::warn!(%kid, "ignoring a JWKS key that is not an asymmetric signing key")
                }
            }
        }
        Ok(keys)
    }
}

fn unknown(kid: &str, loaded: bool) -> AuthError {
    if loaded {
        AuthError::Invalid(format!("unknown kid {kid:?}"))
    } else {
        AuthError::KeysUnavailable
    }
}

/// The key and its algorithm: the JWK's `alg` when given, else the one its type implies.
/// Symmetric (`oct`) keys are refused: a key set is public, so HMAC with it would be forgeable.
fn verifying_key(jwk: &Jwk, rules: &ClaimRules) -> Option<VerifyingKey> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => Algorithm::ES384,
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        _ => return None,
    };
    let algorithm = match jwk.common.key_algorithm {
        Some(declared) => Algorithm::try_from(declared).ok()?,
        None => implied,
    };
    let compatible = match algorithm {
        Algorithm::EdDSA | Algorithm::ES256 | Algorithm::ES384 => algorithm == implied,
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => implied == Algorithm::RS256,
        _ => false,
    };
    if !compatible {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyingKey { key, validation: rules.validation(&[algorithm]) })
}

impl JwksVerifier {
    /// `verify`, for a caller that has parsed the header already.
    pub(super) async fn verify_parsed(
        &self,
        token: &str,
        header: Header,
    ) -> Result<String, AuthError> {
        check_key_id(&header)?;
        let kid = header.kid.ok_or_else(|| AuthError::Invalid("no kid in the header".into()))?;
        let key = self.key(&kid).await?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation)
            .map_err(classify)?;
        subject_from_claims(&data.claims)
    }
}

#[async_trait]
impl Verifier for JwksVerifier {
    async fn verify(&self, token: &str) -> Result<String, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(classify)?;
        self.verify_parsed(token, header).await
    }
}
