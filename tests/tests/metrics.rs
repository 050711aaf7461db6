//! `/metrics`, scraped and parsed as Prometheus would (`prometheus-parse`), before and after
//! known traffic: the counters move by exactly what was sent, and the gauges follow what is open.
//! (The recorder is per process, so the tests of this binary take turns: nothing else may count
//! while one of them does.)

use base64::Engine as _;
use integration_tests::{Backend, Options, TestServer};
use prometheus_parse::{Scrape, Value};
use reqwest::{Method, StatusCode};
use server::auth::{ClaimRules, JwksSettings, JwksTiming};
use tokio::io::AsyncReadExt as _;

async fn scrape(server: &TestServer) -> Scrape {
    let response = server.raw().request(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = response.text().await.unwrap();
    Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).expect("the Prometheus text format")
}

/// The value of `name{labels}` (0 when it was never recorded).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is not a number: {other:?}"),
        })
        .sum()
}

/// Held by each test for its whole run.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server =
        TestServer::start_with(Backend::Sqlite, Options { metrics: true, ..Options::default() })
            .await;
    let before = scrape(&server).await;

    let client = server.client("metrics-user");
    for title in ["one", "two", "three"] {
        client
            .create_task()
            .body(client_sdk::types::TaskCreate::builder().title(title))
            .send()
            .await
            .unwrap();
    }
    client.list_tasks().send().await.unwrap();
    client.list_user_tasks().user_id("metrics-user").send().await.unwrap();
    assert!(client.get_task().id(987_654).send().await.is_err(), "a 404");
    let raw = server.raw();
    for bad in ["not-a-jwt", "x.y.z"] {
        let response =
            raw.request(Method::GET, "/api/tasks").bearer_auth(bad).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let missing = raw.request(Method::GET, "/api/tasks").send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    let expired = integration_tests::sign(
        &serde_json::json!({"sub": "m", "exp": integration_tests::now() - 3600}),
    );
    raw.request(Method::GET, "/api/tasks").bearer_auth(expired).send().await.unwrap();
    raw.request(Method::GET, "/health").send().await.unwrap();

    let after = scrape(&server).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let requests = "http_requests_total";
    assert_eq!(moved(requests, &[("operation", "create_task"), ("status", "2xx")]), 3.0);
    assert_eq!(moved(requests, &[("operation", "list_tasks"), ("status", "2xx")]), 1.0);
    assert_eq!(moved(requests, &[("operation", "list_user_tasks"), ("status", "2xx")]), 1.0);
    assert_eq!(moved(requests, &[("operation", "get_task"), ("status", "4xx")]), 1.0);
    assert_eq!(moved(requests, &[("operation", "list_tasks"), ("status", "4xx")]), 4.0);
    assert_eq!(moved(requests, &[("operation", "health"), ("status", "2xx")]), 1.0);
    // The first scrape itself is no operation of the API.
    assert_eq!(moved(requests, &[("operation", "none"), ("status", "2xx")]), 1.0);
    let latency = "http_request_duration_seconds_count";
    assert_eq!(moved(latency, &[("operation", "create_task"), ("status", "2xx")]), 3.0);
    let rejected = "auth_rejected_tokens_total";
    assert_eq!(moved(rejected, &[("reason", "invalid")]), 2.0);
    assert_eq!(moved(rejected, &[("reason", "missing")]), 1.0);
    assert_eq!(moved(rejected, &[("reason", "expired")]), 1.0);
    assert!(value(&after, "db_pool_connections", &[]) >= 1.0, "the pool holds connections");
    assert!(after.samples.iter().any(|s| s.metric == "db_pool_idle_connections"));

    // A live stream: the gauge counts it while it is open, and each event sent is counted.
    let before = scrape(&server).await;
    let mut stream = open_stream(&server, "metrics-user").await;
    let task = client
        .create_task()
        .body(client_sdk::types::TaskCreate::builder().title("streamed"))
        .send()
        .await
        .unwrap();
    // The feed keeps each task's latest change only: deleting before the upsert went out
    // would leave one tombstone to send, so the delete waits until the upsert was read.
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, "event: upsert").await;
    client.delete_task().id(task.id).send().await.unwrap();
    read_until(&mut stream, &mut seen, "event: delete").await;
    let open = scrape(&server).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&open, name, labels) - value(&before, name, labels)
    };
    assert_eq!(moved("event_streams_open", &[]), 1.0);
    assert_eq!(moved("events_sent_total", &[("event", "upsert")]), 1.0);
    assert_eq!(moved("events_sent_total", &[("event", "delete")]), 1.0);
    // Reset (as when a client drops a stream with data still unread): noticed at once.
    // (A clean close is noticed at the next keep-alive but one, within 30 s: see
    // `docs/benchmarks.md`.)
    stream.set_zero_linger().unwrap();
    drop(stream);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while value(&scrape(&server).await, "event_streams_open", &[]) > 0.0 {
        assert!(std::time::Instant::now() < deadline, "the gauge never came back down");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // A key set that cannot be fetched: a 503 by cause `key_set`, and failed fetches.
    let unreachable = JwksSettings {
        url: "http://127.0.0.1:9/api/auth/jwks".into(),
        rules: ClaimRules { issuer: Some("http://a".into()), audience: Some("http://a".into()) },
        timing: JwksTiming::default(),
    };
    let jwks_only = Options { metrics: true, jwks: Some(unreachable), ..Options::default() };
    let jwks_server = TestServer::start_with(Backend::Sqlite, jwks_only).await;
    let part = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
    let eddsa =
        format!("{}.{}.c2ln", part(r#"{"alg":"EdDSA","kid":"k1"}"#), part(r#"{"sub":"m"}"#));
    let before = scrape(&jwks_server).await;
    let response = jwks_server
        .raw()
        .request(Method::GET, "/api/tasks")
        .bearer_auth(&eddsa)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let after = scrape(&jwks_server).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(moved("unavailable_responses_total", &[("cause", "key_set")]), 1.0);
    assert!(value(&after, "jwks_fetches_total", &[("outcome", "error")]) >= 1.0);

    // Off, it is not there at all.
    let off = TestServer::start(Backend::Sqlite).await;
    let response = off.raw().request(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

/// Finding 7 of the hostile-clients review: a flood of unauthenticated health probes, half of
/// them readiness probes, costs about one database check a second (counted where the check is
/// made), not one per probe; task requests meanwhile are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_health_probes_costs_one_database_check_a_second() {
    let _turn = ONE_AT_A_TIME.lock().await;
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let server =
            TestServer::start_with(backend, Options { metrics: true, ..Options::default() }).await;
        let checks = async || {
            value(&scrape(&server).await, "health_database_checks_total", &[("outcome", "ok")])
        };
        let before = checks().await;
        let client = server.client("prober-victim");
        let http = client_sdk::http_client_builder().build().unwrap();
        let started = std::time::Instant::now();
        let mut probes = 0;
        while started.elapsed() < std::time::Duration::from_secs(2) {
            let flood = (0..50).map(|i| {
                let path = if i % 2 == 0 { "/health" } else { "/health/ready" };
                http.get(server.url(path)).send()
            });
            let (answers, listed) =
                tokio::join!(futures::future::join_all(flood), client.list_tasks().send());
            for response in answers {
                assert_eq!(response.unwrap().status(), StatusCode::OK);
                probes += 1;
            }
            assert_eq!(listed.unwrap().status(), StatusCode::OK, "{backend:?}");
        }
        // A check at the start of each second the flood touched, and one more at most for a
        // second boundary crossed while the first check of a second was in flight.
        let seconds = started.elapsed().as_secs_f64().ceil();
        let made = checks().await - before;
        assert!(
            (1.0..=seconds + 1.0).contains(&made),
            "{backend:?}: {probes} probes in {seconds} s made {made} database checks"
        );
    }
}

/// Reads `stream` into `seen` until `seen` holds `marker`.
async fn read_until(stream: &mut tokio::net::TcpStream, seen: &mut Vec<u8>, marker: &str) {
    while !String::from_utf8_lossy(seen).contains(marker) {
        let mut buffer = [0u8; 4096];
        let read = stream.read(&mut buffer).await.unwrap();
        assert!(read > 0, "the stream closed");
        seen.extend_from_slice(&buffer[..read]);
    }
}

/// `user`'s event stream on a plain connection (closed when dropped, as a browser tab does).
async fn open_stream(server: &TestServer, user: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let address = server.base_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "GET /api/tasks/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        integration_tests::token(user)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // The head comes once the stream follows the user: from here on, no change is missed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "the stream closed");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    stream
}
