//! The `audit` table: who changed what, when, with the fields before and after.
//!
//! Every operator change is recorded in the transaction that makes it, so a change
//! without its record (or a record of a change that rolled back) cannot exist. The
//! record keeps only the fields that changed: an update of a node's labels shows the
//! labels, not the whole node. Records are never pruned.

use super::db::placeholders;
use super::{NodeId, Row, Store, StoreError, Tx};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Actor {
    /// An admin API token (the API, the CLI), by its name.
    Token { name: String },
    /// An inventory file at a revision (its content digest).
    File { path: String, revision: String },
    /// The server itself (a rollout it drives), by its cluster name.
    Server { name: String },
}

impl Actor {
    fn kind(&self) -> &'static str {
        match self {
            Actor::Token { .. } => "token",
            Actor::File { .. } => "file",
            Actor::Server { .. } => "server",
        }
    }

    fn name(&self) -> &str {
        match self {
            Actor::Token { name } | Actor::Server { name } => name,
            Actor::File { path, .. } => path,
        }
    }

    fn revision(&self) -> Option<&str> {
        match self {
            Actor::File { revision, .. } => Some(revision),
            _ => None,
        }
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Token { name } => write!(f, "token {name}"),
            Actor::File { path, revision } => write!(f, "file {path}@{revision}"),
            Actor::Server { name } => write!(f, "server {name}"),
        }
    }
}

/// What a change was made to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `node`, `volume`, `token` or `image`.
    pub kind: &'static str,
    /// Its name: a node's MAC, a volume's, token's or image's name.
    pub name: String,
    pub node: Option<NodeId>,
}

impl Target {
    pub fn node(id: NodeId, mac: impl std::fmt::Display) -> Target {
        Target { kind: "node", name: mac.to_string(), node: Some(id) }
    }
    pub fn named(kind: &'static str, name: &str) -> Target {
        Target { kind, name: name.to_string(), node: None }
    }
}

/// One audit record as read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at_ms: i64,
    pub actor: Actor,
    pub action: String,
    pub target_kind: String,
    pub target: String,
    pub node_id: Option<NodeId>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Which records to list, oldest first from `after` (keyset pagination by id).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub node: Option<NodeId>,
    /// The actor's name (a token's name, a file's path).
    pub actor: Option<String>,
    pub after: i64,
    pub limit: i64,
    /// Only records with an id below this.
    pub before: Option<i64>,
    /// Newest first (the dashboard); oldest first otherwise (the API's paging).
    pub newest_first: bool,
}

/// The fields that differ between two JSON objects, as (before, after) objects
/// holding only those fields; `None` when nothing differs. A field missing on one
/// side shows as `null` there. Non-objects compare whole.
pub fn changed_fields(before: &Value, after: &Value) -> Option<(Value, Value)> {
    let (Value::Object(b), Value::Object(a)) = (before, after) else {
        return (before != after).then(|| (before.clone(), after.clone()));
    };
    let (mut old, mut new) = (Map::new(), Map::new());
    for key in b.keys().chain(a.keys().filter(|k| !b.contains_key(*k))) {
        let (x, y) = (b.get(key).unwrap_or(&Value::Null), a.get(key).unwrap_or(&Value::Null));
        if x != y {
            old.insert(key.clone(), x.clone());
            new.insert(key.clone(), y.clone());
        }
    }
    (!old.is_empty()).then_some((Value::Object(old), Value::Object(new)))
}

