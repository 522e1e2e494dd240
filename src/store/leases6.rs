//! The `leases6` table: DHCPv6 address bindings, written in batches by
//! [`Store::commit_dhcp6`] (one transaction and one fsync per batch, as for IPv4).
//!
//! A node holds one active IPv6 address whichever of its clients asked for it
//! (firmware, iPXE, stage one: each has a DUID of its own), so a grant ends the
//! other active rows of its MAC and takes the address over from the node's
//! earlier client.

use super::db::LockKey;
use super::leases::LeaseState;
use super::nodes;
use super::{corrupt, Row, Store, StoreError, Text, Tx};
use ramboot_core::dhcp6::Grant6;
use ramboot_core::node::MacAddr;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv6Addr};

/// One DHCPv6 binding row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease6 {
    pub address: Ipv6Addr,
    /// The client's DUID, in hex.
    pub duid: String,
    pub iaid: u32,
    pub mac: Option<MacAddr>,
    pub expires_at: u64,
    pub state: LeaseState,
}

/// One change of a DHCPv6 batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease6Op {
    Grant {
        grant: Grant6,
        /// A PXE, iPXE or HTTP-boot client: it becomes a node if it is new.
        netboot: bool,
        arch: Option<String>,
    },
    /// The client gave the address back (released), or declined it: then it is
    /// set aside until `quarantined_until`.
    GiveBack { duid: Vec<u8>, address: Ipv6Addr, quarantined_until: Option<u64> },
}

/// A grant the database refused: the address is another node's (an unexpired
/// active row of another MAC) or quarantined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken6 {
    pub address: Ipv6Addr,
    pub holder: Option<MacAddr>,
}

fn lease6_from_row(row: &Row) -> Result<Lease6, StoreError> {
    let address: String = row.try_get("address")?;
    let mac: Option<String> = row.try_get("mac")?;
    let iaid: i64 = row.try_get("iaid")?;
    let expires_at: i64 = row.try_get("expires_at")?;
    Ok(Lease6 {
        address: address.parse().map_err(corrupt)?,
        duid: row.try_get("duid")?,
        iaid: u32::try_from(iaid).map_err(corrupt)?,
        mac: mac.map(|m| m.parse()).transpose().map_err(corrupt)?,
        expires_at: u64::try_from(expires_at).map_err(corrupt)?,
        state: row.try_get::<Text<_>>("state")?.0,
    })
}

fn lock_keys(ops: &[Lease6Op]) -> Vec<LockKey> {
    let mut keys = Vec::new();
    for op in ops {
        match op {
            Lease6Op::Grant { grant, .. } => {
                keys.push(LockKey::address6(grant.addr));
                keys.extend(grant.mac.map(LockKey::mac));
            }
            Lease6Op::GiveBack { address, .. } => keys.push(LockKey::address6(*address)),
        }
    }
    keys
}

/// Who holds `address` at `now` other than this client's node: an unexpired
/// active row of another node (or, for clients that name no MAC, of another
/// DUID), or a quarantine.
async fn taken_by_other(tx: &mut Tx<'_>, grant: &Grant6, now: u64) -> Result<Option<Taken6>, StoreError> {
    let row = tx
        .sql(
            "SELECT address, duid, iaid, mac, expires_at, state FROM leases6
             WHERE address = $1 AND state IN ('active', 'declined') AND expires_at > $2",
        )
        .bind(grant.addr.to_string())
        .bind(now as i64)
        .fetch_optional()
        .await?;
    let Some(row) = row else { return Ok(None) };
    let lease = lease6_from_row(&row)?;
    let theirs = match (lease.state, lease.mac, grant.mac) {
        (LeaseState::Declined, ..) => true,
        (_, Some(held), Some(wanted)) => held != wanted,
        (_, None, None) => lease.duid != hex::encode(&grant.duid),
        _ => true,
    };
    Ok(theirs.then_some(Taken6 { address: grant.addr, holder: lease.mac }))
}

