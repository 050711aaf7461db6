//! Hostile clients, one test per finding of the review (issue 15): HTTP/2 cleartext, request
//! deadlines that writes cannot extend, silent sockets, one address hoarding connections, values
//! PostgreSQL cannot hold, a task cap, health probes that cost one query a second.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use integration_tests::{
    Backend, Options, TestServer, on_every_database, sign, time_until_closed, token, user,
};
use reqwest::{Method, StatusCode, header};
use serde_json::json;
use server::connections::ConnectionLimits;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Scheduling slack on a busy 2-core machine; the point is "cut off", not "how fast".
const SLACK: Duration = Duration::from_millis(1500);

on_every_database!(
    values_postgres_cannot_hold_are_client_errors,
    one_user_holds_at_most_the_cap,
    a_long_list_without_limit_streams_whole_and_in_order,
);

fn address(server: &TestServer) -> SocketAddr {
    server.base_url.trim_start_matches("http://").parse().unwrap()
}

async fn with_limits(limits: ConnectionLimits) -> TestServer {
    TestServer::start_with(Backend::Sqlite, Options { connections: limits, ..Options::default() })
        .await
}

/// Reads until the server closes the connection or `limit` passes; returns what was read and
/// whether it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (seen, true),
            Ok(Ok(n)) => seen.extend_from_slice(&buffer[..n]),
            Err(_) => return (seen, false),
        }
    }
}

/// HTTP/2 with prior knowledge (h2c) is not served: the connection is closed without a single
/// HTTP/2 frame, so one connection can never carry hundreds of unfinished requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cleartext_is_not_served() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut stream = TcpStream::connect(address(&server)).await.unwrap();
    // The client preface, then an empty SETTINGS frame.
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    // An HTTP/2 server's first frame is its SETTINGS: 3 bytes of length, then type 4.
    let settings = answer.len() >= 4 && answer[3] == 4;
    assert!(!settings, "the server spoke HTTP/2: {answer:?}");
    assert!(closed, "the connection stayed open");
    // And a real HTTP/2 client gets nowhere.
    let h2 = client_sdk::http_client_builder().http2_prior_knowledge().build().unwrap();
    assert!(h2.get(server.url("/health/live")).send().await.is_err());
}

/// A request body that trickles in after `Expect: 100-continue` is cut off at the read deadline
/// of the request: the interim "100 Continue" the server writes does not restart it (here the
/// client waits 2 s before its first body byte; the request's deadline is 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_do_not_extend_a_requests_read_deadline() {
    let server = with_limits(ConnectionLimits {
        request_read_timeout: READ_TIMEOUT,
        ..ConnectionLimits::default()
    })
    .await;
    let mut stream = TcpStream::connect(address(&server)).await.unwrap();
    let started = Instant::now();
    let head = format!(
        "POST /api/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n",
        token("trickle")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let closed = time_until_closed(reader, started);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..100 {
        if closed.is_finished() || writer.write_all(b" ").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), closed).await;
    let closed = closed.expect("a body trickling after 100-continue was never cut off").unwrap();
    assert!(closed < READ_TIMEOUT + SLACK, "cut off only after {closed:?}");
}

/// Connections that never send a byte are closed within the read timeout of their accept, so
/// twenty of them cannot lock everyone out of a server capped at twenty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_are_closed_within_the_read_timeout() {
    let server = with_limits(ConnectionLimits {
        max_connections: 20,
        request_read_timeout: READ_TIMEOUT,
        ..ConnectionLimits::default()
    })
    .await;
    let address = address(&server);
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(address).await.unwrap());
    }
    let started = Instant::now();
    let http = client_sdk::http_client_builder().timeout(Duration::from_secs(10)).build().unwrap();
    let live = http.get(server.url("/health/live")).send().await.expect("served");
    assert_eq!(live.status(), StatusCode::OK);
    assert!(started.elapsed() < READ_TIMEOUT + SLACK, "served only after {:?}", started.elapsed());
    let (_, closed) = read_until_closed(&mut silent[0], SLACK).await;
    assert!(closed, "a silent connection is still open");
}

/// Connects from `source` (any address of 127.0.0.0/8 works on Linux's loopback).
async fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// One client address holds at most `MAX_CONNECTIONS_PER_ADDRESS` connections; more are closed
/// at once, while another address is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let server = with_limits(ConnectionLimits {
        max_connections_per_address: 5,
        ..ConnectionLimits::default()
    })
    .await;
    let address = address(&server);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from([127, 0, 0, 1], address).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sixth = connect_from([127, 0, 0, 1], address).await;
    sixth.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n").await.ok();
    let (answer, closed) = read_until_closed(&mut sixth, Duration::from_secs(3)).await;
    assert!(closed && answer.is_empty(), "a sixth connection was served: {answer:?}");
    let mut other = connect_from([127, 0, 0, 2], address).await;
    other
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut other, Duration::from_secs(3)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "another address was refused");
    // A connection given back makes room again.
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect_from([127, 0, 0, 1], address).await;
    again
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut again, Duration::from_secs(3)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "no room after a connection closed");
}

