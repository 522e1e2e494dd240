//! The `boots` table: one row per boot with its token hash and pinned image, and the
//! agent-driven moves of a node within its current boot.

use super::events::{self, EventKind, NewEvent};
use super::nodes::{move_state, node_in};
use super::{corrupt, BootId, Node, NodeId, Row, Store, StoreError, Text, Tx};
use ramboot_core::node::NodeState;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Boot {
    pub id: BootId,
    pub node_id: NodeId,
    pub profile: String,
    pub image: Option<BootImage>,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub outcome: Option<String>,
    /// The address the token was issued to.
    pub bound_ip: Option<IpAddr>,
    pub plan_released_at_ms: Option<i64>,
    pub overlay_released_at_ms: Option<i64>,
    pub reports: u32,
}

/// A secret of a boot that is released once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    Plan,
    Overlay,
}

/// The root filesystem a boot was planned with (the planner's type).
pub use ramboot_core::plan::BootImage;

pub(super) fn boot_from_row(row: &Row) -> Result<Boot, StoreError> {
    let name: Option<String> = row.try_get("image_name")?;
    let digest: Option<String> = row.try_get("image_digest")?;
    let size: Option<i64> = row.try_get("image_size")?;
    let format: Option<String> = row.try_get("image_format")?;
    let image = match (name, digest, size, format) {
        (Some(name), Some(digest), Some(size), Some(format)) => {
            Some(BootImage { name, digest, size: u64::try_from(size).map_err(corrupt)?, format })
        }
        _ => None,
    };
    Ok(Boot {
        id: row.try_get("id")?,
        node_id: row.try_get("node_id")?,
        profile: row.try_get("profile")?,
        image,
        started_at_ms: row.try_get("started_at_ms")?,
        finished_at_ms: row.try_get("finished_at_ms")?,
        outcome: row.try_get("outcome")?,
        bound_ip: row.try_get::<Option<String>>("bound_ip")?.map(|s| s.parse()).transpose().map_err(corrupt)?,
        plan_released_at_ms: row.try_get("plan_released_at_ms")?,
        overlay_released_at_ms: row.try_get("overlay_released_at_ms")?,
        reports: u32::try_from(row.try_get::<i64>("reports")?).map_err(corrupt)?,
    })
}

/// End any unfinished boot of `node`: its token stops working.
pub(super) async fn supersede_boots(tx: &mut Tx<'_>, node: NodeId, now_ms: i64) -> Result<(), StoreError> {
    tx.sql(
        "UPDATE boots SET outcome = 'superseded', finished_at_ms = $1 WHERE node_id = $2 AND finished_at_ms IS NULL",
    )
    .bind(now_ms)
    .bind(node)
    .execute()
    .await?;
    Ok(())
}

/// What a new boot is started with: its token's hash, the one address the token
/// works from, and the stage-one blobs iPXE is about to fetch (kept from garbage
/// collection while the boot is in progress).
#[derive(Debug, Clone, Copy)]
pub struct BootStart<'a> {
    pub hash: &'a str,
    pub bound_ip: IpAddr,
    /// Digests of the stage-one kernel and initramfs.
    pub stage1: Option<(&'a str, &'a str)>,
    /// What the loader was given, for the timeline: `iPXE script` or `GRUB config`.
    pub served: &'a str,
}

/// Supersede the node's previous boot and make a new one current.
async fn begin_boot(
    tx: &mut Tx<'_>,
    node: NodeId,
    profile: &str,
    image: Option<&BootImage>,
    token: &BootStart<'_>,
    now_ms: i64,
) -> Result<BootId, StoreError> {
    supersede_boots(tx, node, now_ms).await?;
    let boot: BootId = tx
        .sql(
            "INSERT INTO boots (node_id, token_hash, bound_ip, stage1_kernel_digest, stage1_initrd_digest, profile,
             image_name, image_digest, image_size, image_format, started_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
        )
        .bind(node)
        .bind(token.hash)
        .bind(token.bound_ip.to_canonical().to_string())
        .bind(token.stage1.map(|(kernel, _)| kernel))
        .bind(token.stage1.map(|(_, initrd)| initrd))
        .bind(profile)
        .bind(image.map(|i| &i.name))
        .bind(image.map(|i| &i.digest))
        .bind(image.map(|i| i.size as i64))
        .bind(image.map(|i| &i.format))
        .bind(now_ms)
        .fetch_one()
        .await?
        .try_get("id")?;
    tx.sql("UPDATE nodes SET current_boot_id = $1 WHERE id = $2").bind(boot).bind(node).execute().await?;
    Ok(boot)
}

