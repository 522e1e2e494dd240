//! Phase timeouts: a boot that sits in one phase longer than its configured limit
//! is failed with the reason, which counts toward the node's retry backoff.

use crate::config::Lifecycle;
use crate::store::Store;
use ramboot_core::node::NodeState;
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
        sweep(&store, &lifecycle, crate::clock::now_ms()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramboot_core::node::MacAddr;

    #[tokio::test]
    async fn boots_that_overrun_their_phase_fail_once_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
        let lifecycle = crate::config::Config::parse(
            std::path::Path::new("r.yaml"),
            "interface: lo\nserver_address: 127.0.0.1\ndhcp:\n  subnet: 127.0.0.0/8\n  range: [127.0.0.2, 127.0.0.9]\n\
             lifecycle:\n  booting_timeout_secs: 60\n",
        )
        .unwrap()
        .lifecycle;
        let slow = store.ensure_node(MacAddr([2, 0, 0, 0, 0, 1]), 0).await.unwrap();
        let quick = store.ensure_node(MacAddr([2, 0, 0, 0, 0, 2]), 0).await.unwrap();
        store.start_boot(slow.id, "tiny", None, &crate::store::testing::token("h1"), 1_000, "test").await.unwrap();
        store.start_boot(quick.id, "tiny", None, &crate::store::testing::token("h2"), 50_000, "test").await.unwrap();
        // At 61.5 s the first boot has sat in `booting` for 60.5 s, the second for 11.5 s.
        assert_eq!(sweep(&store, &lifecycle, 61_500).await, 1);
        let slow = store.node(slow.id).await.unwrap();
        assert_eq!((slow.state, slow.failures), (NodeState::Failed, 1));
        let last = store.events(slow.id, 0, 100).await.unwrap().pop().unwrap();
        assert_eq!(last.message, "timed out in booting after 60s");
        assert_eq!(store.node(quick.id).await.unwrap().state, NodeState::Booting);
        assert_eq!(sweep(&store, &lifecycle, 61_600).await, 0, "a failed boot is not failed again");
    }
}