/// Record a change in the transaction that makes it. `before`/`after` are whole
/// views of the target (`None` for a creation or a deletion); only the fields that
/// differ are kept (empty objects when an action changed none: it is still recorded).
pub(super) async fn record(
    tx: &mut Tx<'_>,
    actor: &Actor,
    action: &str,
    target: &Target,
    before: Option<&Value>,
    after: Option<&Value>,
    now_ms: i64,
) -> Result<(), StoreError> {
    let (before, after) = match (before, after) {
        (Some(b), Some(a)) => {
            let (b, a) = changed_fields(b, a).unwrap_or_else(|| (Value::Object(Map::new()), Value::Object(Map::new())));
            (Some(b), Some(a))
        }
        (b, a) => (b.cloned(), a.cloned()),
    };
    tx.sql(
        "INSERT INTO audit (at_ms, actor_kind, actor, actor_revision, action, target_kind, target, node_id, before, after)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(now_ms)
    .bind(actor.kind())
    .bind(actor.name())
    .bind(actor.revision())
    .bind(action)
    .bind(target.kind)
    .bind(&target.name)
    .bind(target.node)
    .bind(before.map(|v| v.to_string()))
    .bind(after.map(|v| v.to_string()))
    .execute()
    .await?;
    Ok(())
}

fn record_from_row(row: &Row) -> Result<AuditRecord, StoreError> {
    let kind: String = row.try_get("actor_kind")?;
    let name: String = row.try_get("actor")?;
    let actor = match kind.as_str() {
        "token" => Actor::Token { name },
        "server" => Actor::Server { name },
        "file" => {
            Actor::File { path: name, revision: row.try_get::<Option<String>>("actor_revision")?.unwrap_or_default() }
        }
        other => return Err(super::corrupt(format!("audit actor kind {other:?}"))),
    };
    let json = |column: &str| -> Result<Option<Value>, StoreError> {
        let text: Option<String> = row.try_get(column)?;
        text.map(|t| serde_json::from_str(&t)).transpose().map_err(super::corrupt)
    };
    Ok(AuditRecord {
        id: row.try_get("id")?,
        at_ms: row.try_get("at_ms")?,
        actor,
        action: row.try_get("action")?,
        target_kind: row.try_get("target_kind")?,
        target: row.try_get("target")?,
        node_id: row.try_get("node_id")?,
        before: json("before")?,
        after: json("after")?,
    })
}

impl Store {
    /// Record a change made outside the database (an image deleted from disk, a
    /// BMC told to power a node off) in its own transaction.
    pub async fn audit_outside(
        &self,
        actor: &Actor,
        action: &str,
        target: &Target,
        before: Option<&Value>,
        after: Option<&Value>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.backend.begin_write().await?;
        record(&mut tx, actor, action, target, before, after, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The id a node with `mac` had in the newest record about it (it may be gone).
    pub async fn audited_node_by_mac(&self, mac: ramboot_core::node::MacAddr) -> Result<Option<NodeId>, StoreError> {
        let row = self
            .backend
            .sql("SELECT node_id FROM audit WHERE target_kind = 'node' AND target = $1 ORDER BY id DESC LIMIT 1")
            .bind(mac.to_string())
            .fetch_optional()
            .await?;
        Ok(row.map(|r| r.try_get("node_id")).transpose()?.flatten())
    }

    pub async fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let mut sql = String::from("SELECT * FROM audit WHERE id > $1");
        let mut next = 2;
        if f.node.is_some() {
            sql.push_str(&format!(" AND node_id = {}", placeholders(&mut next, 1)));
        }
        if f.actor.is_some() {
            sql.push_str(&format!(" AND actor = {}", placeholders(&mut next, 1)));
        }
        if f.before.is_some() {
            sql.push_str(&format!(" AND id < {}", placeholders(&mut next, 1)));
        }
        let order = if f.newest_first { "DESC" } else { "ASC" };
        sql.push_str(&format!(" ORDER BY id {order} LIMIT {}", placeholders(&mut next, 1)));
        let mut q = self.backend.sql(&sql).bind(f.after);
        if let Some(node) = f.node {
            q = q.bind(node);
        }
        if let Some(actor) = &f.actor {
            q = q.bind(actor);
        }
        if let Some(before) = f.before {
            q = q.bind(before);
        }
        let rows = q.bind(f.limit).fetch_all().await?;
        rows.iter().map(record_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn only_changed_fields_are_kept() {
        let before = json!({"hostname": "a", "labels": {"rack": "1"}, "profile": null});
        let after = json!({"hostname": "a", "labels": {"rack": "2"}, "profile": "tiny", "bmc": "x"});
        let (b, a) = changed_fields(&before, &after).unwrap();
        assert_eq!(b, json!({"labels": {"rack": "1"}, "profile": null, "bmc": null}));
        assert_eq!(a, json!({"labels": {"rack": "2"}, "profile": "tiny", "bmc": "x"}));
        assert_eq!(changed_fields(&before, &before), None);
        assert_eq!(changed_fields(&json!(1), &json!(2)), Some((json!(1), json!(2))));
    }

    fn small_object() -> impl Strategy<Value = Value> {
        prop::collection::btree_map("[a-d]", prop_oneof![Just(Value::Null), any::<i8>().prop_map(Value::from)], 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    proptest! {
        /// Applying the `after` part onto `before` (a null meaning "absent") gives
        /// `after` again, up to absent-versus-null: nothing that changed is lost.
        #[test]
        fn the_changed_fields_rebuild_the_new_object(before in small_object(), after in small_object()) {
            let normalise = |v: &Value| -> Map<String, Value> {
                v.as_object().unwrap().iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect()
            };
            let mut rebuilt = before.as_object().unwrap().clone();
            if let Some((_, changed)) = changed_fields(&before, &after) {
                for (k, v) in changed.as_object().unwrap() {
                    rebuilt.insert(k.clone(), v.clone());
                }
            }
            prop_assert_eq!(normalise(&Value::Object(rebuilt)), normalise(&after));
        }
    }
}