impl Store {
    /// The node (MAC) holding an unexpired active IPv6 lease on `address` at `now`
    /// (Unix seconds).
    pub async fn lease6_holder(&self, address: Ipv6Addr, now: u64) -> Result<Option<MacAddr>, StoreError> {
        let row = self
            .backend
            .sql("SELECT mac FROM leases6 WHERE address = $1 AND state = 'active' AND expires_at > $2")
            .bind(address.to_string())
            .bind(now as i64)
            .fetch_optional()
            .await?;
        let mac: Option<String> = match row {
            Some(row) => row.try_get("mac")?,
            None => None,
        };
        mac.map(|m| m.parse().map_err(corrupt)).transpose()
    }

    /// Every IPv6 lease row, by address.
    pub async fn leases6(&self) -> Result<Vec<Lease6>, StoreError> {
        let rows = self
            .backend
            .sql("SELECT address, duid, iaid, mac, expires_at, state FROM leases6 ORDER BY address")
            .fetch_all()
            .await?;
        rows.iter().map(lease6_from_row).collect()
    }

    /// The IPv6 lease rows of one node (an active one, and addresses it held before).
    pub async fn leases6_of(&self, mac: MacAddr) -> Result<Vec<Lease6>, StoreError> {
        let rows = self
            .backend
            .sql(
                "SELECT address, duid, iaid, mac, expires_at, state FROM leases6 WHERE mac = $1
                 ORDER BY expires_at DESC",
            )
            .bind(mac.to_string())
            .fetch_all()
            .await?;
        rows.iter().map(lease6_from_row).collect()
    }

    /// What the DHCPv6 pool is rebuilt from at start: live bindings, and declined
    /// addresses still in quarantine.
    pub async fn live_bindings6(&self, now: u64) -> Result<Vec<Lease6>, StoreError> {
        let rows = self
            .backend
            .sql(
                "SELECT address, duid, iaid, mac, expires_at, state FROM leases6
                 WHERE state IN ('active', 'declined') AND expires_at > $1",
            )
            .bind(now as i64)
            .fetch_all()
            .await?;
        rows.iter().map(lease6_from_row).collect()
    }

