//! Richer tasks, end to end on every database: priority, due date and tags on every task, and
//! the list's filters, aliases and sort keys, each held to a model computed here from the tasks
//! the server returned.

use std::num::NonZeroU64;

use chrono::{DateTime, Duration, Utc};
use client_sdk::types::{Priority, Task, TaskCreate, TaskUpdate};
use integration_tests::{Backend, TestServer, expect_problem, on_every_database, token};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

on_every_database!(
    the_new_fields_default_normalise_and_round_trip,
    bad_fields_are_422s_that_name_them_and_change_nothing,
    filters_compose_and_count_exactly,
    every_filter_sort_and_order_walks_each_task_once,
    list_parameter_errors_and_aliases,
    tags_stay_exact_under_concurrent_updates,
    search_follows_every_write_and_takes_any_character,
);

fn total_count(headers: &header::HeaderMap) -> i64 {
    headers["x-total-count"].to_str().unwrap().parse().unwrap()
}

fn next_link(headers: &header::HeaderMap) -> Option<String> {
    let link = headers.get(header::LINK)?.to_str().unwrap();
    let target = link.strip_prefix('<')?.split_once('>')?.0;
    Some(target.to_owned())
}

/// `GET path` as `user`: the status, the total and the tasks (when 200).
async fn get_list(server: &TestServer, user: &str, path: &str) -> (StatusCode, i64, Vec<Task>) {
    let response =
        server.raw().request(Method::GET, path).bearer_auth(token(user)).send().await.unwrap();
    let status = response.status();
    if status != StatusCode::OK {
        return (status, -1, Vec::new());
    }
    let total = total_count(response.headers());
    (status, total, response.json().await.unwrap())
}

async fn post(server: &TestServer, user: &str, body: Value) -> reqwest::Response {
    let request = server.raw().request(Method::POST, "/api/tasks").bearer_auth(token(user));
    request.json(&body).send().await.unwrap()
}

async fn the_new_fields_default_normalise_and_round_trip(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client("rich");
    // Through the SDK: every field, typed.
    let created = client
        .create_task()
        .body(
            TaskCreate::builder()
                .title("Buy groceries")
                .priority(Priority::High)
                .due_date(Some("2026-12-24".to_owned()))
                .tags(Some(vec![" Errands ".parse().unwrap(), "home".parse().unwrap()])),
        )
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.priority, Priority::High);
    assert_eq!(created.due_date.unwrap().to_rfc3339(), "2026-12-24T00:00:00+00:00");
    assert_eq!(created.tags, ["errands", "home"]);
    // Without them: the defaults, always present.
    let plain = post(&server, "rich", json!({"title": "plain"})).await;
    assert_eq!(plain.status(), StatusCode::CREATED);
    let plain: Value = plain.json().await.unwrap();
    assert_eq!(plain["priority"], "medium");
    assert_eq!(plain["due_date"], Value::Null);
    assert_eq!(plain["tags"], json!([]));
    // Any letter case in, lower case out; a date-time in any offset comes back in UTC.
    let body = json!({
        "title": "t", "priority": "URGENT", "due_date": "2026-12-24T10:30:00+02:00",
        "tags": ["Work", "work", "WORK", "home"]
    });
    let mixed: Value = post(&server, "rich", body).await.json().await.unwrap();
    assert_eq!(mixed["priority"], "urgent");
    assert_eq!(mixed["due_date"], "2026-12-24T08:30:00.000000Z");
    assert_eq!(mixed["tags"], json!(["work", "home"]));

    // PUT is partial; `null` clears the due date; `tags` replaces the whole set.
    let id = created.id;
    let before = client.get_task().id(id).send().await.unwrap();
    let etag = before.headers()[header::ETAG].to_str().unwrap().to_owned();
    let update = TaskUpdate::builder().tags(Some(vec!["work".parse().unwrap()]));
    let updated = client.update_task().id(id).body(update).send().await.unwrap();
    assert_ne!(updated.headers()[header::ETAG].to_str().unwrap(), etag, "a tag change is a change");
    let updated = updated.into_inner();
    assert_eq!((updated.priority, updated.tags.clone()), (Priority::High, vec!["work".to_owned()]));
    assert_eq!(updated.due_date, created.due_date);
    let request = server.raw().request(Method::PUT, &format!("/api/tasks/{id}"));
    let cleared = request.bearer_auth(token("rich")).json(&json!({"due_date": null, "tags": []}));
    let cleared: Value = cleared.send().await.unwrap().json().await.unwrap();
    assert_eq!((cleared["due_date"].clone(), cleared["tags"].clone()), (Value::Null, json!([])));
    assert_eq!(cleared["priority"], "high");
    let toggled = client.toggle_task().id(id).send().await.unwrap().into_inner();
    assert_eq!(toggled.priority, Priority::High, "a toggle keeps the other fields");

    // The change feed carries the fields, and the other path style serves them too.
    let feed = client.list_changes().send().await.unwrap().into_inner();
    let text = serde_json::to_string(&feed).unwrap();
    assert!(
        text.contains("\"priority\":\"urgent\"") && text.contains("\"tags\":[\"work\",\"home\"]")
    );
    let path = "/api/rich/tasks?priority=urgent";
    let (status, total, tasks) = get_list(&server, "rich", path).await;
    assert_eq!((status, total, tasks.len()), (StatusCode::OK, 1, 1));
    assert_eq!(tasks[0].tags, ["work", "home"]);
}

