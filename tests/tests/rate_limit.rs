//! Per-user rate limits: a burst past the limit gets 429 problems with `Retry-After`, other
//! users are unaffected, the bucket refills; without a valid token the client's address has a
//! bucket of its own (from a trusted proxy header when configured).

use std::time::{Duration, Instant};

use integration_tests::{Backend, Options, TestServer, token};
use reqwest::{Method, StatusCode, header};
use server::rate_limit::RateLimitSettings;

const PER_SECOND: u32 = 5;
const BURST: u32 = 10;

async fn statuses(count: usize, request: impl Fn() -> reqwest::RequestBuilder) -> Vec<StatusCode> {
    let mut seen = Vec::new();
    for _ in 0..count {
        seen.push(request().send().await.unwrap().status());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_limit_is_429_and_the_bucket_refills() {
    let rate_limits = RateLimitSettings {
        per_second: PER_SECOND,
        burst: BURST,
        client_ip_header: Some("X-Forwarded-For".into()),
    };
    let server =
        TestServer::start_with(Backend::Sqlite, Options { rate_limits, ..Options::default() })
            .await;
    let raw = server.raw();
    let alice = token("alice");
    let started = Instant::now();
    let seen = statuses(15, || raw.request(Method::GET, "/api/tasks").bearer_auth(&alice)).await;
    let ok = seen.iter().filter(|s| **s == StatusCode::OK).count();
    let limited = seen.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!(ok + limited, 15, "{seen:?}");
    // The burst, plus what refilled while the requests ran.
    let refilled = (started.elapsed().as_secs_f64() * f64::from(PER_SECOND)).ceil() as usize;
    assert!((BURST as usize..=BURST as usize + refilled).contains(&ok), "{ok} allowed: {seen:?}");
    assert!(limited >= 1);

    let response = raw.request(Method::GET, "/api/tasks").bearer_auth(&alice).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 =
        response.headers()[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["status"], 429);

    // Another user has a bucket of their own.
    let bob = token("bob");
    let bob_seen = statuses(5, || raw.request(Method::GET, "/api/tasks").bearer_auth(&bob)).await;
    assert!(bob_seen.iter().all(|s| *s == StatusCode::OK), "{bob_seen:?}");

    // The bucket refills at the sustained rate.
    tokio::time::sleep(Duration::from_millis(1000 / u64::from(PER_SECOND) * 2 + 100)).await;
    let again = raw.request(Method::GET, "/api/tasks").bearer_auth(&alice).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);

    // Without a valid token: per client address, as the trusted proxy header says.
    let raw = &raw;
    let from = |address: &'static str| {
        move || {
            raw.request(Method::GET, "/api/tasks")
                .bearer_auth("bad")
                .header("X-Forwarded-For", format!("10.0.0.1, {address}"))
        }
    };
    let mallory = statuses(15, from("203.0.113.7")).await;
    assert!(mallory.contains(&StatusCode::TOO_MANY_REQUESTS), "{mallory:?}");
    assert!(
        mallory
            .iter()
            .all(|s| [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS].contains(s))
    );
    let other = statuses(3, from("203.0.113.8")).await;
    assert!(other.iter().all(|s| *s == StatusCode::UNAUTHORIZED), "{other:?}");
    // A valid token is never charged to the address.
    assert_eq!(
        raw.request(Method::GET, "/api/tasks")
            .bearer_auth(token("carol"))
            .header("X-Forwarded-For", "203.0.113.7")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}
