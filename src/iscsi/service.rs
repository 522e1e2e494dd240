//! ramboot's side of iSCSI: from the store's volumes and attachments to exports on
//! the target, and back (reconcile). Backing files live in `volumes_dir`, one
//! sparse file per volume, deleted only when the volume itself is deleted.

use super::{ensure_backing, Backend, Chap, Export, IscsiError, Lun, Repair};
use crate::config::IscsiConfig;
use crate::store::{Actor, NodeId, Store, StoreError, Volume};
use ramboot_core::plan::VolumeWanted;
use std::net::IpAddr;
use std::path::PathBuf;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Iscsi(#[from] IscsiError),
    #[error("invalid volume {0}")]
    Invalid(String),
    #[error("generating a CHAP secret: {0}")]
    Random(String),
}

/// A node's credentials: its CHAP secret and, if mutual CHAP is on, the target's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSecrets {
    pub chap: String,
    pub mutual: Option<String>,
}

/// Where a node is now, as far as ramboot knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAddress {
    /// From the caller: the address the node's boot is bound to.
    Is(Option<IpAddr>),
    /// The node's last DHCP lease, from the store.
    Stored,
}

/// The export ramboot wants for a node with these volumes (none: no export).
pub fn desired_export(
    cfg: &IscsiConfig,
    node: NodeId,
    secrets: &NodeSecrets,
    address: Option<IpAddr>,
    volumes: &[Volume],
) -> Option<Export> {
    let luns: Vec<Lun> = volumes
        .iter()
        .filter(|v| v.node_id == Some(node))
        .filter_map(|v| v.lun.map(|number| Lun { number, backing: backing_path(cfg, &v.name) }))
        .collect();
    (!luns.is_empty()).then(|| Export {
        target_iqn: cfg.target_iqn(node),
        initiator_iqn: cfg.initiator_iqn(node),
        initiator_address: address,
        chap: Chap { user: IscsiConfig::chap_user(node), secret: secrets.chap.clone() },
        mutual_chap: secrets
            .mutual
            .as_ref()
            .map(|secret| Chap { user: IscsiConfig::mutual_chap_user(node), secret: secret.clone() }),
        luns,
    })
}

pub fn backing_path(cfg: &IscsiConfig, volume: &str) -> PathBuf {
    cfg.volumes_dir.join(format!("{volume}.img"))
}

/// 16 letters and digits: what tgt and open-iscsi accept as a CHAP secret.
pub fn generate_chap_secret() -> Result<String, VolumeError> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| VolumeError::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect())
}

/// A generated secret unlike `other` (a second draw is as good as the first).
fn distinct_secret(other: &str) -> Result<String, VolumeError> {
    for _ in 0..4 {
        let s = generate_chap_secret()?;
        if s != other {
            return Ok(s);
        }
    }
    Err(VolumeError::Random("the random source keeps repeating itself".into()))
}

/// Volume sizes: 1 MiB to 64 TiB, whole MiB (a block device wants aligned sizes).
pub fn check_volume(name: &str, size_bytes: u64) -> Result<(), VolumeError> {
    if !crate::images::valid_name(name) {
        return Err(VolumeError::Invalid(format!("name {name:?}: 1-64 letters, digits, '-' or '_'")));
    }
    if !((1 << 20)..=(64 << 40)).contains(&size_bytes) || size_bytes % (1 << 20) != 0 {
        return Err(VolumeError::Invalid(format!("size {size_bytes}: a whole number of MiB, 1 MiB to 64 TiB")));
    }
    Ok(())
}

pub struct Volumes<B: Backend> {
    pub backend: B,
    pub config: IscsiConfig,
    pub store: Store,
}

