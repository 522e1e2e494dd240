//! The `nodes` table: identity, operator settings (profile, labels, hostname,
//! reservation, maintenance) and the lifecycle state, moved only by [`move_state`].

use super::audit::{self, Actor, Target};
use super::boots;
use super::db::placeholders;
use super::events::{self, EventKind, NewEvent};
use super::leases;
use super::{corrupt, BootId, NodeId, Row, Store, StoreError, Text, Tx};
use ramboot_core::inventory::{Bmc, Field};
use ramboot_core::node::{MacAddr, NodeState};
use ramboot_core::profile::BootChain;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A node as DHCP sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpHostRow {
    pub mac: MacAddr,
    pub reserved_ip: Option<Ipv4Addr>,
    pub hostname: String,
    /// Its assigned profile, whose boot chain applies unless it has its own.
    pub profile: Option<String>,
    pub boot_chain: Option<BootChain>,
}
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub mac: MacAddr,
    pub hostname: String,
    pub ip: Option<String>,
    pub profile: Option<String>,
    pub state: NodeState,
    pub state_since_ms: i64,
    pub current_boot_id: Option<BootId>,
    /// The stage-one agent's hardware report.
    pub inventory: Option<serde_json::Value>,
    pub labels: BTreeMap<String, String>,
    /// Firmware architecture from the last DHCP request (`bios`, `efi-x64`, ...).
    pub arch: Option<String>,
    /// Consecutive failed boots (reset by a boot that reaches ready).
    pub failures: i64,
    pub maintenance_reason: Option<String>,
    /// The address DHCP always gives this node (and nobody else).
    pub reserved_ip: Option<String>,
    /// The firmware's UUID from DHCP option 97 (SMBIOS byte order, as dmidecode prints it).
    pub client_uuid: Option<String>,
    /// An operator registered or approved it: it may boot profiles that hold secrets.
    pub approved: bool,
    /// When DHCP last bound `ip` to it (a lease, or a proxyDHCP sighting).
    pub ip_seen_at_ms: Option<i64>,
    /// Its BMC (Redfish), if it has one.
    pub bmc: Option<Bmc>,
    /// Its own boot chain for UEFI PXE (`None`: its profile's).
    pub boot_chain: Option<BootChain>,
    /// The inventory file that declares it, and the fields that file owns.
    pub declared_in: Option<String>,
    pub declared_fields: BTreeSet<Field>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Which nodes to list, and from where (keyset pagination by id).
#[derive(Debug, Clone, Default)]
pub struct NodeFilter {
    pub state: Option<NodeState>,
    pub profile: Option<String>,
    pub label: Option<(String, String)>,
    /// Only nodes whose MAC, hostname, IP or BMC URL contains this, ignoring case.
    pub text: Option<String>,
    /// Only nodes with an id greater than this.
    pub after: i64,
    pub limit: i64,
}

/// A column a node list can be ordered by (then by id, so the order is total).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NodeSort {
    #[default]
    Id,
    Mac,
    Hostname,
    State,
    Profile,
    /// When the node last changed state.
    StateSince,
    /// When the node was last heard of: its last state change or DHCP sighting.
    LastSeen,
}

impl NodeSort {
    /// The expression to order by. NULLs (no profile) sort first, on both back-ends.
    fn expression(self, postgres: bool) -> &'static str {
        match self {
            NodeSort::Id => "id",
            NodeSort::Mac => "mac",
            NodeSort::Hostname => "hostname",
            NodeSort::State => "state",
            NodeSort::Profile => "COALESCE(profile, '')",
            NodeSort::StateSince => "state_since_ms",
            NodeSort::LastSeen if postgres => "GREATEST(state_since_ms, COALESCE(ip_seen_at_ms, 0))",
            NodeSort::LastSeen => "MAX(state_since_ms, COALESCE(ip_seen_at_ms, 0))",
        }
    }
}

/// When `node` was last heard of: what [`NodeSort::LastSeen`] orders by.
pub fn last_seen_ms(node: &Node) -> i64 {
    node.state_since_ms.max(node.ip_seen_at_ms.unwrap_or(0))
}

/// A value bound into a statement built from parts.
enum Bound {
    Int(i64),
    Text(String),
}

/// `%text%` for LIKE, with LIKE's own wildcards in `text` taken literally
/// (escaped with `\`) and lowercased, as the columns it is compared with are.
fn contains_pattern(text: &str) -> String {
    let mut out = String::from("%");
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// An operator's change to one node, applied in one transaction by
/// [`Store::update_node`]. Absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeChange {
    /// The address DHCP always gives the node; `Some(None)` clears it.
    pub reservation: Option<Option<Ipv4Addr>>,
    /// With `reservation`: end another MAC's active lease on the address instead
    /// of refusing.
    pub take_over: bool,
    pub hostname: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    /// The explicit profile; `Some(None)` clears the assignment.
    pub profile: Option<Option<String>>,
    /// Vouch for the node (or take that back): see [`Node::approved`].
    pub approved: Option<bool>,
    /// Its BMC; `Some(None)` forgets it.
    pub bmc: Option<Option<Bmc>>,
    /// Its own boot chain; `Some(None)`: its profile's again.
    pub boot_chain: Option<Option<BootChain>>,
}

