//! Restarts that lose no request: on the shutdown signal `/health/ready` turns 503 at once while
//! requests are still served for the drain period (`SHUTDOWN_DRAIN_SECS`), so that a load
//! balancer probing readiness stops sending new ones; only then does the listener close, and the
//! requests in flight finish, and open event streams end.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;

/// Whether this instance is draining; shared by every request (the readiness probe reads it).
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<Phases>);

#[derive(Debug, Default)]
struct Phases {
    draining: AtomicBool,
    /// Set when the listener closes: event streams end then (they would otherwise hold the
    /// shutdown for its whole grace period).
    closing: watch::Sender<bool>,
}

impl Draining {
    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::Relaxed)
    }

    /// Resolves once the listener is closing.
    pub fn closing(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut closing = self.0.closing.subscribe();
        async move {
            // An error: the sender is gone, and so is the server.
            let _ = closing.wait_for(|closing| *closing).await;
        }
    }

    /// The shutdown to hand to [`crate::serve`]: resolves `drain` after `signal`, and marks the
    /// instance as draining in between.
    pub async fn after(self, signal: impl Future<Output = ()>, drain: Duration) {
        signal.await;
        self.0.draining.store(true, Ordering::Relaxed);
        tracing::info!(
            drain_secs = drain.as_secs_f64(),
            "shutting down: not ready any more, still serving while load balancers notice"
        );
        tokio::time::sleep(drain).await;
        tracing::info!("closing the listener; requests in flight may finish");
        self.0.closing.send_replace(true);
    }
}