/// Move `node` to `next` within its current `boot` (see [`Store::agent_transition`]).
async fn transition_in(
    tx: &mut Tx<'_>,
    node: NodeId,
    boot: BootId,
    next: NodeState,
    message: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    let row = tx
        .sql("SELECT state, current_boot_id FROM nodes WHERE id = $1")
        .bind(node)
        .fetch_optional()
        .await?
        .ok_or_else(|| StoreError::NoSuchNode(node.to_string()))?;
    let current_boot: Option<BootId> = row.try_get("current_boot_id")?;
    if current_boot != Some(boot) {
        return Err(StoreError::StaleBoot(boot));
    }
    let Text(state): Text<NodeState> = row.try_get("state")?;
    if !state.agent_may_move_to(next) {
        return Err(StoreError::BadTransition { node, from: state, to: next });
    }
    move_state(tx, node, Some(boot), next, message, now_ms).await?;
    let failures_delta = match next {
        NodeState::Failed => "failures + 1",
        NodeState::Ready => "0",
        _ => "failures",
    };
    tx.sql(&format!("UPDATE nodes SET failures = {failures_delta} WHERE id = $1")).bind(node).execute().await?;
    if matches!(next, NodeState::Ready | NodeState::Failed) {
        tx.sql("UPDATE boots SET finished_at_ms = $1, outcome = $2 WHERE id = $3")
            .bind(now_ms)
            .bind(Text(next))
            .bind(boot)
            .execute()
            .await?;
    }
    Ok(())
}

