//! The node inventory in git: what a file declares about nodes, and the steps that
//! bring the database in line with it.
//!
//! A declaration owns the fields it names: they follow the file, and the API may
//! not change them. Fields it leaves out stay the operator's (the API's). A node
//! whose declaration leaves its file is released: its fields stay as they were and
//! become the API's again. Nodes no file declares (found by DHCP) are not touched.

use crate::node::MacAddr;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// Where a node's BMC is and which secret logs into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Bmc {
    /// The Redfish ComputerSystem resource: `https://10.0.5.21/redfish/v1/Systems/1`.
    pub url: String,
    /// The name of an entry in the server's secrets file holding `user:password`.
    pub credential: String,
    /// An https BMC's certificate, pinned by its SHA-256 fingerprint (64 hex
    /// digits, colons allowed): most BMCs present a self-signed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl Bmc {
    /// Why this BMC reference is unusable, if it is.
    pub fn problem(&self) -> Option<String> {
        let rest = self.url.strip_prefix("https://").or_else(|| self.url.strip_prefix("http://"));
        let Some(rest) = rest else {
            return Some(format!("bmc url {:?} must start with https:// or http://", self.url));
        };
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() || host.contains('@') {
            return Some(format!(
                "bmc url {:?} must name a host (credentials go in the secrets file, never in the URL)",
                self.url
            ));
        }
        if !path.starts_with("redfish/v1/Systems/") || path.len() == "redfish/v1/Systems/".len() {
            return Some(format!(
                "bmc url {:?} must be a Redfish system: https://HOST/redfish/v1/Systems/ID",
                self.url
            ));
        }
        if let Some(fp) = &self.fingerprint {
            if !self.url.starts_with("https://") {
                return Some("bmc fingerprint pins an https BMC's certificate; this url is http".to_string());
            }
            let digits: String = fp.chars().filter(|c| *c != ':').collect();
            if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
                return Some(format!("bmc fingerprint {fp:?} must be a SHA-256: 64 hex digits, colons allowed"));
            }
        }
        if !crate::node::valid_label(&self.credential) {
            return Some(format!(
                "bmc credential {:?} must be the name of a secret: {}",
                self.credential,
                crate::node::LABEL_RULE
            ));
        }
        None
    }
}

/// A field a declaration can own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Hostname,
    Labels,
    Profile,
    ReservedIp,
    Bmc,
}

impl Field {
    pub const ALL: [Field; 5] = [Field::Hostname, Field::Labels, Field::Profile, Field::ReservedIp, Field::Bmc];

    pub fn as_str(self) -> &'static str {
        match self {
            Field::Hostname => "hostname",
            Field::Labels => "labels",
            Field::Profile => "profile",
            Field::ReservedIp => "reserved_ip",
            Field::Bmc => "bmc",
        }
    }

    pub fn parse(s: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// One node as a file declares it; `None` fields are not declared.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Declared {
    pub mac: MacAddr,
    pub hostname: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub profile: Option<String>,
    pub reserved_ip: Option<Ipv4Addr>,
    pub bmc: Option<Bmc>,
}

impl Declared {
    /// The fields this declaration owns.
    pub fn fields(&self) -> BTreeSet<Field> {
        let named = [
            (Field::Hostname, self.hostname.is_some()),
            (Field::Labels, self.labels.is_some()),
            (Field::Profile, self.profile.is_some()),
            (Field::ReservedIp, self.reserved_ip.is_some()),
            (Field::Bmc, self.bmc.is_some()),
        ];
        named.into_iter().filter(|(_, on)| *on).map(|(f, _)| f).collect()
    }
}

/// A node as the database has it: the declarable fields and who owns them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Current {
    pub id: i64,
    pub mac: MacAddr,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub profile: Option<String>,
    pub reserved_ip: Option<Ipv4Addr>,
    pub bmc: Option<Bmc>,
    /// The file that declares it, and the fields it owns.
    pub declared_in: Option<String>,
    pub declared_fields: BTreeSet<Field>,
}

/// What to do to the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A node the database lacks: create it as declared, owned by the file.
    Create(Declared),
    /// Set the declared fields that differ (all declared fields are passed; the
    /// store writes what changed) and take ownership of them.
    Update { id: i64, declared: Declared },
    /// The file no longer declares this node: it keeps its fields, unowned.
    Release { id: i64 },
}

