//! One node: its settings and facts, lease, volumes and power; what it would boot
//! now and why (the planner's own decision); every recent boot as a timeline of
//! its phases, the failed one marked with its reason; its events; its hardware.

use super::nodes::{Choice, RowContext};
use super::{format, render, Chrome, UiError, Viewer};
use crate::clock::now_ms;
use crate::http::AppState;
use crate::store::{self, Event};
use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use ramboot_core::node::NodeState;
use ramboot_core::plan::Decision;

const BOOTS_SHOWN: i64 = 20;
const EVENTS_SHOWN: i64 = 300;
/// The timeline's width in SVG units; a phase gets at least a sliver of it.
const TIMELINE_WIDTH: i64 = 1000;
const MIN_SEGMENT: i64 = 3;

pub struct Segment {
    pub class: &'static str,
    pub x: i64,
    pub w: i64,
    pub label: String,
    pub title: String,
}

/// A boot's phases laid out along one bar.
pub struct BootView {
    pub id: i64,
    pub profile: String,
    pub started: String,
    pub outcome: String,
    pub total: String,
    pub failed: bool,
    pub failed_phase: &'static str,
    pub reason: Option<String>,
    pub segments: Vec<Segment>,
    pub summary: String,
}

/// A phase of a boot: which, how long (ms), and whether it is still going on.
pub type Phase = (NodeState, i64, bool);

/// How long each phase of a boot lasted, from its state moves in order: a move's
/// `phase_ms` is the time spent in the state before it. The last phase runs until
/// `now` while the boot goes on. Returns (phase, ms, ongoing) and, when the boot
/// failed, the phase it failed in and why.
pub fn phases(moves: &[&Event], now: i64) -> (Vec<Phase>, Option<(NodeState, String)>) {
    let mut out = Vec::new();
    let mut failed = None;
    for pair in moves.windows(2) {
        let (Some(from), Some(to)) = (pair[0].state, pair[1].state) else { continue };
        let ms = pair[1].phase_ms.unwrap_or(pair[1].at_ms - pair[0].at_ms);
        out.push((from, ms, false));
        if to == NodeState::Failed {
            failed = Some((from, pair[1].message.clone()));
        }
    }
    if let Some(last) = moves.last().filter(|e| e.state.is_some_and(in_boot)) {
        out.push((last.state.unwrap_or(NodeState::Booting), now - last.at_ms, true));
    }
    (out, failed)
}

/// States a node passes through while a boot is under way.
fn in_boot(state: NodeState) -> bool {
    matches!(state, NodeState::Booting | NodeState::Stage1 | NodeState::Loading | NodeState::Handoff)
}

fn boot_view(boot: store::Boot, events: &[Event], now: i64) -> BootView {
    let moves: Vec<&Event> = events.iter().filter(|e| e.boot_id == Some(boot.id) && e.state.is_some()).collect();
    let (phases, failed) = phases(&moves, now);
    let phases: Vec<_> = phases.into_iter().filter(|(p, _, _)| in_boot(*p)).collect();
    let total: i64 = phases.iter().map(|(_, ms, _)| ms.max(&0)).sum::<i64>().max(1);
    let mut x = 0;
    let segments = phases
        .iter()
        .enumerate()
        .map(|(i, &(phase, ms, ongoing))| {
            let last = i + 1 == phases.len();
            let w = if last {
                (TIMELINE_WIDTH - x).max(MIN_SEGMENT)
            } else {
                (ms.max(0) * TIMELINE_WIDTH / total).max(MIN_SEGMENT)
            };
            let failed_here = last && failed.as_ref().is_some_and(|(p, _)| *p == phase);
            let label = format!("{} {}", phase.as_str(), format::duration(ms));
            let segment = Segment {
                class: if failed_here { "failed" } else { phase.as_str() },
                x,
                w,
                title: format!(
                    "{label}{}{}",
                    if ongoing { " so far" } else { "" },
                    if failed_here { " — failed here" } else { "" }
                ),
                label,
            };
            x = (x + w).min(TIMELINE_WIDTH);
            segment
        })
        .collect::<Vec<_>>();
    let end = boot.finished_at_ms.unwrap_or(now);
    BootView {
        id: boot.id,
        profile: boot.profile,
        started: format::time(boot.started_at_ms),
        outcome: boot.outcome.unwrap_or_else(|| "in progress".into()),
        total: format::duration(end - boot.started_at_ms),
        failed: failed.is_some(),
        failed_phase: failed.as_ref().map(|(p, _)| p.as_str()).unwrap_or(""),
        summary: format!(
            "Boot {} phases: {}",
            boot.id,
            segments.iter().map(|s| s.title.as_str()).collect::<Vec<_>>().join(", ")
        ),
        reason: failed.map(|(_, reason)| reason),
        segments,
    }
}

pub struct EventRow {
    pub at: String,
    pub at_iso: String,
    pub boot: String,
    pub kind: &'static str,
    pub state: &'static str,
    pub phase: String,
    pub message: String,
}

