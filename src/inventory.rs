//! The node inventory in git: `inventory/*.yaml` files declaring nodes (MAC,
//! hostname, labels, profile, reserved address, BMC), applied to the database.
//!
//! Like profiles, files are validated with `file:line:col` errors, watched, and
//! reloaded per file: a file that fails keeps its last good version (the database
//! keeps what that version made it). Each file is applied in one transaction
//! ([`Store::apply_inventory`]), so a file applies whole or not at all, and every
//! change is audited as the file at its revision (a digest of its text). The
//! reconcile itself is pure (`ramboot_core::inventory`). A removed file releases
//! its nodes: they keep their fields, which become the API's again.

use crate::store::{Store, StoreError};
use crate::yaml::{self, SourceError};
use arc_swap::ArcSwap;
use ramboot_core::inventory::{Bmc, Declared, Field};
use ramboot_core::node::{valid_hostname, valid_label, MacAddr, LABEL_RULE};
use serde::Deserialize;
use serde_saphyr::Spanned;
use sha2::Digest;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A node may carry at most this many labels (as through the API).
const MAX_LABELS: usize = 32;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWire {
    #[serde(default)]
    nodes: Vec<NodeWire>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeWire {
    mac: Spanned<String>,
    hostname: Option<Spanned<String>>,
    labels: Option<Spanned<BTreeMap<String, String>>>,
    profile: Option<Spanned<String>>,
    reserved_ip: Option<Spanned<String>>,
    bmc: Option<Spanned<Bmc>>,
}

/// One file's declarations, valid on their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryFile {
    /// The file's name under the inventory directory: how nodes and the audit
    /// trail name it, the same on every server.
    pub name: String,
    pub path: PathBuf,
    /// The first 12 hex digits of the SHA-256 of its text.
    pub revision: String,
    pub nodes: Vec<Declared>,
    /// Where each node's fields are, for errors found later (on apply).
    positions: BTreeMap<(MacAddr, Option<Field>), (u64, u64)>,
}

impl InventoryFile {
    fn at(&self, mac: MacAddr, field: Option<Field>, message: String) -> SourceError {
        let (line, column) =
            self.positions.get(&(mac, field)).or(self.positions.get(&(mac, None))).copied().unwrap_or((0, 0));
        SourceError { file: self.path.clone(), line, column, message }
    }
}

/// What a declaration is checked against beyond its own text; each check is made
/// only when its part is known (`ramboot inventory validate` without a config).
#[derive(Debug, Clone, Default)]
pub struct Checks {
    /// Profile names that exist.
    pub profiles: Option<BTreeSet<String>>,
    /// The DHCP subnets reserved addresses must lie in.
    pub subnets: Option<Vec<ipnet::Ipv4Net>>,
    /// Secret names a BMC credential may refer to.
    pub secrets: Option<BTreeSet<String>>,
}

impl Checks {
    /// The checks the server `config` implies, with the profile names given.
    pub fn for_config(config: &crate::config::Config, profiles: BTreeSet<String>) -> Result<Checks, SourceError> {
        let secrets = match &config.secrets {
            Some(path) => Some(crate::secrets::load(path).map_err(|e| SourceError {
                file: path.clone(),
                line: 0,
                column: 0,
                message: e.to_string(),
            })?),
            None => None,
        };
        Ok(Checks {
            profiles: Some(profiles),
            subnets: Some(config.dhcp.subnets.iter().map(|s| s.net).collect()),
            secrets: Some(secrets.map(|s| s.into_keys().collect()).unwrap_or_default()),
        })
    }
}

fn pos<T>(s: &Spanned<T>) -> (u64, u64) {
    (s.referenced.line(), s.referenced.column())
}

