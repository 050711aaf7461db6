//! A real PgBouncer (Debian's `pgbouncer`, 1.18) in **transaction** pooling mode in front of the
//! tests' PostgreSQL server, on a free port: production's shape on Neon, and stricter than
//! Neon's pooler (1.18 has no protocol-level prepared statements). Like `initdb`, it refuses to
//! run as root, so as root it runs as the `postgres` OS user. It is stopped on drop and, should
//! this process die first, by a watchdog that outlives it.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::postgres::{as_postgres, free_port, give_to_postgres, spawn_watchdog};

pub struct PgBouncer {
    pub port: u16,
    base: PathBuf,
    pid: u32,
}

impl PgBouncer {
    /// Starts PgBouncer for every database of the server `admin_url` names (logging in as its
    /// user, whatever user a client gives), and waits until it accepts connections.
    pub fn start(admin_url: &str) -> Self {
        let server: sqlx::postgres::PgConnectOptions = admin_url.parse().expect("a PostgreSQL URL");
        let (host, server_port, user) =
            (server.get_host(), server.get_port(), server.get_username());
        let password =
            url_password(admin_url).map(|p| format!(" password={p}")).unwrap_or_default();
        let base = tempfile::Builder::new()
            .prefix("task-api-pgbouncer-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let port = free_port();
        let config = format!(
            "[databases]\n\
             * = host={host} port={server_port} user={user}{password}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = any\n\
             pool_mode = transaction\n\
             max_client_conn = 2000\n\
             default_pool_size = 20\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {base}/pgbouncer.log\n\
             pidfile = {base}/pgbouncer.pid\n",
            base = base.display(),
        );
        std::fs::write(base.join("pgbouncer.ini"), config).expect("write pgbouncer.ini");
        give_to_postgres(&base);
        let status = as_postgres(&binary())
            .arg("-d")
            .arg(base.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .status()
            .expect("run pgbouncer (Debian: apt-get install pgbouncer)");
        assert!(status.success(), "pgbouncer failed to start; see {}", base.display());
        let pid_file = base.join("pgbouncer.pid");
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            let pid = std::fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse().ok());
            let listening = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            match pid {
                Some(pid) if listening => break pid,
                _ => {
                    assert!(
                        Instant::now() < deadline,
                        "pgbouncer did not start; see {}",
                        base.display()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        let bouncer = Self { port, base, pid };
        bouncer.spawn_watchdog();
        bouncer
    }

    /// Kills PgBouncer and removes its directory once this process is gone, however it ends.
    fn spawn_watchdog(&self) {
        spawn_watchdog(&format!(
            "kill {pid} 2>/dev/null; rm -rf '{base}'",
            pid = self.pid,
            base = self.base.display()
        ));
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// The password in a `postgres://user:password@…` URL, if any.
fn url_password(url: &str) -> Option<String> {
    let authority = url.split_once("://")?.1.split('/').next()?;
    let credentials = authority.rsplit_once('@')?.0;
    Some(credentials.split_once(':')?.1.to_owned()).filter(|p| !p.is_empty())
}

/// `PGBOUNCER`, else `pgbouncer` from `/usr/sbin` (Debian) or the `PATH`.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PGBOUNCER") {
        return PathBuf::from(path);
    }
    let debian = PathBuf::from("/usr/sbin/pgbouncer");
    if debian.exists() { debian } else { PathBuf::from("pgbouncer") }
}
