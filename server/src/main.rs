//! The `server` binary: `server` (or `server serve`) runs the service; `server token --sub ID
//! [--ttl 1h]` prints a development token signed with the configured secret.

use std::{
    net::{IpAddr, SocketAddr},
    process::ExitCode,
    time::Duration,
};

use server::{
    AppOptions, AppState,
    auth::issue_dev_token,
    config::{Config, MetricsListener},
};

// glibc's malloc was ~13 % of the server's CPU in issue 8's profile; with mimalloc a request
// costs 60 µs of server CPU instead of 73 (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: server [serve] | server token --sub USER_ID [--ttl 1h] | server health";

fn main() -> ExitCode {
    without_transparent_huge_pages();
    // A missing .env is normal; the real environment wins over it.
    let _ = dotenvy::dotenv();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            for line in &err.0 {
                eprintln!("configuration error: {line}");
            }
            return ExitCode::from(2);
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None | Some("serve") => run(config),
        Some("token") => print_token(&config, &args[1..]),
        Some("health") => check_health(&config),
        Some(_) => Err(anyhow::anyhow!(USAGE)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

/// Keeps the kernel from backing this process's memory with 2 MB pages. mimalloc reserves its
/// arenas in large aligned blocks, and where transparent huge pages are `always` (many hosts,
/// this machine too) a page touched in one brings a whole 2 MB in: the bench's peak 44.9 MB
/// resident instead of 32.3, SQLite's 51.7 instead of 37.9 (`docs/benchmarks.md`), at the same
/// speed. The same as `MIMALLOC_ALLOW_THP=0`, but for every way the binary is started; it
/// applies to pages touched from here on, which is all but a few.
fn without_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours; failing
    // (an old kernel) only leaves the default.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// The error and its causes on one line, each said once (sqlx repeats its source in its text).
fn describe(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain().map(ToString::to_string) {
        if !line.contains(&cause) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&cause);
        }
    }
    line
}

#[tokio::main]
async fn run(config: Config) -> anyhow::Result<()> {
    let _log_writer = server::telemetry::init(config.log_format);
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let state = AppState::from_config(&config).await?;
    let address = SocketAddr::new(config.host, config.port);
    let listener = bind(address)?;
    if let MetricsListener::Own(metrics_address) = config.metrics {
        let metrics = poem::Route::new()
            .at("/metrics", poem::get(server::metrics::endpoint(state.store.clone())));
        let metrics_listener = bind(metrics_address)?;
        tracing::info!(%metrics_address, "metrics at http://{metrics_address}/metrics");
        // It ends with the process.
        tokio::spawn(server::serve(metrics_listener, metrics, std::future::pending()));
    }
    tracing::info!(%address, "listening; API docs at http://{address}/docs");
    let shutdown = state.draining.clone().after(shutdown_signal(), config.shutdown_drain);
    let app = server::app(state, &AppOptions::from_config(&config));
    server::serve_with(listener, app, shutdown, config.connections).await?;
    tracing::info!("stopped");
    Ok(())
}

/// `server health`: the container image's `HEALTHCHECK` (its runtime has no curl): this
/// instance's own `GET /health/live`, which must answer 200 within 2 s.
fn check_health(config: &Config) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let host = match config.host {
        IpAddr::V4(host) if host.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(host) if host.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        host => host,
    };
    let timeout = Duration::from_secs(2);
    let mut stream =
        std::net::TcpStream::connect_timeout(&SocketAddr::new(host, config.port), timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut status_line = [0; 12];
    stream.read_exact(&mut status_line)?;
    anyhow::ensure!(status_line == *b"HTTP/1.1 200", "/health/live did not answer 200");
    Ok(())
}

fn bind(address: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(address)
        .map_err(|err| anyhow::anyhow!("cannot listen on {address}: {err}"))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
}

fn print_token(config: &Config, args: &[String]) -> anyhow::Result<()> {
    let mut subject = None;
    let mut ttl = Duration::from_secs(3600);
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| anyhow::anyhow!(USAGE))?;
        match flag.as_str() {
            "--sub" => subject = Some(value.clone()),
            "--ttl" => ttl = parse_duration(value)?,
            _ => anyhow::bail!(USAGE),
        }
    }
    let subject = subject.ok_or_else(|| anyhow::anyhow!(USAGE))?;
    let secret = config.auth_secret.as_ref().ok_or_else(|| {
        anyhow::anyhow!("dev tokens are signed with BETTER_AUTH_SECRET (or the first of BETTER_AUTH_SECRETS), and neither is set")
    })?;
    let token = issue_dev_token(secret.expose(), &subject, ttl.as_secs(), &config.claim_overrides)?;
    println!("{token}");
    Ok(())
}

/// `90`, `90s`, `15m`, `1h`, `7d`.
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| anyhow::anyhow!("--ttl must look like 90s, 15m, 1h or 7d"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => anyhow::bail!("--ttl must look like 90s, 15m, 1h or 7d"),
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The kernel reports the process's own switch in `/proc/self/status`, whatever the host's
    /// `transparent_hugepage` setting.
    #[test]
    fn the_process_opts_out_of_transparent_huge_pages() {
        let enabled = || {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|line| line.starts_with("THP_enabled:")).unwrap();
            line.split_whitespace().nth(1).unwrap().to_owned()
        };
        super::without_transparent_huge_pages();
        assert_eq!(enabled(), "0");
    }
}
