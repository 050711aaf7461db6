//! Live changes (`…/tasks/events`): server-sent events through the generated client and its
//! typed stream helper, on every database, then across instances on one PostgreSQL.

use std::time::{Duration, Instant};

use client_sdk::{
    live::{self, LiveError, LiveEvent},
    types::{Change, TaskCreate},
};
use futures::{Stream, StreamExt as _};
use integration_tests::{
    Backend, Database, Options, PgCluster, TestServer, on_every_database, postgres::with_database,
    problem, sign, token, user,
};
use reqwest::StatusCode;
use serde_json::json;
use server::{events::Source, store::Retention};

on_every_database!(
    a_change_arrives_at_once_and_never_on_another_users_stream,
    last_event_id_resumes_exactly_and_since_too,
    a_cursor_too_old_is_a_resync_that_ends_the_stream,
    both_path_styles_stream_and_a_bad_cursor_is_400,
    past_the_per_user_cap_is_429_until_one_closes,
    the_stream_ends_when_the_token_expires,
    a_shutdown_ends_open_streams_cleanly,
);

/// How long a change may take to reach a stream (the contract's bound).
const ARRIVAL: Duration = Duration::from_secs(1);

type Events = std::pin::Pin<Box<dyn Stream<Item = Result<LiveEvent, LiveError>> + Send>>;

/// `user`'s stream, after `last_event_id` if given, as a frontend follows it.
async fn follow(server: &TestServer, token: &str, last_event_id: Option<&str>) -> Events {
    let client = client_sdk::streaming(&server.base_url, token).unwrap();
    let mut request = client.follow_changes();
    if let Some(id) = last_event_id {
        request = request.last_event_id(id);
    }
    let response = request.send().await.expect("open the stream");
    Box::pin(live::events(response.into_inner()))
}

/// The problem of a refused stream.
fn refused(
    result: Result<
        client_sdk::ResponseValue<client_sdk::ByteStream>,
        client_sdk::Error<client_sdk::types::Problem>,
    >,
) -> client_sdk::types::Problem {
    problem(result.map(|_| "a stream"))
}

/// The next event, within `within`.
async fn next(events: &mut Events, within: Duration) -> LiveEvent {
    match tokio::time::timeout(within, events.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(other) => panic!("the stream broke off: {other:?}"),
        Err(_) => panic!("no event within {within:?}"),
    }
}

/// The next event must be a change: its cursor and the change.
async fn next_change(events: &mut Events) -> (String, Change) {
    match next(events, ARRIVAL).await {
        LiveEvent::Change { cursor, change } => (cursor, change),
        LiveEvent::Resync => panic!("a resync where a change was due"),
    }
}

fn changed_id(change: &Change) -> i64 {
    match change {
        Change::Upsert { task } => task.id,
        Change::Delete { id } => *id,
    }
}

/// Nothing may come for `quiet`.
async fn silent(events: &mut Events, quiet: Duration) {
    if let Ok(event) = tokio::time::timeout(quiet, events.next()).await {
        panic!("expected silence, got {event:?}");
    }
}

/// The stream must end (cleanly, or cut) within `within`.
async fn ends(events: &mut Events, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline.into(), events.next()).await {
            Ok(None) | Ok(Some(Err(_))) => return,
            Ok(Some(Ok(_))) => {}
            Err(_) => panic!("the stream did not end within {within:?}"),
        }
    }
}

async fn create(client: &client_sdk::Client, title: &str) -> i64 {
    let body = TaskCreate::builder().title(title);
    client.create_task().body(body).send().await.unwrap().into_inner().id
}