/// The steps that make the database match `file`'s `declared` nodes. `current`
/// holds the database's nodes with those MACs and the nodes `file` owned before.
pub fn reconcile(file: &str, declared: &[Declared], current: &[Current]) -> Vec<Step> {
    let by_mac: BTreeMap<MacAddr, &Current> = current.iter().map(|c| (c.mac, c)).collect();
    let mut steps = vec![];
    for d in declared {
        match by_mac.get(&d.mac) {
            None => steps.push(Step::Create(d.clone())),
            Some(c) if !matches(d, c) || c.declared_in.as_deref() != Some(file) || c.declared_fields != d.fields() => {
                steps.push(Step::Update { id: c.id, declared: d.clone() })
            }
            Some(_) => {}
        }
    }
    let macs: BTreeSet<MacAddr> = declared.iter().map(|d| d.mac).collect();
    for c in current {
        if c.declared_in.as_deref() == Some(file) && !macs.contains(&c.mac) {
            steps.push(Step::Release { id: c.id });
        }
    }
    steps
}

/// Whether every field `d` declares already has the declared value.
fn matches(d: &Declared, c: &Current) -> bool {
    d.hostname.as_ref().is_none_or(|h| *h == c.hostname)
        && d.labels.as_ref().is_none_or(|l| *l == c.labels)
        && d.profile.as_ref().is_none_or(|p| Some(p) == c.profile.as_ref())
        && d.reserved_ip.is_none_or(|ip| Some(ip) == c.reserved_ip)
        && d.bmc.as_ref().is_none_or(|b| Some(b) == c.bmc.as_ref())
}

