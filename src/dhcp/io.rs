//! The DHCP socket layer: receive datagrams, run the pure core, persist grants in
//! batches, send replies.
//!
//! Three kinds of task, connected by bounded queues:
//! - one **reader** per socket (interface × port 67/4011), a thread blocked in
//!   recvmsg(2), reads datagrams with `IP_PKTINFO`, so each packet carries the
//!   local address it arrived on, and hands everything queued to the decider at
//!   once (see [`READ_COALESCE`]);
//! - one **decider** owns the in-memory pools and the inventory view and runs
//!   [`decide`] on each packet in arrival order (no locks; an address is only ever
//!   chosen here, so it can never be handed out twice);
//! - one **committer** writes lease changes to the store in batches (group commit:
//!   one transaction and one fsync for every grant that queued up during the last
//!   one, on a database connection of its own) and sends each ACK only after its
//!   batch is durable. A batch that fails (disk full, read-only, busy) sends no ACK
//!   and hands its changes back to the decider, which rolls the pools back to the
//!   bindings they replaced ([`Leases::undo`]), so an address the store still gives
//!   to a client is never offered to another; clients retry, and the first batch
//!   after the cause is gone succeeds.
//!
//! Under overload the readers' queue fills and packets are dropped at the door
//! (counted), instead of the decider falling ever further behind.

use crate::config::Config;
use crate::pktinfo::{self, Wait};
use crate::profiles::LiveProfiles;
use crate::store::LeaseState;
use crate::store::{LeaseChange, LeaseNotice, LeaseOp, Store, StoreError, SyncLeaseWriter, Taken};
use dhcproto::v4::{Message, MessageType};
use dhcproto::{Decodable, Decoder};
use ramboot_core::dhcp::classify::{self, ClassifyError, Client, Firmware};
use ramboot_core::dhcp::decide::{
    decide, encode_reply, Arrival, Decision, Host, Hosts, IgnoreReason, Inbound, Leases, Port,
};
use ramboot_core::dhcp::policy::{DhcpMode, DhcpPolicy};
use ramboot_core::dhcp::pool::{BindingKind, Undo};
use ramboot_core::dhcp::relay::{self, Screen};
use ramboot_core::profile::BootChain;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Packets waiting for the decider; beyond this they are dropped (and counted).
/// A few hundred milliseconds of the decider's work (it decides well over 20,000
/// a second), far less than a client's first retransmit interval (iPXE 1 s, PXE
/// ROMs 4 s): every packet queued is still worth answering. At 1,024, 5,000 nodes
/// powered on at once lost up to 2,635 DISCOVERs at the door, each one a node
/// waiting out a retransmit timeout (`bench/storm`).
const INBOX: usize = 4096;

/// Lease changes waiting for the committer; a full queue slows the decider down.
const COMMIT_QUEUE: usize = 8192;
/// Most lease changes written in one transaction.
const MAX_BATCH: usize = 1024;
/// How often the inventory view is reloaded even without a change notice (another
/// ramboot server sharing the database may have changed it).
const HOSTS_RELOAD: Duration = Duration::from_secs(60);

/// The readers' side of the decider's inbox. Datagrams go in batches, one per
/// reader wake-up, so the decider is woken once for all of them (woken per
/// datagram, it preempted the reader on a shared core); the bound is on
/// datagrams waiting, across all batches.
#[derive(Clone)]
struct Inbox {
    batches: mpsc::UnboundedSender<Vec<Datagram>>,
    waiting: Arc<AtomicUsize>,
}

/// The decider's side of the inbox.
struct InboxReceiver {
    batches: mpsc::UnboundedReceiver<Vec<Datagram>>,
    waiting: Arc<AtomicUsize>,
}

fn inbox() -> (Inbox, InboxReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let waiting = Arc::new(AtomicUsize::new(0));
    (Inbox { batches: tx, waiting: waiting.clone() }, InboxReceiver { batches: rx, waiting })
}

impl InboxReceiver {
    /// The next batch (its datagrams no longer count against the bound); `None`
    /// once every reader has stopped. Cancel-safe, as `select!` needs.
    async fn recv(&mut self) -> Option<Vec<Datagram>> {
        let batch = self.batches.recv().await?;
        self.waiting.fetch_sub(batch.len(), Ordering::Relaxed);
        Some(batch)
    }
}

impl Inbox {
    /// Whether one more datagram fits beside `batch` (not yet sent).
    fn has_room(&self, batch: &[Datagram]) -> bool {
        self.waiting.load(Ordering::Relaxed) + batch.len() < INBOX
    }

    /// Hand `batch` to the decider; false if it has stopped.
    fn send(&self, batch: Vec<Datagram>) -> bool {
        let len = batch.len();
        self.waiting.fetch_add(len, Ordering::Relaxed);
        self.batches.send(batch).is_ok()
    }
}

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
    #[error("DHCP: opening the lease writer's database connection: {0}")]
    LeaseWriter(#[source] StoreError),
}

/// One bound DHCP socket.
pub struct Listener {
    pub interface: String,
    pub port: Port,
    pub socket: Arc<UdpSocket>,
    /// The address a broadcast that arrived here is answered from: the configured
    /// `server_address` when this interface holds it (the kernel would report the
    /// interface's primary address, which may belong to a neighbour such as the
    /// site's DHCP server), else whatever the kernel reports.
    pub broadcast_source: Option<Ipv4Addr>,
}

