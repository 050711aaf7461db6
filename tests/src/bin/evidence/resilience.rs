//! `cargo xtask resilience`: what real server processes do when killed, and when there are two.
//!
//! 1. Crash durability, on PostgreSQL and on SQLite: 32 writers create and update tasks as fast
//!    as they can; the server gets SIGKILL mid-burst; a new process on the same database must
//!    return every acknowledged write with its acknowledged content, and nothing half-written.
//! 2. Scale-out: two processes on one PostgreSQL, sharing nothing else: writes through one are
//!    read through the other, and concurrent toggles through both end parity-correct.
//! 3. Graceful shutdown: a request whose body is still arriving when SIGTERM comes is answered
//!    (201) before the process exits cleanly.
//! 4. Exactly once, on PostgreSQL and on SQLite: clients create and toggle tasks with an
//!    `Idempotency-Key` and retry every request whose answer they did not get, while the server
//!    is killed with SIGKILL and restarted twice mid-burst; afterwards every create key made
//!    exactly one task and every toggle key flipped its task exactly once.
//! 5. A rolling restart behind HAProxy (`rolling.rs`): three processes on one PostgreSQL,
//!    restarted in turn under load, lose no request.
//!
//! The servers log at debug level, and the logs are scanned for secrets afterwards.

use std::{collections::HashSet, sync::Arc, time::Instant};

use client_sdk::types::{TaskCreate, TaskUpdate};
use integration_tests::{postgres::fresh_database, token, user};
use tokio::sync::Notify;

use crate::server_process::{self, ServerProcess};

const WRITERS: usize = 32;
/// Acknowledged writes to wait for before the kill.
const ACKS_BEFORE_KILL: usize = 400;

pub async fn run() -> anyhow::Result<()> {
    let binary = server_process::build()?;
    let scratch = tempfile::tempdir()?;
    let mut logs = Vec::new();

    let postgres = fresh_database().await;
    crash_durability("postgres", &binary, &postgres, scratch.path(), &mut logs).await?;
    let sqlite = format!("sqlite://{}", scratch.path().join("crash.db").display());
    crash_durability("sqlite", &binary, &sqlite, scratch.path(), &mut logs).await?;
    scale_out(&binary, &fresh_database().await, scratch.path(), &mut logs).await?;
    graceful_shutdown(&binary, &fresh_database().await, scratch.path(), &mut logs).await?;
    crate::rolling::run(&binary, &fresh_database().await, scratch.path(), &mut logs).await?;
    let postgres = fresh_database().await;
    exactly_once("postgres", &binary, &postgres, scratch.path(), &mut logs).await?;
    let sqlite = format!("sqlite://{}", scratch.path().join("once.db").display());
    exactly_once("sqlite", &binary, &sqlite, scratch.path(), &mut logs).await?;

    let lines = server_process::scan_logs(&logs)?;
    println!(
        "logs: {lines} lines from {} server processes, no secret, password or token",
        logs.len()
    );
    Ok(())
}

/// A task's content; every write sets all three, version `v` at once.
#[derive(Debug, Clone, PartialEq)]
struct Content {
    title: String,
    description: String,
    completed: bool,
}

impl Content {
    fn version(writer: usize, n: usize, v: u32) -> Self {
        Self {
            title: format!("w{writer}-{n}-v{v}"),
            description: format!("w{writer}-{n}-v{v} description"),
            completed: v % 2 == 1,
        }
    }
}

/// What a writer knows about one task: the last acknowledged content, and the content of a
/// write that was in flight when the server died (it may or may not have committed).
#[derive(Debug, Default)]
struct Record {
    id: Option<i64>,
    acked: Option<Content>,
    in_flight: Option<Content>,
}

fn count_ack(acks: &std::sync::atomic::AtomicUsize, enough: &Notify) {
    if acks.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 >= ACKS_BEFORE_KILL {
        enough.notify_one();
    }
}

