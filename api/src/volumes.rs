//! iSCSI volumes: what `/volumes` shows and the bodies that create, attach and grow them.

use crate::nodes::NodeId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A VM disk on the iSCSI target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    pub id: i64,
    pub name: String,
    pub size_bytes: u64,
    /// The node it is exported to, as `lun`.
    pub node_id: Option<NodeId>,
    pub lun: Option<u32>,
    pub created_at_ms: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVolume {
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub name: String,
    /// A whole number of MiB, from 1 MiB to 64 TiB. Allocated sparsely.
    #[schema(minimum = 1048576)]
    pub size_bytes: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attach {
    /// Node id or MAC.
    pub node: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grow {
    /// The new size: larger than the current one, a whole number of MiB.
    #[schema(minimum = 1048576)]
    pub size_bytes: u64,
}

/// How a node logs in to its volumes. Secrets are never shown here: they reach only
/// the target and the node's own plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeIscsi {
    pub initiator_iqn: String,
    pub target_iqn: String,
    /// The node's CHAP account (its secret is generated on first export).
    pub chap_user: String,
    /// Whether the target proves itself to the node too (mutual CHAP).
    pub mutual_chap: bool,
    /// The account the target answers with, when mutual CHAP is on.
    pub mutual_chap_user: Option<String>,
}

/// `PUT /nodes/{id}/iscsi`: a node's iSCSI login settings.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IscsiSettings {
    /// On: the target gets a secret of its own (generated once, kept while on) and
    /// the node's plan carries it, so the node logs in only to a target that knows
    /// it. Off forgets that secret; on again makes a new one.
    pub mutual_chap: bool,
}
