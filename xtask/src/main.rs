//! `cargo xtask …`: project chores.
//!
//! - `openapi`: write `openapi.json` from the server's API definition (no database, no server).
//! - `openapi --check`: fail if the committed `openapi.json` is stale.
//! - `dev`: run the service locally, creating `.env` with a random secret on first use.
//! - `resilience`: kill -9 mid-burst on both databases, and two processes on one PostgreSQL.
//! - `soak [--minutes N] [--users N] [--database postgres|sqlite]`: a long mixed workload.
//! - `bench [--quick] [--pooler] [--no-fsync] [--instructions]`: the release server against a
//!   minimal hyper + tokio-postgres peer and plain-SQL pgbench on the same durable database
//!   (needs `wrk`), or with `--instructions` its instructions and allocations per request under
//!   callgrind (needs `valgrind`); the figures go to `docs/benchmarks.md`.
//! - `contract`: the spec checked by outside consumers: Redocly, a TypeScript frontend,
//!   schemathesis, and Swagger UI in headless Chromium (needs Node, Python and Chromium).
//! - `image [--check]`: the root `Dockerfile` built with podman into `localhost/task-api`
//!   (base images made from Debian's packages: no registry needed), and with `--check` run as
//!   production runs it (needs podman and mmdebstrap).
//!
//! All but the first two run `tests/src/bin/evidence`: this crate depends only on `server`, so that
//! regenerating a broken `openapi.json` never needs the client generated from it.

mod dev;
mod openapi;

use std::{path::PathBuf, process::ExitCode};

const USAGE: &str = "usage: cargo xtask openapi [--check] | dev | resilience | contract | \
                     bench [--quick] [--pooler] [--instructions] | \
                     soak [--minutes N] [--users N] [--database postgres|sqlite] | \
                     image [--check]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["openapi"] => openapi::write(),
        ["openapi", "--check"] => openapi::check(),
        ["dev"] => dev::run(),
        ["resilience"] | ["contract"] | ["soak", ..] | ["bench", ..] | ["image", ..] => {
            evidence(&args)
        }
        _ => Err(anyhow::anyhow!(USAGE)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the evidence binary of the integration tests with these arguments.
fn evidence(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["run", "--quiet", "--package", "integration-tests", "--bin", "evidence", "--"])
        .args(args)
        .current_dir(root())
        .status()?;
    anyhow::ensure!(status.success(), "{} failed", args[0]);
    Ok(())
}
