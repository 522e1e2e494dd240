//! The boot path's side of `ramboot_core::trust`: what DHCP says about a request's
//! source address, and what happens to a refused request (counted, logged, noted
//! in the node's event log at a bounded rate, answered with a clear error).

use super::super::error::ApiError;
use super::super::AppState;
use crate::clock::now_secs;
use crate::store::{BootId, EventKind, Node, NodeId};
use axum::http::StatusCode;
use ramboot_core::dhcp::policy::DhcpMode;
use ramboot_core::trust::{AddressClaim, Bucket, Refused};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;
use tracing::warn;

/// A node's event log gets one note per refusal reason per this long: a flood of
/// refused requests is counted in `/metrics`, not written row by row.
const NOTE_EVERY_MS: i64 = 60_000;
/// Reports a boot may burst, then make per second.
const REPORT_BURST: u32 = 60;
const REPORTS_PER_SEC: f64 = 5.0;
/// Command polls a boot may burst, then make per second: the agent's long poll
/// comes back every 25 s, or sooner after an error.
const POLL_BURST: u32 = 10;
const POLLS_PER_SEC: f64 = 0.2;
/// Command polls waiting at once, over all boots and per boot (an agent restarted
/// mid-poll leaves one behind for a while): bounded tasks and timers whatever the
/// fleet or a leaked token does. Beyond these a poll is answered at once.
pub const MAX_WAITING_POLLS: usize = 2048;
const MAX_WAITING_POLLS_PER_BOOT: u32 = 2;
/// Keys a limiter remembers before it forgets the oldest half (bounded memory
/// whatever an attacker sends).
const MAX_KEYS: usize = 10_000;

/// In-memory rate limits of the boot path.
#[derive(Debug, Default)]
pub struct BootLimits {
    notes: Mutex<HashMap<(NodeId, &'static str), i64>>,
    reports: Mutex<HashMap<BootId, Bucket>>,
    polls: Mutex<HashMap<BootId, Bucket>>,
    waiting: Mutex<Waiting>,
}

/// Command polls waiting now.
#[derive(Debug, Default)]
struct Waiting {
    total: usize,
    by_boot: HashMap<BootId, u32>,
}

/// A command poll's place among the waiting ones; given back when dropped (the
/// answer sent, or the client gone and the handler's future dropped).
#[derive(Debug)]
pub struct WaitSlot {
    limits: std::sync::Arc<BootLimits>,
    boot: BootId,
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        let Ok(mut waiting) = self.limits.waiting.lock() else { return };
        waiting.total = waiting.total.saturating_sub(1);
        if let Some(n) = waiting.by_boot.get_mut(&self.boot) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                waiting.by_boot.remove(&self.boot);
            }
        }
    }
}

/// Forget the older half of a limiter's keys once it holds too many.
fn bound<K: Clone + Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>, stamp: impl Fn(&V) -> i64) {
    if map.len() < MAX_KEYS {
        return;
    }
    let mut stamps: Vec<i64> = map.values().map(&stamp).collect();
    stamps.sort_unstable();
    let cut = stamps[stamps.len() / 2];
    map.retain(|_, v| stamp(v) > cut);
}

impl BootLimits {
    /// Should this refusal go into the node's event log now?
    fn note_due(&self, node: NodeId, reason: &'static str, now_ms: i64) -> bool {
        let Ok(mut notes) = self.notes.lock() else { return true };
        bound(&mut notes, |at| *at);
        match notes.get(&(node, reason)) {
            Some(at) if now_ms - at < NOTE_EVERY_MS => false,
            _ => {
                notes.insert((node, reason), now_ms);
                true
            }
        }
    }

    /// May this boot report now (its rate, not its cap)?
    pub fn report_allowed(&self, boot: BootId, now_ms: i64) -> bool {
        let Ok(mut buckets) = self.reports.lock() else { return true };
        bound(&mut buckets, |b| b.last_ms());
        buckets.entry(boot).or_insert_with(|| Bucket::full(REPORT_BURST, now_ms)).take(
            now_ms,
            REPORTS_PER_SEC,
            REPORT_BURST,
        )
    }
}

impl BootLimits {
    /// May this boot poll for a command now (its rate)?
    pub fn poll_allowed(&self, boot: BootId, now_ms: i64) -> bool {
        let Ok(mut buckets) = self.polls.lock() else { return true };
        bound(&mut buckets, |b| b.last_ms());
        buckets.entry(boot).or_insert_with(|| Bucket::full(POLL_BURST, now_ms)).take(now_ms, POLLS_PER_SEC, POLL_BURST)
    }

    /// A place to wait for a command, or `None` when too many polls wait already
    /// (the poll is then answered without waiting).
    pub fn wait_slot(self: &std::sync::Arc<Self>, boot: BootId) -> Option<WaitSlot> {
        let Ok(mut waiting) = self.waiting.lock() else { return None };
        let mine = waiting.by_boot.get(&boot).copied().unwrap_or(0);
        if waiting.total >= MAX_WAITING_POLLS || mine >= MAX_WAITING_POLLS_PER_BOOT {
            return None;
        }
        waiting.total += 1;
        waiting.by_boot.insert(boot, mine + 1);
        Some(WaitSlot { limits: self.clone(), boot })
    }
}

