//! The DHCP decision pipeline: `(packet, arrival, now, leases, hosts) → Decision`.
//!
//! Pure: no sockets, no clock, no store. Stages, each a small function with its own
//! tests: classify the client → screen what a relay asserts ([`relay::screen`]:
//! option 82 without a relay is dropped, link selection believed only from trusted
//! relays) → pick its subnet (relay link, giaddr, ciaddr or the arrival interface)
//! → look it up in the node inventory (reservation, hostname, unknown-client
//! policy) → choose the boot file (an iPXE binary, or the script for ramboot's own
//! iPXE: [`super::ipxe`]) → act on the message type (offer, grant, NAK, release,
//! decline, inform; or the proxyDHCP answer) → build the reply's options. The
//! server's socket layer (`ramboot::dhcp::io`) persists any [`LeaseGrant`] *before*
//! it sends the reply that carries it.

use super::classify::{arch_of, classify, Arch, ClassifyError, Client, Firmware};
use super::ipxe::{self, ForeignIpxe, Handovers, ScriptFor};
use super::policy::{DhcpMode, DhcpPolicy, SubnetConfig, UnknownClients};
use super::pool::{BindingKind, LeasePool, Undo};
use super::relay::{self as trust, Screen};
use crate::node::MacAddr;
use crate::profile::BootChain;
use dhcproto::v4::{relay, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption};
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// Largest `file` header field (RFC 2131 §2); longer names go only in option 67.
const FILE_FIELD_LEN: usize = 128;

/// Which port a packet came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// 67: DHCP (and proxyDHCP offers).
    Dhcp,
    /// 4011: the PXE boot-server (BINL) request a client sends after a proxy offer.
    Binl,
}

/// Where and how a packet arrived: filled in by the socket layer (`IP_PKTINFO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Our address on the arrival interface, or the unicast address the packet was
    /// sent to: the server identifier of the reply.
    pub local_addr: Ipv4Addr,
    /// The packet's UDP source address (a relay's, or 0.0.0.0 from a client with
    /// no address yet): a relay is trusted only if this is listed too.
    pub peer: Ipv4Addr,
    pub port: Port,
}

/// One received packet, decoded, with the raw bytes (option 82 is echoed byte for byte).
pub struct Inbound<'a> {
    pub msg: &'a Message,
    pub raw: &'a [u8],
    pub arrival: Arrival,
}

/// A node the inventory knows: its reservation and hostname, if any, and what
/// chooses its boot chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    pub reserved_ip: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    /// Its assigned profile, whose `boot_chain` applies unless the node has its own.
    pub profile: Option<String>,
    /// The node's own boot chain, over any profile's.
    pub boot_chain: Option<BootChain>,
}

/// The node inventory as DHCP sees it, rebuilt from the store when nodes change,
/// and each profile's boot chain, updated when profiles reload.
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    by_mac: HashMap<MacAddr, Host>,
    profile_chains: HashMap<String, BootChain>,
    /// The default profile's chain: nodes with no assigned profile boot it (DHCP
    /// cannot know which selector a node will match before it reports hardware).
    default_chain: Option<BootChain>,
}

impl Hosts {
    pub fn new(hosts: impl IntoIterator<Item = (MacAddr, Host)>) -> Hosts {
        Hosts { by_mac: hosts.into_iter().collect(), profile_chains: HashMap::new(), default_chain: None }
    }
    /// The profiles that name a `boot_chain` (the others follow the policy's), and
    /// which profile nodes without an assigned one boot.
    pub fn set_profile_chains(
        &mut self,
        chains: impl IntoIterator<Item = (String, BootChain)>,
        default_profile: Option<&str>,
    ) {
        self.profile_chains = chains.into_iter().collect();
        self.default_chain = default_profile.and_then(|p| self.profile_chains.get(p).copied());
    }
    /// The chain a client boots: the node's own, else its assigned profile's,
    /// else the default profile's (unknown clients too), else the policy's.
    pub fn chain_of(&self, host: Option<&Host>, policy: &DhcpPolicy) -> BootChain {
        if let Some(own) = host.and_then(|h| h.boot_chain) {
            return own;
        }
        match host.and_then(|h| h.profile.as_ref()) {
            Some(assigned) => self.profile_chains.get(assigned).copied(),
            None => self.default_chain,
        }
        .unwrap_or(policy.boot_chain)
    }
    pub fn get(&self, mac: MacAddr) -> Option<&Host> {
        self.by_mac.get(&mac)
    }
    pub fn insert(&mut self, mac: MacAddr, host: Host) {
        self.by_mac.insert(mac, host);
    }
    pub fn len(&self) -> usize {
        self.by_mac.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }
    /// Reserved address → its MAC, for the pools.
    pub fn reservations(&self) -> impl Iterator<Item = (Ipv4Addr, MacAddr)> + '_ {
        self.by_mac.iter().filter_map(|(mac, h)| h.reserved_ip.map(|ip| (ip, *mac)))
    }
}

