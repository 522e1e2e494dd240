//! The DHCPv6 socket layer: UDP 547 on the boot interface, joined to
//! All_DHCP_Relay_Agents_and_Servers (`ff02::1:2`), around the pure core
//! `ramboot_core::dhcp6`.
//!
//! One task reads, decides and commits. Replies that bind an address wait for
//! their batch: every message already queued in the socket is decided first, then
//! the batch's bindings are written in one transaction (one fsync), and only then
//! are its replies sent. A batch the store refuses sends none of its replies and
//! forgets its bindings in the pool; clients retransmit. The socket's receive
//! buffer holds what arrives during a commit.

use super::io::{load_hosts, missing_boot_files, reload_hosts, unix_now, HostSources};
use crate::config::{Config, Dhcp6Config};
use crate::profiles::LiveProfiles;
use crate::store::{Lease6Op, LeaseState, Store, StoreError};
use dhcproto::v6::{Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable};
use ramboot_core::dhcp::classify::Firmware;
use ramboot_core::dhcp::decide::Hosts;
use ramboot_core::dhcp::ipxe::Handovers;
use ramboot_core::dhcp::policy::DhcpPolicy;
use ramboot_core::dhcp6::{decide6, Binding6, BootInputs, Decision6, Dhcp6Policy, IgnoreReason6, Inbound6, Pool6};
use ramboot_core::node::MacAddr;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The port servers listen on, and the one clients listen on (RFC 8415 §7.2).
pub const SERVER_PORT: u16 = 547;
pub const CLIENT_PORT: u16 = 546;
/// All_DHCP_Relay_Agents_and_Servers.
const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
/// Most bindings written in one transaction.
const MAX_BATCH: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum Dhcp6IoError {
    #[error("DHCPv6 socket on {interface}: {source}")]
    Bind {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("DHCPv6: loading leases: {0}")]
    Store(#[from] StoreError),
}

/// Bind UDP 547 on `interface` and join `ff02::1:2` there. Done before the server
/// drops privileges and before it reports ready, like the other sockets.
pub fn bind(interface: &str, port: u16) -> Result<UdpSocket, Dhcp6IoError> {
    let err = |source| Dhcp6IoError::Bind { interface: interface.to_string(), source };
    let ifindex = nix::net::if_::if_nametoindex(interface).map_err(|e| err(e.into()))?;
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    socket.set_only_v6(true).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.bind_device(Some(interface.as_bytes())).map_err(err)?;
    crate::udp::deepen_receive_queue(&socket, crate::udp::LISTENER_RECEIVE_BUFFER);
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into()).map_err(err)?;
    socket.join_multicast_v6(&ALL_SERVERS, ifindex).map_err(err)?;
    socket.set_multicast_if_v6(ifindex).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    UdpSocket::from_std(socket.into()).map_err(err)
}

/// This server's DUID: a DUID-LL (type 3) of the boot interface's MAC, stable as
/// long as the interface is (clients name it back in Request, Renew, Release).
pub fn server_duid(interface: &str) -> Vec<u8> {
    let mac = std::fs::read_to_string(format!("/sys/class/net/{interface}/address"))
        .ok()
        .and_then(|text| text.trim().parse::<ramboot_core::node::MacAddr>().ok())
        .map_or([0x02, 0, 0, 0, 0, 1], |m| m.0);
    let mut duid = vec![0, 3, 0, 1];
    duid.extend_from_slice(&mac);
    duid
}

/// The core's policy from `dhcp6:`.
pub fn policy6(cfg: &Dhcp6Config, server_duid: Vec<u8>, offer_hold_secs: u64) -> Dhcp6Policy {
    let valid = u32::try_from(cfg.lease_time.as_secs()).unwrap_or(u32::MAX);
    Dhcp6Policy {
        server_duid,
        range: cfg.range,
        preferred_secs: valid / 8 * 5,
        valid_secs: valid,
        tftp_server: cfg.server_address,
        offer_hold_secs,
        rapid_commit: cfg.rapid_commit,
        dns: cfg.dns.clone(),
    }
}

/// A reply that waits for its batch's commit.
struct Held {
    bytes: Vec<u8>,
    to: SocketAddrV6,
    /// The addresses it binds (forgotten in the pool if the commit fails).
    binds: Vec<Ipv6Addr>,
}

