//! Restarts that lose no request: from the shutdown signal (what SIGTERM sends the binary) on,
//! `/health/ready` is 503 `draining` at once while requests are still served, on new
//! connections too, for `SHUTDOWN_DRAIN_SECS`; only then does the listener close.

use std::time::{Duration, Instant};

use integration_tests::{Backend, Options, TestServer, on_every_database, token, user};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

on_every_database!(a_shutdown_turns_readiness_off_serves_through_the_drain_then_closes);

const DRAIN: Duration = Duration::from_secs(2);
/// Scheduling slack on a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(1500);

async fn a_shutdown_turns_readiness_off_serves_through_the_drain_then_closes(backend: Backend) {
    let mut server =
        TestServer::start_with(backend, Options { shutdown_drain: DRAIN, ..Options::default() })
            .await;
    let owner = user("drain");
    let ready = |server: &TestServer| server.raw().request(Method::GET, "/health/ready").send();
    assert_eq!(ready(&server).await.unwrap().status(), StatusCode::OK);

    server.begin_shutdown();
    let began = Instant::now();
    let not_ready = ready(&server).await.expect("still listening");
    assert_eq!(not_ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(not_ready.headers().contains_key(header::RETRY_AFTER));
    let health: Value = not_ready.json().await.unwrap();
    assert_eq!(health["status"], "draining");

    // Each `raw()` is a new client, so a new connection: still accepted and served.
    let created = server
        .raw()
        .request(Method::POST, "/api/tasks")
        .bearer_auth(token(&owner))
        .json(&json!({"title": "sent while draining"}))
        .send()
        .await
        .expect("served while draining");
    assert_eq!(created.status(), StatusCode::CREATED);
    let listed = server.client(&owner).list_tasks().send().await.expect("served while draining");
    assert_eq!(listed.len(), 1);
    assert!(began.elapsed() < DRAIN, "the checks above ran within the drain");

    tokio::time::sleep((began + DRAIN + SLACK).saturating_duration_since(Instant::now())).await;
    let address = server.base_url.trim_start_matches("http://").to_owned();
    assert!(
        tokio::net::TcpStream::connect(&address).await.is_err(),
        "the listener is closed once the drain is over"
    );
}
