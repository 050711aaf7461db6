//! `cargo xtask dev`: the newcomer's first command.

use std::io::Read as _;

use super::root;

/// Writes `.env` from `.env.example` with a fresh random secret (once), then runs the server.
pub fn run() -> anyhow::Result<()> {
    let env_file = root().join(".env");
    if !env_file.exists() {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let example = std::fs::read_to_string(root().join(".env.example"))?;
        let env: String = example
            .lines()
            .map(|line| match line.starts_with("BETTER_AUTH_SECRET=") {
                true => format!("BETTER_AUTH_SECRET={secret}\n"),
                false => format!("{line}\n"),
            })
            .collect();
        std::fs::write(&env_file, env)?;
        println!(
            "wrote .env with a random BETTER_AUTH_SECRET (set Better Auth's secret there to serve the frontend)"
        );
    }
    println!("a token for curl and /docs: cargo run -q -p server -- token --sub alice");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["run", "--package", "server", "--"])
        .current_dir(root())
        .status()?;
    anyhow::ensure!(status.success(), "the server exited with {status}");
    Ok(())
}
