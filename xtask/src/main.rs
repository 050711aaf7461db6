//! `cargo xtask …`: project chores.
//!
//! - `openapi`: write `openapi.json` from the server's API definition (no database, no server).
//! - `openapi --check`: fail if the committed `openapi.json` is stale.

use std::{path::PathBuf, process::ExitCode};

const USAGE: &str = "usage: cargo xtask openapi [--check]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["openapi"] => write_openapi(),
        ["openapi", "--check"] => check_openapi(),
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

fn spec_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi.json")
}

fn write_openapi() -> anyhow::Result<()> {
    std::fs::write(spec_path(), server::api::openapi_json())?;
    println!("wrote openapi.json");
    Ok(())
}

fn check_openapi() -> anyhow::Result<()> {
    let committed = std::fs::read_to_string(spec_path()).unwrap_or_default();
    if committed != server::api::openapi_json() {
        anyhow::bail!("openapi.json is stale: run `cargo xtask openapi` and commit the result");
    }
    println!("openapi.json is up to date");
    Ok(())
}