impl Store {
    /// Start a new boot of `node`: the previous boot (if unfinished) is superseded,
    /// the node moves to `booting`, and the boot's token hash is recorded.
    pub async fn start_boot(
        &self,
        node: NodeId,
        profile: &str,
        image: Option<&BootImage>,
        token: &BootStart<'_>,
        now_ms: i64,
        why: &str,
    ) -> Result<BootId, StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let boot = begin_boot(&mut tx, node, profile, image, token, now_ms).await?;
        move_state(
            &mut tx,
            node,
            Some(boot),
            NodeState::Booting,
            &format!("{} served (profile {profile}: {why})", token.served),
            now_ms,
        )
        .await?;
        tx.commit().await?;
        Ok(boot)
    }

    /// Start a discovery boot: no profile yet, the node stays `discovered` and its
    /// agent waits for an assignment.
    pub async fn start_discovery_boot(
        &self,
        node: NodeId,
        token: &BootStart<'_>,
        awaiting_approval: Option<&str>,
        now_ms: i64,
    ) -> Result<BootId, StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let boot = begin_boot(&mut tx, node, "", None, token, now_ms).await?;
        let message = match awaiting_approval {
            Some(why) => format!("discovery boot: {why}"),
            None => "discovery boot: no profile yet; stage one reports its inventory and waits for an assignment"
                .to_string(),
        };
        events::insert(&mut tx, &NewEvent::note(node, Some(boot), EventKind::Info, &message), now_ms).await?;
        tx.commit().await?;
        Ok(boot)
    }

    /// The node and boot a per-boot token belongs to, if that boot is still current.
    pub async fn boot_by_token_hash(&self, token_hash: &str) -> Result<Option<(Node, Boot)>, StoreError> {
        let row =
            self.backend.sql("SELECT * FROM boots WHERE token_hash = $1").bind(token_hash).fetch_optional().await?;
        let Some(row) = row else { return Ok(None) };
        let boot = boot_from_row(&row)?;
        let node = self.node(boot.node_id).await?;
        if node.current_boot_id != Some(boot.id) {
            return Ok(None);
        }
        Ok(Some((node, boot)))
    }

    /// Release a secret of `boot`: true the first time, false ever after (also when
    /// two requests race: the update is atomic).
    pub async fn release_once(&self, boot: BootId, what: Release, now_ms: i64) -> Result<bool, StoreError> {
        let column = match what {
            Release::Plan => "plan_released_at_ms",
            Release::Overlay => "overlay_released_at_ms",
        };
        let sql = format!("UPDATE boots SET {column} = $1 WHERE id = $2 AND {column} IS NULL");
        let mut write = self.backend.begin_write().await?;
        let done = write.sql(&sql).bind(now_ms).bind(boot).execute().await?;
        write.commit().await?;
        Ok(done == 1)
    }

    pub async fn boot(&self, id: BootId) -> Result<Option<Boot>, StoreError> {
        let row = self.backend.sql("SELECT * FROM boots WHERE id = $1").bind(id).fetch_optional().await?;
        row.as_ref().map(boot_from_row).transpose()
    }

    /// Move a node within its current boot, as an agent reported. Refuses moves
    /// backwards and moves for a boot that is no longer current.
    pub async fn agent_transition(
        &self,
        node: NodeId,
        boot: BootId,
        next: NodeState,
        message: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.backend.begin_write().await?;
        transition_in(&mut tx, node, boot, next, message, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// An agent's report within its boot: a move to `next`, or (`None`) a progress
    /// note. Counted against the boot's `cap` in the same transaction (one commit
    /// per report); `false`, and nothing written, once the boot made `cap` reports.
    pub async fn agent_report(
        &self,
        node: NodeId,
        boot: BootId,
        next: Option<NodeState>,
        message: &str,
        cap: u32,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let counted = tx
            .sql("UPDATE boots SET reports = reports + 1 WHERE id = $1 AND reports < $2")
            .bind(boot)
            .bind(i64::from(cap))
            .execute()
            .await?;
        if counted == 0 {
            return Ok(false);
        }
        match next {
            Some(next) => transition_in(&mut tx, node, boot, next, message, now_ms).await?,
            None => {
                let note = NewEvent::note(node, Some(boot), EventKind::Progress, message);
                events::insert(&mut tx, &note, now_ms).await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// A boot that overran its phase timeout: fail it (the watchdog's move).
    pub async fn fail_boot(&self, id: NodeId, boot: BootId, reason: &str, now_ms: i64) -> Result<(), StoreError> {
        self.agent_transition(id, boot, NodeState::Failed, reason, now_ms).await
    }

    /// Give a discovery boot the profile and image it now has: the boot continues
    /// with them, and the node moves to `assigned`.
    pub async fn pin_boot(
        &self,
        node: NodeId,
        boot: BootId,
        profile: &str,
        image: &BootImage,
        why: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let current = node_in(&mut tx, node).await?;
        if current.current_boot_id != Some(boot) {
            return Err(StoreError::StaleBoot(boot));
        }
        tx.sql(
            "UPDATE boots SET profile = $1, image_name = $2, image_digest = $3, image_size = $4, image_format = $5 WHERE id = $6",
        )
        .bind(profile)
        .bind(&image.name)
        .bind(&image.digest)
        .bind(image.size as i64)
        .bind(&image.format)
        .bind(boot)
        .execute()
        .await?;
        if current.state == NodeState::Discovered {
            let message = format!("profile {profile} chosen ({why})");
            move_state(&mut tx, node, Some(boot), NodeState::Assigned, &message, now_ms).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Is `image` pinned by a boot still in progress?
    pub async fn image_in_current_boot(&self, image: &str) -> Result<bool, StoreError> {
        let row = self
            .backend
            .sql(
                "SELECT 1 FROM boots JOIN nodes ON nodes.current_boot_id = boots.id
             WHERE boots.image_name = $1 AND boots.finished_at_ms IS NULL LIMIT 1",
            )
            .bind(image)
            .fetch_optional()
            .await?;
        Ok(row.is_some())
    }

    /// Delete at most `limit` boots that finished before `before_ms`, oldest first,
    /// never a node's current boot (finished too once it is `ready`); their events
    /// go with them (`ON DELETE CASCADE`). Nodes are never deleted here. Returns how
    /// many went; the caller repeats while `limit` went, so each transaction is short.
    pub async fn prune_boots(&self, before_ms: i64, limit: i64) -> Result<u64, StoreError> {
        // As `prune_events`: a transaction of its own, in its turn.
        let mut tx = self.backend.begin_write_alone().await?;
        let done = tx
            .sql(
                "DELETE FROM boots WHERE id IN (
                 SELECT id FROM boots
                 WHERE finished_at_ms < $1
                   AND id NOT IN (SELECT current_boot_id FROM nodes WHERE current_boot_id IS NOT NULL)
                 ORDER BY id LIMIT $2)",
            )
            .bind(before_ms)
            .bind(limit)
            .execute()
            .await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Digests of the blobs pinned by boots in progress (not yet ready, failed or
    /// superseded): their stage-one kernel and initramfs and their root filesystem.
    /// Image garbage collection must keep these even when no manifest names them.
    pub async fn pinned_digests(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let rows = self
            .backend
            .sql(
                "SELECT image_digest AS digest FROM boots WHERE finished_at_ms IS NULL AND image_digest IS NOT NULL
             UNION SELECT stage1_kernel_digest FROM boots
                 WHERE finished_at_ms IS NULL AND stage1_kernel_digest IS NOT NULL
             UNION SELECT stage1_initrd_digest FROM boots
                 WHERE finished_at_ms IS NULL AND stage1_initrd_digest IS NOT NULL",
            )
            .fetch_all()
            .await?;
        rows.iter().map(|r| r.try_get::<String>("digest").map_err(StoreError::from)).collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::store::testing::{store, MAC};
    use crate::store::StoreError;
    use ramboot_core::node::NodeState;

    #[tokio::test]
    async fn only_boots_in_progress_pin_their_image() {
        let (s, _d) = store().await;
        let node = s.ensure_node(MAC, 1000).await.unwrap();
        let image = |digest: &str| super::BootImage {
            name: "web".into(),
            digest: digest.into(),
            size: 1,
            format: "squashfs".into(),
        };
        assert!(s.pinned_digests().await.unwrap().is_empty());
        let first = s
            .start_boot(node.id, "web", Some(&image("aa")), &crate::store::testing::token("h1"), 2000, "test")
            .await
            .unwrap();
        assert_eq!(s.pinned_digests().await.unwrap(), ["aa".to_string()].into());
        // A new boot supersedes the first: only the new one pins, with its stage one.
        let start = super::BootStart { stage1: Some(("k1", "i1")), ..crate::store::testing::token("h2") };
        let second = s.start_boot(node.id, "web", Some(&image("bb")), &start, 3000, "test").await.unwrap();
        assert_ne!(first, second);
        let pinned = ["bb", "i1", "k1"].map(String::from).into();
        assert_eq!(s.pinned_digests().await.unwrap(), pinned);
        s.agent_transition(node.id, second, NodeState::Stage1, "hello", 4000).await.unwrap();
        s.agent_transition(node.id, second, NodeState::Loading, "fetch", 5000).await.unwrap();
        assert_eq!(s.pinned_digests().await.unwrap().len(), 3, "loading: still pinned");
        s.agent_transition(node.id, second, NodeState::Handoff, "mounted", 6000).await.unwrap();
        s.agent_transition(node.id, second, NodeState::Ready, "up", 7000).await.unwrap();
        assert!(s.pinned_digests().await.unwrap().is_empty(), "a finished boot pins nothing");
    }

    #[tokio::test]
    async fn reports_are_capped_per_boot_and_secrets_released_once() {
        let (s, _d) = store().await;
        let node = s.ensure_node(MAC, 0).await.unwrap();
        let boot = s.start_boot(node.id, "tiny", None, &crate::store::testing::token("h"), 1, "test").await.unwrap();
        assert!(s.agent_report(node.id, boot, None, "p1", 2, 2).await.unwrap());
        assert!(s.agent_report(node.id, boot, Some(NodeState::Stage1), "hello", 2, 3).await.unwrap());
        assert!(!s.agent_report(node.id, boot, None, "p3", 2, 4).await.unwrap(), "capped");
        let events = s.events(node.id, 0, 100).await.unwrap();
        assert!(events.iter().any(|e| e.message == "p1") && !events.iter().any(|e| e.message == "p3"));
        // A refused move (its boot was superseded) is not counted.
        let boot2 = s.start_boot(node.id, "tiny", None, &crate::store::testing::token("h2"), 5, "test").await.unwrap();
        assert!(s.agent_report(node.id, boot, Some(NodeState::Loading), "x", 5, 6).await.is_err());
        assert!(s.agent_report(node.id, boot2, Some(NodeState::Stage1), "y", 5, 6).await.unwrap());
        assert!(s.agent_report(node.id, boot2, Some(NodeState::Booting), "back", 5, 6).await.is_err());
        assert_eq!(s.boot(boot2).await.unwrap().unwrap().reports, 1);
        assert!(s.release_once(boot2, super::Release::Plan, 7).await.unwrap());
        assert!(!s.release_once(boot2, super::Release::Plan, 8).await.unwrap());
        assert!(s.release_once(boot2, super::Release::Overlay, 9).await.unwrap());
    }

    #[tokio::test]
    async fn boot_timeline_moves_forward_only_and_records_phases() {
        let (s, _d) = store().await;
        let node = s.ensure_node(MAC, 1000).await.unwrap();
        assert_eq!(node.state, NodeState::Discovered);
        let boot =
            s.start_boot(node.id, "tiny", None, &crate::store::testing::token("hash1"), 2000, "test").await.unwrap();
        s.agent_transition(node.id, boot, NodeState::Stage1, "hello", 5000).await.unwrap();
        s.agent_transition(node.id, boot, NodeState::Loading, "fetch", 6000).await.unwrap();
        let err = s.agent_transition(node.id, boot, NodeState::Stage1, "again", 6500).await.unwrap_err();
        assert!(matches!(err, StoreError::BadTransition { .. }), "{err}");
        s.agent_transition(node.id, boot, NodeState::Handoff, "mounted", 9000).await.unwrap();
        s.agent_transition(node.id, boot, NodeState::Ready, "up", 12000).await.unwrap();

        let events = s.events(node.id, 0, 100).await.unwrap();
        let moves: Vec<_> = events.iter().filter_map(|e| e.state.map(|st| (st, e.phase_ms))).collect();
        assert_eq!(
            moves,
            vec![
                (NodeState::Discovered, None),
                (NodeState::Booting, Some(1000)),
                (NodeState::Stage1, Some(3000)),
                (NodeState::Loading, Some(1000)),
                (NodeState::Handoff, Some(3000)),
                (NodeState::Ready, Some(3000)),
            ]
        );
        assert_eq!(s.boot(boot).await.unwrap().unwrap().outcome.as_deref(), Some("ready"));
    }

    #[tokio::test]
    async fn a_new_boot_supersedes_the_old_token() {
        let (s, _d) = store().await;
        let node = s.ensure_node(MAC, 0).await.unwrap();
        let first = s.start_boot(node.id, "tiny", None, &crate::store::testing::token("h1"), 1, "test").await.unwrap();
        assert!(s.boot_by_token_hash("h1").await.unwrap().is_some());
        s.start_boot(node.id, "tiny", None, &crate::store::testing::token("h2"), 2, "test").await.unwrap();
        assert!(s.boot_by_token_hash("h1").await.unwrap().is_none(), "old token is dead");
        let err = s.agent_transition(node.id, first, NodeState::Stage1, "late", 3).await.unwrap_err();
        assert!(matches!(err, StoreError::StaleBoot(_)));
        assert_eq!(s.boot(first).await.unwrap().unwrap().outcome.as_deref(), Some("superseded"));
    }

    #[tokio::test]
    async fn retention_prunes_old_events_and_finished_boots_but_never_the_current_boot() {
        const DAY: i64 = 86_400_000;
        let (s, _d) = store().await;
        let node = s.ensure_node(MAC, 0).await.unwrap();
        // Three boots 1, 2 and 3 days in; the third reaches ready on day 3 and stays current.
        let mut boots = vec![];
        for day in 1..=3 {
            boots.push(
                s.start_boot(
                    node.id,
                    "tiny",
                    None,
                    &crate::store::testing::token(&format!("h{day}")),
                    day * DAY,
                    "test",
                )
                .await
                .unwrap(),
            );
        }
        let current = boots[2];
        s.agent_transition(node.id, current, NodeState::Stage1, "hello", 3 * DAY + 1).await.unwrap();
        s.agent_transition(node.id, current, NodeState::Ready, "up", 3 * DAY + 2).await.unwrap();
        for i in 0..5 {
            s.add_event(node.id, None, crate::store::EventKind::Info, &format!("note {i}"), 2 * DAY + i).await.unwrap();
        }
        let all = s.events(node.id, 0, 1000).await.unwrap();

        // Events before day 100: everything but the current boot's, two per round.
        let (mut rounds, mut gone) = (0, 0);
        loop {
            let n = s.prune_events(100 * DAY, 2).await.unwrap();
            assert!(n <= 2, "a round deletes at most its limit");
            gone += n;
            rounds += 1;
            if n < 2 {
                break;
            }
            assert!(rounds < 100, "bounded");
        }
        let left = s.events(node.id, 0, 1000).await.unwrap();
        assert!(left.iter().all(|e| e.boot_id == Some(current)), "only the current boot's timeline is left: {left:?}");
        let timeline = all.iter().filter(|e| e.boot_id == Some(current)).count();
        assert_eq!((left.len(), timeline), (3, 3), "booting, stage1, ready: {left:?}");
        assert_eq!(gone as usize, all.len() - left.len());

        // Finished boots before day 2.5: the first only. Before day 100: all but the current.
        assert_eq!(s.prune_boots(2 * DAY + DAY / 2, 10).await.unwrap(), 1);
        assert!(s.boot(boots[0]).await.unwrap().is_none());
        assert!(s.boot(boots[1]).await.unwrap().is_some());
        assert_eq!(s.prune_boots(100 * DAY, 10).await.unwrap(), 1);
        assert_eq!(s.prune_boots(100 * DAY, 10).await.unwrap(), 0);
        let kept = s.boot(current).await.unwrap().unwrap();
        assert_eq!(kept.outcome.as_deref(), Some("ready"), "the current boot stays, finished or not");
        assert_eq!(s.node_by_mac(MAC).await.unwrap().unwrap().current_boot_id, Some(current), "the node stays");
        assert!(s.boot_by_token_hash("h3").await.unwrap().is_some());
    }
}