/// Dynamic state: one pool per configured subnet, in config order, and the recent
/// handovers of ramboot's iPXE.
#[derive(Debug, Clone)]
pub struct Leases {
    pools: Vec<LeasePool>,
    handovers: Handovers,
}

impl Leases {
    pub fn new(policy: &DhcpPolicy) -> Leases {
        Leases {
            pools: policy.subnets.iter().map(|s| LeasePool::with_share(&s.ranges, policy.share)).collect(),
            handovers: Handovers::default(),
        }
    }

    fn index_of(policy: &DhcpPolicy, ip: Ipv4Addr) -> Option<usize> {
        policy.subnets.iter().position(|s| s.net.contains(&ip))
    }

    /// Restore a persisted binding (at start-up). Addresses outside every subnet are
    /// skipped and reported.
    pub fn restore(
        &mut self,
        policy: &DhcpPolicy,
        ip: Ipv4Addr,
        mac: MacAddr,
        expires_at: u64,
        kind: BindingKind,
    ) -> bool {
        match Self::index_of(policy, ip) {
            Some(i) => {
                self.pools[i].restore(ip, mac, expires_at, kind);
                true
            }
            None => false,
        }
    }

    /// Another server sharing the lease database released `ip` (learned from the
    /// database's change feed): free for anyone, remembered as `mac`'s.
    pub fn released_elsewhere(&mut self, policy: &DhcpPolicy, mac: MacAddr, ip: Ipv4Addr) {
        if let Some(i) = Self::index_of(policy, ip) {
            self.pools[i].release(mac, ip);
        }
    }

    /// Install the inventory's reservations; returns those outside every subnet.
    pub fn set_reservations(&mut self, policy: &DhcpPolicy, hosts: &Hosts) -> Vec<(Ipv4Addr, MacAddr)> {
        let mut per_pool: Vec<Vec<(Ipv4Addr, MacAddr)>> = vec![Vec::new(); self.pools.len()];
        let mut stray = Vec::new();
        for (ip, mac) in hosts.reservations() {
            match Self::index_of(policy, ip) {
                Some(i) => per_pool[i].push((ip, mac)),
                None => stray.push((ip, mac)),
            }
        }
        for (pool, reserved) in self.pools.iter_mut().zip(per_pool) {
            pool.set_reserved(reserved);
        }
        stray
    }

    /// Roll back a grant or release whose commit failed (see [`LeasePool::undo`]):
    /// the binding it replaced comes back. Undo a batch newest first.
    pub fn undo(&mut self, policy: &DhcpPolicy, undo: &Undo) {
        if let Some(i) = Self::index_of(policy, undo.ip()) {
            self.pools[i].undo(undo);
        }
    }

    pub fn pool(&self, index: usize) -> Option<&LeasePool> {
        self.pools.get(index)
    }
}

/// The boot file a client is told to load, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootChoice {
    /// An iPXE that may run the per-node script gets its URL (which also breaks the
    /// PXE → iPXE → PXE chainload loop).
    IpxeScript(String, ScriptFor),
    /// Another iPXE build: load ramboot's iPXE over TFTP first (see [`super::super::ipxe`]).
    ChainIpxe(String),
    /// A PXE ROM: load iPXE over TFTP.
    Tftp(String),
    /// UEFI HTTP boot: load iPXE by URL.
    Http(String),
    /// The signed chain for Secure Boot: a PXE firmware loads shim over TFTP, shim
    /// loads GRUB from beside it, GRUB the per-node `grub.cfg` (`crate::boot`).
    Signed(String),
    /// No boot file, for the stated reason.
    None(&'static str),
}

impl BootChoice {
    pub fn file(&self) -> Option<&str> {
        match self {
            BootChoice::IpxeScript(f, _)
            | BootChoice::ChainIpxe(f)
            | BootChoice::Tftp(f)
            | BootChoice::Http(f)
            | BootChoice::Signed(f) => Some(f),
            BootChoice::None(_) => None,
        }
    }

