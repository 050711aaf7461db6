//! Serving connections: HTTP/1.1 straight through hyper, each connection under the limits of
//! [`crate::connections`], closed when idle, and a shutdown that lets requests in flight finish.
//!
//! poem's `Server` does the same through hyper-util's auto (HTTP/1 or HTTP/2) builder, which
//! reads a connection's first 24 bytes to tell the two apart and hands them to HTTP/1 apart
//! from the rest: hyper's 8 KB read buffer then grows to 16 KB on every connection. This
//! service refuses HTTP/2 anyway (`connections`), so that cost bought nothing; nor did poem's
//! idle timeout, a second task per connection woken at every read and write. Here the idle
//! clock is a timestamp the connection's own task looks at when it would expire. Measured in
//! `docs/benchmarks.md` ("Serving connections with hyper's HTTP/1 builder").

use std::{convert::Infallible, future::Future, io, net::TcpListener, sync::Arc, time::Duration};

use http_body_util::combinators::BoxBody;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use poem::{
    Endpoint, EndpointExt as _,
    http::uri::Scheme,
    listener::{Acceptor as _, TcpAcceptor},
    web::{LocalAddr, RemoteAddr},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::connections::{ConnectionLimits, Guarded, LimitedAcceptor};

/// How long requests in flight may take to finish after the listener closes.
const GRACE_PERIOD: Duration = Duration::from_secs(10);
/// After a failed accept (out of descriptors, say), the next try.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` until `shutdown` resolves, then closes the listener, asks every
/// connection to close after its request in flight, and waits for them for the grace period.
pub async fn serve_with(
    listener: TcpListener,
    app: impl Endpoint + 'static,
    shutdown: impl Future<Output = ()>,
    limits: ConnectionLimits,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut acceptor = LimitedAcceptor::new(TcpAcceptor::from_std(listener)?, &limits);
    let app = Arc::new(app.map_to_response());
    let closing = CancellationToken::new();
    let abandoned = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = acceptor.accept() => match accepted {
                Ok((io, local, remote, scheme)) => {
                    let connection = Connection {
                        app: app.clone(),
                        local,
                        remote,
                        scheme,
                        idle_timeout: limits.idle_timeout,
                        closing: closing.clone(),
                        abandoned: abandoned.clone(),
                    };
                    connections.spawn(connection.serve(io));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "could not accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(acceptor);
    closing.cancel();
    connections.close();
    if tokio::time::timeout(GRACE_PERIOD, connections.wait()).await.is_err() {
        tracing::warn!(
            open = connections.len(),
            "requests still in flight at the end of the grace period; closing their connections"
        );
        abandoned.cancel();
    }
    Ok(())
}

/// What one connection's task needs besides its socket.
struct Connection<E> {
    app: Arc<E>,
    local: LocalAddr,
    remote: RemoteAddr,
    scheme: Scheme,
    idle_timeout: Duration,
    /// The listener has closed: finish the request in flight, then close.
    closing: CancellationToken,
    /// The grace period is over: close now.
    abandoned: CancellationToken,
}

impl<E: Endpoint<Output = poem::Response> + 'static> Connection<E> {
    async fn serve(self, io: Guarded) {
        let activity = io.activity();
        let Self { app, local, remote, scheme, idle_timeout, closing, abandoned } = self;
        let service = service_fn(move |request: hyper::Request<Incoming>| {
            let app = app.clone();
            let request =
                poem::Request::from((request, local.clone(), remote.clone(), scheme.clone()));
            // A task of its own: a request runs to its end when its client leaves (hyper drops
            // the future it holds when the connection closes, wherever it is, and sqlx's
            // `begin` is one place where that leaves a transaction open; see
            // `store::warm::begin_whole`). It also keeps the endpoint's future (a few KB) out
            // of hyper's place for it, which lives as long as the connection.
            let handled = tokio::spawn(async move { app.get_response(request).await });
            async move {
                let response = handled.await.unwrap_or_else(|_| {
                    poem::IntoResponse::into_response(crate::error::ApiError::Internal)
                });
                Ok::<_, Infallible>(hyper::Response::<BoxBody<bytes::Bytes, io::Error>>::from(
                    response,
                ))
            }
        });
        let mut builder = http1::Builder::new();
        // `connections` times every request's arrival; hyper's own clock would need a timer.
        builder.header_read_timeout(None);

        let connection = builder.serve_connection(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        loop {
            let idle_at = activity.last() + idle_timeout;
            tokio::select! {
                _ = connection.as_mut() => return,
                () = closing.cancelled() => break,
                () = tokio::time::sleep_until(idle_at) => {
                    if activity.last() + idle_timeout <= tokio::time::Instant::now() {
                        break;
                    }
                }
            }
        }
        // Closes at once between requests; otherwise once the response in flight is out.
        connection.as_mut().graceful_shutdown();
        tokio::select! {
            _ = connection => {}
            () = abandoned.cancelled() => {}
        }
    }
}