/// Parse and check one file's text; `name` is its name under the directory.
pub fn parse_file(path: &Path, name: &str, text: &str, checks: &Checks) -> Result<InventoryFile, SourceError> {
    let wire: FileWire = yaml::parse(path, text)?;
    let err =
        |(line, column): (u64, u64), message: String| SourceError { file: path.to_path_buf(), line, column, message };
    let revision = hex::encode(&sha2::Sha256::digest(text.as_bytes())[..6]);
    let mut file = InventoryFile {
        name: name.to_string(),
        path: path.to_path_buf(),
        revision,
        nodes: vec![],
        positions: BTreeMap::new(),
    };
    let (mut hostnames, mut addresses) = (BTreeMap::new(), BTreeMap::new());
    for n in wire.nodes {
        let mac: MacAddr =
            n.mac.value.parse().map_err(|_| err(pos(&n.mac), format!("mac {:?} is not a MAC address", n.mac.value)))?;
        if file.positions.contains_key(&(mac, None)) {
            return Err(err(pos(&n.mac), format!("node {mac} is declared twice in this file")));
        }
        file.positions.insert((mac, None), pos(&n.mac));
        let mut d = Declared { mac, ..Declared::default() };
        if let Some(h) = n.hostname {
            file.positions.insert((mac, Some(Field::Hostname)), pos(&h));
            if !valid_hostname(&h.value) {
                return Err(err(
                    pos(&h),
                    format!(
                        "hostname {:?} must be 1-63 letters, digits and '-', not starting or ending with '-'",
                        h.value
                    ),
                ));
            }
            if let Some(other) = hostnames.insert(h.value.clone(), mac) {
                return Err(err(pos(&h), format!("hostname {:?} is also node {other}'s", h.value)));
            }
            d.hostname = Some(h.value);
        }
        if let Some(l) = n.labels {
            file.positions.insert((mac, Some(Field::Labels)), pos(&l));
            if l.value.len() > MAX_LABELS {
                return Err(err(pos(&l), format!("at most {MAX_LABELS} labels")));
            }
            if let Some((k, v)) = l.value.iter().find(|(k, v)| !valid_label(k) || !valid_label(v)) {
                return Err(err(pos(&l), format!("label {k}={v}: {LABEL_RULE}")));
            }
            d.labels = Some(l.value);
        }
        if let Some(p) = n.profile {
            file.positions.insert((mac, Some(Field::Profile)), pos(&p));
            if checks.profiles.as_ref().is_some_and(|known| !known.contains(&p.value)) {
                return Err(err(pos(&p), format!("no valid profile named {:?}", p.value)));
            }
            d.profile = Some(p.value);
        }
        if let Some(ip) = n.reserved_ip {
            file.positions.insert((mac, Some(Field::ReservedIp)), pos(&ip));
            let addr: Ipv4Addr = ip
                .value
                .parse()
                .map_err(|_| err(pos(&ip), format!("reserved_ip {:?} is not an IPv4 address", ip.value)))?;
            let in_subnet = |s: &ipnet::Ipv4Net| s.contains(&addr) && addr != s.network() && addr != s.broadcast();
            if checks.subnets.as_ref().is_some_and(|subnets| !subnets.iter().any(in_subnet)) {
                return Err(err(
                    pos(&ip),
                    format!("reserved_ip {addr} is not a host address in any configured DHCP subnet"),
                ));
            }
            if let Some(other) = addresses.insert(addr, mac) {
                return Err(err(pos(&ip), format!("reserved_ip {addr} is also node {other}'s")));
            }
            d.reserved_ip = Some(addr);
        }
        if let Some(b) = n.bmc {
            file.positions.insert((mac, Some(Field::Bmc)), pos(&b));
            if let Some(problem) = b.value.problem() {
                return Err(err(pos(&b), problem));
            }
            if checks.secrets.as_ref().is_some_and(|names| !names.contains(&b.value.credential)) {
                return Err(err(
                    pos(&b),
                    format!("bmc credential {:?} is not in the server's secrets file", b.value.credential),
                ));
            }
            d.bmc = Some(b.value);
        }
        file.nodes.push(d);
    }
    Ok(file)
}

/// Every file's current version, by name.
#[derive(Debug, Clone, Default)]
pub struct InventorySet {
    pub files: BTreeMap<String, Arc<InventoryFile>>,
}

impl InventorySet {
    pub fn nodes(&self) -> usize {
        self.files.values().map(|f| f.nodes.len()).sum()
    }
}

