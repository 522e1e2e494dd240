//! Nodes, their boots and their event timeline: what `/nodes` and `/events` show,
//! the bodies that create and change nodes, and the list queries.

use crate::{default_limit, MAX_PAGE};
use ramboot_core::node::{MacAddr, NodeState};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use utoipa::{IntoParams, ToSchema};

// Aliases, not newtypes: the document names their schema `i64`, as it always has.
pub type NodeId = i64;
pub type BootId = i64;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub id: NodeId,
    #[schema(value_type = String, example = "52:54:00:72:62:01")]
    pub mac: MacAddr,
    pub hostname: String,
    pub ip: Option<String>,
    pub profile: Option<String>,
    pub state: NodeState,
    pub state_since_ms: i64,
    pub current_boot_id: Option<BootId>,
    /// The stage-one agent's hardware report.
    #[schema(value_type = Option<Object>)]
    pub inventory: Option<serde_json::Value>,
    pub labels: BTreeMap<String, String>,
    /// Firmware architecture from the last DHCP request (`bios`, `efi-x64`, ...).
    pub arch: Option<String>,
    /// Consecutive failed boots (reset by a boot that reaches ready).
    pub failures: i64,
    pub maintenance_reason: Option<String>,
    /// The address DHCP always gives this node (and nobody else).
    pub reserved_ip: Option<String>,
    /// The firmware's UUID from DHCP option 97 (SMBIOS byte order, as dmidecode prints it).
    pub client_uuid: Option<String>,
    /// An operator registered or approved the node: it may boot profiles that render
    /// secrets or attach volumes even when only facts it reports itself matched it.
    pub approved: bool,
    /// When DHCP last bound `ip` to the node (a lease, or a proxyDHCP sighting).
    pub ip_seen_at_ms: Option<i64>,
    /// Its BMC: the Redfish system URL and the name of the secret that logs in
    /// (never the credential itself).
    pub bmc: Option<Bmc>,
    /// Its own boot chain for UEFI PXE (`signed`: Secure Boot's shim and GRUB);
    /// none: its profile's, else the default profile's, else `dhcp.boot_chain`.
    pub boot_chain: Option<BootChain>,
    /// The inventory file that declares the node; the API may not change the
    /// fields it owns (`declared_fields`).
    pub declared_in: Option<String>,
    pub declared_fields: BTreeSet<Field>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

pub use ramboot_core::inventory::{Bmc, Field};
pub use ramboot_core::profile::BootChain;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Boot {
    pub id: BootId,
    pub node_id: NodeId,
    pub profile: String,
    pub image: Option<BootImage>,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub outcome: Option<String>,
    /// The address the boot's token was issued to: the agent's requests must come from it.
    #[schema(value_type = Option<String>, example = "10.213.0.120")]
    pub bound_ip: Option<std::net::IpAddr>,
    /// When the agent fetched its plan (with any CHAP credentials): released once.
    pub plan_released_at_ms: Option<i64>,
    /// When the agent fetched the rendered overlay: released once.
    pub overlay_released_at_ms: Option<i64>,
    /// Reports (state changes, progress) the boot made; capped per boot.
    pub reports: u32,
}

/// The root filesystem a boot was planned with (the planner's own type).
pub use ramboot_core::plan::BootImage;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub id: i64,
    pub node_id: NodeId,
    pub boot_id: Option<BootId>,
    pub at_ms: i64,
    pub kind: String,
    pub state: Option<NodeState>,
    pub phase_ms: Option<i64>,
    pub message: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<Node>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next_after: Option<i64>,
}

/// One node with its current boot and its event timeline.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeDetail {
    pub node: Node,
    pub boot: Option<Boot>,
    pub events: Vec<Event>,
    /// iSCSI volumes attached to the node.
    #[serde(default)]
    pub volumes: Vec<crate::volumes::Volume>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NodeQuery {
    /// Only nodes in this state.
    pub state: Option<NodeState>,
    /// Only nodes explicitly assigned this profile.
    pub profile: Option<String>,
    /// Only nodes with this label, as `key=value`.
    pub label: Option<String>,
    /// Only nodes whose MAC, hostname, IP or BMC URL contains this text (any case).
    #[param(max_length = 100)]
    pub q: Option<String>,
    /// Only nodes with an id greater than this (the previous page's `next_after`).
    #[serde(default)]
    #[param(minimum = 0)]
    pub after: i64,
    #[serde(default = "default_limit")]
    #[param(minimum = 1, maximum = 500)]
    pub limit: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNode {
    #[schema(value_type = String, example = "52:54:00:72:62:01", pattern = r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")]
    pub mac: MacAddr,
    #[schema(pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")]
    pub hostname: Option<String>,
    pub profile: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Fields to change; absent fields stay as they are. `"profile": null` clears the
/// assignment.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeUpdate {
    #[schema(pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")]
    pub hostname: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, nullable)]
    pub profile: Option<Option<String>>,
    pub labels: Option<BTreeMap<String, String>>,
    /// The address DHCP always gives this node; `null` clears the reservation. It
    /// must lie in a configured DHCP subnet.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, nullable, example = "10.213.0.20")]
    pub reserved_ip: Option<Option<String>>,
    /// Reserve an address another MAC holds a lease on, ending that lease (the
    /// only way an address moves between MACs).
    #[serde(default)]
    pub take_over: bool,
    /// Vouch for the node (`true`), or take that back.
    pub approved: Option<bool>,
    /// Its BMC (Redfish); `null` forgets it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Bmc>, nullable)]
    pub bmc: Option<Option<Bmc>>,
    /// Its own boot chain (`ipxe` or `signed`); `null`: its profile's again.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<BootChain>, nullable)]
    pub boot_chain: Option<Option<BootChain>>,
}

/// Tell a field given as `null` from a missing one.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteNodeQuery {
    /// Also delete the node's iSCSI volumes and their data (default: detach and keep).
    #[serde(default)]
    pub delete_volumes: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    /// `true` to take the node out of service, `false` to return it.
    pub enabled: bool,
    /// Shown on the node's console and in its events.
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only events with an id greater than this.
    #[serde(default)]
    #[param(minimum = 0)]
    pub after: i64,
    /// Instead of paging from `after`: the newest `last` events (oldest first).
    #[param(minimum = 1, maximum = 500)]
    pub last: Option<i64>,
    #[serde(default = "default_limit")]
    #[param(minimum = 1, maximum = 500)]
    pub limit: i64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Start after this event id (0: from the beginning; omit: only new events).
    #[param(minimum = 0)]
    pub after: Option<i64>,
}

// The `maximum = 500` literals above are MAX_PAGE: attributes cannot name a const.
const _: () = assert!(MAX_PAGE == 500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_tells_null_from_absent() {
        let clear: NodeUpdate = serde_json::from_str(r#"{"profile": null, "reserved_ip": null}"#).unwrap();
        assert_eq!((clear.profile, clear.reserved_ip), (Some(None), Some(None)));
        let keep: NodeUpdate = serde_json::from_str(r#"{"hostname": "web-1"}"#).unwrap();
        assert_eq!((keep.profile, keep.reserved_ip, keep.take_over), (None, None, false));
        assert!(serde_json::from_str::<NodeUpdate>(r#"{"nickname": "x"}"#).is_err(), "unknown fields refused");
    }

    #[test]
    fn list_queries_default_their_limit() {
        let q: EventQuery = serde_json::from_str("{}").unwrap();
        assert_eq!((q.after, q.last, q.limit), (0, None, default_limit()));
    }
}
