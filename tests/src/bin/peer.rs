//! `peer`: the smallest honest task service, the yardstick `cargo xtask bench` measures ours
//! against (issue 19). hyper + tokio-postgres, the four operations of the bench's mix (list,
//! get, `PUT {"title"}`, toggle) under `/api/{user_id}/tasks`, and the same HS256 check of the
//! token's `sub` against the path. Nothing else: no limits, logs, metrics, change log, ETags or
//! problem bodies. It is a measuring stick, not a second implementation of the service.
//!
//! Environment: `DATABASE_URL`, `BETTER_AUTH_SECRET`, `HOST`, `PORT`; `PEER_CONNECTIONS` (1:
//! one connection that every request pipelines through, tokio-postgres's way; more: a pool of
//! that many connections, each held by one request at a time, sqlx's way); `PEER_SCHEMA` (the
//! schema whose `tasks` table it serves: the bench's plain copy `peer`, or our own `public`).

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::{Client, NoTls, Row, Statement};

/// One connection with its four statements, prepared once.
struct Connection {
    client: Client,
    list: Statement,
    get: Statement,
    rename: Statement,
    toggle: Statement,
}

impl Connection {
    async fn open(url: &str, schema: &str) -> anyhow::Result<Self> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(connection);
        let columns = "id, user_id, title, description, completed, created_at, updated_at";
        let table = format!("{schema}.tasks");
        let owned = "WHERE id = $1 AND user_id = $2";
        Ok(Self {
            list: client
                .prepare(&format!(
                    "SELECT {columns} FROM {table} WHERE user_id = $1 ORDER BY created_at, id"
                ))
                .await?,
            get: client.prepare(&format!("SELECT {columns} FROM {table} {owned}")).await?,
            rename: client
                .prepare(&format!(
                    "UPDATE {table} SET title = $3, updated_at = now() {owned} RETURNING {columns}"
                ))
                .await?,
            toggle: client
                .prepare(&format!(
                    "UPDATE {table} SET completed = NOT completed, updated_at = now() {owned} \
                     RETURNING {columns}"
                ))
                .await?,
            client,
        })
    }
}

/// Either one shared connection (requests pipeline through it) or a pool of exclusive ones.
enum Database {
    Pipelined(Connection),
    Pooled { idle: std::sync::Mutex<Vec<Connection>>, permits: Semaphore },
}

/// A connection for one request: shared, or taken from the pool and put back on drop.
#[allow(clippy::large_enum_variant, reason = "on the stack for one request; boxing would allocate")]
enum Lease<'a> {
    Shared(&'a Connection),
    Taken { connection: Option<Connection>, pool: &'a Database, _permit: SemaphorePermit<'a> },
}

impl std::ops::Deref for Lease<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        match self {
            Lease::Shared(connection) => connection,
            Lease::Taken { connection, .. } => connection.as_ref().expect("held until drop"),
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Lease::Taken { connection, pool: Database::Pooled { idle, .. }, .. } = self
            && let Some(connection) = connection.take()
        {
            idle.lock().expect("pool lock").push(connection);
        }
    }
}

impl Database {
    async fn lease(&self) -> Lease<'_> {
        match self {
            Database::Pipelined(connection) => Lease::Shared(connection),
            Database::Pooled { idle, permits } => {
                let permit = permits.acquire().await.expect("the semaphore is never closed");
                let connection = idle.lock().expect("pool lock").pop();
                Lease::Taken { connection, pool: self, _permit: permit }
            }
        }
    }
}

