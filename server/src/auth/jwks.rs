//! Better Auth's JWT plugin: asymmetric tokens (EdDSA by default; ES256, RS256, PS256 possible)
//! verified against the key set it publishes (`{BETTER_AUTH_URL}/api/auth/jwks`), by `kid`.
//!
//! The key set is fetched at start, in the background (a failure is logged, never fatal), and
//! refreshed in the background when the key set's `Cache-Control: max-age` runs out (bounded, an
//! hour by default), so a removed key stops being accepted after the next refresh. An unknown
//! `kid` triggers a refetch at most once per `refetch_interval` (30 s in production), failed
//! fetches included once a key set has loaded, so made-up kids or an auth server having a
//! hiccup cannot turn us into a flood against it. A failed fetch never lets a token through:
//! without any key set yet it is a 503, otherwise a 401.

use std::{
    collections::HashMap,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use jsonwebtoken::{
    Algorithm, DecodingKey, Header, Validation,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk},
};
use reqwest::header::CACHE_CONTROL;
use serde_json::{Map, Value};
use tokio::{
    sync::{Mutex, RwLock},
    time::Instant,
};

use super::{
    AuthError, ClaimRules, ED25519, Subject, Verifier, check_key_id, claims_checked, classify,
    ed25519_header, subject_from_claims,
};

/// While no key set has ever loaded, a request may try again this soon after a failed fetch.
const RETRY_BEFORE_FIRST_LOAD: Duration = Duration::from_secs(2);
/// A fetch must answer within this, so that a request waiting on it still gets its 503 fast.
const FETCH_TIMEOUT: Duration = Duration::from_millis(1500);

/// Where the key set is, and which claims its tokens must carry.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    pub url: String,
    /// In JWKS mode, issuer and audience default to `BETTER_AUTH_URL` (see `config`).
    pub rules: ClaimRules,
    pub timing: JwksTiming,
}

/// How often the key set may and should be fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksTiming {
    /// The least time between two fetches once a key set has loaded.
    pub refetch_interval: Duration,
    /// Bounds on the background refresh period that `Cache-Control: max-age` sets.
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    /// The refresh period when the key set's response says nothing about caching.
    pub default_refresh: Duration,
}

impl Default for JwksTiming {
    fn default() -> Self {
        Self {
            refetch_interval: Duration::from_secs(30),
            min_refresh: Duration::from_secs(5 * 60),
            max_refresh: Duration::from_secs(24 * 60 * 60),
            default_refresh: Duration::from_secs(60 * 60),
        }
    }
}

impl JwksTiming {
    /// The background refresh period a key set response asks for, within our bounds.
    fn refresh_period(&self, cache_control: Option<&str>) -> Duration {
        let directives = || cache_control.into_iter().flat_map(|v| v.split(',')).map(str::trim);
        if directives()
            .any(|d| d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store"))
        {
            return self.min_refresh;
        }
        let max_age = directives().find_map(|directive| {
            let (name, value) = directive.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("max-age")
                .then(|| value.trim().trim_matches('"').parse::<u64>().ok())?
        });
        match max_age {
            Some(seconds) => Duration::from_secs(seconds).clamp(self.min_refresh, self.max_refresh),
            None => self.default_refresh,
        }
    }
}

pub struct JwksVerifier {
    url: String,
    http: reqwest::Client,
    rules: ClaimRules,
    timing: JwksTiming,
    cache: RwLock<KeyCache>,
    /// Whether a key set has ever loaded (read without a lock by `/health`).
    loaded: AtomicBool,
    /// How many key sets have loaded: what a remembered token was verified under.
    key_sets: AtomicU64,
    /// One fetch at a time; the others wait for its result.
    fetching: Mutex<()>,
}

struct KeyCache {
    keys: HashMap<String, Arc<VerifyingKey>>,
    /// When the last fetch (successful or not) finished.
    last_fetch: Option<Instant>,
    /// When the background refresher fetches next.
    next_refresh: Instant,
}

struct VerifyingKey {
    key: DecodingKey,
    /// Pinned to the key's own algorithm: the token's header cannot choose another.
    validation: Validation,
}

impl JwksVerifier {
    /// The verifier, with its background refresher started (it needs a Tokio runtime). The
    /// refresher holds only a weak reference: it ends when the verifier is dropped.
    pub fn start(settings: JwksSettings) -> anyhow::Result<Arc<Self>> {
        // reqwest is built without a bundled crypto provider; use ring, as sqlx does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().timeout(FETCH_TIMEOUT).build()?;
        let verifier = Arc::new(Self {
            url: settings.url,
            http,
            rules: settings.rules,
            timing: settings.timing,
            cache: RwLock::new(KeyCache {
                keys: HashMap::new(),
                last_fetch: None,
                next_refresh: Instant::now(),
            }),
            loaded: AtomicBool::new(false),
            key_sets: AtomicU64::new(0),
            fetching: Mutex::default(),
        });
        tokio::spawn(refresh_in_background(Arc::downgrade(&verifier)));
        Ok(verifier)
    }