#[derive(Template)]
#[template(path = "ui/node.html")]
struct NodePage {
    chrome: Chrome,
    admin: bool,
    csrf: String,
    n: super::nodes::Row,
    state_since: String,
    facts: Vec<(&'static str, String)>,
    would_boot: String,
    leases: Vec<(String, &'static str, String)>,
    volumes: Vec<(String, String, String)>,
    power: String,
    has_bmc: bool,
    reserved_ip: String,
    profiles: Vec<Choice>,
    boots: Vec<BootView>,
    events: Vec<EventRow>,
    inventory: String,
}

/// What the planner would decide for `node` now, in words: the same decision a
/// boot script request would get, without starting a boot.
/// DHCP's architecture, and what the agent last reported of the firmware.
fn firmware(node: &store::Node) -> String {
    let arch = node.arch.as_deref().unwrap_or("—");
    let reported = node
        .inventory
        .as_ref()
        .and_then(|inv| serde_json::from_value::<ramboot_proto::FirmwareFacts>(inv["firmware"].clone()).ok());
    match reported {
        Some(facts) => format!("{arch}; {facts}"),
        None => arch.to_string(),
    }
}

/// What DHCP hands this node's UEFI PXE firmware, decided as DHCP decides it.
fn boot_chain(state: &AppState, node: &store::Node) -> String {
    use ramboot_core::dhcp::decide::{Host, Hosts};
    let host = Host { profile: node.profile.clone(), boot_chain: node.boot_chain, ..Host::default() };
    let mut hosts = Hosts::default();
    hosts.set_profile_chains(state.profiles.boot_chains(), state.config.default_profile.as_deref());
    let chain = hosts.chain_of(Some(&host), &state.config.dhcp_policy());
    let why = if node.boot_chain.is_some() { "set on the node" } else { "from its profile or the fleet" };
    format!("{chain} ({why})")
}

fn would_boot(state: &AppState, node: &store::Node) -> String {
    let profiles = state.profiles.current();
    match ramboot_core::plan::plan_boot(
        &crate::http::boot::view_of(node),
        &*profiles,
        &state.images,
        crate::http::boot::settings(state),
    ) {
        Decision::Boot(plan) => match (&plan.profile, &plan.awaiting_approval) {
            (Some(boot), _) => format!(
                "Profile {} ({}), image {} {}.",
                boot.profile,
                boot.describe(),
                boot.image.name,
                boot.image.digest.get(..12).unwrap_or(&boot.image.digest)
            ),
            (None, Some(wait)) => format!("Discovery only: {wait}."),
            (None, None) => {
                "Discovery: no profile is assigned, no selector matches, and there is no default profile.".into()
            }
        },
        Decision::Refuse(refusal) => format!("Nothing: {}.", refusal.reason()),
    }
}

pub async fn page(State(state): State<AppState>, viewer: Viewer, Path(id): Path<String>) -> Result<Response, UiError> {
    let node = crate::http::api::find_node(&state, &id).await?;
    let now = now_ms();
    let boots = state.store.node_boots(node.id, BOOTS_SHOWN).await?;
    let mut events = state.store.recent_events(Some(node.id), EVENTS_SHOWN).await?;
    let boot_views = boots.into_iter().map(|b| boot_view(b, &events, now)).collect();
    events.reverse();
    let event_rows = events
        .into_iter()
        .map(|e| EventRow {
            at: format::time(e.at_ms),
            at_iso: format::iso(e.at_ms),
            boot: e.boot_id.map(|b| b.to_string()).unwrap_or_default(),
            kind: e.kind.as_str(),
            state: e.state.map(|s| s.as_str()).unwrap_or(""),
            phase: e.phase_ms.map(format::duration).unwrap_or_default(),
            message: e.message,
        })
        .collect();
    // IPv4 and IPv6 (DHCPv6) leases in one table.
    let row = |ip: String, state: crate::store::LeaseState, expires_at: u64| {
        (ip, state.as_str(), format::time(i64::try_from(expires_at).unwrap_or(i64::MAX).saturating_mul(1000)))
    };
    let mut leases: Vec<_> = state
        .store
        .leases_of(node.mac)
        .await?
        .into_iter()
        .map(|l| row(l.ip.to_string(), l.state, l.expires_at))
        .collect();
    leases.extend(
        state.store.leases6_of(node.mac).await?.into_iter().map(|l| row(l.address.to_string(), l.state, l.expires_at)),
    );
    let volumes = state
        .store
        .node_volumes(node.id)
        .await?
        .into_iter()
        .map(|v| (v.name, format::bytes(v.size_bytes), v.lun.map(|l| l.to_string()).unwrap_or_default()))
        .collect();
    let power = match (&node.bmc, state.power.last_check(node.id)) {
        (None, _) => "No BMC.".to_string(),
        (Some(bmc), None) => format!("BMC {} not polled yet.", bmc.url),
        (Some(bmc), Some(c)) => format!(
            "BMC {}: {}{} (checked {}).",
            bmc.url,
            c.power.map(|p| p.as_str()).unwrap_or(c.status.as_str()),
            c.error.map(|e| format!(", {e}")).unwrap_or_default(),
            format::ago(c.checked_at_ms, now)
        ),
    };
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    let or_none = |s: Option<&str>| s.filter(|s| !s.is_empty()).unwrap_or("—").to_string();
    let facts = vec![
        ("Id", node.id.to_string()),
        ("MAC", node.mac.to_string()),
        (
            "Address",
            match (&node.ip, node.ip_seen_at_ms) {
                (Some(ip), Some(at)) => format!("{ip} (seen {})", format::ago(at, now)),
                (Some(ip), None) => ip.clone(),
                _ => "—".into(),
            },
        ),
        ("Reserved address", or_none(node.reserved_ip.as_deref())),
        ("Assigned profile", or_none(node.profile.as_deref())),
        ("Firmware", firmware(&node)),
        ("Boot chain", boot_chain(&state, &node)),
        ("Firmware UUID", or_none(node.client_uuid.as_deref())),
        ("Approved", yes_no(node.approved)),
        ("Failed boots in a row", node.failures.to_string()),
        ("Maintenance", or_none(node.maintenance_reason.as_deref())),
        (
            "BMC",
            node.bmc.as_ref().map(|b| format!("{} (secret {})", b.url, b.credential)).unwrap_or_else(|| "—".into()),
        ),
        (
            "Declared in",
            match &node.declared_in {
                Some(file) => format!(
                    "{file} ({})",
                    node.declared_fields.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", ")
                ),
                None => "—".into(),
            },
        ),
        ("Known since", format::time(node.created_at_ms)),
    ];
    let inventory = node.inventory.as_ref().and_then(|i| serde_json::to_string_pretty(i).ok()).unwrap_or_default();
    let profiles = super::profile_names(&state);
    let profiles = profiles
        .into_iter()
        .map(|p| Choice { selected: node.profile.as_deref() == Some(p.as_str()), value: p, label: "" })
        .collect();
    let context = RowContext::load(&state, std::slice::from_ref(&node)).await?;
    let page = NodePage {
        chrome: Chrome::new(Some(&viewer), "/ui/nodes", "node"),
        admin: viewer.is_admin(),
        csrf: viewer.csrf.clone(),
        state_since: format!("{} ({})", format::time(node.state_since_ms), format::ago(node.state_since_ms, now)),
        facts,
        would_boot: would_boot(&state, &node),
        leases,
        volumes,
        power,
        has_bmc: node.bmc.is_some(),
        reserved_ip: node.reserved_ip.clone().unwrap_or_default(),
        profiles,
        boots: boot_views,
        events: event_rows,
        inventory,
        n: context.row(&state, node),
    };
    Ok(render(StatusCode::OK, &page, viewer.flash.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EventKind;

    fn moved(id: i64, at_ms: i64, state: NodeState, phase_ms: Option<i64>, message: &str) -> Event {
        Event {
            id,
            node_id: 1,
            boot_id: Some(7),
            at_ms,
            kind: EventKind::State,
            state: Some(state),
            phase_ms,
            message: message.into(),
        }
    }

    #[test]
    fn a_failed_boot_names_the_phase_it_failed_in() {
        let events = [
            moved(1, 1_000, NodeState::Booting, Some(50), "script served"),
            moved(2, 3_000, NodeState::Stage1, Some(2_000), "hello"),
            moved(3, 9_000, NodeState::Loading, Some(6_000), "plan"),
            moved(4, 9_500, NodeState::Failed, Some(500), "image digest mismatch"),
        ];
        let moves: Vec<&Event> = events.iter().collect();
        let (phases, failed) = phases(&moves, 100_000);
        assert_eq!(
            phases,
            [(NodeState::Booting, 2_000, false), (NodeState::Stage1, 6_000, false), (NodeState::Loading, 500, false)]
        );
        assert_eq!(failed, Some((NodeState::Loading, "image digest mismatch".into())));
        let boot = store::Boot {
            id: 7,
            node_id: 1,
            profile: "tiny".into(),
            image: None,
            started_at_ms: 1_000,
            finished_at_ms: Some(9_500),
            outcome: Some("failed".into()),
            bound_ip: None,
            plan_released_at_ms: None,
            overlay_released_at_ms: None,
            reports: 3,
        };
        let view = boot_view(boot, &events, 100_000);
        assert!(view.failed);
        assert_eq!(view.failed_phase, "loading");
        let classes: Vec<&str> = view.segments.iter().map(|s| s.class).collect();
        assert_eq!(classes, ["booting", "stage1", "failed"]);
        assert_eq!(view.segments.last().map(|s| s.x + s.w), Some(TIMELINE_WIDTH), "the bar is full width");
    }

    #[test]
    fn a_boot_in_progress_runs_its_last_phase_until_now() {
        let events = [
            moved(1, 1_000, NodeState::Booting, None, "script"),
            moved(2, 4_000, NodeState::Stage1, Some(3_000), "hello"),
        ];
        let moves: Vec<&Event> = events.iter().collect();
        let (phases, failed) = phases(&moves, 10_000);
        assert_eq!(phases, [(NodeState::Booting, 3_000, false), (NodeState::Stage1, 6_000, true)]);
        assert_eq!(failed, None);
    }
}
