//! The fleet page: counts per state, the nodes that need attention (failed, or
//! stuck in a boot phase past its timeout) with their reason, how long boot phases
//! took in the last day, and the live event feed.

use super::{format, render, Chrome, UiError, Viewer};
use crate::clock::now_ms;
use crate::http::metrics::PHASE_BUCKETS;
use crate::http::AppState;
use crate::store::{self, NodeFilter};
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use ramboot_core::node::NodeState;

/// Nodes listed under "needs attention" at most (failed first, then stuck).
const ATTENTION_ROWS: i64 = 50;
const FEED_EVENTS: i64 = 40;
const CHART_WINDOW_MS: i64 = 24 * 3_600_000;
/// The phases of a boot, in order: what the chart shows.
const PHASES: [NodeState; 4] = [NodeState::Booting, NodeState::Stage1, NodeState::Loading, NodeState::Handoff];

pub struct StateCount {
    pub state: &'static str,
    pub n: i64,
}

pub struct AttentionRow {
    pub id: i64,
    pub mac: String,
    pub hostname: String,
    pub state: &'static str,
    pub since: String,
    pub reason: String,
}

pub struct Bar {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
    pub label: String,
    pub title: String,
}

pub struct PhaseChart {
    pub phase: &'static str,
    pub count: usize,
    pub median: String,
    pub p90: String,
    pub max: String,
    pub width: usize,
    pub bars: Vec<Bar>,
    pub summary: String,
}

pub struct FeedItem {
    pub at: String,
    pub at_iso: String,
    pub node_id: i64,
    pub text: String,
}

#[derive(Template)]
#[template(path = "ui/fleet.html")]
struct FleetPage {
    chrome: Chrome,
    total: i64,
    counts: Vec<StateCount>,
    attention: Vec<AttentionRow>,
    attention_more: bool,
    phases: Vec<PhaseChart>,
    feed: Vec<FeedItem>,
}

/// The `q`-quantile of sorted `values` (nearest rank).
fn quantile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

const BAR_SLOT: usize = 40;
const BAR_HEIGHT: usize = 32;

/// Durations of one phase drawn as the histogram's buckets (`le` bounds in
/// seconds, then everything above the last), bars scaled to the fullest bucket.
pub fn chart(phase: NodeState, mut durations_ms: Vec<i64>) -> PhaseChart {
    durations_ms.sort_unstable();
    let mut counts = vec![0usize; PHASE_BUCKETS.len() + 1];
    for &ms in &durations_ms {
        let secs = ms as f64 / 1000.0;
        let slot = PHASE_BUCKETS.iter().position(|&le| secs <= le).unwrap_or(PHASE_BUCKETS.len());
        counts[slot] += 1;
    }
    let fullest = counts.iter().copied().max().unwrap_or(0).max(1);
    let label = |slot: usize| match PHASE_BUCKETS.get(slot) {
        Some(le) => format!("≤{le}"),
        None => format!(">{}", PHASE_BUCKETS.last().copied().unwrap_or(0.0)),
    };
    let bars = counts
        .iter()
        .enumerate()
        .map(|(slot, &n)| {
            let h = if n == 0 { 0 } else { (n * BAR_HEIGHT).div_ceil(fullest).max(1) };
            Bar {
                x: slot * BAR_SLOT,
                y: BAR_HEIGHT + 2 - h,
                w: BAR_SLOT - 6,
                h,
                label: label(slot),
                title: format!("{} s: {n} move{}", label(slot), if n == 1 { "" } else { "s" }),
            }
        })
        .collect();
    let (median, p90) = (quantile(&durations_ms, 0.5), quantile(&durations_ms, 0.9));
    PhaseChart {
        phase: phase.as_str(),
        count: durations_ms.len(),
        median: format::duration(median),
        p90: format::duration(p90),
        max: format::duration(durations_ms.last().copied().unwrap_or(0)),
        width: counts.len() * BAR_SLOT,
        bars,
        summary: format!(
            "{}: {} moves, median {}, 90th percentile {}",
            phase.as_str(),
            durations_ms.len(),
            format::duration(median),
            format::duration(p90)
        ),
    }
}

