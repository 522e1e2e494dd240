//! The node inventory in git: the files a server holds and what it applied.

use crate::SourceError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One inventory file as the server holds it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InventoryFile {
    /// Its name under the inventory directory (how nodes and the audit trail name it).
    pub name: String,
    /// The first 12 hex digits of the SHA-256 of the version held (the last good one).
    pub revision: String,
    /// Nodes it declares.
    pub nodes: usize,
    /// The revision the database reflects; absent until one applied.
    pub applied: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Inventory {
    /// The directory the server watches.
    pub dir: String,
    pub files: Vec<InventoryFile>,
    /// Files refused (their last good version stays), as `file:line:col: message`.
    pub errors: Vec<SourceError>,
}
