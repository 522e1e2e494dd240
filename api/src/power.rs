//! Power over Redfish: what `/nodes/{id}/power` shows and the body that switches a
//! node's power. Never a credential: a node's BMC is named by its URL only.

use crate::nodes::NodeId;
use ramboot_core::node::MacAddr;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What to do to a node's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    On,
    /// A forced off (nothing on a re-provisioned node is worth a graceful shutdown).
    Off,
    /// Off and on again; just on if it is off.
    Cycle,
}

impl PowerAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Cycle => "cycle",
        }
    }
}

/// `POST /nodes/{id}/power`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerRequest {
    pub action: PowerAction,
    /// Set a one-time PXE boot override first, so the next boot is from the
    /// network (for `cycle` and `on`: this one).
    #[serde(default)]
    pub pxe_once: bool,
}

/// A system's power state as its BMC reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    On,
    Off,
    PoweringOn,
    PoweringOff,
    /// Anything else, or no state at all.
    Unknown,
}

impl PowerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::PoweringOn => "powering on",
            PowerState::PoweringOff => "powering off",
            PowerState::Unknown => "unknown",
        }
    }
}

/// The boot source override the BMC reports (Redfish `BootSourceOverrideTarget`
/// and `BootSourceOverrideEnabled`, as it names them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BootOverride {
    /// `Pxe`, `Hdd`, `None`, ...
    pub target: String,
    /// `Once`, `Continuous`, `Disabled`; absent when the BMC does not say. Some
    /// BMCs (sushy's libvirt driver) keep every override as `Continuous`.
    pub enabled: Option<String>,
}

/// What the background poller last saw of a node's BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PollStatus {
    On,
    Off,
    /// No answer (connection refused or timed out).
    Unreachable,
    /// The BMC refused the credentials.
    Unauthorized,
    /// Anything else: a credential that does not resolve, a BMC error, an odd state.
    Error,
}

impl PollStatus {
    pub const ALL: [PollStatus; 5] =
        [PollStatus::On, PollStatus::Off, PollStatus::Unreachable, PollStatus::Unauthorized, PollStatus::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            PollStatus::On => "on",
            PollStatus::Off => "off",
            PollStatus::Unreachable => "unreachable",
            PollStatus::Unauthorized => "unauthorized",
            PollStatus::Error => "error",
        }
    }
}

/// The last check of a node's BMC (by the poller, or by a power request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PowerCheck {
    pub status: PollStatus,
    /// The power state, when the BMC answered.
    pub power: Option<PowerState>,
    /// Whether the BMC answered at all.
    pub reachable: bool,
    /// What went wrong, in words (names the BMC, never the credential).
    pub error: Option<String>,
    pub checked_at_ms: i64,
}

/// `GET /nodes/{id}/power`: the node's power as its BMC reports it now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PowerStatus {
    pub node_id: NodeId,
    #[schema(value_type = String, example = "52:54:00:72:62:01")]
    pub mac: MacAddr,
    /// The Redfish system URL.
    pub bmc_url: String,
    pub power: PowerState,
    /// Absent when the system has no Boot object.
    pub boot_override: Option<BootOverride>,
    /// The poller's last view before this read (absent: not polled yet).
    pub last_check: Option<PowerCheck>,
}

/// `POST /nodes/{id}/power`: what was done.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PowerResult {
    pub node_id: NodeId,
    #[schema(value_type = String, example = "52:54:00:72:62:01")]
    pub mac: MacAddr,
    pub action: PowerAction,
    pub pxe_once: bool,
    /// The power state before the action.
    pub before: PowerState,
    /// The power state after it, as the BMC reports it.
    pub power: PowerState,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_strict_and_pxe_once_defaults_off() {
        let r: PowerRequest = serde_json::from_str(r#"{"action": "cycle"}"#).unwrap();
        assert_eq!((r.action, r.pxe_once), (PowerAction::Cycle, false));
        assert!(serde_json::from_str::<PowerRequest>(r#"{"action": "reboot"}"#).is_err());
        assert!(serde_json::from_str::<PowerRequest>(r#"{"action": "on", "pxe": true}"#).is_err());
        assert_eq!(serde_json::to_value(PowerState::PoweringOn).unwrap(), "powering_on");
    }
}
