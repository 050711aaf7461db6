//! `cargo xtask soak --minutes N`: 100 users run a mixed workload against a server process for
//! N minutes (fractions allowed). Reports requests, unexpected responses (must be 0) and the
//! server's resident memory after warm-up and at the end (growth must stay under 10%).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use client_sdk::types::{TaskCreate, TaskUpdate};
use integration_tests::{postgres::fresh_database, token, user};

use crate::server_process::{self, ServerProcess};

/// Tasks a user keeps at most; beyond it they delete.
const MAX_TASKS_PER_USER: usize = 20;
const MAX_RSS_GROWTH: f64 = 0.10;

pub struct Options {
    minutes: f64,
    users: usize,
    sqlite: bool,
}

impl Options {
    pub fn parse(args: &[&str]) -> anyhow::Result<Self> {
        let mut options = Self { minutes: 1.0, users: 100, sqlite: false };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
            match *flag {
                "--minutes" => options.minutes = value.parse()?,
                "--users" => options.users = value.parse()?,
                "--database" => {
                    options.sqlite = match *value {
                        "sqlite" => true,
                        "postgres" => false,
                        _ => anyhow::bail!("--database is postgres or sqlite"),
                    }
                }
                _ => anyhow::bail!("unknown option {flag}"),
            }
        }
        anyhow::ensure!(
            options.minutes > 0.0 && options.minutes <= 24.0 * 60.0,
            "--minutes out of range"
        );
        anyhow::ensure!((1..=1000).contains(&options.users), "--users out of range");
        Ok(options)
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    unexpected: AtomicU64,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let binary = server_process::build()?;
    let scratch = tempfile::tempdir()?;
    let database_url = if options.sqlite {
        format!("sqlite://{}", scratch.path().join("soak.db").display())
    } else {
        fresh_database().await
    };
    let log = scratch.path().join("soak.log");
    let mut server = ServerProcess::start(&binary, &database_url, log.clone()).await?;
    let duration = Duration::from_secs_f64(options.minutes * 60.0);
    // Long enough for pools, caches and SQLite's page cache to fill.
    let warm_up = (duration / 4).min(Duration::from_secs(60));
    let started = Instant::now();
    let deadline = started + duration;
    let counters = Arc::new(Counters::default());

    let workers: Vec<_> = (0..options.users)
        .map(|i| {
            let client =
                client_sdk::authenticated(&server.base_url, &token(&user(&format!("soak{i}"))))
                    .expect("client");
            let counters = counters.clone();
            tokio::spawn(async move { workload(client, i as u64, deadline, &counters).await })
        })
        .collect();

    tokio::time::sleep(warm_up).await;
    let rss_after_warm_up = server.rss_kib()?;
    for worker in workers {
        worker.await?;
    }
    let rss_at_end = server.rss_kib()?;
    let elapsed = started.elapsed();
    let requests = counters.requests.load(Ordering::SeqCst);
    let unexpected = counters.unexpected.load(Ordering::SeqCst);
    let growth = rss_at_end as f64 / rss_after_warm_up as f64 - 1.0;
    server.stop()?;
    let lines = server_process::scan_logs(&[log])?;
    println!(
        "soak ({}): {} users for {:.1?}: {requests} requests ({:.0}/s), {unexpected} unexpected; \
         server RSS {rss_after_warm_up} KiB after {warm_up:?} warm-up, {rss_at_end} KiB at the end \
         ({:+.1}%); {lines} log lines, no secrets",
        if options.sqlite { "sqlite" } else { "postgres" },
        options.users,
        elapsed,
        requests as f64 / elapsed.as_secs_f64(),
        growth * 100.0,
    );
    anyhow::ensure!(unexpected == 0, "{unexpected} responses the workload did not expect");
    anyhow::ensure!(
        growth < MAX_RSS_GROWTH,
        "server memory grew {:.1}% after warm-up",
        growth * 100.0
    );
    Ok(())
}

/// One user's loop: mostly reads, some writes, every response checked for its expected status.
async fn workload(client: client_sdk::Client, seed: u64, deadline: Instant, counters: &Counters) {
    let mut random = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random
    };
    let mut mine: Vec<i64> = Vec::new();
    while Instant::now() < deadline {
        let roll = next() % 100;
        let pick = |n: u64| mine[(n % mine.len() as u64) as usize];
        let ok = if mine.is_empty() || roll < 20 {
            let title = format!("task {}", next() % 1000);
            match client.create_task().body(TaskCreate::builder().title(title)).send().await {
                Ok(task) => {
                    mine.push(task.id);
                    true
                }
                Err(_) => false,
            }
        } else if roll < 50 {
            client.list_tasks().send().await.is_ok_and(|tasks| tasks.len() == mine.len())
        } else if roll < 70 {
            client.get_task().id(pick(next())).send().await.is_ok()
        } else if roll < 80 {
            let body = TaskUpdate::builder()
                .title(Some(format!("renamed {}", next() % 1000).parse().unwrap()));
            client.update_task().id(pick(next())).body(body).send().await.is_ok()
        } else if roll < 95 {
            client.toggle_task().id(pick(next())).send().await.is_ok()
        } else {
            let id = mine.swap_remove((next() % mine.len() as u64) as usize);
            client.delete_task().id(id).send().await.is_ok()
        };
        counters.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            counters.unexpected.fetch_add(1, Ordering::Relaxed);
        }
        if mine.len() > MAX_TASKS_PER_USER {
            let id = mine.remove(0);
            let ok = client.delete_task().id(id).send().await.is_ok();
            counters.requests.fetch_add(1, Ordering::Relaxed);
            if !ok {
                counters.unexpected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