/// A UDP socket bound to `port` on every address but tied to `interface`, so
/// broadcast replies leave through the boot network and nowhere else, with
/// `IP_PKTINFO` on so each datagram tells which local address it reached.
///
/// The socket is blocking and read by a thread of its own ([`read_loop`]), never
/// registered with the runtime: with tokio's edge-triggered epoll every arriving
/// datagram woke a runtime thread, even while the reader was deliberately waiting.
pub fn bind(interface: &str, port: u16) -> Result<UdpSocket, DhcpIoError> {
    let err = |source| DhcpIoError::Bind { interface: interface.to_string(), port, source };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_broadcast(true).map_err(err)?;
    socket.bind_device(Some(interface.as_bytes())).map_err(err)?;
    pktinfo::enable(&socket).map_err(err)?;
    // A deep receive queue absorbs bursts while the committer holds the CPU (a boot
    // storm arrives all at once); as root, past net.core.rmem_max.
    crate::udp::deepen_receive_queue(&socket, crate::udp::LISTENER_RECEIVE_BUFFER);
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into()).map_err(err)?;
    socket.set_read_timeout(Some(READ_WAKE)).map_err(err)?;
    Ok(socket.into())
}

/// Every socket the configuration asks for: port 67 on each DHCP interface, and
/// the PXE boot-server port in proxy mode.
pub fn bind_all(cfg: &Config) -> Result<Vec<Listener>, DhcpIoError> {
    let mut listeners = Vec::new();
    for interface in &cfg.dhcp.interfaces {
        let mut ports = vec![(Port::Dhcp, cfg.dhcp.port)];
        if cfg.dhcp.mode == DhcpMode::Proxy {
            ports.push((Port::Binl, cfg.dhcp.proxy_port));
        }
        for (port, number) in ports {
            let socket = Arc::new(bind(interface, number)?);
            let broadcast_source =
                interface_addresses(interface).contains(&cfg.server_address).then_some(cfg.server_address);
            listeners.push(Listener { interface: interface.clone(), port, socket, broadcast_source });
        }
    }
    Ok(listeners)
}

/// The IPv4 addresses configured on `interface` (none if it cannot be read).
fn interface_addresses(interface: &str) -> Vec<Ipv4Addr> {
    let Ok(all) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    all.filter(|a| a.interface_name == interface)
        .filter_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|sin| sin.ip())))
        .collect()
}

/// A received datagram and where it came from and arrived.
struct Datagram {
    bytes: Vec<u8>,
    peer: SocketAddrV4,
    local: Ipv4Addr,
    listener: usize,
}

/// Where a reply goes, per RFC 2131 §4.1: to the relay if there is one; a NAK by
/// broadcast; to ciaddr if the client has an address; otherwise by broadcast,
/// because an address-less client cannot answer ARP (unicasting to yiaddr would
/// need an ARP entry forged from chaddr; §4.1 allows the broadcast instead). A
/// PXE boot-server (4011) reply goes back to where the request came from.
pub fn reply_destination(
    request: &Message,
    reply_type: MessageType,
    arrival: Port,
    peer: SocketAddrV4,
    server_port: u16,
) -> SocketAddrV4 {
    let client_port = server_port.wrapping_add(1);
    if arrival == Port::Binl && !peer.ip().is_unspecified() {
        return peer;
    }
    if !request.giaddr().is_unspecified() {
        return SocketAddrV4::new(request.giaddr(), server_port);
    }
    if reply_type != MessageType::Nak && !request.ciaddr().is_unspecified() {
        return SocketAddrV4::new(request.ciaddr(), client_port);
    }
    SocketAddrV4::new(Ipv4Addr::BROADCAST, client_port)
}

pub(crate) fn unix_now() -> (u64, i64) {
    (crate::clock::now_secs(), crate::clock::now_ms())
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

/// A reply ready to go out.
struct Outgoing {
    bytes: Vec<u8>,
    dest: SocketAddrV4,
    source: Ipv4Addr,
    socket: Arc<UdpSocket>,
    request_type: Option<MessageType>,
    outcome: &'static str,
}

impl Outgoing {
    /// Send without waiting, from the decider or a committer. A full send buffer
    /// (rare for UDP) hands the reply to a blocking-pool thread that waits for room.
    fn send(self, runtime: &tokio::runtime::Handle) {
        match pktinfo::send_from_now(&*self.socket, &self.bytes, self.dest, self.source, Wait::No) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                runtime.spawn_blocking(move || {
                    let sent = pktinfo::send_from_now(&*self.socket, &self.bytes, self.dest, self.source, Wait::Yes);
                    self.sent(sent);
                });
            }
            sent => self.sent(sent),
        }
    }

    fn sent(&self, result: std::io::Result<usize>) {
        match result {
            Ok(_) => count(self.request_type, self.outcome),
            Err(e) => {
                count(self.request_type, "send_error");
                warn!(dest = %self.dest, error = %e, "sending DHCP reply failed");
            }
        }
    }
}

/// Whether `reply` ends a DHCP client's part of a boot, the one line per client
/// logged at info (README, "Running it for real"): an ACK to a client that had no address
/// (SELECTING or INIT-REBOOT), a proxy offer (it carries the boot file), a NAK.
/// Address offers, renewals, INFORMs and port-4011 follow-ups (ciaddr set) are
/// steps on the way or repeats, logged at debug.
fn ends_a_boot_phase(request: &Message, reply: &Message) -> bool {
    match reply.opts().msg_type() {
        Some(MessageType::Ack) => request.ciaddr().is_unspecified(),
        Some(MessageType::Offer) => reply.yiaddr().is_unspecified(),
        _ => true,
    }
}

