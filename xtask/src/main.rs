//! `cargo xtask …`: project chores.
//!
//! - `openapi`: write `openapi.json` from the server's API definition (no database, no server).
//! - `openapi --check`: fail if the committed `openapi.json` is stale.
//! - `dev`: run the service locally, creating `.env` with a random secret on first use.

use std::{io::Read as _, path::PathBuf, process::ExitCode};

const USAGE: &str = "usage: cargo xtask openapi [--check] | cargo xtask dev";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["openapi"] => write_openapi(),
        ["openapi", "--check"] => check_openapi(),
        ["dev"] => dev(),
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

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn spec_path() -> PathBuf {
    root().join("openapi.json")
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

/// Writes `.env` from `.env.example` with a fresh random secret (once), then runs the server.
fn dev() -> anyhow::Result<()> {
    let env_file = root().join(".env");
    if !env_file.exists() {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let example = std::fs::read_to_string(root().join(".env.example"))?;
        let env = example
            .lines()
            .map(|line| match line.starts_with("BETTER_AUTH_SECRET=") {
                true => format!("BETTER_AUTH_SECRET={secret}"),
                false => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&env_file, env + "\n")?;
        println!(
            "wrote .env with a random BETTER_AUTH_SECRET (use Better Auth's secret to talk to the frontend)"
        );
    }
    println!("a token for curl and /docs: cargo run -p server -- token --sub alice");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["run", "--package", "server", "--"])
        .current_dir(root())
        .status()?;
    anyhow::ensure!(status.success(), "the server exited with {status}");
    Ok(())
}