    /// Does the client get one of ramboot's iPXE binaries?
    pub fn hands_over_ipxe(&self) -> bool {
        matches!(self, BootChoice::ChainIpxe(_) | BootChoice::Tftp(_) | BootChoice::Http(_))
    }

    /// A metric label for this choice.
    pub fn label(&self) -> &'static str {
        match self {
            BootChoice::IpxeScript(_, ScriptFor::OwnUserClass) => "script_own_ipxe",
            BootChoice::IpxeScript(_, ScriptFor::FollowsHandover) => "script_after_handover",
            BootChoice::IpxeScript(_, ScriptFor::AnyIpxe) => "script_any_ipxe",
            BootChoice::IpxeScript(_, ScriptFor::NoOwnBinary) => "script_no_own_binary",
            BootChoice::ChainIpxe(_) => "chain_ipxe",
            BootChoice::Tftp(_) => "pxe_tftp",
            BootChoice::Http(_) => "http_boot",
            BootChoice::Signed(_) => "signed_chain",
            BootChoice::None(_) => "none",
        }
    }

    /// Why this choice, for the one log line per decision.
    pub fn reason(&self) -> &'static str {
        match self {
            BootChoice::IpxeScript(_, why) => why.reason(),
            BootChoice::ChainIpxe(_) => "another iPXE build: ramboot's iPXE first, over TFTP",
            BootChoice::Tftp(_) => "PXE ROM: iPXE binary for its arch over TFTP",
            BootChoice::Http(_) => "UEFI HTTP boot: iPXE binary by URL",
            BootChoice::Signed(_) => "boot_chain signed: shim over TFTP, then GRUB and the per-node grub.cfg",
            BootChoice::None(why) => why,
        }
    }
}

/// What `client`, in DHCP session `xid`, is told to load. Handovers of ramboot's
/// iPXE are remembered so that the iPXE that follows one runs the script.
pub fn choose_boot(
    client: &Client,
    xid: u32,
    (policy, chain): (&DhcpPolicy, BootChain),
    handovers: &mut Handovers,
    now: u64,
) -> BootChoice {
    // A PXE ROM that sends no option 93 is a legacy BIOS one (RFC 4578 §2.1).
    let arch = client.arch.unwrap_or(Arch::BIOS);
    if chain == BootChain::Signed && client.firmware == Firmware::Pxe {
        // Architectures without a signed chain (BIOS) fall through to iPXE.
        if let Some(shim) = policy.signed_boot_files.get(&arch) {
            return BootChoice::Signed(shim.clone());
        }
    }
    let binary = policy.boot_files.get(&arch);
    let script = |why| BootChoice::IpxeScript(format!("{}/boot.ipxe?mac={}", policy.boot_url, client.mac), why);
    let choice = match (client.firmware, binary) {
        (Firmware::Ipxe, _) if ipxe::is_own(&client.user_classes, &policy.ipxe) => script(ScriptFor::OwnUserClass),
        (Firmware::Ipxe, _) if policy.ipxe.foreign == ForeignIpxe::Script => script(ScriptFor::AnyIpxe),
        (Firmware::Ipxe, _) if handovers.follows_handover(client.mac, xid, now) => script(ScriptFor::FollowsHandover),
        (Firmware::Ipxe, Some(file)) if !policy.ipxe.missing.contains(file) => BootChoice::ChainIpxe(file.clone()),
        (Firmware::Ipxe, _) => script(ScriptFor::NoOwnBinary),
        (Firmware::HttpClient, Some(file)) => BootChoice::Http(format!("{}/ipxe/{file}", policy.boot_url)),
        (Firmware::Pxe, Some(file)) => BootChoice::Tftp(file.clone()),
        (Firmware::HttpClient | Firmware::Pxe, None) => BootChoice::None("no boot file for this architecture"),
        (Firmware::Plain, _) => BootChoice::None("not a network-boot client"),
    };
    if choice.hands_over_ipxe() {
        handovers.handed_over(client.mac, xid, now);
    }
    choice
}

/// Option 77 in a reply that hands over ramboot's iPXE: the BIOS iPXE takes the
/// cached DHCPACK's options as settings and so announces itself with it.
fn plant_user_class(opts: &mut dhcproto::v4::DhcpOptions, boot: &BootChoice, policy: &DhcpPolicy) {
    if boot.hands_over_ipxe() {
        opts.insert(DhcpOption::UserClass(policy.ipxe.user_class.as_bytes().to_vec()));
    }
}