impl<B: Backend> Volumes<B> {
    pub async fn create(&self, name: &str, size_bytes: u64, actor: &Actor, now_ms: i64) -> Result<Volume, VolumeError> {
        check_volume(name, size_bytes)?;
        let volume = self.store.create_volume(name, size_bytes, actor, now_ms).await?;
        let path = backing_path(&self.config, name);
        if let Err(e) = ensure_backing(&path, size_bytes) {
            // No row without its file: undo, so the name can be used again.
            let _ = self.store.delete_volume(name, actor, now_ms).await;
            return Err(e.into());
        }
        info!(volume = name, bytes = size_bytes, path = %path.display(), "volume created");
        Ok(volume)
    }

    /// Delete a detached volume and its data.
    pub async fn delete(&self, name: &str, actor: &Actor, now_ms: i64) -> Result<(), VolumeError> {
        self.store.delete_volume(name, actor, now_ms).await?;
        let path = backing_path(&self.config, name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(IscsiError::Io { path, source: e }.into()),
            _ => {
                info!(volume = name, "volume deleted with its data");
                Ok(())
            }
        }
    }

    /// Grow a volume (never shrink): the file first, then the target's view of it.
    pub async fn grow(&self, name: &str, size_bytes: u64, actor: &Actor, now_ms: i64) -> Result<Volume, VolumeError> {
        check_volume(name, size_bytes)?;
        let volume = self.store.volume(name).await?;
        if size_bytes < volume.size_bytes {
            return Err(VolumeError::Invalid(format!(
                "size {size_bytes}: volumes only grow (it is {})",
                volume.size_bytes
            )));
        }
        let path = backing_path(&self.config, name);
        ensure_backing(&path, size_bytes)?;
        let volume = self.store.set_volume_size(name, size_bytes, actor, now_ms).await?;
        if let (Some(node), Some(number)) = (volume.node_id, volume.lun) {
            self.backend.refresh_lun(&self.config.target_iqn(node), &Lun { number, backing: path }).await?;
            // The rest of the export (other LUNs, ACL) as the store has it.
            self.sync_node(node).await?;
        }
        Ok(volume)
    }

    pub async fn attach(&self, name: &str, node: NodeId, actor: &Actor, now_ms: i64) -> Result<Volume, VolumeError> {
        let volume = self.store.attach_volume(name, node, actor, now_ms).await?;
        self.sync_node(node).await?;
        Ok(volume)
    }

    pub async fn detach(&self, name: &str, actor: &Actor, now_ms: i64) -> Result<Volume, VolumeError> {
        if let Some(node) = self.store.detach_volume(name, actor, now_ms).await? {
            self.sync_node(node).await?;
        }
        Ok(self.store.volume(name).await?)
    }

    /// A profile's declared volumes for `node`: created and attached on first need,
    /// then simply found again on later boots. A name already attached to another
    /// node is never taken over; the returned notes say so, for the node's events.
    pub async fn ensure_declared(
        &self,
        node: NodeId,
        wanted: &[VolumeWanted],
        actor: &Actor,
        now_ms: i64,
    ) -> Result<Vec<String>, VolumeError> {
        let mut notes = vec![];
        for v in wanted {
            let owner = match self.store.volume(&v.name).await {
                Ok(existing) => Some(existing.node_id),
                Err(StoreError::NoSuchVolume(_)) => None,
                Err(e) => return Err(e.into()),
            };
            match owner {
                Some(Some(owner)) if owner == node => {}
                Some(Some(owner)) => {
                    notes.push(format!("volume {} is attached to node {owner}; not attaching it here", v.name))
                }
                Some(None) => {
                    self.attach(&v.name, node, actor, now_ms).await?;
                }
                None => {
                    self.create(&v.name, v.size_bytes, actor, now_ms).await?;
                    self.attach(&v.name, node, actor, now_ms).await?;
                }
            }
        }
        Ok(notes)
    }

    /// Make the node's export match its attached volumes, admitting the node from
    /// its last leased address (see [`NodeAddress`]).
    pub async fn sync_node(&self, node: NodeId) -> Result<Repair, VolumeError> {
        Ok(self.sync(node, NodeAddress::Stored).await?.0)
    }