async fn bad_fields_are_422s_that_name_them_and_change_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let cases = [
        (json!({"title": "t", "priority": "highest"}), "priority"),
        (json!({"title": "t", "priority": 3}), "priority"),
        (json!({"title": "t", "due_date": "next week"}), "due_date"),
        (json!({"title": "t", "due_date": "10000-01-01T00:00:00Z"}), "due_date"),
        (json!({"title": "t", "tags": ["x".repeat(33)]}), "tags"),
        (json!({"title": "t", "tags": ["  "]}), "tags"),
        (json!({"title": "t", "tags": ["a,b"]}), "tags"),
        (
            json!({"title": "t", "tags": (0..21).map(|n| format!("t{n}")).collect::<Vec<_>>()}),
            "tags",
        ),
        (json!({"title": "t", "tags": "work"}), "tags"),
    ];
    for (body, field) in cases {
        let response = post(&server, "strict", body.clone()).await;
        let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, [field], "{body}");
    }
    let created: Value = post(&server, "strict", json!({"title": "t"})).await.json().await.unwrap();
    let id = created["id"].as_i64().unwrap();
    let request = server.raw().request(Method::PUT, &format!("/api/tasks/{id}"));
    let response = request.bearer_auth(token("strict")).json(&json!({"priority": "none"}));
    expect_problem(response.send().await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY).await;
    let (_, total, tasks) = get_list(&server, "strict", "/api/tasks").await;
    assert_eq!(total, 1);
    assert_eq!(tasks[0].priority, Priority::Medium);
}

/// The model: which of `tasks` a filter keeps.
#[derive(Default, Clone)]
struct Model {
    query: String,
    search: Option<&'static str>,
    priorities: Vec<Priority>,
    tags: Vec<&'static str>,
    completed: Option<bool>,
    due_after: Option<DateTime<Utc>>,
    due_before: Option<DateTime<Utc>>,
    overdue: bool,
}

impl Model {
    fn keeps(&self, task: &Task, now: DateTime<Utc>) -> bool {
        let text = |s: &str| s.to_lowercase();
        self.search.is_none_or(|needle| {
            text(&task.title).contains(needle)
                || task.description.as_deref().is_some_and(|d| text(d).contains(needle))
        }) && (self.priorities.is_empty() || self.priorities.contains(&task.priority))
            && self.tags.iter().all(|tag| task.tags.iter().any(|t| t == tag))
            && self.completed.is_none_or(|c| task.completed == c)
            && self.due_after.is_none_or(|at| task.due_date.is_some_and(|due| due >= at))
            && self.due_before.is_none_or(|at| task.due_date.is_some_and(|due| due < at))
            && (!self.overdue || (!task.completed && task.due_date.is_some_and(|due| due < now)))
    }
}

