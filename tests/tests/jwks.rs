//! Better Auth's JWT plugin: EdDSA tokens verified against a live JWKS endpoint (served here),
//! key rotation, the refetch rate limit (after failures too), a JWKS that is down, the key set
//! fetched at start and refreshed per its `Cache-Control`, issuer and audience held to
//! `BETTER_AUTH_URL`, and both key sources at once. (`better_auth.rs` uses the real plugin.)

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use base64::Engine as _;
use integration_tests::{Backend, Options, SECRET, TestServer, now, on_every_database, token};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use poem::{EndpointExt as _, Response, Route, endpoint::make_sync, http::StatusCode};
use reqwest::{Method, header};
use serde_json::{Value, json};
use server::{
    auth::{JwksSettings, JwksTiming},
    config::Config,
};

on_every_database!(
    eddsa_tokens_verify_by_kid_and_rotation_is_picked_up,
    no_key_set_is_503_and_a_failing_jwks_never_lets_a_token_through,
    both_key_sources_serve_side_by_side,
    issuer_and_audience_are_better_auths_base_url,
    the_fully_specified_ed25519_name_works_with_ed25519_keys_only,
);

/// Test-only Ed25519 keys (PKCS#8) and their public `x`, made with `openssl genpkey`.
const KEY_1: (&str, &str) = (
    "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIFnZb/5f27+riv9B0zyKaJC8wdf9nEes9AoHYLLz43MI\n-----END PRIVATE KEY-----\n",
    "VztQmzOczyfJ29C4AvnyHccZuXongBf38FCUu7ST6lc",
);
const KEY_2: (&str, &str) = (
    "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIEBWkmfouNXp9hR4Ks53KMlSEdLWNBnFB16ArVrISfTX\n-----END PRIVATE KEY-----\n",
    "lAoEfusQNAzftFu6ivf8R46UQw86WhKwncTGoTExaog",
);
/// Never published: the attacker's key.
const KEY_3_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIFojnYUFGQSJTEHucU7n1xj9TF7qNRsh1zHvnihA5qzb\n-----END PRIVATE KEY-----\n";

const REFETCH: Duration = Duration::from_secs(2);
/// Better Auth's base URL in these tests: its plugin's `iss` and `aud`.
const BETTER_AUTH_URL: &str = "http://localhost:3000";

fn jwk(kid: &str, x: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"})
}

fn eddsa_token(pem: &str, kid: &str, subject: &str) -> String {
    let claims = json!({"sub": subject, "iat": now(), "exp": now() + 600, "iss": BETTER_AUTH_URL, "aud": BETTER_AUTH_URL});
    eddsa_token_with(pem, kid, &claims)
}

fn eddsa_token_with(pem: &str, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_pem(pem.as_bytes()).unwrap())
        .unwrap()
}

/// What the JWKS endpoint serves and what it saw.
#[derive(Default)]
struct JwksState {
    keys: Mutex<Vec<Value>>,
    down: AtomicBool,
    cache_control: Mutex<Option<String>>,
    fetched_at: Mutex<Vec<Instant>>,
}