/// One lease change for the committer, the reply that must wait for it, and how
/// to roll the pool back if it cannot be saved.
struct Pending {
    op: LeaseOp,
    reply: Option<Outgoing>,
    undo: Option<Undo>,
}

/// The configured iPXE binaries that are not files under `ipxe_dir` (checked once,
/// at start): a foreign iPXE is not sent to load one.
pub(crate) fn missing_boot_files(ipxe_dir: &Path, policy: &DhcpPolicy) -> BTreeSet<String> {
    let files: BTreeSet<&String> = policy.boot_files.values().collect();
    let missing: BTreeSet<String> = files.into_iter().filter(|file| !ipxe_dir.join(file).is_file()).cloned().collect();
    if !missing.is_empty() {
        info!(
            dir = %ipxe_dir.display(),
            ?missing,
            "iPXE binaries not present (ipxe/fetch.sh installs the x86 ones): PXE ROMs cannot load them, \
             and other iPXE builds of those architectures run the script as they are"
        );
    }
    missing
}

/// Warn at start when a Secure Boot node would be handed a shim, or shim would
/// look for a GRUB, that is not under `ipxe_dir` (the firmware would get "not
/// found" and try its next boot option).
fn check_signed_chain(ipxe_dir: &Path, policy: &DhcpPolicy, profiles: &LiveProfiles) {
    let in_use = policy.boot_chain == BootChain::Signed
        || profiles.boot_chains().iter().any(|(_, chain)| *chain == BootChain::Signed);
    if !in_use {
        return;
    }
    let shims: BTreeSet<&String> = policy.signed_boot_files.values().collect();
    // Shim loads `grub<arch>.efi` from its own directory (`shimx64.efi` → `grubx64.efi`).
    let needed = shims.iter().flat_map(|shim| [shim.to_string(), shim.replacen("shim", "grub", 1)]);
    let missing: Vec<String> = needed.filter(|file| !ipxe_dir.join(file).is_file()).collect();
    if !missing.is_empty() {
        warn!(
            dir = %ipxe_dir.display(),
            ?missing,
            "boot_chain signed is in use but its binaries are not present (ipxe/fetch.sh unpacks Debian's \
             signed shim and GRUB): those firmwares cannot boot the signed chain"
        );
    }
}