/// 60 tasks of one user (and a few of another, who must never show up) with every mix of the
/// fields; returns the user's tasks as the server holds them.
async fn seed(server: &TestServer, user: &str) -> Vec<Task> {
    let words = ["Milk run", "Call MOM", "pay rent", "milkshake recipe", "Fix bike", "Read book"];
    let tags = [vec![], vec!["home"], vec!["work"], vec!["home", "work"], vec!["errands", "home"]];
    let priorities = ["low", "medium", "high", "urgent"];
    let base = DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z").unwrap().to_utc();
    let mut state = 17_u64;
    let mut next = |n: u64| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    for i in 0..60 {
        let due = match next(4) {
            0 => Value::Null,
            // Some due dates are shared, so that ties fall back to the id.
            k => json!((base + Duration::days((next(6) as i64 - 2) * k as i64)).to_rfc3339()),
        };
        let description = if next(3) == 0 { json!("remember the MILK") } else { Value::Null };
        let body = json!({
            "title": format!("{} {i}", words[next(words.len() as u64) as usize]),
            "description": description,
            "completed": next(3) == 0,
            "priority": priorities[next(4) as usize],
            "due_date": due,
            "tags": tags[next(tags.len() as u64) as usize],
        });
        assert_eq!(post(server, user, body).await.status(), StatusCode::CREATED);
        if i % 10 == 0 {
            let other =
                json!({"title": "milk for someone else", "tags": ["home"], "priority": "high"});
            assert_eq!(post(server, "someone-else", other).await.status(), StatusCode::CREATED);
        }
    }
    // Move a few forward, so that `updated` differs from `created`.
    let (_, _, tasks) = get_list(server, user, "/api/tasks").await;
    for task in tasks.iter().step_by(7) {
        let request =
            server.raw().request(Method::PATCH, &format!("/api/tasks/{}/complete", task.id));
        assert!(request.bearer_auth(token(user)).send().await.unwrap().status().is_success());
    }
    get_list(server, user, "/api/tasks").await.2
}

fn models() -> Vec<Model> {
    let at = |text: &str| DateTime::parse_from_rfc3339(text).unwrap().to_utc();
    let mut models = vec![
        Model { query: "search=milk".into(), search: Some("milk"), ..Model::default() },
        Model { query: "q=MoM".into(), search: Some("mom"), ..Model::default() },
        Model {
            query: "priority=high".into(),
            priorities: vec![Priority::High],
            ..Model::default()
        },
        Model {
            query: "priority=Low,URGENT".into(),
            priorities: vec![Priority::Low, Priority::Urgent],
            ..Model::default()
        },
        Model { query: "tag=home".into(), tags: vec!["home"], ..Model::default() },
        Model { query: "tag=home&tag=Work".into(), tags: vec!["home", "work"], ..Model::default() },
        Model {
            query: "tag=home,errands".into(),
            tags: vec!["home", "errands"],
            ..Model::default()
        },
        Model { query: "completed=true".into(), completed: Some(true), ..Model::default() },
        Model { query: "status=pending".into(), completed: Some(false), ..Model::default() },
        Model {
            query: "due_after=2026-12-01&due_before=2026-12-05T00:00:00Z".into(),
            due_after: Some(at("2026-12-01T00:00:00Z")),
            due_before: Some(at("2026-12-05T00:00:00Z")),
            ..Model::default()
        },
        Model { query: "overdue=true".into(), overdue: true, ..Model::default() },
    ];
    models.push(Model {
        query:
            "search=milk&tag=home&priority=high,urgent,medium&completed=false&due_after=2026-11-01"
                .into(),
        search: Some("milk"),
        tags: vec!["home"],
        priorities: vec![Priority::High, Priority::Urgent, Priority::Medium],
        completed: Some(false),
        due_after: Some(at("2026-11-01T00:00:00Z")),
        ..Model::default()
    });
    models
}

