//! `contract`: `openapi.json` checked by the consumers we do not write, each from its own
//! ecosystem, against the real server binary on PostgreSQL:
//!
//! - Redocly's linter (recommended rules; 0 errors, the warnings explained in `redocly.yaml`);
//! - a TypeScript frontend: types from openapi-typescript, every operation called through
//!   openapi-fetch, `tsc --strict` (`clients/typescript-check`);
//! - schemathesis (`not_a_server_error`, `response_schema_conformance`; examples, coverage,
//!   fuzzing and stateful phases; a fixed example budget and seed; bounded at 3 minutes; every
//!   operation but the never-ending event streams);
//! - Swagger UI at `/docs` in headless Chromium (`tests/contract/swagger-ui.mjs`).
//!
//! The Node packages and the Python virtualenv are pinned by their lock files and installed on
//! first use (`npm ci`, `pip install -r`); Node, Chromium and Python come from the machine.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use integration_tests::{postgres::fresh_database, token};

use crate::{
    root,
    server_process::{self, ServerProcess},
};

/// Examples per operation and phase, and the seed: the same run every time.
const MAX_EXAMPLES: &str = "100";
const SEED: &str = "20261124";
const SCHEMATHESIS_LIMIT: Duration = Duration::from_secs(180);

pub async fn run() -> anyhow::Result<()> {
    let contract_dir = root().join("tests/contract");
    let typescript_dir = root().join("clients/typescript-check");
    npm_ci(&contract_dir)?;
    npm_ci(&typescript_dir)?;
    let schemathesis = virtualenv(&contract_dir.join("requirements.txt"))?;

    run_step(
        "Redocly lint",
        Command::new("npm").args(["run", "--silent", "lint"]).current_dir(&contract_dir),
    )?;
    run_step(
        "TypeScript check",
        Command::new("npm").args(["run", "--silent", "check"]).current_dir(&typescript_dir),
    )?;

    let binary = server_process::build()?;
    let scratch = tempfile::tempdir()?;
    let log = scratch.path().join("contract.log");
    let server = ServerProcess::start(&binary, &fresh_database().await, log.clone()).await?;
    let token = token("contract-user");

    let started = Instant::now();
    let authorization = format!("Authorization: Bearer {token}");
    let spec = format!("{}/openapi.json", server.base_url);
    let mut command = Command::new("timeout");
    command
        .arg(SCHEMATHESIS_LIMIT.as_secs().to_string())
        .arg(&schemathesis)
        .args(["run", &spec, "--url", &server.base_url, "--header", &authorization])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED, "--no-color"])
        // The live event streams never end by themselves (schemathesis waits for a whole body):
        // `tests/tests/events.rs` holds each of their events to the document instead.
        .args(["--exclude-operation-id", "follow_changes"])
        .args(["--exclude-operation-id", "follow_user_changes"])
        // Its example cache goes to `.schemathesis/` in the working directory.
        .current_dir(root().join("target"));
    run_step("schemathesis", &mut command)?;
    println!("schemathesis took {:.0?}", started.elapsed());

    let screenshots = root().join("target/contract-screenshots");
    run_step(
        "Swagger UI in Chromium",
        Command::new("node")
            .arg("swagger-ui.mjs")
            .arg(&server.base_url)
            .arg(&token)
            .arg(&screenshots)
            .current_dir(&contract_dir),
    )?;

    let lines = server_process::scan_logs(&[log])?;
    println!("contract: all four consumers passed; {lines} server log lines, no secrets");
    Ok(())
}

fn run_step(what: &str, command: &mut Command) -> anyhow::Result<()> {
    println!("== {what}");
    let status = command.status().with_context(|| format!("{what}: could not start"))?;
    anyhow::ensure!(status.success(), "{what} failed ({status})");
    Ok(())
}

/// `npm ci` when the pinned packages are not installed yet.
fn npm_ci(dir: &Path) -> anyhow::Result<()> {
    if dir.join("node_modules").exists() {
        return Ok(());
    }
    run_step(
        &format!("npm ci in {}", dir.display()),
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir),
    )
}

/// A virtualenv under `target/` with the pinned requirements; returns its `schemathesis`.
fn virtualenv(requirements: &Path) -> anyhow::Result<std::path::PathBuf> {
    let venv = root().join("target/contract-venv");
    let schemathesis = venv.join("bin/schemathesis");
    if !schemathesis.exists() {
        run_step("python3 -m venv", Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run_step(
            "pip install -r tests/contract/requirements.txt",
            Command::new(venv.join("bin/pip")).args(["install", "--quiet", "-r"]).arg(requirements),
        )?;
    }
    Ok(schemathesis)
}
