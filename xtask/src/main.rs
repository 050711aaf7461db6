//! `cargo xtask …`: project chores.
//!
//! - `openapi`: write `openapi.json` from the server's API definition (no database, no server).
//! - `openapi --check`: fail if the committed `openapi.json` is stale.
//! - `dev`: run the service locally, creating `.env` with a random secret on first use.
//! - `resilience`: kill -9 in the middle of a write burst (PostgreSQL and SQLite), and two
//!   server processes on one PostgreSQL. Real server processes; checks their logs for secrets.
//! - `soak [--minutes N] [--users N] [--database postgres|sqlite]`: a mixed workload against a
//!   server process; reports requests, errors and the server's memory.

mod dev;
mod openapi;
mod resilience;
mod server_process;
mod soak;

use std::{path::PathBuf, process::ExitCode};

const USAGE: &str = "usage: cargo xtask openapi [--check] | dev | resilience | \
                     soak [--minutes N] [--users N] [--database postgres|sqlite]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["openapi"] => openapi::write(),
        ["openapi", "--check"] => openapi::check(),
        ["dev"] => dev::run(),
        ["resilience"] => runtime().and_then(|rt| rt.block_on(resilience::run())),
        ["soak", options @ ..] => soak::Options::parse(options)
            .and_then(|options| runtime().and_then(|rt| rt.block_on(soak::run(options)))),
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The workspace root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