async fn a_change_arrives_at_once_and_never_on_another_users_stream(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, bob) = (user("alice"), user("bob"));
    let writer = server.client(&alice);
    let before = create(&writer, "before the stream opened").await;
    let mut theirs = follow(&server, &token(&alice), None).await;
    let mut others = follow(&server, &token(&bob), None).await;

    let started = Instant::now();
    let id = create(&writer, "live").await;
    let (_, change) = next_change(&mut theirs).await;
    assert!(started.elapsed() < ARRIVAL);
    assert!(matches!(&change, Change::Upsert { task } if task.id == id && task.title == "live"));

    writer.toggle_task().id(id).send().await.unwrap();
    let (_, change) = next_change(&mut theirs).await;
    assert!(matches!(&change, Change::Upsert { task } if task.id == id && task.completed));
    writer.delete_task().id(before).send().await.unwrap();
    let (_, change) = next_change(&mut theirs).await;
    assert!(matches!(change, Change::Delete { id } if id == before));

    silent(&mut others, Duration::from_millis(1500)).await;
    silent(&mut theirs, Duration::from_millis(300)).await;
}

async fn last_event_id_resumes_exactly_and_since_too(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = user("resume");
    let writer = server.client(&alice);
    let mut events = follow(&server, &token(&alice), None).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(create(&writer, &format!("task {n}")).await);
    }
    let (_, first) = next_change(&mut events).await;
    let (seen, second) = next_change(&mut events).await;
    assert_eq!([changed_id(&first), changed_id(&second)], ids[..2]);
    drop(events);
    // Offline meanwhile: one more create, and an update of a task already seen.
    ids.push(create(&writer, "task 3").await);
    let body = client_sdk::types::TaskUpdate::builder().title(Some("renamed".parse().unwrap()));
    writer.update_task().id(ids[0]).body(body).send().await.unwrap();

    let mut resumed = follow(&server, &token(&alice), Some(&seen)).await;
    let mut missed = Vec::new();
    for _ in 0..3 {
        missed.push(changed_id(&next_change(&mut resumed).await.1));
    }
    assert_eq!(missed, [ids[2], ids[3], ids[0]], "what came after the cursor, in commit order");
    silent(&mut resumed, Duration::from_millis(500)).await;
    // And live again after the backlog.
    let live = create(&writer, "after the backlog").await;
    assert_eq!(changed_id(&next_change(&mut resumed).await.1), live);

    // `since` in the query does the same, and `Last-Event-ID` wins over it.
    let client = client_sdk::streaming(&server.base_url, &token(&alice)).unwrap();
    let response = client.follow_changes().since(&seen).send().await.unwrap();
    let mut by_query: Events = Box::pin(live::events(response.into_inner()));
    assert_eq!(changed_id(&next_change(&mut by_query).await.1), ids[2]);
    let (latest, _) = next_change(&mut by_query).await;
    let request = client.follow_changes().since(&seen).last_event_id(latest.as_str());
    let mut both: Events = Box::pin(live::events(request.send().await.unwrap().into_inner()));
    assert_eq!(changed_id(&next_change(&mut both).await.1), ids[0]);
}

