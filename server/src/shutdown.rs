//! Restarts that lose no request: on the shutdown signal `/health/ready` turns 503 at once while
//! requests are still served for the drain period (`SHUTDOWN_DRAIN_SECS`), so that a load
//! balancer probing readiness stops sending new ones; only then does the listener close, and the
//! requests in flight finish.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// Whether this instance is draining; shared by every request (the readiness probe reads it).
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// The shutdown to hand to [`crate::serve`]: resolves `drain` after `signal`, and marks the
    /// instance as draining in between.
    pub async fn after(self, signal: impl Future<Output = ()>, drain: Duration) {
        signal.await;
        self.0.store(true, Ordering::Relaxed);
        tracing::info!(
            drain_secs = drain.as_secs_f64(),
            "shutting down: not ready any more, still serving while load balancers notice"
        );
        tokio::time::sleep(drain).await;
        tracing::info!("closing the listener; requests in flight may finish");
    }
}
