//! Many devices, unreliable networks: the change feed (`…/tasks/changes`), tombstones, and
//! `Idempotency-Key`, through the generated client and raw HTTP, on every database.

use std::{collections::BTreeMap, time::Duration};

use client_sdk::types::{Change, ChangeBatch, IdempotencyKey, Task, TaskCreate, TaskUpdate};
use integration_tests::{Backend, Options, TestServer, on_every_database, problem, user};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use server::store::Retention;

on_every_database!(
    a_full_sync_is_every_live_task_then_a_cursor,
    an_incremental_sync_has_each_change_once_in_commit_order,
    a_long_feed_comes_in_pages_while_more_is_true,
    the_feed_is_the_callers_own_in_both_path_styles,
    bad_cursors_are_400_and_limits_out_of_range_422,
    a_cursor_past_the_purged_deletions_is_410,
    deleted_tasks_leave_every_read_but_the_feed_and_ids_are_never_reused,
    a_retried_create_with_a_key_creates_once_and_replays_exactly,
    a_retried_toggle_with_a_key_flips_once,
    keys_belong_to_their_user,
    a_key_reused_for_another_request_is_422_and_runs_nothing,
    malformed_keys_are_400_and_run_nothing,
    kept_outcomes_are_404_412_422_and_not_400,
    twenty_identical_requests_with_one_key_run_once,
    an_expired_key_runs_again,
);

fn key(text: &str) -> IdempotencyKey {
    text.parse().expect("a valid key")
}

fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn create(client: &client_sdk::Client, title: &str) -> Task {
    client.create_task().body(TaskCreate::builder().title(title)).send().await.unwrap().into_inner()
}

async fn changes(client: &client_sdk::Client, since: Option<&str>) -> ChangeBatch {
    let mut request = client.list_changes();
    if let Some(since) = since {
        request = request.since(since);
    }
    request.send().await.expect("read the feed").into_inner()
}

/// A local copy kept from the feed, as a frontend would keep it.
#[derive(Debug, Default)]
struct Replica {
    tasks: BTreeMap<i64, Task>,
    cursor: Option<String>,
}

impl Replica {
    fn apply(&mut self, batch: &ChangeBatch) {
        for change in &batch.changes {
            match change {
                Change::Upsert { task } => {
                    self.tasks.insert(task.id, task.clone());
                }
                Change::Delete { id } => {
                    self.tasks.remove(id);
                }
            }
        }
        self.cursor = Some(batch.cursor.clone());
    }

    /// Reads until nothing more is waiting.
    async fn sync(&mut self, client: &client_sdk::Client) {
        loop {
            let batch = changes(client, self.cursor.as_deref()).await;
            self.apply(&batch);
            if !batch.more {
                return;
            }
        }
    }
}

fn as_json(tasks: &[Task]) -> Value {
    serde_json::to_value(tasks).unwrap()
}

async fn a_full_sync_is_every_live_task_then_a_cursor(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client(&user("full"));
    let empty = changes(&client, None).await;
    assert!(empty.changes.is_empty() && !empty.more);
    let kept = create(&client, "kept").await;
    let gone = create(&client, "gone").await;
    client.delete_task().id(gone.id).send().await.unwrap();
    let batch = changes(&client, None).await;
    // No tombstone in a full sync: a fresh copy never had the deleted task.
    assert_eq!(batch.changes.len(), 1, "{batch:?}");
    let Change::Upsert { task } = &batch.changes[0] else { panic!("{batch:?}") };
    assert_eq!(as_json(std::slice::from_ref(task)), as_json(&[kept]));
    assert!(!batch.more);
    // Nothing happened since: the cursor holds, and the answer is empty.
    let again = changes(&client, Some(&batch.cursor)).await;
    assert!(again.changes.is_empty(), "{again:?}");
    assert_eq!(again.cursor, batch.cursor);
}

