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
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

on_every_database!(
    better_auth_jwt_plugin_tokens_are_accepted,
    the_cookie_cache_is_a_bearer_token_through_a_secret_rotation,
    session_cookies_sign_in_a_same_origin_frontend,
    the_plugins_key_signs_under_rfc_9864s_ed25519_name_and_only_its_own_algorithm,
    a_browser_on_the_frontends_origin_needs_no_token_and_other_sites_forge_nothing,
    a_frontends_fetch_event_source_hears_another_clients_change,
);

const ALGORITHMS: [&str; 3] = ["EdDSA", "ES256", "RS256"];

/// Whether the real Better Auth can run here (`npm ci`'d on first use); on a developer's
/// machine without Node the test says so and skips, in CI it fails.
fn better_auth_can_run() -> bool {
    if !node_is_installed() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but Node.js is not installed: the real Better Auth cannot run"
        );
        eprintln!("SKIPPED: Node.js is not installed, so Better Auth cannot run (CI installs it)");
        return false;
    }
    install_fixture();
    true
}

async fn better_auth_jwt_plugin_tokens_are_accepted(backend: Backend) {
    if !better_auth_can_run() {
        return;
    }
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

/// The next JSON line `server.mjs` prints.
async fn next_line(output: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(30), output.next_line())
        .await
        .expect("Better Auth did not answer within 30 s")
        .expect("read Better Auth's output")
        .expect("Better Auth exited");
    serde_json::from_str(&line).expect("a JSON line from Better Auth")
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
    let installed = |package| fixture_dir().join("node_modules").join(package).exists();
    let packages = ["better-auth", "jose", "playwright-core", "@microsoft/fetch-event-source"];
    if packages.into_iter().all(installed) {
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

/// A frontend's live list (`follow-events.mjs`: the pinned `@microsoft/fetch-event-source`, as
/// Next.js apps use it) hears a change that another client makes through the API, as the
/// contract's event, typed as `/changes` types it.
async fn a_frontends_fetch_event_source_hears_another_clients_change(backend: Backend) {
    if !better_auth_can_run() {
        return;
    }
    let server = TestServer::start(backend).await;
    let user = integration_tests::user("live");
    let mut frontend = Command::new("node")
        .arg("follow-events.mjs")
        .arg(&server.base_url)
        .arg(integration_tests::token(&user))
        .arg("2")
        .current_dir(fixture_dir())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run node");
    let mut lines = BufReader::new(frontend.stdout.take().unwrap()).lines();
    let mut next_line = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
        let line = line.expect("the frontend said nothing").unwrap().expect("a line");
        serde_json::from_str(&line).expect("a JSON line")
    };
    assert_eq!(next_line().await, json!({"open": 200}));

    let other_device = server.client(&user);
    let body = client_sdk::types::TaskCreate::builder().title("from the phone");
    let task = other_device.create_task().body(body).send().await.unwrap().into_inner();
    let created = next_line().await;
    assert_eq!(created["event"], "upsert");
    assert_eq!(created["data"]["op"], "upsert");
    assert_eq!(created["data"]["task"]["id"], task.id);
    assert_eq!(created["data"]["task"]["title"], "from the phone");

    // Deleted only once the create was heard: the log keeps each task's latest change, so a
    // stream that reads after both (behind PgBouncer it polls) rightly sends the delete alone.
    other_device.delete_task().id(task.id).send().await.unwrap();
    let deleted = next_line().await;
    assert_eq!(
        (&deleted["event"], &deleted["data"]),
        (&json!("delete"), &json!({"op": "delete", "id": task.id}))
    );
    assert_ne!(created["id"], deleted["id"], "each event has its own cursor");
    let status = tokio::time::timeout(Duration::from_secs(5), frontend.wait()).await;
    assert!(status.expect("the frontend did not stop").unwrap().success());
}

/// A Better Auth server with the JWT plugin; killed when dropped.
struct BetterAuth {
    url: String,
    /// Another origin on the same host, serving a blank page: the "other site".
    elsewhere: String,
    http: reqwest::Client,
    /// `server.mjs`'s control channel: a line in, a line out.
    control: ChildStdin,
    output: Lines<BufReader<ChildStdout>>,
    _process: Child,
}

impl BetterAuth {
    async fn start(algorithm: &str) -> Self {
        Self::start_with(algorithm, &[]).await
    }

    /// Better Auth with these environment variables (`COOKIE_CACHE`, `BETTER_AUTH_SECRETS`).
    async fn start_with(algorithm: &str, env: &[(&str, &str)]) -> Self {
        let mut process = Command::new("node")
            .arg("server.mjs")
            .arg(algorithm)
            .envs(env.iter().copied())
            .current_dir(fixture_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start Better Auth under node");
        let control = process.stdin.take().unwrap();
        let mut output = BufReader::new(process.stdout.take().unwrap()).lines();
        let started = next_line(&mut output).await;
        let http = client_sdk::http_client_builder().build().unwrap();
        Self {
            url: started["url"].as_str().unwrap().to_owned(),
            elsewhere: started["elsewhere"].as_str().unwrap().to_owned(),
            http,
            control,
            output,
            _process: process,
        }
    }

    /// From now on, `/api/*` (but Better Auth's own `/api/auth/*`) is proxied to `task_api`.
    async fn proxy_to(&mut self, task_api: &str) {
        let line = format!("{}\n", json!({ "proxy": task_api }));
        self.control.write_all(line.as_bytes()).await.expect("write to Better Auth");
        assert_eq!(next_line(&mut self.output).await["proxying"], task_api);
    }

    /// Signs a new user up (email and password) and takes a JWT from `/api/auth/token`, as
    /// the frontend's `authClient.token()` does. Returns the user id and the token.
    async fn sign_up_and_get_token(&self) -> (String, String) {
        let (user_id, cookie) = self.sign_up().await;
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

    /// A token for `subject` signed with the plugin's own latest key under header `alg`
    /// (`server.mjs`'s test route: `jose` for `Ed25519`, the key's signature otherwise).
    async fn token_signed_as(&self, subject: &str, alg: &str) -> String {
        let url = format!("{}/test/sign", self.url);
        let response = self.http.get(url).query(&[("sub", subject), ("alg", alg)]).send().await;
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{alg}: {}", response.text().await.unwrap());
        let body: Value = response.json().await.unwrap();
        body["token"].as_str().expect("a token").to_owned()
    }

    /// Signs a new user up; returns the user id and the cookies Better Auth set, as a
    /// `Cookie` header value.
    async fn sign_up(&self) -> (String, String) {
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
        (user_id, cookie)
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

/// The value of cookie `name` in a `Cookie` header value.
fn cookie_value(cookies: &str, name: &str) -> Option<String> {
    cookies
        .split("; ")
        .find_map(|pair| Some(pair.strip_prefix(name)?.strip_prefix('=')?.to_owned()))
}

/// Better Auth's cookie cache in its `jwt` strategy (`session_data`: HS256 with the current
/// secret, claims `session`, `user`, `updatedAt`, no `sub`), taken from a real sign-up and sent
/// as a bearer token, across a rotation of `BETTER_AUTH_SECRETS`: the cookie signed with the old
/// secret and the one signed with the new both work; a tampered one, or one signed with a
/// secret the service does not know, are 401s.
async fn the_cookie_cache_is_a_bearer_token_through_a_secret_rotation(backend: Backend) {
    if !better_auth_can_run() {
        return;
    }
    const OLD: &str = "the-old-secret-of-a-rotation-0123456789";
    let session_data = |cookies: &str| {
        cookie_value(cookies, "better-auth.session_data").expect("Better Auth set session_data")
    };
    let before = BetterAuth::start_with(
        "EdDSA",
        &[("COOKIE_CACHE", "jwt"), ("BETTER_AUTH_SECRETS", &format!("1:{OLD}"))],
    )
    .await;
    let (old_user, cookies) = before.sign_up().await;
    let old_cookie = session_data(&cookies);
    let claims = jsonwebtoken::dangerous::insecure_decode::<Value>(&old_cookie).unwrap().claims;
    assert!(claims.get("sub").is_none() && claims["user"]["id"] == old_user, "{claims}");
    drop(before);
    let rotated = format!("2:{},1:{OLD}", integration_tests::SECRET);
    let after = BetterAuth::start_with(
        "EdDSA",
        &[("COOKIE_CACHE", "jwt"), ("BETTER_AUTH_SECRETS", &rotated)],
    )
    .await;
    let (new_user, cookies) = after.sign_up().await;
    let new_cookie = session_data(&cookies);
    let stranger = BetterAuth::start_with(
        "EdDSA",
        &[
            ("COOKIE_CACHE", "jwt"),
            ("BETTER_AUTH_SECRETS", "1:a-secret-the-service-never-saw-0123"),
        ],
    )
    .await;
    let foreign_cookie = session_data(&stranger.sign_up().await.1);

    // The service configured as an operator would, with Better Auth's own list.
    let vars = [("BETTER_AUTH_SECRETS", rotated.as_str())];
    let config = Config::from_lookup(|name| {
        vars.iter().find(|(key, _)| *key == name).map(|(_, value)| value.to_string())
    })
    .expect("a rotation configuration");
    let sources = config.key_sources();
    assert_eq!(sources.shared_secret.unwrap().0, integration_tests::SECRET.as_bytes());
    let options = Options { previous_secrets: sources.previous_secrets, ..Options::default() };
    let server = TestServer::start_with(backend, options).await;
    for (cookie, user) in [(&old_cookie, &old_user), (&new_cookie, &new_user)] {
        let client = client_sdk::authenticated(&server.base_url, cookie).unwrap();
        let body = client_sdk::types::TaskCreate::builder().title("from the cookie cache");
        let created = client.create_task().body(body).send().await.expect("the cookie is accepted");
        assert_eq!(&created.user_id, user, "the subject is user.id");
        let mine = client.list_user_tasks().user_id(user).send().await.unwrap();
        assert_eq!(mine.len(), 1);
    }
    let mut tampered = old_cookie.clone().into_bytes();
    let middle = old_cookie.find('.').unwrap() + 5;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for refused in [&tampered, &foreign_cookie] {
        let response =
            server.raw().request(reqwest::Method::GET, "/api/tasks").bearer_auth(refused);
        let response = response.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}

/// The frontend's origin in the same-origin tests: the only one cookie writes may come from.
const FRONTEND: &str = "https://app.example";

/// A request as the browser sends it through the frontend's `/api` proxy: `cookies` and no
/// `Authorization` header; `origin` when the browser would set one.
fn browser_request(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    cookies: &str,
    origin: Option<&str>,
) -> reqwest::RequestBuilder {
    let request = server.raw().request(method, path).header(header::COOKIE, cookies);
    match origin {
        Some(origin) => request.header(header::ORIGIN, origin),
        None => request,
    }
}

/// Same-origin deployments (`AUTH_COOKIES=on`): the cookies a real Better Auth sets at sign-up,
/// sent back as the browser sends them, in both cookie-cache strategies and across a rotation
/// of `BETTER_AUTH_SECRETS` (old and new cookies both work). The same cookie in its
/// `__Secure-` form and in chunks works; `session_data` also works as a bearer token. A
/// tampered cookie, an expired one (Better Auth's clock two hours behind), one signed with a
/// secret the service does not know, the session token alone, or any cookie when
/// `AUTH_COOKIES` is off: 401, and a bearer header wins over a good cookie. A cookie write
/// without an allowed `Origin` (or `Referer`) is a 403 that changes nothing.
async fn session_cookies_sign_in_a_same_origin_frontend(backend: Backend) {
    if !better_auth_can_run() {
        return;
    }
    const OLD: &str = "the-old-secret-of-a-rotation-0123456789";
    let rotated = format!("2:{},1:{OLD}", integration_tests::SECRET);
    let vars = [("BETTER_AUTH_SECRETS", rotated.as_str())];
    let config = Config::from_lookup(|name| {
        vars.iter().find(|(key, _)| *key == name).map(|(_, value)| value.to_string())
    })
    .expect("a rotation configuration");
    let previous_secrets = config.key_sources().previous_secrets;
    let options = Options {
        previous_secrets: previous_secrets.clone(),
        auth_cookies: true,
        cors_origins: vec![FRONTEND.to_owned()],
        ..Options::default()
    };
    let server = TestServer::start_with(backend, options).await;
    let cookies_off = TestServer::start_with(
        backend,
        Options { previous_secrets, cors_origins: vec![FRONTEND.to_owned()], ..Options::default() },
    )
    .await;

    for strategy in ["compact", "jwt"] {
        let signed_up = |secrets: String, skew: &'static str| async move {
            let env = [
                ("COOKIE_CACHE", strategy),
                ("BETTER_AUTH_SECRETS", secrets.as_str()),
                ("CLOCK_SKEW_SECS", skew),
            ];
            let auth = BetterAuth::start_with("EdDSA", &env).await;
            auth.sign_up().await
        };
        let (old_user, old_cookies) = signed_up(format!("1:{OLD}"), "0").await;
        let (new_user, new_cookies) = signed_up(rotated.clone(), "0").await;
        let (_, expired) = signed_up(rotated.clone(), "-7200").await;
        let (_, foreign) = signed_up("1:a-secret-the-service-never-saw-0123".into(), "0").await;
        let session_data = cookie_value(&new_cookies, "better-auth.session_data").unwrap();
        assert_eq!(jsonwebtoken::decode_header(&session_data).is_ok(), strategy == "jwt");

        for (cookies, user) in [(&old_cookies, &old_user), (&new_cookies, &new_user)] {
            let create = |origin| {
                browser_request(&server, reqwest::Method::POST, "/api/tasks", cookies, origin)
                    .json(&json!({"title": format!("signed in by a {strategy} cookie")}))
            };
            let created = create(Some(FRONTEND)).send().await.unwrap();
            assert_eq!(created.status(), StatusCode::CREATED, "{strategy}: {cookies}");
            let task: Value = created.json().await.unwrap();
            assert_eq!(&task["user_id"], user.as_str(), "the subject is user.id");
            let toggle = format!("/api/{user}/tasks/{}/complete", task["id"]);
            let toggled = browser_request(&server, reqwest::Method::PATCH, &toggle, cookies, None)
                .header(header::REFERER, format!("{FRONTEND}/tasks"))
                .send()
                .await
                .unwrap();
            assert_eq!(toggled.status(), StatusCode::OK, "a Referer stands in for Origin");

            // Cross-site: no origin at all, or another site's.
            for origin in [None, Some("https://evil.example"), Some("null")] {
                let refused = create(origin).send().await.unwrap();
                assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{strategy}: {origin:?}");
                let problem: Value = refused.json().await.unwrap();
                assert!(problem["detail"].as_str().unwrap().contains("allowed origin"));
            }
            let delete = format!("/api/tasks/{}", task["id"]);
            let foreign_delete = browser_request(
                &server,
                reqwest::Method::DELETE,
                &delete,
                cookies,
                Some("https://evil.example"),
            );
            assert_eq!(foreign_delete.send().await.unwrap().status(), StatusCode::FORBIDDEN);
            let listed = browser_request(
                &server,
                reqwest::Method::GET,
                &format!("/api/{user}/tasks"),
                cookies,
                None,
            )
            .send()
            .await
            .unwrap();
            assert_eq!(listed.status(), StatusCode::OK, "reads need no Origin");
            let listed: Vec<Value> = listed.json().await.unwrap();
            assert_eq!(listed.len(), 1, "the refused writes changed nothing");
            assert_eq!(listed[0]["completed"], true);
        }

        // The same cookie as an https Better Auth names it, and split into chunks.
        let (head, tail) = session_data.split_at(session_data.len() / 2);
        let secure = format!("__Secure-better-auth.session_data={session_data}");
        let chunked =
            format!("better-auth.session_data.1={tail}; better-auth.session_data.0={head}");
        for cookies in [secure, chunked] {
            let listed =
                browser_request(&server, reqwest::Method::GET, "/api/tasks", &cookies, None);
            assert_eq!(listed.send().await.unwrap().status(), StatusCode::OK, "{cookies}");
        }
        let as_bearer =
            server.raw().request(reqwest::Method::GET, "/api/tasks").bearer_auth(&session_data);
        assert_eq!(
            as_bearer.send().await.unwrap().status(),
            StatusCode::OK,
            "{strategy} as a bearer token"
        );

        let mut tampered = session_data.clone().into_bytes();
        let middle = tampered.len() / 2;
        tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
        let tampered = format!("better-auth.session_data={}", String::from_utf8(tampered).unwrap());
        let session_token = new_cookies
            .split("; ")
            .find(|pair| pair.starts_with("better-auth.session_token="))
            .expect("Better Auth set session_token")
            .to_owned();
        for (cookies, expected) in [
            (&tampered, "invalid token"),
            (&expired, "token expired"),
            (&foreign, "invalid token"),
            (&session_token, "missing bearer token in the Authorization header"),
        ] {
            let refused =
                browser_request(&server, reqwest::Method::GET, "/api/tasks", cookies, None);
            let refused = refused.send().await.unwrap();
            assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{strategy}: {cookies}");
            assert!(refused.headers().contains_key(header::WWW_AUTHENTICATE));
            let problem: Value = refused.json().await.unwrap();
            assert_eq!(problem["detail"], expected, "{strategy}: {cookies}");
        }
        let header_wins =
            browser_request(&server, reqwest::Method::GET, "/api/tasks", &new_cookies, None)
                .bearer_auth("not-a-valid-token");
        assert_eq!(header_wins.send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
        let off =
            browser_request(&cookies_off, reqwest::Method::GET, "/api/tasks", &new_cookies, None);
        assert_eq!(
            off.send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED,
            "AUTH_COOKIES is off"
        );
    }
}

/// RFC 9864's `"alg": "Ed25519"`, signed by `jose` with the JWT plugin's own key (Better Auth
/// does not emit the name yet), is accepted through the key set, as is the key's `EdDSA`; the
/// same key's signature under any other algorithm's name is refused.
async fn the_plugins_key_signs_under_rfc_9864s_ed25519_name_and_only_its_own_algorithm(
    backend: Backend,
) {
    if !better_auth_can_run() {
        return;
    }
    use base64::Engine as _;
    let auth = BetterAuth::start("EdDSA").await;
    // The plugin makes its key pair on the first token it signs.
    let (user_id, _) = auth.sign_up_and_get_token().await;
    let server = TestServer::start_with(backend, auth.options(&auth.url)).await;
    let status = |token: String| {
        let request = server.raw().request(reqwest::Method::GET, "/api/tasks").bearer_auth(token);
        async move { request.send().await.unwrap().status() }
    };
    let ed25519 = auth.token_signed_as(&user_id, "Ed25519").await;
    let header = ed25519.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "Ed25519", "jose wrote RFC 9864's name");
    assert_eq!(status(ed25519).await, StatusCode::OK, "Ed25519");
    assert_eq!(status(auth.token_signed_as(&user_id, "EdDSA").await).await, StatusCode::OK);
    for alg in ["ES256", "RS256", "PS256", "HS256", "none", "ed25519"] {
        let refused = status(auth.token_signed_as(&user_id, alg).await).await;
        assert_eq!(refused, StatusCode::UNAUTHORIZED, "the Ed25519 key under {alg}");
    }
}

/// Whether Chromium can run here; on a developer's machine without it the test says so and
/// skips, in CI (which installs it) it fails.
fn chromium_is_installed() -> bool {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if std::path::Path::new(&chromium).exists() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "CI is set but {chromium} is not installed");
    eprintln!("SKIPPED: {chromium} is not installed (CI installs Debian's chromium)");
    false
}

/// The whole same-origin setup in a real browser (`tests/better-auth/browser.mjs`): headless
/// Chromium signs up on the frontend's origin, which proxies `/api/*` to the service as a
/// Next.js rewrite does, and creates, toggles and lists tasks there with Better Auth's
/// (httpOnly, `compact`) cookies alone. A page on another origin of the same host, whose
/// requests carry those cookies too, posts a form to the proxy and `fetch`es with credentials
/// to the proxy and to the service: every one is a 403 and the user's tasks are unchanged.
async fn a_browser_on_the_frontends_origin_needs_no_token_and_other_sites_forge_nothing(
    backend: Backend,
) {
    if !better_auth_can_run() || !chromium_is_installed() {
        return;
    }
    let secrets = format!("1:{}", integration_tests::SECRET);
    let env = [("COOKIE_CACHE", "compact"), ("BETTER_AUTH_SECRETS", secrets.as_str())];
    let mut auth = BetterAuth::start_with("EdDSA", &env).await;
    let options =
        Options { auth_cookies: true, cors_origins: vec![auth.url.clone()], ..Options::default() };
    let server = TestServer::start_with(backend, options).await;
    // CORS preflights and the refused form's and fetches' requests are no operation.
    server.expect_undeclared_requests();
    auth.proxy_to(&server.base_url).await;

    let output = Command::new("node")
        .args(["browser.mjs", &auth.url, &auth.elsewhere, &server.base_url])
        .current_dir(fixture_dir())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .expect("the browser finished within 120 s")
        .expect("run node browser.mjs");
    assert!(output.status.success(), "browser.mjs: {}", String::from_utf8_lossy(&output.stderr));
    let seen: Value = serde_json::from_slice(&output.stdout).expect("browser.mjs's JSON line");

    let signed_in = &seen["signedIn"];
    let user_id = signed_in["userId"].as_str().expect("signed up");
    assert_eq!(
        signed_in["cookies"], "",
        "Better Auth's cookies are httpOnly: no script reads them"
    );
    for created in signed_in["created"].as_array().unwrap() {
        assert_eq!(created["status"], 201, "{seen}");
        assert_eq!(created["task"]["user_id"], user_id);
    }
    assert_eq!(signed_in["toggleStatus"], 200, "{seen}");
    assert_eq!(signed_in["listStatus"], 200, "{seen}");
    assert_eq!(signed_in["listed"].as_array().unwrap().len(), 2);
    assert_eq!(seen["authorizationHeaders"], json!([]), "no request carried a token");

    assert_eq!(seen["formStatus"], 403, "{seen}");
    let problem: Value = serde_json::from_str(seen["formBody"].as_str().unwrap()).unwrap();
    assert_eq!(problem["status"], 403);
    for forged in seen["forgedFetches"].as_array().unwrap() {
        assert_eq!(forged["status"], 403, "{forged}");
    }
    assert_eq!(seen["after"], signed_in["listed"], "the forged writes changed nothing");
    let stored = server.client(user_id).list_user_tasks().user_id(user_id).send().await.unwrap();
    assert_eq!(stored.len(), 2);
}