async fn a_cursor_too_old_is_a_resync_that_ends_the_stream(backend: Backend) {
    let mut options = Options::default();
    options.connect.retention =
        Retention { tombstones: Duration::from_secs(1), idempotency_keys: Duration::from_secs(60) };
    let server = TestServer::start_with(backend, options).await;
    let alice = user("resync");
    let writer = server.client(&alice);
    let id = create(&writer, "short-lived").await;
    let mut events = follow(&server, &token(&alice), None).await;
    writer.delete_task().id(id).send().await.unwrap();
    let (_, deletion) = next_change(&mut events).await;
    assert!(matches!(deletion, Change::Delete { .. }));
    drop(events);
    let created = create(&writer, "again").await;
    let deleted_cursor = {
        let all = writer.list_changes().send().await.unwrap().into_inner();
        all.cursor
    };
    writer.delete_task().id(created).send().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while writer.list_changes().since(&deleted_cursor).send().await.is_ok() {
        assert!(Instant::now() < deadline, "the tombstone was never purged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut events = follow(&server, &token(&alice), Some(&deleted_cursor)).await;
    assert!(matches!(next(&mut events, ARRIVAL).await, LiveEvent::Resync));
    ends(&mut events, Duration::from_secs(1)).await;
}

async fn both_path_styles_stream_and_a_bad_cursor_is_400(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = user("styles");
    let writer = server.client(&alice);
    let client = client_sdk::streaming(&server.base_url, &token(&alice)).unwrap();
    let response = client.follow_user_changes().user_id(&alice).send().await.unwrap();
    let mut events: Events = Box::pin(live::events(response.into_inner()));
    let id = create(&writer, "by path").await;
    assert_eq!(changed_id(&next_change(&mut events).await.1), id);

    let someone_else = refused(client.follow_user_changes().user_id(user("x")).send().await);
    assert_eq!(someone_else.status, 403);
    let bad = refused(client.follow_changes().last_event_id("not a cursor").send().await);
    assert_eq!(bad.status, 400);
    let bad = refused(client.follow_changes().since("djEuLTE").send().await);
    assert_eq!(bad.status, 400);
    let anonymous = refused(server.anonymous().follow_changes().send().await);
    assert_eq!(anonymous.status, 401);
}

async fn past_the_per_user_cap_is_429_until_one_closes(backend: Backend) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let options = Options { event_streams_per_user: Some(2), ..Options::default() };
    let server = TestServer::start_with(backend, options).await;
    let alice = user("cap");
    // The first one as a browser holds it: a connection that it closes when the page goes.
    let address = server.base_url.trim_start_matches("http://");
    let mut first = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "GET /api/tasks/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        token(&alice)
    );
    first.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    first.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let _second = follow(&server, &token(&alice), None).await;
    let client = client_sdk::streaming(&server.base_url, &token(&alice)).unwrap();
    let refused = refused(client.follow_changes().send().await);
    assert_eq!(refused.status, 429);
    // Someone else is not counted against alice.
    let _other = follow(&server, &token(&user("cap-other")), None).await;
    drop(first);
    // The closed stream's place comes back once the server notices the connection is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.follow_changes().send().await {
            Ok(_) => break,
            Err(err) if err.status() == Some(StatusCode::TOO_MANY_REQUESTS) => {
                assert!(Instant::now() < deadline, "the place never came back");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("{err:?}"),
        }
    }
}

async fn the_stream_ends_when_the_token_expires(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = user("expiry");
    let now = jsonwebtoken::get_current_timestamp();
    let short = sign(&json!({ "sub": alice, "iat": now, "exp": now + 2 }));
    let mut events = follow(&server, &short, None).await;
    let started = Instant::now();
    ends(&mut events, Duration::from_secs(5)).await;
    assert!(started.elapsed() >= Duration::from_millis(500), "ended before the token expired");
}

async fn a_shutdown_ends_open_streams_cleanly(backend: Backend) {
    let mut server = TestServer::start(backend).await;
    let alice = user("shutdown");
    let mut events = follow(&server, &token(&alice), None).await;
    server.begin_shutdown();
    match tokio::time::timeout(Duration::from_secs(3), events.next()).await {
        Ok(None) => {}
        other => panic!("expected the stream to end cleanly at shutdown, got {other:?}"),
    }
}

