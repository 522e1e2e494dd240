//! Reads the dashboard needs beyond the API's: a node's boots, the boots and the
//! failure reasons of one page of nodes (one query each, not one per row), and the
//! boot-phase durations of recent boots.

use super::boots::boot_from_row;
use super::db::placeholders;
use super::volumes::{volume_from_row, Volume};
use super::{Boot, BootId, NodeId, Store, StoreError, Text};
use ramboot_core::node::NodeState;
use std::collections::BTreeMap;

/// How far back the phase-duration chart looks, in events: a bound on the scan
/// whatever the retention keeps.
const PHASE_EVENTS_SCANNED: i64 = 100_000;

impl Store {
    /// A node's newest `limit` boots, newest first.
    pub async fn node_boots(&self, node: NodeId, limit: i64) -> Result<Vec<Boot>, StoreError> {
        let rows = self
            .backend
            .sql("SELECT * FROM boots WHERE node_id = $1 ORDER BY id DESC LIMIT $2")
            .bind(node)
            .bind(limit)
            .fetch_all()
            .await?;
        rows.iter().map(boot_from_row).collect()
    }

    /// The boots with these ids, by id.
    pub async fn boots_by_id(&self, ids: &[BootId]) -> Result<BTreeMap<BootId, Boot>, StoreError> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut next = 1;
        let sql = format!("SELECT * FROM boots WHERE id IN ({})", placeholders(&mut next, ids.len()));
        let mut q = self.backend.sql(&sql);
        for id in ids {
            q = q.bind(*id);
        }
        let rows = q.fetch_all().await?;
        rows.iter().map(|r| boot_from_row(r).map(|b| (b.id, b))).collect()
    }

    /// How many unfinished boots load each root image, by image name.
    pub async fn images_in_current_boots(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows = self
            .backend
            .sql(
                "SELECT image_name, COUNT(*) AS n FROM boots
                 WHERE finished_at_ms IS NULL AND image_name IS NOT NULL GROUP BY image_name",
            )
            .fetch_all()
            .await?;
        rows.iter().map(|r| Ok((r.try_get("image_name")?, r.try_get("n")?))).collect()
    }

    /// The volumes attached to any of `nodes`, by node and LUN.
    pub async fn volumes_of(&self, nodes: &[NodeId]) -> Result<Vec<Volume>, StoreError> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let mut next = 1;
        let sql = format!(
            "SELECT * FROM volumes WHERE node_id IN ({}) ORDER BY node_id, lun",
            placeholders(&mut next, nodes.len())
        );
        let mut q = self.backend.sql(&sql);
        for id in nodes {
            q = q.bind(*id);
        }
        q.fetch_all().await?.iter().map(volume_from_row).collect()
    }

    /// For each of `nodes`, the message of its latest move into `state` (why it
    /// failed, say), if it has one.
    pub async fn last_move_messages(
        &self,
        nodes: &[NodeId],
        state: NodeState,
    ) -> Result<BTreeMap<NodeId, String>, StoreError> {
        if nodes.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut next = 2;
        let marks = placeholders(&mut next, nodes.len());
        let sql = format!(
            "SELECT node_id, message FROM events WHERE id IN (
                 SELECT MAX(id) FROM events WHERE kind = 'state' AND state = $1 AND node_id IN ({marks})
                 GROUP BY node_id)"
        );
        let mut q = self.backend.sql(&sql).bind(Text(state));
        for id in nodes {
            q = q.bind(*id);
        }
        let rows = q.fetch_all().await?;
        rows.iter().map(|r| Ok((r.try_get("node_id")?, r.try_get("message")?))).collect()
    }

    /// Each boot phase a node left since `since_ms` and how long it lasted (ms),
    /// from the event log: the same moves the `ramboot_boot_phase_duration_seconds`
    /// histogram counts, but from every server sharing the database, and surviving
    /// restarts. Bounded to the newest [`PHASE_EVENTS_SCANNED`] events.
    pub async fn phase_durations(&self, since_ms: i64) -> Result<Vec<(NodeState, i64)>, StoreError> {
        let from_id = self.last_event_id().await? - PHASE_EVENTS_SCANNED;
        let rows = self
            .backend
            .sql(
                "SELECT phase, phase_ms FROM (
                     SELECT LAG(state) OVER (PARTITION BY boot_id ORDER BY id) AS phase, phase_ms
                     FROM events
                     WHERE kind = 'state' AND boot_id IS NOT NULL AND id > $1 AND at_ms >= $2
                 ) AS moves
                 WHERE phase IS NOT NULL AND phase_ms IS NOT NULL",
            )
            .bind(from_id)
            .bind(since_ms)
            .fetch_all()
            .await?;
        rows.iter().map(|r| Ok((r.try_get::<Text<NodeState>>("phase")?.0, r.try_get("phase_ms")?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::store::testing::{op, store, token, MAC};
    use ramboot_core::node::NodeState;

    #[tokio::test]
    async fn a_page_of_nodes_gets_its_boots_reasons_and_phase_durations() {
        let (s, _d) = store().await;
        let node = s.ensure_node(MAC, 1).await.unwrap();
        s.update_node(
            node.id,
            &crate::store::NodeChange { profile: Some(Some("tiny".into())), ..Default::default() },
            &op(),
            2,
        )
        .await
        .unwrap();
        let boot = s.start_boot(node.id, "tiny", None, &token("h1"), 1_000, "test").await.unwrap();
        s.agent_transition(node.id, boot, NodeState::Stage1, "hello", 3_000).await.unwrap();
        s.fail_boot(node.id, boot, "image digest mismatch", 4_500).await.unwrap();

        let boots = s.node_boots(node.id, 10).await.unwrap();
        assert_eq!(boots.iter().map(|b| b.id).collect::<Vec<_>>(), [boot]);
        assert_eq!(s.boots_by_id(&[boot, 999]).await.unwrap().keys().copied().collect::<Vec<_>>(), [boot]);
        s.create_volume("vm-a", 1 << 20, &op(), 5).await.unwrap();
        s.create_volume("vm-b", 1 << 20, &op(), 5).await.unwrap();
        s.attach_volume("vm-a", node.id, &op(), 6).await.unwrap();
        let names: Vec<String> = s.volumes_of(&[node.id, 999]).await.unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["vm-a"], "only the attached volume of the nodes asked");
        assert!(s.volumes_of(&[]).await.unwrap().is_empty());
        let reasons = s.last_move_messages(&[node.id], NodeState::Failed).await.unwrap();
        assert!(reasons[&node.id].contains("image digest mismatch"), "{reasons:?}");
        let mut phases = s.phase_durations(0).await.unwrap();
        phases.sort();
        assert_eq!(phases, [(NodeState::Booting, 2_000), (NodeState::Stage1, 1_500)]);
        assert_eq!(s.phase_durations(5_000).await.unwrap(), [], "none since");
    }
}
