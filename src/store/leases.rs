//! The `leases` table: one row per address DHCP has handed out, released or
//! quarantined, written in batches by [`Store::commit_dhcp`].

use super::changes::{self, LeaseChange};
use super::db::{sync, JsonColumn, LockKey};
use super::events::{self, EventKind, NewEvent};
use super::nodes;
use super::{corrupt, Row, Store, StoreError, Text, Tx};
use ramboot_core::node::MacAddr;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub expires_at: u64,
    // A plain string in the OpenAPI document, as before the enum.
    pub state: LeaseState,
}

/// Where a lease row stands. Stored and serialised as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    Active,
    Released,
    /// The client declined the address: quarantined until `expires_at`.
    Declined,
}

impl LeaseState {
    pub const ALL: [LeaseState; 3] = [LeaseState::Active, LeaseState::Released, LeaseState::Declined];

    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Active => "active",
            LeaseState::Released => "released",
            LeaseState::Declined => "declined",
        }
    }
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
    /// ProxyDHCP saw a network-boot client use `ip` (another server leased it): the
    /// client becomes a node if it is new, and `ip` is where its boot token may go.
    Seen {
        mac: MacAddr,
        ip: Ipv4Addr,
        arch: Option<String>,
        uuid: Option<String>,
    },
}

/// A grant the database refused: the address is another MAC's (an unexpired active
/// lease another server granted) or quarantined, until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub ip: Ipv4Addr,
    pub holder: MacAddr,
    pub expires_at: u64,
    pub declined: bool,
}

/// DHCP's lease writer on a SQLite database: see [`Store::sync_lease_writer`].
pub struct SyncLeaseWriter {
    conn: rusqlite::Connection,
    file: sync::SqliteFile,
}

/// `items` as one JSON array of their text forms (for [`Tx::json_texts`]).
fn json_strings<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    serde_json::Value::Array(items.into_iter().map(|item| item.to_string().into()).collect()).to_string()
}

/// The columns of a batch's lease rows, as [`LeaseBatch::rows_json`] lays them out.
const LEASE_ROW: [JsonColumn; 4] =
    [JsonColumn::Text("ip"), JsonColumn::Text("mac"), JsonColumn::Int("expires_at"), JsonColumn::Text("state")];

/// The final state of every address a batch of [`LeaseOp`]s touches, in order.
#[derive(Debug, Default, PartialEq, Eq)]
struct LeaseBatch {
    /// MACs granted an address: their other active leases end.
    granted_macs: Vec<MacAddr>,
    rows: Vec<LeaseChange>,
}

impl LeaseBatch {
    /// Replay `ops` in order and keep each address's last state. A MAC granted
    /// two addresses in one batch keeps the later one (the earlier row is released),
    /// so the batch never holds two active rows for one MAC or one address.
    fn coalesce(ops: &[LeaseOp]) -> LeaseBatch {
        let mut batch = LeaseBatch::default();
        let mut row_of_ip: HashMap<Ipv4Addr, usize> = HashMap::new();
        let mut active_of_mac: HashMap<MacAddr, Ipv4Addr> = HashMap::new();
        let mut put = |batch: &mut LeaseBatch, row: LeaseChange| match row_of_ip.get(&row.ip) {
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
                        put(&mut batch, LeaseChange { ip: old, mac, expires_at: 0, state: LeaseState::Released });
                    }
                    if !batch.granted_macs.contains(&mac) {
                        batch.granted_macs.push(mac);
                    }
                    put(&mut batch, LeaseChange { ip, mac, expires_at, state: LeaseState::Active });
                }
                LeaseOp::Release { mac, ip } => {
                    if active_of_mac.get(&mac) == Some(&ip) {
                        active_of_mac.remove(&mac);
                    }
                    put(&mut batch, LeaseChange { ip, mac, expires_at: 0, state: LeaseState::Released });
                }
                LeaseOp::Decline { mac, ip, until } => {
                    if active_of_mac.get(&mac) == Some(&ip) {
                        active_of_mac.remove(&mac);
                    }
                    put(&mut batch, LeaseChange { ip, mac, expires_at: until, state: LeaseState::Declined });
                }
                // No lease row: another server owns the address.
                LeaseOp::Seen { .. } => {}
            }
        }
        batch
    }

    /// The rows as one JSON array of `[ip, mac, expires_at, state]` ([`LEASE_ROW`]).
    fn rows_json(&self) -> String {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| serde_json::json!([r.ip.to_string(), r.mac.to_string(), r.expires_at, r.state]))
            .collect();
        serde_json::Value::Array(rows).to_string()
    }
}

