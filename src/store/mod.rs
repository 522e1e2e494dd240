//! Durable node state: nodes, leases, boots and the event timeline.
//!
//! SQLite (WAL) through sqlx with runtime queries, so a PostgreSQL back-end can share
//! the same tests later. Every state move and its event are written in one
//! transaction; a lease is written before the DHCP ACK that announces it.
//! Callers pass `now` in, so the store has no clock of its own.

use crate::node::{MacAddr, NodeState};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

pub type NodeId = i64;
pub type BootId = i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("no node {0}")]
    NoSuchNode(String),
    #[error("node {node} cannot move from {from} to {to} in this boot")]
    BadTransition { node: NodeId, from: NodeState, to: NodeState },
    #[error("boot {0} is no longer the node's current boot")]
    StaleBoot(BootId),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("a node with MAC {0} already exists")]
    DuplicateMac(MacAddr),
    #[error("a token named {0:?} already exists")]
    DuplicateToken(String),
    #[error("no token named {0:?}")]
    NoSuchToken(String),
    #[error("no volume named {0:?}")]
    NoSuchVolume(String),
    #[error("a volume named {0:?} already exists")]
    DuplicateVolume(String),
    #[error("volume {volume:?} is attached to node {node}; detach it first")]
    VolumeAttached { volume: String, node: NodeId },
    #[error("this is the last admin token; create another admin token first")]
    LastAdmin,
    #[error("{ip} is already reserved for node {node}")]
    ReservedElsewhere { ip: Ipv4Addr, node: NodeId },
    #[error("{ip} is leased to {mac}; reserve it with take_over to end that lease")]
    LeasedElsewhere { ip: Ipv4Addr, mac: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Node {
    pub id: NodeId,
    #[schema(value_type = String, example = "52:54:00:72:62:01")]
    pub mac: MacAddr,
    pub hostname: String,
    pub ip: Option<String>,
    pub profile: Option<String>,
    pub state: NodeState,
    pub state_since_ms: i64,
    pub current_boot_id: Option<BootId>,
    /// The stage-one agent's hardware report.
    #[schema(value_type = Option<Object>)]
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
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Boot {
    pub id: BootId,
    pub node_id: NodeId,
    pub profile: String,
    pub image: Option<BootImage>,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub outcome: Option<String>,
}

/// The root filesystem a boot was planned with (the planner's type).
pub use ramboot_core::plan::BootImage;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub id: i64,
    pub node_id: NodeId,
    pub boot_id: Option<BootId>,
    pub at_ms: i64,
    pub kind: String,
    pub state: Option<NodeState>,
    pub phase_ms: Option<i64>,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Lease {
    #[schema(value_type = String, example = "10.213.0.100")]
    pub ip: Ipv4Addr,
    #[schema(value_type = String, example = "52:54:00:72:62:01")]
    pub mac: MacAddr,
    pub expires_at: u64,
    pub state: String,
}

/// One lease change, applied with others in one transaction by [`Store::commit_dhcp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOp {
    Grant {
        mac: MacAddr,
        ip: Ipv4Addr,
        expires_at: u64,
        /// A PXE ROM, iPXE or HTTP-boot client: it becomes a node if it is new.
        netboot: bool,
        /// Already a node (its address and facts are recorded on it).
        known: bool,
        arch: Option<String>,
        uuid: Option<String>,
    },
    Release {
        mac: MacAddr,
        ip: Ipv4Addr,
    },
    Decline {
        mac: MacAddr,
        ip: Ipv4Addr,
        until: u64,
    },
}

/// `items` in consecutive chunks whose lengths are powers of two, at most 512.
fn pow2_chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let take = 1usize << items.len().min(512).ilog2();
        let (chunk, rest) = items.split_at(take);
        items = rest;
        Some(chunk)
    })
}

/// The final state of every address a batch of [`LeaseOp`]s touches, in order.
#[derive(Debug, Default, PartialEq, Eq)]
struct LeaseBatch {
    /// MACs granted an address: their other active leases end.
    granted_macs: Vec<MacAddr>,
    rows: Vec<LeaseRow>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LeaseRow {
    ip: Ipv4Addr,
    mac: MacAddr,
    expires_at: u64,
    state: &'static str,
}

impl LeaseBatch {
    /// Replay `ops` in order and keep each address's last state. A MAC granted
    /// two addresses in one batch keeps the later one (the earlier row is released),
    /// so the batch never holds two active rows for one MAC or one address.
    fn coalesce(ops: &[LeaseOp]) -> LeaseBatch {
        let mut batch = LeaseBatch::default();
        let mut row_of_ip: HashMap<Ipv4Addr, usize> = HashMap::new();
        let mut active_of_mac: HashMap<MacAddr, Ipv4Addr> = HashMap::new();
        let mut put = |batch: &mut LeaseBatch, row: LeaseRow| match row_of_ip.get(&row.ip) {
            Some(&i) => batch.rows[i] = row,
            None => {
                row_of_ip.insert(row.ip, batch.rows.len());
                batch.rows.push(row);
            }
        };
        for op in ops {
            match *op {
                LeaseOp::Grant { mac, ip, expires_at, .. } => {
                    if let Some(old) = active_of_mac.insert(mac, ip).filter(|old| *old != ip) {
                        put(&mut batch, LeaseRow { ip: old, mac, expires_at: 0, state: "released" });
                    }
                    if !batch.granted_macs.contains(&mac) {
                        batch.granted_macs.push(mac);
                    }
                    put(&mut batch, LeaseRow { ip, mac, expires_at, state: "active" });
                }
                LeaseOp::Release { mac, ip } => {
                    if active_of_mac.get(&mac) == Some(&ip) {
                        active_of_mac.remove(&mac);
                    }
                    put(&mut batch, LeaseRow { ip, mac, expires_at: 0, state: "released" });
                }
                LeaseOp::Decline { mac, ip, until } => {
                    if active_of_mac.get(&mac) == Some(&ip) {
                        active_of_mac.remove(&mac);
                    }
                    put(&mut batch, LeaseRow { ip, mac, expires_at: until, state: "declined" });
                }
            }
        }
        batch
    }
}

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    State,
    Progress,
    Dhcp,
    Info,
}