async fn filters_compose_and_count_exactly(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tasks = seed(&server, "filters").await;
    let now = Utc::now();
    for model in models() {
        let expected: Vec<i64> =
            tasks.iter().filter(|t| model.keeps(t, now)).map(|t| t.id).collect();
        assert!(
            !expected.is_empty() || model.query.contains("search=milk&"),
            "{}: a filter that keeps nothing tests little",
            model.query
        );
        for style in ["/api/tasks", "/api/filters/tasks"] {
            let path = format!("{style}?{}", model.query);
            let (status, total, listed) = get_list(&server, "filters", &path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            let ids: Vec<i64> = listed.iter().map(|t| t.id).collect();
            assert_eq!(ids, expected, "{path}");
            assert_eq!(total, expected.len() as i64, "{path}");
            // A paged total counts the filtered set, not the user's tasks.
            let (_, total, page) = get_list(&server, "filters", &format!("{path}&limit=2")).await;
            assert_eq!(total, expected.len() as i64, "{path}&limit=2");
            assert_eq!(page.len(), expected.len().min(2));
            let (_, total, _) = get_list(&server, "filters", &format!("{path}&offset=1000")).await;
            assert_eq!(total, expected.len() as i64, "{path}&offset=1000");
        }
    }
}

/// The expected order of a sort key, from the tasks' own fields (tasks without a due date last
/// in either order; ties by id).
fn sorted(mut tasks: Vec<Task>, sort: &str, desc: bool) -> Vec<i64> {
    tasks.sort_by(|a, b| {
        let key = match sort {
            "created" => a.created_at.cmp(&b.created_at),
            "updated" => a.updated_at.cmp(&b.updated_at),
            "title" => a.title.cmp(&b.title),
            "priority" => a.priority.cmp(&b.priority),
            "due_date" => match (a.due_date, b.due_date) {
                (Some(x), Some(y)) => {
                    let order = x.cmp(&y);
                    return (if desc { order.reverse() } else { order }).then(if desc {
                        b.id.cmp(&a.id)
                    } else {
                        a.id.cmp(&b.id)
                    });
                }
                (Some(_), None) => return std::cmp::Ordering::Less,
                (None, Some(_)) => return std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            },
            _ => unreachable!(),
        };
        let order = key.then(a.id.cmp(&b.id));
        if desc { order.reverse() } else { order }
    });
    tasks.iter().map(|t| t.id).collect()
}

async fn every_filter_sort_and_order_walks_each_task_once(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tasks = seed(&server, "walker").await;
    let now = Utc::now();
    let mut filters = models();
    filters.insert(0, Model::default());
    for model in filters {
        let kept: Vec<Task> = tasks.iter().filter(|t| model.keeps(t, now)).cloned().collect();
        for sort in ["created", "updated", "title", "due_date", "priority"] {
            for desc in [false, true] {
                let expected = sorted(kept.clone(), sort, desc);
                let order = if desc { "desc" } else { "asc" };
                let query = format!("{}&sort={sort}&order={order}", model.query);
                let (_, _, whole) =
                    get_list(&server, "walker", &format!("/api/tasks?{query}")).await;
                let whole: Vec<i64> = whole.iter().map(|t| t.id).collect();
                assert_eq!(whole, expected, "{query}");
                let mut next = Some(format!("/api/tasks?{query}&limit=7"));
                let mut walked = Vec::new();
                while let Some(target) = next {
                    let response = server.raw().request(Method::GET, &target);
                    let response = response.bearer_auth(token("walker")).send().await.unwrap();
                    assert_eq!(response.status(), StatusCode::OK, "{target}");
                    assert_eq!(total_count(response.headers()), expected.len() as i64, "{target}");
                    next = next_link(response.headers());
                    let page: Vec<Task> = response.json().await.unwrap();
                    assert!(page.len() == 7 || next.is_none(), "{target}: a short page links on");
                    walked.extend(page.iter().map(|t| t.id));
                }
                assert_eq!(walked, expected, "walking {query}");
            }
        }
    }
}

async fn list_parameter_errors_and_aliases(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tasks = seed(&server, "params").await;
    let fields = |problem: &Value| -> Vec<String> {
        problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap().to_owned())
            .collect()
    };
    for (query, status, field) in [
        ("priority=highest", 422, Some("priority")),
        ("priority=high,", 422, Some("priority")),
        (&*format!("search={}", "x".repeat(101)), 422, Some("search")),
        ("search=", 422, Some("search")),
        ("q=a&search=b", 422, Some("q")),
        (&*format!("tag={}", "t".repeat(33)), 422, Some("tag")),
        ("status=pending&completed=true", 422, Some("completed")),
        ("sort=title&sort_by=priority", 422, Some("sort_by")),
        ("order=asc&sort_order=desc", 422, Some("sort_order")),
        ("due_before=soon", 400, None),
        ("due_after=2026-13-01", 400, None),
        ("completed=maybe", 400, None),
        ("sort_by=importance", 400, None),
    ] {
        let response = server.raw().request(Method::GET, &format!("/api/tasks?{query}"));
        let response = response.bearer_auth(token("params")).send().await.unwrap();
        let body = expect_problem(response, StatusCode::from_u16(status).unwrap()).await;
        if let Some(field) = field {
            assert_eq!(fields(&body), [field], "{query}");
        }
    }
    // The aliases are the same listing.
    for (alias, canonical) in [
        ("sort_by=created_at&sort_order=desc", "sort=created&order=desc"),
        ("sort_by=updated_at", "sort=updated"),
        ("sort=title&sort_by=title", "sort=title"),
        ("sort=created&sort_by=created_at", "sort=created"),
        ("q=milk", "search=milk"),
        ("completed=false", "status=pending"),
        ("status=completed&completed=true", "status=completed"),
    ] {
        let (status, total, listed) =
            get_list(&server, "params", &format!("/api/tasks?{alias}")).await;
        assert_eq!(status, StatusCode::OK, "{alias}");
        let (_, expected_total, expected) =
            get_list(&server, "params", &format!("/api/tasks?{canonical}")).await;
        let ids = |tasks: &[Task]| tasks.iter().map(|t| t.id).collect::<Vec<_>>();
        assert_eq!((total, ids(&listed)), (expected_total, ids(&expected)), "{alias}");
    }
    // The SDK spells them too.
    let client = server.client("params");
    let page = client.list_tasks().priority("urgent").limit(NonZeroU64::new(50).unwrap());
    let page = page.send().await.unwrap();
    let urgent = tasks.iter().filter(|t| t.priority == Priority::Urgent).count() as i64;
    assert_eq!(total_count(page.headers()), urgent);
}

