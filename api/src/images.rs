//! Image manifests as `/images` shows them: a built image and its artifacts.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    /// Kernel + initramfs with the agent.
    Stage1,
    /// A profile's root filesystem.
    Rootfs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Artifact {
    // SHA-256 as 64 lowercase hex digits (the server's `Digest` as it serializes).
    #[schema(example = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")]
    pub digest: String,
    pub size: u64,
    /// e.g. `squashfs`, `cpio.zst`, `bzImage`.
    pub format: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Manifest {
    pub name: String,
    pub kind: ImageKind,
    pub built_at_ms: i64,
    /// `kernel` + `initrd` for stage one, `rootfs` for a root filesystem.
    pub artifacts: BTreeMap<String, Artifact>,
    /// What went in (package versions, module list), as the recipe reported it.
    pub inputs: BTreeMap<String, String>,
}