/// Serve DHCP on `listeners` until `cancel` fires.
pub async fn serve(
    cfg: &Config,
    listeners: Vec<Listener>,
    store: Store,
    profiles: Arc<LiveProfiles>,
    cancel: CancellationToken,
) -> Result<(), DhcpIoError> {
    if listeners.is_empty() {
        // `dhcp.ipv4: false`: an IPv6-only boot network (DHCPv6 serves it).
        info!("DHCPv4 is off (dhcp.ipv4: false)");
        cancel.cancelled().await;
        return Ok(());
    }
    let mut policy = cfg.dhcp_policy();
    policy.ipxe.missing = missing_boot_files(&cfg.paths.ipxe, &policy);
    check_signed_chain(&cfg.paths.ipxe, &policy, &profiles);
    let mut leases = Leases::new(&policy);
    // Subscribed before the table is read, so no lease another server commits
    // meanwhile is missed.
    let mut notices = store.lease_notices();
    let restored = restore_leases(&store, &policy, &mut leases).await?;
    let hosts_watch = store.watch_hosts();
    let profile_swaps = profiles.subscribe();
    let mut hosts = load_hosts(&store, &profiles, cfg.default_profile.as_deref()).await?;
    install_reservations(&policy, &mut leases, &hosts);
    info!(
        interfaces = ?cfg.dhcp.interfaces,
        mode = ?cfg.dhcp.mode,
        subnets = policy.subnets.len(),
        restored,
        nodes = hosts.len(),
        "DHCP serving"
    );

    let commit_delay = cfg.dhcp.commit_delay;
    let (inbox_tx, mut inbox) = inbox();
    let (commit_tx, commit_rx) = mpsc::channel::<Pending>(COMMIT_QUEUE);
    let (failed_tx, mut failed) = mpsc::unbounded_channel::<Rollback>();
    let (hosts_tx, mut new_hosts) = mpsc::channel::<Hosts>(1);
    let sockets: Vec<(Arc<UdpSocket>, Port)> = listeners.iter().map(|l| (l.socket.clone(), l.port)).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let (inbox_tx, cancel) = (inbox_tx.clone(), cancel.clone());
        tasks.spawn_blocking(move || read_loop(listener, index, inbox_tx, cancel));
    }
    drop(inbox_tx);
    match store.sync_lease_writer() {
        Ok(Some(writer)) => {
            let (store, runtime) = (store.clone(), tokio::runtime::Handle::current());
            tasks.spawn_blocking(move || commit_loop_sync(store, writer, commit_rx, failed_tx, runtime, commit_delay));
        }
        Ok(None) => {
            tasks.spawn(commit_loop(store.clone(), commit_rx, failed_tx, commit_delay));
        }
        Err(e) => return Err(DhcpIoError::LeaseWriter(e)),
    }
    tasks.spawn(reload_hosts(
        HostSources { store: store.clone(), profiles, hosts_watch, profile_swaps },
        cfg.default_profile.clone(),
        hosts_tx,
        cancel.clone(),
    ));

    let port_number = cfg.dhcp.port;
    let runtime = tokio::runtime::Handle::current();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(rollback) = failed.recv() => rollback.apply(&policy, &mut leases),
            Some(notice) = notices.next() => match &*notice {
                LeaseNotice::Changed(rows) => learn_leases(&policy, &mut leases, rows),
                LeaseNotice::Resync => match restore_leases(&store, &policy, &mut leases).await {
                    Ok(n) => info!(leases = n, "DHCP pools reloaded from the lease table"),
                    Err(e) => warn!(error = %e, "reloading leases failed; keeping the pools as they are"),
                },
            },
            Some(fresh) = new_hosts.recv() => {
                hosts = fresh;
                install_reservations(&policy, &mut leases, &hosts);
                debug!(nodes = hosts.len(), "DHCP node view reloaded");
            }
            batch = inbox.recv() => match batch {
                Some(batch) => {
                    for d in batch {
                        let (socket, port) = &sockets[d.listener];
                        match handle(&d, *port, socket, &policy, &mut leases, &hosts, port_number) {
                            Some(Next::Send(out)) => out.send(&runtime),
                            // A committer that stopped ends the loop below.
                            Some(Next::Commit(p)) => {
                                let _ = commit_tx.send(p).await;
                            }
                            None => {}
                        }
                    }
                    if commit_tx.is_closed() {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    // Let the committer finish what is queued (its ACKs still go out), then stop.
    drop(commit_tx);
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Bind every live lease of the table in the pools (at start, and after change
/// notices may have been missed); returns how many.
async fn restore_leases(store: &Store, policy: &DhcpPolicy, leases: &mut Leases) -> Result<usize, StoreError> {
    let (now, _) = unix_now();
    let mut restored = 0usize;
    for b in store.live_bindings(now).await? {
        let kind = if b.state == LeaseState::Declined { BindingKind::Quarantined } else { BindingKind::Leased };
        if leases.restore(policy, b.ip, b.mac, b.expires_at, kind) {
            restored += 1;
        } else {
            warn!(ip = %b.ip, mac = %b.mac, "stored lease is outside every configured subnet; ignored");
        }
    }
    Ok(restored)
}

/// Another server committed these lease rows: the pools follow the table, so this
/// server neither offers those addresses nor forgets a client the other served
/// (its RENEW, REBIND or INIT-REBOOT is answered here too).
fn learn_leases(policy: &DhcpPolicy, leases: &mut Leases, rows: &[LeaseChange]) {
    for r in rows {
        match r.state {
            LeaseState::Active => {
                leases.restore(policy, r.ip, r.mac, r.expires_at, BindingKind::Leased);
            }
            LeaseState::Declined => {
                leases.restore(policy, r.ip, r.mac, r.expires_at, BindingKind::Quarantined);
            }
            LeaseState::Released => leases.released_elsewhere(policy, r.mac, r.ip),
        }
    }
    metrics::counter!("ramboot_dhcp_leases_learned_total").increment(rows.len() as u64);
}

/// What DHCP's node view is built from, with the change feeds subscribed before
/// the first load (so no change in between is missed).
pub(crate) struct HostSources {
    pub store: Store,
    pub profiles: Arc<LiveProfiles>,
    pub hosts_watch: tokio::sync::watch::Receiver<u64>,
    pub profile_swaps: tokio::sync::watch::Receiver<u64>,
}

/// Send a fresh node view on `out` whenever nodes or profiles change (and every
/// [`HOSTS_RELOAD`], for changes another server made), until `cancel` fires.
pub(crate) async fn reload_hosts(
    sources: HostSources,
    default_profile: Option<String>,
    out: mpsc::Sender<Hosts>,
    cancel: CancellationToken,
) {
    let HostSources { store, profiles, mut hosts_watch, mut profile_swaps } = sources;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = hosts_watch.changed() => if changed.is_err() { return },
            // A profile's `boot_chain` may have changed.
            changed = profile_swaps.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(HOSTS_RELOAD) => {}
        }
        match load_hosts(&store, &profiles, default_profile.as_deref()).await {
            Ok(hosts) => {
                if out.send(hosts).await.is_err() {
                    return;
                }
            }
            Err(e) => warn!(error = %e, "reloading DHCP's node view failed; keeping the old one"),
        }
    }
}

pub(crate) async fn load_hosts(
    store: &Store,
    profiles: &LiveProfiles,
    default_profile: Option<&str>,
) -> Result<Hosts, StoreError> {
    let rows = store.dhcp_hosts().await?;
    let mut hosts = Hosts::new(rows.into_iter().map(|h| {
        let host = Host {
            reserved_ip: h.reserved_ip,
            hostname: Some(h.hostname),
            profile: h.profile,
            boot_chain: h.boot_chain,
        };
        (h.mac, host)
    }));
    hosts.set_profile_chains(profiles.boot_chains(), default_profile);
    Ok(hosts)
}

fn install_reservations(policy: &DhcpPolicy, leases: &mut Leases, hosts: &Hosts) {
    for (ip, mac) in leases.set_reservations(policy, hosts) {
        warn!(%ip, %mac, "reserved address is outside every configured subnet; not served");
    }
}

/// Under load a reader wakes at most this often and takes everything queued at
/// once: a wake-up from idle (a context switch) costs more than handling a packet,
/// so at 8,000 exchanges/s one wake per datagram was most of the server's CPU.
/// Only a reader whose last wake-up found company (more than one datagram queued)
/// waits, as the lease committer does: a lone client, and any low rate, is
/// answered at once. Under load a reply waits at most this long more, which no
/// DHCP client notices: they wait seconds, and an ACK already waits for its commit.
const READ_COALESCE: Duration = Duration::from_millis(1);
/// Most datagrams taken in one wake-up.
const MAX_DRAIN: usize = 256;
/// How often a reader blocked in recvmsg(2) wakes to notice shutdown.
const READ_WAKE: Duration = Duration::from_millis(100);

/// One socket's reader, on a thread of its own: blocked in recvmsg(2) until a
/// datagram comes, then everything queued goes to the decider's inbox.
fn read_loop(listener: Listener, index: usize, inbox: Inbox, cancel: CancellationToken) {
    let mut buf = vec![0u8; 1500];
    // When the last wake-up found company.
    let mut busy_since: Option<Instant> = None;
    while !cancel.is_cancelled() {
        if let Some(next) = busy_since.take().map(|at| at + READ_COALESCE) {
            let now = Instant::now();
            if now < next {
                std::thread::sleep(next - now);
            }
        }
        let mut woke = None;
        let mut batch = Vec::new();
        for taken in 0..MAX_DRAIN {
            let wait = if taken == 0 { Wait::Yes } else { Wait::No };
            let (len, peer, info) = match pktinfo::recv_now(&*listener.socket, &mut buf, wait) {
                Ok(received) => received,
                // Nothing (more) queued, or READ_WAKE passed: look at `cancel` again.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    break
                }
                Err(e) => {
                    warn!(interface = %listener.interface, error = %e, "DHCP receive failed");
                    // Not a hot loop if the error persists (an interface gone).
                    std::thread::sleep(READ_WAKE);
                    break;
                }
            };
            let woke_at = *woke.get_or_insert_with(Instant::now);
            if taken == 1 {
                busy_since = Some(woke_at);
            }
            let broadcast = info.header_dst != info.local;
            let local = match listener.broadcast_source {
                Some(ours) if broadcast => ours,
                _ => info.local,
            };
            if inbox.has_room(&batch) {
                batch.push(Datagram { bytes: buf[..len].to_vec(), peer, local, listener: index });
            } else {
                count(None, "dropped_overload");
            }
        }
        if !batch.is_empty() && !inbox.send(batch) {
            return;
        }
    }
}

/// What the decider does next with a packet.
enum Next {
    Send(Outgoing),
    Commit(Pending),
}

fn handle(
    d: &Datagram,
    port: Port,
    socket: &Arc<UdpSocket>,
    policy: &DhcpPolicy,
    leases: &mut Leases,
    hosts: &Hosts,
    server_port: u16,
) -> Option<Next> {
    // Decoding is third-party code fed by the network: a panic there must cost one
    // packet, not the DHCP service.
    let request = match std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(&d.bytes))) {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            count(None, "undecodable");
            warn!(peer = %d.peer, bytes = d.bytes.len(), error = %e, "dropping undecodable DHCP packet");
            return None;
        }
        Err(_) => {
            count(None, "undecodable");
            error!(peer = %d.peer, packet = %hex::encode(&d.bytes), "DHCP decoder panicked; packet dropped");
            return None;
        }
    };
    let (now, _) = unix_now();
    let request_type = request.opts().msg_type();
    let arrival = Arrival { local_addr: d.local, peer: *d.peer.ip(), port };
    if let Screen::Untrusted(disregarded) = relay::screen(&request, arrival, policy) {
        if disregarded.any() {
            note_disregarded(&request, d.peer, disregarded);
        }
    }
    let inbound = Inbound { msg: &request, raw: &d.bytes, arrival };
    match decide(&inbound, policy, leases, hosts, now) {
        Decision::Reply { reply, grant, client, boot, seen } => {
            let reply_type = reply.opts().msg_type().unwrap_or(MessageType::Unknown(0));
            metrics::counter!("ramboot_dhcp_boot_choices_total", "choice" => boot.label()).increment(1);
            // One macro, two levels: tracing's level must be known at the call site.
            macro_rules! log_decision {
                ($level:expr) => {
                    tracing::event!(
                        target: "ramboot::dhcp::decision",
                        $level,
                        mac = %client.mac,
                        request = ?request_type,
                        reply = ?reply_type,
                        ip = %reply.yiaddr(),
                        relay = %request.giaddr(),
                        arch = %client.arch.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
                        firmware = ?client.firmware,
                        boot_file = boot.file().unwrap_or("-"),
                        reason = boot.reason(),
                        "DHCP decision"
                    )
                };
            }
            if ends_a_boot_phase(&request, &reply) {
                log_decision!(tracing::Level::INFO);
            } else {
                log_decision!(tracing::Level::DEBUG);
            }
            let bytes = match encode_reply(&reply, &d.bytes) {
                Ok(b) => b,
                Err(e) => {
                    error!(mac = %client.mac, error = %e, "encoding DHCP reply failed");
                    if let Some(g) = grant {
                        leases.undo(policy, &g.undo);
                    }
                    return None;
                }
            };
            let outcome = match reply_type {
                MessageType::Offer => "offer",
                MessageType::Ack => "ack",
                MessageType::Nak => "nak",
                _ => "other",
            };
            let out = Outgoing {
                bytes,
                dest: reply_destination(&request, reply_type, port, d.peer, server_port),
                source: d.local,
                socket: socket.clone(),
                request_type,
                outcome,
            };
            if let Some(ip) = seen {
                return Some(Next::Commit(Pending { op: seen_op(&client, ip), reply: Some(out), undo: None }));
            }
            match grant {
                // Durable before it is announced: the committer sends the ACK.
                Some(g) => Some(Next::Commit(Pending {
                    undo: Some(g.undo),
                    op: LeaseOp::Grant {
                        mac: g.mac,
                        ip: g.ip,
                        expires_at: g.expires_at,
                        netboot: client.firmware != Firmware::Plain,
                        known: hosts.get(g.mac).is_some(),
                        arch: client.arch.map(|a| a.to_string()),
                        uuid: client.uuid.as_deref().and_then(classify::format_uuid),
                    },
                    reply: Some(out),
                })),
                None => Some(Next::Send(out)),
            }
        }
        Decision::Released { mac, ip, undo } => {
            count(request_type, "released");
            info!(target: "ramboot::dhcp::decision", %mac, %ip, "DHCP release");
            Some(Next::Commit(Pending { op: LeaseOp::Release { mac, ip }, reply: None, undo: Some(undo) }))
        }
        Decision::Declined { mac, ip, until } => {
            count(request_type, "declined");
            warn!(target: "ramboot::dhcp::decision", %mac, %ip, until, "DHCP decline: address in use by someone else, quarantined");
            // A decline that fails to persist stays quarantined in memory: the safe side.
            Some(Next::Commit(Pending { op: LeaseOp::Decline { mac, ip, until }, reply: None, undo: None }))
        }
        Decision::Ignore(reason @ IgnoreReason::AgentInfoWithoutRelay) => {
            count(request_type, "dropped_relay_info");
            warn!(
                target: "ramboot::dhcp::decision",
                peer = %d.peer,
                mac = %mac_of(&request),
                request = ?request_type,
                %reason,
                "DHCP packet dropped: option 82 from a client, not a relay"
            );
            None
        }
        Decision::Seen { ip, client } => {
            count(request_type, "seen");
            debug!(target: "ramboot::dhcp::decision", mac = %client.mac, %ip, "proxyDHCP: client takes an address");
            Some(Next::Commit(Pending { op: seen_op(&client, ip), reply: None, undo: None }))
        }
        Decision::Ignore(reason @ IgnoreReason::Unclassifiable(ClassifyError::NotEthernet { .. })) => {
            // InfiniBand (htype 32) and others: nodes are known by their Ethernet MAC
            // everywhere (docs/firmware-quirks.md), so these are counted apart.
            count(request_type, "not_ethernet");
            debug!(target: "ramboot::dhcp::decision", peer = %d.peer, request = ?request_type, %reason, "DHCP ignored");
            None
        }
        Decision::Ignore(reason) => {
            count(request_type, "ignored");
            debug!(target: "ramboot::dhcp::decision", peer = %d.peer, request = ?request_type, %reason, "DHCP ignored");
            None
        }
    }
}

