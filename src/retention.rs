//! Retention: old events and finished boots are pruned, so the database does not
//! grow without bound. Nodes are never pruned, nor a node's current boot or its
//! events (see `Store::prune_events`, `Store::prune_boots`).
//!
//! Each round deletes at most [`BATCH`] rows in its own short transaction, with a
//! pause between rounds, so pruning a backlog never holds SQLite's one write lock
//! long enough to delay a DHCP commit or a boot's write noticeably.

use crate::store::{Store, StoreError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Rows per round.
pub const BATCH: i64 = 500;
/// Rounds per sweep: a backlog larger than this is finished by the next sweeps.
const MAX_ROUNDS: usize = 200;
/// Pause between rounds: other writers get the lock in between.
const BETWEEN_ROUNDS: Duration = Duration::from_millis(50);
/// How often a sweep runs (the first one a minute after start).
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
const FIRST_SWEEP: Duration = Duration::from_secs(60);

/// How long history is kept; `None` keeps it for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub events: Option<Duration>,
    pub finished_boots: Option<Duration>,
}

impl Retention {
    /// From days, 0 meaning "keep for ever".
    pub fn from_days(events_days: u32, finished_boots_days: u32) -> Retention {
        let days = |d: u32| (d > 0).then(|| Duration::from_secs(u64::from(d) * 86_400));
        Retention { events: days(events_days), finished_boots: days(finished_boots_days) }
    }
}

/// What one sweep deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub events: u64,
    pub boots: u64,
    /// The round limit was reached with more to delete.
    pub more: bool,
}

/// One sweep at `now_ms`: events, then finished boots, in rounds of `batch` until a
/// round deletes fewer (or `MAX_ROUNDS` rounds ran).
pub async fn sweep(store: &Store, retention: Retention, now_ms: i64, batch: i64) -> Result<Swept, StoreError> {
    let mut swept = Swept::default();
    let cutoff = |keep: Duration| now_ms.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
    let mut rounds = 0;
    for (keep, is_events) in [(retention.events, true), (retention.finished_boots, false)] {
        let Some(keep) = keep else { continue };
        let before = cutoff(keep);
        loop {
            if rounds == MAX_ROUNDS {
                swept.more = true;
                return Ok(swept);
            }
            rounds += 1;
            let n = if is_events {
                store.prune_events(before, batch).await?
            } else {
                store.prune_boots(before, batch).await?
            };
            if is_events {
                swept.events += n;
            } else {
                swept.boots += n;
            }
            if (n as i64) < batch {
                break;
            }
            tokio::time::sleep(BETWEEN_ROUNDS).await;
        }
    }
    Ok(swept)
}

/// Sweep every [`SWEEP_EVERY`] until `cancel` fires. A failed sweep (disk full: a
/// delete needs room in the WAL too) is logged and retried at the next one.
pub async fn run(store: Store, retention: Retention, cancel: CancellationToken) {
    if retention.events.is_none() && retention.finished_boots.is_none() {
        return;
    }
    let mut wait = FIRST_SWEEP;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = SWEEP_EVERY;
        let started = std::time::Instant::now();
        match sweep(&store, retention, crate::clock::now_ms(), BATCH).await {
            Ok(s) if s.events + s.boots > 0 => info!(
                events = s.events,
                boots = s.boots,
                more = s.more,
                took_ms = started.elapsed().as_millis() as u64,
                "retention: pruned old history"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "retention: pruning failed; retrying at the next sweep"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EventKind;

    const DAY_MS: i64 = 86_400_000;

    #[test]
    fn zero_days_keeps_for_ever() {
        let r = Retention::from_days(0, 90);
        assert_eq!(r.events, None);
        assert_eq!(r.finished_boots, Some(Duration::from_secs(90 * 86_400)));
    }

    #[tokio::test]
    async fn a_sweep_prunes_a_backlog_in_bounded_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("r.db").display())).await.unwrap();
        let mac = "52:54:00:00:00:09".parse().unwrap();
        let node = store.ensure_node(mac, 0).await.unwrap();
        for i in 0..25 {
            store.add_event(node.id, None, EventKind::Info, "old", i).await.unwrap();
        }
        store.add_event(node.id, None, EventKind::Info, "new", 40 * DAY_MS).await.unwrap();
        let retention = Retention::from_days(30, 0);
        let swept = sweep(&store, retention, 41 * DAY_MS, 10).await.unwrap();
        // 25 old notes and the node's creation event; three rounds of 10.
        assert_eq!(swept, Swept { events: 26, boots: 0, more: false });
        let left = store.events(node.id, 0, 100).await.unwrap();
        assert_eq!(left.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(), ["new"]);
        assert!(store.node_by_mac(mac).await.unwrap().is_some(), "nodes are never pruned");
    }
}