/// Every value that reaches the database from a client is one it can hold: an `If-Match` naming
/// a time outside its range does not match, a cursor holding one (or a NUL) is a 400, a token
/// subject with a NUL or a control character a 401. Never a 500.
async fn values_postgres_cannot_hold_are_client_errors(backend: Backend) {
    let server = TestServer::start(backend).await;
    let name = user("range");
    let client = server.client(&name);
    let task = client
        .create_task()
        .body(client_sdk::types::TaskCreate::builder().title("t"))
        .send()
        .await
        .unwrap();
    let raw = server.raw();
    let bearer = token(&name);
    let item = format!("/api/tasks/{}", task.id);
    for tag in ["\"-300000000000000000\"", "\"300000000000000000\"", "\"9223372036854775807\""] {
        for (method, path) in [
            (Method::PUT, item.clone()),
            (Method::PATCH, format!("{item}/complete")),
            (Method::DELETE, item.clone()),
        ] {
            let response = raw
                .request(method.clone(), &path)
                .bearer_auth(&bearer)
                .header(header::IF_MATCH, tag)
                .json(&json!({"title": "x"}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED, "{method} {tag}");
        }
        let response = raw
            .request(Method::GET, &item)
            .bearer_auth(&bearer)
            .header(header::IF_NONE_MATCH, tag)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "If-None-Match {tag}");
    }
    use base64::Engine as _;
    let cursor = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    for (query, why) in [
        (format!("after={}", cursor("ca.1.-300000000000000000")), "a time before year 1"),
        (format!("after={}", cursor("ca.1.300000000000000000")), "a time after year 9999"),
        (format!("sort=title&after={}", cursor("ta.1.a\0b")), "a NUL in a title"),
        (format!("sort=title&order=desc&after={}", cursor("td.1.\0")), "a NUL, descending"),
    ] {
        let response =
            raw.request(Method::GET, &format!("/api/tasks?{query}")).bearer_auth(&bearer).send();
        assert_eq!(response.await.unwrap().status(), StatusCode::BAD_REQUEST, "{why}");
    }
    let now = integration_tests::now();
    for subject in ["a\0b", "tab\there", "\u{7f}", "line\nbreak", "\u{85}next"] {
        let forged = sign(&json!({"sub": subject, "iat": now, "exp": now + 60}));
        let response = raw.request(Method::GET, "/api/tasks").bearer_auth(forged).send();
        assert_eq!(response.await.unwrap().status(), StatusCode::UNAUTHORIZED, "{subject:?}");
    }
}

/// `MAX_TASKS_PER_USER`: one more create is a 409 and stores nothing; a deletion makes room.
async fn one_user_holds_at_most_the_cap(backend: Backend) {
    let mut options = Options::default();
    options.connect.max_tasks_per_user = 3;
    let server = TestServer::start_with(backend, options).await;
    let client = server.client(&user("cap"));
    let create = |title: &str| {
        client.create_task().body(client_sdk::types::TaskCreate::builder().title(title)).send()
    };
    let mut ids = Vec::new();
    for title in ["1", "2", "3"] {
        ids.push(create(title).await.unwrap().id);
    }
    let refused = integration_tests::problem(create("4").await);
    assert_eq!((refused.status, refused.detail.as_str()), (409, "task limit reached"));
    assert_eq!(client.list_tasks().send().await.unwrap().len(), 3);
    // Concurrent creates at the edge: still at most the cap.
    client.delete_task().id(ids[0]).send().await.unwrap();
    let racing = (0..6).map(|i| {
        let client = client.clone();
        async move {
            client
                .create_task()
                .body(client_sdk::types::TaskCreate::builder().title(format!("r{i}")))
                .send()
                .await
        }
    });
    let created = futures::future::join_all(racing).await.into_iter().filter(Result::is_ok).count();
    assert_eq!(created, 1, "one free place, one create");
    assert_eq!(client.list_tasks().send().await.unwrap().len(), 3);
    // Another user is not affected.
    let other = server.client(&user("uncapped"));
    other
        .create_task()
        .body(client_sdk::types::TaskCreate::builder().title("t"))
        .send()
        .await
        .unwrap();
}

/// A list without `limit` of more than 500 tasks is streamed in chunks: the same array, in the
/// same order, with the same total, as a walk of pages would give.
async fn a_long_list_without_limit_streams_whole_and_in_order(backend: Backend) {
    let server = TestServer::start(backend).await;
    let name = user("long");
    // Written through the store (a second pool on the same database): 1,234 tasks, every third
    // completed, titles out of creation order.
    let store =
        server::store::connect(&server.database_url, &backend.connect_options()).await.unwrap();
    for i in 0..1234 {
        let task = server::store::NewTask {
            title: format!("t{:04}", (i * 7919) % 1234),
            completed: i % 3 == 0,
            ..server::store::NewTask::default()
        };
        store.create(&name, &task).await.unwrap();
    }
    let bearer = token(&name);
    for query in ["", "?status=completed", "?sort=title&order=desc", "?status=pending&sort=updated"]
    {
        let response = server
            .raw()
            .request(Method::GET, &format!("/api/tasks{query}"))
            .bearer_auth(&bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let total: usize = response.headers()["x-total-count"].to_str().unwrap().parse().unwrap();
        let streamed: Vec<serde_json::Value> = response.json().await.unwrap();
        // The same list, page by page.
        let mut paged = Vec::new();
        let mut path =
            format!("/api/tasks{query}{}limit=1000", if query.is_empty() { "?" } else { "&" });
        loop {
            let page = server.raw().request(Method::GET, &path).bearer_auth(&bearer).send().await;
            let page = page.unwrap();
            let link = page.headers().get(header::LINK).map(|l| l.to_str().unwrap().to_owned());
            paged.extend(page.json::<Vec<serde_json::Value>>().await.unwrap());
            let Some(link) = link else { break };
            path = link.trim_start_matches('<').split('>').next().unwrap().to_owned();
        }
        assert_eq!(streamed.len(), total, "{query}");
        assert!(query.contains("status=completed") || total > 500, "{query}: {total} tasks");
        assert_eq!(streamed, paged, "{query}");
    }
}
