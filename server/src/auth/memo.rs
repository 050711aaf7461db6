//! Verified credentials remembered for a short while, so that a client's next requests skip the
//! work of verifying the same token again (base64, the signature, JSON claims and their
//! allocations: about a tenth of the allocations of a request in issue 19's profile).
//!
//! Only a credential that verified is remembered, under its exact text, until the earliest of
//! its expiry and [`REMEMBER_FOR`] after it was verified, and only while the keys it was verified
//! with are the current ones (a JWKS refresh forgets it). The verifier itself accepts a token for
//! a leeway past its expiry, so a remembered one is never accepted longer than verifying it again
//! would accept it.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
};

use async_trait::async_trait;

use super::{AuthError, Subject, Verifier};

/// How long a verified credential is trusted without verifying it again, in seconds.
pub const REMEMBER_FOR: u64 = 60;
/// At most this many credentials per kind (bearer tokens, session cookies) are remembered.
pub const MAX_REMEMBERED: usize = 4096;
/// Longer credentials are verified every time: the memo holds at most 4096 × 2 KB per kind.
pub const MAX_REMEMBERED_BYTES: usize = 2048;

/// A [`Verifier`] that remembers what `inner` verified.
pub struct RememberingVerifier {
    inner: Arc<dyn Verifier>,
    tokens: Memo,
    cookies: Memo,
}

impl RememberingVerifier {
    pub fn new(inner: Arc<dyn Verifier>) -> Self {
        Self { inner, tokens: Memo::default(), cookies: Memo::default() }
    }

    /// What `memo` remembers of `credential`, else what `verify` says of it (not even called
    /// on a hit: the verifier's future is boxed), remembered when it verified.
    async fn remembered<F: Future<Output = Result<Subject, AuthError>>>(
        &self,
        memo: &Memo,
        credential: &str,
        verify: impl FnOnce() -> F,
    ) -> Result<Subject, AuthError> {
        let now = Moment::now(self.inner.as_ref());
        if let Some(subject) = memo.recall(credential, now) {
            return Ok(subject);
        }
        let subject = verify().await?;
        memo.remember(credential, &subject, now);
        Ok(subject)
    }
}

#[async_trait]
impl Verifier for RememberingVerifier {
    async fn verify(&self, token: &str) -> Result<Subject, AuthError> {
        self.remembered(&self.tokens, token, || self.inner.verify(token)).await
    }

    async fn verify_session_cookie(&self, value: &str) -> Result<Subject, AuthError> {
        self.remembered(&self.cookies, value, || self.inner.verify_session_cookie(value)).await
    }

    fn key_set_loaded(&self) -> Option<bool> {
        self.inner.key_set_loaded()
    }

    fn key_set_generation(&self) -> u64 {
        self.inner.key_set_generation()
    }
}

/// When a credential is looked up or verified: the second (since the epoch) and the keys'
/// generation, read before verifying (keys that change meanwhile leave the entry stale).
#[derive(Debug, Clone, Copy)]
struct Moment {
    second: u64,
    keys: u64,
}

impl Moment {
    fn now(verifier: &dyn Verifier) -> Self {
        Self { second: jsonwebtoken::get_current_timestamp(), keys: verifier.key_set_generation() }
    }
}

/// A remembered credential's subject, until when, and under which keys.
struct Remembered {
    subject: Subject,
    until: u64,
    keys: u64,
}

/// Verified credentials by their exact text.
#[derive(Default)]
struct Memo {
    entries: RwLock<HashMap<Box<str>, Remembered>>,
}