async fn attention(state: &AppState, now: i64) -> Result<(Vec<AttentionRow>, bool), UiError> {
    let filter = NodeFilter { state: Some(NodeState::Failed), limit: ATTENTION_ROWS + 1, ..NodeFilter::default() };
    let mut nodes: Vec<(store::Node, Option<String>)> = Vec::new();
    let failed = state.store.list_nodes_sorted(&filter, store::NodeSort::StateSince, true, 0).await?;
    let ids: Vec<i64> = failed.iter().map(|n| n.id).collect();
    let mut reasons = state.store.last_move_messages(&ids, NodeState::Failed).await?;
    nodes.extend(failed.into_iter().map(|n| {
        let reason = reasons.remove(&n.id);
        (n, reason)
    }));
    // The watchdog's own limits: past them it fails the boot at its next sweep.
    for (phase, timeout) in crate::watchdog::limits(&state.config.lifecycle) {
        let before = now - i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        for n in state.store.nodes_in_state_since(phase, before).await? {
            let reason = format!(
                "in {} for longer than its {} timeout",
                phase.as_str(),
                format::duration(timeout.as_millis() as i64)
            );
            nodes.push((n, Some(reason)));
        }
    }
    let more = nodes.len() > ATTENTION_ROWS as usize;
    nodes.truncate(ATTENTION_ROWS as usize);
    let rows = nodes
        .into_iter()
        .map(|(n, reason)| AttentionRow {
            id: n.id,
            mac: n.mac.to_string(),
            hostname: n.hostname,
            state: n.state.as_str(),
            since: format::ago(n.state_since_ms, now),
            reason: reason.unwrap_or_default(),
        })
        .collect();
    Ok((rows, more))
}

/// How long a computed phase chart is reused: it covers a day, so seconds do not
/// matter, and at thousands of nodes it is most of the page's cost (a page that
/// refreshes live would pay it on every event).
const CHART_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Phase durations as read, and when.
type Durations = (std::time::Instant, Vec<(NodeState, i64)>);

/// The last phase durations read: one per server.
#[derive(Clone, Default)]
pub struct PhaseCache(std::sync::Arc<tokio::sync::Mutex<Option<Durations>>>);

impl PhaseCache {
    async fn durations(&self, state: &AppState, since_ms: i64) -> Result<Vec<(NodeState, i64)>, UiError> {
        // Held across the read: concurrent pages wait for one read instead of each making it.
        let mut cached = self.0.lock().await;
        if let Some((_, durations)) = cached.as_ref().filter(|(at, _)| at.elapsed() < CHART_TTL) {
            return Ok(durations.clone());
        }
        let durations = state.store.phase_durations(since_ms).await?;
        *cached = Some((std::time::Instant::now(), durations.clone()));
        Ok(durations)
    }
}

pub async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    axum::Extension(cache): axum::Extension<PhaseCache>,
) -> Result<Response, UiError> {
    let now = now_ms();
    let by_state = state.store.count_by_state().await?;
    let counts: Vec<StateCount> = NodeState::ALL
        .iter()
        .map(|s| StateCount { state: s.as_str(), n: by_state.get(s).copied().unwrap_or(0) })
        .collect();
    let (attention, attention_more) = attention(&state, now).await?;
    let mut by_phase: std::collections::BTreeMap<NodeState, Vec<i64>> = Default::default();
    for (phase, ms) in cache.durations(&state, now - CHART_WINDOW_MS).await? {
        by_phase.entry(phase).or_default().push(ms);
    }
    let phases = PHASES.iter().filter_map(|p| by_phase.remove(p).map(|d| chart(*p, d))).collect();
    let feed = state
        .store
        .recent_events(None, FEED_EVENTS)
        .await?
        .into_iter()
        .rev()
        .map(|e| FeedItem {
            at: format::time(e.at_ms),
            at_iso: format::iso(e.at_ms),
            node_id: e.node_id,
            text: match e.state {
                Some(s) => format!("→ {}: {}", s.as_str(), e.message),
                None => e.message,
            },
        })
        .collect();
    let page = FleetPage {
        chrome: Chrome::new(Some(&viewer), "/ui/", "fleet"),
        total: counts.iter().map(|c| c.n).sum(),
        counts,
        attention,
        attention_more,
        phases,
        feed,
    };
    Ok(render(StatusCode::OK, &page, viewer.flash.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_chart_uses_the_histograms_buckets() {
        let c = chart(NodeState::Loading, vec![400, 900, 3_000, 3_100, 700_000]);
        assert_eq!(c.count, 5);
        assert_eq!(c.bars.len(), PHASE_BUCKETS.len() + 1);
        let heights: Vec<usize> = c.bars.iter().map(|b| b.h).collect();
        // 0.4 s → ≤0.5; 0.9 s → ≤1; 3.0 and 3.1 s → ≤5; 700 s → above 600.
        assert_eq!(heights[0], 16);
        assert_eq!(heights[1], 16);
        assert_eq!(heights[3], 32, "the fullest bucket is full height");
        assert_eq!(heights[PHASE_BUCKETS.len()], 16);
        assert_eq!((c.median.as_str(), c.max.as_str()), ("3.0 s", "11 min 40 s"));
        assert_eq!(c.bars[3].title, "≤5 s: 2 moves");
    }

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let v = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        assert_eq!((quantile(&v, 0.5), quantile(&v, 0.9), quantile(&[], 0.5)), (5, 9, 0));
    }
}