/// Two instances on one PostgreSQL: a stream on B hears of a write through A within 1 s,
/// however B learns of it.
async fn across_instances(backend: Backend, listen_direct: bool) {
    let database = Database::fresh(backend).await;
    let mut options = Options { connect: backend.connect_options(), ..Options::default() };
    let a = TestServer::start_on(&database.url, options.clone()).await;
    if listen_direct {
        options.event_source = Some(Source::Listen(database.direct_url()));
    }
    let b = TestServer::start_on(&database.url, options).await;
    let alice = user("instances");
    let mut on_b = follow(&b, &token(&alice), None).await;
    let writer = a.client(&alice);
    for n in 0..3 {
        let started = Instant::now();
        let id = create(&writer, &format!("through A, {n}")).await;
        assert_eq!(changed_id(&next_change(&mut on_b).await.1), id);
        assert!(started.elapsed() < ARRIVAL + Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_instances_by_listen() {
    across_instances(Backend::Postgres, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_instances_behind_pgbouncer_with_a_direct_listen_url() {
    across_instances(Backend::PgBouncer, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_instances_behind_pgbouncer_by_polling() {
    across_instances(Backend::PgBouncer, false).await;
}

/// PostgreSQL restarts under two instances with an open stream: the listener reconnects, and
/// what was written meanwhile (while no notification could be heard) still arrives, from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_loses_nothing() {
    let cluster = tokio::task::block_in_place(PgCluster::start);
    let url = with_database(&cluster.admin_url(), "postgres");
    let a = TestServer::start_on(&url, Options::default()).await;
    let b = TestServer::start_on(&url, Options::default()).await;
    let alice = user("restart");
    let writer = a.client(&alice);
    let mut on_b = follow(&b, &token(&alice), None).await;
    let first = create(&writer, "before").await;
    assert_eq!(changed_id(&next_change(&mut on_b).await.1), first);

    tokio::task::block_in_place(|| cluster.stop());
    tokio::task::block_in_place(|| cluster.resume());
    // Written as soon as A can write again: B's listener may not be back yet.
    let deadline = Instant::now() + Duration::from_secs(15);
    let during = loop {
        let body = TaskCreate::builder().title("while B reconnects");
        match writer.create_task().body(body).send().await {
            Ok(task) => break task.into_inner().id,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("A never wrote again: {err:?}"),
        }
    };
    let after = create(&writer, "after").await;
    let mut arrived = Vec::new();
    while arrived.len() < 2 {
        match next(&mut on_b, Duration::from_secs(10)).await {
            LiveEvent::Change { change, .. } => arrived.push(changed_id(&change)),
            LiveEvent::Resync => panic!("a resync after a restart"),
        }
    }
    assert_eq!(arrived, [during, after]);
}

/// A client that opens a stream and never reads it: once the buffers between (the kernel's
/// and the server's, a few MB on loopback) are full, the connection is cut after the write
/// timeout, and its place under the cap comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_is_cut_off() {
    use tokio::io::AsyncWriteExt as _;
    let mut options = Options { event_streams_per_user: Some(1), ..Options::default() };
    options.connections.write_timeout = Duration::from_secs(1);
    let server = TestServer::start_with(Backend::Sqlite, options).await;
    let alice = user("stalled");
    // A backlog of ~7 MB of changes (5,000 tasks of 1,000-character descriptions), written
    // in one statement so that the test stays quick; the log's trigger numbers them.
    let database = sqlx::SqlitePool::connect(&server.database_url).await.unwrap();
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) \
         INSERT INTO tasks (user_id, title, description, created_at, updated_at) \
         SELECT $1, 'bulk ' || i, replace(hex(zeroblob(500)), '0', 'x'), i, i FROM n",
    )
    .bind(&alice)
    .execute(&database)
    .await
    .unwrap();
    database.close().await;

    let address = server.base_url.trim_start_matches("http://").to_owned();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(address.parse().unwrap()).await.unwrap();
    // From the very start of the log: the whole backlog is due at once.
    let request = format!(
        "GET /api/tasks/events?since=djEuMA HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        token(&alice)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Cut by now: reading drains what was buffered, then finds the end.
    let (reader, _writer) = stream.into_split();
    let closed = integration_tests::time_until_closed(reader, Instant::now());
    let drained = tokio::time::timeout(Duration::from_secs(10), closed).await;
    assert!(drained.is_ok(), "the stalled stream was never cut");
    // And the cap's one place is free again.
    let _ = follow(&server, &token(&alice), None).await;
}

/// An idle stream still says something every 15 s (a comment line), so that proxies that close
/// silent connections leave it open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_gets_a_comment_line_within_15_seconds() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = TestServer::start(Backend::Sqlite).await;
    let address = server.base_url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "GET /api/tasks/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        token(&user("quiet"))
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    while !received.windows(4).any(|w| w == b"\n:\n\n" || w == b"\r\n:\n") {
        let mut buffer = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(16), stream.read(&mut buffer)).await;
        let read = read.expect("nothing within 16 s").unwrap();
        assert!(read > 0, "the stream closed");
        received.extend_from_slice(&buffer[..read]);
    }
    assert!(started.elapsed() <= Duration::from_millis(15_500), "{:?}", started.elapsed());
}
