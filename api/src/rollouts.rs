//! Rolling re-provisions: starting one, following its progress, pausing, resuming
//! and aborting it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

pub use ramboot_core::rollout::{Command, NodePhase, Progress, RolloutStatus};

/// A rollout to start. Nodes are those matching every criterion given (at least
/// one is required: a rollout never takes the fleet by accident).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRollout {
    /// Only nodes carrying every one of these labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Only nodes assigned this profile now.
    pub profile: Option<String>,
    /// Only these nodes (ids or MACs).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Assign this profile to each node before its reboot. Without it each node
    /// reboots into its own profile's current image (an image revision rollout).
    pub to_profile: Option<String>,
    /// Nodes down at once (from drain until ready on the new revision).
    #[serde(default = "one")]
    #[schema(minimum = 1)]
    pub batch_size: u32,
    /// Failed nodes tolerated; one more halts the rollout.
    #[serde(default)]
    pub max_failures: u32,
    /// A hook (config `hooks:`) run before each node's reboot; its failure fails the node.
    pub drain: Option<String>,
    /// A hook run after each node is ready.
    pub undrain: Option<String>,
    /// How long a node may take from its reboot to `ready` on the new revision.
    #[serde(default = "default_ready_timeout")]
    #[schema(minimum = 1)]
    pub ready_timeout_secs: u64,
}

fn one() -> u32 {
    1
}

fn default_ready_timeout() -> u64 {
    1800
}

/// One node of a rollout.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutNode {
    pub node_id: i64,
    pub mac: Option<String>,
    pub hostname: Option<String>,
    #[schema(value_type = Object)]
    pub phase: NodePhase,
    pub attempts: u32,
    /// The profile and image digest its boot must have.
    pub target_profile: String,
    pub target_digest: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Rollout {
    pub id: i64,
    pub created_at_ms: i64,
    pub created_by: String,
    pub description: String,
    /// `running`, `paused`, `halted`, `aborted` or `done`.
    pub status: String,
    /// Why it halted.
    pub reason: Option<String>,
    #[schema(value_type = Object)]
    pub progress: Progress,
    pub batch_size: u32,
    pub max_failures: u32,
    pub drain: Option<String>,
    pub undrain: Option<String>,
    /// A command waiting for the driver's next step.
    #[schema(value_type = Option<String>)]
    pub command: Option<Command>,
    /// The server driving it.
    pub driver: Option<String>,
    pub nodes: Vec<RolloutNode>,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutEvent {
    pub id: i64,
    pub at_ms: i64,
    pub node_id: Option<i64>,
    pub message: String,
}