/// A lease the socket layer must persist before sending the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGrant {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub expires_at: u64,
    /// Rolls the pool back if persisting fails ([`Leases::undo`]).
    pub undo: Undo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send `reply`; if `grant` is set, persist it first and send nothing if that fails.
    /// `seen`: proxyDHCP, a boot-server request from the address it names as its own
    /// (ciaddr, also its source): where its boot token may go, recorded first.
    Reply { reply: Box<Message>, grant: Option<LeaseGrant>, client: Client, boot: BootChoice, seen: Option<Ipv4Addr> },
    /// The client gave its address back: mark the stored lease released (and roll
    /// the pool back with `undo` if that fails).
    Released { mac: MacAddr, ip: Ipv4Addr, undo: Undo },
    /// The client found the address in use: quarantined until `until`, record it.
    Declined { mac: MacAddr, ip: Ipv4Addr, until: u64 },
    /// ProxyDHCP, no reply: a network-boot client asked the site server for `ip`
    /// (option 50, or ciaddr when renewing). Where its boot token may go, on the
    /// client's word: see `docs/threat-model.md`.
    Seen { ip: Ipv4Addr, client: Client },
    /// No reply, for the stated reason.
    Ignore(IgnoreReason),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IgnoreReason {
    #[error("not a BOOTREQUEST")]
    NotRequest,
    #[error("no DHCP message type (plain BOOTP is not served)")]
    NoMessageType,
    #[error("message type {0:?} is not handled by a server")]
    UnsupportedType(MessageType),
    #[error(transparent)]
    Unclassifiable(#[from] ClassifyError),
    #[error("no subnet is configured for link {0}")]
    NoSubnet(Ipv4Addr),
    #[error("unknown client on a subnet that ignores unknown clients")]
    UnknownClient,
    #[error("address pool exhausted")]
    PoolExhausted,
    #[error("client chose another server ({0})")]
    OtherServer(Ipv4Addr),
    #[error("REQUEST names no address")]
    NoRequestedAddress,
    #[error("INIT-REBOOT for {0}, of which we have no record (another server's client)")]
    NoRecord(Ipv4Addr),
    #[error("{0} is not ours to release or decline")]
    NotOurs(Ipv4Addr),
    #[error("proxyDHCP answers only network-boot clients")]
    NotNetbootClient,
    #[error("port 4011 is served only in proxy mode")]
    BinlNotProxy,
    #[error("relay agent information (option 82) with giaddr 0: no relay added it (RFC 3046 §2.1)")]
    AgentInfoWithoutRelay,
}

/// Decide what to do with one packet at time `now` (Unix seconds).
pub fn decide(inbound: &Inbound, policy: &DhcpPolicy, leases: &mut Leases, hosts: &Hosts, now: u64) -> Decision {
    match decide_inner(inbound, policy, leases, hosts, now) {
        Ok(decision) => decision,
        Err(reason) => Decision::Ignore(reason),
    }
}

fn decide_inner(
    inbound: &Inbound,
    policy: &DhcpPolicy,
    leases: &mut Leases,
    hosts: &Hosts,
    now: u64,
) -> Result<Decision, IgnoreReason> {
    let msg = inbound.msg;
    if msg.opcode() != Opcode::BootRequest {
        return Err(IgnoreReason::NotRequest);
    }
    let kind = msg.opts().msg_type().ok_or(IgnoreReason::NoMessageType)?;
    let screen = trust::screen(msg, inbound.arrival, policy);
    if screen == Screen::Drop {
        return Err(IgnoreReason::AgentInfoWithoutRelay);
    }
    let client = classify(msg)?;
    let link = link_address(msg, inbound.arrival, screen.trusted());
    let subnet_index = Leases::index_of(policy, link);
    let host = hosts.get(client.mac);
    let unknown_policy = subnet_index.map_or(UnknownClients::Discovery, |i| policy.subnets[i].unknown_clients);
    if host.is_none() && unknown_policy == UnknownClients::Ignore {
        return Err(IgnoreReason::UnknownClient);
    }
    let boot = if host.is_none() && unknown_policy == UnknownClients::AddressOnly {
        BootChoice::None("unknown client: address only")
    } else {
        let chain = hosts.chain_of(host, policy);
        choose_boot(&client, msg.xid(), (policy, chain), &mut leases.handovers, now)
    };
    if policy.mode == DhcpMode::Proxy || inbound.arrival.port == Port::Binl {
        return proxy(inbound, kind, client, boot, policy);
    }
    let index = subnet_index.ok_or(IgnoreReason::NoSubnet(link))?;
    let subnet = &policy.subnets[index];
    let pool = &mut leases.pools[index];
    let requested = match msg.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let ours = inbound.arrival.local_addr;
    let reply = |kind, ip, boot: &BootChoice| build_reply(inbound, kind, ip, boot, subnet, host, policy);
    match kind {
        MessageType::Discover => {
            let ip =
                pool.offer(client.mac, requested, now, policy.offer_hold_secs).ok_or(IgnoreReason::PoolExhausted)?;
            let offer = reply(MessageType::Offer, ip, &boot);
            Ok(Decision::Reply { reply: Box::new(offer), grant: None, client, boot, seen: None })
        }
        MessageType::Request => {
            let state = RequestState::of(msg, requested, server_id);
            if let RequestState::Selecting(id) = state {
                if id != ours {
                    // The client took another server's offer: free ours at once.
                    if let Some(ip) = pool.held_by(client.mac, now) {
                        if pool.binding(ip).is_some_and(|b| b.kind == BindingKind::Offered) {
                            pool.forget(client.mac, ip);
                        }
                    }
                    return Err(IgnoreReason::OtherServer(id));
                }
            }
            let ip = match state {
                RequestState::Selecting(_) | RequestState::InitReboot => requested,
                RequestState::Renewing => Some(msg.ciaddr()),
            }
            .ok_or(IgnoreReason::NoRequestedAddress)?;
            let nak = || {
                let nak = build_nak(inbound, ours);
                Ok(Decision::Reply {
                    reply: Box::new(nak),
                    grant: None,
                    client: client.clone(),
                    boot: boot.clone(),
                    seen: None,
                })
            };
            // RFC 2131 §4.3.2: a wrong-network address is NAKed in every state.
            if !subnet.net.contains(&ip) {
                return nak();
            }
            if state == RequestState::InitReboot && pool.is_unknown(client.mac, ip, now) {
                // No record of this client or address: another server's business.
                return Err(IgnoreReason::NoRecord(ip));
            }
            if !pool.can_grant(client.mac, ip, now) {
                return nak();
            }
            let expires_at = now + subnet.lease_time.as_secs();
            let undo = pool.grant(client.mac, ip, expires_at);
            let ack = reply(MessageType::Ack, ip, &boot);
            let grant = LeaseGrant { mac: client.mac, ip, expires_at, undo };
            Ok(Decision::Reply { reply: Box::new(ack), grant: Some(grant), client, boot, seen: None })
        }
        MessageType::Release => {
            let ip = msg.ciaddr();
            if server_id.is_some_and(|id| id != ours) {
                return Err(IgnoreReason::OtherServer(server_id.unwrap_or(ours)));
            }
            if pool.binding(ip).is_some_and(|b| b.mac == client.mac && b.kind == BindingKind::Leased) {
                let undo = pool.release(client.mac, ip);
                Ok(Decision::Released { mac: client.mac, ip, undo })
            } else {
                Err(IgnoreReason::NotOurs(ip))
            }
        }
        MessageType::Decline => {
            let ip = requested.ok_or(IgnoreReason::NoRequestedAddress)?;
            if pool.binding(ip).is_some_and(|b| b.mac == client.mac) {
                let until = now + policy.quarantine_secs;
                pool.quarantine(client.mac, ip, until);
                Ok(Decision::Declined { mac: client.mac, ip, until })
            } else {
                Err(IgnoreReason::NotOurs(ip))
            }
        }
        MessageType::Inform => {
            // RFC 2131 §3.4: configuration only, no address and no lease time.
            let mut ack = reply(MessageType::Ack, Ipv4Addr::UNSPECIFIED, &boot);
            ack.set_ciaddr(msg.ciaddr());
            let opts = ack.opts_mut();
            for code in [OptionCode::AddressLeaseTime, OptionCode::Renewal, OptionCode::Rebinding] {
                opts.remove(code);
            }
            Ok(Decision::Reply { reply: Box::new(ack), grant: None, client, boot, seen: None })
        }
        other => Err(IgnoreReason::UnsupportedType(other)),
    }
}

/// The client's state when it sent a REQUEST (RFC 2131 §4.3.2, table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestState {
    /// Answering an OFFER: server id and requested address set.
    Selecting(Ipv4Addr),
    /// Rebooted, asking to keep its address: requested set, no server id, no ciaddr.
    InitReboot,
    /// Renewing (unicast) or rebinding (broadcast) a lease it holds: ciaddr set.
    Renewing,
}