/// A proxyDHCP sighting of `client` at `ip`, to record.
fn seen_op(client: &Client, ip: Ipv4Addr) -> LeaseOp {
    LeaseOp::Seen {
        mac: client.mac,
        ip,
        arch: client.arch.map(|a| a.to_string()),
        uuid: client.uuid.as_deref().and_then(classify::format_uuid),
    }
}

/// The client's MAC for a log line (`classify` checks hlen: `chaddr()` would panic on a bad one).
fn mac_of(request: &Message) -> String {
    classify::classify(request).map_or_else(|_| "-".into(), |c| c.mac.to_string())
}

/// Count and log relay-supplied options disregarded because the packet came from no
/// trusted relay (see `ramboot_core::dhcp::relay`).
fn note_disregarded(request: &Message, peer: SocketAddrV4, disregarded: relay::Disregarded) {
    for name in disregarded.names() {
        metrics::counter!("ramboot_dhcp_relay_info_disregarded_total", "option" => name).increment(1);
    }
    let options: Vec<&str> = disregarded.names().collect();
    let (relay, mac) = (request.giaddr(), mac_of(request));
    if disregarded.selector() {
        // It would have chosen the subnet: the operator must know it did not.
        warn!(target: "ramboot::dhcp::decision", %peer, %relay, %mac, ?options,
            "link selection from a relay not in dhcp.trusted_relays: ignored, subnet chosen by giaddr");
    } else {
        debug!(target: "ramboot::dhcp::decision", %peer, %relay, %mac, ?options,
            "relay agent information from a relay not in dhcp.trusted_relays: echoed, not used");
    }
}