/// What a batch writes: every address and every MAC its operations name (a MAC's
/// other active leases, which a grant ends, are covered by the MAC's key).
fn lock_keys(ops: &[LeaseOp]) -> Vec<LockKey> {
    ops.iter()
        .flat_map(|op| {
            let (LeaseOp::Grant { mac, ip, .. }
            | LeaseOp::Release { mac, ip }
            | LeaseOp::Decline { mac, ip, .. }
            | LeaseOp::Seen { mac, ip, .. }) = op;
            [LockKey::address(*ip), LockKey::mac(*mac)]
        })
        .collect()
}

/// The batch's grants whose address the database holds for another MAC (an
/// unexpired active lease that the batch does not end: its holder neither releases
/// it nor moves elsewhere in `ops`) or in quarantine (an unexpired decline), at `now`.
async fn taken_grants(
    tx: &mut Tx<'_>,
    ops: &[LeaseOp],
    batch: &LeaseBatch,
    now: u64,
) -> Result<Vec<Taken>, StoreError> {
    let lets_go = |holder: MacAddr, ip: Ipv4Addr| {
        ops.iter().any(|op| match *op {
            LeaseOp::Grant { mac, .. } => mac == holder,
            LeaseOp::Release { mac, ip: at } | LeaseOp::Decline { mac, ip: at, .. } => mac == holder && at == ip,
            LeaseOp::Seen { .. } => false,
        })
    };
    let grants: Vec<&LeaseChange> = batch.rows.iter().filter(|r| r.state == LeaseState::Active).collect();
    if grants.is_empty() {
        return Ok(Vec::new());
    }
    let addresses = json_strings(grants.iter().map(|g| g.ip));
    let sql = format!(
        "SELECT ip, mac, expires_at, state FROM leases
         WHERE state IN ('active', 'declined') AND expires_at > $1 AND ip IN ({})",
        tx.json_texts(2)
    );
    let rows = tx.sql(&sql).bind(now as i64).bind(addresses).fetch_all().await?;
    // Renewals find their own rows: look each up by address, not by a scan.
    let grantee: HashMap<Ipv4Addr, MacAddr> = grants.iter().map(|g| (g.ip, g.mac)).collect();
    let mut taken = Vec::new();
    for row in rows {
        let held = lease_from_row(&row)?;
        let declined = held.state == LeaseState::Declined;
        let granted_to = grantee.get(&held.ip).copied();
        if declined || (granted_to != Some(held.mac) && !lets_go(held.mac, held.ip)) {
            taken.push(Taken { ip: held.ip, holder: held.mac, expires_at: held.expires_at, declined });
        }
    }
    Ok(taken)
}

pub(super) fn lease_from_row(row: &Row) -> Result<Lease, StoreError> {
    let ip: String = row.try_get("ip")?;
    let mac: String = row.try_get("mac")?;
    let expires_at: i64 = row.try_get("expires_at")?;
    Ok(Lease {
        ip: ip.parse().map_err(corrupt)?,
        mac: mac.parse().map_err(corrupt)?,
        expires_at: u64::try_from(expires_at).map_err(corrupt)?,
        state: row.try_get::<Text<_>>("state")?.0,
    })
}

/// The MAC holding an unexpired active lease on `ip` at `now`, other than `mac`.
pub(super) async fn holder_other_than(
    tx: &mut Tx<'_>,
    ip: Ipv4Addr,
    mac: &str,
    now: u64,
) -> Result<Option<String>, StoreError> {
    let row = tx
        .sql("SELECT mac FROM leases WHERE ip = $1 AND state = 'active' AND expires_at > $2 AND mac <> $3")
        .bind(ip.to_string())
        .bind(now as i64)
        .bind(mac)
        .fetch_optional()
        .await?;
    Ok(row.map(|row| row.try_get("mac")).transpose()?)
}