impl RequestState {
    fn of(msg: &Message, requested: Option<Ipv4Addr>, server_id: Option<Ipv4Addr>) -> RequestState {
        match (server_id, requested) {
            (Some(id), _) => RequestState::Selecting(id),
            (None, Some(_)) if msg.ciaddr().is_unspecified() => RequestState::InitReboot,
            _ => RequestState::Renewing,
        }
    }
}

/// The address that names the client's link, in order of authority: the relay's
/// link-selection sub-option (RFC 3527) and the subnet-selection option (RFC 3011),
/// both only from a `trusted` relay; then the relay's giaddr, the client's own
/// ciaddr, then the interface it arrived on.
pub fn link_address(msg: &Message, arrival: Arrival, trusted: bool) -> Ipv4Addr {
    if trusted {
        if let Some(DhcpOption::RelayAgentInformation(info)) = msg.opts().get(OptionCode::RelayAgentInformation) {
            if let Some(relay::RelayInfo::LinkSelection(addr)) = info.get(relay::RelayCode::LinkSelection) {
                return *addr;
            }
        }
        if let Some(DhcpOption::SubnetSelection(addr)) = msg.opts().get(OptionCode::SubnetSelection) {
            return *addr;
        }
    }
    if !msg.giaddr().is_unspecified() {
        return msg.giaddr();
    }
    if !msg.ciaddr().is_unspecified() {
        return msg.ciaddr();
    }
    arrival.local_addr
}

