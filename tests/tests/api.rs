//! The contract, end to end: a live server driven through the generated client, on SQLite and
//! on PostgreSQL alike. Raw HTTP appears only where the client cannot express the request
//! (malformed JSON, bad tokens, out-of-range values the client's types refuse).

use std::{collections::HashSet, num::NonZeroU64};

use chrono::{DateTime, Utc};
use client_sdk::types::{
    SortOrder, Task, TaskCreate, TaskCreateDescription, TaskSort, TaskStatus, TaskUpdate,
    TaskUpdateDescription, TaskUpdateTitle,
};
use integration_tests::{
    Backend, Options, SECRET, TestServer, expect_problem, logs, now, on_every_database, problem,
    sign, sign_with, token, user,
};
use jsonwebtoken::Algorithm;
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

on_every_database!(
    health_reports_the_database,
    docs_and_spec_are_served,
    create_returns_the_full_task_and_its_location,
    create_ignores_owner_ids_timestamps_and_unknown_fields,
    list_returns_only_the_callers_tasks_oldest_first,
    list_filters_sorts_and_pages_with_a_total,
    keyset_pages_walk_every_task_once_in_every_order,
    a_deleted_cursor_task_does_not_break_the_walk,
    list_parameter_errors_are_400_or_422,
    get_toggle_and_delete_a_task,
    update_is_partial_and_moves_updated_at_forward,
    invalid_bodies_are_422_and_change_nothing,
    other_users_tasks_are_404_and_unchanged,
    user_path_style_serves_every_operation,
    foreign_user_path_is_403_before_anything_is_read,
    authentication_failures_are_401_problems,
    subject_claims_and_issuer_audience_rules,
    framework_errors_are_problems,
    bodyless_requests_ignore_their_content_type,
    ids_beyond_32_bits_work,
    fifty_users_create_concurrently_and_see_only_their_own,
    concurrent_toggles_never_lose_one,
    cors_preflight_needs_no_token,
    etags_change_on_every_modification_and_guard_writes,
    concurrent_writers_holding_one_etag_one_wins,
);

fn create_description(text: &str) -> Option<TaskCreateDescription> {
    Some(text.parse().unwrap())
}

fn update_title(text: &str) -> Option<TaskUpdateTitle> {
    Some(text.parse().unwrap())
}

fn update_description(text: &str) -> Option<TaskUpdateDescription> {
    Some(text.parse().unwrap())
}

async fn create(client: &client_sdk::Client, title: &str) -> Task {
    client
        .create_task()
        .body(TaskCreate::builder().title(title))
        .send()
        .await
        .expect("create a task")
        .into_inner()
}

async fn list(client: &client_sdk::Client) -> Vec<Task> {
    client.list_tasks().send().await.expect("list tasks").into_inner()
}

fn total_count(headers: &header::HeaderMap) -> i64 {
    headers["x-total-count"].to_str().unwrap().parse().unwrap()
}

async fn health_reports_the_database(backend: Backend) {
    let server = TestServer::start(backend).await;
    let health = server.anonymous().health().send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.status, client_sdk::types::HealthStatus::Healthy);
    assert_eq!(health.database, client_sdk::types::DatabaseStatus::Ok);
    assert_eq!(health.jwks, None, "no jwks field without a JWKS");
    let anonymous = server.anonymous();
    let live = anonymous.live().send().await.unwrap();
    assert_eq!(live.status, client_sdk::types::LiveStatus::Alive);
    let ready = anonymous.ready().send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(ready.status, client_sdk::types::HealthStatus::Healthy);
}

async fn docs_and_spec_are_served(backend: Backend) {
    let server = TestServer::start(backend).await;
    let raw = server.raw();
    let spec = raw.request(Method::GET, "/openapi.json").send().await.unwrap();
    assert_eq!(spec.status(), StatusCode::OK);
    let committed = include_str!("../../openapi.json");
    assert_eq!(spec.text().await.unwrap(), committed, "/openapi.json is the committed file");
    let docs = raw.request(Method::GET, "/docs").send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    let html = docs.text().await.unwrap();
    // Swagger UI with the spec inlined, bearer scheme included (what its Authorize dialog offers).
    assert!(html.contains("SwaggerUIBundle"), "the Swagger UI bundle is served inline");
    assert!(html.contains("\"BearerAuth\"") && html.contains("\"bearer\""), "bearer scheme");
}