/// A JWKS endpoint whose keys, availability and caching headers the test controls, and which
/// counts the requests it receives.
struct Jwks {
    url: String,
    state: Arc<JwksState>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Jwks {
    fn start(keys: Vec<Value>) -> Self {
        let state = Arc::new(JwksState { keys: Mutex::new(keys), ..JwksState::default() });
        let endpoint = make_sync(|req| {
            let state = req.data::<Arc<JwksState>>().unwrap();
            state.fetched_at.lock().unwrap().push(Instant::now());
            if state.down.load(Ordering::SeqCst) {
                return Response::builder().status(StatusCode::BAD_GATEWAY).finish();
            }
            let body = json!({"keys": *state.keys.lock().unwrap()}).to_string();
            let mut response = Response::builder().content_type("application/json");
            if let Some(cache_control) = state.cache_control.lock().unwrap().as_deref() {
                response = response.header(header::CACHE_CONTROL, cache_control);
            }
            response.body(body)
        });
        let app = Route::new().at("/api/auth/jwks", endpoint).data(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/auth/jwks", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server::serve(listener, app, async {
            let _ = stopped.await;
        }));
        Self { url, state, _stop: stop }
    }

    fn fetches(&self) -> usize {
        self.state.fetched_at.lock().unwrap().len()
    }

    fn set_keys(&self, keys: Vec<Value>) {
        *self.state.keys.lock().unwrap() = keys;
    }

    fn set_up(&self, up: bool) {
        self.state.down.store(!up, Ordering::SeqCst);
    }

    /// Waits (bounded) until the endpoint has received `count` requests.
    async fn wait_for_fetches(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.fetches() < count {
            assert!(Instant::now() < deadline, "{} fetches, expected {count}", self.fetches());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The settings a server gets from its configuration (`BETTER_AUTH_URL` as issuer and
    /// audience), with a short refetch interval instead of production's 30 s.
    fn settings(&self, refetch_interval: Duration) -> JwksSettings {
        let vars =
            [("BETTER_AUTH_JWKS_URL", self.url.as_str()), ("BETTER_AUTH_URL", BETTER_AUTH_URL)];
        let config = Config::from_lookup(|name| {
            vars.iter().find(|(key, _)| *key == name).map(|(_, value)| value.to_string())
        })
        .expect("a JWKS configuration");
        let mut settings = config.key_sources().jwks.expect("JWKS settings");
        settings.timing.refetch_interval = refetch_interval;
        settings
    }
}

async fn server_with(backend: Backend, jwks: &Jwks, shared_secret: bool) -> TestServer {
    server_with_settings(backend, jwks.settings(REFETCH), shared_secret).await
}

async fn server_with_settings(
    backend: Backend,
    settings: JwksSettings,
    shared_secret: bool,
) -> TestServer {
    let options =
        Options { jwks: Some(settings), no_shared_secret: !shared_secret, ..Options::default() };
    TestServer::start_with(backend, options).await
}

async fn status(server: &TestServer, token: &str) -> (u16, Option<String>) {
    let response =
        server.raw().request(Method::GET, "/api/tasks").bearer_auth(token).send().await.unwrap();
    let retry_after =
        response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), retry_after)
}

