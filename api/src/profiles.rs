//! Profiles as `/profiles` shows them: each valid profile with its file and
//! revision, and the files whose last (re)load failed.
//!
//! A profile is shown as its file says it (`ramboot_core::profile::Profile`, the
//! YAML schema with `deny_unknown_fields`), so the document says exactly what a
//! profile file may hold.

pub use ramboot_core::profile::{OverlayFile, Profile, ProfileVolume, Selector};
use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::ToSchema;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProfileList {
    pub profiles: Vec<ProfileView>,
    /// Files that failed their last (re)load; their last good version (if any) serves.
    pub errors: Vec<SourceError>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProfileView {
    pub file: String,
    /// Short hash of the file's text; boot events name the revision they used.
    pub revision: String,
    pub profile: Profile,
}

/// An error anchored at a position in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SourceError {
    pub file: String,
    /// 1-based; 0 when the parser could not tell.
    pub line: u64,
    /// 1-based; 0 when the parser could not tell.
    pub column: u64,
    pub message: String,
}

/// `file:line:col: message`, as the server logs it.
impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
    }
}