impl Memo {
    fn recall(&self, credential: &str, now: Moment) -> Option<Subject> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(credential)?;
        (now.second < entry.until && now.keys == entry.keys).then(|| entry.subject.clone())
    }

    fn remember(&self, credential: &str, subject: &Subject, now: Moment) {
        let until = subject.expires_at.min(now.second.saturating_add(REMEMBER_FOR));
        if credential.len() > MAX_REMEMBERED_BYTES || until <= now.second {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_REMEMBERED {
            entries.retain(|_, entry| now.second < entry.until && now.keys == entry.keys);
            // Every entry still live: more clients than the memo holds within a minute. Start
            // over rather than track ages; they are verified again, as without a memo.
            if entries.len() >= MAX_REMEMBERED {
                entries.clear();
            }
        }
        let entry = Remembered { subject: subject.clone(), until, keys: now.keys };
        entries.insert(credential.into(), entry);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::auth::{ClaimRules, SharedSecretVerifier};

    const SECRET: &[u8] = b"a secret of the tests, long enough";

    /// The real shared-secret verifier, counting how often it is asked.
    struct Counted {
        verifier: SharedSecretVerifier,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Verifier for Counted {
        async fn verify(&self, token: &str) -> Result<Subject, AuthError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.verifier.verify(token).await
        }
    }

    fn remembering() -> (Arc<Counted>, RememberingVerifier) {
        let counted = Arc::new(Counted {
            verifier: SharedSecretVerifier::new(&[SECRET], &ClaimRules::default()),
            calls: AtomicUsize::new(0),
        });
        (counted.clone(), RememberingVerifier::new(counted))
    }

    fn token(secret: &[u8], sub: &str, exp: u64) -> String {
        let claims = json!({ "sub": sub, "exp": exp });
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(secret))
            .expect("signing a test token")
    }

    fn subject(id: &str, expires_at: u64) -> Subject {
        Subject { id: Arc::new(id.into()), expires_at }
    }

    fn at(second: u64) -> Moment {
        Moment { second, keys: 0 }
    }

    #[tokio::test]
    async fn a_verified_token_is_verified_once_and_each_token_keeps_its_own_subject() {
        let (counted, verifier) = remembering();
        let exp = jsonwebtoken::get_current_timestamp() + 3600;
        let (alice, bob) = (token(SECRET, "alice", exp), token(SECRET, "bob", exp));
        for _ in 0..3 {
            assert_eq!(verifier.verify(&alice).await.unwrap().id.as_str(), "alice");
            assert_eq!(verifier.verify(&bob).await.unwrap().id.as_str(), "bob");
        }
        assert_eq!(counted.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_rejected_token_is_never_remembered() {
        let (counted, verifier) = remembering();
        let exp = jsonwebtoken::get_current_timestamp() + 3600;
        let forged = token(b"another secret, not the service's", "alice", exp);
        let expired = token(SECRET, "alice", jsonwebtoken::get_current_timestamp() - 3600);
        for _ in 0..2 {
            assert!(matches!(verifier.verify(&forged).await, Err(AuthError::Invalid(_))));
            assert!(matches!(verifier.verify(&expired).await, Err(AuthError::Expired)));
        }
        assert_eq!(counted.calls.load(Ordering::SeqCst), 4);
        assert_eq!(verifier.tokens.len(), 0);
    }

    #[test]
    fn a_credential_is_recalled_until_its_expiry_or_a_minute_whichever_is_first() {
        let memo = Memo::default();
        memo.remember("expires soon", &subject("alice", 1_010), at(1_000));
        memo.remember("expires late", &subject("bob", 9_999), at(1_000));
        assert_eq!(memo.recall("expires soon", at(1_009)), Some(subject("alice", 1_010)));
        assert_eq!(memo.recall("expires soon", at(1_010)), None);
        assert_eq!(
            memo.recall("expires late", at(1_000 + REMEMBER_FOR - 1)).unwrap().id.as_str(),
            "bob"
        );
        assert_eq!(memo.recall("expires late", at(1_000 + REMEMBER_FOR)), None);
        assert_eq!(memo.recall("never remembered", at(1_000)), None);
    }

    #[test]
    fn new_keys_forget_what_older_keys_verified() {
        let memo = Memo::default();
        memo.remember("verified under the first key set", &subject("alice", 9_999), at(1_000));
        let refreshed = Moment { second: 1_001, keys: 1 };
        assert_eq!(memo.recall("verified under the first key set", refreshed), None);
        memo.remember("verified under the second", &subject("bob", 9_999), refreshed);
        assert_eq!(memo.recall("verified under the second", refreshed).unwrap().id.as_str(), "bob");
    }

    #[test]
    fn the_memo_stays_bounded_and_skips_what_it_should_not_hold() {
        let memo = Memo::default();
        for i in 0..MAX_REMEMBERED + 10 {
            memo.remember(&format!("token {i}"), &subject("alice", 2_000), at(1_000));
            assert!(memo.len() <= MAX_REMEMBERED);
        }
        assert_eq!(
            memo.recall(&format!("token {}", MAX_REMEMBERED + 9), at(1_000)).unwrap().id.as_str(),
            "alice"
        );
        let long = "x".repeat(MAX_REMEMBERED_BYTES + 1);
        memo.remember(&long, &subject("alice", 2_000), at(1_000));
        memo.remember("already expired", &subject("alice", 1_000), at(1_000));
        assert_eq!(memo.recall(&long, at(1_000)), None);
        assert_eq!(memo.recall("already expired", at(1_000)), None);
    }
}
