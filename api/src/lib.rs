//! The ramboot admin API's contract (`/api/v1`): every request body, response body,
//! query and error shape, with the OpenAPI schemas the server documents them with.
//!
//! The server maps its database rows, image manifests and profiles into these types
//! and parses requests from them; the CLI decodes answers into them. So a row can
//! change without the API changing by accident. This crate does no I/O and knows no
//! server: it must not depend on axum, sqlx, tokio or the `ramboot` crate
//! (`cargo tree -p ramboot-api -e normal` is the check).

pub mod audit;
pub mod error;
pub mod images;
pub mod inventory;
pub mod leases;
pub mod nodes;
pub mod power;
pub mod profiles;
pub mod rollouts;
pub mod tokens;
pub mod volumes;

pub use audit::{Actor, AuditList, AuditQuery, AuditRecord};
pub use error::{ErrorBody, ErrorDetail};
pub use images::{Artifact, ImageKind, Manifest};
pub use inventory::{Inventory, InventoryFile};
pub use leases::{Lease, Lease6};
pub use nodes::{
    Bmc, Boot, BootId, BootImage, DeleteNodeQuery, Event, EventQuery, Field, Maintenance, NewNode, Node, NodeDetail,
    NodeId, NodeList, NodeQuery, NodeUpdate, StreamQuery,
};
pub use power::{
    BootOverride, PollStatus, PowerAction, PowerCheck, PowerRequest, PowerResult, PowerState, PowerStatus,
};
pub use profiles::{OverlayFile, Profile, ProfileList, ProfileView, ProfileVolume, Selector, SourceError};
pub use ramboot_core::node::{MacAddr, NodeState};
pub use rollouts::{NewRollout, Rollout, RolloutEvent, RolloutNode};
pub use tokens::{CreatedToken, NewToken, Role, TokenInfo};
pub use volumes::{Attach, Grow, IscsiSettings, NewVolume, NodeIscsi, Volume};

/// A page holds at most this many items (`limit`, `last`).
pub const MAX_PAGE: i64 = 500;

/// The `limit` of a list that gives none.
pub fn default_limit() -> i64 {
    100
}