/// The first declared field among `changing` that `owner` (file, fields) owns:
/// an API change to it is refused, naming the file.
pub fn owned_field<'a>(
    owner: Option<(&'a str, &BTreeSet<Field>)>,
    changing: impl IntoIterator<Item = Field>,
) -> Option<(Field, &'a str)> {
    let (file, fields) = owner?;
    changing.into_iter().find(|f| fields.contains(f)).map(|f| (f, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    fn declared(mac: MacAddr, hostname: &str) -> Declared {
        Declared { mac, hostname: Some(hostname.into()), ..Declared::default() }
    }

    fn current(id: i64, d: &Declared, file: Option<&str>) -> Current {
        Current {
            id,
            mac: d.mac,
            hostname: d.hostname.clone().unwrap_or_default(),
            labels: d.labels.clone().unwrap_or_default(),
            profile: d.profile.clone(),
            reserved_ip: d.reserved_ip,
            bmc: d.bmc.clone(),
            declared_in: file.map(str::to_string),
            declared_fields: if file.is_some() { d.fields() } else { BTreeSet::new() },
        }
    }

    #[test]
    fn new_nodes_are_created_changed_ones_updated_and_dropped_ones_released() {
        let a = declared(A, "hv-1");
        let b = declared(B, "hv-2");
        assert_eq!(reconcile("r1.yaml", std::slice::from_ref(&a), &[]), [Step::Create(a.clone())]);
        let in_sync = current(1, &a, Some("r1.yaml"));
        assert_eq!(reconcile("r1.yaml", std::slice::from_ref(&a), std::slice::from_ref(&in_sync)), [], "nothing to do");
        let renamed = declared(A, "hv-1b");
        assert_eq!(
            reconcile("r1.yaml", std::slice::from_ref(&renamed), std::slice::from_ref(&in_sync)),
            [Step::Update { id: 1, declared: renamed }]
        );
        // Dropped from the file: released, not deleted.
        let owned_b = current(2, &b, Some("r1.yaml"));
        assert_eq!(reconcile("r1.yaml", std::slice::from_ref(&a), &[in_sync, owned_b]), [Step::Release { id: 2 }]);
    }

    #[test]
    fn a_node_dhcp_found_first_is_claimed_and_one_moved_between_files_changes_owner() {
        let a = Declared { profile: Some("compute".into()), ..declared(A, "hv-1") };
        let found_by_dhcp = Current { id: 7, mac: A, hostname: "node-020000000001".into(), ..Current::default() };
        assert_eq!(
            reconcile("r1.yaml", std::slice::from_ref(&a), &[found_by_dhcp]),
            [Step::Update { id: 7, declared: a.clone() }]
        );
        let owned_elsewhere = current(7, &a, Some("old.yaml"));
        assert_eq!(
            reconcile("r1.yaml", std::slice::from_ref(&a), &[owned_elsewhere]),
            [Step::Update { id: 7, declared: a }]
        );
    }

    #[test]
    fn dropping_a_field_from_a_declaration_gives_it_back() {
        let with_profile = Declared { profile: Some("compute".into()), ..declared(A, "hv-1") };
        let without = declared(A, "hv-1");
        let c = current(1, &with_profile, Some("r1.yaml"));
        assert_eq!(
            reconcile("r1.yaml", std::slice::from_ref(&without), &[c]),
            [Step::Update { id: 1, declared: without }]
        );
    }

    #[test]
    fn bmc_references_are_checked() {
        let bmc =
            |url: &str, credential: &str| Bmc { url: url.into(), credential: credential.into(), fingerprint: None };
        assert_eq!(bmc("https://10.0.5.21/redfish/v1/Systems/1", "bmc-rack1").problem(), None);
        assert_eq!(bmc("http://10.0.5.21:8000/redfish/v1/Systems/abc-1", "bmc").problem(), None);
        for bad in [
            bmc("10.0.5.21/redfish/v1/Systems/1", "bmc"),
            bmc("https://admin:pw@10.0.5.21/redfish/v1/Systems/1", "bmc"),
            bmc("https://10.0.5.21/redfish/v1/Systems/", "bmc"),
            bmc("https://10.0.5.21/", "bmc"),
            bmc("https://10.0.5.21/redfish/v1/Systems/1", "no spaces"),
        ] {
            assert!(bad.problem().is_some(), "{bad:?}");
        }
        let pinned = |url: &str, fp: &str| Bmc { fingerprint: Some(fp.into()), ..bmc(url, "bmc") };
        assert_eq!(pinned("https://bmc/redfish/v1/Systems/1", &("AB:".repeat(31) + "CD")).problem(), None);
        assert!(pinned("https://bmc/redfish/v1/Systems/1", "ab:cd").problem().is_some(), "too short");
        assert!(pinned("http://bmc/redfish/v1/Systems/1", &"ab".repeat(32)).problem().is_some(), "http");
    }

    #[test]
    fn only_owned_fields_are_refused() {
        let fields: BTreeSet<Field> = [Field::Hostname, Field::Bmc].into();
        assert_eq!(owned_field(Some(("r1.yaml", &fields)), [Field::Labels]), None);
        assert_eq!(owned_field(Some(("r1.yaml", &fields)), [Field::Labels, Field::Bmc]), Some((Field::Bmc, "r1.yaml")));
        assert_eq!(owned_field(None, Field::ALL), None);
        for f in Field::ALL {
            assert_eq!(Field::parse(f.as_str()), Some(f));
        }
    }

    fn arb_declared() -> impl Strategy<Value = Declared> {
        (0u8..4, prop::option::of("[a-c]"), prop::option::of("[p-q]"), any::<bool>()).prop_map(|(m, h, p, ip)| {
            Declared {
                mac: MacAddr([2, 0, 0, 0, 0, m]),
                hostname: h,
                profile: p,
                reserved_ip: ip.then(|| Ipv4Addr::new(10, 0, 0, m)),
                ..Declared::default()
            }
        })
    }

    proptest! {
        /// Applying the steps and reconciling again finds nothing to do.
        #[test]
        fn reconciling_converges(decls in prop::collection::vec(arb_declared(), 0..4), start in prop::collection::vec(arb_declared(), 0..4), owned in any::<bool>()) {
            let mut decls = decls;
            decls.sort_by_key(|d| d.mac);
            decls.dedup_by_key(|d| d.mac);
            let mut db: BTreeMap<MacAddr, Current> = BTreeMap::new();
            for (i, d) in start.iter().enumerate() {
                db.entry(d.mac).or_insert_with(|| current(i as i64, d, owned.then_some("f")));
            }
            let mut next_id = 100;
            for step in reconcile("f", &decls, &db.values().cloned().collect::<Vec<_>>()) {
                match step {
                    Step::Create(d) => { next_id += 1; db.insert(d.mac, current(next_id, &d, Some("f"))); }
                    Step::Update { id, declared: d } => {
                        let c = db.values_mut().find(|c| c.id == id).unwrap();
                        if let Some(h) = &d.hostname { c.hostname = h.clone(); }
                        if d.profile.is_some() { c.profile = d.profile.clone(); }
                        if d.reserved_ip.is_some() { c.reserved_ip = d.reserved_ip; }
                        c.declared_in = Some("f".into());
                        c.declared_fields = d.fields();
                    }
                    Step::Release { id } => {
                        let c = db.values_mut().find(|c| c.id == id).unwrap();
                        c.declared_in = None;
                        c.declared_fields.clear();
                    }
                }
            }
            prop_assert_eq!(reconcile("f", &decls, &db.values().cloned().collect::<Vec<_>>()), vec![]);
        }
    }
}