impl EventKind {
    fn as_str(self) -> &'static str {
        match self {
            EventKind::State => "state",
            EventKind::Progress => "progress",
            EventKind::Dhcp => "dhcp",
            EventKind::Info => "info",
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    /// Bumped whenever what DHCP knows about nodes changes (a node appears or goes,
    /// its hostname or reservation changes): the DHCP service reloads its view.
    hosts_rev: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn node_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Node, StoreError> {
    let mac: String = row.try_get("mac")?;
    let state: String = row.try_get("state")?;
    let inventory: Option<String> = row.try_get("inventory")?;
    let labels: String = row.try_get("labels")?;
    Ok(Node {
        id: row.try_get("id")?,
        mac: mac.parse().map_err(corrupt)?,
        hostname: row.try_get("hostname")?,
        ip: row.try_get("ip")?,
        profile: row.try_get("profile")?,
        state: state.parse().map_err(corrupt)?,
        state_since_ms: row.try_get("state_since_ms")?,
        current_boot_id: row.try_get("current_boot_id")?,
        inventory: inventory.map(|s| serde_json::from_str(&s)).transpose().map_err(corrupt)?,
        labels: serde_json::from_str(&labels).map_err(corrupt)?,
        arch: row.try_get("arch")?,
        failures: row.try_get("failures")?,
        maintenance_reason: row.try_get("maintenance_reason")?,
        reserved_ip: row.try_get("reserved_ip")?,
        client_uuid: row.try_get("client_uuid")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

fn event_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Event, StoreError> {
    let state: Option<String> = row.try_get("state")?;
    Ok(Event {
        id: row.try_get("id")?,
        node_id: row.try_get("node_id")?,
        boot_id: row.try_get("boot_id")?,
        at_ms: row.try_get("at_ms")?,
        kind: row.try_get("kind")?,
        state: state.map(|s| s.parse()).transpose().map_err(corrupt)?,
        phase_ms: row.try_get("phase_ms")?,
        message: row.try_get("message")?,
    })
}

/// The hostname a node gets until an operator names it.
pub fn default_hostname(mac: MacAddr) -> String {
    let b = mac.0;
    format!("node-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
}

impl Store {
    /// Open (creating if needed) and migrate the database at `url`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL is durable against process crashes; FULL also against power
            // loss, which is what "committed before the ACK" must mean.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Store { pool, hosts_rev: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)) })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- leases ----

    /// Active leases that have not expired at `now` (Unix seconds), for rebuilding the pool.
    pub async fn active_leases(&self, now: u64) -> Result<Vec<Lease>, StoreError> {
        let rows =
            sqlx::query("SELECT ip, mac, expires_at, state FROM leases WHERE state = 'active' AND expires_at > ?")
                .bind(now as i64)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(lease_from_row).collect()
    }

    pub async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let rows =
            sqlx::query("SELECT ip, mac, expires_at, state FROM leases ORDER BY ip").fetch_all(&self.pool).await?;
        rows.iter().map(lease_from_row).collect()
    }

    /// A receiver that changes whenever DHCP's view of the nodes may have changed.
    pub fn watch_hosts(&self) -> tokio::sync::watch::Receiver<u64> {
        self.hosts_rev.subscribe()
    }

    fn hosts_changed(&self) {
        self.hosts_rev.send_modify(|rev| *rev += 1);
    }

    /// Every node as DHCP sees it: MAC, reservation, hostname.
    pub async fn dhcp_hosts(&self) -> Result<Vec<(MacAddr, Option<Ipv4Addr>, String)>, StoreError> {
        let rows = sqlx::query("SELECT mac, reserved_ip, hostname FROM nodes").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let mac: String = row.try_get("mac")?;
                let ip: Option<String> = row.try_get("reserved_ip")?;
                Ok((
                    mac.parse().map_err(corrupt)?,
                    ip.map(|ip| ip.parse()).transpose().map_err(corrupt)?,
                    row.try_get("hostname")?,
                ))
            })
            .collect()
    }

    /// What the DHCP pools are rebuilt from at start: live leases, and declined
    /// addresses still in quarantine.
    pub async fn live_bindings(&self, now: u64) -> Result<Vec<Lease>, StoreError> {
        let rows = sqlx::query(
            "SELECT ip, mac, expires_at, state FROM leases WHERE state IN ('active', 'declined') AND expires_at > ?",
        )
        .bind(now as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(lease_from_row).collect()
    }

    /// Apply a batch of DHCP lease changes in one transaction: one fsync for all of
    /// them (group commit). Nothing of the batch is durable if this fails.
    ///
    /// The batch is first coalesced to the final state of each address, then written
    /// with two multi-row statements per 1,000 leases (release the granted MACs'
    /// other leases; upsert every touched address), so a batch costs a few database
    /// round trips, not a few per lease. Only network-boot clients and known nodes
    /// touch the nodes table.
    pub async fn commit_dhcp(&self, ops: &[LeaseOp], now_ms: i64) -> Result<(), StoreError> {
        let batch = LeaseBatch::coalesce(ops);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // Statements come in power-of-two sizes up to 512 rows, so each shape is
        // parsed and prepared once per connection and then reused from sqlx's cache
        // (SQLite allows 32,766 bound parameters per statement).
        for macs in pow2_chunks(&batch.granted_macs) {
            let marks = vec!["?"; macs.len()].join(",");
            let sql = format!(
                "UPDATE leases SET state = 'released', updated_at_ms = ? WHERE state = 'active' AND mac IN ({marks})"
            );
            let mut q = sqlx::query(&sql).bind(now_ms);
            for mac in macs {
                q = q.bind(mac.to_string());
            }
            q.execute(&mut *tx).await?;
        }
        for rows in pow2_chunks(&batch.rows) {
            let marks = vec!["(?, ?, ?, ?, ?)"; rows.len()].join(",");
            // A grant takes the address whatever the row said (the DHCP core chose a
            // free one); a release or decline only touches the client's own row.
            let sql = format!(
                "INSERT INTO leases (ip, mac, expires_at, state, updated_at_ms) VALUES {marks}
                 ON CONFLICT (ip) DO UPDATE SET mac = excluded.mac,
                     expires_at = CASE WHEN excluded.state = 'released' THEN leases.expires_at
                                       ELSE excluded.expires_at END,
                     state = excluded.state, updated_at_ms = excluded.updated_at_ms
                 WHERE excluded.state = 'active' OR leases.mac = excluded.mac"
            );
            let mut q = sqlx::query(&sql);
            for row in rows {
                q = q
                    .bind(row.ip.to_string())
                    .bind(row.mac.to_string())
                    .bind(row.expires_at as i64)
                    .bind(row.state)
                    .bind(now_ms);
            }
            q.execute(&mut *tx).await?;
        }
        let mut new_nodes = false;
        for op in ops {
            let LeaseOp::Grant { mac, ip, expires_at, netboot, known, arch, uuid } = op else { continue };
            if !netboot && !known {
                continue;
            }
            // Network-boot clients become nodes; an OS's DHCP client only updates a
            // node that already exists.
            let node = if *netboot {
                let (id, created) = upsert_node_created(&mut tx, *mac, now_ms).await?;
                new_nodes |= created;
                Some(id)
            } else {
                None
            };
            sqlx::query(
                "UPDATE nodes SET ip = ?, arch = COALESCE(?, arch), client_uuid = COALESCE(?, client_uuid),
                     updated_at_ms = ?
                 WHERE mac = ?",
            )
            .bind(ip.to_string())
            .bind(arch.as_deref())
            .bind(uuid.as_deref())
            .bind(now_ms)
            .bind(mac.to_string())
            .execute(&mut *tx)
            .await?;
            if let Some(node) = node {
                sqlx::query("INSERT INTO events (node_id, at_ms, kind, message) VALUES (?, ?, 'dhcp', ?)")
                    .bind(node)
                    .bind(now_ms)
                    .bind(format!("DHCP lease {ip} (until unix {expires_at})"))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        if new_nodes {
            self.hosts_changed();
        }
        Ok(())
    }

    /// Reserve `ip` for node `id` (`None` clears). Refused while another MAC holds
    /// an active lease on it, unless `take_over`: moving an address between MACs is
    /// an explicit operator action, and ends that lease.
    pub async fn set_reservation(
        &self,
        id: NodeId,
        ip: Option<Ipv4Addr>,
        take_over: bool,
        now: u64,
        now_ms: i64,
    ) -> Result<Node, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let node = sqlx::query("SELECT mac FROM nodes WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NoSuchNode(id.to_string()))?;
        let mac: String = node.try_get("mac")?;
        if let Some(ip) = ip {
            let ip_s = ip.to_string();
            if let Some(row) = sqlx::query("SELECT id FROM nodes WHERE reserved_ip = ? AND id <> ?")
                .bind(&ip_s)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
            {
                return Err(StoreError::ReservedElsewhere { ip, node: row.try_get("id")? });
            }
            let holder =
                sqlx::query("SELECT mac FROM leases WHERE ip = ? AND state = 'active' AND expires_at > ? AND mac <> ?")
                    .bind(&ip_s)
                    .bind(now as i64)
                    .bind(&mac)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(row) = holder {
                let holder: String = row.try_get("mac")?;
                if !take_over {
                    return Err(StoreError::LeasedElsewhere { ip, mac: holder });
                }
                sqlx::query("UPDATE leases SET state = 'released', updated_at_ms = ? WHERE ip = ?")
                    .bind(now_ms)
                    .bind(&ip_s)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        sqlx::query("UPDATE nodes SET reserved_ip = ?, updated_at_ms = ? WHERE id = ?")
            .bind(ip.map(|ip| ip.to_string()))
            .bind(now_ms)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.hosts_changed();
        self.node(id).await
    }

    // ---- nodes ----

    /// The node with this MAC, created as `discovered` if it is new.
    pub async fn ensure_node(&self, mac: MacAddr, now_ms: i64) -> Result<Node, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let (id, created) = upsert_node_created(&mut tx, mac, now_ms).await?;
        tx.commit().await?;
        if created {
            self.hosts_changed();
        }
        self.node(id).await
    }

    pub async fn node(&self, id: NodeId) -> Result<Node, StoreError> {
        let row = sqlx::query("SELECT * FROM nodes WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NoSuchNode(id.to_string()))?;
        node_from_row(&row)
    }

    pub async fn node_by_mac(&self, mac: MacAddr) -> Result<Option<Node>, StoreError> {
        let row =
            sqlx::query("SELECT * FROM nodes WHERE mac = ?").bind(mac.to_string()).fetch_optional(&self.pool).await?;
        row.as_ref().map(node_from_row).transpose()
    }

    pub async fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        let rows = sqlx::query("SELECT * FROM nodes ORDER BY id").fetch_all(&self.pool).await?;
        rows.iter().map(node_from_row).collect()
    }

    pub async fn set_inventory(
        &self,
        id: NodeId,
        inventory: &serde_json::Value,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE nodes SET inventory = ?, updated_at_ms = ? WHERE id = ?")
            .bind(inventory.to_string())
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- boots and the state machine ----

    /// Start a new boot of `node`: the previous boot (if unfinished) is superseded,
    /// the node moves to `booting`, and the boot's token hash is recorded.
    pub async fn start_boot(
        &self,
        node: NodeId,
        profile: &str,
        image: Option<&BootImage>,
        token_hash: &str,
        now_ms: i64,
        why: &str,
    ) -> Result<BootId, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let boot = begin_boot(&mut tx, node, profile, image, token_hash, now_ms).await?;
        move_state(
            &mut tx,
            node,
            Some(boot),
            NodeState::Booting,
            &format!("iPXE script served (profile {profile}: {why})"),
            now_ms,
        )
        .await?;
        tx.commit().await?;
        Ok(boot)
    }

    /// The node and boot a per-boot token belongs to, if that boot is still current.
    pub async fn boot_by_token_hash(&self, token_hash: &str) -> Result<Option<(Node, Boot)>, StoreError> {
        let row =
            sqlx::query("SELECT * FROM boots WHERE token_hash = ?").bind(token_hash).fetch_optional(&self.pool).await?;
        let Some(row) = row else { return Ok(None) };
        let boot = boot_from_row(&row)?;
        let node = self.node(boot.node_id).await?;
        if node.current_boot_id != Some(boot.id) {
            return Ok(None);
        }
        Ok(Some((node, boot)))
    }

    pub async fn boot(&self, id: BootId) -> Result<Option<Boot>, StoreError> {
        let row = sqlx::query("SELECT * FROM boots WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(boot_from_row).transpose()
    }

    /// Move a node within its current boot, as an agent reported. Refuses moves
    /// backwards and moves for a boot that is no longer current.
    pub async fn agent_transition(
        &self,
        node: NodeId,
        boot: BootId,
        next: NodeState,
        message: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query("SELECT state, current_boot_id FROM nodes WHERE id = ?")
            .bind(node)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NoSuchNode(node.to_string()))?;
        let current_boot: Option<BootId> = row.try_get("current_boot_id")?;
        if current_boot != Some(boot) {
            return Err(StoreError::StaleBoot(boot));
        }
        let state: String = row.try_get("state")?;
        let state: NodeState = state.parse().map_err(corrupt)?;
        if !state.agent_may_move_to(next) {
            return Err(StoreError::BadTransition { node, from: state, to: next });
        }
        move_state(&mut tx, node, Some(boot), next, message, now_ms).await?;
        let failures_delta = match next {
            NodeState::Failed => "failures + 1",
            NodeState::Ready => "0",
            _ => "failures",
        };
        sqlx::query(&format!("UPDATE nodes SET failures = {failures_delta} WHERE id = ?"))
            .bind(node)
            .execute(&mut *tx)
            .await?;
        if matches!(next, NodeState::Ready | NodeState::Failed) {
            sqlx::query("UPDATE boots SET finished_at_ms = ?, outcome = ? WHERE id = ?")
                .bind(now_ms)
                .bind(next.as_str())
                .bind(boot)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Record an event that does not move the node (progress, DHCP, info).
    pub async fn add_event(
        &self,
        node: NodeId,
        boot: Option<BootId>,
        kind: EventKind,
        message: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO events (node_id, boot_id, at_ms, kind, message) VALUES (?, ?, ?, ?, ?)")
            .bind(node)
            .bind(boot)
            .bind(now_ms)
            .bind(kind.as_str())
            .bind(message)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A node's events, oldest first, newer than `after_id`, at most `limit`.
    pub async fn events(&self, node: NodeId, after_id: i64, limit: i64) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query("SELECT * FROM events WHERE node_id = ? AND id > ? ORDER BY id LIMIT ?")
            .bind(node)
            .bind(after_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(event_from_row).collect()
    }
}

/// Which nodes to list, and from where (keyset pagination by id).
#[derive(Debug, Clone, Default)]
pub struct NodeFilter {
    pub state: Option<NodeState>,
    pub profile: Option<String>,
    pub label: Option<(String, String)>,
    /// Only nodes with an id greater than this.
    pub after: i64,
    pub limit: i64,
}

/// A VM disk on the iSCSI target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Volume {
    pub id: i64,
    pub name: String,
    pub size_bytes: u64,
    /// The node it is exported to, as `lun`.
    pub node_id: Option<NodeId>,
    pub lun: Option<u32>,
    pub created_at_ms: i64,
}

fn volume_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Volume, StoreError> {
    let size: i64 = row.try_get("size_bytes")?;
    let lun: Option<i64> = row.try_get("lun")?;
    Ok(Volume {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        size_bytes: u64::try_from(size).map_err(corrupt)?,
        node_id: row.try_get("node_id")?,
        lun: lun.map(u32::try_from).transpose().map_err(corrupt)?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

/// An API token as listed: never the secret, nor its hash.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    pub created_at_ms: i64,
}

/// Roles of admin API tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

impl Store {
    pub async fn list_nodes(&self, f: &NodeFilter) -> Result<Vec<Node>, StoreError> {
        let mut sql = String::from("SELECT * FROM nodes WHERE id > ?");
        if f.state.is_some() {
            sql.push_str(" AND state = ?");
        }
        if f.profile.is_some() {
            sql.push_str(" AND profile = ?");
        }
        if f.label.is_some() {
            sql.push_str(" AND json_extract(labels, '$.' || json_quote(?)) = ?");
        }
        sql.push_str(" ORDER BY id LIMIT ?");
        let mut q = sqlx::query(&sql).bind(f.after);
        if let Some(state) = f.state {
            q = q.bind(state.as_str());
        }
        if let Some(profile) = &f.profile {
            q = q.bind(profile);
        }
        if let Some((k, v)) = &f.label {
            q = q.bind(k).bind(v);
        }
        let rows = q.bind(f.limit).fetch_all(&self.pool).await?;
        rows.iter().map(node_from_row).collect()
    }

    /// Register a node an operator knows about before it ever boots.
    pub async fn create_node(
        &self,
        mac: MacAddr,
        hostname: Option<&str>,
        profile: Option<&str>,
        labels: &BTreeMap<String, String>,
        now_ms: i64,
    ) -> Result<Node, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if sqlx::query("SELECT id FROM nodes WHERE mac = ?")
            .bind(mac.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .is_some()
        {
            return Err(StoreError::DuplicateMac(mac));
        }
        let id = upsert_node(&mut tx, mac, now_ms).await?;
        sqlx::query("UPDATE nodes SET hostname = COALESCE(?, hostname), labels = ? WHERE id = ?")
            .bind(hostname)
            .bind(serde_json::to_string(labels).map_err(corrupt)?)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if let Some(profile) = profile {
            assign_in(&mut tx, id, Some(profile), now_ms).await?;
        }
        tx.commit().await?;
        self.hosts_changed();
        self.node(id).await
    }

    /// Set (or clear) a node's explicit profile. A node between boots becomes
    /// `assigned` (or `discovered` when cleared); a node mid-boot keeps its pinned
    /// image and gets the new profile on its next boot.
    pub async fn assign(&self, id: NodeId, profile: Option<&str>, now_ms: i64) -> Result<Node, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        assign_in(&mut tx, id, profile, now_ms).await?;
        tx.commit().await?;
        self.node(id).await
    }

    pub async fn set_labels(
        &self,
        id: NodeId,
        labels: &BTreeMap<String, String>,
        now_ms: i64,
    ) -> Result<Node, StoreError> {
        let done = sqlx::query("UPDATE nodes SET labels = ?, updated_at_ms = ? WHERE id = ?")
            .bind(serde_json::to_string(labels).map_err(corrupt)?)
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoSuchNode(id.to_string()));
        }
        self.add_event(
            id,
            None,
            EventKind::Info,
            &format!("labels set to {}", serde_json::to_string(labels).unwrap_or_default()),
            now_ms,
        )
        .await?;
        self.node(id).await
    }

    pub async fn set_hostname(&self, id: NodeId, hostname: &str, now_ms: i64) -> Result<Node, StoreError> {
        let done = sqlx::query("UPDATE nodes SET hostname = ?, updated_at_ms = ? WHERE id = ?")
            .bind(hostname)
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoSuchNode(id.to_string()));
        }
        self.hosts_changed();
        self.node(id).await
    }

    /// Forget a node, its boots and events. Its lease stays until it expires: the
    /// address may still be in use.
    pub async fn delete_node(&self, id: NodeId) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM nodes WHERE id = ?").bind(id).execute(&self.pool).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoSuchNode(id.to_string()));
        }
        self.hosts_changed();
        Ok(())
    }

    /// The next boot loads afresh: any boot in progress is superseded, the failure
    /// count is cleared, and the node waits for its next PXE boot.
    pub async fn reprovision(&self, id: NodeId, now_ms: i64) -> Result<Node, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let node = node_in(&mut tx, id).await?;
        supersede_boots(&mut tx, id, now_ms).await?;
        sqlx::query("UPDATE nodes SET failures = 0, current_boot_id = NULL, maintenance_reason = NULL WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let next = if node.profile.is_some() { NodeState::Assigned } else { NodeState::Discovered };
        move_state(&mut tx, id, None, next, "reprovision requested: the next boot loads afresh", now_ms).await?;
        tx.commit().await?;
        self.node(id).await
    }

    /// Put a node in maintenance (it is told not to boot), or take it out.
    pub async fn set_maintenance(&self, id: NodeId, reason: Option<&str>, now_ms: i64) -> Result<Node, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let node = node_in(&mut tx, id).await?;
        match reason {
            Some(reason) => {
                sqlx::query("UPDATE nodes SET maintenance_reason = ? WHERE id = ?")
                    .bind(reason)
                    .bind(id)
                    .execute(&mut *tx)
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
                sqlx::query("UPDATE nodes SET maintenance_reason = NULL, failures = 0 WHERE id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                if node.state == NodeState::Maintenance {
                    let next = if node.profile.is_some() { NodeState::Assigned } else { NodeState::Discovered };
                    move_state(&mut tx, id, None, next, "maintenance ended", now_ms).await?;
                }
            }
        }
        tx.commit().await?;
        self.node(id).await
    }

    /// A boot that overran its phase timeout: fail it (the watchdog's move).
    pub async fn fail_boot(&self, id: NodeId, boot: BootId, reason: &str, now_ms: i64) -> Result<(), StoreError> {
        self.agent_transition(id, boot, NodeState::Failed, reason, now_ms).await
    }

    /// Give a discovery boot the profile and image it now has: the boot continues
    /// with them, and the node moves to `assigned`.
    pub async fn pin_boot(
        &self,
        node: NodeId,
        boot: BootId,
        profile: &str,
        image: &BootImage,
        why: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let current = node_in(&mut tx, node).await?;
        if current.current_boot_id != Some(boot) {
            return Err(StoreError::StaleBoot(boot));
        }
        sqlx::query(
            "UPDATE boots SET profile = ?, image_name = ?, image_digest = ?, image_size = ?, image_format = ? WHERE id = ?",
        )
        .bind(profile)
        .bind(&image.name)
        .bind(&image.digest)
        .bind(image.size as i64)
        .bind(&image.format)
        .bind(boot)
        .execute(&mut *tx)
        .await?;
        if current.state == NodeState::Discovered {
            let message = format!("profile {profile} chosen ({why})");
            move_state(&mut tx, node, Some(boot), NodeState::Assigned, &message, now_ms).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Start a discovery boot: no profile yet, the node stays `discovered` and its
    /// agent waits for an assignment.
    pub async fn start_discovery_boot(
        &self,
        node: NodeId,
        token_hash: &str,
        now_ms: i64,
    ) -> Result<BootId, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let boot = begin_boot(&mut tx, node, "", None, token_hash, now_ms).await?;
        sqlx::query("INSERT INTO events (node_id, boot_id, at_ms, kind, message) VALUES (?, ?, ?, 'info', ?)")
            .bind(node)
            .bind(boot)
            .bind(now_ms)
            .bind("discovery boot: no profile yet; stage one reports its inventory and waits for an assignment")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(boot)
    }

    /// Nodes in `state` since before `before_ms`, with a current boot.
    pub async fn nodes_in_state_since(&self, state: NodeState, before_ms: i64) -> Result<Vec<Node>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM nodes WHERE state = ? AND state_since_ms < ? AND current_boot_id IS NOT NULL")
                .bind(state.as_str())
                .bind(before_ms)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(node_from_row).collect()
    }

    pub async fn count_by_state(&self) -> Result<BTreeMap<NodeState, i64>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM nodes GROUP BY state").fetch_all(&self.pool).await?;
        let mut out = BTreeMap::new();
        for row in rows {
            let state: String = row.try_get("state")?;
            out.insert(state.parse().map_err(corrupt)?, row.try_get("n")?);
        }
        Ok(out)
    }

    /// Events of every node, oldest first, newer than `after_id`.
    pub async fn all_events(&self, after_id: i64, limit: i64) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?")
            .bind(after_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Is `image` pinned by a boot still in progress?
    pub async fn image_in_current_boot(&self, image: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT 1 FROM boots JOIN nodes ON nodes.current_boot_id = boots.id
             WHERE boots.image_name = ? AND boots.finished_at_ms IS NULL LIMIT 1",
        )
        .bind(image)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// The newest `last` events (of one node, or of all), oldest first.
    pub async fn recent_events(&self, node: Option<NodeId>, last: i64) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM (SELECT * FROM events WHERE (? IS NULL OR node_id = ?) ORDER BY id DESC LIMIT ?) ORDER BY id",
        )
        .bind(node)
        .bind(node)
        .bind(last)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    pub async fn last_event_id(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) AS id FROM events").fetch_one(&self.pool).await?;
        Ok(row.try_get("id")?)
    }

    // ---- iSCSI volumes ----

    pub async fn volumes(&self) -> Result<Vec<Volume>, StoreError> {
        let rows = sqlx::query("SELECT * FROM volumes ORDER BY name").fetch_all(&self.pool).await?;
        rows.iter().map(volume_from_row).collect()
    }

    pub async fn volume(&self, name: &str) -> Result<Volume, StoreError> {
        let row = sqlx::query("SELECT * FROM volumes WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NoSuchVolume(name.to_string()))?;
        volume_from_row(&row)
    }

    pub async fn node_volumes(&self, node: NodeId) -> Result<Vec<Volume>, StoreError> {
        let rows = sqlx::query("SELECT * FROM volumes WHERE node_id = ? ORDER BY lun")
            .bind(node)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(volume_from_row).collect()
    }

    /// Nodes that have at least one volume attached.
    pub async fn nodes_with_volumes(&self) -> Result<Vec<NodeId>, StoreError> {
        let rows = sqlx::query("SELECT DISTINCT node_id FROM volumes WHERE node_id IS NOT NULL ORDER BY node_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| r.try_get("node_id").map_err(StoreError::from)).collect()
    }

    pub async fn create_volume(&self, name: &str, size_bytes: u64, now_ms: i64) -> Result<Volume, StoreError> {
        let result = sqlx::query("INSERT INTO volumes (name, size_bytes, created_at_ms) VALUES (?, ?, ?)")
            .bind(name)
            .bind(i64::try_from(size_bytes).map_err(corrupt)?)
            .bind(now_ms)
            .execute(&self.pool)
            .await;
        match result {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::DuplicateVolume(name.to_string()))
            }
            other => other.map_err(StoreError::from)?,
        };
        self.volume(name).await
    }

    /// Attach a volume to a node as its next free LUN (from 1). Idempotent for the
    /// same node; a volume attached elsewhere must be detached first.
    pub async fn attach_volume(&self, name: &str, node: NodeId, now_ms: i64) -> Result<Volume, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let vol = sqlx::query("SELECT * FROM volumes WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NoSuchVolume(name.to_string()))?;
        let vol = volume_from_row(&vol)?;
        match vol.node_id {
            Some(n) if n == node => return Ok(vol),
            Some(other) => return Err(StoreError::VolumeAttached { volume: name.to_string(), node: other }),
            None => {}
        }
        node_in(&mut tx, node).await?;
        let lun: i64 = sqlx::query("SELECT COALESCE(MAX(lun), 0) + 1 AS lun FROM volumes WHERE node_id = ?")
            .bind(node)
            .fetch_one(&mut *tx)
            .await?
            .try_get("lun")?;
        sqlx::query("UPDATE volumes SET node_id = ?, lun = ? WHERE id = ?")
            .bind(node)
            .bind(lun)
            .bind(vol.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO events (node_id, at_ms, kind, message) VALUES (?, ?, 'info', ?)")
            .bind(node)
            .bind(now_ms)
            .bind(format!("volume {name} attached as LUN {lun}"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.volume(name).await
    }

    /// Detach a volume; returns the node it was attached to.
    pub async fn detach_volume(&self, name: &str, now_ms: i64) -> Result<Option<NodeId>, StoreError> {
        let vol = self.volume(name).await?;
        sqlx::query("UPDATE volumes SET node_id = NULL, lun = NULL WHERE id = ?")
            .bind(vol.id)
            .execute(&self.pool)
            .await?;
        if let Some(node) = vol.node_id {
            self.add_event(node, None, EventKind::Info, &format!("volume {name} detached"), now_ms).await?;
        }
        Ok(vol.node_id)
    }

    pub async fn set_volume_size(&self, name: &str, size_bytes: u64, now_ms: i64) -> Result<Volume, StoreError> {
        let vol = self.volume(name).await?;
        sqlx::query("UPDATE volumes SET size_bytes = ? WHERE id = ?")
            .bind(i64::try_from(size_bytes).map_err(corrupt)?)
            .bind(vol.id)
            .execute(&self.pool)
            .await?;
        if let Some(node) = vol.node_id {
            let note = format!("volume {name} grown to {}", ramboot_proto::human_bytes(size_bytes));
            self.add_event(node, None, EventKind::Info, &note, now_ms).await?;
        }
        self.volume(name).await
    }

    pub async fn delete_volume(&self, name: &str) -> Result<(), StoreError> {
        let vol = self.volume(name).await?;
        if let Some(node) = vol.node_id {
            return Err(StoreError::VolumeAttached { volume: name.to_string(), node });
        }
        sqlx::query("DELETE FROM volumes WHERE id = ?").bind(vol.id).execute(&self.pool).await?;
        Ok(())
    }

    /// The node's CHAP secret, generated (and stored) on first use.
    pub async fn chap_secret(&self, node: NodeId, generate: impl FnOnce() -> String) -> Result<String, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query("SELECT chap_secret FROM nodes WHERE id = ?")
            .bind(node)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NoSuchNode(node.to_string()))?;
        if let Some(secret) = row.try_get::<Option<String>, _>("chap_secret")? {
            return Ok(secret);
        }
        let secret = generate();
        sqlx::query("UPDATE nodes SET chap_secret = ? WHERE id = ?").bind(&secret).bind(node).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(secret)
    }

    // ---- admin API tokens ----

    pub async fn has_admin_token(&self) -> Result<bool, StoreError> {
        Ok(sqlx::query("SELECT 1 FROM api_tokens WHERE role = 'admin' LIMIT 1")
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    pub async fn create_token(&self, name: &str, role: Role, token_hash: &str, now_ms: i64) -> Result<(), StoreError> {
        let result = sqlx::query("INSERT INTO api_tokens (name, role, token_hash, created_at_ms) VALUES (?, ?, ?, ?)")
            .bind(name)
            .bind(role.as_str())
            .bind(token_hash)
            .bind(now_ms)
            .execute(&self.pool)
            .await;
        match result {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::DuplicateToken(name.to_string()))
            }
            other => other.map(|_| ()).map_err(StoreError::from),
        }
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let rows =
            sqlx::query("SELECT name, role, created_at_ms FROM api_tokens ORDER BY name").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let role: String = row.try_get("role")?;
                Ok(TokenInfo {
                    name: row.try_get("name")?,
                    role: if role == "admin" { Role::Admin } else { Role::Read },
                    created_at_ms: row.try_get("created_at_ms")?,
                })
            })
            .collect()
    }

