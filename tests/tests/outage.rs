//! The database goes away under a running server: every `/api` call and `/health` answer 503
//! (problem+json, `Retry-After`) within 2 s, never a hang or a 500; when it comes back, the
//! same server serves again within 5 s, without a restart. PostgreSQL only: it is the database
//! that can be down while the service is up.

use std::time::{Duration, Instant};

use client_sdk::types::TaskCreate;
use integration_tests::{Options, PgCluster, TestServer, postgres::with_database, token};
use reqwest::{Method, StatusCode, header};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_503_and_recovers_without_restart() {
    let cluster = tokio::task::block_in_place(PgCluster::start);
    let server =
        TestServer::start_on(&with_database(&cluster.admin_url(), "postgres"), Options::default())
            .await;
    let client = server.client("outage");
    let task = client
        .create_task()
        .body(TaskCreate::builder().title("before the outage"))
        .send()
        .await
        .unwrap()
        .into_inner();
    // Warm the pool with several connections, so that stale ones exist after the restart.
    let warm = (0..8).map(|_| client.list_tasks().send());
    for result in futures::future::join_all(warm).await {
        result.unwrap();
    }

    tokio::task::block_in_place(|| cluster.stop());

    let raw = server.raw();
    let auth = token("outage");
    let calls = [
        (Method::GET, "/api/tasks".to_owned(), None),
        (Method::POST, "/api/tasks".to_owned(), Some(r#"{"title": "during"}"#)),
        (Method::GET, format!("/api/tasks/{}", task.id), None),
        (Method::PUT, format!("/api/tasks/{}", task.id), Some(r#"{"title": "x"}"#)),
        (Method::PATCH, format!("/api/outage/tasks/{}/complete", task.id), None),
        (Method::DELETE, format!("/api/tasks/{}", task.id), None),
    ];
    let mut slowest = Duration::ZERO;
    for round in 0..2 {
        for (method, path, body) in &calls {
            let mut request = raw.request(method.clone(), path).bearer_auth(&auth);
            if let Some(body) = body {
                request = request.header(header::CONTENT_TYPE, "application/json").body(*body);
            }
            let started = Instant::now();
            let response = request.send().await.unwrap();
            let elapsed = started.elapsed();
            slowest = slowest.max(elapsed);
            assert_eq!(
                response.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{method} {path} (round {round})"
            );
            assert!(elapsed < Duration::from_secs(2), "{method} {path} took {elapsed:?}");
            assert!(response.headers().contains_key(header::RETRY_AFTER));
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
            let body = response.text().await.unwrap();
            for leak in [
                "postgres",
                "5432",
                "127.0.0.1",
                "connection refused",
                "Connection refused",
                "sqlx",
            ] {
                assert!(!body.contains(leak), "503 body leaks {leak:?}: {body}");
            }
        }
    }
    let started = Instant::now();
    let health = raw.request(Method::GET, "/health").send().await.unwrap();
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(2));
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"status": "unhealthy", "database": "unreachable"}));
    // Not ready for traffic, but alive: an orchestrator must not restart it for this.
    let ready = raw.request(Method::GET, "/health/ready").send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.headers().contains_key(header::RETRY_AFTER));
    let live = raw.request(Method::GET, "/health/live").send().await.unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    println!("outage: slowest 503 took {slowest:?}");

    tokio::task::block_in_place(|| cluster.resume());
    let restarted = Instant::now();
    // Every pooled connection died with the old server process: keep asking until every
    // operation answers again, and require that within 5 s of the database being back.
    loop {
        let list = client.list_tasks().send().await;
        let get = client.get_task().id(task.id).send().await;
        let health = raw.request(Method::GET, "/health").send().await.unwrap().status();
        if list.is_ok() && get.is_ok() && health == StatusCode::OK {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "not recovered 5 s after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("outage: recovered {:?} after the database came back", restarted.elapsed());
    // And a burst of parallel requests (every pool slot) all succeed.
    let burst = (0..20).map(|_| client.list_tasks().send());
    for result in futures::future::join_all(burst).await {
        let tasks = result.expect("served after recovery").into_inner();
        assert_eq!(tasks.len(), 1, "nothing was written during the outage");
        assert_eq!(tasks[0].title, "before the outage");
    }
}
