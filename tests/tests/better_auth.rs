//! The real thing: tokens minted by Better Auth's own JWT plugin (`better-auth` from npm, run by
//! Node under this test's control, `tests/better-auth/server.mjs`), for each key algorithm the
//! plugin offers, accepted by the service through its JWKS. The JWKS tests mint tokens in Rust
//! and prove our reading of the format; this proves the format.
//!
//! Node is a test-only dependency: without `node` on the PATH the test says so and skips on a
//! developer's machine, and fails when `CI` is set (CI installs Node: a missing one there means
//! the real Better Auth was never run). The plugin's packages are pinned by `tests/better-auth/package-lock.json` and
//! installed with `npm ci` on first use.

use std::{path::PathBuf, process::Stdio, sync::Mutex, time::Duration};

use integration_tests::{Backend, Options, TestServer, on_every_database};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use server::config::Config;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
};

on_every_database!(better_auth_jwt_plugin_tokens_are_accepted);

const ALGORITHMS: [&str; 3] = ["EdDSA", "ES256", "RS256"];

async fn better_auth_jwt_plugin_tokens_are_accepted(backend: Backend) {
    if !node_is_installed() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but Node.js is not installed: the real Better Auth cannot run"
        );
        eprintln!("SKIPPED: Node.js is not installed, so Better Auth cannot run (CI installs it)");
        return;
    }
    install_fixture();
    for algorithm in ALGORITHMS {
        let auth = BetterAuth::start(algorithm).await;
        let (user_id, token) = auth.sign_up_and_get_token().await;
        let header = jsonwebtoken::decode_header(&token).expect("a JWT");
        assert_eq!(format!("{:?}", header.alg), algorithm, "the plugin's signing algorithm");

        // Configured as an operator would: the key set's URL and Better Auth's base URL.
        let server = TestServer::start_with(backend, auth.options(&auth.url)).await;
        let client = client_sdk::authenticated(&server.base_url, &token).unwrap();
        let created = client
            .create_task()
            .body(
                client_sdk::types::TaskCreate::builder().title(format!("signed with {algorithm}")),
            )
            .send()
            .await
            .unwrap_or_else(|err| panic!("{algorithm} token refused: {err:?}"));
        assert_eq!(created.status(), StatusCode::CREATED);
        assert_eq!(created.user_id, user_id, "the subject is Better Auth's user id");
        let listed = client.list_user_tasks().user_id(&user_id).send().await.unwrap();
        assert_eq!(listed.len(), 1);

        // The same token against a service that expects another Better Auth: refused.
        let elsewhere =
            TestServer::start_with(backend, auth.options("https://auth.elsewhere.example")).await;
        let refused = elsewhere
            .raw()
            .request(reqwest::Method::GET, "/api/tasks")
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{algorithm}: issuer is checked");
    }
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("better-auth")
}

fn node_is_installed() -> bool {
    std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// `npm ci` once, when the pinned packages are not installed yet.
fn install_fixture() {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _once = INSTALL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if fixture_dir().join("node_modules/better-auth").exists() {
        return;
    }
    let output = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(fixture_dir())
        .output()
        .expect("run npm (it comes with Node.js)");
    assert!(
        output.status.success(),
        "npm ci in tests/better-auth failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A Better Auth server with the JWT plugin; killed when dropped.
struct BetterAuth {
    url: String,
    http: reqwest::Client,
    _process: Child,
}

impl BetterAuth {
    async fn start(algorithm: &str) -> Self {
        let mut process = Command::new("node")
            .arg("server.mjs")
            .arg(algorithm)
            .current_dir(fixture_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start Better Auth under node");
        let stdout = process.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("Better Auth did not start within 30 s")
            .expect("read Better Auth's output")
            .expect("Better Auth exited before serving");
        let started: Value = serde_json::from_str(&line).expect("Better Auth's start line");
        let http = client_sdk::http_client_builder().build().unwrap();
        Self { url: started["url"].as_str().unwrap().to_owned(), http, _process: process }
    }

    /// Signs a new user up (email and password) and takes a JWT from `/api/auth/token`, as
    /// the frontend's `authClient.token()` does. Returns the user id and the token.
    async fn sign_up_and_get_token(&self) -> (String, String) {
        let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
        let signed_up = self
            .http
            .post(format!("{}/api/auth/sign-up/email", self.url))
            .json(&json!({"email": email, "password": "correct horse battery", "name": "Tester"}))
            .send()
            .await
            .unwrap();
        assert_eq!(signed_up.status(), StatusCode::OK, "sign-up");
        let cookie = signed_up
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok()?.split(';').next())
            .collect::<Vec<_>>()
            .join("; ");
        let body: Value = signed_up.json().await.unwrap();
        let user_id = body["user"]["id"].as_str().expect("the new user's id").to_owned();
        let token: Value = self
            .http
            .get(format!("{}/api/auth/token", self.url))
            .header(header::COOKIE, cookie)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (user_id, token["token"].as_str().expect("a token").to_owned())
    }

    /// Test server options for this Better Auth's key set, configured through `Config` as
    /// `BETTER_AUTH_JWKS_URL` and `BETTER_AUTH_URL` (which may name another Better Auth).
    fn options(&self, better_auth_url: &str) -> Options {
        let jwks_url = format!("{}/api/auth/jwks", self.url);
        let vars =
            [("BETTER_AUTH_JWKS_URL", jwks_url.as_str()), ("BETTER_AUTH_URL", better_auth_url)];
        let config = Config::from_lookup(|name| {
            vars.iter().find(|(key, _)| *key == name).map(|(_, value)| value.to_string())
        })
        .expect("a JWKS configuration");
        Options { jwks: config.key_sources().jwks, no_shared_secret: true, ..Options::default() }
    }
}