/// What the committer hands back to the decider's pools.
enum Rollback {
    /// The batch failed: restore the binding this grant or release replaced.
    Undo(Undo),
    /// The database refused this grant: the address is another server's lease (or
    /// quarantine). Undo it, and bind the address to its holder so it is not offered
    /// again until that ends.
    Taken { undo: Option<Undo>, taken: Taken },
}

impl Rollback {
    fn apply(self, policy: &DhcpPolicy, leases: &mut Leases) {
        match self {
            Rollback::Undo(undo) => leases.undo(policy, &undo),
            Rollback::Taken { undo, taken } => {
                if let Some(undo) = undo {
                    leases.undo(policy, &undo);
                }
                let kind = if taken.declined { BindingKind::Quarantined } else { BindingKind::Leased };
                leases.restore(policy, taken.ip, taken.holder, taken.expires_at, kind);
            }
        }
    }
}

/// Group commit: take everything queued, write it in one transaction, then send the
/// replies that waited for it. A failed batch sends nothing and hands its undos back
/// to the decider, newest first, which restores the bindings they replaced. A grant
/// the database refused (another server holds the address) gets no ACK either; the
/// client's retry is offered another address.
async fn commit_loop(
    store: Store,
    mut queue: mpsc::Receiver<Pending>,
    failed: mpsc::UnboundedSender<Rollback>,
    commit_delay: Duration,
) {
    let mut batch = Batch::new(commit_delay);
    let runtime = tokio::runtime::Handle::current();
    while let Some(first) = queue.recv().await {
        if let Some(pause) = batch.pause() {
            tokio::time::sleep(pause).await;
        }
        batch.gather(first, &mut queue);
        let started = Instant::now();
        let result = store.commit_dhcp(&batch.ops, unix_now().1).await;
        for reply in batch.settle(result, started, &failed) {
            reply.send(&runtime);
        }
    }
}

