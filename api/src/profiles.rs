//! Profiles as `/profiles` shows them: each valid profile with its file and
//! revision, and the files whose last (re)load failed.
//!
//! These mirror the server's profile YAML schema, `deny_unknown_fields` included, so
//! the document says exactly what a profile file may hold.

use ramboot_core::node::MacAddr;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The stage-one set (kernel + initramfs + agent) that loads this profile.
    pub stage1: String,
    /// The root filesystem image the agent loads into RAM.
    pub image: String,
    /// Extra kernel command-line arguments for stage one (and, through it, stage two).
    #[serde(default)]
    pub kernel_args: Vec<String>,
    /// Nodes this profile is chosen for automatically; the most specific match wins.
    #[serde(default)]
    pub selectors: Vec<Selector>,
    /// Values for the overlay templates (`{{ vars.name }}`).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Files rendered per node and laid over the image.
    #[serde(default)]
    pub files: Vec<OverlayFile>,
    /// iSCSI volumes every node of this profile gets (`<hostname>-<name>`), created
    /// and attached on its first boot, kept across boots.
    #[serde(default)]
    pub volumes: Vec<ProfileVolume>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileVolume {
    pub name: String,
    /// Like `20G` or `512M` (binary units).
    pub size: String,
}

/// All present fields must match (AND). A profile matches if any selector does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    #[schema(value_type = Option<String>)]
    pub mac: Option<MacAddr>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// DMI system serial number, as the agent reports it.
    pub serial: Option<String>,
    /// DMI system UUID.
    pub uuid: Option<String>,
    /// Firmware architecture as DHCP saw it (`bios`, `efi-x64`, ...).
    pub arch: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverlayFile {
    /// Absolute path in the node's root filesystem.
    pub path: String,
    /// Inline minijinja template.
    pub template: Option<String>,
    /// Or a template file under `profiles/templates/`.
    pub template_file: Option<String>,
    /// Octal mode, e.g. `"0644"` (default) or `"0600"`.
    pub mode: Option<String>,
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