    /// Whether a key set has loaded at least once.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    async fn key(&self, kid: &str) -> Result<Arc<VerifyingKey>, AuthError> {
        if let Some(key) = self.cached(kid).await {
            return Ok(key);
        }
        let _fetching = self.fetching.lock().await;
        // Someone else may have fetched while we waited for the lock.
        if let Some(key) = self.cached(kid).await {
            return Ok(key);
        }
        let last_fetch = self.cache.read().await.last_fetch;
        let pause =
            if self.is_loaded() { self.timing.refetch_interval } else { RETRY_BEFORE_FIRST_LOAD };
        if last_fetch.is_none_or(|at| at.elapsed() >= pause) {
            self.fetch_and_store().await;
        }
        self.cached(kid).await.ok_or_else(|| unknown(kid, self.is_loaded()))
    }

    async fn cached(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        self.cache.read().await.keys.get(kid).cloned()
    }

    /// One fetch (the caller holds `fetching`): on success the new set replaces the old one
    /// whole, so a key removed from the set is gone; either way the next background refresh is
    /// scheduled.
    async fn fetch_and_store(&self) {
        let fetched = self.fetch().await;
        crate::metrics::jwks_fetch(fetched.is_ok());
        let mut cache = self.cache.write().await;
        let now = Instant::now();
        cache.last_fetch = Some(now);
        match fetched {
            Ok((keys, refresh_period)) => {
                tracing::info!(
                    keys = keys.len(),
                    refresh_in_secs = refresh_period.as_secs(),
                    "fetched the JWKS"
                );
                cache.keys = keys;
                cache.next_refresh = now + refresh_period;
                self.loaded.store(true, Ordering::Release);
                self.key_sets.fetch_add(1, Ordering::AcqRel);
            }
            Err(err) => {
                tracing::warn!(error = %err, "fetching the JWKS failed");
                cache.next_refresh = now + self.timing.refetch_interval;
            }
        }
    }

    async fn fetch(&self) -> anyhow::Result<(HashMap<String, Arc<VerifyingKey>>, Duration)> {
        let response = self.http.get(&self.url).send().await?.error_for_status()?;
        let cache_control =
            response.headers().get(CACHE_CONTROL).and_then(|value| value.to_str().ok());
        let refresh_period = self.timing.refresh_period(cache_control);
        // Key by key, so that one key of a kind we do not know spoils nothing else; a key whose
        // `alg` is RFC 9864's `Ed25519` is an EdDSA key over Ed25519 (jsonwebtoken knows only
        // the older name).
        let set: Value = response.json().await?;
        let jwks: Vec<Jwk> = set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow::anyhow!("the key set has no keys array"))?
            .iter()
            .filter_map(|key| {
                let mut key = key.clone();
                if key.get("alg").and_then(Value::as_str) == Some(ED25519) {
                    key["alg"] = Value::from("EdDSA");
                }
                match serde_json::from_value::<Jwk>(key) {
                    Ok(jwk) => Some(jwk),
                    Err(err) => {
                        tracing::warn!(error = %err, "ignoring a JWKS key that does not parse");
                        None
                    }
                }
            })
            .collect();
        let mut keys = HashMap::new();
        for jwk in &jwks {
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
        Ok((keys, refresh_period))
    }
}

