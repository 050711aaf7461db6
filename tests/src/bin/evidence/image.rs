//! `cargo xtask image [--check]`: the root `Dockerfile` built with podman into
//! [`IMAGE`] on a machine without a container registry, and (`--check`, what CI runs) that
//! image run as production runs it.
//!
//! No registry is reachable here, so the file's two base images are stood in for by images
//! made from Debian's packages (mmdebstrap), passed as its build arguments:
//! - the runtime stage's: Debian bookworm's `libc6` and `libgcc-s1`, extracted and nothing else
//!   (what distroless `cc` holds for this binary; it needs no CA files and no `/etc/passwd`);
//! - the build stage's: Debian bookworm (minbase) with the server already built on this machine
//!   at `/prebuilt/server`, which the file's build stage takes as it is (no Rust toolchain can be
//!   fetched from inside). So this proves the runtime stage and all that follows the binary;
//!   the build stage's own `cargo build` runs only where the official Rust image can be pulled.
//!
//! `--check` runs the image under runc with explicit ulimits (this machine's podman refuses its
//! defaults, and crun fails on its cgroups), with a read-only root filesystem and the host's
//! network: on SQLite with a named volume, and on PostgreSQL. Each time: `/health/ready` 200,
//! the process runs as the image's non-root user, a token from the image's own `server token`,
//! a create and a list, the `HEALTHCHECK` passes, and `podman stop` (SIGTERM) ends it with exit
//! code 0 within the grace period.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use integration_tests::{SECRET, postgres::fresh_database, user};
use serde_json::{Value, json};

use crate::{root, server_process};

/// The image `cargo xtask image` builds.
pub const IMAGE: &str = "localhost/task-api:latest";
const RUNTIME_BASE: &str = "localhost/task-api-base/runtime:bookworm";
const DEBIAN: &str = "localhost/task-api-base/debian:bookworm";
const BUILD_STAND_IN: &str = "localhost/task-api-base/prebuilt:latest";
const MIRROR: &str = "http://deb.debian.org/debian";
/// What `podman build` and `podman run` need on this machine (see the module's comment): runc,
/// this process's own hard limit on open files as the container's (podman's default exceeds it
/// and is refused), and a process limit of [`CONTAINER_PROCESSES`] (runc was refused this
/// machine's own hard limit, 96363, and accepted 4096).
fn runtime_flags() -> anyhow::Result<Vec<String>> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    // `Max open files            20000                20000                files`
    let hard = |name: &str| {
        let line = limits.lines().find(|line| line.starts_with(name));
        line.and_then(|line| line[name.len()..].split_whitespace().nth(1)).map(str::to_owned)
    };
    let files = hard("Max open files").context("the open files limit")?;
    let processes = CONTAINER_PROCESSES;
    Ok(vec![
        "--runtime".to_owned(),
        "runc".to_owned(),
        "--ulimit".to_owned(),
        format!("nofile={files}:{files}"),
        "--ulimit".to_owned(),
        format!("nproc={processes}:{processes}"),
    ])
}
/// The container's process limit (threads count): the server runs a few dozen.
const CONTAINER_PROCESSES: u32 = 4096;
/// The image's user (distroless's `nonroot`).
const IMAGE_UID: &str = "65532";
/// `podman stop`'s grace period: the drain (5 s by default) and 10 s for requests in flight.
const GRACE_SECS: u64 = 20;

pub async fn run(check: bool) -> anyhow::Result<()> {
    for (tool, package) in [("podman", "podman"), ("mmdebstrap", "mmdebstrap")] {
        anyhow::ensure!(
            Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is missing: apt-get install podman buildah mmdebstrap uidmap ({package})"
        );
    }
    let binary = server_process::build_release()?;
    let scratch = tempfile::tempdir()?;
    base_image(RUNTIME_BASE, &["--variant=extract", "--include=libc6,libgcc-s1"], scratch.path())?;
    base_image(DEBIAN, &["--variant=minbase"], scratch.path())?;

    let context = scratch.path().join("prebuilt");
    std::fs::create_dir(&context)?;
    std::fs::copy(&binary, context.join("server"))?;
    std::fs::write(
        context.join("Containerfile"),
        format!("FROM {DEBIAN}\nCOPY server /prebuilt/server\n"),
    )?;
    podman(&["build", "--quiet", "-t", BUILD_STAND_IN, "."], &context)?;
    let started = Instant::now();
    podman(
        &[
            "build",
            "--format",
            "docker",
            "--build-arg",
            &format!("BUILD_IMAGE={BUILD_STAND_IN}"),
            "--build-arg",
            &format!("RUNTIME_IMAGE={RUNTIME_BASE}"),
            "-t",
            IMAGE,
            "-f",
            "Dockerfile",
            ".",
        ],
        &root(),
    )?;
    let size: f64 = podman(&["image", "inspect", "--format", "{{.Size}}", IMAGE], &root())?
        .trim()
        .parse()
        .context("the image's size")?;
    println!(
        "image: {IMAGE}, {:.1} MB, built from the Dockerfile in {:.0?}",
        size / 1e6,
        started.elapsed()
    );
    if check {
        let volume = format!("task-api-check-{}", uuid::Uuid::new_v4().simple());
        podman(&["volume", "create", &volume], &root())?;
        let sqlite = run_as_production("sqlite", &[], &["-v", &format!("{volume}:/data")]).await;
        podman(&["volume", "rm", "--force", &volume], &root())?;
        sqlite?;
        let postgres = fresh_database().await;
        run_as_production("postgres", &["-e", &format!("DATABASE_URL={postgres}")], &[]).await?;
    }
    Ok(())
}

