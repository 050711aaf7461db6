//! The real `server` binary as a child process: built once, started on a free port with its
//! JSON logs in a file, waited on until `/health` answers, killed or stopped at will.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use integration_tests::SECRET;

use crate::root;

/// Builds the server binary (debug profile) and returns its path.
pub fn build() -> anyhow::Result<PathBuf> {
    build_profile("debug")
}

/// Builds the server binary with the release profile and returns its path.
pub fn build_release() -> anyhow::Result<PathBuf> {
    build_profile("release")
}

/// Builds the minimal peer the bench compares us with (`tests/src/bin/peer.rs`), release.
pub fn build_peer() -> anyhow::Result<PathBuf> {
    build_binary("integration-tests", "peer", "release")
}

fn build_profile(profile: &str) -> anyhow::Result<PathBuf> {
    build_binary("server", "server", profile)
}

fn build_binary(package: &str, binary: &str, profile: &str) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--package", package, "--bin", binary])
        .args((profile == "release").then_some("--release"))
        .current_dir(root())
        .status()?;
    anyhow::ensure!(status.success(), "building {binary} failed");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    Ok(target.join(profile).join(binary))
}

pub struct ServerProcess {
    child: Child,
    pub base_url: String,
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts `binary` on `database_url` and waits until it is healthy.
    pub async fn start(binary: &Path, database_url: &str, log: PathBuf) -> anyhow::Result<Self> {
        Self::start_with(binary, database_url, log, &[]).await
    }

    /// [`start`](Self::start), with more environment (which wins over the defaults).
    pub async fn start_with(
        binary: &Path,
        database_url: &str,
        log: PathBuf,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Self::start_on_port(binary, database_url, log, env, port).await
    }

    /// [`start_with`](Self::start_with) on `port` (e.g. a killed server's, to restart it where
    /// its clients expect it).
    pub async fn start_on_port(
        binary: &Path,
        database_url: &str,
        log: PathBuf,
        env: &[(&str, &str)],
        port: u16,
    ) -> anyhow::Result<Self> {
        Self::launch(Command::new(binary), database_url, log, env, port).await
    }

    /// [`start_with`](Self::start_with), `binary` run by `wrapper` (a program and its
    /// arguments, such as valgrind's), which must pass the environment on.
    pub async fn start_wrapped(
        wrapper: &[&str],
        binary: &Path,
        database_url: &str,
        log: PathBuf,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let (program, arguments) = wrapper.split_first().context("an empty wrapper")?;
        let mut command = Command::new(program);
        command.args(arguments).arg(binary);
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Self::launch(command, database_url, log, env, port).await
    }

    async fn launch(
        mut command: Command,
        database_url: &str,
        log: PathBuf,
        env: &[(&str, &str)],
        port: u16,
    ) -> anyhow::Result<Self> {
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let child = command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", database_url)
            .env("BETTER_AUTH_SECRET", SECRET)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "debug,hyper=info,h2=info")
            // No drain unless a run wants one (`rolling.rs`): SIGTERM closes at once.
            .env("SHUTDOWN_DRAIN_SECS", "0")
            .envs(env.iter().copied())
            // Never pick up a developer's .env.
            .current_dir(log.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("start the server binary")?;
        let mut server = Self { child, base_url: format!("http://127.0.0.1:{port}"), log };
        server.wait_healthy(Duration::from_secs(30)).await?;
        Ok(server)
    }

    /// Polls `/health` until it answers 200 (the process must still be running).
    async fn wait_healthy(&mut self, limit: Duration) -> anyhow::Result<()> {
        let http = client_sdk::http_client_builder().build()?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "the server exited during start-up ({status}); see {}",
                    self.log.display()
                );
            }
            let health = http.get(format!("{}/health", self.base_url)).send().await;
            if health.is_ok_and(|response| response.status().is_success()) {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < limit,
                "the server was not healthy within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.base_url.rsplit(':').next().and_then(|port| port.parse().ok()).expect("a port")
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill_hard(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then wait for the graceful shutdown.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.terminate()?;
        self.wait_for_exit()
    }

    /// Sends SIGTERM: the server stops accepting and lets in-flight requests finish.
    pub fn terminate(&self) -> anyhow::Result<()> {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        Ok(())
    }

    /// Waits for the process to exit, which must be cleanly.
    pub fn wait_for_exit(&mut self) -> anyhow::Result<()> {
        let status = tokio::task::block_in_place(|| self.child.wait())?;
        anyhow::ensure!(status.success(), "the server did not shut down cleanly: {status}");
        Ok(())
    }

    /// What the process has used so far, from `/proc`.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        let pid = self.pid();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces) start at ")".
        let fields: Vec<&str> =
            stat.rsplit_once(')').context("/proc/PID/stat")?.1.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        let mut wake_ups = 0;
        for thread in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
            // A thread that has just exited has no status left: it woke no more.
            let Ok(status) = std::fs::read_to_string(thread.path().join("status")) else {
                continue;
            };
            wake_ups += field_of(&status, "voluntary_ctxt_switches:").unwrap_or(0);
        }
        Ok(Usage { cpu_seconds: ticks / 100.0, wake_ups })
    }

    /// Peak resident memory, from `/proc`.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmHWM:")
    }

    /// Starts the peak RSS afresh (`/proc/PID/clear_refs`), to measure one run's peak.
    pub fn reset_peak_rss(&self) -> anyhow::Result<()> {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5")
            .context("reset the peak RSS")
    }

    /// Resident memory, from `/proc`.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmRSS:")
    }

    fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/PID/status"))
    }
}

/// A process's use of the machine, counted from its start.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// User and system CPU time.
    pub cpu_seconds: f64,
    /// Times one of its threads blocked and was woken again (voluntary context switches,
    /// summed over the threads alive now): a count that, unlike CPU time, does not drift with
    /// the machine's speed.
    pub wake_ups: u64,
}

/// The number after `name` in a `/proc` file of `name: value` lines.
fn field_of(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|value| value.trim().parse().ok())
}

/// The system calls of a process, counted by `perf stat` (the `raw_syscalls:sys_enter`
/// tracepoint) from [`SyscallCount::start`] to [`SyscallCount::finish`]: every call, sockets
/// included, which `/proc/PID/io` does not count.
pub struct SyscallCount(Child);

impl SyscallCount {
    pub fn start(pid: u32) -> anyhow::Result<Self> {
        let perf = Command::new("perf")
            .args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start perf (Debian's linux-perf) to count system calls")?;
        // perf attaches to the process's threads after it starts; give it that moment.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(Self(perf))
    }

    pub fn finish(self) -> anyhow::Result<u64> {
        let status = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -INT perf failed");
        let output = self.0.wait_with_output()?;
        let text = String::from_utf8_lossy(&output.stderr);
        // CSV: the count, its unit (empty), the event's name, …
        text.lines()
            .find(|line| line.contains("raw_syscalls:sys_enter"))
            .and_then(|line| line.split(',').next()?.parse().ok())
            .with_context(|| format!("no system call count in perf's output: {text}"))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails if any line of the logs carries the JWT secret, the database password or a token.
pub fn scan_logs(logs: &[PathBuf]) -> anyhow::Result<usize> {
    let mut lines = 0;
    for log in logs {
        let text = std::fs::read_to_string(log)?;
        for line in text.lines() {
            lines += 1;
            anyhow::ensure!(
                !integration_tests::logs::is_secret_bearing(line),
                "{} logged a secret, password or token: {line}",
                log.display()
            );
        }
    }
    Ok(lines)
}
