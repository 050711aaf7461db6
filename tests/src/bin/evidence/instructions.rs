//! `bench --instructions`: the server's instructions and allocations per request of the mix,
//! counted by callgrind. CPU time on a shared machine moves by more than most changes to the
//! server's own code save; these counts do not (two runs of one build agree within a few
//! tenths of a percent), so a step on the server side can be judged by them.
//!
//! The server runs under `valgrind --tool=callgrind` with instrumentation off through start-up.
//! It is switched on for a warm-up of the mix (`wrk`, one thread, four connections, the bench's
//! script with a fixed random seed), the counts are zeroed, the mix runs for the measured window,
//! and the counts are dumped. What is counted is the server process's user-space instructions:
//! the kernel's work (system calls, wake-ups) and PostgreSQL's are not in them.
//!
//! Needs `valgrind` (Debian's package).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context as _;
use integration_tests::postgres::{PgCluster, fresh_database_on};

use crate::{bench, server_process::ServerProcess};

/// The warm-up before the counts are zeroed: connections open, statements prepared.
const WARM_UP: Duration = Duration::from_secs(3);
/// The measured window (about 400 requests a second under callgrind on this project's machine).
const WINDOW: Duration = Duration::from_secs(20);
/// Functions listed by their own instructions.
const TOP_FUNCTIONS: usize = 25;
/// The allocator's entry points (mimalloc's, under Rust's global allocator).
const ALLOCATIONS: [&str; 3] = ["mi_malloc_aligned", "mi_zalloc_aligned", "mi_realloc_aligned"];

/// Runs the mix under callgrind and reports its counts per request.
pub async fn report(binary: &Path, scratch: &Path) -> anyhow::Result<String> {
    anyhow::ensure!(
        Command::new("valgrind").arg("--version").output().is_ok(),
        "valgrind is not installed (Debian: apt-get install valgrind)"
    );
    let cluster = PgCluster::start_durable();
    let database_url = fresh_database_on(&cluster.admin_url()).await;
    let mut env = bench::server_env();
    // Seeded at full speed, then served under callgrind.
    let script = {
        let mut server =
            ServerProcess::start_with(binary, &database_url, scratch.join("seed.log"), &env)
                .await?;
        let script = bench::seed_and_write_script(&server, scratch).await?;
        server.stop()?;
        fixed_seed(&script)?
    };
    // callgrind_control finds the process by a pipe named after the user and the host names
    // in both processes' environments (the server's is cleared, and `HOST` is its listen
    // address): the same names on both sides.
    let names = [("USER", "bench"), ("LOGNAME", "bench"), ("HOST", "127.0.0.1")];
    env.extend(names);
    let out_file = scratch.join("callgrind.out");
    let wrapper = [
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        "--instr-atstart=no".to_owned(),
        format!("--callgrind-out-file={}", out_file.display()),
    ];
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let log = scratch.join("callgrind.log");
    let mut server = ServerProcess::start_wrapped(&wrapper, binary, &database_url, log, &env)
        .await
        .context("the server under valgrind")?;
    let control = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("callgrind_control")
            .envs(names)
            // Where the server's (cleared) environment has valgrind put its pipe.
            .env_remove("TMPDIR")
            .args(args)
            .arg(server.pid().to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .context("callgrind_control")?;
        anyhow::ensure!(status.success(), "callgrind_control {args:?} failed");
        Ok(())
    };
    control(&["--instr=on"])?;
    wrk(&server, &script, WARM_UP)?;
    control(&["--zero"])?;
    let requests = wrk(&server, &script, WINDOW)?;
    control(&["--dump"])?;
    server.stop()?;
    let dump = PathBuf::from(format!("{}.1", out_file.display()));
    let profile = Profile::read(&dump)?;
    Ok(profile.report(requests))
}