/// End whatever lease is on `ip` (an operator moved the address to another node).
pub(super) async fn release_ip(tx: &mut Tx<'_>, ip: Ipv4Addr, now_ms: i64) -> Result<(), StoreError> {
    tx.sql("UPDATE leases SET state = $1, updated_at_ms = $2 WHERE ip = $3")
        .bind(Text(LeaseState::Released))
        .bind(now_ms)
        .bind(ip.to_string())
        .execute()
        .await?;
    Ok(())
}

impl Store {
    /// The MAC holding an unexpired active lease on `ip` at `now` (Unix seconds).
    pub async fn lease_holder(&self, ip: Ipv4Addr, now: u64) -> Result<Option<MacAddr>, StoreError> {
        let row = self
            .backend
            .sql("SELECT mac FROM leases WHERE ip = $1 AND state = 'active' AND expires_at > $2")
            .bind(ip.to_string())
            .bind(now as i64)
            .fetch_optional()
            .await?;
        row.map(|row| row.try_get::<String>("mac")?.parse().map_err(corrupt)).transpose()
    }

    /// Active leases that have not expired at `now` (Unix seconds), for rebuilding the pool.
    pub async fn active_leases(&self, now: u64) -> Result<Vec<Lease>, StoreError> {
        let rows = self
            .backend
            .sql("SELECT ip, mac, expires_at, state FROM leases WHERE state = 'active' AND expires_at > $1")
            .bind(now as i64)
            .fetch_all()
            .await?;
        rows.iter().map(lease_from_row).collect()
    }

    /// The lease rows of one MAC (an active one, and addresses it held before).
    pub async fn leases_of(&self, mac: MacAddr) -> Result<Vec<Lease>, StoreError> {
        let rows = self
            .backend
            .sql("SELECT ip, mac, expires_at, state FROM leases WHERE mac = $1 ORDER BY expires_at DESC")
            .bind(mac.to_string())
            .fetch_all()
            .await?;
        rows.iter().map(lease_from_row).collect()
    }