/// Read `dir`'s files into a set. A file that fails (or clashes with an earlier
/// file: a MAC, hostname or address declared twice) keeps `previous`'s version
/// if it had one. A missing directory is an empty inventory.
pub fn assemble(dir: &Path, checks: &Checks, previous: Option<&InventorySet>) -> (InventorySet, Vec<SourceError>) {
    let files = match yaml::yaml_files(dir) {
        Ok(files) => files,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (InventorySet::default(), vec![]),
        Err(e) => {
            let error =
                SourceError { file: dir.to_path_buf(), line: 0, column: 0, message: format!("cannot read: {e}") };
            return (previous.cloned().unwrap_or_default(), vec![error]);
        }
    };
    let mut set = InventorySet::default();
    let mut errors = vec![];
    let (mut macs, mut hostnames, mut addresses) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for path in files {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| SourceError { file: path.clone(), line: 0, column: 0, message: format!("cannot read: {e}") })
            .and_then(|text| parse_file(&path, &name, &text, checks))
            .and_then(|file| clash(&file, &macs, &hostnames, &addresses).map_or(Ok(file), Err));
        let file = match parsed {
            Ok(file) => Arc::new(file),
            Err(e) => {
                errors.push(e);
                match previous.and_then(|p| p.files.get(&name)) {
                    // The last good version, unless it clashes now.
                    Some(last) if clash(last, &macs, &hostnames, &addresses).is_none() => last.clone(),
                    _ => continue,
                }
            }
        };
        for d in &file.nodes {
            macs.insert(d.mac, name.clone());
            if let Some(h) = &d.hostname {
                hostnames.insert(h.clone(), name.clone());
            }
            if let Some(ip) = d.reserved_ip {
                addresses.insert(ip, name.clone());
            }
        }
        set.files.insert(name, file);
    }
    (set, errors)
}

/// The first declaration of `file` that an earlier file already made.
fn clash(
    file: &InventoryFile,
    macs: &BTreeMap<MacAddr, String>,
    hostnames: &BTreeMap<String, String>,
    addresses: &BTreeMap<Ipv4Addr, String>,
) -> Option<SourceError> {
    for d in &file.nodes {
        if let Some(other) = macs.get(&d.mac) {
            return Some(file.at(d.mac, None, format!("node {} is already declared in {other}", d.mac)));
        }
        if let Some(other) = d.hostname.as_ref().and_then(|h| hostnames.get(h)) {
            let message = format!("hostname {:?} is already declared in {other}", d.hostname.as_deref().unwrap_or(""));
            return Some(file.at(d.mac, Some(Field::Hostname), message));
        }
        if let Some(other) = d.reserved_ip.and_then(|ip| addresses.get(&ip)) {
            let message = format!(
                "reserved_ip {} is already declared in {other}",
                d.reserved_ip.unwrap_or(Ipv4Addr::UNSPECIFIED)
            );
            return Some(file.at(d.mac, Some(Field::ReservedIp), message));
        }
    }
    None
}

/// A file as the server holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStatus {
    pub name: String,
    pub revision: String,
    pub nodes: usize,
    /// The revision the database reflects (none: not applied yet, or it failed).
    pub applied: Option<String>,
}

/// The live inventory: the current set, its errors, and what was applied.
pub struct LiveInventory {
    dir: PathBuf,
    current: ArcSwap<InventorySet>,
    errors: ArcSwap<Vec<SourceError>>,
    applied: std::sync::Mutex<BTreeMap<String, String>>,
}

/// What one reload did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    pub files: usize,
    /// Rows changed in the database.
    pub changes: usize,
    pub errors: Vec<SourceError>,
}

