//! The `rollouts` and `rollout_events` tables: rolling re-provisions, their whole
//! decision state (one JSON document, `ramboot_core::rollout::Rollout`), who drives
//! each (a lease, so another server takes over from one that died), and their
//! timeline.

use super::audit::{self, Actor, Target};
use super::events::{self, EventKind, NewEvent};
use super::{corrupt, NodeId, Row, Store, StoreError};
use ramboot_core::rollout::{Command, Rollout, RolloutEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a node's boot must be for the rollout to count it done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutTarget {
    pub profile: String,
    /// The profile's image digest when the rollout started (none: any).
    pub digest: Option<String>,
    /// Assign `profile` to the node before its reboot (a rollout to a profile).
    pub assign: bool,
}

/// The named hooks (config `hooks:`) a rollout runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutHooks {
    pub drain: Option<String>,
    pub undrain: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRow {
    pub id: i64,
    pub created_at_ms: i64,
    pub created_by: String,
    pub description: String,
    pub state: Rollout,
    pub targets: BTreeMap<NodeId, RolloutTarget>,
    pub hooks: RolloutHooks,
    /// An operator's command the driver has not taken yet.
    pub command: Option<Command>,
    pub driver: Option<String>,
    pub driver_until_ms: Option<i64>,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutEventRow {
    pub id: i64,
    pub rollout_id: i64,
    pub at_ms: i64,
    pub node_id: Option<NodeId>,
    pub message: String,
}

/// A new rollout, as the API built it.
#[derive(Debug, Clone)]
pub struct NewRollout {
    pub description: String,
    pub state: Rollout,
    pub targets: BTreeMap<NodeId, RolloutTarget>,
    pub hooks: RolloutHooks,
}

fn json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(corrupt)
}

fn parsed<T: serde::de::DeserializeOwned>(row: &Row, column: &str) -> Result<T, StoreError> {
    serde_json::from_str(&row.try_get::<String>(column)?).map_err(corrupt)
}