async fn an_incremental_sync_has_each_change_once_in_commit_order(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client(&user("incr"));
    let first = create(&client, "a").await;
    let start = changes(&client, None).await.cursor;
    let second = create(&client, "b").await;
    client.toggle_task().id(first.id).send().await.unwrap();
    let renamed = client
        .update_task()
        .id(second.id)
        .body(TaskUpdate::builder().title(Some("b2".parse().unwrap())))
        .send()
        .await
        .unwrap()
        .into_inner();
    client.delete_task().id(first.id).send().await.unwrap();
    let batch = changes(&client, Some(&start)).await;
    // `second` was created, then renamed: once, in its latest state, where its last change
    // was committed; `first`'s toggle is superseded by its deletion.
    let ops: Vec<(&str, i64)> = batch
        .changes
        .iter()
        .map(|change| match change {
            Change::Upsert { task } => ("upsert", task.id),
            Change::Delete { id } => ("delete", *id),
        })
        .collect();
    assert_eq!(ops, [("upsert", second.id), ("delete", first.id)], "{batch:?}");
    let Change::Upsert { task } = &batch.changes[0] else { unreachable!() };
    assert_eq!(as_json(std::slice::from_ref(task)), as_json(&[renamed]));
    // A copy made before the changes, brought forward, equals the list.
    let mut replica = Replica::default();
    replica.tasks.insert(first.id, first.clone());
    replica.cursor = Some(start);
    replica.sync(&client).await;
    let listed = client.list_tasks().send().await.unwrap().into_inner();
    assert_eq!(as_json(&replica.tasks.into_values().collect::<Vec<_>>()), as_json(&listed));
}

async fn a_long_feed_comes_in_pages_while_more_is_true(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client(&user("pages"));
    for i in 0..7 {
        create(&client, &format!("t{i}")).await;
    }
    let limit = std::num::NonZeroU64::new(3).unwrap();
    let mut cursor: Option<String> = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let mut request = client.list_changes().limit(limit);
        if let Some(cursor) = &cursor {
            request = request.since(cursor);
        }
        let batch = request.send().await.unwrap().into_inner();
        pages += 1;
        assert!(batch.changes.len() <= 3);
        for change in &batch.changes {
            let Change::Upsert { task } = change else { panic!("{change:?}") };
            seen.push(task.title.clone());
        }
        cursor = Some(batch.cursor.clone());
        if !batch.more {
            break;
        }
        // A change between pages comes later, not lost.
        if pages == 1 {
            create(&client, "late").await;
        }
    }
    assert_eq!(seen, ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "late"]);
    assert_eq!(pages, 3);
}

async fn the_feed_is_the_callers_own_in_both_path_styles(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, bob) = (user("alice"), user("bob"));
    let (alice_client, bob_client) = (server.client(&alice), server.client(&bob));
    let mine = create(&alice_client, "alice's").await;
    let theirs = create(&bob_client, "bob's").await;
    bob_client.delete_task().id(theirs.id).send().await.unwrap();
    for batch in [
        changes(&alice_client, None).await,
        alice_client.list_user_changes().user_id(&alice).send().await.unwrap().into_inner(),
    ] {
        assert_eq!(batch.changes.len(), 1, "{batch:?}");
        assert!(matches!(&batch.changes[0], Change::Upsert { task } if task.id == mine.id));
    }
    // Bob's cursor on Alice's feed reveals nothing of Bob's: Alice's own changes after it.
    let bob_cursor = changes(&bob_client, None).await.cursor;
    let through_bobs_cursor = alice_client.list_changes().since(&bob_cursor).send().await;
    if let Ok(batch) = through_bobs_cursor {
        assert!(batch.changes.iter().all(|change| match change {
            Change::Upsert { task } => task.user_id == alice,
            Change::Delete { id } => *id != theirs.id,
        }));
    }
    let foreign = alice_client.list_user_changes().user_id(&bob).send().await;
    assert_eq!(problem(foreign).status, 403);
}

async fn bad_cursors_are_400_and_limits_out_of_range_422(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = integration_tests::token(&user("bad"));
    let feed = async |query: &str| {
        let path = format!("/api/tasks/changes?{query}");
        server.raw().request(Method::GET, &path).bearer_auth(&token).send().await.unwrap()
    };
    for query in ["since=garbage", "since=", "since=djEuLTE", "limit=x", "since=%00"] {
        assert_eq!(feed(query).await.status(), StatusCode::BAD_REQUEST, "{query}");
    }
    for query in ["limit=0", "limit=1001", "limit=-5"] {
        let response = feed(query).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errors"][0]["field"], "limit");
    }
    // A cursor ahead of the user's history (another database's, or a restored one): start over.
    let ahead = base64_cursor(1_000_000);
    assert_eq!(feed(&format!("since={ahead}")).await.status(), StatusCode::GONE);
}

fn base64_cursor(version: i64) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("v1.{version}"))
}