    /// How the node reaches its volumes (none attached: `None`). The export is
    /// brought in line first, so what the plan says is what the target has: LUNs,
    /// and the ACL admitting `address` (the one the node's boot is bound to; `None`:
    /// unknown, then the node's IQN is bound instead, see [`Export::acl`]).
    pub async fn node_plan(
        &self,
        node: NodeId,
        address: Option<IpAddr>,
    ) -> Result<Option<ramboot_proto::PlanIscsi>, VolumeError> {
        let (_, export) = self.sync(node, NodeAddress::Is(address)).await?;
        Ok(export.map(|(export, volumes)| {
            let (mutual_chap_user, mutual_chap_secret) = match export.mutual_chap {
                Some(m) => (Some(m.user), Some(m.secret)),
                None => (None, None),
            };
            ramboot_proto::PlanIscsi {
                portal: self.config.portal.to_string(),
                luns: volumes
                    .iter()
                    .filter_map(|v| {
                        v.lun.map(|lun| ramboot_proto::PlanLun {
                            lun,
                            volume: v.name.clone(),
                            size_bytes: v.size_bytes,
                        })
                    })
                    .collect(),
                initiator_iqn: export.initiator_iqn,
                target_iqn: export.target_iqn,
                chap_user: export.chap.user,
                chap_secret: export.chap.secret,
                mutual_chap_user,
                mutual_chap_secret,
            }
        }))
    }

