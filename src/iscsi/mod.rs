//! iSCSI VM disks: volumes on a target, exported to one node's initiator IQN with CHAP.
//!
//! The hypervisor's OS lives in RAM; its VMs' disks live here, so they survive a
//! crash of the node. A [`Backend`] turns the desired state (an [`Export`] per
//! node: target IQN, LUNs, initiator ACL, CHAP) into the target's state, and reads
//! the target back ([`TargetState`]) so ramboot can reconcile: report drift and
//! repair it. Every operation is idempotent. Backing files are sparse and are never
//! deleted by an export change: data outlives exports.
//!
//! Access: a target admits one node, by its address when ramboot knows it (the
//! address its boot was bound to, else its last lease), and only with its CHAP
//! secret. tgt cannot require an initiator name *and* an address: its ACL is one
//! allow-list of names and addresses, and either match admits a login (tested
//! against tgt 1.0.85 in `tests/iscsi_tgt.rs`). So the ACL holds the address alone;
//! the name is bound only while no address is known (see [`Export::acl`]).

pub mod service;
pub mod tgt;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// A volume as the target sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lun {
    /// From 1: tgt's LUN 0 is its controller.
    pub number: u32,
    pub backing: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chap {
    pub user: String,
    pub secret: String,
}

/// Everything one node may reach: one target, its LUNs, visible only to the node
/// (its address, else its initiator IQN) and only with its CHAP secret (plus,
/// optionally, mutual CHAP: the target proves itself to the node too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub target_iqn: String,
    pub initiator_iqn: String,
    /// The node's current address, if known.
    pub initiator_address: Option<IpAddr>,
    pub chap: Chap,
    pub mutual_chap: Option<Chap>,
    pub luns: Vec<Lun>,
}

/// One entry of a target's access list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclEntry {
    /// An initiator IQN (`--initiator-name`).
    Name(String),
    /// An address, a network or `ALL` (`--initiator-address`), as tgt prints it.
    Address(String),
}

impl AclEntry {
    /// Classify an entry of `tgtadm --op show`, which lists both kinds in one list.
    pub fn parse(entry: &str) -> AclEntry {
        let host = entry.split('/').next().unwrap_or(entry).trim_start_matches('[').trim_end_matches(']');
        if entry == "ALL" || host.parse::<IpAddr>().is_ok() {
            AclEntry::Address(entry.to_string())
        } else {
            AclEntry::Name(entry.to_string())
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            AclEntry::Name(s) | AclEntry::Address(s) => s,
        }
    }
}

impl Export {
    /// Who may log in: the node's address alone when it is known (tgt admits a login
    /// that matches *any* entry, so binding the IQN too would admit that IQN from
    /// anywhere), else its IQN. CHAP is required either way.
    pub fn acl(&self) -> Vec<AclEntry> {
        match self.initiator_address {
            Some(addr) => vec![AclEntry::Address(addr.to_string())],
            None => vec![AclEntry::Name(self.initiator_iqn.clone())],
        }
    }
}

/// A target as the backend reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetState {
    pub tid: u32,
    pub iqn: String,
    /// Data LUNs only (not tgt's controller LUN 0).
    pub luns: Vec<Lun>,
    /// Incoming CHAP accounts (the initiator proves itself with one).
    pub accounts: Vec<String>,
    /// The outgoing account (mutual CHAP: the target proves itself with it).
    pub outgoing_account: Option<String>,
    /// The access list: initiator names and addresses, in tgt's order.
    pub initiators: Vec<String>,
}

/// What reconciling one export found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repair {
    pub created_target: bool,
    /// LUNs removed because no volume wants them there (a detached volume, or a
    /// number now backed by another file).
    pub removed_luns: Vec<u32>,
    pub added_luns: Vec<u32>,
    /// Access-list entries removed (an old address, a name no longer wanted).
    pub unbound_initiators: Vec<String>,
    pub bound_initiator: bool,
    pub unbound_accounts: Vec<String>,
    pub bound_account: bool,
    /// The mutual CHAP account was bound (`Some(true)`) or removed (`Some(false)`).
    pub mutual_chap: Option<bool>,
}

impl Repair {
    pub fn is_noop(&self) -> bool {
        *self == Repair::default()
    }