/// Serve DHCPv6 on `socket` until `cancel` fires.
pub async fn serve(
    cfg: &Config,
    socket: UdpSocket,
    store: Store,
    profiles: Arc<LiveProfiles>,
    cancel: CancellationToken,
) -> Result<(), Dhcp6IoError> {
    let Some(v6) = cfg.dhcp6.clone() else { return Ok(()) };
    let policy = policy6(&v6, server_duid(&cfg.interface), cfg.dhcp.offer_hold.as_secs());
    // The v4 core's boot tables, with this server's IPv6 base for the URLs.
    let mut boot: DhcpPolicy = cfg.dhcp_policy();
    boot.boot_url = cfg.boot_url_for(Some(v6.server_address.into()));
    boot.ipxe.missing = missing_boot_files(&cfg.paths.ipxe, &boot);
    let mut pool = Pool6::default();
    let restored = restore(&store, &mut pool).await?;
    let sources = HostSources {
        store: store.clone(),
        hosts_watch: store.watch_hosts(),
        profile_swaps: profiles.subscribe(),
        profiles: profiles.clone(),
    };
    let mut hosts = load_hosts(&store, &profiles, cfg.default_profile.as_deref()).await?;
    let (hosts_tx, mut new_hosts) = mpsc::channel::<Hosts>(1);
    let reloader = tokio::spawn(reload_hosts(sources, cfg.default_profile.clone(), hosts_tx, cancel.clone()));
    info!(
        interface = %cfg.interface,
        range = %format!("{}-{}", v6.range.0, v6.range.1),
        restored,
        "DHCPv6 serving"
    );
    let mut handovers = Handovers::default();
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(fresh) = new_hosts.recv() => hosts = fresh,
            ready = socket.readable() => {
                if let Err(e) = ready {
                    warn!(error = %e, "DHCPv6 socket failed");
                    continue;
                }
                let mut ops = Vec::new();
                let mut held = Vec::new();
                // Decide everything already queued, then commit once.
                while held.len() < MAX_BATCH {
                    let (len, peer) = match socket.try_recv_from(&mut buf) {
                        Ok((len, SocketAddr::V6(peer))) => (len, peer),
                        Ok(_) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            debug!(error = %e, "DHCPv6 receive failed");
                            break;
                        }
                    };
                    let ctx = Ctx { policy: &policy, boot: &boot, hosts: &hosts };
                    match handle(&buf[..len], peer, ctx, &mut pool, &mut handovers) {
                        Some(Outcome::Now(bytes)) => send(&socket, &bytes, peer).await,
                        Some(Outcome::AfterCommit(reply, op)) => {
                            ops.extend(op);
                            held.push(Held { bytes: reply.bytes, to: peer, binds: reply.binds });
                        }
                        None => {}
                    }
                }
                if ops.is_empty() {
                    for h in held {
                        send(&socket, &h.bytes, h.to).await;
                    }
                    continue;
                }
                commit_and_reply(&store, &socket, &mut pool, ops, held).await;
            }
        }
    }
    reloader.abort();
    Ok(())
}

/// Write `ops` in one transaction; send the held replies whose bindings stuck.
async fn commit_and_reply(store: &Store, socket: &UdpSocket, pool: &mut Pool6, ops: Vec<Lease6Op>, held: Vec<Held>) {
    let (_, now_ms) = unix_now();
    let started = std::time::Instant::now();
    match store.commit_dhcp6(&ops, now_ms).await {
        Ok(taken) => {
            metrics::histogram!("ramboot_dhcp6_commit_seconds").record(started.elapsed().as_secs_f64());
            for t in &taken {
                warn!(address = %t.address, holder = ?t.holder, "DHCPv6: the store holds this address for another node; not granted");
                pool.forget(t.address);
            }
            for h in held {
                if h.binds.iter().any(|a| taken.iter().any(|t| t.address == *a)) {
                    continue;
                }
                send(socket, &h.bytes, h.to).await;
            }
        }
        Err(e) => {
            warn!(error = %e, batch = ops.len(), "DHCPv6 bindings not written; their replies are not sent (clients retransmit)");
            metrics::counter!("ramboot_dhcp6_commit_failures_total").increment(1);
            for h in &held {
                for a in &h.binds {
                    pool.forget(*a);
                }
            }
        }
    }
}

async fn send(socket: &UdpSocket, bytes: &[u8], to: SocketAddrV6) {
    if let Err(e) = socket.send_to(bytes, to).await {
        warn!(to = %to, error = %e, "DHCPv6 reply not sent");
    }
}