    /// Turn mutual CHAP on (a target secret generated once and kept) or off (the
    /// secret forgotten: turning it on again makes a new one), then sync the export.
    /// Returns whether it is on.
    pub async fn set_mutual_chap(
        &self,
        node: NodeId,
        on: bool,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<bool, VolumeError> {
        if on {
            let chap = self.store.chap_secret(node, generate_chap_secret).await?;
            // Each direction has its own secret (RFC 7143 §12.1.3).
            self.store.enable_mutual_chap(node, || distinct_secret(&chap), actor, now_ms).await?;
        } else {
            self.store.disable_mutual_chap(node, actor, now_ms).await?;
        }
        self.sync_node(node).await?;
        Ok(on)
    }

    async fn address(&self, node: NodeId, address: NodeAddress) -> Result<Option<IpAddr>, VolumeError> {
        match address {
            NodeAddress::Is(a) => Ok(a),
            NodeAddress::Stored => match self.store.node(node).await?.ip {
                Some(ip) => {
                    ip.parse().map(Some).map_err(|_| StoreError::Corrupt(format!("node {node}: address {ip:?}")).into())
                }
                None => Ok(None),
            },
        }
    }

    async fn sync(
        &self,
        node: NodeId,
        address: NodeAddress,
    ) -> Result<(Repair, Option<(Export, Vec<Volume>)>), VolumeError> {
        let volumes = self.store.node_volumes(node).await?;
        if volumes.is_empty() {
            self.backend.remove_export(&self.config.target_iqn(node)).await?;
            return Ok((Repair::default(), None));
        }
        // A failed random source is an error and stores nothing.
        let secrets = NodeSecrets {
            chap: self.store.chap_secret(node, generate_chap_secret).await?,
            mutual: self.store.mutual_chap_secret(node).await?,
        };
        for v in &volumes {
            ensure_backing(&backing_path(&self.config, &v.name), v.size_bytes)?;
        }
        let address = self.address(node, address).await?;
        if address.is_none() {
            warn!(node, "no address known for the node: its iSCSI target admits its IQN (with CHAP) from anywhere");
        }
        let Some(export) = desired_export(&self.config, node, &secrets, address, &volumes) else {
            return Ok((Repair::default(), None));
        };
        let repair = self.backend.ensure_export(&export).await?;
        if !repair.is_noop() {
            info!(node, target = %export.target_iqn, change = %repair.describe(), "iSCSI export updated");
        }
        Ok((repair, Some((export, volumes))))
    }

    /// At start: compare every node's export with the target (the node admitted from
    /// its last leased address), repair drift, and
    /// report targets under our prefix that no node wants (left alone: they may hold
    /// sessions an operator cares about).
    pub async fn reconcile(&self) -> Result<Vec<(NodeId, Repair)>, VolumeError> {
        let mut repaired = vec![];
        let nodes = self.store.nodes_with_volumes().await?;
        for node in &nodes {
            let repair = self.sync_node(*node).await?;
            if !repair.is_noop() {
                warn!(node, drift = %repair.describe(), "iSCSI export drifted from the store; repaired");
                repaired.push((*node, repair));
            }
        }
        let wanted: Vec<String> = nodes.iter().map(|n| self.config.target_iqn(*n)).collect();
        for target in self.backend.list().await? {
            if target.iqn.starts_with(&self.config.iqn_prefix) && !wanted.contains(&target.iqn) {
                warn!(target = %target.iqn, "iSCSI target not in the store (not removed)");
            }
        }
        Ok(repaired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> IscsiConfig {
        IscsiConfig {
            portal: "192.0.2.1:3260".parse().unwrap(),
            iqn_prefix: "iqn.2026-11.io.ramboot".into(),
            tgt_control_port: None,
            volumes_dir: "/var/lib/ramboot/volumes".into(),
        }
    }

    fn vol(name: &str, node: Option<NodeId>, lun: Option<u32>) -> Volume {
        Volume { id: 1, name: name.into(), size_bytes: 1 << 30, node_id: node, lun, created_at_ms: 0 }
    }

    #[test]
    fn a_nodes_export_holds_exactly_its_volumes() {
        let vols = [
            vol("vm-a", Some(3), Some(1)),
            vol("vm-b", Some(3), Some(2)),
            vol("other", Some(4), Some(1)),
            vol("free", None, None),
        ];
        let secrets = NodeSecrets { chap: "abcdefghijklmnop".into(), mutual: None };
        let e = desired_export(&cfg(), 3, &secrets, None, &vols).unwrap();
        assert_eq!(e.target_iqn, "iqn.2026-11.io.ramboot:target-3");
        assert_eq!(e.initiator_iqn, "iqn.2026-11.io.ramboot:node-3");
        assert_eq!(e.chap.user, "node-3");
        assert_eq!(
            e.luns.iter().map(|l| (l.number, l.backing.clone())).collect::<Vec<_>>(),
            [
                (1, PathBuf::from("/var/lib/ramboot/volumes/vm-a.img")),
                (2, PathBuf::from("/var/lib/ramboot/volumes/vm-b.img")),
            ]
        );
        assert!(e.mutual_chap.is_none() && e.initiator_address.is_none());
        assert!(desired_export(&cfg(), 5, &secrets, None, &vols).is_none());
        let secrets = NodeSecrets { chap: "abcdefghijklmnop".into(), mutual: Some("qrstuvwxyzABCDEF".into()) };
        let e = desired_export(&cfg(), 3, &secrets, Some("10.0.0.3".parse().unwrap()), &vols).unwrap();
        let m = e.mutual_chap.as_ref().unwrap();
        assert_eq!((m.user.as_str(), m.secret.as_str()), ("target-3", "qrstuvwxyzABCDEF"));
        assert_eq!(e.acl(), [crate::iscsi::AclEntry::Address("10.0.0.3".into())]);
    }

    #[test]
    fn secrets_and_sizes() {
        let s = generate_chap_secret().unwrap();
        assert!(crate::iscsi::valid_chap_secret(&s), "{s}");
        assert_ne!(s, generate_chap_secret().unwrap());
        assert!(check_volume("vm", 1 << 30).is_ok());
        assert!(check_volume("vm", 1000).is_err() && check_volume("../x", 1 << 30).is_err());
        assert!(check_volume("vm", (1 << 30) + 1).is_err());
    }
}
