//! What live event streams cost, for `cargo xtask bench`: the four-operation mix with and
//! without 1,000 idle streams open on the same instance (10 for each of 100 users who are not in
//! the mix; three alternated rounds), the server's resident memory per open stream, and the
//! delay from a write's response to its event on the writer's other streams (10 of them,
//! following as a frontend does, while the mix runs beside the idle streams). The probe runs
//! beside the mix without streams too, so that the two runs differ by the idle streams alone.
//! Targets (the live-changes issue): the mix loses at most 10 %, at most 20 KB per idle
//! stream, event delay p99 at most 250 ms.

use std::{
    fmt::Write as _,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use client_sdk::live::{self, LiveEvent};
use futures::StreamExt as _;
use integration_tests::token;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::{
    bench::{ServiceRun, wrk},
    server_process::ServerProcess,
};

/// Idle streams opened, over this many users.
const STREAMS: usize = 1000;
const STREAM_USERS: usize = 100;
/// Rounds of the mix without and with the streams.
const ROUNDS: usize = 3;
/// The probe: its user's streams, and how often it writes.
const PROBE_STREAMS: usize = 10;
const PROBE_WRITE_EVERY: Duration = Duration::from_millis(50);

/// What the server needs for this: 10 streams per user, and 1,000 connections from one address.
pub const SERVER_ENV: [(&str, &str); 2] =
    [("EVENT_STREAMS_PER_USER", "16"), ("MAX_CONNECTIONS_PER_ADDRESS", "0")];

pub async fn report(
    server: &ServerProcess,
    script: &Path,
    duration: Duration,
) -> anyhow::Result<String> {
    // This process holds 1,000 sockets too.
    rlimit::increase_nofile_limit(u64::MAX).context("raise the descriptor limit")?;
    // Alternated, since one pair on this kind of machine moves by ±15 %: each round runs the mix
    // without streams, opens them, runs it again beside them, and closes them. The probe writes
    // and follows in both runs, so that the two differ by the idle streams alone.
    let mut pairs = Vec::with_capacity(ROUNDS);
    let mut delays = Vec::new();
    let mut memory = None;
    for round in 0..ROUNDS {
        let (without, _) = mix_beside_probe(server, script, &format!("probe-{round}-a"), duration)
            .await
            .context("the mix without idle streams")?;
        let rss_before = server.rss_kib()?;
        let mut idle = Vec::with_capacity(STREAMS);
        for n in 0..STREAMS {
            let user = format!("listener-{round}-{}", n % STREAM_USERS);
            idle.push(open_idle(server, &user).await?);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The first round's: later ones reuse what the first one's streams freed.
        memory.get_or_insert((rss_before, server.rss_kib()?));

        let (with, probed) =
            mix_beside_probe(server, script, &format!("probe-{round}-b"), duration)
                .await
                .context("the mix beside idle streams")?;
        delays.extend(probed);
        // Reset, not closed: a stream's server side notices a clean close only when its next
        // keep-alive comment fails, up to 15 s later, and would still be open in the next round.
        for socket in idle {
            socket.set_zero_linger()?;
        }
        // The server notices the closes (and gives the places back) before the next round.
        tokio::time::sleep(Duration::from_secs(1)).await;
        pairs.push((without, with));
    }

    delays.sort_by(f64::total_cmp);
    let percentile = |p: f64| delays[((delays.len() - 1) as f64 * p) as usize];
    let (rss_before, rss_open) = memory.unwrap_or_default();
    let per_stream = (rss_open.saturating_sub(rss_before)) as f64 * 1024.0 / STREAMS as f64;
    let mut kept: Vec<f64> = pairs
        .iter()
        .map(|(without, with)| with.requests_per_second / without.requests_per_second * 100.0)
        .collect();
    let rounds = kept.iter().map(|kept| format!("{kept:.1} %")).collect::<Vec<_>>().join(", ");
    kept.sort_by(f64::total_cmp);
    let mut report = String::new();
    writeln!(report, "| round | live streams | req/s (c=50) | p99 ms | server CPU µs/req |")?;
    writeln!(report, "|---|---|---|---|---|")?;
    for (round, (without, with)) in pairs.into_iter().enumerate() {
        for (label, run) in [("none", without), ("1,000 idle", with)] {
            let ServiceRun { requests_per_second, p99_ms, cpu_micros_per_request, .. } = run;
            writeln!(
                report,
                "| {} | {label} | {requests_per_second:.0} | {p99_ms:.2} | \
                 {cpu_micros_per_request:.0} |",
                round + 1
            )?;
        }
    }
    writeln!(
        report,
        "\nThe mix with 1,000 idle streams open: {:.1} % of its throughput without, the median of \
         {ROUNDS} alternated rounds ({rounds}; target ≥ 90 %). \
         Resident memory per idle stream: {:.1} KB (target ≤ 20 KB; {:.1} MB → {:.1} MB). \
         Delay from a write's response to its event on the writer's {PROBE_STREAMS} other \
         streams, during the mix beside them ({} events): p50 {:.1} ms, p99 {:.1} ms (target p99 ≤ 250 ms).",
        kept[kept.len() / 2],
        per_stream / 1000.0,
        rss_before as f64 / 1024.0,
        rss_open as f64 / 1024.0,
        delays.len(),
        percentile(0.5),
        percentile(0.99),
    )?;
    Ok(report)
}

/// The mix for `duration`, while `probe_user` writes and follows its writes on its streams;
/// the mix's figures and the probe's event delays.
async fn mix_beside_probe(
    server: &ServerProcess,
    script: &Path,
    probe_user: &str,
    duration: Duration,
) -> anyhow::Result<(ServiceRun, Vec<f64>)> {
    let probing = tokio::spawn(probe(server.base_url.clone(), probe_user.to_owned(), duration));
    let run = tokio::task::block_in_place(|| wrk(server, script, 50, duration))?;
    Ok((run, probing.await??))
}

/// A stream that nobody reads: its request sent and its response head taken.
async fn open_idle(server: &ServerProcess, user: &str) -> anyhow::Result<TcpStream> {
    let address = server.base_url.trim_start_matches("http://");
    let mut socket = TcpStream::connect(address).await?;
    let request = format!(
        "GET /api/tasks/events HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {}\r\n\r\n",
        token(user)
    );
    socket.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        anyhow::ensure!(socket.read(&mut byte).await? == 1, "a stream closed at once");
        head.push(byte[0]);
    }
    anyhow::ensure!(head.starts_with(b"HTTP/1.1 200"), "a stream was refused");
    Ok(socket)
}

/// Writes as the probe user every [`PROBE_WRITE_EVERY`] for `duration`, while its streams
/// follow; each event's delay after the write's response, in ms.
async fn probe(base_url: String, user: String, duration: Duration) -> anyhow::Result<Vec<f64>> {
    let user = user.as_str();
    // A write is known by the `updated_at` it gave its task (one task, toggled again and again:
    // the probe user's task count stays put).
    type Written = chrono::DateTime<chrono::Utc>;
    let answered: Arc<Mutex<std::collections::HashMap<Written, Instant>>> = Arc::default();
    let received: Arc<Mutex<Vec<(Written, Instant)>>> = Arc::default();
    let mut followers = Vec::new();
    for _ in 0..PROBE_STREAMS {
        let client = client_sdk::streaming(&base_url, &token(user))?;
        let response = client.follow_changes().send().await?;
        let received = received.clone();
        followers.push(tokio::spawn(async move {
            let mut events = std::pin::pin!(live::events(response.into_inner()));
            while let Some(Ok(LiveEvent::Change { change, .. })) = events.next().await {
                if let client_sdk::types::Change::Upsert { task } = change {
                    received.lock().unwrap().push((task.updated_at, Instant::now()));
                }
            }
        }));
    }
    let writer = client_sdk::authenticated(&base_url, &token(user))?;
    let body = client_sdk::types::TaskCreate::builder().title("probe");
    let task = writer.create_task().body(body).send().await?.into_inner();
    tokio::time::sleep(Duration::from_millis(200)).await;
    received.lock().unwrap().clear();
    let started = Instant::now();
    let mut ticks = tokio::time::interval(PROBE_WRITE_EVERY);
    while started.elapsed() < duration {
        ticks.tick().await;
        let toggled = writer.toggle_task().id(task.id).send().await?.into_inner();
        answered.lock().unwrap().insert(toggled.updated_at, Instant::now());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for follower in followers {
        follower.abort();
    }
    let answered = answered.lock().unwrap();
    let received = received.lock().unwrap();
    let delays: Vec<f64> = received
        .iter()
        .filter_map(|(written, at)| {
            let answered = answered.get(written)?;
            Some(at.saturating_duration_since(*answered).as_secs_f64() * 1000.0)
        })
        .collect();
    anyhow::ensure!(
        delays.len() >= answered.len() * PROBE_STREAMS * 9 / 10,
        "events went missing: {} of {} arrived",
        delays.len(),
        answered.len() * PROBE_STREAMS
    );
    Ok(delays)
}