fn rollout_from_row(row: &Row) -> Result<RolloutRow, StoreError> {
    let command: Option<String> = row.try_get("command")?;
    Ok(RolloutRow {
        id: row.try_get("id")?,
        created_at_ms: row.try_get("created_at_ms")?,
        created_by: row.try_get("created_by")?,
        description: row.try_get("description")?,
        state: parsed(row, "state")?,
        targets: parsed(row, "targets")?,
        hooks: parsed(row, "hooks")?,
        command: command.map(|c| serde_json::from_str(&c)).transpose().map_err(corrupt)?,
        driver: row.try_get("driver")?,
        driver_until_ms: row.try_get("driver_until_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

const ACTIVE: &str = "status NOT IN ('done', 'aborted')";

impl Store {
    /// The nodes among `ids` that exist, each with its current boot, read in one
    /// snapshot: what a rollout step observes.
    pub async fn nodes_with_boots(
        &self,
        ids: &std::collections::BTreeSet<NodeId>,
    ) -> Result<BTreeMap<NodeId, (super::Node, Option<super::Boot>)>, StoreError> {
        let mut tx = self.backend.begin_snapshot().await?;
        let nodes = tx.sql("SELECT * FROM nodes").fetch_all().await?;
        let boots = tx
            .sql(
                "SELECT * FROM boots WHERE id IN (SELECT current_boot_id FROM nodes WHERE current_boot_id IS NOT NULL)",
            )
            .fetch_all()
            .await?;
        tx.commit().await?;
        let mut boots: BTreeMap<i64, super::Boot> = boots
            .iter()
            .map(|r| super::boots::boot_from_row(r).map(|b| (b.id, b)))
            .collect::<Result<_, StoreError>>()?;
        let mut out = BTreeMap::new();
        for row in &nodes {
            let node = super::nodes::node_from_row(row)?;
            if ids.contains(&node.id) {
                let boot = node.current_boot_id.and_then(|b| boots.remove(&b));
                out.insert(node.id, (node, boot));
            }
        }
        Ok(out)
    }

    /// Start a rollout. Refused while any of its nodes is in another rollout that
    /// has not ended: two rollouts would each count the other's reboots.
    pub async fn create_rollout(&self, new: &NewRollout, actor: &Actor, now_ms: i64) -> Result<i64, StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let active = tx.sql(&format!("SELECT * FROM rollouts WHERE {ACTIVE}")).fetch_all().await?;
        for row in &active {
            let other = rollout_from_row(row)?;
            if let Some(node) = new.targets.keys().find(|n| other.targets.contains_key(n)) {
                return Err(StoreError::NodeInRollout { node: *node, rollout: other.id });
            }
        }
        let id: i64 = tx
            .sql(
                "INSERT INTO rollouts (created_at_ms, created_by, description, status, state, targets, hooks, updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            )
            .bind(now_ms)
            .bind(actor.to_string())
            .bind(&new.description)
            .bind(new.state.status.name())
            .bind(json(&new.state)?)
            .bind(json(&new.targets)?)
            .bind(json(&new.hooks)?)
            .bind(now_ms)
            .fetch_one()
            .await?
            .try_get("id")?;
        let after = serde_json::json!({
            "description": new.description,
            "nodes": new.targets.keys().collect::<Vec<_>>(),
            "spec": new.state.spec,
            "hooks": new.hooks,
        });
        let target = Target::named("rollout", &id.to_string());
        audit::record(&mut tx, actor, "rollout.start", &target, None, Some(&after), now_ms).await?;
        let message = format!("rollout {id} started by {actor}: {}", new.description);
        insert_event(&mut tx, id, None, &message, now_ms).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Newest first.
    pub async fn rollouts(&self, limit: i64) -> Result<Vec<RolloutRow>, StoreError> {
        let rows = self.backend.sql("SELECT * FROM rollouts ORDER BY id DESC LIMIT $1").bind(limit).fetch_all().await?;
        rows.iter().map(rollout_from_row).collect()
    }

    pub async fn rollout(&self, id: i64) -> Result<RolloutRow, StoreError> {
        let row = self
            .backend
            .sql("SELECT * FROM rollouts WHERE id = $1")
            .bind(id)
            .fetch_optional()
            .await?
            .ok_or(StoreError::NoSuchRollout(id))?;
        rollout_from_row(&row)
    }

    pub async fn rollout_events(&self, id: i64, after: i64, limit: i64) -> Result<Vec<RolloutEventRow>, StoreError> {
        let rows = self
            .backend
            .sql("SELECT * FROM rollout_events WHERE rollout_id = $1 AND id > $2 ORDER BY id LIMIT $3")
            .bind(id)
            .bind(after)
            .bind(limit)
            .fetch_all()
            .await?;
        rows.iter()
            .map(|r| {
                Ok(RolloutEventRow {
                    id: r.try_get("id")?,
                    rollout_id: r.try_get("rollout_id")?,
                    at_ms: r.try_get("at_ms")?,
                    node_id: r.try_get("node_id")?,
                    message: r.try_get("message")?,
                })
            })
            .collect()
    }

    /// Queue an operator's pause, resume or abort for the driver's next step,
    /// refused when the rollout's status does not take it.
    pub async fn command_rollout(
        &self,
        id: i64,
        command: Command,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<RolloutRow, StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let row = tx
            .sql("SELECT * FROM rollouts WHERE id = $1")
            .bind(id)
            .fetch_optional()
            .await?
            .ok_or(StoreError::NoSuchRollout(id))?;
        let rollout = rollout_from_row(&row)?;
        rollout.state.status.accepts(command).map_err(|e| StoreError::RolloutRefused(e.to_string()))?;
        tx.sql("UPDATE rollouts SET command = $1, updated_at_ms = $2 WHERE id = $3")
            .bind(json(&command)?)
            .bind(now_ms)
            .bind(id)
            .execute()
            .await?;
        let name = json(&command)?.trim_matches('"').to_string();
        let status = rollout.state.status.name();
        let before = serde_json::json!({ "status": status, "command": rollout.command });
        let after = serde_json::json!({ "status": status, "command": command });
        let target = Target::named("rollout", &id.to_string());
        audit::record(&mut tx, actor, &format!("rollout.{name}"), &target, Some(&before), Some(&after), now_ms).await?;
        insert_event(&mut tx, id, None, &format!("{name} requested by {actor}"), now_ms).await?;
        tx.commit().await?;
        self.rollout(id).await
    }

    /// Take (or keep) the rollouts that have not ended and that no other server
    /// drives: those with no driver, driven by `driver`, or whose driver's lease
    /// ran out. Returns their ids.
    pub async fn claim_rollouts(&self, driver: &str, now_ms: i64, lease_ms: i64) -> Result<Vec<i64>, StoreError> {
        let rows = self
            .backend
            .sql(&format!(
                "UPDATE rollouts SET driver = $1, driver_until_ms = $2
                 WHERE {ACTIVE} AND (driver IS NULL OR driver = $1 OR driver_until_ms < $3) RETURNING id"
            ))
            .bind(driver)
            .bind(now_ms + lease_ms)
            .bind(now_ms)
            .fetch_all()
            .await?;
        rows.iter().map(|r| r.try_get("id").map_err(StoreError::from)).collect()
    }

    /// Persist one step of the rollout `driver` drives: its new state, its events
    /// (each node's also in that node's timeline), and the command it took, in one
    /// transaction. `false` (and nothing written) when another server drives it now.
    pub async fn save_rollout_step(
        &self,
        id: i64,
        driver: &str,
        state: &Rollout,
        events: &[RolloutEvent],
        took: Option<Command>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let owner: Option<String> = tx
            .sql("SELECT driver FROM rollouts WHERE id = $1")
            .bind(id)
            .fetch_optional()
            .await?
            .ok_or(StoreError::NoSuchRollout(id))?
            .try_get("driver")?;
        if owner.as_deref() != Some(driver) {
            return Ok(false);
        }
        // A command that came in since this step read the row stays for the next.
        let took = took.map(|c| json(&c)).transpose()?;
        tx.sql(
            "UPDATE rollouts SET state = $1, status = $2, updated_at_ms = $3,
                 command = CASE WHEN command = $4 THEN NULL ELSE command END
             WHERE id = $5",
        )
        .bind(json(state)?)
        .bind(state.status.name())
        .bind(now_ms)
        .bind(took)
        .bind(id)
        .execute()
        .await?;
        for e in events {
            insert_event(&mut tx, id, e.node_id, &e.message, now_ms).await?;
            if let Some(node) = e.node_id {
                let exists = tx.sql("SELECT 1 FROM nodes WHERE id = $1").bind(node).fetch_optional().await?.is_some();
                if exists {
                    let message = format!("rollout {id}: {}", e.message);
                    events::insert(&mut tx, &NewEvent::note(node, None, EventKind::Info, &message), now_ms).await?;
                }
            }
        }
        tx.commit().await?;
        Ok(true)
    }
}

async fn insert_event(
    tx: &mut super::Tx<'_>,
    rollout: i64,
    node: Option<NodeId>,
    message: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    tx.sql("INSERT INTO rollout_events (rollout_id, at_ms, node_id, message) VALUES ($1, $2, $3, $4)")
        .bind(rollout)
        .bind(now_ms)
        .bind(node)
        .bind(message)
        .execute()
        .await?;
    Ok(())
}