/// ProxyDHCP: boot options only, no address (PXE 2.1 §2.2.1). Offers on 67 to
/// network-boot clients' DISCOVERs; ACKs on 4011 to their boot-server REQUESTs.
fn proxy(
    inbound: &Inbound,
    kind: MessageType,
    client: Client,
    boot: BootChoice,
    policy: &DhcpPolicy,
) -> Result<Decision, IgnoreReason> {
    if policy.mode != DhcpMode::Proxy {
        return Err(IgnoreReason::BinlNotProxy);
    }
    if client.firmware == Firmware::Plain || boot.file().is_none() {
        return Err(IgnoreReason::NotNetbootClient);
    }
    let msg = inbound.msg;
    let reply_kind = match (inbound.arrival.port, kind) {
        (Port::Dhcp, MessageType::Discover) => MessageType::Offer,
        (Port::Binl, MessageType::Request | MessageType::Inform) => MessageType::Ack,
        (Port::Dhcp, MessageType::Request) => {
            let requested = match msg.opts().get(OptionCode::RequestedIpAddress) {
                Some(DhcpOption::RequestedIpAddress(ip)) => *ip,
                _ => msg.ciaddr(),
            };
            if requested.is_unspecified() {
                return Err(IgnoreReason::NoRequestedAddress);
            }
            return Ok(Decision::Seen { ip: requested, client });
        }
        (_, other) => return Err(IgnoreReason::UnsupportedType(other)),
    };
    let mut reply = reply_header(msg);
    reply.set_siaddr(policy.tftp_server).set_ciaddr(msg.ciaddr());
    set_boot_file(&mut reply, &boot, policy);
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(reply_kind));
    opts.insert(DhcpOption::ServerIdentifier(inbound.arrival.local_addr));
    let class: &[u8] = if client.firmware == Firmware::HttpClient { b"HTTPClient" } else { b"PXEClient" };
    opts.insert(DhcpOption::ClassIdentifier(class.to_vec()));
    plant_user_class(opts, &boot, policy);
    if wants_pxe_vendor_options(&client, inbound.arrival.port) {
        opts.insert(DhcpOption::Unknown(UnknownOption::new(OptionCode::VendorExtensions, PXE_VENDOR_OPTIONS.to_vec())));
    }
    if let Some(uuid) = &client.uuid {
        // The PXE spec has servers echo the client's UUID.
        opts.insert(DhcpOption::ClientMachineIdentifier(uuid.clone()));
    }
    let seen = (inbound.arrival.port == Port::Binl)
        .then(|| msg.ciaddr())
        .filter(|ip| !ip.is_unspecified() && *ip == inbound.arrival.peer);
    Ok(Decision::Reply { reply: Box::new(reply), grant: None, client, boot, seen })
}

