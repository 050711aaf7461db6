//! Background upkeep: old tombstones and expired idempotency keys are purged in bounded batches
//! (never one long statement or lock), often enough that nothing outlives its retention by much.

use std::{sync::Arc, time::Duration};

use crate::store::{PURGE_BATCH, Retention, TaskStore};

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
                    if purged.tombstones > 0 || purged.idempotency_keys > 0 {
                        tracing::debug!(
                            tombstones = purged.tombstones,
                            idempotency_keys = purged.idempotency_keys,
                            "purged"
                        );
                    }
                    let full = PURGE_BATCH as u64;
                    if purged.tombstones < full && purged.idempotency_keys < full {
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