/// The bench's script with a fixed seed: every build is measured on the same requests.
fn fixed_seed(script: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(script)?;
    anyhow::ensure!(text.contains("math.randomseed(os.time())"), "the mix's seed moved");
    let path = script.with_file_name("mix-fixed-seed.lua");
    std::fs::write(&path, text.replace("math.randomseed(os.time())", "math.randomseed(19)"))?;
    Ok(path)
}

/// One `wrk` run at four connections; the number of requests it made, all of them answered.
fn wrk(server: &ServerProcess, script: &Path, duration: Duration) -> anyhow::Result<f64> {
    let output = Command::new("wrk")
        .args(["--latency", "-t", "1", "-c", "4", "-d", &format!("{}s", duration.as_secs())])
        .arg("-s")
        .arg(script)
        .arg(&server.base_url)
        .output()
        .context("run wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(output.status.success(), "wrk failed: {text}");
    let run = bench::parse_wrk(&text, 0.0)?;
    anyhow::ensure!(run.errors == 0, "{} requests failed under callgrind: {text}", run.errors);
    Ok(run.requests)
}

/// What a callgrind dump says: instructions in all, each function's own, and how often each
/// function was called.
#[derive(Debug, Default)]
struct Profile {
    total: u64,
    own: HashMap<String, u64>,
    calls: HashMap<String, u64>,
}

impl Profile {
    /// Reads a dump of one event (`Ir`) in callgrind's format: `fn=` opens a function's cost
    /// lines, `cfn=` names a callee, `calls=` counts calls to it and is followed by the line
    /// of what they cost (inclusive, so not the caller's own). Names are compressed: `(id) name`
    /// the first time, `(id)` after.
    fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("callgrind's dump {}", path.display()))?;
        Self::parse(&text)
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        let mut profile = Profile::default();
        let mut names: HashMap<String, String> = HashMap::new();
        let mut name_of = |spec: &str| -> String {
            let spec = spec.trim();
            match spec.strip_prefix('(').and_then(|rest| rest.split_once(')')) {
                Some((id, "")) => names.get(id).cloned().unwrap_or_default(),
                Some((id, name)) => {
                    let name = name.trim().to_owned();
                    names.insert(id.to_owned(), name.clone());
                    name
                }
                None => spec.to_owned(),
            }
        };
        let (mut function, mut callee) = (String::new(), String::new());
        let mut call_cost_next = false;
        for line in text.lines() {
            if let Some(spec) = line.strip_prefix("fn=") {
                function = name_of(spec);
            } else if let Some(spec) = line.strip_prefix("cfn=") {
                callee = name_of(spec);
            } else if let Some(calls) = line.strip_prefix("calls=") {
                let count: u64 = calls.split_whitespace().next().unwrap_or("0").parse()?;
                *profile.calls.entry(callee.clone()).or_default() += count;
                call_cost_next = true;
            } else if let Some(total) =
                line.strip_prefix("summary:").or_else(|| line.strip_prefix("totals:"))
            {
                profile.total = profile.total.max(total.trim().parse()?);
            } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
                if call_cost_next {
                    call_cost_next = false;
                    continue;
                }
                let cost: u64 = line.split_whitespace().nth(1).unwrap_or("0").parse()?;
                *profile.own.entry(function.clone()).or_default() += cost;
            }
        }
        anyhow::ensure!(profile.total > 0, "no instruction count in callgrind's dump");
        Ok(profile)
    }

    fn report(&self, requests: f64) -> String {
        let requests = requests.max(1.0);
        let allocations: u64 =
            ALLOCATIONS.iter().map(|name| self.calls.get(*name).copied().unwrap_or(0)).sum();
        let mut layers: HashMap<&str, u64> = HashMap::new();
        for (function, cost) in &self.own {
            *layers.entry(layer(function)).or_default() += cost;
        }
        let mut layers: Vec<_> = layers.into_iter().collect();
        layers.sort_by_key(|&(_, cost)| std::cmp::Reverse(cost));
        let mut functions: Vec<_> = self.own.iter().collect();
        functions.sort_by_key(|&(_, cost)| std::cmp::Reverse(*cost));
        let share = |cost: u64| 100.0 * cost as f64 / self.total as f64;
        let mut report = format!(
            "Under callgrind (the mix at c = 4, {requests:.0} requests): **{:.0} instructions** and \
             **{:.1} allocations** per request\n\n| layer (by the function's crate) | instructions \
             per request | share |\n|---|---|---|\n",
            self.total as f64 / requests,
            allocations as f64 / requests,
        );
        for (layer, cost) in layers {
            report +=
                &format!("| {layer} | {:.0} | {:.1} % |\n", cost as f64 / requests, share(cost));
        }
        report += "\n| function (own instructions) | per request | share |\n|---|---|---|\n";
        for (function, cost) in functions.into_iter().take(TOP_FUNCTIONS) {
            let function: String = function.chars().take(110).collect();
            report += &format!(
                "| `{}` | {:.0} | {:.1} % |\n",
                function.replace('|', "\\|"),
                *cost as f64 / requests,
                share(*cost)
            );
        }
        report
    }
}

