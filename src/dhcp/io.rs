//! The DHCP socket layer: receive datagrams on one interface, run the pure core,
//! persist grants, send replies.
//!
//! Packets are handled one at a time in arrival order, so the in-memory pool needs
//! no lock; the one await inside a decision is the lease commit, which must finish
//! before the ACK leaves.

use super::core::{decide, BootFiles, Decision, DhcpPolicy};
use super::pool::LeasePool;
use crate::config::Config;
use crate::store::{EventKind, Store, StoreError};
use dhcproto::v4::{Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum DhcpIoError {
    #[error("DHCP socket on {interface} port {port}: {source}")]
    Bind {
        interface: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("DHCP: loading leases: {0}")]
    Store(#[from] StoreError),
}

/// A UDP socket bound to `port` on every address but tied to `interface`, so
/// broadcast replies leave through the boot network and nowhere else.
pub fn bind(interface: &str, port: u16) -> Result<UdpSocket, DhcpIoError> {
    let err = |source| DhcpIoError::Bind { interface: interface.to_string(), port, source };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_broadcast(true).map_err(err)?;
    socket.bind_device(Some(interface.as_bytes())).map_err(err)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into()).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    UdpSocket::from_std(socket.into()).map_err(err)
}

/// Where a reply goes, per RFC 2131 §4.1: to the relay if there is one; a NAK by
/// broadcast; to ciaddr if the client has an address; otherwise by broadcast,
/// because an address-less client cannot answer ARP (we add no ARP entries).
pub fn reply_destination(request: &Message, reply_type: MessageType, server_port: u16) -> SocketAddrV4 {
    let client_port = server_port.wrapping_add(1);
    if !request.giaddr().is_unspecified() {
        return SocketAddrV4::new(request.giaddr(), server_port);
    }
    if reply_type != MessageType::Nak && !request.ciaddr().is_unspecified() {
        return SocketAddrV4::new(request.ciaddr(), client_port);
    }
    SocketAddrV4::new(Ipv4Addr::BROADCAST, client_port)
}

pub fn policy_from_config(cfg: &Config) -> DhcpPolicy {
    DhcpPolicy {
        server_id: cfg.server_address,
        subnet: cfg.dhcp.subnet,
        router: cfg.dhcp.router,
        dns: cfg.dhcp.dns.clone(),
        lease_secs: u32::try_from(cfg.dhcp.lease_time.as_secs()).unwrap_or(u32::MAX),
        boot_url: cfg.boot_url(),
        boot_files: BootFiles::default(),
    }
}

fn unix_now() -> (u64, i64) {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.as_millis() as i64)
}

/// Serve DHCP on `socket` until `cancel` fires.
pub async fn serve(
    cfg: &Config,
    socket: UdpSocket,
    store: Store,
    cancel: CancellationToken,
) -> Result<(), DhcpIoError> {
    let policy = policy_from_config(cfg);
    let mut pool = LeasePool::new(cfg.dhcp.range_start, cfg.dhcp.range_end);
    let (now, _) = unix_now();
    let leases = store.active_leases(now).await?;
    for lease in &leases {
        pool.restore(lease.ip, lease.mac, lease.expires_at);
    }
    info!(interface = %cfg.interface, restored = leases.len(), "DHCP serving");
    let mut buf = vec![0u8; 1500];
    loop {
        let (len, peer) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "DHCP receive failed");
                    continue;
                }
            },
        };
        // Decoding is third-party code fed by the network: a panic there must cost one
        // packet, not the DHCP service.
        let decoded = std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(&buf[..len])));
        let request = match decoded {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                count(None, "undecodable");
                warn!(%peer, bytes = len, error = %e, "dropping undecodable DHCP packet");
                continue;
            }
            Err(_) => {
                error!(%peer, bytes = len, packet = %hex::encode(&buf[..len]), "DHCP decoder panicked; packet dropped");
                continue;
            }
        };
        handle(&request, &policy, &mut pool, &store, &socket, cfg.dhcp.port).await;
    }
}