    /// For the log and the event timeline.
    pub fn describe(&self) -> String {
        let mut parts = vec![];
        if self.created_target {
            parts.push("target created".to_string());
        }
        if !self.removed_luns.is_empty() {
            parts.push(format!("stale LUNs removed: {:?}", self.removed_luns));
        }
        if !self.added_luns.is_empty() {
            parts.push(format!("LUNs added: {:?}", self.added_luns));
        }
        if !self.unbound_initiators.is_empty() {
            parts.push(format!("ACL entries removed: {:?}", self.unbound_initiators));
        }
        if self.bound_initiator {
            parts.push("initiator ACL bound".to_string());
        }
        if self.bound_account {
            parts.push("CHAP account bound".to_string());
        }
        if !self.unbound_accounts.is_empty() {
            parts.push(format!("CHAP accounts unbound: {:?}", self.unbound_accounts));
        }
        match self.mutual_chap {
            Some(true) => parts.push("mutual CHAP account bound".to_string()),
            Some(false) => parts.push("mutual CHAP account removed".to_string()),
            None => {}
        }
        if parts.is_empty() {
            "in sync".into()
        } else {
            parts.join(", ")
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IscsiError {
    #[error("{command}: {message}")]
    Command { command: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {what} {value:?}: {rule}")]
    Invalid { what: &'static str, value: String, rule: &'static str },
    #[error("volume {path} is {have} bytes; it can only grow (asked for {want})")]
    Shrink { path: PathBuf, have: u64, want: u64 },
}

/// A place where exports live: tgt today, LIO later (see docs/architecture.md).
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// Make the target match `export`, creating what is missing. Safe to repeat.
    async fn ensure_export(&self, export: &Export) -> Result<Repair, IscsiError>;
    /// Remove the target (ending its sessions). The backing files stay.
    async fn remove_export(&self, target_iqn: &str) -> Result<bool, IscsiError>;
    async fn list(&self) -> Result<Vec<TargetState>, IscsiError>;
    /// Make the target re-read a LUN's backing file (after it grew). Initiators see
    /// the new size after a rescan (`iscsiadm -m session -R`).
    async fn refresh_lun(&self, target_iqn: &str, lun: &Lun) -> Result<(), IscsiError>;
}

/// IQNs (RFC 3720 §3.2.6.3.1): `iqn.yyyy-mm.reversed.domain[:unique]`, lowercase.
pub fn valid_iqn(iqn: &str) -> bool {
    let Some(rest) = iqn.strip_prefix("iqn.") else { return false };
    let date_ok = rest.len() > 8
        && rest.as_bytes()[..4].iter().all(u8::is_ascii_digit)
        && rest.as_bytes()[4] == b'-'
        && rest.as_bytes()[5..7].iter().all(u8::is_ascii_digit)
        && rest.as_bytes()[7] == b'.';
    date_ok
        && iqn.len() <= 223
        && iqn.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b':'))
}

/// CHAP secrets: tgt and open-iscsi want 12-16 characters; no spaces or quotes.
pub fn valid_chap_secret(s: &str) -> bool {
    (12..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Create a sparse backing file of `size` bytes, or leave an existing one alone if it
/// is already that big. Never truncates data.
pub fn ensure_backing(path: &Path, size: u64) -> Result<(), IscsiError> {
    let io = |source| IscsiError::Io { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // A node's disk: readable by the server (and tgtd, as root) only.
    let file = std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new().create(true).truncate(false).write(true),
        crate::files::FILE_MODE,
    )
    .open(path)
    .map_err(io)?;
    crate::files::restrict_file(path).map_err(io)?;
    let have = file.metadata().map_err(io)?.len();
    if have > size {
        return Err(IscsiError::Shrink { path: path.to_path_buf(), have, want: size });
    }
    if have < size {
        file.set_len(size).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iqns_and_secrets() {
        assert!(valid_iqn("iqn.2026-11.io.ramboot:node-1"));
        for bad in
            ["iqn.2026-11", "eui.02004567A425678D", "iqn.26-11.io.x", "iqn.2026-11.io.ramboot:Node", "iqn.2026-11.io x"]
        {
            assert!(!valid_iqn(bad), "{bad}");
        }
        assert!(valid_chap_secret("abcdefghijkl"));
        assert!(
            !valid_chap_secret("short") && !valid_chap_secret("has space 12") && !valid_chap_secret(&"a".repeat(17))
        );
    }

    #[test]
    fn backing_files_are_sparse_grow_only_and_keep_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vols/v1.img");
        ensure_backing(&path, 1 << 30).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600, "private");
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) < 64, "sparse: no blocks allocated up front");
        std::fs::write(&path, b"data").unwrap();
        ensure_backing(&path, 4).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"data", "same size: untouched");
        ensure_backing(&path, 8192).unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[..4], b"data", "growing keeps data");
        assert!(matches!(ensure_backing(&path, 10), Err(IscsiError::Shrink { .. })));
    }
}
