//! Phase timeouts: a boot that sits in one phase longer than its configured limit
//! is failed with the reason, which counts toward the node's retry backoff.

use crate::config::Lifecycle;
use crate::node::NodeState;
use crate::store::Store;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

const SCAN_EVERY: Duration = Duration::from_secs(5);

/// The phases that have a timeout, with it.
pub fn limits(l: &Lifecycle) -> [(NodeState, Duration); 4] {
    [
        (NodeState::Booting, l.booting_timeout),
        (NodeState::Stage1, l.stage1_timeout),
        (NodeState::Loading, l.loading_timeout),
        (NodeState::Handoff, l.handoff_timeout),
    ]
}

/// Fail every boot that overran its phase, once.
pub async fn sweep(store: &Store, lifecycle: &Lifecycle, now_ms: i64) -> usize {
    let mut failed = 0;
    for (state, limit) in limits(lifecycle) {
        let before = now_ms - limit.as_millis() as i64;
        let stuck = match store.nodes_in_state_since(state, before).await {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "watchdog: reading nodes failed");
                continue;
            }
        };
        for node in stuck {
            let Some(boot) = node.current_boot_id else { continue };
            let reason = format!("timed out in {state} after {}s", limit.as_secs());
            match store.fail_boot(node.id, boot, &reason, now_ms).await {
                Ok(()) => {
                    info!(node = node.id, boot, %reason, "boot failed by the watchdog");
                    failed += 1;
                }
                // The node moved on meanwhile (or a new boot began): nothing to do.
                Err(e) => info!(node = node.id, boot, error = %e, "watchdog: node moved on"),
            }
        }
    }
    failed
}

pub async fn run(store: Store, lifecycle: Lifecycle, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(SCAN_EVERY) => {}
        }
        sweep(&store, &lifecycle, crate::http::now_ms()).await;
    }
}