/// Many updates of one task's tags at once: the tag filter ends agreeing with the task.
async fn tags_stay_exact_under_concurrent_updates(backend: Backend) {
    let server = TestServer::start(backend).await;
    let created: Value = post(&server, "racer", json!({"title": "t", "tags": ["start"]}))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().unwrap();
    let sets: Vec<Vec<String>> =
        (0..16).map(|n| (0..=(n % 4)).map(|k| format!("tag{}", (n + k) % 6)).collect()).collect();
    let mut writers = Vec::new();
    for tags in sets.clone() {
        let request = server.raw().request(Method::PUT, &format!("/api/tasks/{id}"));
        let request = request.bearer_auth(token("racer")).json(&json!({ "tags": tags }));
        writers.push(tokio::spawn(async move { request.send().await.unwrap().status() }));
    }
    for writer in writers {
        assert_eq!(writer.await.unwrap(), StatusCode::OK);
    }
    let (_, _, tasks) = get_list(&server, "racer", "/api/tasks").await;
    let final_tags = tasks[0].tags.clone();
    assert!(sets.contains(&final_tags), "{final_tags:?} is one of the sets sent");
    for tag in (0..6).map(|n| format!("tag{n}")).chain(["start".to_owned()]) {
        let (_, total, _) = get_list(&server, "racer", &format!("/api/tasks?tag={tag}")).await;
        assert_eq!(total, i64::from(final_tags.contains(&tag)), "tag {tag}, final {final_tags:?}");
    }
}

/// The search index follows creates, title and description changes and deletes, and a search
/// means its characters literally (`%`, `_`, `\`, quotes), short or long.
async fn search_follows_every_write_and_takes_any_character(backend: Backend) {
    let server = TestServer::start(backend).await;
    let count = |query: &str| {
        let path = format!("/api/tasks?limit=10&search={}", urlencode(query));
        let server = &server;
        async move { get_list(server, "finder", &path).await.1 }
    };
    let created: Value = post(&server, "finder", json!({"title": "Dentist appointment"}))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().unwrap();
    post(&server, "someone-else", json!({"title": "dentist for someone else"})).await;
    assert_eq!(count("DENT").await, 1);
    assert_eq!(count("nt").await, 1, "two characters");
    let put = |body: Value| {
        let request = server.raw().request(Method::PUT, &format!("/api/tasks/{id}"));
        request.bearer_auth(token("finder")).json(&body).send()
    };
    assert_eq!(put(json!({"title": "Doctor"})).await.unwrap().status(), StatusCode::OK);
    assert_eq!((count("dent").await, count("doct").await), (0, 1));
    assert_eq!(
        put(json!({"description": "see the DENTIST"})).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(count("dentist").await, 1, "the description");
    assert_eq!(put(json!({"description": null})).await.unwrap().status(), StatusCode::OK);
    assert_eq!(count("dentist").await, 0);
    for title in ["100% done_x", r#"say "hi" now"#, r"back\slash"] {
        assert_eq!(
            post(&server, "finder", json!({ "title": title })).await.status(),
            StatusCode::CREATED
        );
    }
    for (query, expected) in [
        ("%", 1),
        ("0% d", 1),
        ("_", 1),
        ("e_x", 1),
        ("%%", 0),
        (r#""hi""#, 1),
        ("\"", 1),
        (r"k\s", 1),
        ("\\", 1),
        ("*", 0),
        ("hi OR x", 0),
    ] {
        assert_eq!(count(query).await, expected, "search {query:?}");
    }
    let request = server.raw().request(Method::DELETE, &format!("/api/tasks/{id}"));
    request.bearer_auth(token("finder")).send().await.unwrap();
    assert_eq!(count("doct").await, 0, "deleted");
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(
            |b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            },
        )
        .collect()
}
