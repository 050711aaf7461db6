//! Throwaway PostgreSQL clusters from the machine's own binaries (Debian's `postgresql`
//! package), so the tests need no service set up beforehand. `initdb` and `pg_ctl` refuse to run
//! as root, so as root they run as the `postgres` OS user. With `TEST_DATABASE_URL` set, its
//! server is used instead of a cluster of our own.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

use sqlx::{Connection, PgConnection};

use crate::pgbouncer::PgBouncer;

/// A PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 on a free port.
pub struct PgCluster {
    pub port: u16,
    base: PathBuf,
    bin: PathBuf,
    /// PostgreSQL's default durability (fsync, synchronous commit, full pages), as production
    /// runs it; else none of it, which tests do not need.
    durable: bool,
}

impl PgCluster {
    /// Runs `initdb` and starts the server; it is stopped and deleted on drop, and, should this
    /// process die first, by a watchdog that outlives it.
    pub fn start() -> Self {
        Self::start_with_durability(false)
    }

    /// [`start`](Self::start) with production's durability: what benchmark headlines run on.
    pub fn start_durable() -> Self {
        Self::start_with_durability(true)
    }

    fn start_with_durability(durable: bool) -> Self {
        let bin = bin_dir();
        let base =
            tempfile::Builder::new().prefix("task-api-pg-").tempdir().expect("temp dir").keep();
        give_to_postgres(&base);
        let port = free_port();
        let cluster = Self { port, base, bin, durable };
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        cluster.spawn_watchdog();
        cluster.resume();
        cluster
    }

    /// Starts the (stopped) server again on the same port.
    pub fn resume(&self) {
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=400",
            self.port,
            self.base.display()
        );
        if !self.durable {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let log = self.base.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log.display().to_string(),
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        );
    }

    /// Stops the server (fast shutdown: open connections are cut).
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// A superuser URL for the `postgres` database (with a password that trust auth ignores
    /// and the log scan looks for).
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres:{}@127.0.0.1:{}/postgres", crate::logs::DB_PASSWORD, self.port)
    }

    fn data(&self) -> String {
        self.base.join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let output = as_postgres(&self.bin.join(tool))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("run {tool}: {err}"));
        assert!(
            output.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Stops the cluster and removes its directory once this process is gone, however it ends.
    fn spawn_watchdog(&self) {
        spawn_watchdog(&format!(
            "'{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{base}'",
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.data(),
            base = self.base.display(),
        ));
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Runs the shell command `cleanup` (as the `postgres` user when we are root) once this process
/// is gone, however it ends. The watchdog is meant to outlive us, so it is never waited for.
#[allow(clippy::zombie_processes)]
pub(crate) fn spawn_watchdog(cleanup: &str) {
    let script =
        format!("while [ -d /proc/{pid} ]; do sleep 1; done; {cleanup}", pid = std::process::id());
    let mut command = Command::new("setsid");
    if is_root() {
        command.args(["runuser", "-u", "postgres", "--"]);
    }
    command
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn a watchdog");
}

/// A new, empty database on the shared server; returns its URL.
pub async fn fresh_database() -> String {
    let admin_url = admin_url();
    let name = create_database(&admin_url).await;
    with_database(&admin_url, &name)
}

/// A new, empty database on the shared server, reached through the shared PgBouncer (in
/// transaction mode); returns its URL.
pub async fn fresh_pooled_database() -> String {
    static BOUNCER: OnceLock<PgBouncer> = OnceLock::new();
    let admin_url = admin_url();
    let name = create_database(&admin_url).await;
    let bouncer = BOUNCER.get_or_init(|| PgBouncer::start(&admin_url));
    format!("postgres://postgres:{}@127.0.0.1:{}/{name}", crate::logs::DB_PASSWORD, bouncer.port)
}

/// `url`'s database on the shared server, reached directly (for a pooled URL, not through
/// PgBouncer).
pub fn direct_url(url: &str) -> String {
    let name = url.split('?').next().and_then(|base| base.rsplit('/').next()).unwrap_or_default();
    with_database(&admin_url(), name)
}

/// Drops the database `url` names if it is on `TEST_DATABASE_URL`'s server, which outlives the
/// tests (terminating what is still connected to it).
pub fn drop_on_shared_server(url: &str) {
    let Some(admin_url) = std::env::var("TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        return;
    };
    let Some(name) = url.split('?').next().and_then(|base| base.rsplit('/').next()) else {
        return;
    };
    if !name.starts_with("test_") || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return;
    }
    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    // Drop runs outside any runtime (or inside one that must not block): a thread of its own.
    let dropped = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        runtime.block_on(async {
            let mut admin = PgConnection::connect(&admin_url).await.ok()?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.ok()
        })
    });
    let _ = dropped.join();
}

/// A superuser URL of the shared server: `TEST_DATABASE_URL`, or a throwaway cluster's.
fn admin_url() -> String {
    static SHARED: OnceLock<PgCluster> = OnceLock::new();
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => SHARED.get_or_init(PgCluster::start).admin_url(),
    }
}

/// A new, empty database on the server `admin_url` names (e.g. a cluster of one's own); returns
/// its URL.
pub async fn fresh_database_on(admin_url: &str) -> String {
    with_database(admin_url, &create_database(admin_url).await)
}

/// Creates a database with a new name on the server `admin_url` names; returns the name.
async fn create_database(admin_url: &str) -> String {
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(admin_url).await.expect("connect as admin");
    // The name is ours (a UUID), not input: safe to splice.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create a test database");
    admin.close().await.ok();
    name
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}

/// Hands `dir` to the `postgres` OS user when we are root (its programs refuse to run as root).
pub(crate) fn give_to_postgres(dir: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .expect("chown");
        assert!(status.success(), "chown {} to postgres", dir.display());
    }
}

pub(crate) fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
    })
}

pub(crate) fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// `PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`.
/// A PostgreSQL client program (`pgbench`, `psql`) of the binaries the clusters run on.
pub fn tool(name: &str) -> PathBuf {
    bin_dir().join(name)
}

fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let output = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("no PostgreSQL binaries found: install Debian's postgresql or set PG_BIN");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}