/// Fetches the key set at start, then whenever the last fetch's refresh time comes, until the
/// verifier is dropped. Never holds the verifier while sleeping.
async fn refresh_in_background(verifier: Weak<JwksVerifier>) {
    loop {
        let Some(strong) = verifier.upgrade() else { return };
        let due = strong.cache.read().await.next_refresh;
        if Instant::now() >= due {
            let _fetching = strong.fetching.lock().await;
            // A request may have fetched while we waited, moving the refresh time on.
            if Instant::now() >= strong.cache.read().await.next_refresh {
                strong.fetch_and_store().await;
            }
            continue;
        }
        drop(strong);
        tokio::time::sleep_until(due).await;
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
    ) -> Result<Subject, AuthError> {
        check_key_id(&header)?;
        let kid = header.kid.ok_or_else(|| AuthError::Invalid("no kid in the header".into()))?;
        let key = self.key(&kid).await?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation)
            .map_err(classify)?;
        subject_from_claims(&data.claims)
    }

    /// A token whose header names RFC 9864's `Ed25519` (`header` as [`ed25519_header`] read
    /// it): only an Ed25519 key may verify it, as for `EdDSA`.
    pub(super) async fn verify_ed25519(
        &self,
        token: &str,
        header: Header,
    ) -> Result<Subject, AuthError> {
        check_key_id(&header)?;
        let kid = header.kid.ok_or_else(|| AuthError::Invalid("no kid in the header".into()))?;
        let key = self.key(&kid).await?;
        if key.validation.algorithms != [Algorithm::EdDSA] {
            return Err(AuthError::Invalid(format!("an {ED25519} token for a non-Ed25519 key")));
        }
        let (message, signature) =
            token.rsplit_once('.').ok_or_else(|| AuthError::Invalid("not a signed JWT".into()))?;
        let verified =
            jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key.key, Algorithm::EdDSA)
                .map_err(classify)?;
        if !verified {
            return Err(AuthError::Invalid("InvalidSignature".into()));
        }
        let payload = message.split_once('.').map(|(_, payload)| payload).unwrap_or_default();
        subject_from_claims(&claims_checked(payload, &key.validation)?)
    }
}

#[async_trait]
impl Verifier for JwksVerifier {
    async fn verify(&self, token: &str) -> Result<Subject, AuthError> {
        if let Some(header) = ed25519_header(token) {
            return self.verify_ed25519(token, header).await;
        }
        let header = jsonwebtoken::decode_header(token).map_err(classify)?;
        self.verify_parsed(token, header).await
    }

    fn key_set_loaded(&self) -> Option<bool> {
        Some(self.is_loaded())
    }

    fn key_set_generation(&self) -> u64 {
        self.key_sets.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refresh_period_follows_max_age_within_bounds() {
        let timing = JwksTiming::default();
        let period = |header: Option<&str>| timing.refresh_period(header).as_secs();
        assert_eq!(period(None), 3600);
        assert_eq!(period(Some("public")), 3600);
        assert_eq!(period(Some("public, max-age=7200")), 7200);
        assert_eq!(period(Some("Max-Age=\"900\", must-revalidate")), 900);
        assert_eq!(period(Some("max-age=10")), 300, "at least 5 minutes");
        assert_eq!(period(Some("max-age=999999999")), 86400, "at most a day");
        assert_eq!(period(Some("no-store")), 300);
        assert_eq!(period(Some("max-age=soon")), 3600);
    }
}