async fn a_cursor_past_the_purged_deletions_is_410(backend: Backend) {
    let retention =
        Retention { tombstones: Duration::from_secs(1), idempotency_keys: Duration::from_secs(60) };
    let mut options = Options::default();
    options.connect.retention = retention;
    let server = TestServer::start_with(backend, options).await;
    let client = server.client(&user("purge"));
    let task = create(&client, "short-lived").await;
    let before_delete = changes(&client, None).await.cursor;
    client.delete_task().id(task.id).send().await.unwrap();
    let after_delete = changes(&client, Some(&before_delete)).await;
    assert!(matches!(after_delete.changes[..], [Change::Delete { id }] if id == task.id));
    // The tombstone outlives its retention only until the next purge (every second here).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match client.list_changes().since(&before_delete).send().await {
            Err(err) if err.status() == Some(StatusCode::GONE) => break,
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("expected a 410 once the tombstone is purged, got {other:?}"),
        }
    }
    let gone = problem(client.list_changes().since(&before_delete).send().await);
    assert!(gone.detail.contains("without `since`"), "{}", gone.detail);
    // A cursor that saw the deletion is still good, and a full sync always is.
    assert!(changes(&client, Some(&after_delete.cursor)).await.changes.is_empty());
    assert!(changes(&client, None).await.changes.is_empty());
}

async fn deleted_tasks_leave_every_read_but_the_feed_and_ids_are_never_reused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client(&user("tomb"));
    let gone = create(&client, "gone").await;
    let cursor = changes(&client, None).await.cursor;
    client.delete_task().id(gone.id).send().await.unwrap();
    assert_eq!(problem(client.get_task().id(gone.id).send().await).status, 404);
    assert_eq!(problem(client.toggle_task().id(gone.id).send().await).status, 404);
    let listed = client.list_tasks().limit(std::num::NonZeroU64::new(10).unwrap()).send().await;
    let listed = listed.unwrap();
    assert_eq!(listed.headers()["x-total-count"], "0");
    assert!(listed.into_inner().is_empty());
    let next = create(&client, "next").await;
    assert!(next.id > gone.id, "ids are never reused");
    let batch = changes(&client, Some(&cursor)).await;
    assert!(matches!(batch.changes[0], Change::Delete { id } if id == gone.id), "{batch:?}");
}

/// The raw response of a create with `key`, as status, JSON body and the kept headers.
async fn raw_create(
    server: &TestServer,
    token: &str,
    path: &str,
    key: &str,
    body: &Value,
) -> (StatusCode, Value, header::HeaderMap) {
    let response = server
        .raw()
        .request(Method::POST, path)
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    (status, response.json().await.unwrap_or(Value::Null), headers)
}

async fn a_retried_create_with_a_key_creates_once_and_replays_exactly(backend: Backend) {
    let server = TestServer::start(backend).await;
    let name = user("retry");
    let token = integration_tests::token(&name);
    let key_text = new_key();
    let key = &key_text;
    let body = json!({"title": "Buy milk", "completed": false});
    let (status, first, first_headers) =
        raw_create(&server, &token, "/api/tasks", key, &body).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(first_headers.get("idempotent-replayed").is_none());
    // The same request again (keys in another order, the key quoted, the other path style).
    let reordered = json!({"completed": false, "title": "Buy milk"});
    let user_path = format!("/api/{name}/tasks");
    for (path, sent_key) in
        [("/api/tasks", key.clone()), (user_path.as_str(), format!("\"{key}\""))]
    {
        let (status, again, headers) =
            raw_create(&server, &token, path, &sent_key, &reordered).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(again, first, "the kept body, byte for byte");
        assert_eq!(headers["idempotent-replayed"], "true");
        for name in [header::LOCATION, header::ETAG, header::CONTENT_TYPE] {
            assert_eq!(headers[&name], first_headers[&name], "{name}");
        }
    }
    // Through the generated client too.
    let client = server.client(&name);
    let replayed = client
        .create_task()
        .idempotency_key(self::key(key))
        .body(TaskCreate::builder().title("Buy milk").completed(false))
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(replayed.id, first["id"].as_i64().unwrap());
    // Even after the task changed, the replay is what the first request got.
    client.toggle_task().id(replayed.id).send().await.unwrap();
    let (_, after_change, _) = raw_create(&server, &token, "/api/tasks", key, &body).await;
    assert_eq!(after_change, first);
    assert_eq!(
        client.list_tasks().send().await.unwrap().len(),
        1,
        "one task, however many retries"
    );
}

