//! Better Auth's JWT plugin: EdDSA tokens verified against a live JWKS endpoint (served here),
//! key rotation, the refetch rate limit, a JWKS that is down, and both key sources at once.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use base64::Engine as _;
use integration_tests::{Backend, Options, SECRET, TestServer, now, on_both_databases, token};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use poem::{EndpointExt as _, Response, Route, endpoint::make_sync, http::StatusCode};
use reqwest::{Method, header};
use serde_json::{Value, json};

on_both_databases!(
    eddsa_tokens_verify_by_kid_and_rotation_is_picked_up,
    no_key_set_is_503_and_a_failing_jwks_never_lets_a_token_through,
    both_key_sources_serve_side_by_side,
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

fn jwk(kid: &str, x: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"})
}

fn eddsa_token(pem: &str, kid: &str, subject: &str) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    let claims = json!({"sub": subject, "iat": now(), "exp": now() + 600, "iss": "http://localhost:3000", "aud": "http://localhost:3000"});
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_pem(pem.as_bytes()).unwrap())
        .unwrap()
}

/// A JWKS endpoint whose keys, availability and fetch count the test controls.
struct Jwks {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    up: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Jwks {
    fn start(keys: Vec<Value>) -> Self {
        let keys = Arc::new(Mutex::new(keys));
        let up = Arc::new(AtomicBool::new(true));
        let fetches = Arc::new(AtomicUsize::new(0));
        let state = (keys.clone(), up.clone(), fetches.clone());
        let endpoint = make_sync(|req| {
            let (keys, up, fetches) =
                req.data::<(Arc<Mutex<Vec<Value>>>, Arc<AtomicBool>, Arc<AtomicUsize>)>().unwrap();
            fetches.fetch_add(1, Ordering::SeqCst);
            if !up.load(Ordering::SeqCst) {
                return Response::builder().status(StatusCode::BAD_GATEWAY).finish();
            }
            let body = json!({"keys": *keys.lock().unwrap()}).to_string();
            Response::builder().content_type("application/json").body(body)
        });
        let app = Route::new().at("/api/auth/jwks", endpoint).data(state);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/auth/jwks", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server::serve(listener, app, async {
            let _ = stopped.await;
        }));
        Self { url, keys, up, fetches, _stop: stop }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn server_with(backend: Backend, jwks: &Jwks, shared_secret: bool) -> TestServer {
    let options = Options {
        jwks: Some((jwks.url.clone(), REFETCH)),
        no_shared_secret: !shared_secret,
        ..Options::default()
    };
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
    *jwks.keys.lock().unwrap() = vec![jwk("k2", KEY_2.1)];
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
    jwks.up.store(false, Ordering::SeqCst);
    let server = server_with(backend, &jwks, false).await;
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

    jwks.up.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(&server, &alice).await.0 != 200 {
        assert!(Instant::now() < deadline, "not recovered after the JWKS came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Down again: cached keys keep working, unknown kids are refused, never let through.
    jwks.up.store(false, Ordering::SeqCst);
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