/// [`commit_loop`] on a SQLite database, on a thread of its own that may block:
/// each batch runs whole there (statements, commit, fsync) and its replies leave
/// from there, so a batch costs this thread one wake-up and the runtime none.
fn commit_loop_sync(
    store: Store,
    mut writer: SyncLeaseWriter,
    mut queue: mpsc::Receiver<Pending>,
    failed: mpsc::UnboundedSender<Rollback>,
    runtime: tokio::runtime::Handle,
    commit_delay: Duration,
) {
    let mut batch = Batch::new(commit_delay);
    while let Some(first) = queue.blocking_recv() {
        if let Some(pause) = batch.pause() {
            std::thread::sleep(pause);
        }
        batch.gather(first, &mut queue);
        let started = Instant::now();
        let result = store.commit_dhcp_sync(&mut writer, &batch.ops, unix_now().1);
        for reply in batch.settle(result, started, &failed) {
            reply.send(&runtime);
        }
    }
}

/// The lease changes of one commit and, alongside (same index), the replies
/// waiting for them and the pool changes to roll back if they are not saved.
#[derive(Default)]
struct Batch {
    ops: Vec<LeaseOp>,
    replies: Vec<Option<Outgoing>>,
    undos: Vec<Option<Undo>>,
    /// `dhcp.commit_delay_us`, and how many leases the last commit carried.
    delay: Duration,
    last_size: usize,
}

impl Batch {
    fn new(delay: Duration) -> Batch {
        Batch { delay, ..Batch::default() }
    }

    /// How long to let the next batch fill before gathering it: the commit delay
    /// when the last commit had company (clients are arriving faster than commits
    /// finish, so waiting adds leases to one fsync); none for a lone client.
    fn pause(&self) -> Option<Duration> {
        (self.last_size > 1 && !self.delay.is_zero()).then_some(self.delay)
    }

    /// `first` and whatever else is queued already, up to [`MAX_BATCH`].
    fn gather(&mut self, first: Pending, queue: &mut mpsc::Receiver<Pending>) {
        let mut next = Some(first);
        while let Some(p) = next.take() {
            self.ops.push(p.op);
            self.replies.push(p.reply);
            self.undos.push(p.undo);
            if self.ops.len() < MAX_BATCH {
                next = queue.try_recv().ok();
            }
        }
        self.last_size = self.ops.len();
    }