impl LiveInventory {
    pub fn new(dir: &Path) -> LiveInventory {
        LiveInventory {
            dir: dir.to_path_buf(),
            current: ArcSwap::from_pointee(InventorySet::default()),
            errors: ArcSwap::from_pointee(vec![]),
            applied: Default::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn errors(&self) -> Arc<Vec<SourceError>> {
        self.errors.load_full()
    }

    pub fn files(&self) -> Vec<FileStatus> {
        let applied = self.applied.lock().map(|a| a.clone()).unwrap_or_default();
        self.current
            .load()
            .files
            .values()
            .map(|f| FileStatus {
                name: f.name.clone(),
                revision: f.revision.clone(),
                nodes: f.nodes.len(),
                applied: applied.get(&f.name).cloned(),
            })
            .collect()
    }

    /// Re-read the directory and apply every file (a removed one releases its
    /// nodes). A file the database refuses (an address leased to another MAC)
    /// reports an error at the field and changes nothing; the others apply.
    pub async fn reload(&self, store: &Store, checks: &Checks, now_ms: i64) -> ReloadReport {
        let previous = self.current.load_full();
        let (dir, prev, checks) = (self.dir.clone(), previous.clone(), checks.clone());
        let (set, mut errors) = match tokio::task::spawn_blocking(move || assemble(&dir, &checks, Some(&prev))).await {
            Ok(read) => read,
            Err(e) => {
                let message = format!("reading the inventory failed ({e}); the last good version stays");
                let error = SourceError { file: self.dir.clone(), line: 0, column: 0, message };
                return ReloadReport { errors: vec![error], ..ReloadReport::default() };
            }
        };
        let mut changes = 0;
        let removed: Vec<String> = previous.files.keys().filter(|n| !set.files.contains_key(*n)).cloned().collect();
        for name in removed {
            match store.apply_inventory(&name, "removed", &[], now_ms).await {
                Ok(n) => {
                    changes += n;
                    self.set_applied(&name, None);
                }
                Err(e) => {
                    errors.push(SourceError { file: self.dir.join(&name), line: 0, column: 0, message: e.to_string() })
                }
            }
        }
        for file in set.files.values() {
            match store.apply_inventory(&file.name, &file.revision, &file.nodes, now_ms).await {
                Ok(n) => {
                    changes += n;
                    self.set_applied(&file.name, Some(&file.revision));
                }
                Err(e) => errors.push(apply_error(file, e)),
            }
        }
        let report = ReloadReport { files: set.files.len(), changes, errors: errors.clone() };
        self.current.store(Arc::new(set));
        self.errors.store(Arc::new(errors));
        report
    }

    fn set_applied(&self, name: &str, revision: Option<&str>) {
        if let Ok(mut applied) = self.applied.lock() {
            match revision {
                Some(r) => applied.insert(name.to_string(), r.to_string()),
                None => applied.remove(name),
            };
        }
    }
}

/// A database refusal as an error at the field that caused it.
fn apply_error(file: &InventoryFile, e: StoreError) -> SourceError {
    let suffix = "; nothing of this file was applied";
    let holder = |ip: Ipv4Addr| file.nodes.iter().find(|d| d.reserved_ip == Some(ip)).map(|d| d.mac);
    match &e {
        StoreError::ReservedElsewhere { ip, .. } | StoreError::LeasedElsewhere { ip, .. } => match holder(*ip) {
            Some(mac) => file.at(mac, Some(Field::ReservedIp), format!("{e}{suffix}")),
            None => SourceError { file: file.path.clone(), line: 0, column: 0, message: format!("{e}{suffix}") },
        },
        _ => SourceError { file: file.path.clone(), line: 0, column: 0, message: format!("{e}{suffix}") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, checks: &Checks) -> Result<InventoryFile, SourceError> {
        parse_file(Path::new("inv/r1.yaml"), "r1.yaml", text, checks)
    }

    #[test]
    fn errors_point_at_the_value() {
        let bad_mac = parse("nodes:\n  - mac: 52:54:00:zz:00:01\n", &Checks::default()).unwrap_err();
        assert_eq!((bad_mac.line, bad_mac.column), (2, 10), "{bad_mac}");
        let text = "nodes:\n  - mac: 52:54:00:00:00:01\n    bmc:\n      url: ftp://x/\n      credential: c\n";
        let bad_bmc = parse(text, &Checks::default()).unwrap_err();
        assert_eq!(bad_bmc.line, 4, "{bad_bmc}");
        assert!(bad_bmc.message.contains("https://"), "{bad_bmc}");
        let twice = parse("nodes:\n  - mac: 52:54:00:00:00:01\n  - mac: 52:54:00:00:00:01\n", &Checks::default());
        assert_eq!(twice.unwrap_err().line, 3);
        let unknown_profile = Checks { profiles: Some(["tiny".to_string()].into()), ..Checks::default() };
        let err = parse("nodes:\n  - mac: 52:54:00:00:00:01\n    profile: huge\n", &unknown_profile).unwrap_err();
        assert_eq!((err.line, err.message.as_str()), (3, "no valid profile named \"huge\""));
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_version_and_others_apply() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("a.yaml", "nodes:\n  - mac: 52:54:00:00:00:01\n    hostname: a1\n");
        write("b.yaml", "nodes:\n  - mac: 52:54:00:00:00:02\n");
        let (first, errors) = assemble(dir.path(), &Checks::default(), None);
        assert!(errors.is_empty(), "{errors:?}");
        write("a.yaml", "nodes:\n  - mac: [broken\n");
        write("b.yaml", "nodes:\n  - mac: 52:54:00:00:00:02\n    hostname: b2\n");
        let (second, errors) = assemble(dir.path(), &Checks::default(), Some(&first));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(second.files["a.yaml"], first.files["a.yaml"], "a.yaml: the last good version");
        assert_eq!(second.files["b.yaml"].nodes[0].hostname.as_deref(), Some("b2"), "b.yaml applies");
        assert_eq!(second.nodes(), 2);
        let (none, errors) = assemble(&dir.path().join("missing"), &Checks::default(), None);
        assert!(none.files.is_empty() && errors.is_empty(), "no directory: no inventory");
    }
}
