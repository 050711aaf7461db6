//! Evidence from real server processes, run by `cargo xtask resilience` and `cargo xtask soak`
//! (it lives here, not in the xtask, so that the xtask that rewrites `openapi.json` never needs
//! the client generated from it).
//!
//! - `resilience`: kill -9 in the middle of a write burst (PostgreSQL and SQLite), and two
//!   server processes on one PostgreSQL; the servers' logs are checked for secrets.
//! - `soak [--minutes N] [--users N] [--database postgres|sqlite]`: a mixed workload; reports
//!   requests, errors and the server's memory.
//! - `contract`: `openapi.json` checked by outside consumers (Redocly, TypeScript,
//!   schemathesis, Swagger UI in Chromium) against the server on PostgreSQL.
//! - `image [--check]`: the container image, built with podman (and run as production runs it).

mod bench;
mod contract;
mod image;
mod instructions;
mod resilience;
mod rolling;
mod server_process;
mod soak;
mod streams;

use std::process::ExitCode;

const USAGE: &str = "usage: evidence resilience | evidence contract | evidence bench [--quick] [--pooler] | evidence soak [--minutes N] [--users N] [--database postgres|sqlite] | evidence image [--check]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let result =
        match args.as_slice() {
            ["resilience"] => runtime.block_on(resilience::run()),
            ["contract"] => runtime.block_on(contract::run()),
            ["image"] => runtime.block_on(image::run(false)),
            ["image", "--check"] => runtime.block_on(image::run(true)),
            ["bench", options @ ..] => bench::Options::parse(options)
                .and_then(|options| runtime.block_on(bench::run(options))),
            ["soak", options @ ..] => soak::Options::parse(options)
                .and_then(|options| runtime.block_on(soak::run(options))),
            _ => Err(anyhow::anyhow!(USAGE)),
        };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("evidence: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root.
fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