async fn a_retried_toggle_with_a_key_flips_once(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client(&user("flip"));
    let task = create(&client, "t").await;
    let key = key(&new_key());
    for _ in 0..3 {
        let toggled = client.toggle_task().id(task.id).idempotency_key(key.clone()).send().await;
        assert!(toggled.unwrap().completed, "every retry answers with the first toggle's task");
    }
    let now = client.get_task().id(task.id).send().await.unwrap();
    assert!(now.completed, "flipped once");
    // Update and delete take keys the same way.
    let update_key = key_of_new();
    for _ in 0..2 {
        let body = TaskUpdate::builder().title(Some("renamed".parse().unwrap()));
        let updated = client
            .update_task()
            .id(task.id)
            .idempotency_key(update_key.clone())
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(updated.title, "renamed");
    }
    let delete_key = key_of_new();
    for _ in 0..2 {
        let deleted =
            client.delete_task().id(task.id).idempotency_key(delete_key.clone()).send().await;
        assert_eq!(deleted.unwrap().status(), StatusCode::NO_CONTENT, "a retried delete is a 204");
    }
}

fn key_of_new() -> IdempotencyKey {
    key(&new_key())
}

async fn keys_belong_to_their_user(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, bob) = (server.client(&user("a")), server.client(&user("b")));
    let shared = key_of_new();
    for client in [&alice, &bob] {
        let created = client
            .create_task()
            .idempotency_key(shared.clone())
            .body(TaskCreate::builder().title("same key"))
            .send()
            .await
            .unwrap();
        assert!(created.headers().get("idempotent-replayed").is_none());
    }
    assert_eq!(alice.list_tasks().send().await.unwrap().len(), 1);
    assert_eq!(bob.list_tasks().send().await.unwrap().len(), 1);
}

async fn a_key_reused_for_another_request_is_422_and_runs_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client(&user("reuse"));
    let key = key_of_new();
    let task = client
        .create_task()
        .idempotency_key(key.clone())
        .body(TaskCreate::builder().title("first"))
        .send()
        .await
        .unwrap()
        .into_inner();
    let other_body =
        client.create_task().idempotency_key(key.clone()).body(TaskCreate::builder().title("2nd"));
    let mismatch = problem(other_body.send().await);
    assert_eq!(mismatch.status, 422);
    assert_eq!(mismatch.errors[0].field, "Idempotency-Key");
    // Another operation, or the same operation on another task, with the key: 422 too.
    assert_eq!(
        problem(client.toggle_task().id(task.id).idempotency_key(key.clone()).send().await).status,
        422
    );
    let after = client.get_task().id(task.id).send().await.unwrap().into_inner();
    assert_eq!(as_json(&[after]), as_json(&[task]), "nothing ran");
    assert_eq!(client.list_tasks().send().await.unwrap().len(), 1);
}

async fn malformed_keys_are_400_and_run_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = integration_tests::token(&user("malformed"));
    let long = "k".repeat(256);
    for bad in ["", "\"\"", "a b", "ключ", "a/b", "\"open", long.as_str()] {
        let response = server
            .raw()
            .request(Method::POST, "/api/tasks")
            .bearer_auth(&token)
            .header(
                "Idempotency-Key",
                reqwest::header::HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
            )
            .json(&json!({"title": "never"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad:?}");
    }
    let twice = server
        .raw()
        .request(Method::POST, "/api/tasks")
        .bearer_auth(&token)
        .header("Idempotency-Key", "one")
        .header("Idempotency-Key", "two")
        .json(&json!({"title": "never"}))
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), StatusCode::BAD_REQUEST, "two keys");
    let response =
        server.raw().request(Method::GET, "/api/tasks").bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.json::<Vec<Value>>().await.unwrap().len(), 0, "nothing was created");
}