    /// Apply a batch of DHCPv6 changes in one transaction (group commit). A grant
    /// of an address the database holds for another node is left out and returned:
    /// the caller must not send its Reply. Network-boot clients become nodes, and
    /// a node's record shows its IPv6 address.
    pub async fn commit_dhcp6(&self, ops: &[Lease6Op], now_ms: i64) -> Result<Vec<Taken6>, StoreError> {
        let mut tx = self.dhcp_writer.begin_lease_write(&lock_keys(ops)).await?;
        let now = u64::try_from(now_ms / 1000).unwrap_or(0);
        let mut taken = Vec::new();
        let mut new_nodes = false;
        for op in ops {
            match op {
                Lease6Op::Grant { grant, netboot, arch } => {
                    if let Some(t) = taken_by_other(&mut tx, grant, now).await? {
                        taken.push(t);
                        continue;
                    }
                    let mac = grant.mac.map(|m| m.to_string());
                    if let Some(mac) = &mac {
                        tx.sql(
                            "UPDATE leases6 SET state = 'released', updated_at_ms = $1
                             WHERE state = 'active' AND mac = $2 AND address <> $3",
                        )
                        .bind(now_ms)
                        .bind(mac.clone())
                        .bind(grant.addr.to_string())
                        .execute()
                        .await?;
                    }
                    tx.sql(
                        "INSERT INTO leases6 (address, duid, iaid, mac, expires_at, state, updated_at_ms)
                         VALUES ($1, $2, $3, $4, $5, 'active', $6)
                         ON CONFLICT (address) DO UPDATE SET duid = excluded.duid, iaid = excluded.iaid,
                             mac = excluded.mac, expires_at = excluded.expires_at, state = 'active',
                             updated_at_ms = excluded.updated_at_ms",
                    )
                    .bind(grant.addr.to_string())
                    .bind(hex::encode(&grant.duid))
                    .bind(i64::from(grant.iaid))
                    .bind(mac)
                    .bind(grant.expires_at as i64)
                    .bind(now_ms)
                    .execute()
                    .await?;
                    let Some(mac) = grant.mac else { continue };
                    let note = format!("DHCPv6 lease {} (until unix {})", grant.addr, grant.expires_at);
                    let facts = (arch.as_deref(), None);
                    let client = (mac, IpAddr::V6(grant.addr));
                    new_nodes |= nodes::record_dhcp_grant(&mut tx, client, *netboot, facts, &note, now_ms).await?;
                }
                Lease6Op::GiveBack { duid, address, quarantined_until } => {
                    let (state, until) = match quarantined_until {
                        Some(until) => (LeaseState::Declined, Some(*until as i64)),
                        None => (LeaseState::Released, None),
                    };
                    tx.sql(
                        "UPDATE leases6 SET state = $1, expires_at = COALESCE($2, expires_at), updated_at_ms = $3
                         WHERE address = $4 AND duid = $5",
                    )
                    .bind(Text(state))
                    .bind(until)
                    .bind(now_ms)
                    .bind(address.to_string())
                    .bind(hex::encode(duid))
                    .execute()
                    .await?;
                }
            }
        }
        tx.commit().await?;
        if new_nodes {
            self.hosts_changed();
        }
        Ok(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{store, MAC};

    fn grant(mac: Option<MacAddr>, duid: &[u8], addr: &str, expires_at: u64) -> Lease6Op {
        Lease6Op::Grant {
            grant: Grant6 { mac, duid: duid.to_vec(), iaid: 1, addr: addr.parse().unwrap(), expires_at },
            netboot: true,
            arch: Some("efi-x64".into()),
        }
    }

    #[tokio::test]
    async fn a_node_holds_one_ipv6_address_across_its_clients() {
        let (s, _d) = store().await;
        let taken = s.commit_dhcp6(&[grant(Some(MAC), &[0, 4, 1], "fd00::100", 500)], 1_000).await.unwrap();
        assert!(taken.is_empty());
        let node = s.node_by_mac(MAC).await.unwrap().expect("a netboot client becomes a node");
        assert_eq!(node.ip.as_deref(), Some("fd00::100"));
        assert_eq!(s.lease6_holder("fd00::100".parse().unwrap(), 2).await.unwrap(), Some(MAC));
        // Stage one (another DUID) takes the same address over.
        s.commit_dhcp6(&[grant(Some(MAC), &[0, 3, 0, 1, 2], "fd00::100", 600)], 2_000).await.unwrap();
        let live = s.live_bindings6(2).await.unwrap();
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!((live[0].duid.as_str(), live[0].expires_at), ("0003000102", 600));
        // Moving to another address ends the old row.
        s.commit_dhcp6(&[grant(Some(MAC), &[0, 3, 0, 1, 2], "fd00::101", 700)], 3_000).await.unwrap();
        let live = s.live_bindings6(3).await.unwrap();
        assert_eq!(live.iter().map(|l| l.address.to_string()).collect::<Vec<_>>(), ["fd00::101"]);
        // Another node cannot take a live address; it can once it expired.
        let other = MacAddr([2, 0, 0, 0, 0, 9]);
        let taken = s.commit_dhcp6(&[grant(Some(other), &[0, 4, 9], "fd00::101", 800)], 4_000).await.unwrap();
        assert_eq!(taken, [Taken6 { address: "fd00::101".parse().unwrap(), holder: Some(MAC) }]);
        let taken = s.commit_dhcp6(&[grant(Some(other), &[0, 4, 9], "fd00::101", 900)], 701_000).await.unwrap();
        assert!(taken.is_empty());
        // Declined: quarantined until then, released: free.
        let decline = Lease6Op::GiveBack {
            duid: vec![0, 4, 9],
            address: "fd00::101".parse().unwrap(),
            quarantined_until: Some(2_000),
        };
        s.commit_dhcp6(&[decline], 702_000).await.unwrap();
        let live = s.live_bindings6(1_000).await.unwrap();
        assert_eq!(live[0].state, LeaseState::Declined);
        assert!(s.lease6_holder("fd00::101".parse().unwrap(), 1_000).await.unwrap().is_none());
        assert_eq!(s.leases6().await.unwrap().len(), 2);
        let mine = s.leases6_of(MAC).await.unwrap();
        assert_eq!(mine.len(), 1, "its released row; the other node took the one it moved to: {mine:?}");
        assert_eq!(mine[0].state, LeaseState::Released);
    }
}