async fn crash_durability(
    label: &str,
    binary: &std::path::Path,
    database_url: &str,
    scratch: &std::path::Path,
    logs: &mut Vec<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let log = scratch.join(format!("crash-{label}-1.log"));
    logs.push(log.clone());
    let mut server = ServerProcess::start(binary, database_url, log).await?;
    let users: Vec<String> = (0..WRITERS).map(|w| user(&format!("crash{w}"))).collect();
    let acks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let enough = Arc::new(Notify::new());

    let writers = users.iter().enumerate().map(|(writer, name)| {
        let client = client_sdk::authenticated(&server.base_url, &token(name)).expect("client");
        let acks = acks.clone();
        let enough = enough.clone();
        tokio::spawn(async move {
            let mut records: Vec<Record> = Vec::new();
            for n in 0.. {
                let v0 = Content::version(writer, n, 0);
                records.push(Record { in_flight: Some(v0.clone()), ..Record::default() });
                let body = TaskCreate::builder()
                    .title(v0.title.clone())
                    .description(Some(v0.description.parse().unwrap()))
                    .completed(v0.completed);
                let Ok(created) = client.create_task().body(body).send().await else {
                    break;
                };
                let record = records.last_mut().unwrap();
                record.id = Some(created.id);
                record.acked = record.in_flight.take();
                count_ack(&acks, &enough);
                for v in 1..=2 {
                    let next = Content::version(writer, n, v);
                    record.in_flight = Some(next.clone());
                    let body = TaskUpdate::builder()
                        .title(Some(next.title.parse().unwrap()))
                        .description(Some(next.description.parse().unwrap()))
                        .completed(next.completed);
                    if client.update_task().id(created.id).body(body).send().await.is_err() {
                        return records;
                    }
                    record.acked = record.in_flight.take();
                    count_ack(&acks, &enough);
                }
            }
            records
        })
    });
    let writers: Vec<_> = writers.collect();
    enough.notified().await;
    let killed_at = acks.load(std::sync::atomic::Ordering::SeqCst);
    server.kill_hard()?;
    let mut records = Vec::new();
    for writer in writers {
        records.push(writer.await?);
    }
    let acknowledged: usize = records.iter().flatten().filter(|r| r.acked.is_some()).count();

    let log = scratch.join(format!("crash-{label}-2.log"));
    logs.push(log.clone());
    let restarted = ServerProcess::start(binary, database_url, log).await?;
    let mut in_flight_committed = 0;
    for (writer, name) in users.iter().enumerate() {
        let client = client_sdk::authenticated(&restarted.base_url, &token(name))?;
        let stored = client.list_tasks().send().await?.into_inner();
        let mut seen = HashSet::new();
        for task in &stored {
            let content = Content {
                title: task.title.clone(),
                description: task.description.clone().unwrap_or_default(),
                completed: task.completed,
            };
            // Nothing half-written: every stored task is exactly one version someone wrote.
            let record = records[writer]
                .iter()
                .find(|r| {
                    r.id == Some(task.id)
                        || (r.id.is_none() && r.in_flight.as_ref() == Some(&content))
                })
                .ok_or_else(|| {
                    anyhow::anyhow!("{label}: task {} was never written by {name}", task.id)
                })?;
            let allowed = [record.acked.as_ref(), record.in_flight.as_ref()];
            anyhow::ensure!(
                allowed.contains(&Some(&content)),
                "{label}: task {} holds {content:?}, but only {allowed:?} were written",
                task.id
            );
            if record.acked.as_ref() != Some(&content) {
                in_flight_committed += 1;
            }
            seen.insert(task.id);
        }
        // Every acknowledged write survived.
        for record in records[writer].iter().filter(|r| r.acked.is_some()) {
            let id = record.id.expect("an acknowledged record has an id");
            anyhow::ensure!(
                seen.contains(&id),
                "{label}: acknowledged task {id} is gone after the crash"
            );
        }
    }
    println!(
        "crash ({label}): SIGKILL after {killed_at} acknowledged writes; {acknowledged} acknowledged \
         tasks checked after restart, all present with their acknowledged content \
         ({in_flight_committed} unacknowledged in-flight writes had committed), none half-written"
    );
    Ok(())
}

