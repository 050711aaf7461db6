//! Bad input never panics and never gets a 5xx: arbitrary bytes, invalid UTF-8, deep JSON,
//! huge numbers, odd ids, odd queries and odd content types, thrown at every endpoint on both
//! databases. A panic hook counts panics anywhere in the process (server included).

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use integration_tests::{Backend, TestServer, token};
use proptest::{prelude::*, test_runner::TestRunner};
use reqwest::{Method, StatusCode, header};

const CASES: u32 = 3000;

fn methods() -> impl Strategy<Value = Method> {
    prop_oneof![
        3 => Just(Method::POST),
        3 => Just(Method::PUT),
        2 => Just(Method::GET),
        2 => Just(Method::PATCH),
        1 => Just(Method::DELETE),
        1 => Just(Method::OPTIONS),
        1 => Just(Method::HEAD),
    ]
}

/// Path segments in the place of a task id or a user id.
fn segments() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1".to_owned()),
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("9223372036854775808".to_owned()),
        Just("-9223372036854775809".to_owned()),
        Just("99999999999999999999999999999".to_owned()),
        Just("1e3".to_owned()),
        Just("0x10".to_owned()),
        Just("%00".to_owned()),
        Just("%ff%fe".to_owned()),
        Just("..%2f..".to_owned()),
        Just("fuzzer".to_owned()),
        "[a-zA-Z0-9%._~-]{0,40}",
    ]
}

fn paths() -> impl Strategy<Value = String> {
    (0..8usize, segments(), segments()).prop_map(|(shape, a, b)| match shape {
        0 => "/api/tasks".to_owned(),
        1 => format!("/api/tasks/{a}"),
        2 => format!("/api/tasks/{a}/complete"),
        3 => format!("/api/{a}/tasks"),
        4 => format!("/api/{a}/tasks/{b}"),
        5 => format!("/api/{a}/tasks/{b}/complete"),
        6 => "/health".to_owned(),
        _ => format!("/{a}/{b}"),
    })
}

fn queries() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("?limit=0".to_owned()),
        Just("?limit=-5&offset=-5".to_owned()),
        Just("?limit=18446744073709551616".to_owned()),
        Just("?status=&sort=&order=".to_owned()),
        Just("?status=pending&status=completed".to_owned()),
        Just("?offset=9223372036854775807&limit=1000".to_owned()),
        "\\?[a-z]{1,8}=[a-zA-Z0-9%]{0,20}",
    ]
}

fn content_types() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_owned())),
        Just(Some("application/json; charset=utf-16".to_owned())),
        Just(Some("application/problem+json".to_owned())),
        Just(Some("text/plain".to_owned())),
        Just(Some("multipart/form-data; boundary=x".to_owned())),
        Just(Some("application/x-www-form-urlencoded".to_owned())),
        Just(Some("*/*".to_owned())),
        Just(Some("json".to_owned())),
        "[ -~]{0,30}".prop_map(Some),
    ]
}

fn bodies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..512),
        Just(b"\xff\xfe{\"title\": \"\xc3\x28\"}".to_vec()),
        Just(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes()),
        Just(format!("{{\"title\": {}}}", "{\"a\":".repeat(5000)).into_bytes()),
        Just(b"{\"title\": 1e999999, \"completed\": 123456789012345678901234567890}".to_vec()),
        Just(b"{\"title\": \"x\", \"description\": -0.0e-99999}".to_vec()),
        Just(b"{\"title\": \"\\ud800\"}".to_vec()),
        Just(b"{\"title\": \"a\", \"title\": \"b\"}".to_vec()),
        Just(b"{\"title\": \"\\u0000\"}".to_vec()),
        Just(b"null".to_vec()),
        Just(b"{\"title\": \"ok\"}".to_vec()),
        Just(b"{\"completed\": true}".to_vec()),
        "\\PC{0,300}".prop_map(String::into_bytes),
    ]
}

fn run(backend: Backend) {
    let panics = Arc::new(AtomicUsize::new(0));
    let previous = std::panic::take_hook();
    let counter = panics.clone();
    std::panic::set_hook(Box::new(move |info| {
        counter.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));

    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let _context = runtime.enter();
    let server = runtime.block_on(TestServer::start(backend));
    let http = client_sdk::http_client_builder().build().unwrap();
    let auth = token("fuzzer");
    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (methods(), paths(), queries(), content_types(), bodies(), any::<bool>());
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<u16, usize>::new());
    runner
        .run(&strategy, |(method, path, query, content_type, body, authenticated)| {
            let url = format!("{}{}{}", server.base_url, path, query);
            let mut request = http.request(method.clone(), &url).body(body);
            if let Some(value) = content_type.and_then(|v| header::HeaderValue::from_str(&v).ok()) {
                request = request.header(header::CONTENT_TYPE, value);
            }
            if authenticated {
                request = request.bearer_auth(&auth);
            }
            let response = match runtime.block_on(request.send()) {
                Ok(response) => response,
                // reqwest refusing to build the request (a URL it cannot parse) is not the
                // server's doing; a reset connection or a timeout is.
                Err(err) if err.is_builder() => return Ok(()),
                Err(err) => return Err(TestCaseError::fail(format!("{method} {url}: {err}"))),
            };
            let status = response.status();
            *statuses.lock().unwrap().entry(status.as_u16()).or_default() += 1;
            prop_assert!(!status.is_server_error(), "{method} {url} → {status}");
            if status.is_client_error() && method != Method::HEAD {
                prop_assert_eq!(
                    response.headers().get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
                    Some(&b"application/problem+json"[..]),
                    "{} {} → {}",
                    method,
                    url,
                    status
                );
            }
            Ok(())
        })
        .unwrap();
    // The server is still healthy after all of it.
    let health = runtime.block_on(http.get(server.url("/health")).send()).unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    println!("{backend:?}: {CASES} requests, statuses {:?}", statuses.lock().unwrap());
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a panic happened while fuzzing");
    drop(server);
    runtime.shutdown_background();
}

#[test]
fn bad_input_never_panics_or_5xx_on_sqlite() {
    run(Backend::Sqlite);
}

#[test]
fn bad_input_never_panics_or_5xx_on_postgres() {
    run(Backend::Postgres);
}

#[test]
fn bad_input_never_panics_or_5xx_behind_pgbouncer() {
    run(Backend::PgBouncer);
}