    /// Act on the store's answer and empty the batch: the replies that may go now.
    /// Grants the database refused (another server's lease) and a failed commit
    /// roll the decider's pool back through `failed` and send nothing.
    fn settle(
        &mut self,
        result: Result<Vec<Taken>, StoreError>,
        started: Instant,
        failed: &mpsc::UnboundedSender<Rollback>,
    ) -> Vec<Outgoing> {
        metrics::histogram!("ramboot_dhcp_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("ramboot_dhcp_commit_batch_size").record(self.ops.len() as f64);
        let mut ready = Vec::with_capacity(self.replies.len());
        match result {
            Ok(taken) => {
                for ((op, reply), undo) in self.ops.drain(..).zip(self.replies.drain(..)).zip(self.undos.drain(..)) {
                    let refused = match op {
                        LeaseOp::Grant { ip, mac, .. } => taken.iter().find(|t| t.ip == ip).map(|t| (mac, t.clone())),
                        _ => None,
                    };
                    match (refused, reply) {
                        (Some((mac, taken)), reply) => {
                            metrics::counter!("ramboot_dhcp_grants_taken_total").increment(1);
                            if let Some(reply) = reply {
                                count(reply.request_type, "taken_elsewhere");
                            }
                            info!(target: "ramboot::dhcp::decision", %mac, ip = %taken.ip, holder = %taken.holder,
                                declined = taken.declined,
                                "the database holds this address for another client (another server's lease): no ACK");
                            let _ = failed.send(Rollback::Taken { undo, taken });
                        }
                        (None, Some(reply)) => ready.push(reply),
                        (None, None) => {}
                    }
                }
            }
            Err(e) => {
                let (reason, label) = match &e {
                    StoreError::Unwritable { reason, .. } => (reason.to_string(), reason.label()),
                    _ => ("database error".to_string(), "error"),
                };
                metrics::counter!("ramboot_dhcp_commit_failures_total", "reason" => label).increment(1);
                error!(
                    leases = self.undos.len(),
                    %reason,
                    error = %e,
                    "lease commit failed: no ACKs sent; the pool keeps the previous bindings (clients will retry)"
                );
                self.ops.clear();
                for undo in self.undos.drain(..).flatten().rev() {
                    let _ = failed.send(Rollback::Undo(undo));
                }
                for reply in self.replies.drain(..).flatten() {
                    count(reply.request_type, "store_error");
                }
            }
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use dhcproto::v4::{DhcpOption, Flags};

    #[tokio::test]
    async fn the_inbox_bounds_the_datagrams_waiting_across_batches() {
        let (inbox, mut decider) = inbox();
        let datagram = || Datagram {
            bytes: vec![1],
            peer: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 68),
            local: Ipv4Addr::LOCALHOST,
            listener: 0,
        };
        let full: Vec<Datagram> = (0..INBOX - 1).map(|_| datagram()).collect();
        assert!(inbox.has_room(&full), "room for the last one");
        assert!(inbox.send(full));
        let mut next = vec![datagram()];
        assert!(!inbox.has_room(&next), "the bound counts what waits in earlier batches");
        // The decider takes a batch: room again.
        decider.recv().await.unwrap();
        assert!(inbox.has_room(&next));
        next.push(datagram());
        assert!(inbox.send(next));
        drop(decider);
        assert!(!inbox.send(vec![datagram()]), "a stopped decider is reported");
    }

    #[test]
    fn the_commit_delay_waits_only_behind_a_commit_that_had_company() {
        let (tx, mut rx) = mpsc::channel(8);
        let release = |n: u8| Pending {
            op: LeaseOp::Release {
                mac: ramboot_core::node::MacAddr([2, 0, 0, 0, 0, n]),
                ip: Ipv4Addr::new(10, 0, 0, n),
            },
            reply: None,
            undo: None,
        };
        let mut batch = Batch::new(Duration::from_millis(1));
        assert_eq!(batch.pause(), None, "the first commit does not wait");
        batch.gather(release(1), &mut rx);
        assert_eq!(batch.pause(), None, "a lone client's lease is written at once");
        batch.ops.clear();
        tx.try_send(release(3)).unwrap();
        batch.gather(release(2), &mut rx);
        assert_eq!(batch.ops.len(), 2);
        assert_eq!(batch.pause(), Some(Duration::from_millis(1)), "two at once: the next batch may fill");
        assert_eq!(Batch::new(Duration::ZERO).pause(), None);
        let mut off = Batch::new(Duration::ZERO);
        off.last_size = 100;
        assert_eq!(off.pause(), None, "0 turns it off");
    }

    fn request(mac: [u8; 6], kind: MessageType) -> Message {
        let any = Ipv4Addr::UNSPECIFIED;
        let mut msg = Message::new_with_id(0x1234_5678, any, any, any, any, &mac);
        msg.opts_mut().insert(DhcpOption::MessageType(kind));
        msg
    }

    #[test]
    fn replies_go_to_relay_then_ciaddr_then_broadcast() {
        let peer = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
        let dest = |req: &Message, kind| reply_destination(req, kind, Port::Dhcp, peer, 67);
        let mut req = request([2, 0, 0, 0, 0, 1], MessageType::Request);
        assert_eq!(dest(&req, MessageType::Ack), SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        req.set_ciaddr(Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(dest(&req, MessageType::Ack), "10.0.0.5:68".parse().unwrap());
        assert_eq!(dest(&req, MessageType::Nak), SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        req.set_giaddr(Ipv4Addr::new(10, 1, 0, 1)).set_flags(Flags::default().set_broadcast());
        assert_eq!(dest(&req, MessageType::Ack), "10.1.0.1:67".parse().unwrap());
        assert_eq!(dest(&req, MessageType::Nak), "10.1.0.1:67".parse().unwrap());
        // A boot-server request on 4011 is answered where it came from.
        let client = "10.0.0.77:4011".parse().unwrap();
        assert_eq!(reply_destination(&req, MessageType::Ack, Port::Binl, client, 67), client);
    }

    #[test]
    fn one_line_at_info_per_dhcp_client_per_boot() {
        let mac = [2, 0, 0, 0, 0, 1];
        let leased = Ipv4Addr::new(10, 0, 0, 5);
        let reply = |kind, yiaddr| {
            let mut msg = request(mac, kind);
            msg.set_yiaddr(yiaddr);
            msg
        };
        let selecting = request(mac, MessageType::Request);
        let mut renewing = request(mac, MessageType::Request);
        renewing.set_ciaddr(leased);
        let discover = request(mac, MessageType::Discover);
        assert!(ends_a_boot_phase(&selecting, &reply(MessageType::Ack, leased)), "the lease");
        assert!(!ends_a_boot_phase(&renewing, &reply(MessageType::Ack, leased)), "a renewal");
        assert!(!ends_a_boot_phase(&discover, &reply(MessageType::Offer, leased)), "an address offered");
        assert!(ends_a_boot_phase(&discover, &reply(MessageType::Offer, Ipv4Addr::UNSPECIFIED)), "a proxy offer");
        assert!(ends_a_boot_phase(&selecting, &reply(MessageType::Nak, Ipv4Addr::UNSPECIFIED)), "a refusal");
    }
}
