//! A fleet with history, written straight into a store: nodes with labels and a
//! profile, each with one boot whose phases took plausible, varied times; most
//! reached ready, some failed in a named phase, some are in maintenance, some are
//! still booting. What the dashboard's tests and benchmark look at.
//!
//! Every write goes through the store's own methods (the same transactions and
//! events a real boot makes), so what the dashboard reads is what it would read
//! after real boots.

use ramboot::store::{Actor, BootStart, NodeChange, NodeId, Store, StoreError};
use ramboot_core::node::{MacAddr, NodeState};
use std::collections::BTreeMap;

/// The MAC of seeded node `i`: `52:54:00:` and `i` in the low three bytes.
pub fn mac(i: u32) -> MacAddr {
    let b = i.to_be_bytes();
    MacAddr([0x52, 0x54, 0x00, b[1], b[2], b[3]])
}

/// How seeded node `i` ends up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Ready,
    /// Failed while loading its image (a digest mismatch).
    FailedLoading,
    /// Failed before its agent said hello (stage one never came up).
    FailedBooting,
    Maintenance,
    /// Still in stage one.
    Booting,
}

/// Node `i`'s fate: a fixed mix, so tests can count on it (1 in 20 fails while
/// loading, 1 in 50 before stage one, 1 in 25 is in maintenance, 1 in 33 boots).
pub fn fate(i: u32) -> Fate {
    match i {
        _ if i % 20 == 7 => Fate::FailedLoading,
        _ if i % 50 == 13 => Fate::FailedBooting,
        _ if i % 25 == 3 => Fate::Maintenance,
        _ if i % 33 == 5 => Fate::Booting,
        _ => Fate::Ready,
    }
}

fn seeder() -> Actor {
    Actor::Token { name: "seed".into() }
}

/// Seed nodes `first..first + count` with `profile` assigned, their boots ending
/// by `now_ms`. Returns their ids, in order.
pub async fn seed_fleet(
    store: &Store,
    first: u32,
    count: u32,
    profile: &str,
    now_ms: i64,
) -> Result<Vec<NodeId>, StoreError> {
    let mut ids = Vec::with_capacity(count as usize);
    for i in first..first + count {
        ids.push(seed_node(store, i, profile, now_ms).await?);
    }
    Ok(ids)
}

async fn seed_node(store: &Store, i: u32, profile: &str, now_ms: i64) -> Result<NodeId, StoreError> {
    // Varied but repeatable phase times (ms): iPXE and stage one's download, the
    // agent's hello, the image fetch and verify, the switch_root.
    let jitter = i64::from(i.wrapping_mul(2_654_435_761) % 1000);
    let (booting, stage1, loading, handoff) = (1_500 + jitter * 3, 800 + jitter, 6_000 + jitter * 12, 900 + jitter / 2);
    let start = now_ms - 3_600_000 + i64::from(i % 3_000) * 1_000;
    let node = store.ensure_node(mac(i), start - 60_000).await?;
    let labels = BTreeMap::from([
        ("rack".to_string(), format!("r{:02}", i % 24)),
        ("role".to_string(), if i % 10 == 0 { "k8s-master" } else { "compute" }.to_string()),
    ]);
    let change = NodeChange { labels: Some(labels), profile: Some(Some(profile.to_string())), ..NodeChange::default() };
    store.update_node(node.id, &change, &seeder(), start - 30_000).await?;
    let hash = format!("seed-{i}-{start}");
    let token = BootStart {
        hash: &hash,
        bound_ip: std::net::IpAddr::from([10, 0, (i >> 8) as u8, i as u8]),
        stage1: None,
        served: "iPXE script",
    };
    let boot = store.start_boot(node.id, profile, None, &token, start, "seeded boot").await?;
    let fate = fate(i);
    let mut at = start + booting;
    if fate == Fate::FailedBooting {
        store.fail_boot(node.id, boot, "no hello from stage one within the booting timeout", at).await?;
        return Ok(node.id);
    }
    store.agent_transition(node.id, boot, NodeState::Stage1, "agent hello", at).await?;
    if fate == Fate::Booting {
        return Ok(node.id);
    }
    at += stage1;
    store.agent_transition(node.id, boot, NodeState::Loading, "fetching the image", at).await?;
    at += loading;
    if fate == Fate::FailedLoading {
        let reason = "image digest mismatch: expected sha256:6f1e…, got sha256:09ab… (mirror served a stale blob)";
        store.fail_boot(node.id, boot, reason, at).await?;
        return Ok(node.id);
    }
    store.agent_transition(node.id, boot, NodeState::Handoff, "switching root", at).await?;
    at += handoff;
    store.agent_transition(node.id, boot, NodeState::Ready, "stage two up", at).await?;
    if fate == Fate::Maintenance {
        store.set_maintenance(node.id, Some("DIMM B2 replacement"), &seeder(), at + 60_000).await?;
    }
    Ok(node.id)
}