/// The layer a function belongs to: its crate, or the allocator and the C library's copies.
fn layer(function: &str) -> &'static str {
    let name = function.trim_start_matches(['<', '&']).trim_start_matches("mut ");
    let krate = name.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("");
    match krate {
        _ if name.starts_with("mi_") || name.starts_with("_mi_") => "mimalloc",
        _ if name.contains("memcpy") || name.contains("memmove") || name.contains("memset") => {
            "memcpy/memmove (libc)"
        }
        "core" if name.starts_with("core::ptr::drop_in_place") => "drop glue",
        "server" => "our code (server)",
        "poem" => "poem",
        "poem_openapi" => "poem-openapi",
        "sqlx_core" | "sqlx_postgres" | "sqlx" => "sqlx",
        "hyper" | "hyper_util" | "httparse" | "h2" => "hyper",
        "tokio" | "tokio_util" => "tokio",
        "tracing" | "tracing_core" | "tracing_subscriber" | "tracing_appender" | "tracing_log" => {
            "tracing"
        }
        "serde" | "serde_core" | "serde_json" => "serde",
        "chrono" => "chrono",
        "jsonwebtoken" | "ring" | "hmac" | "sha2" | "base64" => "JWT",
        "metrics" | "metrics_exporter_prometheus" | "metrics_util" => "metrics",
        "std" | "core" | "alloc" | "hashbrown" | "http" | "bytes" => "std, core, http, bytes",
        "futures_util" | "futures_core" | "futures" => "futures",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_is_read_as_callgrind_writes_it() {
        let dump = "events: Ir\n\
                    fn=(1) server::handle\n\
                    10 100\n\
                    +2 50\n\
                    cfn=(2) mi_malloc_aligned\n\
                    calls=3 0\n\
                    12 30\n\
                    fn=(2)\n\
                    5 30\n\
                    fn=(3) <poem::Route as poem::Endpoint>::call\n\
                    * 20\n\
                    cfn=(2)\n\
                    calls=1 0\n\
                    7 10\n\
                    totals: 200\n";
        let profile = Profile::parse(dump).unwrap();
        assert_eq!(profile.total, 200);
        assert_eq!(profile.own["server::handle"], 150, "a call's cost is not the caller's own");
        assert_eq!(profile.own["mi_malloc_aligned"], 30);
        assert_eq!(profile.own["<poem::Route as poem::Endpoint>::call"], 20);
        assert_eq!(profile.calls["mi_malloc_aligned"], 4);
        let report = profile.report(2.0);
        assert!(report.contains("**100 instructions** and **2.0 allocations** per request"));
        assert!(report.contains("| our code (server) | 75 | 75.0 % |"), "{report}");
        assert!(report.contains("| poem | 10 | 10.0 % |"), "{report}");
    }
}
