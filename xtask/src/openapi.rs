//! `openapi.json`: written from the server's API definition, and checked for drift.

use super::root;

fn spec_path() -> std::path::PathBuf {
    root().join("openapi.json")
}

pub fn write() -> anyhow::Result<()> {
    std::fs::write(spec_path(), server::api::openapi_json())?;
    println!("wrote openapi.json");
    Ok(())
}

pub fn check() -> anyhow::Result<()> {
    let committed = std::fs::read_to_string(spec_path()).unwrap_or_default();
    if committed != server::api::openapi_json() {
        anyhow::bail!("openapi.json is stale: run `cargo xtask openapi` and commit the result");
    }
    println!("openapi.json is up to date");
    Ok(())
}