async fn eddsa_tokens_verify_by_kid_and_rotation_is_picked_up(backend: Backend) {
    let secret_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
    // An `oct` (symmetric) key in a public set must never be used to verify anything.
    let symmetric = json!({"kty": "oct", "k": secret_b64, "kid": "sym", "alg": "HS256"});
    let jwks = Jwks::start(vec![jwk("k1", KEY_1.1), symmetric]);
    let server = server_with(backend, &jwks, false).await;

    let alice = eddsa_token(KEY_1.0, "k1", "alice");
    let client = client_sdk::authenticated(&server.base_url, &alice).unwrap();
    let created = client
        .create_task()
        .body(client_sdk::types::TaskCreate::builder().title("via JWKS"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.user_id, "alice");
    for _ in 0..5 {
        assert_eq!(client.list_tasks().send().await.unwrap().len(), 1);
    }
    assert_eq!(jwks.fetches(), 1, "keys are cached");

    let mut sym_header = Header::new(Algorithm::HS256);
    sym_header.kid = Some("sym".into());
    let sym = jsonwebtoken::encode(
        &sym_header,
        &json!({"sub": "alice", "exp": now() + 600}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let rejected = [
        ("HS256 with only a JWKS configured", token("alice")),
        ("HS256 under the symmetric JWK", sym),
        ("an unpublished key claiming kid k1", eddsa_token(KEY_3_PEM, "k1", "alice")),
        ("no kid", {
            let claims = json!({"sub": "alice", "exp": now() + 600});
            jsonwebtoken::encode(
                &Header::new(Algorithm::EdDSA),
                &claims,
                &EncodingKey::from_ed_pem(KEY_1.0.as_bytes()).unwrap(),
            )
            .unwrap()
        }),
    ];
    for (what, token) in &rejected {
        assert_eq!(status(&server, token).await.0, 401, "{what}");
    }

    // A flood of unknown kids costs at most one refetch per interval.
    let before = jwks.fetches();
    for i in 0..20 {
        assert_eq!(
            status(&server, &eddsa_token(KEY_3_PEM, &format!("made-up-{i}"), "x")).await.0,
            401
        );
    }
    assert!(
        jwks.fetches() - before <= 1,
        "{} fetches for 20 unknown kids",
        jwks.fetches() - before
    );

    // Rotation: k2 replaces k1. Within the interval the new kid is not fetched yet…
    jwks.set_keys(vec![jwk("k2", KEY_2.1)]);
    let bob = eddsa_token(KEY_2.0, "k2", "bob");
    let started = Instant::now();
    let early = status(&server, &bob).await.0;
    if started.elapsed() < REFETCH / 2 {
        assert_eq!(early, 401, "refetches are rate-limited");
    }
    // …and after it, the first token carrying it brings the new set in.
    tokio::time::sleep(REFETCH + Duration::from_millis(100)).await;
    assert_eq!(status(&server, &bob).await.0, 200, "rotated key picked up");
    assert_eq!(status(&server, &alice).await.0, 401, "the retired key is gone");
}

async fn no_key_set_is_503_and_a_failing_jwks_never_lets_a_token_through(backend: Backend) {
    let jwks = Jwks::start(vec![jwk("k1", KEY_1.1)]);
    jwks.set_up(false);
    let server = server_with(backend, &jwks, false).await;
    // The fetch at start failed; that is logged, and the server serves all the same.
    jwks.wait_for_fetches(1).await;
    let alice = eddsa_token(KEY_1.0, "k1", "alice");

    let started = Instant::now();
    let response =
        server.raw().request(Method::GET, "/api/tasks").bearer_auth(&alice).send().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key(header::RETRY_AFTER));
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
    // Still no keys: 503 again (not a 401, not a pass).
    assert_eq!(status(&server, &alice).await.0, 503);

    jwks.set_up(true);
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(&server, &alice).await.0 != 200 {
        assert!(Instant::now() < deadline, "not recovered after the JWKS came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Down again: cached keys keep working, unknown kids are refused, never let through.
    jwks.set_up(false);
    tokio::time::sleep(REFETCH + Duration::from_millis(100)).await;
    let unknown = eddsa_token(KEY_2.0, "k2", "mallory");
    let fetches = jwks.fetches();
    assert_eq!(status(&server, &unknown).await.0, 401);
    assert_eq!(jwks.fetches(), fetches + 1, "the unknown kid caused one (failed) refetch");
    assert_eq!(status(&server, &alice).await.0, 200);
}

async fn both_key_sources_serve_side_by_side(backend: Backend) {
    let jwks = Jwks::start(vec![jwk("k1", KEY_1.1)]);
    let server = server_with(backend, &jwks, true).await;
    assert_eq!(status(&server, &token("hs-user")).await.0, 200, "shared-secret token");
    assert_eq!(
        status(&server, &eddsa_token(KEY_1.0, "k1", "jwks-user")).await.0,
        200,
        "JWKS token"
    );
    // Algorithm confusion: an HS256 token keyed with the published public key.
    let public = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(KEY_1.1).unwrap();
    let mut confused = Header::new(Algorithm::HS256);
    confused.kid = Some("k1".into());
    let forged = jsonwebtoken::encode(
        &confused,
        &json!({"sub": "jwks-user", "exp": now() + 600}),
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    assert_eq!(status(&server, &forged).await.0, 401);
    // An EdDSA header on an HMAC signature goes to the JWKS and fails there.
    let mut lying = Header::new(Algorithm::HS256);
    lying.kid = Some("k1".into());
    let hmac = jsonwebtoken::encode(
        &lying,
        &json!({"sub": "x", "exp": now() + 600}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let parts: Vec<&str> = hmac.split('.').collect();
    let eddsa_header =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","kid":"k1"}"#);
    let spliced = format!("{eddsa_header}.{}.{}", parts[1], parts[2]);
    assert_eq!(status(&server, &spliced).await.0, 401);
}

async fn issuer_and_audience_are_better_auths_base_url(backend: Backend) {
    let jwks = Jwks::start(vec![jwk("k1", KEY_1.1)]);
    let server = server_with(backend, &jwks, true).await;
    let claims = |iss: Value, aud: Value| json!({"sub": "alice", "iat": now(), "exp": now() + 600, "iss": iss, "aud": aud});
    let base = json!(BETTER_AUTH_URL);
    let slashed = json!(format!("{BETTER_AUTH_URL}/"));
    let evil = json!("http://evil.example");
    let cases = [
        ("Better Auth's own values", claims(base.clone(), base.clone()), 200),
        ("a trailing slash", claims(slashed.clone(), slashed), 200),
        ("an aud array holding it", claims(base.clone(), json!([evil, BETTER_AUTH_URL])), 200),
        ("another issuer", claims(evil.clone(), base.clone()), 401),
        ("another audience", claims(base.clone(), evil.clone()), 401),
        ("an aud array without it", claims(base.clone(), json!([evil])), 401),
        ("no iss", json!({"sub": "alice", "exp": now() + 600, "aud": BETTER_AUTH_URL}), 401),
        ("no aud", json!({"sub": "alice", "exp": now() + 600, "iss": BETTER_AUTH_URL}), 401),
    ];
    for (what, claims, expected) in cases {
        let token = eddsa_token_with(KEY_1.0, "k1", &claims);
        assert_eq!(status(&server, &token).await.0, expected, "{what}");
    }
    // Shared-secret tokens keep their rule: issuer and audience only when configured.
    let hs256 = integration_tests::sign(
        &json!({"sub": "hs", "exp": now() + 600, "iss": "http://elsewhere.example", "aud": "x"}),
    );
    assert_eq!(status(&server, &hs256).await.0, 200);
}

/// `/health`'s body, through the generated client.
async fn health(server: &TestServer) -> client_sdk::types::Health {
    server.anonymous().health().send().await.expect("health").into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_set_is_fetched_at_start_and_health_reports_it() {
    use client_sdk::types::{HealthStatus, JwksStatus};

    let jwks = Jwks::start(vec![jwk("k1", KEY_1.1)]);
    let server = server_with(Backend::Sqlite, &jwks, true).await;
    jwks.wait_for_fetches(1).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while health(&server).await.jwks != Some(JwksStatus::Ok) {
        assert!(Instant::now() < deadline, "the key set fetched at start never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health(&server).await.status, HealthStatus::Healthy);
    // The first user after a deploy does not wait for a fetch: the keys are there already.
    assert_eq!(status(&server, &eddsa_token(KEY_1.0, "k1", "alice")).await.0, 200);
    assert_eq!(jwks.fetches(), 1);

    // The auth server is down at start: the service starts and serves HS256 tokens; `/health`
    // says degraded (not 503); asymmetric tokens are 503s until a key set loads.
    let down = Jwks::start(vec![jwk("k1", KEY_1.1)]);
    down.set_up(false);
    // A long interval keeps the background refresher from retrying within this test.
    let settings = down.settings(Duration::from_secs(3600));
    let server = server_with_settings(Backend::Sqlite, settings, true).await;
    down.wait_for_fetches(1).await;
    let health_response = server.anonymous().health().send().await.unwrap();
    assert_eq!(health_response.status(), StatusCode::OK);
    let degraded = health_response.into_inner();
    assert_eq!(degraded.status, HealthStatus::Degraded);
    assert_eq!(degraded.jwks, Some(JwksStatus::Unavailable));
    // Not ready for traffic while no key set has loaded.
    let ready = server.raw().request(Method::GET, "/health/ready").send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    assert_eq!(status(&server, &token("hs-user")).await.0, 200);
    assert_eq!(status(&server, &eddsa_token(KEY_1.0, "k1", "alice")).await.0, 503);

    // Back up: concurrent requests for the same missing key set share one fetch (while no key
    // set has loaded, requests may retry 2 s after a failed fetch).
    down.set_up(true);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = down.fetches();
    let alice = eddsa_token(KEY_1.0, "k1", "alice");
    let statuses = futures::future::join_all((0..20).map(|_| status(&server, &alice))).await;
    assert!(statuses.iter().all(|(code, _)| *code == 200), "{statuses:?}");
    assert_eq!(down.fetches(), before + 1, "20 concurrent requests, one fetch");
    assert_eq!(health(&server).await.status, HealthStatus::Healthy);
    assert_eq!(server.anonymous().ready().send().await.unwrap().status(), StatusCode::OK);
}

/// The contract: at most one request to the key set per 30 s once a key set has loaded, failed
/// fetches included. Run with production's interval: a key set loads at start, the endpoint
/// goes down, and made-up kids arrive in concurrent bursts until 40 s after the first failed
/// fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fetch_does_not_shorten_the_refetch_interval() {
    let interval = JwksTiming::default().refetch_interval;
    let jwks = Jwks::start(vec![jwk("k1", KEY_1.1)]);
    let server = server_with_settings(Backend::Sqlite, jwks.settings(interval), false).await;
    let alice = eddsa_token(KEY_1.0, "k1", "alice");
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(&server, &alice).await.0 != 200 {
        assert!(Instant::now() < deadline, "the key set never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    jwks.set_up(false);

    let mut first_failure = None;
    let mut burst = 0;
    loop {
        let fetched = jwks.state.fetched_at.lock().unwrap().clone();
        if first_failure.is_none() && fetched.len() >= 2 {
            first_failure = Some(fetched[1]);
        }
        if first_failure.is_some_and(|at| at.elapsed() >= Duration::from_secs(40)) {
            break;
        }
        let made_up: Vec<String> = (0..10)
            .map(|i| eddsa_token(KEY_3_PEM, &format!("made-up-{burst}-{i}"), "mallory"))
            .collect();
        let statuses = futures::future::join_all(made_up.iter().map(|t| status(&server, t))).await;
        assert!(statuses.iter().all(|(code, _)| *code == 401), "{statuses:?}");
        assert_eq!(status(&server, &alice).await.0, 200, "cached keys keep working");
        burst += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let fetched = jwks.state.fetched_at.lock().unwrap().clone();
    let first_failure = first_failure.unwrap();
    let after_failure = fetched.iter().filter(|at| **at > first_failure).count();
    eprintln!(
        "{} requests to the key set in all; {} in the 40 s after the first failed fetch, \
         for {} made-up kids",
        fetched.len(),
        after_failure,
        burst * 10
    );
    for pair in fetched.windows(2) {
        assert!(pair[1] - pair[0] >= interval, "two fetches {:?} apart", pair[1] - pair[0]);
    }
    assert_eq!(after_failure, 1, "one more (failed) fetch, 30 s after the first failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_set_is_refreshed_per_its_max_age_and_removed_keys_stop_working() {
    let jwks = Jwks::start(vec![jwk("k1", KEY_1.1), jwk("k2", KEY_2.1)]);
    *jwks.state.cache_control.lock().unwrap() = Some("public, max-age=1".into());
    // No unknown-kid refetch within this test: only the background refresh can fetch.
    let mut settings = jwks.settings(Duration::from_secs(3600));
    settings.timing.min_refresh = Duration::from_secs(1);
    let server = server_with_settings(Backend::Sqlite, settings, false).await;
    let alice = eddsa_token(KEY_1.0, "k1", "alice");
    let bob = eddsa_token(KEY_2.0, "k2", "bob");
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(&server, &alice).await.0 != 200 {
        assert!(Instant::now() < deadline, "the key set never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // k1 is retired from the set: it stops working after the next refresh, with no request.
    jwks.set_keys(vec![jwk("k2", KEY_2.1)]);
    let retired_at = jwks.fetches();
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(&server, &alice).await.0 != 401 {
        assert!(Instant::now() < deadline, "a removed key is still accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(jwks.fetches() > retired_at);
    assert_eq!(status(&server, &bob).await.0, 200);
    // And it keeps refreshing on its own, about once a second.
    let before = jwks.fetches();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        (before + 1..=before + 3).contains(&jwks.fetches()),
        "{} refreshes",
        jwks.fetches() - before
    );
}

/// A token whose header names the algorithm `alg_name`, signed with the Ed25519 key `pem`
/// (jsonwebtoken cannot write the RFC 9864 name, so the header is written by hand).
fn ed25519_signed_as(alg_name: &str, pem: &str, kid: &str, claims: &Value) -> String {
    let encode =
        |value: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string());
    let header = json!({"alg": alg_name, "kid": kid, "typ": "JWT"});
    let message = format!("{}.{}", encode(&header), encode(claims));
    let key = EncodingKey::from_ed_pem(pem.as_bytes()).unwrap();
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::EdDSA).unwrap();
    format!("{message}.{signature}")
}

/// RFC 9864's `"alg": "Ed25519"` (which Better Auth means to emit) verifies like `EdDSA`, with an
/// Ed25519 key published under either name, and under the same rules; no other algorithm name
/// gets an Ed25519 key's signature through.
async fn the_fully_specified_ed25519_name_works_with_ed25519_keys_only(backend: Backend) {
    let mut renamed = jwk("k2", KEY_2.1);
    renamed["alg"] = json!("Ed25519");
    let jwks = Jwks::start(vec![jwk("k1", KEY_1.1), renamed]);
    for shared_secret in [false, true] {
        let server = server_with(backend, &jwks, shared_secret).await;
        let claims = json!({"sub": "ed", "iat": now(), "exp": now() + 600, "iss": BETTER_AUTH_URL, "aud": BETTER_AUTH_URL});
        for (kid, pem) in [("k1", KEY_1.0), ("k2", KEY_2.0)] {
            let token = ed25519_signed_as("Ed25519", pem, kid, &claims);
            assert_eq!(status(&server, &token).await.0, 200, "Ed25519 with {kid}");
            let token = ed25519_signed_as("EdDSA", pem, kid, &claims);
            assert_eq!(status(&server, &token).await.0, 200, "EdDSA with {kid}");
        }
        let refused = [
            ("the attacker's key", ed25519_signed_as("Ed25519", KEY_3_PEM, "k1", &claims)),
            ("another key's kid", ed25519_signed_as("Ed25519", KEY_2.0, "k1", &claims)),
            ("another algorithm's name", ed25519_signed_as("ES256", KEY_1.0, "k1", &claims)),
            ("a made-up name", ed25519_signed_as("Ed448", KEY_1.0, "k1", &claims)),
            ("an unknown kid", ed25519_signed_as("Ed25519", KEY_1.0, "k9", &claims)),
            ("expired", {
                let mut old = claims.clone();
                old["exp"] = json!(now() - 3600);
                ed25519_signed_as("Ed25519", KEY_1.0, "k1", &old)
            }),
            ("another issuer", {
                let mut other = claims.clone();
                other["iss"] = json!("http://evil.example");
                ed25519_signed_as("Ed25519", KEY_1.0, "k1", &other)
            }),
        ];
        for (what, token) in refused {
            assert_eq!(status(&server, &token).await.0, 401, "{what}");
        }
        // A tampered payload under a genuine signature.
        let token = ed25519_signed_as("Ed25519", KEY_1.0, "k1", &claims);
        let parts: Vec<&str> = token.split('.').collect();
        let forged = json!({"sub": "someone-else", "exp": now() + 600, "iss": BETTER_AUTH_URL, "aud": BETTER_AUTH_URL});
        let forged_payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged.to_string());
        let spliced = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert_eq!(status(&server, &spliced).await.0, 401, "a tampered payload");
    }
}