/// Makes the base image `name` from Debian's packages, unless it exists already.
fn base_image(name: &str, mmdebstrap: &[&str], scratch: &Path) -> anyhow::Result<()> {
    if Command::new("podman").args(["image", "exists", name]).status()?.success() {
        return Ok(());
    }
    let tarball = scratch.join("rootfs.tar");
    let output = Command::new("mmdebstrap")
        .args(mmdebstrap)
        .args(["--quiet", "bookworm"])
        .arg(&tarball)
        .arg(MIRROR)
        .output()
        .context("run mmdebstrap")?;
    anyhow::ensure!(
        output.status.success(),
        "mmdebstrap for {name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    podman(&["import", &tarball.display().to_string(), name], scratch)?;
    std::fs::remove_file(tarball)?;
    Ok(())
}

/// `podman args` in `dir`; its standard output, or an error with its standard error.
fn podman(args: &[&str], dir: &Path) -> anyhow::Result<String> {
    let mut command = Command::new("podman");
    command.arg(args[0]);
    if matches!(args[0], "build" | "run") {
        command.args(runtime_flags()?);
    }
    let output = command.args(&args[1..]).current_dir(dir).output().context("run podman")?;
    anyhow::ensure!(
        output.status.success(),
        "podman {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// One container of the image, started as production starts it, checked, then stopped.
async fn run_as_production(database: &str, env: &[&str], mounts: &[&str]) -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let name = format!("task-api-check-{database}-{}", uuid::Uuid::new_v4().simple());
    // No timer for the HEALTHCHECK (podman would ask systemd, which this machine does not run):
    // it is run once, by hand, below.
    let mut args = vec![
        "run",
        "--detach",
        "--name",
        &name,
        "--read-only",
        "--network",
        "host",
        "--health-interval",
        "disable",
    ];
    let port_env = format!("PORT={port}");
    let secret_env = format!("BETTER_AUTH_SECRET={SECRET}");
    args.extend(["-e", &port_env, "-e", &secret_env]);
    args.extend(env);
    args.extend(mounts);
    args.push(IMAGE);
    podman(&args, &root())?;
    let checked = check_container(&name, port).await;
    if checked.is_err() {
        let logs = podman(&["logs", &name], &root()).unwrap_or_default();
        eprintln!("{name}'s log:\n{logs}");
    }
    let removed = podman(&["rm", "--force", &name], &root());
    checked.with_context(|| format!("the image on {database}"))?;
    removed?;
    println!(
        "image on {database}: ready, non-root, read-only, a create and a list, healthy, SIGTERM → exit 0"
    );
    Ok(())
}

async fn check_container(name: &str, port: u16) -> anyhow::Result<()> {
    let base = format!("http://127.0.0.1:{port}");
    let http = client_sdk::http_client_builder().build()?;
    let started = Instant::now();
    loop {
        let ready = http.get(format!("{base}/health/ready")).send().await;
        if ready.is_ok_and(|response| response.status().is_success()) {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let state = podman(
        &["inspect", "--format", "{{.State.Pid}} {{.HostConfig.ReadonlyRootfs}}", name],
        &root(),
    )?;
    let (pid, read_only) = state.trim().split_once(' ').context("podman inspect")?;
    anyhow::ensure!(read_only == "true", "the root filesystem is writable");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid = status.lines().find_map(|line| line.strip_prefix("Uid:")).context("Uid")?;
    anyhow::ensure!(
        uid.split_whitespace().all(|id| id == IMAGE_UID),
        "the server runs as uid {uid}, not {IMAGE_UID}"
    );

    let owner = user("image");
    let token =
        podman(&["exec", name, "/usr/local/bin/server", "token", "--sub", &owner], &root())?;
    let token = token.trim();
    let created = http
        .post(format!("{base}/api/tasks"))
        .bearer_auth(token)
        .json(&json!({"title": "from the container"}))
        .send()
        .await?;
    anyhow::ensure!(created.status() == 201, "create: {}", created.status());
    let listed: Vec<Value> = http
        .get(format!("{base}/api/{owner}/tasks"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(
        listed.len() == 1 && listed[0]["title"] == "from the container",
        "list: {listed:?}"
    );

    podman(&["healthcheck", "run", name], &root()).context("the HEALTHCHECK")?;

    let stopping = Instant::now();
    podman(&["stop", "--time", &GRACE_SECS.to_string(), name], &root())?;
    let stopped_in = stopping.elapsed();
    let exit = podman(&["inspect", "--format", "{{.State.ExitCode}}", name], &root())?;
    anyhow::ensure!(exit.trim() == "0", "exit code {} after SIGTERM", exit.trim());
    anyhow::ensure!(
        stopped_in < Duration::from_secs(GRACE_SECS),
        "SIGTERM took {stopped_in:?}: the grace period ran out"
    );
    Ok(())
}
