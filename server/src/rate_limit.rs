//! Per-user rate limits (OWASP API4, unrestricted resource consumption): a token bucket per
//! authenticated subject, and, for requests without a valid token, per client address (the
//! socket's peer, or behind a proxy the address a configured trusted header carries). Buckets
//! live in this instance (`governor`'s GCRA), so N instances allow N times the rate. Past the
//! limit: 429 with `Retry-After`.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::{Arc, Weak},
    time::Duration,
};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use poem::{Request, http::HeaderName};

use crate::error::ApiError;

/// How often idle buckets are dropped, so that the maps do not grow with every address seen.
const CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

/// `RATE_LIMIT_PER_SECOND`, `RATE_LIMIT_BURST`, `TRUSTED_CLIENT_IP_HEADER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// Sustained requests per second per user (or address); 0 turns the limits off.
    pub per_second: u32,
    /// Requests allowed at once before the sustained rate applies.
    pub burst: u32,
    /// A header a trusted proxy sets to the client's address (its last value is used).
    pub client_ip_header: Option<String>,
}

impl Default for RateLimitSettings {
    /// Far above what a person clicking through the frontend sends (a few a second) and what
    /// the benchmark's busiest user sends (seeding 10,000 tasks, then ~1,000 pages a second);
    /// it keeps one runaway client to well under what an instance serves.
    fn default() -> Self {
        Self { per_second: 5_000, burst: 10_000, client_ip_header: None }
    }
}

pub struct RateLimits {
    users: DefaultKeyedRateLimiter<String>,
    addresses: DefaultKeyedRateLimiter<IpAddr>,
    client_ip_header: Option<HeaderName>,
}

impl RateLimits {
    /// The limits, or `None` when they are off. Starts a cleanup task (needs a Tokio runtime).
    pub fn start(settings: &RateLimitSettings) -> anyhow::Result<Option<Arc<Self>>> {
        let Some(per_second) = NonZeroU32::new(settings.per_second) else { return Ok(None) };
        let burst = NonZeroU32::new(settings.burst.max(settings.per_second)).unwrap_or(per_second);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        let client_ip_header = match &settings.client_ip_header {
            Some(name) => Some(HeaderName::try_from(name.as_str())?),
            None => None,
        };
        let limits = Arc::new(Self {
            users: RateLimiter::keyed(quota),
            addresses: RateLimiter::keyed(quota),
            client_ip_header,
        });
        tokio::spawn(clean_up(Arc::downgrade(&limits)));
        Ok(Some(limits))
    }

    /// One request of the authenticated `subject`.
    pub fn check_user(&self, subject: &str) -> Result<(), ApiError> {
        check(&self.users, &subject.to_owned())
    }

    /// One request without a valid token, from the client's address.
    pub fn check_address(&self, req: &Request) -> Result<(), ApiError> {
        let forwarded = self.client_ip_header.as_ref().and_then(|name| {
            let value = req.headers().get_all(name).iter().next_back()?.to_str().ok()?;
            value.rsplit(',').next()?.trim().parse().ok()
        });
        let peer = req.remote_addr().as_socket_addr().map(|address| address.ip());
        match forwarded.or(peer) {
            Some(address) => check(&self.addresses, &address),
            None => Ok(()),
        }
    }
}

fn check<K: Clone + std::hash::Hash + Eq>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
) -> Result<(), ApiError> {
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        ApiError::TooManyRequests { retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64 }
    })
}

async fn clean_up(limits: Weak<RateLimits>) {
    loop {
        tokio::time::sleep(CLEANUP_INTERVAL).await;
        let Some(limits) = limits.upgrade() else { return };
        limits.users.retain_recent();
        limits.users.shrink_to_fit();
        limits.addresses.retain_recent();
        limits.addresses.shrink_to_fit();
    }
}