struct Peer {
    database: Database,
    key: DecodingKey,
    validation: Validation,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

#[derive(serde::Deserialize)]
struct Rename {
    title: String,
}

#[derive(serde::Serialize)]
struct Task {
    id: i64,
    user_id: String,
    title: String,
    description: Option<String>,
    completed: bool,
    created_at: String,
    updated_at: String,
}

impl From<&Row> for Task {
    fn from(row: &Row) -> Self {
        let time = |column| {
            row.get::<_, DateTime<Utc>>(column).to_rfc3339_opts(SecondsFormat::Micros, true)
        };
        Task {
            id: row.get(0),
            user_id: row.get(1),
            title: row.get(2),
            description: row.get(3),
            completed: row.get(4),
            created_at: time(5),
            updated_at: time(6),
        }
    }
}

type Answer = Response<Full<Bytes>>;

fn status(status: StatusCode) -> Answer {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn json(value: &impl serde::Serialize) -> Answer {
    let body = serde_json::to_vec(value).expect("tasks serialize");
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    response
}

impl Peer {
    async fn handle(&self, request: Request<Incoming>) -> Answer {
        match self.route(request).await {
            Ok(answer) => answer,
            Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    async fn route(&self, request: Request<Incoming>) -> anyhow::Result<Answer> {
        let path = request.uri().path().to_owned();
        if path == "/health" {
            return Ok(status(StatusCode::OK));
        }
        let mut segments = path.trim_start_matches('/').split('/');
        let (Some("api"), Some(user_id), Some("tasks")) =
            (segments.next(), segments.next(), segments.next())
        else {
            return Ok(status(StatusCode::NOT_FOUND));
        };
        let task_id = match segments.next() {
            None => None,
            Some(id) => match id.parse::<i64>() {
                Ok(id) => Some(id),
                Err(_) => return Ok(status(StatusCode::NOT_FOUND)),
            },
        };
        let action = segments.next();
        if segments.next().is_some() {
            return Ok(status(StatusCode::NOT_FOUND));
        }
        if let Some(refused) = self.refuse(&request, user_id) {
            return Ok(refused);
        }
        let connection = self.database.lease().await;
        let rows = match (request.method(), task_id, action) {
            (&Method::GET, None, None) => {
                let rows = connection.client.query(&connection.list, &[&user_id]).await?;
                return Ok(json(&rows.iter().map(Task::from).collect::<Vec<_>>()));
            }
            (&Method::GET, Some(id), None) => {
                connection.client.query(&connection.get, &[&id, &user_id]).await?
            }
            (&Method::PATCH, Some(id), Some("complete")) => {
                connection.client.query(&connection.toggle, &[&id, &user_id]).await?
            }
            (&Method::PUT, Some(id), None) => {
                drop(connection);
                let body = request.into_body().collect().await?.to_bytes();
                let Ok(Rename { title }) = serde_json::from_slice(&body) else {
                    return Ok(status(StatusCode::BAD_REQUEST));
                };
                let connection = self.database.lease().await;
                connection.client.query(&connection.rename, &[&id, &user_id, &title]).await?
            }
            _ => return Ok(status(StatusCode::METHOD_NOT_ALLOWED)),
        };
        Ok(match rows.first() {
            Some(row) => json(&Task::from(row)),
            None => status(StatusCode::NOT_FOUND),
        })
    }

    /// 401 without a valid token, 403 when its subject is not the path's user.
    fn refuse(&self, request: &Request<Incoming>, user_id: &str) -> Option<Answer> {
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let Some(claims) = token.and_then(|token| {
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).ok()
        }) else {
            return Some(status(StatusCode::UNAUTHORIZED));
        };
        (claims.claims.sub != user_id).then(|| status(StatusCode::FORBIDDEN))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
    let url = env("DATABASE_URL")?;
    let schema = std::env::var("PEER_SCHEMA").unwrap_or_else(|_| "peer".into());
    anyhow::ensure!(
        schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "PEER_SCHEMA is a plain name"
    );
    let connections: usize = std::env::var("PEER_CONNECTIONS").map_or(Ok(1), |n| n.parse())?;
    let database = if connections <= 1 {
        Database::Pipelined(Connection::open(&url, &schema).await?)
    } else {
        let mut idle = Vec::new();
        for _ in 0..connections {
            idle.push(Connection::open(&url, &schema).await?);
        }
        Database::Pooled { idle: idle.into(), permits: Semaphore::new(connections) }
    };
    let peer = Arc::new(Peer {
        database,
        key: DecodingKey::from_secret(env("BETTER_AUTH_SECRET")?.as_bytes()),
        validation: Validation::new(Algorithm::HS256),
    });
    let address: SocketAddr = format!("{}:{}", env("HOST")?, env("PORT")?).parse()?;
    let listener = tokio::net::TcpListener::bind(address).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let peer = peer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let peer = peer.clone();
                async move { Ok::<_, Infallible>(peer.handle(request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