/// What DHCP says about `source` and `node`: in authoritative mode who holds the
/// lease on the address, in proxy mode where ramboot last saw the node.
pub async fn address_claim(
    state: &AppState,
    node: &Node,
    source: IpAddr,
    now_ms: i64,
) -> Result<AddressClaim, ApiError> {
    Ok(match state.config.dhcp.mode {
        DhcpMode::Authoritative => {
            let holder = match source.to_canonical() {
                IpAddr::V4(v4) => state.store.lease_holder(v4, now_secs()).await?,
                IpAddr::V6(v6) => state.store.lease6_holder(v6, now_secs()).await?,
            };
            AddressClaim::Lease { holder }
        }
        DhcpMode::Proxy => AddressClaim::Sighting {
            ip: node.ip.as_deref().and_then(|ip| ip.parse().ok()),
            age: node.ip_seen_at_ms.map(|seen| Duration::from_millis(u64::try_from(now_ms - seen).unwrap_or(u64::MAX))),
        },
    })
}

/// The HTTP status of a refusal.
pub fn status_of(refused: &Refused) -> StatusCode {
    match refused {
        Refused::AlreadyReleased(_) => StatusCode::CONFLICT,
        Refused::TooManyReports => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::FORBIDDEN,
    }
}

/// Count, log and (at a bounded rate) record a refusal; the error to answer with.
pub async fn refuse(
    state: &AppState,
    node: Option<(&Node, Option<BootId>)>,
    refused: &Refused,
    now_ms: i64,
) -> ApiError {
    metrics::counter!("ramboot_boot_refusals_total", "reason" => refused.metric()).increment(1);
    let message = refused.to_string();
    match node {
        Some((node, boot)) => {
            warn!(node = node.id, mac = %node.mac, reason = refused.metric(), "boot request refused: {message}");
            if state.limits.note_due(node.id, refused.metric(), now_ms) {
                let note = format!("refused: {message}");
                if let Err(e) = state.store.add_event(node.id, boot, EventKind::Info, &note, now_ms).await {
                    warn!(node = node.id, error = %e, "could not record a refusal in the event log");
                }
            }
        }
        None => warn!(reason = refused.metric(), "boot request refused: {message}"),
    }
    ApiError::new(status_of(refused), refused.metric(), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_notes_are_rate_limited_per_node_and_reason() {
        let limits = BootLimits::default();
        assert!(limits.note_due(1, "wrong_source", 0));
        assert!(!limits.note_due(1, "wrong_source", 59_999));
        assert!(limits.note_due(1, "not_seen", 1), "another reason");
        assert!(limits.note_due(2, "wrong_source", 1), "another node");
        assert!(limits.note_due(1, "wrong_source", 60_000));
    }

    #[test]
    fn limiters_stay_bounded() {
        let limits = BootLimits::default();
        for i in 0..(3 * MAX_KEYS as i64) {
            limits.note_due(i, "x", i);
            limits.report_allowed(i, i);
            limits.poll_allowed(i, i);
        }
        assert!(limits.notes.lock().unwrap().len() <= MAX_KEYS);
        assert!(limits.reports.lock().unwrap().len() <= MAX_KEYS);
        assert!(limits.polls.lock().unwrap().len() <= MAX_KEYS);
    }

    #[test]
    fn waiting_polls_are_bounded_per_boot_and_given_back() {
        let limits = std::sync::Arc::new(BootLimits::default());
        let a = limits.wait_slot(1).expect("first");
        let b = limits.wait_slot(1).expect("second");
        assert!(limits.wait_slot(1).is_none(), "a third poll of one boot does not wait");
        assert!(limits.wait_slot(2).is_some(), "another boot has its own");
        drop(a);
        assert!(limits.wait_slot(1).is_some(), "given back on drop");
        drop(b);
        assert_eq!(limits.waiting.lock().unwrap().total, 0);
        assert!(limits.waiting.lock().unwrap().by_boot.is_empty());
        let many: Vec<WaitSlot> = (0..MAX_WAITING_POLLS as i64).filter_map(|boot| limits.wait_slot(boot)).collect();
        assert_eq!(many.len(), MAX_WAITING_POLLS);
        assert!(limits.wait_slot(-1).is_none(), "the server-wide cap");
    }

    #[test]
    fn command_polls_are_rate_limited_per_boot() {
        let limits = BootLimits::default();
        let allowed = (0..50).filter(|_| limits.poll_allowed(7, 0)).count();
        assert_eq!(allowed, POLL_BURST as usize);
        assert!(limits.poll_allowed(7, 5_000), "refills");
    }

    #[test]
    fn reports_are_rate_limited_per_boot() {
        let limits = BootLimits::default();
        let allowed = (0..200).filter(|_| limits.report_allowed(7, 0)).count();
        assert_eq!(allowed, REPORT_BURST as usize);
        assert!(limits.report_allowed(7, 1_000), "refills");
        assert!(limits.report_allowed(8, 0), "another boot has its own");
    }
}