async fn scale_out(
    binary: &std::path::Path,
    database_url: &str,
    scratch: &std::path::Path,
    logs: &mut Vec<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let (log_a, log_b) = (scratch.join("scale-a.log"), scratch.join("scale-b.log"));
    logs.extend([log_a.clone(), log_b.clone()]);
    let a = ServerProcess::start(binary, database_url, log_a).await?;
    let b = ServerProcess::start(binary, database_url, log_b).await?;
    let name = user("scale");
    let via_a = client_sdk::authenticated(&a.base_url, &token(&name))?;
    let via_b = client_sdk::authenticated(&b.base_url, &token(&name))?;

    let created =
        via_a.create_task().body(TaskCreate::builder().title("written via A")).send().await?;
    let read = via_b.get_task().id(created.id).send().await?;
    anyhow::ensure!(read.title == "written via A", "B does not see A's write");
    let body = TaskUpdate::builder().title(Some("updated via B".parse().unwrap()));
    via_b.update_task().id(created.id).body(body).send().await?;
    anyhow::ensure!(via_a.get_task().id(created.id).send().await?.title == "updated via B");
    via_a.delete_task().id(created.id).send().await?;
    anyhow::ensure!(
        via_b.get_task().id(created.id).send().await.is_err(),
        "B still sees a task A deleted"
    );

    // Many users writing through alternating servers each see exactly their own through both.
    let names: Vec<String> = (0..20).map(|i| user(&format!("scale{i}"))).collect();
    let writes = names.iter().enumerate().map(|(i, name)| {
        let base = if i % 2 == 0 { &a.base_url } else { &b.base_url };
        let client = client_sdk::authenticated(base, &token(name)).expect("client");
        async move {
            for n in 0..5 {
                client
                    .create_task()
                    .body(TaskCreate::builder().title(format!("{n}")))
                    .send()
                    .await?;
            }
            anyhow::Ok(())
        }
    });
    for result in futures::future::join_all(writes).await {
        result?;
    }
    for name in &names {
        for base in [&a.base_url, &b.base_url] {
            let tasks = client_sdk::authenticated(base, &token(name))?
                .list_tasks()
                .send()
                .await?
                .into_inner();
            anyhow::ensure!(tasks.len() == 5 && tasks.iter().all(|t| &t.user_id == name));
        }
    }

    // Concurrent toggles through both processes never lose one.
    let task =
        via_a.create_task().body(TaskCreate::builder().title("flip")).send().await?.into_inner();
    let toggles = 40;
    let started = Instant::now();
    let flips = (0..toggles).map(|i| {
        let client = if i % 2 == 0 { &via_a } else { &via_b };
        async move { client.toggle_task().id(task.id).send().await.map(|t| t.into_inner()) }
    });
    let results: Vec<_> =
        futures::future::join_all(flips).await.into_iter().collect::<Result<_, _>>()?;
    let trues = results.iter().filter(|t| t.completed).count();
    let stamps: HashSet<_> = results.iter().map(|t| t.updated_at).collect();
    let final_state = via_b.get_task().id(task.id).send().await?.completed;
    anyhow::ensure!(trues == toggles / 2, "{trues} of {toggles} toggles saw `completed`");
    anyhow::ensure!(stamps.len() == toggles, "two toggles saw the same state");
    anyhow::ensure!(!final_state, "an even number of toggles must end where it started");
    println!(
        "scale-out: 2 processes on one PostgreSQL; cross-process reads and writes agree for 21 users; \
         {toggles} concurrent toggles through both in {:?} ended parity-correct",
        started.elapsed()
    );
    // Both shut down cleanly on SIGTERM.
    let (mut a, mut b) = (a, b);
    a.stop()?;
    b.stop()?;
    Ok(())
}

async fn graceful_shutdown(
    binary: &std::path::Path,
    database_url: &str,
    scratch: &std::path::Path,
    logs: &mut Vec<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use futures::StreamExt as _;

    let log = scratch.join("graceful.log");
    logs.push(log.clone());
    let mut server = ServerProcess::start(binary, database_url, log).await?;
    let name = user("graceful");
    // A create whose body trickles in over ~600 ms, so that it is in flight at the signal.
    let chunks = ["{\"title\": ", "\"in flight ", "at shutdown\"}"];
    let body = futures::stream::iter(chunks).then(|chunk| async move {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        Ok::<_, std::io::Error>(chunk)
    });
    let request = client_sdk::http_client_builder()
        .build()?
        .post(format!("{}/api/tasks", server.base_url))
        .bearer_auth(token(&name))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let in_flight = tokio::spawn(request);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let signalled = Instant::now();
    server.terminate()?;
    let response = in_flight.await??;
    anyhow::ensure!(
        response.status() == reqwest::StatusCode::CREATED,
        "the in-flight request got {} instead of 201",
        response.status()
    );
    server.wait_for_exit()?;
    println!(
        "graceful shutdown: a request in flight at SIGTERM was answered 201; the process exited \
         cleanly {:?} after the signal",
        signalled.elapsed()
    );
    Ok(())
}

/// Clients of the exactly-once run, and the tasks each makes.
const KEYED_CLIENTS: usize = 16;
const KEYED_TASKS: usize = 40;
/// Server lives: killed with SIGKILL after each but the last.
const LIVES: usize = 3;

