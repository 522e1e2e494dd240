//! Profiles as the boot decision sees them: what a profile names (stage one, image,
//! kernel arguments, overlay files, volumes) and which nodes its selectors pick.
//! Loading, validating and watching the YAML files is the server's job.

use crate::node::MacAddr;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// How a UEFI firmware's first step reaches stage one: ramboot's iPXE, or the
    /// signed chain that Secure Boot firmware runs. Unset: the config's `boot_chain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_chain: Option<BootChain>,
}

/// What DHCP hands a PXE firmware on a node (for architectures that have both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BootChain {
    /// ramboot's iPXE (`snponly.efi`), which runs the per-node iPXE script.
    #[default]
    Ipxe,
    /// Microsoft-signed shim, the distribution's signed GRUB and signed kernel: the
    /// chain a Secure Boot firmware runs. GRUB loads the per-node `grub.cfg`.
    Signed,
}

impl BootChain {
    pub fn as_str(self) -> &'static str {
        match self {
            BootChain::Ipxe => "ipxe",
            BootChain::Signed => "signed",
        }
    }
}

impl std::fmt::Display for BootChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProfileVolume {
    pub name: String,
    /// Like `20G` or `512M` (binary units).
    pub size: String,
}

impl ProfileVolume {
    pub fn size_bytes(&self) -> u64 {
        ramboot_proto::parse_size(&self.size).unwrap_or(0)
    }

    /// The volume a node gets: named after it, so it is its own across boots.
    pub fn volume_name(&self, hostname: &str) -> String {
        format!("{hostname}-{}", self.name)
    }
}

/// All present fields must match (AND). A profile matches if any selector does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Selector {
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// What selectors match against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub mac: Option<MacAddr>,
    pub labels: BTreeMap<String, String>,
    pub serial: Option<String>,
    pub uuid: Option<String>,
    pub arch: Option<String>,
}

impl Selector {
    /// How precisely it names nodes; the most specific matching selector wins.
    ///
    /// Facts weigh by how many machines they can name: a MAC names one NIC, a DMI
    /// serial or UUID one machine, a label a group, an architecture half the fleet.
    /// So a serial selector beats any label selector, and only comparable selectors
    /// can tie.
    pub fn specificity(&self) -> usize {
        1000 * usize::from(self.mac.is_some())
            + 300 * usize::from(self.serial.is_some())
            + 300 * usize::from(self.uuid.is_some())
            + 10 * self.labels.len()
            + usize::from(self.arch.is_some())
    }

    pub fn matches(&self, facts: &NodeFacts) -> bool {
        let same = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref().is_some_and(|h| h.eq_ignore_ascii_case(w)))
        };
        self.mac.is_none_or(|m| facts.mac == Some(m))
            && self.labels.iter().all(|(k, v)| facts.labels.get(k) == Some(v))
            && same(&self.serial, &facts.serial)
            && same(&self.uuid, &facts.uuid)
            && same(&self.arch, &facts.arch)
    }

    /// Could one node match both? (No field where both pin different values.)
    pub fn overlaps(&self, other: &Selector) -> bool {
        let agree = |a: &Option<String>, b: &Option<String>| match (a, b) {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            _ => true,
        };
        let macs_agree = match (self.mac, other.mac) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        macs_agree
            && self.labels.iter().all(|(k, v)| other.labels.get(k).is_none_or(|w| w == v))
            && agree(&self.serial, &other.serial)
            && agree(&self.uuid, &other.uuid)
            && agree(&self.arch, &other.arch)
    }

    pub fn describe(&self) -> String {
        let mut parts = vec![];
        if let Some(m) = self.mac {
            parts.push(format!("mac={m}"));
        }
        parts.extend(self.labels.iter().map(|(k, v)| format!("label {k}={v}")));
        for (name, value) in [("serial", &self.serial), ("uuid", &self.uuid), ("arch", &self.arch)] {
            if let Some(v) = value {
                parts.push(format!("{name}={v}"));
            }
        }
        if parts.is_empty() {
            "any node".into()
        } else {
            parts.join(", ")
        }
    }
}

/// The profile whose most specific selector matches `facts`, and that selector. The
/// server's validation rules out ties between overlapping selectors, so the answer
/// is unique.
pub fn select<'a>(
    profiles: impl Iterator<Item = &'a Profile>,
    facts: &NodeFacts,
) -> Option<(&'a Profile, &'a Selector)> {
    profiles
        .flat_map(|p| p.selectors.iter().map(move |s| (p, s)))
        .filter(|(_, s)| s.matches(facts))
        .max_by_key(|(_, s)| s.specificity())
}
