//! The quickstart: create a task (safely retried), list, ask whether it changed, keep a copy in
//! sync from the change feed, read a problem.
//!
//! ```sh
//! export TASK_API_URL=http://127.0.0.1:8000
//! export TASK_API_TOKEN=$(cargo run -q -p server -- token --sub alice)
//! cargo run -p client-sdk --example quickstart
//! ```
//!
//! (The crate's documentation shows this file, and the integration tests run `quickstart`
//! against a live server.)

use std::collections::BTreeMap;

use client_sdk::{
    IfChanged, SendIfChanged as _,
    types::{Change, IdempotencyKey, Task, TaskCreate, TaskStatus},
};

pub async fn quickstart(base_url: &str, token: &str) -> Result<(), Box<dyn std::error::Error>> {
    let client = client_sdk::authenticated(base_url, token)?;

    // Create: the full task comes back, its URL and ETag in headers. With an Idempotency-Key,
    // a retry after a lost answer gets the same answer instead of a second task.
    let key: IdempotencyKey = "quickstart-create-1".parse()?;
    let create = || {
        client.create_task().idempotency_key(key.clone()).body(
            TaskCreate::builder()
                .title("Buy groceries")
                .description(Some("milk, eggs".parse().unwrap())),
        )
    };
    let created = create().send().await?;
    let etag = created.headers()["etag"].to_str()?.to_owned();
    println!("created task {} at {:?}", created.id, created.headers().get("location"));
    let retried = create().send().await?;
    assert_eq!(retried.id, created.id, "a retry with the key is the same task");

    // List: only the caller's tasks; the total is in `X-Total-Count`.
    let pending = client.list_tasks().status(TaskStatus::Pending).send().await?;
    for task in pending.iter() {
        println!("{} {} ({})", task.id, task.title, task.description.as_deref().unwrap_or("-"));
    }

    // Has it changed since our copy? A 304 is an answer, not an error.
    match client.get_task().id(created.id).if_none_match(etag).send_if_changed().await? {
        IfChanged::Unchanged { .. } => println!("task {} is unchanged", created.id),
        IfChanged::Changed(task) => println!("task {} changed: {}", task.id, task.title),
    }

    // Keep a local copy: a full sync first, then only what changed since the cursor (each
    // change once, deletions included). A 410 means the cursor is too old: start over.
    let mut copy: BTreeMap<i64, Task> = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = client.list_changes();
        if let Some(cursor) = &cursor {
            request = request.since(cursor);
        }
        let batch = request.send().await?.into_inner();
        for change in batch.changes {
            match change {
                Change::Upsert { task } => {
                    copy.insert(task.id, task);
                }
                Change::Delete { id } => {
                    copy.remove(&id);
                }
            }
        }
        cursor = Some(batch.cursor);
        if !batch.more {
            break;
        }
    }
    println!("{} tasks in the local copy; next sync from {cursor:?}", copy.len());

    // Errors are typed problems.
    match client.get_task().id(999_999_999).send().await {
        Err(client_sdk::Error::ErrorResponse(problem)) => {
            println!("{} {}: {}", problem.status, problem.title, problem.detail);
        }
        other => println!("unexpected: {other:?}"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("TASK_API_URL").unwrap_or_else(|_| "http://127.0.0.1:8000".into());
    let token = std::env::var("TASK_API_TOKEN").map_err(|_| "set TASK_API_TOKEN")?;
    quickstart(&url, &token).await
}