async fn create_returns_the_full_task_and_its_location(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client("user123");
    let before = Utc::now();
    let response = client
        .create_task()
        .body(
            TaskCreate::builder()
                .title("Buy groceries")
                .description(create_description("milk, eggs")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()[header::LOCATION].to_str().unwrap().to_owned();
    let task = response.into_inner();
    assert_eq!(location, format!("/api/tasks/{}", task.id));
    assert!(task.id > 0);
    assert_eq!(task.user_id, "user123");
    assert_eq!(task.title, "Buy groceries");
    assert_eq!(task.description.as_deref(), Some("milk, eggs"));
    assert!(!task.completed);
    assert_eq!(task.created_at, task.updated_at);
    assert!(task.created_at >= before - chrono::Duration::seconds(5));
    // The Location is readable, and timestamps are RFC 3339 UTC with a Z (JavaScript's Date).
    let raw = server
        .raw()
        .request(Method::GET, &location)
        .bearer_auth(token("user123"))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::OK);
    let body: Value = raw.json().await.unwrap();
    let created_at = body["created_at"].as_str().unwrap();
    assert!(created_at.ends_with('Z'), "{created_at}");
    assert!(DateTime::parse_from_rfc3339(created_at).is_ok());
    assert_eq!(body["description"], "milk, eggs");
    // `completed: true` on create is honoured; a 200-character multibyte title is fine.
    let done = client
        .create_task()
        .body(TaskCreate::builder().title("é".repeat(200)).completed(true))
        .send()
        .await
        .unwrap();
    assert!(done.completed);
    assert_eq!(done.description, None);
}

async fn create_ignores_owner_ids_timestamps_and_unknown_fields(backend: Backend) {
    let server = TestServer::start(backend).await;
    let response = server
        .raw()
        .request(Method::POST, "/api/tasks")
        .bearer_auth(token("alice"))
        .json(&json!({
            "title": "mine", "user_id": "mallory", "id": 4242, "color": "red",
            "created_at": "2000-01-01T00:00:00Z", "updated_at": "2000-01-01T00:00:00Z",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["user_id"], "alice");
    assert_ne!(body["id"], 4242);
    assert!(!body["created_at"].as_str().unwrap().starts_with("2000"));
    assert!(body.get("color").is_none());
    assert!(list(&server.client("mallory")).await.is_empty());
}

async fn list_returns_only_the_callers_tasks_oldest_first(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.client("user123");
    let bob = server.client("user456");
    let empty = alice.list_tasks().send().await.unwrap();
    assert_eq!(empty.status(), StatusCode::OK);
    assert_eq!(total_count(empty.headers()), 0);
    assert!(empty.into_inner().is_empty());
    let mut mine = Vec::new();
    for title in ["one", "two", "three"] {
        mine.push(create(&alice, title).await.id);
        create(&bob, &format!("bob {title}")).await;
    }
    let listed = alice.list_tasks().send().await.unwrap();
    assert_eq!(total_count(listed.headers()), 3);
    let listed = listed.into_inner();
    assert_eq!(listed.iter().map(|t| t.id).collect::<Vec<_>>(), mine);
    assert!(listed.iter().all(|t| t.user_id == "user123"));
    // The list is a bare JSON array.
    let raw: Value = server
        .raw()
        .request(Method::GET, "/api/tasks")
        .bearer_auth(token("user123"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw.as_array().map(Vec::len), Some(3));
}

async fn list_filters_sorts_and_pages_with_a_total(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client("sorter");
    let b = create(&client, "b").await.id;
    let c = create(&client, "c").await.id;
    let a = create(&client, "a").await.id;
    client.toggle_task().id(c).send().await.unwrap();
    // `b` is updated last.
    let touch = TaskUpdate::builder().description(update_description("touched"));
    client.update_task().id(b).body(touch).send().await.unwrap();

    let two = NonZeroU64::new(2).unwrap();
    let list = || client.list_tasks();
    // (request, expected ids in order, expected X-Total-Count)
    let cases = [
        (list(), vec![b, c, a], 3),
        (list().status(TaskStatus::All), vec![b, c, a], 3),
        (list().status(TaskStatus::Pending), vec![b, a], 2),
        (list().status(TaskStatus::Completed), vec![c], 1),
        (list().sort(TaskSort::Title), vec![a, b, c], 3),
        (list().sort(TaskSort::Title).order(SortOrder::Desc), vec![c, b, a], 3),
        (list().sort(TaskSort::Created).order(SortOrder::Desc), vec![a, c, b], 3),
        (list().sort(TaskSort::Updated).order(SortOrder::Desc), vec![b, c, a], 3),
        (list().sort(TaskSort::Updated), vec![a, c, b], 3),
        (list().limit(two), vec![b, c], 3),
        (list().limit(two).offset(2), vec![a], 3),
        (list().status(TaskStatus::Pending).limit(two).offset(1), vec![a], 2),
        (list().offset(10), vec![], 3),
        (list().status(TaskStatus::Completed).offset(5), vec![], 1),
    ];
    for (i, (request, expected, total)) in cases.into_iter().enumerate() {
        let response = request.send().await.unwrap();
        assert_eq!(total_count(response.headers()), total, "case {i}");
        let ids: Vec<i64> = response.into_inner().iter().map(|t| t.id).collect();
        assert_eq!(ids, expected, "case {i}");
    }
}

/// The `after` of a `Link: <…>; rel="next"` header, and the link itself.
fn next_link(headers: &header::HeaderMap) -> Option<(String, String)> {
    let link = headers.get(header::LINK)?.to_str().unwrap().to_owned();
    let target = link
        .strip_prefix('<')
        .and_then(|rest| rest.strip_suffix(">; rel=\"next\""))
        .unwrap_or_else(|| panic!("not a next link: {link}"));
    let after = target.split_once("after=").expect("the link has `after`").1.to_owned();
    Some((target.to_owned(), after))
}

/// Following `Link: rel="next"` from a first page of `limit` visits every matching task once,
/// in the listing's order, for every filter, sort key and order; every page says the total;
/// the last page has no link, even when it is full. Titles repeat, so ties cross pages. Pages
/// by `offset` are the same slices.
async fn keyset_pages_walk_every_task_once_in_every_order(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client("walker");
    let raw = server.raw();
    let mut ids = Vec::new();
    for title in ["b", "a", "b", "c", "a", "b", "d", "a", "c"] {
        ids.push(create(&client, title).await.id);
    }
    for &id in &[ids[1], ids[3], ids[6], ids[7]] {
        client.toggle_task().id(id).send().await.unwrap();
    }
    for &id in &[ids[7], ids[8]] {
        client.delete_task().id(id).send().await.unwrap();
    }
    // 7 tasks: 4 pending, 3 completed (a full last page of 3, without a next link).
    let three = NonZeroU64::new(3).unwrap();
    for status in [TaskStatus::All, TaskStatus::Pending, TaskStatus::Completed] {
        for sort in [TaskSort::Created, TaskSort::Updated, TaskSort::Title] {
            for order in [SortOrder::Asc, SortOrder::Desc] {
                let case = format!("{status:?} {sort:?} {order:?}");
                let all = client.list_tasks().status(status).sort(sort).order(order);
                let expected: Vec<i64> =
                    all.send().await.unwrap().into_inner().iter().map(|t| t.id).collect();
                let first = client.list_tasks().status(status).sort(sort).order(order);
                let first = first.limit(three).send().await.unwrap();
                assert_eq!(total_count(first.headers()), expected.len() as i64, "{case}");
                let mut next = next_link(first.headers());
                let mut walked: Vec<i64> = first.into_inner().iter().map(|t| t.id).collect();
                let mut pages = 1;
                while let Some((target, _)) = next {
                    assert!(target.starts_with("/api/tasks?"), "{case}: {target}");
                    let page = raw.request(Method::GET, &target).bearer_auth(token("walker"));
                    let page = page.send().await.unwrap();
                    assert_eq!(page.status(), StatusCode::OK, "{case}: {target}");
                    assert_eq!(total_count(page.headers()), expected.len() as i64, "{case}");
                    next = next_link(page.headers());
                    let tasks: Vec<Task> = page.json().await.unwrap();
                    assert!(tasks.len() == 3 || next.is_none(), "{case}: a short page links on");
                    walked.extend(tasks.iter().map(|t| t.id));
                    pages += 1;
                }
                assert_eq!(walked, expected, "{case}");
                assert_eq!(pages, expected.len().div_ceil(3).max(1), "{case}");
                // Offset pages are the same slices, in the same order.
                for offset in 1..expected.len() as i64 {
                    let page = client.list_tasks().status(status).sort(sort).order(order);
                    let page = page.limit(three).offset(offset).send().await.unwrap();
                    assert_eq!(total_count(page.headers()), expected.len() as i64, "{case}");
                    let ids: Vec<i64> = page.into_inner().iter().map(|t| t.id).collect();
                    let start = offset as usize;
                    let slice = &expected[start..(start + 3).min(expected.len())];
                    assert_eq!(ids, slice, "{case} offset {offset}");
                }
            }
        }
    }
}

/// A cursor is a position, not a task: the next page still follows after its task is deleted,
/// and the generated client's `after` takes it as is.
async fn a_deleted_cursor_task_does_not_break_the_walk(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client("deleter");
    let mut ids = Vec::new();
    for title in ["one", "two", "three", "four", "five"] {
        ids.push(create(&client, title).await.id);
    }
    let two = NonZeroU64::new(2).unwrap();
    let first = client.list_tasks().limit(two).send().await.unwrap();
    let (_, after) = next_link(first.headers()).expect("more pages");
    let first: Vec<i64> = first.into_inner().iter().map(|t| t.id).collect();
    assert_eq!(first, ids[..2]);
    client.delete_task().id(ids[1]).send().await.unwrap();
    let second = client.list_tasks().limit(two).after(&after).send().await.unwrap();
    assert_eq!(total_count(second.headers()), 4);
    let (_, after) = next_link(second.headers()).expect("one more page");
    let second: Vec<i64> = second.into_inner().iter().map(|t| t.id).collect();
    assert_eq!(second, ids[2..4]);
    let last = client.list_tasks().limit(two).after(&after).send().await.unwrap();
    assert!(next_link(last.headers()).is_none());
    let last: Vec<i64> = last.into_inner().iter().map(|t| t.id).collect();
    assert_eq!(last, ids[4..]);
    // Past the end: no tasks, the total still exact.
    let past = client.list_tasks().after(&after).sort(TaskSort::Created);
    let past = past.offset(5).send().await.unwrap();
    assert_eq!(total_count(past.headers()), 4);
    assert!(past.into_inner().is_empty());
}

async fn list_parameter_errors_are_400_or_422(backend: Backend) {
    let server = TestServer::start(backend).await;
    let raw = server.raw();
    for query in [
        "limit=x",
        "status=done",
        "sort=size",
        "order=up",
        "offset=1.5",
        "limit=99999999999999999999",
        "after=!!",
        "after=Y2EuNy41x",
        // A cursor of `sort=created&order=asc` (`ca.7.5`), and one of `order=desc`, swapped.
        "order=desc&after=Y2EuNy41",
        "after=Y2QuNy41",
    ] {
        let response = raw
            .request(Method::GET, &format!("/api/tasks?{query}"))
            .bearer_auth(token("p"))
            .send()
            .await
            .unwrap();
        expect_problem(response, StatusCode::BAD_REQUEST).await;
    }
    for (query, field) in [("limit=0", "limit"), ("limit=1001", "limit"), ("offset=-1", "offset")] {
        let response = raw
            .request(Method::GET, &format!("/api/tasks?{query}"))
            .bearer_auth(token("p"))
            .send()
            .await
            .unwrap();
        let body = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(body["errors"][0]["field"], field, "{query}");
    }
    // The generated client reaches the same 422 where its types allow the value.
    let client = server.client("p");
    let err = problem(client.list_tasks().limit(NonZeroU64::new(1001).unwrap()).send().await);
    assert_eq!(err.status, 422);
    let err = problem(client.list_tasks().offset(-1).send().await);
    assert_eq!(err.errors[0].field, "offset");
}

async fn get_toggle_and_delete_a_task(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client("user123");
    let task = create(&client, "Buy groceries").await;
    let fetched = client.get_task().id(task.id).send().await.unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert_eq!(fetched.into_inner().title, "Buy groceries");

    let done = client.toggle_task().id(task.id).send().await.unwrap().into_inner();
    assert!(done.completed);
    assert!(done.updated_at > task.updated_at);
    let undone = client.toggle_task().id(task.id).send().await.unwrap().into_inner();
    assert!(!undone.completed);
    assert!(undone.updated_at > done.updated_at);
    assert_eq!(undone.title, task.title);

    let deleted = client.delete_task().id(task.id).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(problem(client.get_task().id(task.id).send().await).status, 404);
    assert_eq!(problem(client.delete_task().id(task.id).send().await).status, 404);
    assert_eq!(problem(client.toggle_task().id(task.id).send().await).status, 404);
    assert_eq!(problem(client.get_task().id(987_654_321).send().await).status, 404);
    assert!(list(&client).await.is_empty());

    // 204 has an empty body.
    let task = create(&client, "again").await;
    let raw = server
        .raw()
        .request(Method::DELETE, &format!("/api/tasks/{}", task.id))
        .bearer_auth(token("user123"))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::NO_CONTENT);
    assert!(raw.bytes().await.unwrap().is_empty());
}

async fn update_is_partial_and_moves_updated_at_forward(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client("user123");
    let task = client
        .create_task()
        .body(TaskCreate::builder().title("Buy groceries").description(create_description("milk")))
        .send()
        .await
        .unwrap()
        .into_inner();
    let renamed = client
        .update_task()
        .id(task.id)
        .body(TaskUpdate::builder().title(update_title("Buy organic groceries")))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), StatusCode::OK);
    let renamed = renamed.into_inner();
    assert_eq!(renamed.title, "Buy organic groceries");
    assert_eq!(renamed.description.as_deref(), Some("milk"), "untouched field kept");
    assert!(!renamed.completed);
    assert_eq!(renamed.created_at, task.created_at);
    assert!(renamed.updated_at > task.updated_at);

    let completed = client
        .update_task()
        .id(task.id)
        .body(TaskUpdate::builder().completed(true))
        .send()
        .await
        .unwrap()
        .into_inner();
    assert!(completed.completed);
    assert_eq!(completed.title, "Buy organic groceries");
    assert!(completed.updated_at > renamed.updated_at);

    // "" and null both clear the description.
    let cleared = client
        .update_task()
        .id(task.id)
        .body(TaskUpdate::builder().description(update_description("")))
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.description, None);
    client
        .update_task()
        .id(task.id)
        .body(TaskUpdate::builder().description(update_description("again")))
        .send()
        .await
        .unwrap();
    let response = server
        .raw()
        .request(Method::PUT, &format!("/api/tasks/{}", task.id))
        .bearer_auth(token("user123"))
        .json(&json!({"description": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["description"], Value::Null);
    assert_eq!(body["title"], "Buy organic groceries");
    assert_eq!(client.get_task().id(task.id).send().await.unwrap().description, None);
}

async fn invalid_bodies_are_422_and_change_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client("validator");
    let task = create(&client, "original").await;
    let raw = server.raw();
    let long_title = "x".repeat(201);
    let long_description = "y".repeat(1001);
    let creates = [
        (json!({}), "title"),
        (json!({"description": "no title"}), "title"),
        (json!({"title": ""}), "title"),
        (json!({"title": "   \t"}), "title"),
        (json!({"title": long_title}), "title"),
        (json!({"title": null}), "title"),
        (json!({"title": 5}), "title"),
        (json!({"title": ["a"]}), "title"),
        (json!({"title": "nul \u{0} inside"}), "title"),
        (json!({"title": "ok", "description": long_description}), "description"),
        (json!({"title": "ok", "description": 7}), "description"),
        (json!({"title": "ok", "completed": "true"}), "completed"),
        (json!({"title": "ok", "completed": 1}), "completed"),
        (json!(["title"]), "body"),
        (json!("title"), "body"),
    ];
    for (body, field) in creates {
        let response = raw
            .request(Method::POST, "/api/tasks")
            .bearer_auth(token("validator"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
        assert!(problem["detail"].as_str().unwrap().contains(field), "{problem}");
    }
    let too_long = raw
        .request(Method::POST, "/api/tasks")
        .bearer_auth(token("validator"))
        .json(&json!({"title": "x".repeat(201)}))
        .send()
        .await
        .unwrap();
    let too_long = expect_problem(too_long, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(too_long["detail"], "title must be at most 200 characters");
    assert_eq!(too_long["errors"][0]["message"], "must be at most 200 characters");

    let updates = [
        (json!({}), "body"),
        (json!({"unknown": 1}), "body"),
        (json!({"title": null}), "title"),
        (json!({"title": ""}), "title"),
        (json!({"title": " "}), "title"),
        (json!({"title": "x".repeat(201)}), "title"),
        (json!({"description": "y".repeat(1001)}), "description"),
        (json!({"completed": "false"}), "completed"),
        (json!({"completed": null}), "completed"),
    ];
    for (body, field) in updates {
        let response = raw
            .request(Method::PUT, &format!("/api/tasks/{}", task.id))
            .bearer_auth(token("validator"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
    }
    // Through the generated client too: an empty update and a blank title.
    assert_eq!(
        problem(client.update_task().id(task.id).body(TaskUpdate::default()).send().await).status,
        422
    );
    let blank = client.create_task().body(TaskCreate::builder().title("  ")).send().await;
    assert_eq!(problem(blank).errors[0].field, "title");

    let after = list(&client).await;
    assert_eq!(after.len(), 1, "no invalid create was stored");
    assert_eq!(after[0].title, "original");
    assert_eq!(after[0].updated_at, task.updated_at, "no invalid update changed the task");
}

async fn other_users_tasks_are_404_and_unchanged(backend: Backend) {
    let server = TestServer::start(backend).await;
    let owner = server.client("user456");
    let intruder = server.client("user123");
    let task = create(&owner, "private").await;

    assert_eq!(problem(intruder.get_task().id(task.id).send().await).status, 404);
    let update = intruder
        .update_task()
        .id(task.id)
        .body(TaskUpdate::builder().title(update_title("pwned")))
        .send()
        .await;
    assert_eq!(problem(update).status, 404);
    assert_eq!(problem(intruder.toggle_task().id(task.id).send().await).status, 404);
    assert_eq!(problem(intruder.delete_task().id(task.id).send().await).status, 404);
    assert!(list(&intruder).await.is_empty());

    // A foreign task and a missing one answer the same.
    let foreign = problem(intruder.get_task().id(task.id).send().await);
    let missing = problem(intruder.get_task().id(task.id + 1000).send().await);
    assert_eq!((foreign.status, foreign.detail), (missing.status, missing.detail));

    let seen_by_owner = owner.get_task().id(task.id).send().await.unwrap().into_inner();
    assert_eq!(seen_by_owner.title, "private");
    assert!(!seen_by_owner.completed);
    assert_eq!(seen_by_owner.updated_at, task.updated_at);
}

async fn user_path_style_serves_every_operation(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client("user123");
    let created = client
        .create_user_task()
        .user_id("user123")
        .body(TaskCreate::builder().title("Buy groceries"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created.headers()[header::LOCATION].to_str().unwrap().to_owned();
    let task = created.into_inner();
    assert_eq!(location, format!("/api/user123/tasks/{}", task.id));

    let listed = client.list_user_tasks().user_id("user123").send().await.unwrap();
    assert_eq!(total_count(listed.headers()), 1);
    assert_eq!(listed.into_inner()[0].id, task.id);
    let fetched = client.get_user_task().user_id("user123").id(task.id).send().await.unwrap();
    assert_eq!(fetched.title, "Buy groceries");
    let updated = client
        .update_user_task()
        .user_id("user123")
        .id(task.id)
        .body(TaskUpdate::builder().title(update_title("Buy organic groceries")))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.title, "Buy organic groceries");
    let toggled = client.toggle_user_task().user_id("user123").id(task.id).send().await.unwrap();
    assert!(toggled.completed);
    // Both styles see the same data.
    assert!(client.get_task().id(task.id).send().await.unwrap().completed);
    let deleted = client.delete_user_task().user_id("user123").id(task.id).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert!(list(&client).await.is_empty());

    // Percent-encoded user ids match the decoded subject.
    let odd = server.client("a b@c");
    let response = odd.list_user_tasks().user_id("a b@c").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

async fn foreign_user_path_is_403_before_anything_is_read(backend: Backend) {
    let server = TestServer::start(backend).await;
    // Every method on every path shape, the ones the document does not have included (405s).
    server.expect_undeclared_requests();
    let victim = server.client("user456");
    let task = create(&victim, "victim's").await;
    let attacker = server.client("user123");

    assert_eq!(problem(attacker.list_user_tasks().user_id("user456").send().await).status, 403);
    let create = attacker
        .create_user_task()
        .user_id("user456")
        .body(TaskCreate::builder().title("planted"))
        .send()
        .await;
    assert_eq!(problem(create).status, 403);
    assert_eq!(
        problem(attacker.get_user_task().user_id("user456").id(task.id).send().await).status,
        403
    );
    let update = attacker
        .update_user_task()
        .user_id("user456")
        .id(task.id)
        .body(TaskUpdate::builder().title(update_title("pwned")))
        .send()
        .await;
    assert_eq!(problem(update).status, 403);
    assert_eq!(
        problem(attacker.toggle_user_task().user_id("user456").id(task.id).send().await).status,
        403
    );
    assert_eq!(
        problem(attacker.delete_user_task().user_id("user456").id(task.id).send().await).status,
        403
    );
    // Also the attacker's own path with a foreign task id is a plain 404.
    assert_eq!(
        problem(attacker.get_user_task().user_id("user123").id(task.id).send().await).status,
        404
    );

    // 403 comes before the body, the query and the id are parsed.
    let raw = server.raw();
    let cases = [
        (Method::POST, "/api/user456/tasks".to_owned(), Some("{not json")),
        (Method::GET, "/api/user456/tasks?limit=x".to_owned(), None),
        (Method::GET, "/api/user456/tasks/abc".to_owned(), None),
        (Method::PUT, format!("/api/user456/tasks/{}", task.id), Some("{\"title\": 5}")),
        (Method::PUT, "/api/user456/tasks/abc".to_owned(), Some("[]")),
    ];
    for (method, path, body) in cases {
        let mut request = raw.request(method.clone(), &path).bearer_auth(token("user123"));
        if let Some(body) = body {
            request = request.header(header::CONTENT_TYPE, "application/json").body(body);
        }
        let response = request.send().await.unwrap();
        expect_problem(response, StatusCode::FORBIDDEN).await;
    }

    // Whatever `{user_id}` holds, `tasks` and encodings included: not the subject, so 403. (The
    // caller's own task 1 must not come back through `/api/tasks/tasks/1`.)
    let own = self::create(&attacker, "attacker's own").await;
    let odd_paths = [
        format!("/api/tasks/tasks/{}", own.id),
        format!("/api/tasks/tasks/{}/complete", own.id),
        "/api/user123%2F/tasks".to_owned(),
        "/api/%20user123/tasks".to_owned(),
    ];
    for path in &odd_paths {
        for method in [Method::GET, Method::PATCH, Method::DELETE] {
            let response = raw
                .request(method.clone(), path)
                .bearer_auth(token("user123"))
                .send()
                .await
                .unwrap();
            if response.status() != StatusCode::METHOD_NOT_ALLOWED {
                assert_eq!(response.status(), StatusCode::FORBIDDEN, "{method} {path}");
            }
        }
    }
    // The user literally named `tasks` is the one user this style cannot serve; still a 403
    // for anyone else, and `%74asks` decodes to the same.
    let tasks_user = raw
        .request(Method::GET, "/api/%74asks/tasks")
        .bearer_auth(token("user123"))
        .send()
        .await
        .unwrap();
    assert_eq!(tasks_user.status(), StatusCode::FORBIDDEN);
    // A segment that does not decode to UTF-8 text is no user id at all: the router refuses it
    // as a path that does not parse.
    let undecodable = raw
        .request(Method::GET, "/api/%FF/tasks")
        .bearer_auth(token("user123"))
        .send()
        .await
        .unwrap();
    expect_problem(undecodable, StatusCode::BAD_REQUEST).await;
    // A percent-encoded subject is the subject.
    let encoded = raw
        .request(Method::GET, "/api/user12%33/tasks")
        .bearer_auth(token("user123"))
        .send()
        .await
        .unwrap();
    assert_eq!(encoded.status(), StatusCode::OK, "user12%33 is user123");
    assert_eq!(attacker.get_task().id(own.id).send().await.unwrap().title, "attacker's own");

    let seen = victim.list_tasks().send().await.unwrap().into_inner();
    assert_eq!(seen.len(), 1, "nothing was planted");
    assert_eq!(seen[0].title, "victim's");
    assert!(!seen[0].completed);
    assert_eq!(seen[0].updated_at, task.updated_at);
    assert_eq!(list(&attacker).await.len(), 1, "only the attacker's own task");
}

/// RFC 8725's attacks, and every other way a token can be wrong: each is a 401 problem with a
/// bearer challenge, and none of them changes anything.
async fn authentication_failures_are_401_problems(backend: Backend) {
    let server = TestServer::start(backend).await;
    let owner = server.client("alice");
    let task = create(&owner, "guarded").await;
    let t = now();
    let valid = json!({"sub": "alice", "exp": t + 600});
    let with_kid = |kid: &str| forge(&json!({"alg": "HS256", "typ": "JWT", "kid": kid}), &valid);
    let bad_tokens: Vec<(&str, String)> = vec![
        ("garbage", "not.a.jwt".into()),
        ("two parts", "abc.def".into()),
        ("alg none", unsigned_token(&valid)),
        ("header claims RS256, HMAC-signed", forge(&json!({"alg": "RS256", "typ": "JWT"}), &valid)),
        ("header claims EdDSA, HMAC-signed", forge(&json!({"alg": "EdDSA", "typ": "JWT"}), &valid)),
        ("header claims ES256, HMAC-signed", forge(&json!({"alg": "ES256"}), &valid)),
        ("HS384 with the right secret", sign_with(Algorithm::HS384, SECRET.as_bytes(), &valid)),
        ("HS512 with the right secret", sign_with(Algorithm::HS512, SECRET.as_bytes(), &valid)),
        ("wrong secret", sign_with(Algorithm::HS256, b"another-secret-another-secret-!!", &valid)),
        ("empty secret", sign_with(Algorithm::HS256, b"", &valid)),
        ("tampered payload", tamper(&sign(&valid))),
        ("expired", sign(&json!({"sub": "alice", "exp": t - 3600}))),
        ("not yet valid", sign(&json!({"sub": "alice", "exp": t + 7200, "nbf": t + 3600}))),
        ("issued in the future", sign(&json!({"sub": "alice", "exp": t + 7200, "iat": t + 3600}))),
        ("exp not a number", sign(&json!({"sub": "alice", "exp": "tomorrow"}))),
        ("no exp", sign(&json!({"sub": "alice"}))),
        ("no subject", sign(&json!({"exp": t + 600}))),
        ("empty subject", sign(&json!({"sub": "", "exp": t + 600}))),
        ("numeric subject", sign(&json!({"sub": 42, "exp": t + 600}))),
        ("object subject", sign(&json!({"sub": {"id": "alice"}, "exp": t + 600}))),
        ("subject of 256 characters", sign(&json!({"sub": "a".repeat(256), "exp": t + 600}))),
        (
            "100 KB token",
            sign(&json!({"sub": "alice", "exp": t + 600, "pad": "p".repeat(100 * 1024)})),
        ),
        ("kid path traversal", with_kid("../../../../etc/passwd")),
        ("kid absolute path", with_kid("/dev/null")),
        ("kid SQL injection", with_kid("' OR '1'='1' --")),
        ("kid command injection", with_kid("key|rm -rf /")),
        ("kid control character", with_kid("key\u{0}")),
    ];
    let attempts = |bad: String| {
        let raw = server.raw();
        let id = task.id;
        async move {
            let update = raw
                .request(Method::PUT, &format!("/api/tasks/{id}"))
                .json(&json!({"title": "pwned"}));
            vec![
                raw.request(Method::GET, "/api/tasks").bearer_auth(&bad).send().await.unwrap(),
                update.bearer_auth(&bad).send().await.unwrap(),
                raw.request(Method::PATCH, &format!("/api/alice/tasks/{id}/complete"))
                    .bearer_auth(&bad)
                    .send()
                    .await
                    .unwrap(),
                raw.request(Method::DELETE, &format!("/api/tasks/{id}"))
                    .bearer_auth(&bad)
                    .send()
                    .await
                    .unwrap(),
            ]
        }
    };
    for (what, bad) in &bad_tokens {
        for response in attempts(bad.clone()).await {
            let challenge =
                response.headers()[header::WWW_AUTHENTICATE].to_str().unwrap().to_owned();
            assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
            let body = expect_problem(response, StatusCode::UNAUTHORIZED).await;
            let expected = if *what == "expired" { "token expired" } else { "invalid token" };
            assert_eq!(body["detail"], expected, "{what}");
        }
    }
    // No header, another scheme, an empty bearer: 401 with a bare challenge.
    for authorization in
        [None, Some("Basic YWxpY2U6cGFzcw=="), Some("Bearer"), Some("Bearer "), Some("bearer")]
    {
        let mut request = server.raw().request(Method::GET, "/api/tasks");
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let response = request.send().await.unwrap();
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
        expect_problem(response, StatusCode::UNAUTHORIZED).await;
    }
    // A bearer value that cannot be a JWT (non-ASCII bytes, spaces) was still a token sent:
    // "invalid token", never "missing".
    for value in ["Bearer Ω≈ç√".as_bytes(), b"Bearer two words", b"Bearer \xff\xfe"] {
        let response = server
            .raw()
            .request(Method::GET, "/api/tasks")
            .header(header::AUTHORIZATION, header::HeaderValue::from_bytes(value).unwrap())
            .send()
            .await
            .unwrap();
        let challenge = response.headers()[header::WWW_AUTHENTICATE].to_str().unwrap().to_owned();
        assert!(challenge.contains("invalid_token"), "{challenge}");
        let body = expect_problem(response, StatusCode::UNAUTHORIZED).await;
        assert_eq!(body["detail"], "invalid token", "{value:?}");
    }
    // Two Authorization headers, even both valid, are refused rather than guessed between.
    let twice = server
        .raw()
        .request(Method::DELETE, &format!("/api/tasks/{}", task.id))
        .header(header::AUTHORIZATION, format!("Bearer {}", token("alice")))
        .header(header::AUTHORIZATION, format!("Bearer {}", token("mallory")))
        .send()
        .await
        .unwrap();
    expect_problem(twice, StatusCode::UNAUTHORIZED).await;
    // The reason is logged once, naming the request it was refused in.
    let request_id = format!("rejected-trace-{}", uuid::Uuid::new_v4());
    let response = server
        .raw()
        .request(Method::GET, "/api/tasks")
        .header("x-request-id", &request_id)
        .bearer_auth(tamper(&sign(&valid)))
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::UNAUTHORIZED).await;
    let logged = logs::warnings_containing(&request_id);
    assert_eq!(logged.len(), 1, "{logged:#?}");
    let line: Value = serde_json::from_str(&logged[0]).unwrap();
    assert_eq!(line["request"], json!({"id": request_id, "method": "GET", "path": "/api/tasks"}));
    assert_eq!(line["message"], "rejected credentials");
    assert!(line["reason"].as_str().unwrap().contains("invalid"), "{line}");
    // The generated client sees the same 401.
    let unauthenticated = server.anonymous();
    assert_eq!(problem(unauthenticated.list_tasks().send().await).status, 401);
    // A kid that is a plain identifier is fine.
    let response = server
        .raw()
        .request(Method::GET, "/api/tasks")
        .bearer_auth(with_kid("key-2026_01.a"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Nothing was changed by any of them.
    let after = list(&owner).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].title, "guarded");
    assert!(!after[0].completed);
    assert_eq!(after[0].updated_at, task.updated_at);
}

/// A token with an arbitrary header, HMAC-signed with the right secret.
fn forge(header: &Value, claims: &Value) -> String {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let message =
        format!("{}.{}", engine.encode(header.to_string()), engine.encode(claims.to_string()));
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
    format!("{message}.{signature}")
}

/// The same token with one payload character changed (the signature no longer matches).
fn tamper(token: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let payload = &mut parts[1];
    let last = payload.pop().unwrap();
    payload.push(if last == 'A' { 'B' } else { 'A' });
    parts.join(".")
}

/// A token with `"alg": "none"` and no signature (RFC 8725 §2.1).
fn unsigned_token(claims: &Value) -> String {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = engine.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = engine.encode(claims.to_string());
    format!("{header}.{payload}.")
}

async fn subject_claims_and_issuer_audience_rules(backend: Backend) {
    let server = TestServer::start(backend).await;
    let t = now();
    let get = |token: String| {
        let request = server.raw().request(Method::GET, "/api/tasks").bearer_auth(token);
        async move { request.send().await.unwrap().status() }
    };
    // `id` or `user_id` stand in for a missing `sub`.
    assert_eq!(get(sign(&json!({"id": "via-id", "exp": t + 600}))).await, StatusCode::OK);
    assert_eq!(get(sign(&json!({"user_id": "via-user-id", "exp": t + 600}))).await, StatusCode::OK);
    // Better Auth's `iss` and `aud` are accepted when no issuer or audience is configured.
    let better_auth = json!({"sub": "u", "exp": t + 600, "iat": t, "iss": "http://localhost:3000", "aud": "http://localhost:3000"});
    assert_eq!(get(sign(&better_auth)).await, StatusCode::OK);
    // Within the 60 s leeway, a just-expired token still passes.
    assert_eq!(get(sign(&json!({"sub": "u", "exp": t - 10}))).await, StatusCode::OK);

    let strict = TestServer::start_with(
        backend,
        Options {
            rules: server::auth::ClaimRules {
                issuer: Some("https://auth.example".into()),
                audience: Some("task-api".into()),
            },
            ..Options::default()
        },
    )
    .await;
    let get_strict = |claims: Value| {
        let request = strict.raw().request(Method::GET, "/api/tasks").bearer_auth(sign(&claims));
        async move { request.send().await.unwrap().status() }
    };
    let good =
        json!({"sub": "u", "exp": t + 600, "iss": "https://auth.example", "aud": "task-api"});
    assert_eq!(get_strict(good).await, StatusCode::OK);
    for bad in [
        json!({"sub": "u", "exp": t + 600, "iss": "https://evil.example", "aud": "task-api"}),
        json!({"sub": "u", "exp": t + 600, "iss": "https://auth.example", "aud": "other"}),
        json!({"sub": "u", "exp": t + 600, "aud": "task-api"}),
        json!({"sub": "u", "exp": t + 600, "iss": "https://auth.example"}),
    ] {
        assert_eq!(get_strict(bad.clone()).await, StatusCode::UNAUTHORIZED, "{bad}");
    }
}

async fn framework_errors_are_problems(backend: Backend) {
    let server = TestServer::start(backend).await;
    // Unknown routes and methods are the point.
    server.expect_undeclared_requests();
    let client = server.client("alice");
    let task = create(&client, "keep").await;
    let raw = server.raw();
    let auth = token("alice");
    let send = |method: Method, path: &str, content_type: Option<&str>, body: Option<Vec<u8>>| {
        let mut request = raw.request(method, path).bearer_auth(&auth);
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        request.send()
    };
    let json = Some("application/json");
    let malformed =
        send(Method::POST, "/api/tasks", json, Some(b"{\"title\": ".to_vec())).await.unwrap();
    let body = expect_problem(malformed, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["detail"], "request body is not valid JSON");
    let not_json =
        send(Method::POST, "/api/tasks", Some("text/plain"), Some(b"{\"title\":\"x\"}".to_vec()))
            .await
            .unwrap();
    expect_problem(not_json, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let no_type =
        send(Method::POST, "/api/tasks", None, Some(b"{\"title\":\"x\"}".to_vec())).await.unwrap();
    expect_problem(no_type, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let form = send(
        Method::PUT,
        &format!("/api/tasks/{}", task.id),
        Some("application/x-www-form-urlencoded"),
        Some(b"title=x".to_vec()),
    )
    .await
    .unwrap();
    expect_problem(form, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let huge = format!("{{\"title\": \"t\", \"description\": \"{}\"}}", "z".repeat(70 * 1024));
    let too_large = send(Method::POST, "/api/tasks", json, Some(huge.into_bytes())).await.unwrap();
    expect_problem(too_large, StatusCode::PAYLOAD_TOO_LARGE).await;
    // Chunked (no Content-Length) is capped too.
    let chunks = futures::stream::iter((0..80).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])));
    let chunked = raw
        .request(Method::POST, "/api/tasks")
        .bearer_auth(&auth)
        .header(header::CONTENT_TYPE, "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    expect_problem(chunked, StatusCode::PAYLOAD_TOO_LARGE).await;
    let bad_id = send(Method::GET, "/api/tasks/abc", None, None).await.unwrap();
    expect_problem(bad_id, StatusCode::BAD_REQUEST).await;
    let huge_id =
        send(Method::GET, "/api/tasks/99999999999999999999999", None, None).await.unwrap();
    expect_problem(huge_id, StatusCode::BAD_REQUEST).await;
    let unknown = send(Method::GET, "/api/nothing/here/at/all", None, None).await.unwrap();
    expect_problem(unknown, StatusCode::NOT_FOUND).await;
    let unknown_root = send(Method::GET, "/nope", None, None).await.unwrap();
    expect_problem(unknown_root, StatusCode::NOT_FOUND).await;
    let wrong_method =
        send(Method::POST, &format!("/api/tasks/{}", task.id), json, Some(b"{}".to_vec()))
            .await
            .unwrap();
    expect_problem(wrong_method, StatusCode::METHOD_NOT_ALLOWED).await;
    let wrong_method = send(Method::DELETE, "/api/tasks", None, None).await.unwrap();
    expect_problem(wrong_method, StatusCode::METHOD_NOT_ALLOWED).await;

    // The request id is echoed, and a sane caller-chosen one is kept.
    let response = raw
        .request(Method::GET, "/health")
        .header("x-request-id", "trace-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-123");
    let response = raw.request(Method::GET, "/health").send().await.unwrap();
    assert!(!response.headers()["x-request-id"].is_empty());

    let after = list(&client).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].updated_at, task.updated_at);
}

async fn bodyless_requests_ignore_their_content_type(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client("frontend");
    let task = create(&client, "from the frontend").await;
    let raw = server.raw();
    let send = |method: Method, path: String| {
        raw.request(method, &path)
            .bearer_auth(token("frontend"))
            .header(header::CONTENT_TYPE, "application/json")
            .send()
    };
    assert_eq!(send(Method::GET, "/api/tasks".into()).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        send(Method::GET, format!("/api/tasks/{}", task.id)).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(send(Method::GET, "/health".into()).await.unwrap().status(), StatusCode::OK);
    let toggled =
        send(Method::PATCH, format!("/api/frontend/tasks/{}/complete", task.id)).await.unwrap();
    assert_eq!(toggled.status(), StatusCode::OK);
    // A body on the toggle is ignored, whatever it is.
    let with_body = raw
        .request(Method::PATCH, &format!("/api/tasks/{}/complete", task.id))
        .bearer_auth(token("frontend"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body("{ignored")
        .send()
        .await
        .unwrap();
    assert_eq!(with_body.status(), StatusCode::OK);
    let deleted = send(Method::DELETE, format!("/api/tasks/{}", task.id)).await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
}

async fn ids_beyond_32_bits_work(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client("big");
    create(&client, "before").await;
    let next_id: i64 = 5_000_000_000;
    match backend {
        Backend::Postgres | Backend::PgBouncer => {
            use sqlx::Connection;
            let mut db = sqlx::PgConnection::connect(&server.database_url).await.unwrap();
            // The simple query protocol: no prepared statement, so through a pooler too.
            sqlx::raw_sql("ALTER TABLE tasks ALTER COLUMN id RESTART WITH 5000000000")
                .execute(&mut db)
                .await
                .unwrap();
        }
        Backend::Sqlite => {
            use sqlx::Connection;
            let mut db = sqlx::SqliteConnection::connect(&server.database_url).await.unwrap();
            sqlx::query("UPDATE sqlite_sequence SET seq = $1 WHERE name = 'tasks'")
                .bind(next_id - 1)
                .execute(&mut db)
                .await
                .unwrap();
        }
    }
    let task = create(&client, "after").await;
    assert_eq!(task.id, next_id);
    assert_eq!(client.get_task().id(task.id).send().await.unwrap().id, next_id);
    assert!(client.toggle_task().id(task.id).send().await.unwrap().completed);
    assert_eq!(
        client.delete_task().id(task.id).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
}

async fn fifty_users_create_concurrently_and_see_only_their_own(backend: Backend) {
    let server = TestServer::start(backend).await;
    let users: Vec<String> = (0..50).map(|i| user(&format!("u{i}"))).collect();
    let per_user = 4;
    let runs = users.iter().map(|name| {
        let client = server.client(name);
        let name = name.clone();
        async move {
            let mut titles = HashSet::new();
            for n in 0..per_user {
                let title = format!("{name} #{n}");
                create(&client, &title).await;
                titles.insert(title);
            }
            let seen = list(&client).await;
            assert_eq!(seen.len(), per_user, "{name} sees exactly their own tasks");
            assert!(seen.iter().all(|t| t.user_id == name && titles.contains(&t.title)));
            seen.into_iter().map(|t| t.id).collect::<Vec<_>>()
        }
    });
    let ids: Vec<i64> = futures::future::join_all(runs).await.into_iter().flatten().collect();
    let distinct: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), 50 * per_user, "every task got its own id");
}

async fn concurrent_toggles_never_lose_one(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client("toggler");
    let task = create(&client, "flip me").await;
    let toggles: usize = 25;
    let results = futures::future::join_all((0..toggles).map(|_| {
        let client = &client;
        async move { client.toggle_task().id(task.id).send().await.unwrap().into_inner() }
    }))
    .await;
    let final_state = client.get_task().id(task.id).send().await.unwrap().into_inner();
    assert_eq!(final_state.completed, toggles % 2 == 1, "an odd number of flips ends completed");
    let trues = results.iter().filter(|t| t.completed).count();
    assert_eq!(trues, toggles.div_ceil(2), "each toggle saw its own state");
    let stamps: HashSet<_> = results.iter().map(|t| t.updated_at).collect();
    assert_eq!(stamps.len(), toggles, "every toggle moved updated_at");
}

async fn cors_preflight_needs_no_token(backend: Backend) {
    let frontend = "http://localhost:3000";
    let server = TestServer::start_with(
        backend,
        Options { cors_origins: vec![frontend.into()], ..Options::default() },
    )
    .await;
    // Preflights (OPTIONS) are no operation of the document.
    server.expect_undeclared_requests();
    let raw = server.raw();
    let preflight = raw
        .request(Method::OPTIONS, "/api/tasks")
        .header(header::ORIGIN, frontend)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization, content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], frontend);
    let response = raw
        .request(Method::GET, "/api/tasks")
        .header(header::ORIGIN, frontend)
        .bearer_auth(token("cors"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], frontend);
    // Cookie requests (`credentials: "include"`) need both; never `*` with credentials.
    assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert_eq!(preflight.headers()[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    let exposed =
        response.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS].to_str().unwrap().to_lowercase();
    for name in ["x-total-count", "link", "location", "etag"] {
        assert!(exposed.contains(name), "{exposed}");
    }
    // Errors carry CORS headers too, so the frontend can read them.
    let unauthorized = raw
        .request(Method::GET, "/api/tasks")
        .header(header::ORIGIN, frontend)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unauthorized.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], frontend);
    // Another origin is not allowed.
    let evil = raw
        .request(Method::OPTIONS, "/api/tasks")
        .header(header::ORIGIN, "https://evil.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .send()
        .await
        .unwrap();
    assert!(!evil.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    // Refused as a problem, like every other refusal.
    expect_problem(evil, StatusCode::FORBIDDEN).await;
}

fn etag_of(headers: &header::HeaderMap) -> String {
    headers[header::ETAG].to_str().unwrap().to_owned()
}

async fn etags_change_on_every_modification_and_guard_writes(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client("etag");
    let created =
        client.create_task().body(TaskCreate::builder().title("v1")).send().await.unwrap();
    let tag0 = etag_of(created.headers());
    assert!(tag0.starts_with('"') && tag0.ends_with('"'), "a strong tag: {tag0}");
    let id = created.into_inner().id;
    assert_eq!(etag_of(client.get_task().id(id).send().await.unwrap().headers()), tag0);

    let renamed = client
        .update_task()
        .id(id)
        .if_match(tag0.clone())
        .body(TaskUpdate::builder().title(update_title("v2")))
        .send()
        .await
        .unwrap();
    let tag1 = etag_of(renamed.headers());
    assert_ne!(tag1, tag0, "the tag changes with the task");

    // Stale, weak or foreign tags: 412 on every write, in both styles, and nothing changes.
    for stale in [tag0.clone(), format!("W/{tag1}"), "\"not-ours\"".to_owned()] {
        let update = TaskUpdate::builder().title(update_title("lost update"));
        let replies = [
            client.update_task().id(id).if_match(stale.clone()).body(update.clone()).send().await,
            client.toggle_task().id(id).if_match(stale.clone()).send().await,
            client
                .update_user_task()
                .user_id("etag")
                .id(id)
                .if_match(stale.clone())
                .body(update)
                .send()
                .await,
            client.toggle_user_task().user_id("etag").id(id).if_match(stale.clone()).send().await,
        ];
        for reply in replies {
            assert_eq!(problem(reply).status, 412, "{stale}");
        }
        let delete = client.delete_task().id(id).if_match(stale.clone()).send().await;
        assert_eq!(problem(delete).status, 412);
    }
    // A tag list split over two If-Match fields is one list; an If-Match that is not visible
    // ASCII is a 400, never a write without its condition.
    let split = server
        .raw()
        .request(Method::GET, &format!("/api/tasks/{id}"))
        .bearer_auth(token("etag"))
        .header(header::IF_NONE_MATCH, "\"1\"")
        .header(header::IF_NONE_MATCH, tag1.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(split.status(), StatusCode::NOT_MODIFIED, "the second field's tag counts too");
    let garbled = server
        .raw()
        .request(Method::PATCH, &format!("/api/tasks/{id}/complete"))
        .bearer_auth(token("etag"))
        .header(header::IF_MATCH, header::HeaderValue::from_bytes("\"ü\"".as_bytes()).unwrap())
        .send()
        .await
        .unwrap();
    expect_problem(garbled, StatusCode::BAD_REQUEST).await;
    let unchanged = client.get_task().id(id).send().await.unwrap();
    assert_eq!(etag_of(unchanged.headers()), tag1);
    assert_eq!(unchanged.title, "v2");
    assert!(!unchanged.completed);

    // `*` and lists holding the current tag pass.
    let toggled = client.toggle_task().id(id).if_match("*").send().await.unwrap();
    let tag2 = etag_of(toggled.headers());
    assert!(toggled.completed && tag2 != tag1);
    let listed = client
        .update_task()
        .id(id)
        .if_match(format!("{tag0}, {tag2}"))
        .body(TaskUpdate::builder().completed(false))
        .send()
        .await
        .unwrap();
    let tag3 = etag_of(listed.headers());

    // If-None-Match: 304 with the tag and no body when current (or `*`), else the task.
    for current in [tag3.clone(), format!("W/{tag3}"), "*".to_owned()] {
        let response = server
            .raw()
            .request(Method::GET, &format!("/api/tasks/{id}"))
            .bearer_auth(token("etag"))
            .header(header::IF_NONE_MATCH, &current)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{current}");
        assert_eq!(etag_of(response.headers()), tag3);
        assert!(response.bytes().await.unwrap().is_empty());
    }
    let fresh = client.get_task().id(id).if_none_match(tag2.clone()).send().await.unwrap();
    assert_eq!(fresh.status(), StatusCode::OK);
    // Lists ignore conditional headers.
    let list = server
        .raw()
        .request(Method::GET, "/api/tasks")
        .bearer_auth(token("etag"))
        .header(header::IF_NONE_MATCH, "*")
        .header(header::IF_MATCH, "\"0\"")
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK);

    // Another user's task, or a missing one, is 404 whatever the precondition.
    let other = server.client("someone-else");
    assert_eq!(problem(other.toggle_task().id(id).if_match(tag3.clone()).send().await).status, 404);
    assert_eq!(problem(other.delete_task().id(id).if_match("*").send().await).status, 404);
    assert_eq!(
        problem(client.delete_task().id(id + 999).if_match(tag3.clone()).send().await).status,
        404
    );

    let deleted = client.delete_task().id(id).if_match(tag3).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
}

async fn concurrent_writers_holding_one_etag_one_wins(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client("racer");
    let created =
        client.create_task().body(TaskCreate::builder().title("base")).send().await.unwrap();
    let tag = etag_of(created.headers());
    let id = created.into_inner().id;
    let writers = (0..10).map(|i| {
        let request = client
            .update_task()
            .id(id)
            .if_match(tag.clone())
            .body(TaskUpdate::builder().title(update_title(&format!("writer {i}"))));
        async move { request.send().await }
    });
    let replies = futures::future::join_all(writers).await;
    let winners: Vec<String> =
        replies.iter().filter_map(|r| r.as_ref().ok()).map(|t| t.title.clone()).collect();
    assert_eq!(winners.len(), 1, "exactly one conditional write wins");
    for reply in replies.into_iter().filter(Result::is_err) {
        assert_eq!(problem(reply).status, 412);
    }
    assert_eq!(client.get_task().id(id).send().await.unwrap().title, winners[0]);
}