/// Sends `request` until the server answers it (not 5xx, not a lost connection, not a 409 for
/// a key still in flight): the retry loop of a client on a flaky network. Returns the answer,
/// how many attempts went unanswered, and whether the answer was a replay (the request had
/// run before, but its answer was lost).
async fn until_answered<T, F, Fut>(mut request: F) -> (T, usize, bool)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<
            Output = Result<
                client_sdk::ResponseValue<T>,
                client_sdk::Error<client_sdk::types::Problem>,
            >,
        >,
{
    let mut retries = 0;
    loop {
        match request().await {
            Ok(response) => {
                let replayed = response.headers().contains_key("idempotent-replayed");
                return (response.into_inner(), retries, replayed);
            }
            Err(err) if err.status().is_some_and(|s| s.is_client_error() && s != 409) => {
                panic!("a keyed request was refused: {err:?}")
            }
            Err(_) => {
                retries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn exactly_once(
    label: &str,
    binary: &std::path::Path,
    database_url: &str,
    scratch: &std::path::Path,
    logs: &mut Vec<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let log = scratch.join(format!("once-{label}-0.log"));
    logs.push(log.clone());
    let mut server = ServerProcess::start(binary, database_url, log).await?;
    let port = server.port();
    let users: Vec<String> = (0..KEYED_CLIENTS).map(|c| user(&format!("once{c}"))).collect();
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients = users.iter().map(|name| {
        let client = client_sdk::authenticated(&server.base_url, &token(name)).expect("client");
        let answered = answered.clone();
        tokio::spawn(async move {
            let (mut retries, mut replays) = (0, 0);
            for n in 0..KEYED_TASKS {
                let create_key: client_sdk::types::IdempotencyKey =
                    format!("create-{n}").parse().unwrap();
                let (task, unanswered, replayed) = until_answered(|| {
                    client
                        .create_task()
                        .idempotency_key(create_key.clone())
                        .body(TaskCreate::builder().title(format!("task {n}")).completed(false))
                        .send()
                })
                .await;
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let toggle_key: client_sdk::types::IdempotencyKey =
                    format!("toggle-{n}").parse().unwrap();
                let (toggled, unanswered_toggles, replayed_toggle) = until_answered(|| {
                    client.toggle_task().id(task.id).idempotency_key(toggle_key.clone()).send()
                })
                .await;
                assert!(toggled.completed, "the toggle's answer is the first toggle's");
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                retries += unanswered + unanswered_toggles;
                replays += usize::from(replayed) + usize::from(replayed_toggle);
            }
            (retries, replays)
        })
    });
    let clients: Vec<_> = clients.collect();
    let total = KEYED_CLIENTS * KEYED_TASKS * 2;
    for life in 1..LIVES {
        // Kill at a third and at two thirds of the burst.
        while answered.load(std::sync::atomic::Ordering::Relaxed) < total * life / LIVES {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        server.kill_hard()?;
        let log = scratch.join(format!("once-{label}-{life}.log"));
        logs.push(log.clone());
        server = ServerProcess::start_on_port(binary, database_url, log, &[], port).await?;
    }
    let (mut retries, mut replays) = (0, 0);
    for client in clients {
        let (client_retries, client_replays) = client.await?;
        retries += client_retries;
        replays += client_replays;
    }
    let (mut tasks, mut duplicates) = (0, 0);
    for name in &users {
        let client = client_sdk::authenticated(&server.base_url, &token(name))?;
        let stored = client.list_tasks().send().await?.into_inner();
        let mut titles = HashSet::new();
        for task in &stored {
            anyhow::ensure!(task.completed, "{label}: {} was not toggled exactly once", task.title);
            if !titles.insert(task.title.clone()) {
                duplicates += 1;
            }
        }
        anyhow::ensure!(
            titles.len() == KEYED_TASKS,
            "{label}: {name} has {} distinct tasks, {KEYED_TASKS} keys were sent",
            titles.len()
        );
        tasks += stored.len();
    }
    anyhow::ensure!(duplicates == 0, "{label}: {duplicates} tasks were created twice");
    println!(
        "exactly once ({label}): {} create keys and as many toggle keys, {retries} unanswered \
         attempts retried across {} SIGKILLs ({replays} had run, and were answered by a \
         replay); {tasks} tasks, {duplicates} duplicates, every toggle applied once",
        KEYED_CLIENTS * KEYED_TASKS,
        LIVES - 1
    );
    Ok(())
}
