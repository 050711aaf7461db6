//! Bounded resources per client: a client that sends a byte at a time (headers or body) is cut
//! off within the request read timeout; a connection that says nothing is closed, and so is one
//! idle after its answers, but not one in use; 2,000 silent connections from eight addresses and
//! a slow client leave normal requests answered; past the connection cap, new connections wait
//! until one closes. (`hostile.rs` has the rest.)

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use integration_tests::{Backend, Options, TestServer, time_until_closed, token};
use reqwest::{Method, StatusCode};
use server::connections::ConnectionLimits;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Scheduling slack on a busy 2-core machine; the point is "cut off", not "how fast".
const SLACK: Duration = Duration::from_millis(1500);

fn address(server: &TestServer) -> SocketAddr {
    server.base_url.trim_start_matches("http://").parse().unwrap()
}

async fn server(limits: ConnectionLimits) -> TestServer {
    TestServer::start_with(Backend::Sqlite, Options { connections: limits, ..Options::default() })
        .await
}

/// Sends `head` and then `body_bytes` a byte every 100 ms; returns how long until the server
/// closed the connection (or `None` if it was still open after 10 s).
async fn trickle(address: SocketAddr, head: &str, body_bytes: usize) -> Option<Duration> {
    let stream = TcpStream::connect(address).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let closed = time_until_closed(reader, started);
    let bytes: Vec<u8> = head.bytes().chain(std::iter::repeat_n(b'x', body_bytes)).collect();
    for byte in bytes {
        if closed.is_finished() || writer.write_all(&[byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::timeout(Duration::from_secs(10), closed).await.ok().map(|d| d.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_idle_ones_closed() {
    let limits = ConnectionLimits {
        request_read_timeout: READ_TIMEOUT,
        idle_timeout: Duration::from_secs(2),
        ..ConnectionLimits::default()
    };
    let server = server(limits).await;
    let address = address(&server);

    // Slow headers: a byte every 100 ms, never finishing.
    let head = "GET /api/tasks HTTP/1.1\r\nHost: localhost\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let closed = trickle(address, head, 0).await.expect("slow headers were never cut off");
    assert!(closed < READ_TIMEOUT + SLACK, "slow headers cut off after {closed:?}");

    // Slow body: complete headers, then a byte every 100 ms of a 1,000-byte body.
    let auth = token("slow");
    let head = format!(
        "POST /api/tasks HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    let closed = trickle(address, &head, 1000).await.expect("a slow body was never cut off");
    assert!(closed < READ_TIMEOUT + SLACK, "slow body cut off after {closed:?}");
    assert!(server.client("slow").list_tasks().send().await.unwrap().is_empty(), "nothing stored");

    // A connection that never says anything is closed.
    let mut silent = TcpStream::connect(address).await.unwrap();
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buffer)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "an idle connection stayed open");
}

/// Sends one `GET /health/live` on `stream` and reads until its head is in.
async fn probe(stream: &mut TcpStream) {
    stream.write_all(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !answer.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await.unwrap();
        assert!(read > 0, "closed before answering");
        answer.extend_from_slice(&buffer[..read]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_closed_once_idle_and_kept_while_in_use() {
    const IDLE: Duration = Duration::from_secs(2);
    // Only the idle clock can close these: the read timeout is far away.
    let limits = ConnectionLimits {
        idle_timeout: IDLE,
        request_read_timeout: Duration::from_secs(30),
        ..ConnectionLimits::default()
    };
    let server = server(limits).await;
    let address = address(&server);

    // In use: a request every half of the idle time, for twice the idle time.
    let mut busy = TcpStream::connect(address).await.unwrap();
    for _ in 0..4 {
        probe(&mut busy).await;
        tokio::time::sleep(IDLE / 2).await;
    }
    probe(&mut busy).await;

    // Idle after an answer: closed after the idle time, not before.
    let mut idle = TcpStream::connect(address).await.unwrap();
    probe(&mut idle).await;
    let started = Instant::now();
    let (reader, _writer) = idle.into_split();
    let closed = tokio::time::timeout(IDLE * 5, time_until_closed(reader, started))
        .await
        .expect("an idle connection stayed open")
        .unwrap();
    assert!(closed >= IDLE - Duration::from_millis(100), "closed after {closed:?} only");
    assert!(closed < IDLE + SLACK, "an idle connection closed after {closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_and_a_slow_client_leave_requests_answered() {
    let limits =
        ConnectionLimits { request_read_timeout: READ_TIMEOUT, ..ConnectionLimits::default() };
    let server = server(limits).await;
    let address = address(&server);
    let mut idle = Vec::new();
    // 250 from each of eight loopback addresses: under the per-address cap of 256.
    for i in 0..2000usize {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 2 + (i % 8) as u8], 0))).unwrap();
        idle.push(socket.connect(address).await.unwrap());
    }
    let slow = tokio::spawn(trickle(
        address,
        "POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n",
        500,
    ));

    let raw = server.raw();
    let alice = token("alice");
    let mut latencies = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        let response =
            raw.request(Method::GET, "/api/tasks").bearer_auth(&alice).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        latencies.push(started.elapsed());
    }
    latencies.sort();
    // Reported, not asserted: speed is the benchmark's business.
    println!(
        "with 2,000 idle connections and a slow client: 200 requests, p50 {:?}, p99 {:?}",
        latencies[100], latencies[197]
    );
    assert!(slow.await.unwrap().is_some(), "the slow client was never cut off");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_new_connections_wait() {
    let limits = ConnectionLimits { max_connections: 20, ..ConnectionLimits::default() };
    let server = server(limits).await;
    let address = address(&server);
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(address).await.unwrap());
    }
    // Give the server a moment to accept all twenty (nothing to poll for: they say nothing).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let http = client_sdk::http_client_builder().timeout(Duration::from_secs(1)).build().unwrap();
    let url = server.url("/health");
    let waited = http.get(&url).send().await;
    assert!(waited.is_err_and(|err| err.is_timeout()), "a 21st connection was served");
    idle.truncate(10);
    let served = http.get(&url).send().await.expect("served once connections closed");
    assert_eq!(served.status(), StatusCode::OK);
}