/// iPXE's own option space (175).
const IPXE_ENCAP: u8 = 175;
/// What an authoritative offer tells iPXE: priority (175.1) 100, so iPXE takes it
/// over another server's plain offer whichever arrives first (it keeps the *last*
/// offer of equal priority); and no ProxyDHCP (175.176), so it does not wait for
/// proxy offers that will not come.
pub const IPXE_OPTIONS: [u8; 7] = [1, 1, 100, 176, 1, 1, 255];

/// Option 43 for PXE ROMs: discovery control (6) = 8, boot the file named in this
/// offer (no boot-server discovery, no menu); and a menu prompt (10) with timeout 0,
/// which some EDK2 builds need to take the offer at all (edk2 issue 8149; dnsmasq
/// always sends one).
pub const PXE_VENDOR_OPTIONS: [u8; 10] = [6, 1, 8, 10, 4, 0, b'P', b'X', b'E', 255];

/// Does this reply carry [`PXE_VENDOR_OPTIONS`]? BIOS PXE ROMs need them; a UEFI
/// client takes a port-67 proxy offer with option 43 as a "PXE10" offer that older
/// EDK2 never caches or even aborts on (edk2 `PxeBcDhcp4.c`; dnsmasq and pixiecore
/// leave it out for EFI). Without it, EDK2 asks the boot server on 4011, whose
/// answer carries them.
fn wants_pxe_vendor_options(client: &Client, port: Port) -> bool {
    let efi = client.arch.is_some_and(Arch::is_uefi);
    client.firmware == Firmware::Pxe && (port == Port::Binl || !efi)
}

/// Does the request name a UEFI architecture (option 93)?
fn client_is_uefi(msg: &Message) -> bool {
    arch_of(msg).is_some_and(Arch::is_uefi)
}

/// A BOOTREPLY skeleton: same xid, flags, giaddr and chaddr as the request.
fn reply_header(req: &Message) -> Message {
    let mut reply = Message::default();
    reply
        .set_opcode(Opcode::BootReply)
        .set_htype(req.htype())
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_giaddr(req.giaddr())
        .set_chaddr(req.chaddr());
    reply
}

fn set_boot_file(reply: &mut Message, boot: &BootChoice, policy: &DhcpPolicy) {
    let Some(file) = boot.file() else { return };
    // NUL-terminated in `file` (so only if one byte is left for the NUL) and in
    // option 67: PXE ROMs read both as C strings (dnsmasq: "buggy PXE again").
    if file.len() < FILE_FIELD_LEN {
        reply.set_fname_str(file);
    }
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::TFTPServerName(policy.tftp_server.to_string().into_bytes()));
    let mut name = file.as_bytes().to_vec();
    if let BootChoice::Http(_) = boot {
        // UEFI HTTP boot parses option 67 as a URI of the option's length, where a
        // NUL would be an invalid character; and it only accepts an offer that
        // echoes its vendor class (UEFI 2.x §24.7).
        opts.insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
    } else {
        name.push(0);
    }
    opts.insert(DhcpOption::BootfileName(name));
}

/// Encode a reply to the request `request_raw`. RFC 3046 §2.2: option 82 goes back
/// exactly as the relay sent it, as the last option. It is spliced into the bytes
/// rather than put in dhcproto's option map, which re-orders its sub-options and
/// (for a raw option 82) would write it twice.
pub fn encode_reply(reply: &Message, request_raw: &[u8]) -> Result<Vec<u8>, dhcproto::error::EncodeError> {
    let mut bytes = dhcproto::Encodable::to_vec(reply)?;
    if let Some(info) = raw_option(request_raw, 82) {
        if let Some(end) = end_option_at(&bytes) {
            let mut option = Vec::with_capacity(info.len() + 2);
            option.extend_from_slice(&[82, info.len() as u8]);
            option.extend_from_slice(info);
            bytes.splice(end..end, option);
        }
    }
    // RFC 1542 §3.3 (and dnsmasq's MIN_PACKETSZ): BOOTP messages are at least 300
    // bytes; some PXE ROMs and relays drop shorter ones. Padded with PAD after END.
    if bytes.len() < MIN_BOOTP_LEN {
        bytes.resize(MIN_BOOTP_LEN, 0);
    }
    Ok(bytes)
}

/// The smallest BOOTP message: 236 header bytes + the 64-byte vendor area.
pub const MIN_BOOTP_LEN: usize = 300;