async fn kept_outcomes_are_404_412_422_and_not_400(backend: Backend) {
    let server = TestServer::start(backend).await;
    let name = user("kept");
    let token = integration_tests::token(&name);
    let client = server.client(&name);
    // A 422 is kept: the same invalid body with the key gets the same 422, replayed.
    let key = new_key();
    let invalid = json!({"title": ""});
    let (status, first, _) = raw_create(&server, &token, "/api/tasks", &key, &invalid).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, again, headers) = raw_create(&server, &token, "/api/tasks", &key, &invalid).await;
    assert_eq!((status, &again), (StatusCode::UNPROCESSABLE_ENTITY, &first));
    assert_eq!(headers["idempotent-replayed"], "true");
    // A 404 is kept: the task does not appear for that key later.
    let missing_key = key_of_new();
    let missing = client.toggle_task().id(987_654_321).idempotency_key(missing_key.clone());
    assert_eq!(problem(missing.send().await).status, 404);
    let replayed = client.toggle_task().id(987_654_321).idempotency_key(missing_key).send().await;
    let Err(client_sdk::Error::ErrorResponse(replayed)) = replayed else { panic!() };
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    // A 412 is kept, even once the ETag would match.
    let task = create(&client, "t").await;
    let stale_key = new_key();
    let toggle = |if_match: String| {
        server
            .raw()
            .request(Method::PATCH, &format!("/api/tasks/{}/complete", task.id))
            .bearer_auth(&token)
            .header("Idempotency-Key", stale_key.clone())
            .header(header::IF_MATCH, if_match)
            .send()
    };
    assert_eq!(toggle("\"1\"".into()).await.unwrap().status(), StatusCode::PRECONDITION_FAILED);
    let replayed = toggle("\"1\"".into()).await.unwrap();
    assert_eq!(replayed.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    // A 400 (a body that is not JSON) is not kept: the key is still free for a good request.
    let free_key = new_key();
    let not_json = server
        .raw()
        .request(Method::POST, "/api/tasks")
        .bearer_auth(&token)
        .header("Idempotency-Key", &free_key)
        .header(header::CONTENT_TYPE, "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    let (status, created, headers) =
        raw_create(&server, &token, "/api/tasks", &free_key, &json!({"title": "ok"})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert!(headers.get("idempotent-replayed").is_none());
}

async fn twenty_identical_requests_with_one_key_run_once(backend: Backend) {
    let server = TestServer::start(backend).await;
    let name = user("herd");
    let client = server.client(&name);
    let task = create(&client, "t").await;
    let key = key_of_new();
    let toggles = (0..20).map(|_| {
        let client = server.client(&name);
        let key = key.clone();
        tokio::spawn(
            async move { client.toggle_task().id(task.id).idempotency_key(key).send().await },
        )
    });
    let (mut done, mut in_flight) = (0, 0);
    for toggle in futures::future::join_all(toggles).await {
        match toggle.unwrap() {
            Ok(toggled) => {
                assert!(toggled.completed, "every answer is the one toggle's");
                done += 1;
            }
            Err(client_sdk::Error::ErrorResponse(conflict)) if conflict.status() == 409 => {
                assert!(conflict.headers().contains_key(header::RETRY_AFTER));
                in_flight += 1;
            }
            Err(other) => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(done + in_flight, 20);
    assert!(done >= 1);
    assert!(client.get_task().id(task.id).send().await.unwrap().completed, "toggled exactly once");
    // And the same for creates: one task however the twenty race.
    let create_key = key_of_new();
    let creates = (0..20).map(|_| {
        let client = server.client(&name);
        let key = create_key.clone();
        tokio::spawn(async move {
            client
                .create_task()
                .idempotency_key(key)
                .body(TaskCreate::builder().title("once"))
                .send()
                .await
        })
    });
    let ids: std::collections::HashSet<i64> = futures::future::join_all(creates)
        .await
        .into_iter()
        .filter_map(|created| created.unwrap().ok().map(|task| task.id))
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(client.list_tasks().send().await.unwrap().len(), 2);
}

async fn an_expired_key_runs_again(backend: Backend) {
    let retention =
        Retention { tombstones: Duration::from_secs(60), idempotency_keys: Duration::from_secs(1) };
    let mut options = Options::default();
    options.connect.retention = retention;
    let server = TestServer::start_with(backend, options).await;
    let client = server.client(&user("expiry"));
    let key = key_of_new();
    let body = || TaskCreate::builder().title("again");
    let first = client.create_task().idempotency_key(key.clone()).body(body()).send().await;
    let first = first.unwrap().into_inner();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = client.create_task().idempotency_key(key.clone()).body(body()).send().await;
    let second = second.unwrap();
    assert!(second.headers().get("idempotent-replayed").is_none());
    assert_ne!(second.id, first.id, "an expired key is a new key");
    // Expired keys are purged by the upkeep (and a purged key works like a new one).
    let third = client.create_task().idempotency_key(key).body(body()).send().await.unwrap();
    assert_eq!(third.headers()["idempotent-replayed"], "true");
}
