//! The `volumes` table (iSCSI VM disks and their attachment to nodes as LUNs), and
//! each node's CHAP secrets (`nodes` columns only iSCSI reads).

use super::audit::{self, Actor, Target};
use super::events::{self, EventKind, NewEvent};
use super::nodes::node_in;
use super::{corrupt, NodeId, Row, Store, StoreError, Tx};
use serde::{Deserialize, Serialize};

/// A VM disk on the iSCSI target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: i64,
    pub name: String,
    pub size_bytes: u64,
    /// The node it is exported to, as `lun`.
    pub node_id: Option<NodeId>,
    pub lun: Option<u32>,
    pub created_at_ms: i64,
}

pub(super) fn volume_from_row(row: &Row) -> Result<Volume, StoreError> {
    let size: i64 = row.try_get("size_bytes")?;
    let lun: Option<i64> = row.try_get("lun")?;
    Ok(Volume {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        size_bytes: u64::try_from(size).map_err(corrupt)?,
        node_id: row.try_get("node_id")?,
        lun: lun.map(u32::try_from).transpose().map_err(corrupt)?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

async fn volume_in(tx: &mut Tx<'_>, name: &str) -> Result<Volume, StoreError> {
    let row = tx
        .sql("SELECT * FROM volumes WHERE name = $1")
        .bind(name)
        .fetch_optional()
        .await?
        .ok_or_else(|| StoreError::NoSuchVolume(name.to_string()))?;
    volume_from_row(&row)
}

/// What the audit trail records of a volume.
fn audit_view(v: &Volume) -> serde_json::Value {
    serde_json::json!({ "size_bytes": v.size_bytes, "node_id": v.node_id, "lun": v.lun })
}

/// Record a change to volume `before` (now `after`) in `tx`.
async fn audit_volume(
    tx: &mut Tx<'_>,
    actor: &Actor,
    action: &str,
    before: Option<&Volume>,
    after: Option<&Volume>,
    now_ms: i64,
) -> Result<(), StoreError> {
    let Some(v) = after.or(before) else { return Ok(()) };
    let node = after.and_then(|v| v.node_id).or(before.and_then(|v| v.node_id));
    let target = Target { kind: "volume", name: v.name.clone(), node };
    let (before, after) = (before.map(audit_view), after.map(audit_view));
    audit::record(tx, actor, action, &target, before.as_ref(), after.as_ref(), now_ms).await
}

/// Record mutual CHAP turned on or off for `node` (never its secret).
async fn audit_mutual_chap(
    tx: &mut Tx<'_>,
    actor: &Actor,
    node: NodeId,
    on: bool,
    now_ms: i64,
) -> Result<(), StoreError> {
    let mac = node_in(tx, node).await?.mac;
    let (before, after) = (serde_json::json!({ "mutual_chap": !on }), serde_json::json!({ "mutual_chap": on }));
    audit::record(tx, actor, "node.iscsi", &Target::node(node, mac), Some(&before), Some(&after), now_ms).await
}

impl Store {
    pub async fn volumes(&self) -> Result<Vec<Volume>, StoreError> {
        let rows = self.backend.sql("SELECT * FROM volumes ORDER BY name").fetch_all().await?;
        rows.iter().map(volume_from_row).collect()
    }

    pub async fn volume(&self, name: &str) -> Result<Volume, StoreError> {
        let row = self
            .backend
            .sql("SELECT * FROM volumes WHERE name = $1")
            .bind(name)
            .fetch_optional()
            .await?
            .ok_or_else(|| StoreError::NoSuchVolume(name.to_string()))?;
        volume_from_row(&row)
    }

    pub async fn node_volumes(&self, node: NodeId) -> Result<Vec<Volume>, StoreError> {
        let rows =
            self.backend.sql("SELECT * FROM volumes WHERE node_id = $1 ORDER BY lun").bind(node).fetch_all().await?;
        rows.iter().map(volume_from_row).collect()
    }

    /// Nodes that have at least one volume attached.
    pub async fn nodes_with_volumes(&self) -> Result<Vec<NodeId>, StoreError> {
        let rows = self
            .backend
            .sql("SELECT DISTINCT node_id FROM volumes WHERE node_id IS NOT NULL ORDER BY node_id")
            .fetch_all()
            .await?;
        rows.iter().map(|r| r.try_get("node_id").map_err(StoreError::from)).collect()
    }

    pub async fn create_volume(
        &self,
        name: &str,
        size_bytes: u64,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<Volume, StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let result = tx
            .sql("INSERT INTO volumes (name, size_bytes, created_at_ms) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(i64::try_from(size_bytes).map_err(corrupt)?)
            .bind(now_ms)
            .execute()
            .await;
        match result {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::DuplicateVolume(name.to_string()))
            }
            other => other.map_err(StoreError::from)?,
        };
        let vol = volume_in(&mut tx, name).await?;
        audit_volume(&mut tx, actor, "volume.create", None, Some(&vol), now_ms).await?;
        tx.commit().await?;
        Ok(vol)
    }

    /// Attach a volume to a node as its next free LUN (from 1). Idempotent for the
    /// same node; a volume attached elsewhere must be detached first.
    pub async fn attach_volume(
        &self,
        name: &str,
        node: NodeId,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<Volume, StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let vol = volume_in(&mut tx, name).await?;
        match vol.node_id {
            Some(n) if n == node => return Ok(vol),
            Some(other) => return Err(StoreError::VolumeAttached { volume: name.to_string(), node: other }),
            None => {}
        }
        node_in(&mut tx, node).await?;
        let lun: i64 = tx
            .sql("SELECT COALESCE(MAX(lun), 0) + 1 AS lun FROM volumes WHERE node_id = $1")
            .bind(node)
            .fetch_one()
            .await?
            .try_get("lun")?;
        tx.sql("UPDATE volumes SET node_id = $1, lun = $2 WHERE id = $3")
            .bind(node)
            .bind(lun)
            .bind(vol.id)
            .execute()
            .await?;
        let message = format!("volume {name} attached as LUN {lun}");
        events::insert(&mut tx, &NewEvent::note(node, None, EventKind::Info, &message), now_ms).await?;
        let after = volume_in(&mut tx, name).await?;
        audit_volume(&mut tx, actor, "volume.attach", Some(&vol), Some(&after), now_ms).await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Detach a volume; returns the node it was attached to.
    pub async fn detach_volume(&self, name: &str, actor: &Actor, now_ms: i64) -> Result<Option<NodeId>, StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let vol = volume_in(&mut tx, name).await?;
        tx.sql("UPDATE volumes SET node_id = NULL, lun = NULL WHERE id = $1").bind(vol.id).execute().await?;
        if let Some(node) = vol.node_id {
            let message = format!("volume {name} detached");
            events::insert(&mut tx, &NewEvent::note(node, None, EventKind::Info, &message), now_ms).await?;
        }
        let after = volume_in(&mut tx, name).await?;
        audit_volume(&mut tx, actor, "volume.detach", Some(&vol), Some(&after), now_ms).await?;
        tx.commit().await?;
        Ok(vol.node_id)
    }

    pub async fn set_volume_size(
        &self,
        name: &str,
        size_bytes: u64,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<Volume, StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let vol = volume_in(&mut tx, name).await?;
        tx.sql("UPDATE volumes SET size_bytes = $1 WHERE id = $2")
            .bind(i64::try_from(size_bytes).map_err(corrupt)?)
            .bind(vol.id)
            .execute()
            .await?;
        if let Some(node) = vol.node_id {
            let note = format!("volume {name} grown to {}", ramboot_proto::human_bytes(size_bytes));
            events::insert(&mut tx, &NewEvent::note(node, None, EventKind::Info, &note), now_ms).await?;
        }
        let after = volume_in(&mut tx, name).await?;
        audit_volume(&mut tx, actor, "volume.grow", Some(&vol), Some(&after), now_ms).await?;
        tx.commit().await?;
        Ok(after)
    }

    pub async fn delete_volume(&self, name: &str, actor: &Actor, now_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let vol = volume_in(&mut tx, name).await?;
        if let Some(node) = vol.node_id {
            return Err(StoreError::VolumeAttached { volume: name.to_string(), node });
        }
        tx.sql("DELETE FROM volumes WHERE id = $1").bind(vol.id).execute().await?;
        audit_volume(&mut tx, actor, "volume.delete", Some(&vol), None, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The node's CHAP secret, generated (and stored) on first use. If `generate`
    /// fails, its error is returned and nothing is stored: a secret is stored once
    /// and kept for good, so it must never be a fallback value.
    pub async fn chap_secret<E: From<StoreError>>(
        &self,
        node: NodeId,
        generate: impl FnOnce() -> Result<String, E>,
    ) -> Result<String, E> {
        let mut tx = self.backend.begin_write().await?;
        let row = tx
            .sql("SELECT chap_secret FROM nodes WHERE id = $1")
            .bind(node)
            .fetch_optional()
            .await
            .map_err(StoreError::from)?
            .ok_or_else(|| StoreError::NoSuchNode(node.to_string()))?;
        if let Some(secret) = row.try_get::<Option<String>>("chap_secret").map_err(StoreError::from)? {
            return Ok(secret);
        }
        let secret = generate()?;
        tx.sql("UPDATE nodes SET chap_secret = $1 WHERE id = $2")
            .bind(&secret)
            .bind(node)
            .execute()
            .await
            .map_err(StoreError::from)?;
        tx.commit().await?;
        Ok(secret)
    }

    /// The target's mutual CHAP secret for the node, if mutual CHAP is on.
    pub async fn mutual_chap_secret(&self, node: NodeId) -> Result<Option<String>, StoreError> {
        let row = self
            .backend
            .sql("SELECT mutual_chap_secret FROM nodes WHERE id = $1")
            .bind(node)
            .fetch_optional()
            .await?
            .ok_or_else(|| StoreError::NoSuchNode(node.to_string()))?;
        Ok(row.try_get("mutual_chap_secret")?)
    }

    /// Turn mutual CHAP on: a secret from `generate`, stored once (on again keeps
    /// it). As with [`Store::chap_secret`], a failed `generate` stores nothing.
    pub async fn enable_mutual_chap<E: From<StoreError>>(
        &self,
        node: NodeId,
        generate: impl FnOnce() -> Result<String, E>,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<(), E> {
        let mut tx = self.backend.begin_write().await?;
        let row = tx
            .sql("SELECT mutual_chap_secret FROM nodes WHERE id = $1")
            .bind(node)
            .fetch_optional()
            .await
            .map_err(StoreError::from)?
            .ok_or_else(|| StoreError::NoSuchNode(node.to_string()))?;
        if row.try_get::<Option<String>>("mutual_chap_secret").map_err(StoreError::from)?.is_some() {
            return Ok(());
        }
        let secret = generate()?;
        tx.sql("UPDATE nodes SET mutual_chap_secret = $1 WHERE id = $2")
            .bind(&secret)
            .bind(node)
            .execute()
            .await
            .map_err(StoreError::from)?;
        let note = NewEvent::note(node, None, EventKind::Info, "iSCSI mutual CHAP on");
        events::insert(&mut tx, &note, now_ms).await?;
        audit_mutual_chap(&mut tx, actor, node, true, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Turn mutual CHAP off, forgetting the target's secret.
    pub async fn disable_mutual_chap(&self, node: NodeId, actor: &Actor, now_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.backend.begin_write().await?;
        node_in(&mut tx, node).await?;
        let result = tx
            .sql("UPDATE nodes SET mutual_chap_secret = NULL WHERE id = $1 AND mutual_chap_secret IS NOT NULL")
            .bind(node)
            .execute()
            .await?;
        if result == 1 {
            let note = NewEvent::note(node, None, EventKind::Info, "iSCSI mutual CHAP off");
            events::insert(&mut tx, &note, now_ms).await?;
            audit_mutual_chap(&mut tx, actor, node, false, now_ms).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::testing::{op, store, MAC};
    use crate::store::StoreError;

    #[tokio::test]
    async fn mutual_chap_is_generated_once_and_forgotten_when_off() {
        let (s, _d) = store().await;
        let node = s.ensure_node(MAC, 0).await.unwrap();
        assert_eq!(s.mutual_chap_secret(node.id).await.unwrap(), None);
        let err = s.enable_mutual_chap(node.id, || Err(StoreError::Corrupt("no randomness".into())), &op(), 1).await;
        assert!(matches!(err, Err(StoreError::Corrupt(_))));
        assert_eq!(s.mutual_chap_secret(node.id).await.unwrap(), None, "a failed source stores nothing");
        s.enable_mutual_chap(node.id, || Ok::<_, StoreError>("mnopqrstuvwx".into()), &op(), 2).await.unwrap();
        s.enable_mutual_chap(node.id, || Ok::<_, StoreError>("other".into()), &op(), 3).await.unwrap();
        assert_eq!(s.mutual_chap_secret(node.id).await.unwrap().as_deref(), Some("mnopqrstuvwx"), "kept");
        s.disable_mutual_chap(node.id, &op(), 4).await.unwrap();
        s.disable_mutual_chap(node.id, &op(), 5).await.unwrap();
        assert_eq!(s.mutual_chap_secret(node.id).await.unwrap(), None);
        let notes: Vec<String> = s.events(node.id, 0, 100).await.unwrap().into_iter().map(|e| e.message).collect();
        assert_eq!(notes.iter().filter(|m| m.contains("mutual CHAP")).count(), 2, "{notes:?}");
        assert!(matches!(s.disable_mutual_chap(999, &op(), 6).await, Err(StoreError::NoSuchNode(_))));
        assert!(matches!(s.mutual_chap_secret(999).await, Err(StoreError::NoSuchNode(_))));
    }

    #[tokio::test]
    async fn a_failed_secret_source_stores_nothing() {
        let (s, _d) = store().await;
        let node = s.ensure_node(MAC, 0).await.unwrap();
        let err = s.chap_secret(node.id, || Err(StoreError::Corrupt("no randomness".into()))).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        let first = s.chap_secret(node.id, || Ok::<_, StoreError>("abcdefghijkl".into())).await.unwrap();
        assert_eq!(first, "abcdefghijkl", "the failed attempt left no secret behind");
        let again = s.chap_secret(node.id, || Ok::<_, StoreError>("other".into())).await.unwrap();
        assert_eq!(again, first, "kept for good once stored");
    }
}