    /// Revoke a token. The last admin token cannot go: nobody could make another.
    pub async fn delete_token(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query("SELECT role FROM api_tokens WHERE name = ?").bind(name).fetch_optional(&mut *tx).await?;
        let Some(row) = row else { return Err(StoreError::NoSuchToken(name.to_string())) };
        let role: String = row.try_get("role")?;
        if role == "admin" {
            let admins: i64 = sqlx::query("SELECT COUNT(*) AS n FROM api_tokens WHERE role = 'admin'")
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
            if admins <= 1 {
                return Err(StoreError::LastAdmin);
            }
        }
        sqlx::query("DELETE FROM api_tokens WHERE name = ?").bind(name).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The role a token hash grants, if any.
    pub async fn token_role(&self, token_hash: &str) -> Result<Option<Role>, StoreError> {
        let row = sqlx::query("SELECT role FROM api_tokens WHERE token_hash = ?")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            None => None,
            Some(row) => match row.try_get::<String, _>("role")?.as_str() {
                "admin" => Some(Role::Admin),
                "read" => Some(Role::Read),
                other => return Err(corrupt(format!("token role {other:?}"))),
            },
        })
    }
}

async fn node_in(tx: &mut Tx<'_>, id: NodeId) -> Result<Node, StoreError> {
    let row = sqlx::query("SELECT * FROM nodes WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::NoSuchNode(id.to_string()))?;
    node_from_row(&row)
}

async fn assign_in(tx: &mut Tx<'_>, id: NodeId, profile: Option<&str>, now_ms: i64) -> Result<(), StoreError> {
    let node = node_in(tx, id).await?;
    sqlx::query("UPDATE nodes SET profile = ?, updated_at_ms = ? WHERE id = ?")
        .bind(profile)
        .bind(now_ms)
        .bind(id)
        .execute(&mut **tx)
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
            sqlx::query("INSERT INTO events (node_id, at_ms, kind, message) VALUES (?, ?, 'info', ?)")
                .bind(id)
                .bind(now_ms)
                .bind(format!("{message}; applies to the next boot"))
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

fn lease_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Lease, StoreError> {
    let ip: String = row.try_get("ip")?;
    let mac: String = row.try_get("mac")?;
    let expires_at: i64 = row.try_get("expires_at")?;
    Ok(Lease {
        ip: ip.parse().map_err(corrupt)?,
        mac: mac.parse().map_err(corrupt)?,
        expires_at: u64::try_from(expires_at).map_err(corrupt)?,
        state: row.try_get("state")?,
    })
}

fn boot_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Boot, StoreError> {
    let name: Option<String> = row.try_get("image_name")?;
    let digest: Option<String> = row.try_get("image_digest")?;
    let size: Option<i64> = row.try_get("image_size")?;
    let format: Option<String> = row.try_get("image_format")?;
    let image = match (name, digest, size, format) {
        (Some(name), Some(digest), Some(size), Some(format)) => {
            Some(BootImage { name, digest, size: u64::try_from(size).map_err(corrupt)?, format })
        }
        _ => None,
    };
    Ok(Boot {
        id: row.try_get("id")?,
        node_id: row.try_get("node_id")?,
        profile: row.try_get("profile")?,
        image,
        started_at_ms: row.try_get("started_at_ms")?,
        finished_at_ms: row.try_get("finished_at_ms")?,
        outcome: row.try_get("outcome")?,
    })
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Sqlite>;

async fn upsert_node(tx: &mut Tx<'_>, mac: MacAddr, now_ms: i64) -> Result<NodeId, StoreError> {
    Ok(upsert_node_created(tx, mac, now_ms).await?.0)
}

/// The node with `mac`, created as `discovered` if new; and whether it was created.
async fn upsert_node_created(tx: &mut Tx<'_>, mac: MacAddr, now_ms: i64) -> Result<(NodeId, bool), StoreError> {
    let mac_s = mac.to_string();
    if let Some(row) = sqlx::query("SELECT id FROM nodes WHERE mac = ?").bind(&mac_s).fetch_optional(&mut **tx).await? {
        return Ok((row.try_get("id")?, false));
    }
    let id: NodeId = sqlx::query(
        "INSERT INTO nodes (mac, hostname, state, state_since_ms, created_at_ms, updated_at_ms)
         VALUES (?, ?, 'discovered', ?, ?, ?) RETURNING id",
    )
    .bind(&mac_s)
    .bind(default_hostname(mac))
    .bind(now_ms)
    .bind(now_ms)
    .bind(now_ms)
    .fetch_one(&mut **tx)
    .await?
    .try_get("id")?;
    sqlx::query("INSERT INTO events (node_id, at_ms, kind, state, message) VALUES (?, ?, 'state', 'discovered', ?)")
        .bind(id)
        .bind(now_ms)
        .bind(format!("first seen ({mac})"))
        .execute(&mut **tx)
        .await?;
    Ok((id, true))
}

/// End any unfinished boot of `node`: its token stops working.
async fn supersede_boots(tx: &mut Tx<'_>, node: NodeId, now_ms: i64) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE boots SET outcome = 'superseded', finished_at_ms = ? WHERE node_id = ? AND finished_at_ms IS NULL",
    )
    .bind(now_ms)
    .bind(node)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Supersede the node's previous boot and make a new one current.
async fn begin_boot(
    tx: &mut Tx<'_>,
    node: NodeId,
    profile: &str,
    image: Option<&BootImage>,
    token_hash: &str,
    now_ms: i64,
) -> Result<BootId, StoreError> {
    supersede_boots(tx, node, now_ms).await?;
    let boot: BootId = sqlx::query(
        "INSERT INTO boots (node_id, token_hash, profile, image_name, image_digest, image_size, image_format, started_at_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(node)
    .bind(token_hash)
    .bind(profile)
    .bind(image.map(|i| &i.name))
    .bind(image.map(|i| &i.digest))
    .bind(image.map(|i| i.size as i64))
    .bind(image.map(|i| &i.format))
    .bind(now_ms)
    .fetch_one(&mut **tx)
    .await?
    .try_get("id")?;
    sqlx::query("UPDATE nodes SET current_boot_id = ? WHERE id = ?").bind(boot).bind(node).execute(&mut **tx).await?;
    Ok(boot)
}

/// Move `node` to `next` and record the move with the time spent in the old state.
async fn move_state(
    tx: &mut Tx<'_>,
    node: NodeId,
    boot: Option<BootId>,
    next: NodeState,
    message: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    let since: i64 = sqlx::query("SELECT state_since_ms FROM nodes WHERE id = ?")
        .bind(node)
        .fetch_one(&mut **tx)
        .await?
        .try_get("state_since_ms")?;
    sqlx::query("UPDATE nodes SET state = ?, state_since_ms = ?, updated_at_ms = ? WHERE id = ?")
        .bind(next.as_str())
        .bind(now_ms)
        .bind(now_ms)
        .bind(node)
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO events (node_id, boot_id, at_ms, kind, state, phase_ms, message) VALUES (?, ?, ?, 'state', ?, ?, ?)")
        .bind(node)
        .bind(boot)
        .bind(now_ms)
        .bind(next.as_str())
        .bind((now_ms - since).max(0))
        .bind(message)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        (Store::open(&url).await.unwrap(), dir)
    }

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);

    fn grant(mac: MacAddr, ip: [u8; 4], expires_at: u64, netboot: bool) -> LeaseOp {
        LeaseOp::Grant {
            mac,
            ip: Ipv4Addr::from(ip),
            expires_at,
            netboot,
            known: false,
            arch: Some("bios".into()),
            uuid: None,
        }
    }

    #[tokio::test]
    async fn lease_batches_create_nodes_and_move_addresses() {
        let (s, _d) = store().await;
        let mut hosts = s.watch_hosts();
        hosts.mark_unchanged();
        let other = MacAddr([2, 0, 0, 0, 0, 2]);
        // An OS's DHCP client gets a lease but is no node; a PXE client becomes one.
        s.commit_dhcp(&[grant(other, [10, 0, 0, 4], 400, false), grant(MAC, [10, 0, 0, 5], 500, true)], 1)
            .await
            .unwrap();
        assert!(hosts.has_changed().unwrap(), "a new node reaches DHCP's view");
        let node = s.node_by_mac(MAC).await.unwrap().unwrap();
        assert_eq!((node.ip.as_deref(), node.arch.as_deref()), (Some("10.0.0.5"), Some("bios")));
        assert!(s.node_by_mac(other).await.unwrap().is_none());
        // The same MAC moving to a new address ends its old lease.
        s.commit_dhcp(&[grant(MAC, [10, 0, 0, 6], 600, true)], 2).await.unwrap();
        let active: Vec<_> = s.live_bindings(0).await.unwrap().into_iter().filter(|l| l.mac == MAC).collect();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].ip, Ipv4Addr::new(10, 0, 0, 6));
        // Another MAC taking over an expired address replaces the row: never two leases per IP.
        s.commit_dhcp(&[grant(other, [10, 0, 0, 6], 700, false)], 3).await.unwrap();
        let on_6: Vec<_> = s.live_bindings(0).await.unwrap().into_iter().filter(|l| l.ip.octets()[3] == 6).collect();
        assert_eq!(on_6.len(), 1);
        assert_eq!(on_6[0].mac, other);
        // A decline keeps the row, as a quarantine until `until`.
        s.commit_dhcp(&[LeaseOp::Decline { mac: other, ip: Ipv4Addr::new(10, 0, 0, 6), until: 900 }], 4).await.unwrap();
        let q = s.live_bindings(800).await.unwrap();
        assert!(q.iter().any(|l| l.state == "declined" && l.expires_at == 900));
        assert!(s.live_bindings(900).await.unwrap().iter().all(|l| l.state != "declined"));
    }

    #[test]
    fn a_batch_coalesces_to_one_final_state_per_address_and_mac() {
        let (a, b) = (MAC, MacAddr([2, 0, 0, 0, 0, 2]));
        let ops = [
            grant(a, [10, 0, 0, 1], 100, false),
            grant(a, [10, 0, 0, 2], 200, false),
            LeaseOp::Release { mac: a, ip: Ipv4Addr::new(10, 0, 0, 2) },
            grant(b, [10, 0, 0, 2], 300, false),
            LeaseOp::Decline { mac: b, ip: Ipv4Addr::new(10, 0, 0, 2), until: 900 },
            grant(b, [10, 0, 0, 3], 400, false),
        ];
        let batch = LeaseBatch::coalesce(&ops);
        assert_eq!(batch.granted_macs, vec![a, b]);
        let states: Vec<_> = batch.rows.iter().map(|r| (r.ip.octets()[3], r.mac, r.state, r.expires_at)).collect();
        assert_eq!(states, [(1, a, "released", 0), (2, b, "declined", 900), (3, b, "active", 400)]);
    }

    #[test]
    fn chunks_are_powers_of_two_and_cover_everything() {
        let items: Vec<u32> = (0..1100).collect();
        let sizes: Vec<usize> = pow2_chunks(&items).map(<[u32]>::len).collect();
        assert_eq!(sizes, [512, 512, 64, 8, 4]);
        assert_eq!(pow2_chunks(&items[..0]).count(), 0);
    }

    #[tokio::test]
    async fn a_batch_with_a_mac_moving_twice_commits_cleanly() {
        let (s, _d) = store().await;
        let other = MacAddr([2, 0, 0, 0, 0, 2]);
        s.commit_dhcp(&[grant(MAC, [10, 0, 0, 1], 500, false)], 1).await.unwrap();
        let ops = [
            grant(MAC, [10, 0, 0, 2], 600, false),
            grant(MAC, [10, 0, 0, 3], 700, false),
            grant(other, [10, 0, 0, 1], 800, false),
        ];
        s.commit_dhcp(&ops, 2).await.unwrap();
        let mut live: Vec<_> =
            s.live_bindings(0).await.unwrap().into_iter().map(|l| (l.ip.octets()[3], l.mac)).collect();
        live.sort();
        assert_eq!(live, [(1, other), (3, MAC)]);
    }

    #[tokio::test]
    async fn reservations_are_unique_and_take_over_is_explicit() {
        let (s, _d) = store().await;
        let a = s.ensure_node(MAC, 1).await.unwrap();
        let b = s.ensure_node(MacAddr([2, 0, 0, 0, 0, 2]), 1).await.unwrap();
        let ip = Ipv4Addr::new(10, 0, 0, 9);
        s.commit_dhcp(&[grant(b.mac, [10, 0, 0, 9], 5000, true)], 2).await.unwrap();
        let err = s.set_reservation(a.id, Some(ip), false, 100, 3).await.unwrap_err();
        assert!(matches!(err, StoreError::LeasedElsewhere { .. }), "{err}");
        let node = s.set_reservation(a.id, Some(ip), true, 100, 3).await.unwrap();
        assert_eq!(node.reserved_ip.as_deref(), Some("10.0.0.9"));
        assert!(s.live_bindings(100).await.unwrap().iter().all(|l| l.ip != ip), "b's lease ended");
        let err = s.set_reservation(b.id, Some(ip), true, 100, 4).await.unwrap_err();
        assert!(matches!(err, StoreError::ReservedElsewhere { .. }), "{err}");
        let hosts = s.dhcp_hosts().await.unwrap();
        assert!(hosts.contains(&(MAC, Some(ip), a.hostname.clone())));
        s.set_reservation(a.id, None, false, 100, 5).await.unwrap();
        assert_eq!(s.node(a.id).await.unwrap().reserved_ip, None);
    }

    #[tokio::test]
    async fn boot_timeline_moves_forward_only_and_records_phases() {
        let (s, _d) = store().await;
        let node = s.ensure_node(MAC, 1000).await.unwrap();
        assert_eq!(node.state, NodeState::Discovered);
        let boot = s.start_boot(node.id, "tiny", None, "hash1", 2000, "test").await.unwrap();
        s.agent_transition(node.id, boot, NodeState::Stage1, "hello", 5000).await.unwrap();
        s.agent_transition(node.id, boot, NodeState::Loading, "fetch", 6000).await.unwrap();
        let err = s.agent_transition(node.id, boot, NodeState::Stage1, "again", 6500).await.unwrap_err();
        assert!(matches!(err, StoreError::BadTransition { .. }), "{err}");
        s.agent_transition(node.id, boot, NodeState::Handoff, "mounted", 9000).await.unwrap();
        s.agent_transition(node.id, boot, NodeState::Ready, "up", 12000).await.unwrap();

        let events = s.events(node.id, 0, 100).await.unwrap();
        let moves: Vec<_> = events.iter().filter_map(|e| e.state.map(|st| (st, e.phase_ms))).collect();
        assert_eq!(
            moves,
            vec![
                (NodeState::Discovered, None),
                (NodeState::Booting, Some(1000)),
                (NodeState::Stage1, Some(3000)),
                (NodeState::Loading, Some(1000)),
                (NodeState::Handoff, Some(3000)),
                (NodeState::Ready, Some(3000)),
            ]
        );
        assert_eq!(s.boot(boot).await.unwrap().unwrap().outcome.as_deref(), Some("ready"));
    }

    #[tokio::test]
    async fn a_new_boot_supersedes_the_old_token() {
        let (s, _d) = store().await;
        let node = s.ensure_node(MAC, 0).await.unwrap();
        let first = s.start_boot(node.id, "tiny", None, "h1", 1, "test").await.unwrap();
        assert!(s.boot_by_token_hash("h1").await.unwrap().is_some());
        s.start_boot(node.id, "tiny", None, "h2", 2, "test").await.unwrap();
        assert!(s.boot_by_token_hash("h1").await.unwrap().is_none(), "old token is dead");
        let err = s.agent_transition(node.id, first, NodeState::Stage1, "late", 3).await.unwrap_err();
        assert!(matches!(err, StoreError::StaleBoot(_)));
        assert_eq!(s.boot(first).await.unwrap().unwrap().outcome.as_deref(), Some("superseded"));
    }
}
