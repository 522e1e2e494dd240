//! The audit trail: who changed what, when, with the changed fields before and after.

use crate::default_limit;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Actor {
    /// An admin API token (the API, the CLI), by its name.
    Token { name: String },
    /// An inventory file at a revision (the SHA-256 of its content).
    File { path: String, revision: String },
    /// The server itself, by its cluster name.
    Server { name: String },
}

/// One change.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    pub id: i64,
    pub at_ms: i64,
    pub actor: Actor,
    /// What was done: `node.update`, `node.create`, `token.create`, `volume.attach`, ...
    pub action: String,
    /// `node`, `volume`, `token` or `image`.
    pub target_kind: String,
    /// The target's name (a node's MAC).
    pub target: String,
    /// The node it concerns, if any.
    pub node_id: Option<i64>,
    /// The changed fields as they were (absent for a creation).
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    /// The changed fields as they are now (absent for a deletion).
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    pub records: Vec<AuditRecord>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next_after: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only records with an id greater than this.
    #[serde(default)]
    #[param(minimum = 0)]
    pub after: i64,
    #[serde(default = "default_limit")]
    #[param(minimum = 1, maximum = 500)]
    pub limit: i64,
    /// Only changes to this node (its id or MAC).
    pub node: Option<String>,
    /// Only changes by this actor (a token's name, a file's path).
    pub actor: Option<String>,
}