impl NodeChange {
    /// The declarable fields this change sets to something other than `node` has.
    fn changed_fields(&self, node: &Node) -> Vec<Field> {
        let reserved = node.reserved_ip.as_deref().and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        let changed = [
            (Field::Hostname, self.hostname.as_ref().is_some_and(|h| *h != node.hostname)),
            (Field::Labels, self.labels.as_ref().is_some_and(|l| *l != node.labels)),
            (Field::Profile, self.profile.as_ref().is_some_and(|p| *p != node.profile)),
            (Field::ReservedIp, self.reservation.is_some_and(|ip| ip != reserved)),
            (Field::Bmc, self.bmc.as_ref().is_some_and(|b| *b != node.bmc)),
        ];
        changed.into_iter().filter(|(_, c)| *c).map(|(f, _)| f).collect()
    }
}

/// Refuse a change to a field an inventory file owns, naming the file.
fn check_not_declared(node: &Node, changing: impl IntoIterator<Item = Field>) -> Result<(), StoreError> {
    let owner = node.declared_in.as_deref().map(|file| (file, &node.declared_fields));
    match ramboot_core::inventory::owned_field(owner, changing) {
        Some((field, file)) => {
            Err(StoreError::DeclaredInFile { mac: node.mac, field: field.as_str(), file: file.to_string() })
        }
        None => Ok(()),
    }
}

/// What the audit trail records of a node: the fields operators set, and its state.
pub(super) fn audit_view(node: &Node) -> serde_json::Value {
    serde_json::json!({
        "hostname": node.hostname,
        "profile": node.profile,
        "labels": node.labels,
        "reserved_ip": node.reserved_ip,
        "approved": node.approved,
        "maintenance_reason": node.maintenance_reason,
        "state": node.state,
        "bmc": node.bmc,
        "boot_chain": node.boot_chain,
        "declared_in": node.declared_in,
    })
}

