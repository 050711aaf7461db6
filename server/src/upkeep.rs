//! Background upkeep: old tombstones, expired idempotency keys and superseded change-log entries
//! are purged in bounded batches (never one long statement or lock), often enough that nothing
//! outlives its retention by much.

use std::{sync::Arc, time::Duration};

use crate::store::{Purged, Retention, TaskStore};

/// Starts the purge loop; it runs for as long as the runtime does.
pub fn spawn(store: Arc<dyn TaskStore>, retention: Retention) {
    tokio::spawn(run(store, retention));
}

/// A quarter of the shorter retention, from a second to a minute: a row outlives its retention
/// by at most that much.
pub fn interval(retention: Retention) -> Duration {
    (retention.tombstones.min(retention.idempotency_keys) / 4)
        .clamp(Duration::from_secs(1), Duration::from_secs(60))
}

async fn run(store: Arc<dyn TaskStore>, retention: Retention) {
    let mut ticks = tokio::time::interval(interval(retention));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // Batch after batch while they come back full, yielding in between.
        loop {
            match store.purge().await {
                Ok(purged) => {
                    if purged != Purged::default() {
                        tracing::debug!(
                            tombstones = purged.tombstones,
                            idempotency_keys = purged.idempotency_keys,
                            compacted_owners = purged.compacted_owners,
                            "purged"
                        );
                    }
                    if !purged.was_full() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "purging old tombstones and keys failed");
                    break;
                }
            }
        }
    }
}