    pub async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let rows = self.backend.sql("SELECT ip, mac, expires_at, state FROM leases ORDER BY ip").fetch_all().await?;
        rows.iter().map(lease_from_row).collect()
    }

    /// What the DHCP pools are rebuilt from at start: live leases, and declined
    /// addresses still in quarantine.
    pub async fn live_bindings(&self, now: u64) -> Result<Vec<Lease>, StoreError> {
        let rows = self.backend.sql(
            "SELECT ip, mac, expires_at, state FROM leases WHERE state IN ('active', 'declined') AND expires_at > $1",
        )
        .bind(now as i64)
        .fetch_all()
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
    ///
    /// A grant of an address the database says is someone else's is left out (the
    /// rest of the batch is written) and returned: the caller must not send its ACK.
    /// With one server this never happens; with several on one database it is how a
    /// lost race shows. Check and write are one step: the transaction holds the
    /// lock of every address and MAC it touches (`Backend::begin_lease_write`), so
    /// lease commits of several servers run side by side unless they meet.
    pub async fn commit_dhcp(&self, ops: &[LeaseOp], now_ms: i64) -> Result<Vec<Taken>, StoreError> {
        let tx = self.dhcp_writer.begin_lease_write(&lock_keys(ops)).await?;
        self.commit_lease_batch(tx, ops, now_ms).await
    }

    /// A connection of its own for DHCP's lease committer on a SQLite database,
    /// used from one thread with [`Store::commit_dhcp_sync`]; `None` on PostgreSQL
    /// (whose driver has no thread of its own to hand each statement to).
    pub fn sync_lease_writer(&self) -> Result<Option<SyncLeaseWriter>, StoreError> {
        let Some(file) = &self.dhcp_writer.sqlite else { return Ok(None) };
        Ok(Some(SyncLeaseWriter { conn: sync::open(&file.path)?, file: file.clone() }))
    }

    /// [`Store::commit_dhcp`] on the synchronous writer: the whole batch, commit
    /// and fsync included, runs on the calling thread (a thread that may block).
    pub fn commit_dhcp_sync(
        &self,
        writer: &mut SyncLeaseWriter,
        ops: &[LeaseOp],
        now_ms: i64,
    ) -> Result<Vec<Taken>, StoreError> {
        // Behind the group of writers already waiting, if any (see `SqliteFile`).
        let turn = futures_executor::block_on(sync::take_turn(&writer.file.turns))?;
        let tx = Tx::sync(sync::Conn::Borrowed(&mut writer.conn), turn, self.dhcp_writer.changes.clone())?;
        // Every statement of a synchronous transaction is ready when first polled.
        let committed = futures_executor::block_on(self.commit_lease_batch(tx, ops, now_ms));
        if !writer.conn.is_autocommit() {
            // A failed COMMIT whose ROLLBACK failed too left the connection inside
            // its transaction, holding SQLite's lock: a new one, or the next try.
            if let Ok(conn) = sync::open(&writer.file.path) {
                writer.conn = conn;
            }
        }
        committed
    }

    /// The batch's changes in `tx`, which holds the write lock; committed.
    async fn commit_lease_batch(&self, mut tx: Tx<'_>, ops: &[LeaseOp], now_ms: i64) -> Result<Vec<Taken>, StoreError> {
        let now = u64::try_from(now_ms / 1000).unwrap_or(0);
        let mut batch = LeaseBatch::coalesce(ops);
        let taken = taken_grants(&mut tx, ops, &batch, now).await?;
        // Only a batch that lost a race is coalesced again, without those grants.
        let kept: std::borrow::Cow<[LeaseOp]> = if taken.is_empty() {
            std::borrow::Cow::Borrowed(ops)
        } else {
            let refused = |op: &LeaseOp| matches!(op, LeaseOp::Grant { ip, .. } if taken.iter().any(|t| t.ip == *ip));
            let kept: Vec<LeaseOp> = ops.iter().filter(|op| !refused(op)).cloned().collect();
            batch = LeaseBatch::coalesce(&kept);
            std::borrow::Cow::Owned(kept)
        };
        let ops = &kept[..];
        // Each step is one statement over a JSON array, whatever the batch's size:
        // one shape to prepare, and one round trip to the database's thread (SQLite)
        // or server (PostgreSQL) per step, not one per row or per chunk.
        if !batch.granted_macs.is_empty() {
            let sql = format!(
                "UPDATE leases SET state = 'released', updated_at_ms = $1 WHERE state = 'active' AND mac IN ({})",
                tx.json_texts(2)
            );
            tx.sql(&sql).bind(now_ms).bind(json_strings(&batch.granted_macs)).execute().await?;
        }
        if !batch.rows.is_empty() {
            // A grant takes the address whatever the row said (the DHCP core chose a
            // free one); a release or decline only touches the client's own row.
            // (`WHERE true`: SQLite needs a WHERE before ON CONFLICT after a SELECT.)
            let sql = format!(
                "INSERT INTO leases (ip, mac, expires_at, state, updated_at_ms)
                 SELECT ip, mac, expires_at, state, $1 FROM ({}) AS batch WHERE true
                 ON CONFLICT (ip) DO UPDATE SET mac = excluded.mac,
                     expires_at = CASE WHEN excluded.state = 'released' THEN leases.expires_at
                                       ELSE excluded.expires_at END,
                     state = excluded.state, updated_at_ms = excluded.updated_at_ms
                 WHERE excluded.state = 'active' OR leases.mac = excluded.mac",
                tx.json_rows(2, &LEASE_ROW)
            );
            tx.sql(&sql).bind(now_ms).bind(batch.rows_json()).execute().await?;
        }
        let mut new_nodes = false;
        for op in ops {
            if let LeaseOp::Seen { mac, ip, arch, uuid } = op {
                let (node, created) = nodes::upsert_node_created(&mut tx, *mac, now_ms).await?;
                new_nodes |= created;
                nodes::record_dhcp_facts(&mut tx, *mac, *ip, arch.as_deref(), uuid.as_deref(), now_ms).await?;
                if created {
                    let message = format!("seen at {ip} in a proxyDHCP exchange");
                    events::insert(&mut tx, &NewEvent::note(node, None, EventKind::Dhcp, &message), now_ms).await?;
                }
                continue;
            }
            let LeaseOp::Grant { mac, ip, expires_at, netboot, known, arch, uuid } = op else { continue };
            if !netboot && !known {
                continue;
            }
            let note = format!("DHCP lease {ip} (until unix {expires_at})");
            let facts = (arch.as_deref(), uuid.as_deref());
            new_nodes |=
                nodes::record_dhcp_grant(&mut tx, (*mac, (*ip).into()), *netboot, facts, &note, now_ms).await?;
        }
        tx.commit().await?;
        if new_nodes {
            self.hosts_changed();
        }
        // Tell the other servers on a PostgreSQL database which rows this wrote
        // (see `changes`), after the commit: PostgreSQL serialises the commits of
        // transactions that notify, fsync included, which would make every
        // server's lease commits take turns. A notice lost to a crash in between
        // only costs a peer a lost race, which the check above settles. The older
        // active lease a grant ends for its MAC is not listed: a server that learns
        // the grant moves the MAC off its old address by itself.
        if self.dhcp_writer.is_postgres() && !batch.rows.is_empty() {
            let origin = self.backend.changes.origin;
            let payloads: Vec<String> =
                batch.rows.chunks(changes::ROWS_PER_NOTICE).map(|rows| changes::encode_leases(origin, rows)).collect();
            if let Err(e) = self.dhcp_writer.notify_unsynced(changes::LEASES_CHANNEL, &payloads).await {
                tracing::warn!(error = %e, "lease change notice not sent; peers learn these leases when they race for them");
            }
        }
        Ok(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{grant, store, MAC};

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
        let taken = s.commit_dhcp(&[grant(other, [10, 0, 0, 6], 700, false)], 601_000).await.unwrap();
        assert_eq!(taken, []);
        let on_6: Vec<_> = s.live_bindings(0).await.unwrap().into_iter().filter(|l| l.ip.octets()[3] == 6).collect();
        assert_eq!(on_6.len(), 1);
        assert_eq!(on_6[0].mac, other);
        // A decline keeps the row, as a quarantine until `until`.
        s.commit_dhcp(&[LeaseOp::Decline { mac: other, ip: Ipv4Addr::new(10, 0, 0, 6), until: 900 }], 602_000)
            .await
            .unwrap();
        let q = s.live_bindings(800).await.unwrap();
        assert!(q.iter().any(|l| l.state == LeaseState::Declined && l.expires_at == 900));
        assert!(s.live_bindings(900).await.unwrap().iter().all(|l| l.state != LeaseState::Declined));
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
        let states: Vec<_> =
            batch.rows.iter().map(|r| (r.ip.octets()[3], r.mac, r.state.as_str(), r.expires_at)).collect();
        assert_eq!(states, [(1, a, "released", 0), (2, b, "declined", 900), (3, b, "active", 400)]);
    }

    #[tokio::test]
    async fn a_large_batch_is_written_whole_and_checked_whole() {
        let (s, _d) = store().await;
        let mac = |i: u32| MacAddr([2, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        let ip = |i: u32| [10, 1, (i >> 8) as u8, i as u8];
        let grants: Vec<LeaseOp> = (0..1100).map(|i| grant(mac(i), ip(i), 5_000, false)).collect();
        assert_eq!(s.commit_dhcp(&grants, 1_000).await.unwrap(), []);
        let live = s.live_bindings(0).await.unwrap();
        assert_eq!(live.len(), 1100);
        assert!(live.iter().all(|l| l.state == LeaseState::Active && l.expires_at == 5_000));
        // Every MAC moves to the address of the next one: all old rows end, all new
        // ones are active, and none of them is another's (the batch lets them go).
        let moved: Vec<LeaseOp> = (0..1100).map(|i| grant(mac(i), ip((i + 1) % 1100), 6_000, false)).collect();
        assert_eq!(s.commit_dhcp(&moved, 2_000).await.unwrap(), []);
        let live = s.live_bindings(0).await.unwrap();
        assert_eq!(live.len(), 1100);
        let leased = |i: u32| live.iter().find(|l| l.mac == mac(i)).map(|l| l.ip.octets());
        assert!((0..1100).all(|i| leased(i) == Some(ip((i + 1) % 1100))), "every MAC on its new address");
        // A stranger asking for one of them, in a later batch, is refused that one.
        let stranger = MacAddr([2, 0, 0, 0xff, 0xff, 0xff]);
        let taken = s.commit_dhcp(&[grant(stranger, ip(7), 7_000, false)], 3_000).await.unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].holder, mac(6));
    }

    #[tokio::test]
    async fn the_synchronous_writer_commits_as_the_pool_does() {
        let (s, _d) = crate::store::testing::sqlite_store().await;
        let mut writer = s.sync_lease_writer().unwrap().expect("SQLite has one");
        let mut hosts = s.watch_hosts();
        hosts.mark_unchanged();
        let other = MacAddr([2, 0, 0, 0, 0, 2]);
        let ops = [grant(other, [10, 0, 0, 4], 400, false), grant(MAC, [10, 0, 0, 5], 500, true)];
        assert_eq!(s.commit_dhcp_sync(&mut writer, &ops, 1).unwrap(), []);
        // A network-boot client became a node, with its lease as an event, and
        // DHCP's view heard of it.
        assert!(hosts.has_changed().unwrap());
        let node = s.node_by_mac(MAC).await.unwrap().unwrap();
        assert_eq!((node.ip.as_deref(), node.arch.as_deref()), (Some("10.0.0.5"), Some("bios")));
        assert!(s.node_by_mac(other).await.unwrap().is_none());
        // The pool's connection sees what the synchronous one committed, and the
        // taken check reads rows back through it.
        assert_eq!(s.live_bindings(0).await.unwrap().len(), 2);
        let stranger = MacAddr([2, 0, 0, 0, 0, 3]);
        let taken = s.commit_dhcp_sync(&mut writer, &[grant(stranger, [10, 0, 0, 5], 900, false)], 2).unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!((taken[0].holder, taken[0].expires_at), (MAC, 500));
        // Writes through the pool and through the writer take turns on one file.
        s.commit_dhcp(&[grant(stranger, [10, 0, 0, 6], 900, false)], 3).await.unwrap();
        s.commit_dhcp_sync(&mut writer, &[LeaseOp::Release { mac: stranger, ip: Ipv4Addr::new(10, 0, 0, 6) }], 4)
            .unwrap();
        let rows = s.leases().await.unwrap();
        let six = rows.iter().find(|l| l.ip == Ipv4Addr::new(10, 0, 0, 6)).unwrap();
        assert_eq!(six.state, LeaseState::Released);
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
        assert_eq!(s.commit_dhcp(&ops, 2).await.unwrap(), [], "MAC moves off .1 in this batch");
        let mut live: Vec<_> =
            s.live_bindings(0).await.unwrap().into_iter().map(|l| (l.ip.octets()[3], l.mac)).collect();
        live.sort();
        assert_eq!(live, [(1, other), (3, MAC)]);
    }

    /// What a second server sharing the database sees: an address the other one
    /// granted (its pool did not know) is refused, the rest of the batch is written,
    /// and the holder keeps it; a quarantine is respected too.
    #[tokio::test]
    async fn a_grant_of_an_address_another_server_holds_is_refused_alone() {
        let (s, _d) = store().await;
        let (other, third) = (MacAddr([2, 0, 0, 0, 0, 2]), MacAddr([2, 0, 0, 0, 0, 3]));
        s.commit_dhcp(&[grant(other, [10, 0, 0, 7], 500, false)], 1_000).await.unwrap();
        let taken = s
            .commit_dhcp(&[grant(MAC, [10, 0, 0, 7], 600, true), grant(third, [10, 0, 0, 8], 600, false)], 2_000)
            .await
            .unwrap();
        assert_eq!(taken, [Taken { ip: Ipv4Addr::new(10, 0, 0, 7), holder: other, expires_at: 500, declined: false }]);
        let mut live: Vec<_> =
            s.live_bindings(2).await.unwrap().into_iter().map(|l| (l.ip.octets()[3], l.mac)).collect();
        live.sort();
        assert_eq!(live, [(7, other), (8, third)], "the refused grant wrote nothing");
        assert!(s.node_by_mac(MAC).await.unwrap().is_none(), "nor made a node");
        // Once the lease has expired, the address can be granted.
        assert_eq!(s.commit_dhcp(&[grant(MAC, [10, 0, 0, 7], 900, true)], 501_000).await.unwrap(), []);
        // A quarantine (decline) holds against everyone until it ends.
        s.commit_dhcp(&[LeaseOp::Decline { mac: third, ip: Ipv4Addr::new(10, 0, 0, 8), until: 950 }], 502_000)
            .await
            .unwrap();
        let taken = s.commit_dhcp(&[grant(other, [10, 0, 0, 8], 990, false)], 503_000).await.unwrap();
        assert_eq!(taken.iter().map(|t| (t.ip.octets()[3], t.declined)).collect::<Vec<_>>(), [(8, true)]);
    }

    /// Two servers on one PostgreSQL database commit at the same moment: batches
    /// that share an address race, and exactly one grant of it wins; batches that
    /// share nothing both go through. (On SQLite: one server, run in turn.)
    #[tokio::test]
    async fn concurrent_commits_from_two_servers_never_lease_an_address_twice() {
        let (a, guard) = store().await;
        let b = match guard.url() {
            Some(url) => Store::open(url).await.unwrap(),
            None => a.clone(),
        };
        for round in 0..40u8 {
            let mac = |server: u8, n: u8| MacAddr([2, server, n, 0, 0, round]);
            // Both want 10.0.1.<round> for a client of theirs; each also grants an
            // address nobody else wants.
            let ops_a = [
                grant(mac(0xa, 1), [10, 0, 1, round], 9_000, false),
                grant(mac(0xa, 2), [10, 0, 2, round], 9_000, false),
            ];
            let ops_b = [
                grant(mac(0xb, 1), [10, 0, 1, round], 9_000, false),
                grant(mac(0xb, 2), [10, 0, 3, round], 9_000, false),
            ];
            let (ra, rb) = tokio::join!(a.commit_dhcp(&ops_a, 1), b.commit_dhcp(&ops_b, 1));
            let (ta, tb) = (ra.unwrap(), rb.unwrap());
            let lost: Vec<_> = ta.iter().chain(&tb).map(|t| t.ip).collect();
            assert_eq!(
                lost,
                [Ipv4Addr::new(10, 0, 1, round)],
                "round {round}: exactly one grant of the contested address loses"
            );
        }
        let live = a.live_bindings(2).await.unwrap();
        let mut by_ip = HashMap::new();
        let mut by_mac = HashMap::new();
        for l in &live {
            assert!(by_ip.insert(l.ip, l.mac).is_none(), "{} leased twice", l.ip);
            assert!(by_mac.insert(l.mac, l.ip).is_none(), "{} holds two leases", l.mac);
        }
        for net in 1..=3 {
            assert_eq!(live.iter().filter(|l| l.ip.octets()[2] == net).count(), 40, "10.0.{net}.x: one lease each");
        }
    }
}

/// What one lease commit costs in CPU, through each committer path: not a test but
/// a measurement (`#[ignore]`d), run on one core and a real disk:
/// `RAMBOOT_COMMIT_BATCH=6 taskset -c 0 cargo test --release --lib commit_cpu -- --ignored --nocapture`.
#[cfg(test)]
mod commit_cpu {
    use super::*;
    use crate::store::testing::{grant, process_cpu_seconds as cpu_seconds};

    #[tokio::test(flavor = "current_thread")]
    #[ignore = "a measurement, not a test"]
    async fn commit_cpu_per_batch() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
        let mut writer = store.sync_lease_writer().unwrap().unwrap();
        let per: u32 = std::env::var("RAMBOOT_COMMIT_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
        const BATCHES: u32 = 2000;
        let batch = |b: u32| -> Vec<LeaseOp> {
            let lease = |i: u32| {
                let mac = MacAddr([2, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
                grant(mac, [10, 1, (i >> 8) as u8, i as u8], 5_000_000, false)
            };
            (0..per).map(|k| lease((b * per + k) % 15_000)).collect()
        };
        for path in ["synchronous writer (SQLite's DHCP committer)", "pool (sqlx)"] {
            let (cpu, wall) = (cpu_seconds(), std::time::Instant::now());
            for b in 0..BATCHES {
                if path.starts_with("pool") {
                    store.commit_dhcp(&batch(b), i64::from(b)).await.unwrap();
                } else {
                    store.commit_dhcp_sync(&mut writer, &batch(b), i64::from(b)).unwrap();
                }
            }
            let cpu_us = (cpu_seconds() - cpu) * 1e6 / f64::from(BATCHES);
            let wall_us = wall.elapsed().as_secs_f64() * 1e6 / f64::from(BATCHES);
            eprintln!("{path}, {per} lease(s) per batch: {cpu_us:.0} us CPU and {wall_us:.0} us wall per commit");
        }
    }
}