/// Count one handled message, by its type and what became of it.
fn count(request_type: Option<MessageType>, outcome: &'static str) {
    let kind = match request_type {
        Some(MessageType::Discover) => "discover",
        Some(MessageType::Request) => "request",
        Some(MessageType::Release) => "release",
        Some(MessageType::Decline) => "decline",
        Some(MessageType::Inform) => "inform",
        Some(_) => "other",
        None => "none",
    };
    metrics::counter!("ramboot_dhcp_messages_total", "type" => kind, "outcome" => outcome).increment(1);
}

async fn handle(
    request: &Message,
    policy: &DhcpPolicy,
    pool: &mut LeasePool,
    store: &Store,
    socket: &UdpSocket,
    port: u16,
) {
    let (now, now_ms) = unix_now();
    let request_type = request.opts().msg_type();
    match decide(request, policy, pool, now) {
        Decision::Reply { reply, grant, client, boot } => {
            let reply_type = reply.opts().msg_type().unwrap_or(MessageType::Unknown(0));
            if let Some(grant) = &grant {
                let arch = client.arch.map(|a| a.to_string());
                // Durable before it is announced: no ACK for a lease we could lose.
                match store.commit_lease(grant.mac, grant.ip, grant.expires_at, arch.as_deref(), now_ms).await {
                    Ok(node) => {
                        let msg = format!("DHCP lease {} (until unix {})", grant.ip, grant.expires_at);
                        if let Err(e) = store.add_event(node, None, EventKind::Dhcp, &msg, now_ms).await {
                            warn!(error = %e, "recording DHCP event failed");
                        }
                    }
                    Err(e) => {
                        count(request_type, "store_error");
                        pool.forget(grant.mac, grant.ip);
                        error!(mac = %grant.mac, ip = %grant.ip, error = %e, "lease not persisted: no ACK sent");
                        return;
                    }
                }
            }
            let bytes = match reply.to_vec() {
                Ok(b) => b,
                Err(e) => {
                    error!(mac = %client.mac, error = %e, "encoding DHCP reply failed");
                    return;
                }
            };
            let dest = reply_destination(request, reply_type, port);
            if let Err(e) = socket.send_to(&bytes, dest).await {
                count(request_type, "send_error");
                warn!(mac = %client.mac, %dest, error = %e, "sending DHCP reply failed");
                return;
            }
            let outcome = match reply_type {
                MessageType::Offer => "offer",
                MessageType::Ack => "ack",
                MessageType::Nak => "nak",
                _ => "other",
            };
            count(request_type, outcome);
            info!(
                mac = %client.mac,
                request = ?request_type,
                reply = ?reply_type,
                ip = %reply.yiaddr(),
                arch = %client.arch.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
                firmware = ?client.firmware,
                boot_file = boot.file().unwrap_or("-"),
                "DHCP decision"
            );
        }
        Decision::Released { mac, ip } => {
            count(request_type, "released");
            info!(%mac, %ip, "DHCP release");
            if let Err(e) = store.end_lease(mac, ip, false, now_ms).await {
                warn!(%mac, %ip, error = %e, "recording release failed");
            }
        }
        Decision::Declined { mac, ip } => {
            count(request_type, "declined");
            warn!(%mac, %ip, "DHCP decline: address in use by someone else, quarantined");
            if let Err(e) = store.end_lease(mac, ip, true, now_ms).await {
                warn!(%mac, %ip, error = %e, "recording decline failed");
            }
        }
        Decision::Ignore(reason) => {
            count(request_type, "ignored");
            debug!(request = ?request_type, %reason, "DHCP ignored")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::classify::tests::request;
    use dhcproto::v4::Flags;

    #[test]
    fn replies_go_to_relay_then_ciaddr_then_broadcast() {
        let mut req = request([2, 0, 0, 0, 0, 1], MessageType::Request);
        assert_eq!(reply_destination(&req, MessageType::Ack, 67), SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        req.set_ciaddr(Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(reply_destination(&req, MessageType::Ack, 67), "10.0.0.5:68".parse().unwrap());
        assert_eq!(reply_destination(&req, MessageType::Nak, 67), SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        req.set_giaddr(Ipv4Addr::new(10, 1, 0, 1)).set_flags(Flags::default().set_broadcast());
        assert_eq!(reply_destination(&req, MessageType::Ack, 67), "10.1.0.1:67".parse().unwrap());
    }
}
