//! Bad input never panics and never gets a 5xx: arbitrary bytes, invalid UTF-8, deep JSON,
//! huge numbers, odd ids, odd queries and odd content types, conditional headers and
//! `Idempotency-Key`s, forged cursors (times out of every database's range, NULs, control
//! characters), tokens whose subject holds a NUL or a control character, and requests over
//! HTTP/2 (not served: they must fail to connect, and leave the server well), thrown at every
//! endpoint on every database. A panic hook counts panics anywhere in the process (server
//! included).

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use integration_tests::{Backend, TestServer, sign, token};
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
    (0..10usize, segments(), segments()).prop_map(|(shape, a, b)| match shape {
        0 => "/api/tasks".to_owned(),
        1 => format!("/api/tasks/{a}"),
        2 => format!("/api/tasks/{a}/complete"),
        3 => format!("/api/{a}/tasks"),
        4 => format!("/api/{a}/tasks/{b}"),
        5 => format!("/api/{a}/tasks/{b}/complete"),
        6 => "/health".to_owned(),
        7 => "/api/tasks/changes".to_owned(),
        8 => format!("/api/{a}/tasks/changes"),
        _ => format!("/{a}/{b}"),
    })
}

/// What goes in a cursor: sort tags of ours and not, ids, times in and out of every database's
/// range, titles with NULs and control characters.
fn cursor_texts() -> impl Strategy<Value = String> {
    let tags = prop_oneof![
        Just("ca"),
        Just("cd"),
        Just("ua"),
        Just("ud"),
        Just("ta"),
        Just("td"),
        Just("da"),
        Just("dd"),
        Just("pa"),
        Just("pd"),
        Just("zz")
    ];
    let values = prop_oneof![
        Just("-300000000000000000".to_owned()),
        Just("300000000000000000".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("1767952800123456".to_owned()),
        Just("-".to_owned()),
        Just("3".to_owned()),
        Just("32768".to_owned()),
        Just("a\0b".to_owned()),
        Just("\u{1}\u{7f}\u{85}".to_owned()),
        "\\PC{0,20}",
    ];
    (tags, any::<i64>(), values).prop_map(|(tag, id, value)| format!("{tag}.{id}.{value}"))
}

fn queries() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        cursor_texts().prop_map(|text| format!("?after={}", URL_SAFE_NO_PAD.encode(text))),
        cursor_texts()
            .prop_map(|text| format!("?sort=title&after={}", URL_SAFE_NO_PAD.encode(text))),
        cursor_texts().prop_map(|text| format!("?since={}", URL_SAFE_NO_PAD.encode(text))),
        cursor_texts()
            .prop_map(|text| format!("?sort=due_date&after={}", URL_SAFE_NO_PAD.encode(text))),
        cursor_texts().prop_map(|text| {
            format!("?sort_by=priority&sort_order=desc&after={}", URL_SAFE_NO_PAD.encode(text))
        }),
        Just("?search=%25_%5C&q=%25_%5C".to_owned()),
        Just("?search=%00".to_owned()),
        Just("?q=%F0%9F%98%80%C3%A9".to_owned()),
        Just("?tag=,,&tag=%00&priority=,".to_owned()),
        Just("?tag=a%2Cb%2C%20C&priority=HIGH,low,".to_owned()),
        Just("?due_after=0000-01-01&due_before=9999-12-31T23:59:59.999999-12:00".to_owned()),
        Just("?due_before=-infinity&overdue=1".to_owned()),
        Just("?overdue=true&completed=true&status=pending".to_owned()),
        Just("?sort=due_date&order=desc&limit=1&offset=9223372036854775807".to_owned()),
        any::<i64>().prop_map(|v| format!("?since={}", URL_SAFE_NO_PAD.encode(format!("v1.{v}")))),
        Just("?since=%00&limit=0".to_owned()),
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

/// Conditional headers and `Idempotency-Key`s: tags in and out of range, weak, lists, stars,
/// garbage, bytes that are not ASCII (obs-text), keys good and bad.
fn headers() -> impl Strategy<Value = Vec<(&'static str, Vec<u8>)>> {
    let tag = prop_oneof![
        Just(b"\"-300000000000000000\"".to_vec()),
        Just(b"\"300000000000000000\"".to_vec()),
        Just(b"\"9223372036854775807\"".to_vec()),
        Just(b"\"1767952800123456\"".to_vec()),
        Just(b"W/\"1\", \"2\"".to_vec()),
        Just(b"*".to_vec()),
        Just(b"\"\xff\xfe\"".to_vec()),
        Just(b"\"\t\"".to_vec()),
        "[ -~]{0,40}".prop_map(String::into_bytes),
    ];
    let key = prop_oneof![
        Just(b"8e03978e-40d5-43e8-bc93-6894a57f9324".to_vec()),
        Just(b"\"quoted-key\"".to_vec()),
        Just(b"".to_vec()),
        Just(vec![b'k'; 300]),
        Just(b"\xc3\xa9".to_vec()),
        "[ -~]{0,40}".prop_map(String::into_bytes),
    ];
    let header = prop_oneof![
        tag.clone().prop_map(|value| ("If-Match", value)),
        tag.prop_map(|value| ("If-None-Match", value)),
        key.prop_map(|value| ("Idempotency-Key", value)),
    ];
    proptest::collection::vec(header, 0..3)
}

/// Which token to send: none, a good one, or a signed one whose subject holds a NUL or a
/// control character.
fn tokens() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(token("fuzzer"))),
        prop_oneof![Just("a\0b"), Just("tab\t"), Just("\u{7f}"), Just("\u{85}"), Just("new\nline")]
            .prop_map(|subject| {
                let now = integration_tests::now();
                Some(sign(&serde_json::json!({"sub": subject, "iat": now, "exp": now + 600})))
            }),
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
        Just(b"{\"title\": \"a\", \"description\": \"\\u0000\"}".to_vec()),
        Just(b"{\"title\": \"\\u0001\\u001f\\u007f\\u0085\"}".to_vec()),
        Just(b"{\"ti\\u0000tle\": \"x\"}".to_vec()),
        Just(b"null".to_vec()),
        Just(b"{\"title\": \"ok\"}".to_vec()),
        Just(b"{\"completed\": true}".to_vec()),
        Just(b"{\"title\": \"t\", \"tags\": [\"a\\u0000\", [\"b\"], null]}".to_vec()),
        Just(b"{\"title\": \"t\", \"tags\": null, \"priority\": null, \"due_date\": 0}".to_vec()),
        Just(
            b"{\"title\": \"t\", \"due_date\": \"0000-01-01\", \"priority\": \"\\u0130\"}".to_vec()
        ),
        Just(b"{\"title\": \"t\", \"due_date\": \"+275760-09-13T00:00:00Z\"}".to_vec()),
        Just(b"{\"title\": \"t\", \"due_date\": \"9999-12-31T23:59:59-12:00\"}".to_vec()),
        Just(
            format!(
                "{{\"title\": \"t\", \"tags\": [{}]}}",
                vec!["\"\\u0130\\u0131\""; 5000].join(",")
            )
            .into_bytes()
        ),
        Just(b"{\"priority\": \"URGENT\", \"tags\": [\" Ab \", \"ab\"]}".to_vec()),
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
    // Random methods and paths: most are no operation of the document.
    server.expect_undeclared_requests();
    let http = client_sdk::http_client_builder().build().unwrap();
    let http2 = client_sdk::http_client_builder().http2_prior_knowledge().build().unwrap();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        methods(),
        paths(),
        queries(),
        content_types(),
        bodies(),
        tokens(),
        headers(),
        proptest::bool::weighted(0.05),
    );
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<u16, usize>::new());
    let refused_http2 = AtomicUsize::new(0);
    runner
        .run(&strategy, |(method, path, query, content_type, body, bearer, extra, over_http2)| {
            let url = format!("{}{}{}", server.base_url, path, query);
            let client = if over_http2 { &http2 } else { &http };
            let mut request = client.request(method.clone(), &url).body(body);
            if let Some(value) = content_type.and_then(|v| header::HeaderValue::from_str(&v).ok()) {
                request = request.header(header::CONTENT_TYPE, value);
            }
            if let Some(bearer) = bearer {
                request = request.bearer_auth(bearer);
            }
            for (name, value) in extra {
                if let Ok(value) = header::HeaderValue::from_bytes(&value) {
                    request = request.header(name, value);
                }
            }
            let sent = runtime.block_on(request.send());
            if over_http2 {
                // HTTP/2 cleartext is not served: never an answer.
                prop_assert!(sent.is_err(), "{method} {url} was answered over HTTP/2");
                refused_http2.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            }
            let response = match sent {
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
    println!(
        "{backend:?}: {CASES} requests ({} over HTTP/2, refused), statuses {:?}",
        refused_http2.load(Ordering::SeqCst),
        statuses.lock().unwrap()
    );
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