/// The hostname a node gets until an operator names it.
pub fn default_hostname(mac: MacAddr) -> String {
    let b = mac.0;
    format!("node-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
}

/// The `boot_chain` column: unset, `ipxe` or `signed`.
fn boot_chain_of(row: &Row) -> Result<Option<BootChain>, StoreError> {
    match row.try_get::<Option<String>>("boot_chain")?.as_deref() {
        None => Ok(None),
        Some("ipxe") => Ok(Some(BootChain::Ipxe)),
        Some("signed") => Ok(Some(BootChain::Signed)),
        Some(other) => Err(corrupt(format!("boot_chain {other:?}"))),
    }
}

pub(super) fn node_from_row(row: &Row) -> Result<Node, StoreError> {
    let mac: String = row.try_get("mac")?;
    let inventory: Option<String> = row.try_get("inventory")?;
    let labels: String = row.try_get("labels")?;
    Ok(Node {
        id: row.try_get("id")?,
        mac: mac.parse().map_err(corrupt)?,
        hostname: row.try_get("hostname")?,
        ip: row.try_get("ip")?,
        profile: row.try_get("profile")?,
        state: row.try_get::<Text<_>>("state")?.0,
        state_since_ms: row.try_get("state_since_ms")?,
        current_boot_id: row.try_get("current_boot_id")?,
        inventory: inventory.map(|s| serde_json::from_str(&s)).transpose().map_err(corrupt)?,
        labels: serde_json::from_str(&labels).map_err(corrupt)?,
        arch: row.try_get("arch")?,
        failures: row.try_get("failures")?,
        maintenance_reason: row.try_get("maintenance_reason")?,
        reserved_ip: row.try_get("reserved_ip")?,
        client_uuid: row.try_get("client_uuid")?,
        approved: row.try_get("approved")?,
        ip_seen_at_ms: row.try_get("ip_seen_at_ms")?,
        bmc: match (row.try_get::<Option<String>>("bmc_url")?, row.try_get::<Option<String>>("bmc_credential")?) {
            (Some(url), Some(credential)) => {
                Some(Bmc { url, credential, fingerprint: row.try_get("bmc_fingerprint")? })
            }
            _ => None,
        },
        boot_chain: boot_chain_of(row)?,
        declared_in: row.try_get("declared_in")?,
        declared_fields: row
            .try_get::<String>("declared_fields")?
            .split(',')
            .filter(|f| !f.is_empty())
            .map(|f| Field::parse(f).ok_or_else(|| corrupt(format!("declared field {f:?}"))))
            .collect::<Result<_, _>>()?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

pub(super) async fn node_in(tx: &mut Tx<'_>, id: NodeId) -> Result<Node, StoreError> {
    let row = tx
        .sql("SELECT * FROM nodes WHERE id = $1")
        .bind(id)
        .fetch_optional()
        .await?
        .ok_or_else(|| StoreError::NoSuchNode(id.to_string()))?;
    node_from_row(&row)
}

/// The node with `mac`, created as `discovered` if new; and whether it was created.
pub(super) async fn upsert_node_created(
    tx: &mut Tx<'_>,
    mac: MacAddr,
    now_ms: i64,
) -> Result<(NodeId, bool), StoreError> {
    let mac_s = mac.to_string();
    if let Some(row) = tx.sql("SELECT id FROM nodes WHERE mac = $1").bind(&mac_s).fetch_optional().await? {
        return Ok((row.try_get("id")?, false));
    }
    let id: NodeId = tx
        .sql(
            "INSERT INTO nodes (mac, hostname, state, state_since_ms, created_at_ms, updated_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(&mac_s)
        .bind(default_hostname(mac))
        .bind(Text(NodeState::Discovered))
        .bind(now_ms)
        .bind(now_ms)
        .bind(now_ms)
        .fetch_one()
        .await?
        .try_get("id")?;
    let message = format!("first seen ({mac})");
    events::insert(tx, &NewEvent::moved(id, None, NodeState::Discovered, None, &message), now_ms).await?;
    Ok((id, true))
}

/// A DHCP grant on the client's node: a network-boot client becomes a node if it is
/// new (and the grant is noted in its timeline as `note`); an OS's DHCP client only
/// updates a node that exists. Returns whether a node was created.
pub(super) async fn record_dhcp_grant(
    tx: &mut Tx<'_>,
    (mac, ip): (MacAddr, std::net::IpAddr),
    netboot: bool,
    (arch, uuid): (Option<&str>, Option<&str>),
    note: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let created = if netboot {
        let (id, created) = upsert_node_created(tx, mac, now_ms).await?;
        super::events::insert(
            tx,
            &super::events::NewEvent::note(id, None, super::events::EventKind::Dhcp, note),
            now_ms,
        )
        .await?;
        created
    } else {
        false
    };
    record_dhcp_facts(tx, mac, ip, arch, uuid, now_ms).await?;
    Ok(created)
}

/// Record what a DHCP grant says about the node with `mac`, if there is one.
pub(super) async fn record_dhcp_facts(
    tx: &mut Tx<'_>,
    mac: MacAddr,
    ip: impl Into<std::net::IpAddr>,
    arch: Option<&str>,
    uuid: Option<&str>,
    now_ms: i64,
) -> Result<(), StoreError> {
    let ip: std::net::IpAddr = ip.into();
    tx.sql(
        "UPDATE nodes SET ip = $1, ip_seen_at_ms = $2, arch = COALESCE($3, arch),
             client_uuid = COALESCE($4, client_uuid), updated_at_ms = $5
         WHERE mac = $6",
    )
    .bind(ip.to_string())
    .bind(now_ms)
    .bind(arch)
    .bind(uuid)
    .bind(now_ms)
    .bind(mac.to_string())
    .execute()
    .await?;
    Ok(())
}

/// Move `node` to `next` and record the move with the time spent in the old state.
pub(super) async fn move_state(
    tx: &mut Tx<'_>,
    node: NodeId,
    boot: Option<BootId>,
    next: NodeState,
    message: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    let since: i64 = tx
        .sql("SELECT state_since_ms FROM nodes WHERE id = $1")
        .bind(node)
        .fetch_one()
        .await?
        .try_get("state_since_ms")?;
    tx.sql("UPDATE nodes SET state = $1, state_since_ms = $2, updated_at_ms = $3 WHERE id = $4")
        .bind(Text(next))
        .bind(now_ms)
        .bind(now_ms)
        .bind(node)
        .execute()
        .await?;
    let phase_ms = (now_ms - since).max(0);
    events::insert(tx, &NewEvent::moved(node, boot, next, Some(phase_ms), message), now_ms).await
}

async fn assign_in(tx: &mut Tx<'_>, id: NodeId, profile: Option<&str>, now_ms: i64) -> Result<(), StoreError> {
    let node = node_in(tx, id).await?;
    tx.sql("UPDATE nodes SET profile = $1, updated_at_ms = $2 WHERE id = $3")
        .bind(profile)
        .bind(now_ms)
        .bind(id)
        .execute()
        .await?;
    let message = match profile {
        Some(p) => format!("profile {p} assigned"),
        None => "profile assignment cleared".to_string(),
    };
    match node.state {
        NodeState::Discovered | NodeState::Assigned | NodeState::Failed | NodeState::Ready => {
            let next = if profile.is_some() { NodeState::Assigned } else { NodeState::Discovered };
            move_state(tx, id, None, next, &message, now_ms).await?;
        }
        // Mid-boot or in maintenance: the change applies to the next boot.
        _ => {
            let message = format!("{message}; applies to the next boot");
            events::insert(tx, &NewEvent::note(id, None, EventKind::Info, &message), now_ms).await?;
        }
    }
    Ok(())
}

/// Reserve `ip` for the node (`None` clears); the rules are [`Store::set_reservation`]'s.
async fn reserve_in(
    tx: &mut Tx<'_>,
    node: &Node,
    ip: Option<Ipv4Addr>,
    take_over: bool,
    now: u64,
    now_ms: i64,
) -> Result<(), StoreError> {
    if let Some(ip) = ip {
        if let Some(row) = tx
            .sql("SELECT id FROM nodes WHERE reserved_ip = $1 AND id <> $2")
            .bind(ip.to_string())
            .bind(node.id)
            .fetch_optional()
            .await?
        {
            return Err(StoreError::ReservedElsewhere { ip, node: row.try_get("id")? });
        }
        if let Some(holder) = leases::holder_other_than(tx, ip, &node.mac.to_string(), now).await? {
            if !take_over {
                return Err(StoreError::LeasedElsewhere { ip, mac: holder });
            }
            leases::release_ip(tx, ip, now_ms).await?;
        }
    }
    tx.sql("UPDATE nodes SET reserved_ip = $1, updated_at_ms = $2 WHERE id = $3")
        .bind(ip.map(|ip| ip.to_string()))
        .bind(now_ms)
        .bind(node.id)
        .execute()
        .await?;
    Ok(())
}

/// Write `change` onto `node` (reservation, hostname, labels, profile, approval,
/// BMC, in that order), with the events that say so.
async fn set_fields(
    tx: &mut Tx<'_>,
    node: &Node,
    change: &NodeChange,
    now: u64,
    now_ms: i64,
) -> Result<(), StoreError> {
    let id = node.id;
    if let Some(ip) = change.reservation {
        reserve_in(tx, node, ip, change.take_over, now, now_ms).await?;
    }
    if let Some(hostname) = &change.hostname {
        tx.sql("UPDATE nodes SET hostname = $1, updated_at_ms = $2 WHERE id = $3")
            .bind(hostname)
            .bind(now_ms)
            .bind(id)
            .execute()
            .await?;
    }
    if let Some(labels) = &change.labels {
        let labels = serde_json::to_string(labels).map_err(corrupt)?;
        tx.sql("UPDATE nodes SET labels = $1, updated_at_ms = $2 WHERE id = $3")
            .bind(&labels)
            .bind(now_ms)
            .bind(id)
            .execute()
            .await?;
        let message = format!("labels set to {labels}");
        events::insert(tx, &NewEvent::note(id, None, EventKind::Info, &message), now_ms).await?;
    }
    if let Some(profile) = &change.profile {
        assign_in(tx, id, profile.as_deref(), now_ms).await?;
    }
    if let Some(approved) = change.approved.filter(|a| *a != node.approved) {
        tx.sql("UPDATE nodes SET approved = $1, updated_at_ms = $2 WHERE id = $3")
            .bind(approved)
            .bind(now_ms)
            .bind(id)
            .execute()
            .await?;
        let message = if approved {
            "approved by an operator: may boot profiles that render secrets or attach volumes"
        } else {
            "approval withdrawn: profiles that hold secrets wait until an operator vouches for it again"
        };
        events::insert(tx, &NewEvent::note(id, None, EventKind::Info, message), now_ms).await?;
    }
    if let Some(bmc) = change.bmc.as_ref().filter(|b| **b != node.bmc) {
        tx.sql(
            "UPDATE nodes SET bmc_url = $1, bmc_credential = $2, bmc_fingerprint = $3, updated_at_ms = $4 WHERE id = $5",
        )
        .bind(bmc.as_ref().map(|b| b.url.as_str()))
        .bind(bmc.as_ref().map(|b| b.credential.as_str()))
        .bind(bmc.as_ref().and_then(|b| b.fingerprint.as_deref()))
        .bind(now_ms)
            .bind(id)
            .execute()
            .await?;
    }
    if let Some(chain) = change.boot_chain.filter(|c| *c != node.boot_chain) {
        tx.sql("UPDATE nodes SET boot_chain = $1, updated_at_ms = $2 WHERE id = $3")
            .bind(chain.map(BootChain::as_str))
            .bind(now_ms)
            .bind(id)
            .execute()
            .await?;
        let message = match chain {
            Some(chain) => format!("boot chain set to {chain}: DHCP hands its UEFI PXE firmware the {chain} chain"),
            None => "boot chain cleared: its profile's again".to_string(),
        };
        events::insert(tx, &NewEvent::note(id, None, EventKind::Info, &message), now_ms).await?;
    }
    Ok(())
}

impl Store {
    /// Every node as DHCP sees it: MAC, reservation, hostname.
    /// What DHCP needs of each node: MAC, reservation, hostname, assigned profile.
    pub async fn dhcp_hosts(&self) -> Result<Vec<DhcpHostRow>, StoreError> {
        let sql = "SELECT mac, reserved_ip, hostname, profile, boot_chain FROM nodes";
        let rows = self.backend.sql(sql).fetch_all().await?;
        rows.iter()
            .map(|row| {
                let mac: String = row.try_get("mac")?;
                let ip: Option<String> = row.try_get("reserved_ip")?;
                Ok(DhcpHostRow {
                    mac: mac.parse().map_err(corrupt)?,
                    reserved_ip: ip.map(|ip| ip.parse()).transpose().map_err(corrupt)?,
                    hostname: row.try_get("hostname")?,
                    profile: row.try_get("profile")?,
                    boot_chain: boot_chain_of(row)?,
                })
            })
            .collect()
    }

    /// Reserve `ip` for node `id` (`None` clears). Refused while another MAC holds
    /// an active lease on it, unless `take_over`: moving an address between MACs is
    /// an explicit operator action, and ends that lease.
    pub async fn set_reservation(
        &self,
        id: NodeId,
        ip: Option<Ipv4Addr>,
        take_over: bool,
        actor: &Actor,
        now: u64,
        now_ms: i64,
    ) -> Result<Node, StoreError> {
        let change = NodeChange { reservation: Some(ip), take_over, ..NodeChange::default() };
        self.apply_change(id, &change, actor, now, now_ms).await
    }

    /// Apply an operator's change (reservation, hostname, labels, profile, in that
    /// order) in one transaction: either all of it is stored or none.
    pub async fn update_node(
        &self,
        id: NodeId,
        change: &NodeChange,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<Node, StoreError> {
        // Leases expire on the DHCP core's clock, Unix seconds.
        let now = u64::try_from(now_ms / 1000).unwrap_or(0);
        self.apply_change(id, change, actor, now, now_ms).await
    }

    /// [`Store::update_node`] with the lease clock given apart (`now`, Unix seconds).
    async fn apply_change(
        &self,
        id: NodeId,
        change: &NodeChange,
        actor: &Actor,
        now: u64,
        now_ms: i64,
    ) -> Result<Node, StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let node = node_in(&mut tx, id).await?;
        check_not_declared(&node, change.changed_fields(&node))?;
        set_fields(&mut tx, &node, change, now, now_ms).await?;
        let after = node_in(&mut tx, id).await?;
        let target = Target::node(id, node.mac);
        audit::record(
            &mut tx,
            actor,
            "node.update",
            &target,
            Some(&audit_view(&node)),
            Some(&audit_view(&after)),
            now_ms,
        )
        .await?;
        tx.commit().await?;
        // DHCP's view: reservation, hostname, and the boot chain (its own or its profile's).
        if change.reservation.is_some()
            || change.hostname.is_some()
            || change.profile.is_some()
            || change.boot_chain.is_some()
        {
            self.hosts_changed();
        }
        self.node(id).await
    }

    /// The node with this MAC, created as `discovered` if it is new.
    pub async fn ensure_node(&self, mac: MacAddr, now_ms: i64) -> Result<Node, StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let (id, created) = upsert_node_created(&mut tx, mac, now_ms).await?;
        tx.commit().await?;
        if created {
            self.hosts_changed();
        }
        self.node(id).await
    }

    pub async fn node(&self, id: NodeId) -> Result<Node, StoreError> {
        let row = self
            .backend
            .sql("SELECT * FROM nodes WHERE id = $1")
            .bind(id)
            .fetch_optional()
            .await?
            .ok_or_else(|| StoreError::NoSuchNode(id.to_string()))?;
        node_from_row(&row)
    }

    pub async fn node_by_mac(&self, mac: MacAddr) -> Result<Option<Node>, StoreError> {
        let row = self.backend.sql("SELECT * FROM nodes WHERE mac = $1").bind(mac.to_string()).fetch_optional().await?;
        row.as_ref().map(node_from_row).transpose()
    }

    pub async fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        let rows = self.backend.sql("SELECT * FROM nodes ORDER BY id").fetch_all().await?;
        rows.iter().map(node_from_row).collect()
    }

    pub async fn set_inventory(
        &self,
        id: NodeId,
        inventory: &serde_json::Value,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut write = self.backend.begin_write().await?;
        write
            .sql("UPDATE nodes SET inventory = $1, updated_at_ms = $2 WHERE id = $3")
            .bind(inventory.to_string())
            .bind(now_ms)
            .bind(id)
            .execute()
            .await?;
        write.commit().await
    }

    /// The `WHERE` conditions of `f` (all but `after` and `limit`), numbered from
    /// `*next`, and the values they bind.
    fn node_conditions(&self, f: &NodeFilter, next: &mut usize) -> (String, Vec<Bound>) {
        let mut sql = String::new();
        let mut binds = Vec::new();
        if let Some(state) = f.state {
            sql.push_str(&format!(" AND state = {}", placeholders(next, 1)));
            binds.push(Bound::Text(state.as_str().to_string()));
        }
        if let Some(profile) = &f.profile {
            sql.push_str(&format!(" AND profile = {}", placeholders(next, 1)));
            binds.push(Bound::Text(profile.clone()));
        }
        if let Some((k, v)) = &f.label {
            sql.push_str(&format!(" AND {}", self.backend.label_equals(*next, *next + 1)));
            *next += 2;
            binds.extend([Bound::Text(k.clone()), Bound::Text(v.clone())]);
        }
        if let Some(text) = f.text.as_deref().filter(|t| !t.is_empty()) {
            let n = placeholders(next, 1);
            sql.push_str(&format!(
                " AND (LOWER(mac) LIKE {n} ESCAPE '\\' OR LOWER(hostname) LIKE {n} ESCAPE '\\' \
                 OR LOWER(COALESCE(ip, '')) LIKE {n} ESCAPE '\\' OR LOWER(COALESCE(bmc_url, '')) LIKE {n} ESCAPE '\\')"
            ));
            binds.push(Bound::Text(contains_pattern(text)));
        }
        (sql, binds)
    }

    async fn fetch_nodes(&self, sql: &str, binds: Vec<Bound>) -> Result<Vec<Row>, StoreError> {
        let mut q = self.backend.sql(sql);
        for b in binds {
            q = match b {
                Bound::Int(n) => q.bind(n),
                Bound::Text(t) => q.bind(t),
            };
        }
        Ok(q.fetch_all().await?)
    }

    pub async fn list_nodes(&self, f: &NodeFilter) -> Result<Vec<Node>, StoreError> {
        let mut next = 2;
        let (conditions, mut binds) = self.node_conditions(f, &mut next);
        binds.insert(0, Bound::Int(f.after));
        let limit = placeholders(&mut next, 1);
        binds.push(Bound::Int(f.limit));
        let sql = format!("SELECT * FROM nodes WHERE id > $1{conditions} ORDER BY id LIMIT {limit}");
        self.fetch_nodes(&sql, binds).await?.iter().map(node_from_row).collect()
    }

    /// One page of the nodes `f` matches (its `after` ignored) in `sort` order:
    /// skip `offset`, take `f.limit`. The dashboard pages this way because it sorts
    /// by any column; at fleet sizes the skipped rows cost little.
    pub async fn list_nodes_sorted(
        &self,
        f: &NodeFilter,
        sort: NodeSort,
        descending: bool,
        offset: i64,
    ) -> Result<Vec<Node>, StoreError> {
        let mut next = 1;
        let (conditions, mut binds) = self.node_conditions(f, &mut next);
        let limit = placeholders(&mut next, 1);
        let offset_mark = placeholders(&mut next, 1);
        binds.extend([Bound::Int(f.limit), Bound::Int(offset)]);
        let dir = if descending { "DESC" } else { "ASC" };
        let column = sort.expression(self.backend.is_postgres());
        let sql = format!(
            "SELECT * FROM nodes WHERE 1 = 1{conditions} ORDER BY {column} {dir}, id {dir} \
             LIMIT {limit} OFFSET {offset_mark}"
        );
        self.fetch_nodes(&sql, binds).await?.iter().map(node_from_row).collect()
    }

    /// How many nodes `f` matches (its `after` and `limit` ignored).
    pub async fn count_nodes(&self, f: &NodeFilter) -> Result<i64, StoreError> {
        let mut next = 1;
        let (conditions, binds) = self.node_conditions(f, &mut next);
        let rows = self.fetch_nodes(&format!("SELECT COUNT(*) AS n FROM nodes WHERE 1 = 1{conditions}"), binds).await?;
        match rows.first() {
            Some(row) => Ok(row.try_get("n")?),
            None => Ok(0),
        }
    }

    /// Register a node an operator knows about before it ever boots.
    pub async fn create_node(
        &self,
        mac: MacAddr,
        hostname: Option<&str>,
        profile: Option<&str>,
        labels: &BTreeMap<String, String>,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<Node, StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let (id, created) = upsert_node_created(&mut tx, mac, now_ms).await?;
        if !created {
            return Err(StoreError::DuplicateMac(mac));
        }
        // Registering a node is an operator's word for it.
        tx.sql("UPDATE nodes SET hostname = COALESCE($1, hostname), labels = $2, approved = TRUE WHERE id = $3")
            .bind(hostname)
            .bind(serde_json::to_string(labels).map_err(corrupt)?)
            .bind(id)
            .execute()
            .await?;
        if let Some(profile) = profile {
            assign_in(&mut tx, id, Some(profile), now_ms).await?;
        }
        let node = node_in(&mut tx, id).await?;
        audit::record(&mut tx, actor, "node.create", &Target::node(id, mac), None, Some(&audit_view(&node)), now_ms)
            .await?;
        tx.commit().await?;
        self.hosts_changed();
        Ok(node)
    }

    /// Forget a node, its boots and events. Its lease stays until it expires: the
    /// address may still be in use.
    pub async fn delete_node(&self, id: NodeId, actor: &Actor, now_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let node = node_in(&mut tx, id).await?;
        if let Some(file) = &node.declared_in {
            // Deleting it here would not last: the file would declare it again.
            return Err(StoreError::DeclaredNode { mac: node.mac, file: file.clone() });
        }
        tx.sql("DELETE FROM nodes WHERE id = $1").bind(id).execute().await?;
        audit::record(
            &mut tx,
            actor,
            "node.delete",
            &Target::node(id, node.mac),
            Some(&audit_view(&node)),
            None,
            now_ms,
        )
        .await?;
        tx.commit().await?;
        self.hosts_changed();
        Ok(())
    }

    /// The next boot loads afresh: any boot in progress is superseded, the failure
    /// count is cleared, and the node waits for its next PXE boot.
    pub async fn reprovision(&self, id: NodeId, actor: &Actor, now_ms: i64) -> Result<Node, StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let node = node_in(&mut tx, id).await?;
        boots::supersede_boots(&mut tx, id, now_ms).await?;
        tx.sql("UPDATE nodes SET failures = 0, current_boot_id = NULL, maintenance_reason = NULL WHERE id = $1")
            .bind(id)
            .execute()
            .await?;
        let next = if node.profile.is_some() { NodeState::Assigned } else { NodeState::Discovered };
        move_state(&mut tx, id, None, next, "reprovision requested: the next boot loads afresh", now_ms).await?;
        let after = node_in(&mut tx, id).await?;
        let (before, after) = (audit_view(&node), audit_view(&after));
        audit::record(
            &mut tx,
            actor,
            "node.reprovision",
            &Target::node(id, node.mac),
            Some(&before),
            Some(&after),
            now_ms,
        )
        .await?;
        tx.commit().await?;
        self.node(id).await
    }

    /// Put a node in maintenance (it is told not to boot), or take it out.
    pub async fn set_maintenance(
        &self,
        id: NodeId,
        reason: Option<&str>,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<Node, StoreError> {
        let mut tx = self.backend.begin_write().await?;
        let node = node_in(&mut tx, id).await?;
        match reason {
            Some(reason) => {
                tx.sql("UPDATE nodes SET maintenance_reason = $1 WHERE id = $2")
                    .bind(reason)
                    .bind(id)
                    .execute()
                    .await?;
                if node.state != NodeState::Maintenance {
                    move_state(
                        &mut tx,
                        id,
                        node.current_boot_id,
                        NodeState::Maintenance,
                        &format!("maintenance: {reason}"),
                        now_ms,
                    )
                    .await?;
                }
            }
            None => {
                tx.sql("UPDATE nodes SET maintenance_reason = NULL, failures = 0 WHERE id = $1")
                    .bind(id)
                    .execute()
                    .await?;
                if node.state == NodeState::Maintenance {
                    let next = if node.profile.is_some() { NodeState::Assigned } else { NodeState::Discovered };
                    move_state(&mut tx, id, None, next, "maintenance ended", now_ms).await?;
                }
            }
        }
        let after = node_in(&mut tx, id).await?;
        let (before, after) = (audit_view(&node), audit_view(&after));
        audit::record(
            &mut tx,
            actor,
            "node.maintenance",
            &Target::node(id, node.mac),
            Some(&before),
            Some(&after),
            now_ms,
        )
        .await?;
        tx.commit().await?;
        self.node(id).await
    }

    /// Nodes in `state` since before `before_ms`, with a current boot.
    /// Make the database match what inventory file `file` (at `revision`) declares,
    /// in one transaction: nodes created or updated, nodes the file dropped
    /// released. Each change is audited as the file. Idempotent: a second server
    /// applying the same revision finds nothing to do. Returns the changes made.
    pub async fn apply_inventory(
        &self,
        file: &str,
        revision: &str,
        declared: &[ramboot_core::inventory::Declared],
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        use ramboot_core::inventory::{reconcile, Current, Step};
        let now = u64::try_from(now_ms / 1000).unwrap_or(0);
        let actor = Actor::File { path: file.to_string(), revision: revision.to_string() };
        let mut tx = self.backend.begin_write().await?;
        let rows = tx.sql("SELECT * FROM nodes ORDER BY id").fetch_all().await?;
        let nodes: Vec<Node> = rows.iter().map(node_from_row).collect::<Result<_, _>>()?;
        let current: Vec<Current> = nodes
            .iter()
            .map(|n| Current {
                id: n.id,
                mac: n.mac,
                hostname: n.hostname.clone(),
                labels: n.labels.clone(),
                profile: n.profile.clone(),
                reserved_ip: n.reserved_ip.as_deref().and_then(|ip| ip.parse().ok()),
                bmc: n.bmc.clone(),
                declared_in: n.declared_in.clone(),
                declared_fields: n.declared_fields.clone(),
            })
            .collect();
        let steps = reconcile(file, declared, &current);
        for step in &steps {
            let (id, declared, action, before) = match step {
                Step::Create(d) => {
                    let (id, _) = upsert_node_created(&mut tx, d.mac, now_ms).await?;
                    (id, Some(d), "node.create", None)
                }
                Step::Update { id, declared } => {
                    (*id, Some(declared), "node.update", Some(node_in(&mut tx, *id).await?))
                }
                Step::Release { id } => (*id, None, "node.update", Some(node_in(&mut tx, *id).await?)),
            };
            let node = node_in(&mut tx, id).await?;
            let fields = match declared {
                Some(d) => {
                    let change = NodeChange {
                        reservation: d.reserved_ip.map(Some),
                        take_over: false,
                        hostname: d.hostname.clone(),
                        labels: d.labels.clone(),
                        profile: d.profile.clone().map(Some),
                        approved: Some(true),
                        bmc: d.bmc.clone().map(Some),
                        // Not a declarable field (yet): the inventory leaves it alone.
                        boot_chain: None,
                    };
                    set_fields(&mut tx, &node, &change, now, now_ms).await?;
                    d.fields().iter().map(|f| f.as_str()).collect::<Vec<_>>().join(",")
                }
                None => String::new(),
            };
            let owner = declared.map(|_| file);
            tx.sql("UPDATE nodes SET declared_in = $1, declared_fields = $2 WHERE id = $3")
                .bind(owner)
                .bind(&fields)
                .bind(id)
                .execute()
                .await?;
            let after = audit_view(&node_in(&mut tx, id).await?);
            let before = before.as_ref().map(audit_view);
            audit::record(&mut tx, &actor, action, &Target::node(id, node.mac), before.as_ref(), Some(&after), now_ms)
                .await?;
        }
        tx.commit().await?;
        if !steps.is_empty() {
            self.hosts_changed();
        }
        Ok(steps.len())
    }

    pub async fn nodes_in_state_since(&self, state: NodeState, before_ms: i64) -> Result<Vec<Node>, StoreError> {
        let rows = self
            .backend
            .sql("SELECT * FROM nodes WHERE state = $1 AND state_since_ms < $2 AND current_boot_id IS NOT NULL")
            .bind(Text(state))
            .bind(before_ms)
            .fetch_all()
            .await?;
        rows.iter().map(node_from_row).collect()
    }

    pub async fn count_by_state(&self) -> Result<BTreeMap<NodeState, i64>, StoreError> {
        let rows = self.backend.sql("SELECT state, COUNT(*) AS n FROM nodes GROUP BY state").fetch_all().await?;
        let mut out = BTreeMap::new();
        for row in rows {
            out.insert(row.try_get::<Text<_>>("state")?.0, row.try_get("n")?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{grant, op, store, MAC};

    #[tokio::test]
    async fn nodes_are_searched_sorted_counted_and_paged() {
        let (s, _d) = store().await;
        for i in 0..12u8 {
            let n = s.ensure_node(MacAddr([0x52, 0x54, 0, 0, 0, i]), 100 + i64::from(i)).await.unwrap();
            let name = format!("{}-{i:02}", if i % 3 == 0 { "Rack_A" } else { "rackb" });
            let change = NodeChange { hostname: Some(name.replace('_', "-")), ..NodeChange::default() };
            s.update_node(n.id, &change, &op(), 200).await.unwrap();
        }
        let text = |t: &str| NodeFilter { text: Some(t.into()), limit: 100, ..NodeFilter::default() };
        assert_eq!(s.count_nodes(&text("RACK-a")).await.unwrap(), 4, "any case");
        assert_eq!(s.count_nodes(&text("52:54:00:00:00:0A")).await.unwrap(), 1);
        assert_eq!(s.count_nodes(&text("%")).await.unwrap(), 0, "LIKE's wildcards are literal");
        assert_eq!(s.count_nodes(&text("_")).await.unwrap(), 0);
        assert_eq!(s.count_nodes(&NodeFilter::default()).await.unwrap(), 12);
        let page = |sort, desc, offset| {
            let f = NodeFilter { limit: 5, ..NodeFilter::default() };
            let s = s.clone();
            async move { s.list_nodes_sorted(&f, sort, desc, offset).await.unwrap() }
        };
        let first: Vec<String> = page(NodeSort::Hostname, false, 0).await.into_iter().map(|n| n.hostname).collect();
        assert_eq!(first, ["Rack-A-00", "Rack-A-03", "Rack-A-06", "Rack-A-09", "rackb-01"]);
        let last = page(NodeSort::Hostname, true, 10).await;
        assert_eq!(last.iter().map(|n| n.hostname.as_str()).collect::<Vec<_>>(), ["Rack-A-03", "Rack-A-00"]);
        let seen = page(NodeSort::LastSeen, true, 0).await;
        assert_eq!(seen.first().map(|n| n.mac), Some(MacAddr([0x52, 0x54, 0, 0, 0, 11])), "the newest first");
    }

    #[tokio::test]
    async fn reservations_are_unique_and_take_over_is_explicit() {
        let (s, _d) = store().await;
        let a = s.ensure_node(MAC, 1).await.unwrap();
        let b = s.ensure_node(MacAddr([2, 0, 0, 0, 0, 2]), 1).await.unwrap();
        let ip = Ipv4Addr::new(10, 0, 0, 9);
        s.commit_dhcp(&[grant(b.mac, [10, 0, 0, 9], 5000, true)], 2).await.unwrap();
        let err = s.set_reservation(a.id, Some(ip), false, &op(), 100, 3).await.unwrap_err();
        assert!(matches!(err, StoreError::LeasedElsewhere { .. }), "{err}");
        let node = s.set_reservation(a.id, Some(ip), true, &op(), 100, 3).await.unwrap();
        assert_eq!(node.reserved_ip.as_deref(), Some("10.0.0.9"));
        assert!(s.live_bindings(100).await.unwrap().iter().all(|l| l.ip != ip), "b's lease ended");
        let err = s.set_reservation(b.id, Some(ip), true, &op(), 100, 4).await.unwrap_err();
        assert!(matches!(err, StoreError::ReservedElsewhere { .. }), "{err}");
        let hosts = s.dhcp_hosts().await.unwrap();
        assert!(hosts.iter().any(|h| h.mac == MAC && h.reserved_ip == Some(ip) && h.hostname == a.hostname));
        s.set_reservation(a.id, None, false, &op(), 100, 5).await.unwrap();
        assert_eq!(s.node(a.id).await.unwrap().reserved_ip, None);
    }

    #[tokio::test]
    async fn a_node_change_is_all_or_nothing_and_keeps_the_event_order() {
        let (s, _d) = store().await;
        let a = s.ensure_node(MAC, 1).await.unwrap();
        let b = s.ensure_node(MacAddr([2, 0, 0, 0, 0, 2]), 1).await.unwrap();
        let ip = Ipv4Addr::new(10, 0, 0, 9);
        s.set_reservation(b.id, Some(ip), false, &op(), 100, 2).await.unwrap();
        let mut hosts = s.watch_hosts();
        hosts.mark_unchanged();
        let labels = BTreeMap::from([("rack".to_string(), "r1".to_string())]);
        let mut change = NodeChange {
            reservation: Some(Some(ip)),
            hostname: Some("web-1".into()),
            labels: Some(labels.clone()),
            profile: Some(Some("tiny".into())),
            ..NodeChange::default()
        };
        // The reservation is refused: nothing else of the change is stored either.
        let err = s.update_node(a.id, &change, &op(), 3).await.unwrap_err();
        assert!(matches!(err, StoreError::ReservedElsewhere { .. }), "{err}");
        let unchanged = s.node(a.id).await.unwrap();
        assert_eq!((unchanged.hostname.as_str(), unchanged.profile.as_deref()), (a.hostname.as_str(), None));
        assert!(!hosts.has_changed().unwrap());

        change.reservation = Some(Some(Ipv4Addr::new(10, 0, 0, 10)));
        let node = s.update_node(a.id, &change, &op(), 4).await.unwrap();
        assert_eq!(node.hostname, "web-1");
        assert_eq!(node.labels, labels);
        assert_eq!((node.profile.as_deref(), node.state), (Some("tiny"), NodeState::Assigned));
        assert_eq!(node.reserved_ip.as_deref(), Some("10.0.0.10"));
        assert!(hosts.has_changed().unwrap(), "hostname and reservation reach DHCP's view");
        let events = s.events(a.id, 0, 100).await.unwrap();
        let tail: Vec<_> = events.iter().rev().take(2).rev().map(|e| (e.kind, e.message.as_str())).collect();
        assert_eq!(
            tail,
            [(EventKind::Info, r#"labels set to {"rack":"r1"}"#), (EventKind::State, "profile tiny assigned")]
        );
    }
}