/// Load live bindings and quarantines into `pool`; returns how many.
async fn restore(store: &Store, pool: &mut Pool6) -> Result<usize, StoreError> {
    let (now, _) = unix_now();
    let rows = store.live_bindings6(now).await?;
    for row in &rows {
        if row.state == LeaseState::Declined {
            pool.quarantine(row.address, row.expires_at);
            continue;
        }
        let Ok(duid) = hex::decode(&row.duid) else {
            warn!(address = %row.address, "stored DHCPv6 lease has a DUID that is not hex; ignored");
            continue;
        };
        pool.restore(Binding6 {
            duid,
            iaid: row.iaid,
            mac: row.mac,
            addr: row.address,
            expires_at: row.expires_at,
            held: false,
        });
    }
    Ok(rows.len())
}

/// What one message needs besides itself and the mutable state.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    policy: &'a Dhcp6Policy,
    boot: &'a DhcpPolicy,
    hosts: &'a Hosts,
}

struct HeldReply {
    bytes: Vec<u8>,
    binds: Vec<Ipv6Addr>,
}

enum Outcome {
    Now(Vec<u8>),
    AfterCommit(HeldReply, Vec<Lease6Op>),
}

/// Decode, decide, encode one message.
fn handle(
    bytes: &[u8],
    peer: SocketAddrV6,
    ctx: Ctx<'_>,
    pool: &mut Pool6,
    handovers: &mut Handovers,
) -> Option<Outcome> {
    let msg = match Message::decode(&mut Decoder::new(bytes)) {
        Ok(m) => m,
        Err(e) => {
            debug!(%peer, error = %e, "undecodable DHCPv6 message");
            metrics::counter!("ramboot_dhcp6_messages_total", "type" => "undecodable", "outcome" => "ignored")
                .increment(1);
            return None;
        }
    };
    let kind = format!("{:?}", msg.msg_type()).to_lowercase();
    let (now, _) = unix_now();
    // The chain is the node's, by the MAC the core finds in the message.
    let chain_of = |mac: Option<MacAddr>| ctx.hosts.chain_of(mac.and_then(|m| ctx.hosts.get(m)), ctx.boot);
    let inputs = BootInputs { boot: ctx.boot, chain_of: &chain_of, handovers };
    let decision = decide6(Inbound6 { msg: &msg, peer: *peer.ip() }, ctx.policy, pool, inputs, now);
    let count = |outcome: &'static str| {
        metrics::counter!("ramboot_dhcp6_messages_total", "type" => kind.clone(), "outcome" => outcome).increment(1);
    };
    match decision {
        Decision6::Ignore(reason) => {
            if !matches!(reason, IgnoreReason6::OtherServer) {
                debug!(%peer, %reason, "DHCPv6 message ignored");
            }
            count("ignored");
            None
        }
        Decision6::Reply { reply, grants, client, boot } => {
            let bytes = encode(&reply)?;
            debug!(%peer, mac = ?client.mac, ?boot, kind = %kind, "DHCPv6 reply");
            if grants.is_empty() {
                count("answered");
                return Some(Outcome::Now(bytes));
            }
            count("granted");
            let netboot = client.firmware != Firmware::Plain;
            let arch = client.arch.map(|a| a.to_string());
            let binds = grants.iter().map(|g| g.addr).collect();
            // One line per client per boot at info; renewals are repeats (README, "Running it for real").
            let renewal = matches!(msg.msg_type(), MessageType::Renew | MessageType::Rebind);
            for g in &grants {
                if renewal {
                    debug!(mac = ?g.mac, address = %g.addr, until = g.expires_at, "DHCPv6 lease renewed");
                } else {
                    info!(mac = ?g.mac, address = %g.addr, until = g.expires_at, "DHCPv6 lease");
                }
            }
            let ops = grants.into_iter().map(|grant| Lease6Op::Grant { grant, netboot, arch: arch.clone() }).collect();
            Some(Outcome::AfterCommit(HeldReply { bytes, binds }, ops))
        }
        Decision6::Released { reply, duid, addrs, quarantined_until } => {
            let bytes = encode(&reply)?;
            count("released");
            let ops: Vec<Lease6Op> = addrs
                .into_iter()
                .map(|address| Lease6Op::GiveBack { duid: duid.clone(), address, quarantined_until })
                .collect();
            if ops.is_empty() {
                return Some(Outcome::Now(bytes));
            }
            Some(Outcome::AfterCommit(HeldReply { bytes, binds: Vec::new() }, ops))
        }
    }
}

fn encode(reply: &Message) -> Option<Vec<u8>> {
    match reply.to_vec() {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            warn!(error = %e, "DHCPv6 reply could not be encoded");
            None
        }
    }
}