/// Offset of the END option (255) in an encoded packet's options field.
fn end_option_at(packet: &[u8]) -> Option<usize> {
    let mut at = 240;
    while let Some(&code) = packet.get(at) {
        match code {
            0 => at += 1,
            255 => return Some(at),
            _ => at += 2 + usize::from(*packet.get(at + 1)?),
        }
    }
    None
}

/// The first instance of option `code` in a raw packet's options field.
fn raw_option(packet: &[u8], code: u8) -> Option<&[u8]> {
    let mut rest = packet.get(240..)?;
    while let Some((&c, tail)) = rest.split_first() {
        match c {
            0 => rest = tail,
            255 => return None,
            _ => {
                let (&len, tail) = tail.split_first()?;
                let value = tail.get(..usize::from(len))?;
                if c == code {
                    return Some(value);
                }
                rest = &tail[usize::from(len)..];
            }
        }
    }
    None
}

fn build_reply(
    inbound: &Inbound,
    kind: MessageType,
    ip: Ipv4Addr,
    boot: &BootChoice,
    subnet: &SubnetConfig,
    host: Option<&Host>,
    policy: &DhcpPolicy,
) -> Message {
    let req = inbound.msg;
    let mut reply = reply_header(req);
    reply.set_yiaddr(ip).set_siaddr(policy.tftp_server);
    if kind == MessageType::Ack {
        reply.set_ciaddr(req.ciaddr());
    }
    set_boot_file(&mut reply, boot, policy);
    let lease = u32::try_from(subnet.lease_time.as_secs()).unwrap_or(u32::MAX);
    let opts = reply.opts_mut();
    match boot {
        // A BIOS PXE ROM waits for an offer that echoes `PXEClient` (PXE 2.1 §2.2.1:
        // it retries DISCOVER at 4 s and 8 s before taking a plain one). A UEFI one
        // (EDK2 `PxeBcDhcp4.c`) takes `PXEClient` without option 43 for a BINL
        // offer and asks the boot server on port 4011, which only a proxy answers:
        // it gets a plain offer with the boot file, which it loads as it is.
        BootChoice::Tftp(_) | BootChoice::Signed(_) if !client_is_uefi(inbound.msg) => {
            opts.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        }
        BootChoice::IpxeScript(..) | BootChoice::ChainIpxe(_) => {
            opts.insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::Unknown(IPXE_ENCAP),
                IPXE_OPTIONS.to_vec(),
            )));
        }
        _ => {}
    }
    plant_user_class(opts, boot, policy);
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(inbound.arrival.local_addr));
    opts.insert(DhcpOption::AddressLeaseTime(lease));
    opts.insert(DhcpOption::Renewal(lease / 2));
    opts.insert(DhcpOption::Rebinding((u64::from(lease) * 7 / 8) as u32));
    opts.insert(DhcpOption::SubnetMask(subnet.net.netmask()));
    opts.insert(DhcpOption::BroadcastAddr(subnet.net.broadcast()));
    if let Some(router) = subnet.router {
        opts.insert(DhcpOption::Router(vec![router]));
    }
    if !subnet.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(subnet.dns.clone()));
    }
    if let Some(domain) = &subnet.domain {
        opts.insert(DhcpOption::DomainName(domain.clone()));
    }
    if let Some(hostname) = host.and_then(|h| h.hostname.as_ref()) {
        opts.insert(DhcpOption::Hostname(hostname.clone()));
    }
    if let Some(DhcpOption::ClientIdentifier(id)) = req.opts().get(OptionCode::ClientIdentifier) {
        // RFC 6842: echo the client identifier.
        opts.insert(DhcpOption::ClientIdentifier(id.clone()));
    }
    reply
}

fn build_nak(inbound: &Inbound, server_id: Ipv4Addr) -> Message {
    let req = inbound.msg;
    let mut reply = reply_header(req);
    // RFC 2131 §4.3.2: a NAK relayed from another subnet must reach the client by broadcast.
    if !req.giaddr().is_unspecified() {
        reply.set_flags(Flags::default().set_broadcast());
    }
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(MessageType::Nak));
    opts.insert(DhcpOption::ServerIdentifier(server_id));
    if let Some(DhcpOption::ClientIdentifier(id)) = req.opts().get(OptionCode::ClientIdentifier) {
        opts.insert(DhcpOption::ClientIdentifier(id.clone()));
    }
    reply
}

#[cfg(test)]
mod firmware;
#[cfg(test)]
mod tests;
