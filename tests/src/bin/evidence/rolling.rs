//! A rolling restart behind a real load balancer, run by `cargo xtask resilience`: Debian's
//! HAProxy, health-checking `/health/ready`, in front of three server processes on one
//! PostgreSQL; a steady load of mixed requests through it while each instance in turn gets
//! SIGTERM, exits, and starts again on its port. Every request must succeed: no retry in the
//! clients, and none in HAProxy (`retries 0`), so that only the drain can make it so.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use integration_tests::{token, user};
use serde_json::{Value, json};

use crate::server_process::ServerProcess;

const INSTANCES: usize = 3;
const CLIENTS: usize = 8;
/// The drain the instances run with: longer than HAProxy needs to see a 503 (`inter` × `fall`).
const DRAIN_SECS: &str = "2";

/// One restarted instance: how long until its readiness said 503, until the process exited, and
/// until it was serving again.
struct Restart {
    not_ready: Duration,
    exited: Duration,
    serving: Duration,
}

pub async fn run(
    binary: &Path,
    database_url: &str,
    scratch: &Path,
    logs: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let env = [("SHUTDOWN_DRAIN_SECS", DRAIN_SECS)];
    let mut instances = Vec::new();
    for index in 0..INSTANCES {
        let log = scratch.join(format!("rolling-{index}.log"));
        logs.push(log.clone());
        instances.push(ServerProcess::start_with(binary, database_url, log, &env).await?);
    }
    let front_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let _haproxy = HaProxy::start(scratch, front_port, &instances)?;
    let front = format!("http://127.0.0.1:{front_port}");
    wait_for(&format!("{front}/health/ready"), Duration::from_secs(10)).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let load = Load {
                front: front.clone(),
                owner: user("rolling"),
                stop: stop.clone(),
                sent: sent.clone(),
                failed: failed.clone(),
                failures: failures.clone(),
            };
            tokio::spawn(load.run())
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut restarts = Vec::new();
    for (index, instance) in instances.iter_mut().enumerate() {
        let port = instance.port();
        let signalled = Instant::now();
        instance.terminate()?;
        wait_until_not_ready(&instance.base_url).await?;
        let not_ready = signalled.elapsed();
        instance.wait_for_exit()?;
        let exited = signalled.elapsed();
        let log = scratch.join(format!("rolling-{index}-again.log"));
        logs.push(log.clone());
        *instance = ServerProcess::start_on_port(binary, database_url, log, &env, port).await?;
        let serving = signalled.elapsed();
        restarts.push(Restart { not_ready, exited, serving });
        // HAProxy takes it back after two good checks; let the load reach it before the next.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }

    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "rolling restart behind HAProxy: {INSTANCES} instances restarted in turn under \
         {CLIENTS} clients; {sent} requests, {failed} failed"
    );
    for (index, restart) in restarts.iter().enumerate() {
        println!(
            "  instance {index}: not ready {:?} after SIGTERM, exited after {:?}, serving again \
             after {:?}",
            restart.not_ready, restart.exited, restart.serving
        );
    }
    anyhow::ensure!(sent > 100, "too few requests to prove anything: {sent}");
    anyhow::ensure!(
        failed == 0,
        "requests failed during the rolling restart: {:?}",
        failures.lock().unwrap()
    );
    Ok(())
}

/// One client of the steady load: create, read, toggle and list, over and over.
struct Load {
    front: String,
    owner: String,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Load {
    async fn run(self) {
        let http = client_sdk::http_client_builder().build().expect("http client");
        let token = token(&self.owner);
        let mut round = 0;
        while !self.stop.load(Ordering::Relaxed) {
            round += 1;
            let created = self
                .send(
                    http.post(format!("{}/api/tasks", self.front))
                        .bearer_auth(&token)
                        .json(&json!({"title": format!("round {round}")})),
                )
                .await;
            let Some(task) = created else { continue };
            let task = format!("{}/api/tasks/{}", self.front, task["id"]);
            self.send(http.get(&task).bearer_auth(&token)).await;
            self.send(http.patch(format!("{task}/complete")).bearer_auth(&token)).await;
            let list = format!("{}/api/tasks?limit=20", self.front);
            self.send(http.get(list).bearer_auth(&token)).await;
        }
    }

    /// The answer's body when it is a success; a failure is counted, with what it was.
    async fn send(&self, request: reqwest::RequestBuilder) -> Option<Value> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let failure = match request.send().await {
            Ok(response) if response.status().is_success() => {
                return Some(response.json().await.unwrap_or(Value::Null));
            }
            Ok(response) => format!("status {}", response.status()),
            Err(err) => format!("{err}"),
        };
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.failures.lock().unwrap().push(failure);
        None
    }
}

/// Debian's HAProxy in the foreground; killed when dropped.
struct HaProxy(std::process::Child);

impl HaProxy {
    fn start(scratch: &Path, port: u16, instances: &[ServerProcess]) -> anyhow::Result<Self> {
        let servers: String = instances
            .iter()
            .enumerate()
            .map(|(index, instance)| {
                format!("    server s{index} 127.0.0.1:{} check\n", instance.port())
            })
            .collect();
        // Probes every 100 ms; one failure takes an instance out, two successes put it back.
        // No retries and no redispatch: a request sent to an instance must be answered by it.
        let config = format!(
            "global\n    maxconn 2000\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    \
             timeout server 30s\n    retries 0\n\
             frontend api\n    bind 127.0.0.1:{port}\n    default_backend tasks\n\
             backend tasks\n    balance roundrobin\n    option httpchk GET /health/ready\n    \
             http-check expect status 200\n    default-server inter 100ms fall 1 rise 2\n\
             {servers}"
        );
        let path = scratch.join("haproxy.cfg");
        std::fs::write(&path, config)?;
        let child = std::process::Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start haproxy (Debian's package haproxy)")?;
        Ok(Self(child))
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `url` until it answers 200.
async fn wait_for(url: &str, limit: Duration) -> anyhow::Result<()> {
    let http = client_sdk::http_client_builder().build()?;
    let started = Instant::now();
    loop {
        if http.get(url).send().await.is_ok_and(|response| response.status().is_success()) {
            return Ok(());
        }
        anyhow::ensure!(started.elapsed() < limit, "{url} never answered 200");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `base`'s `/health/ready` until it is not 200: a 503 while draining, or no answer at
/// all (without a drain, the listener is gone at once).
async fn wait_until_not_ready(base: &str) -> anyhow::Result<()> {
    let http = client_sdk::http_client_builder().build()?;
    let started = Instant::now();
    loop {
        let answer = http.get(format!("{base}/health/ready")).send().await;
        if !answer.is_ok_and(|response| response.status().is_success()) {
            return Ok(());
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(5), "{base} stayed ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
