//! DHCPv6 for netboot (RFC 8415; boot-file URL and client architecture of RFC
//! 5970): the decision core, pure like the v4 one. It takes a decoded message,
//! the operator's policy, the address bindings and the time, and returns the reply
//! and the binding to persist. Sockets, the store and clocks are the caller's.
//!
//! What it serves:
//! - **Addresses:** IA_NA from one configured range. Solicit is answered with an
//!   Advertise (or with a Reply under Rapid Commit); Request, Renew and Rebind get
//!   a Reply that binds or extends; Release and Decline get a Reply; Confirm says
//!   whether the client's addresses are on this link; Information-request gets the
//!   boot options without an address.
//! - **The boot file** (option 59, a URL): decided by the v4 core's
//!   [`choose_boot`](crate::dhcp::decide::choose_boot) from option 61 (the
//!   architecture), option 16 (vendor class: `PXEClient`, `HTTPClient`) and option
//!   15 (user class: iPXE), so both families hand a node the same chain. A PXE
//!   firmware gets `tftp://[server]/<file>`; iPXE and HTTP Boot get `http://` URLs.
//! - **Identity:** a client is its DUID and IAID. The MAC that names the node comes
//!   from a DUID-LL or DUID-LLT of hardware type 1 (what EDK2 and Linux clients
//!   send), else from the modified EUI-64 of the link-local address the message
//!   came from (iPXE sends a DUID-UUID, but forms its link-local address from the
//!   MAC). A node keeps one address whichever client asks for it: the firmware,
//!   iPXE and stage one each have a DUID of their own, yet the boot path's trust
//!   rules want every request of a boot to come from the address DHCP bound to the
//!   node, so a client whose MAC already holds an address takes that binding over.
//!
//! Not (yet) served: relayed messages (Relay-forw), temporary addresses (IA_TA),
//! prefix delegation, reconfiguration.

#[cfg(test)]
mod tests;

use crate::dhcp::classify::{Arch, Client, Firmware};
use crate::dhcp::decide::{choose_boot, BootChoice};
use crate::dhcp::ipxe::Handovers;
use crate::dhcp::policy::DhcpPolicy;
use crate::node::MacAddr;
use crate::profile::BootChain;
use dhcproto::v6::{DhcpOption, IAAddr, Message, MessageType, OptionCode, Status, StatusCode, UnknownOption, IANA};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;

/// Option 59 (RFC 5970): the boot file, as a URL.
pub const OPT_BOOTFILE_URL: u16 = 59;
/// The enterprise number of the vendor classes PXE and UEFI HTTP Boot send (Intel).
const PXE_ENTERPRISE: u32 = 343;

/// What the operator configured for DHCPv6.
#[derive(Debug, Clone)]
pub struct Dhcp6Policy {
    /// This server's DUID (option 2): clients name it back in Request, Renew, Release.
    pub server_duid: Vec<u8>,
    /// Addresses handed out, inclusive.
    pub range: (Ipv6Addr, Ipv6Addr),
    pub preferred_secs: u32,
    pub valid_secs: u32,
    /// Where PXE firmware fetches its binary over TFTP.
    pub tftp_server: Ipv6Addr,
    /// How long an address advertised (not yet requested) is held for its client.
    pub offer_hold_secs: u64,
    /// Answer a Solicit with Rapid Commit by binding at once (RFC 8415 §18.3.1).
    pub rapid_commit: bool,
    pub dns: Vec<Ipv6Addr>,
}

/// A client as DHCPv6 sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client6 {
    pub duid: Vec<u8>,
    /// From a DUID-LL/LLT of hardware type Ethernet.
    pub mac: Option<MacAddr>,
    pub arch: Option<Arch>,
    pub firmware: Firmware,
    pub user_classes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IgnoreReason6 {
    #[error("{0:?} is not a message a server answers")]
    NotForServers(MessageType),
    #[error("no client identifier (option 1)")]
    NoClientId,
    #[error("names another server")]
    OtherServer,
    #[error("a Solicit, Request, Confirm or Rebind must not name a server")]
    UnexpectedServerId,
    #[error("relayed messages are not served yet")]
    Relayed,
}

/// An address bound (or held) for one IA of one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding6 {
    pub duid: Vec<u8>,
    pub iaid: u32,
    /// The node's MAC, when the client's DUID or link-local address names one.
    pub mac: Option<MacAddr>,
    pub addr: Ipv6Addr,
    /// Unix seconds.
    pub expires_at: u64,
    /// Advertised only: free again at `expires_at` unless requested.
    pub held: bool,
}

/// A binding the socket layer must persist before it sends the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant6 {
    pub mac: Option<MacAddr>,
    pub duid: Vec<u8>,
    pub iaid: u32,
    pub addr: Ipv6Addr,
    pub expires_at: u64,
}

/// The range's bindings, by address, by (DUID, IAID) and by MAC.
#[derive(Debug, Clone, Default)]
pub struct Pool6 {
    by_addr: BTreeMap<Ipv6Addr, Binding6>,
    by_client: HashMap<(Vec<u8>, u32), Ipv6Addr>,
    by_mac: HashMap<MacAddr, Ipv6Addr>,
    /// Quarantined (declined) addresses, until when.
    declined: BTreeMap<Ipv6Addr, u64>,
}

impl Pool6 {
    /// A binding restored from the store (or learnt from another server).
    pub fn restore(&mut self, binding: Binding6) {
        self.bind(binding);
    }

    /// An address set aside (declined) until `until`, restored from the store.
    pub fn quarantine(&mut self, addr: Ipv6Addr, until: u64) {
        self.declined.insert(addr, until);
    }

    /// Forget a binding (expired, released elsewhere, or a grant the store refused).
    pub fn forget(&mut self, addr: Ipv6Addr) {
        if let Some(old) = self.by_addr.remove(&addr) {
            self.unlink(&old);
        }
    }

    /// Addresses bound or held.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    pub fn binding(&self, addr: Ipv6Addr) -> Option<&Binding6> {
        self.by_addr.get(&addr)
    }

    fn of_client(&self, duid: &[u8], iaid: u32, now: u64) -> Option<&Binding6> {
        let addr = self.by_client.get(&(duid.to_vec(), iaid))?;
        self.by_addr.get(addr).filter(|b| b.expires_at > now)
    }

    fn of_mac(&self, mac: Option<MacAddr>, now: u64) -> Option<&Binding6> {
        let addr = self.by_mac.get(&mac?)?;
        self.by_addr.get(addr).filter(|b| b.expires_at > now)
    }

    /// Remove the indexes that point at `binding` (not `by_addr` itself).
    fn unlink(&mut self, binding: &Binding6) {
        let key = (binding.duid.clone(), binding.iaid);
        if self.by_client.get(&key) == Some(&binding.addr) {
            self.by_client.remove(&key);
        }
        if let Some(mac) = binding.mac {
            if self.by_mac.get(&mac) == Some(&binding.addr) {
                self.by_mac.remove(&mac);
            }
        }
    }

    fn is_free(&self, addr: Ipv6Addr, now: u64) -> bool {
        let bound = self.by_addr.get(&addr).is_some_and(|b| b.expires_at > now);
        let declined = self.declined.get(&addr).is_some_and(|until| *until > now);
        !bound && !declined
    }

    /// The client's address for this IA: its binding, else its node's (the same
    /// MAC under another DUID), else the address it asks for if free and in
    /// range, else the first free one (a bounded scan from the range's start:
    /// ranges are what an operator writes, not a /64).
    fn pick(&self, range: (Ipv6Addr, Ipv6Addr), want: Want<'_>, now: u64) -> Option<Ipv6Addr> {
        let Want { duid, iaid, mac, hint } = want;
        if let Some(b) = self.of_client(duid, iaid, now).or_else(|| self.of_mac(mac, now)) {
            return Some(b.addr);
        }
        let (first, last) = (u128::from(range.0), u128::from(range.1));
        if let Some(hint) = hint.filter(|h| (first..=last).contains(&u128::from(*h))) {
            if self.is_free(hint, now) {
                return Some(hint);
            }
        }
        (first..=last).take(MAX_SCAN).map(Ipv6Addr::from).find(|a| self.is_free(*a, now))
    }

    /// Bind `binding.addr` to its client, taking it over from whoever held it
    /// (the same node under another DUID), and drop the client's and the node's
    /// previous addresses.
    fn bind(&mut self, binding: Binding6) {
        if let Some(previous) = self.by_addr.remove(&binding.addr) {
            self.unlink(&previous);
        }
        let key = (binding.duid.clone(), binding.iaid);
        let stale_of_client = self.by_client.get(&key).copied();
        let stale_of_mac = binding.mac.and_then(|m| self.by_mac.get(&m).copied());
        for stale in [stale_of_client, stale_of_mac].into_iter().flatten() {
            if stale != binding.addr {
                self.forget(stale);
            }
        }
        self.by_client.insert(key, binding.addr);
        if let Some(mac) = binding.mac {
            self.by_mac.insert(mac, binding.addr);
        }
        self.by_addr.insert(binding.addr, binding);
    }

    fn release(&mut self, duid: &[u8], iaid: u32, addr: Ipv6Addr) -> bool {
        let ours = self.by_addr.get(&addr).is_some_and(|b| b.duid == duid && b.iaid == iaid);
        if ours {
            self.forget(addr);
        }
        ours
    }
}

/// Who wants an address, and which one it asked for.
struct Want<'a> {
    duid: &'a [u8],
    iaid: u32,
    mac: Option<MacAddr>,
    hint: Option<Ipv6Addr>,
}

/// Most addresses one allocation looks at.
const MAX_SCAN: usize = 65_536;

/// What to do with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision6 {
    /// Send `reply`; persist `grants` first (and send nothing if that fails).
    Reply {
        reply: Box<Message>,
        grants: Vec<Grant6>,
        client: Client6,
        boot: BootChoice,
    },
    /// The client (`duid`) gave these addresses back (the reply is still sent):
    /// released, or declined and set aside until `quarantined_until`.
    Released {
        reply: Box<Message>,
        duid: Vec<u8>,
        addrs: Vec<Ipv6Addr>,
        quarantined_until: Option<u64>,
    },
    Ignore(IgnoreReason6),
}

/// The MAC in a DUID-LLT (type 1) or DUID-LL (type 3) of hardware type 1.
pub fn mac_of_duid(duid: &[u8]) -> Option<MacAddr> {
    let (kind, rest) = (u16::from_be_bytes([*duid.first()?, *duid.get(1)?]), duid.get(2..)?);
    let htype = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
    let lladdr = match kind {
        1 => rest.get(6..)?,
        3 => rest.get(2..)?,
        _ => return None,
    };
    (htype == 1 && lladdr.len() == 6)
        .then(|| MacAddr([lladdr[0], lladdr[1], lladdr[2], lladdr[3], lladdr[4], lladdr[5]]))
}

/// The MAC a link-local address was formed from (modified EUI-64, RFC 4291
/// appendix A): `fe80::` with `ff:fe` in the middle of the interface id.
pub fn mac_of_link_local(addr: Ipv6Addr) -> Option<MacAddr> {
    let o = addr.octets();
    let link_local = o[0] == 0xfe && o[1] & 0xc0 == 0x80 && o[2..8].iter().all(|b| *b == 0);
    (link_local && o[11] == 0xff && o[12] == 0xfe).then(|| MacAddr([o[8] ^ 0x02, o[9], o[10], o[13], o[14], o[15]]))
}

/// Who sent `msg` (from `peer`): its DUID, the MAC that names its node, and what
/// its options say of its firmware.
pub fn classify6(msg: &Message, peer: Ipv6Addr) -> Result<Client6, IgnoreReason6> {
    let opts = msg.opts();
    let duid = match opts.get(OptionCode::ClientId) {
        Some(DhcpOption::ClientId(duid)) if !duid.is_empty() => duid.clone(),
        _ => return Err(IgnoreReason6::NoClientId),
    };
    let arch = match opts.get(OptionCode::ClientArchType) {
        Some(DhcpOption::ClientArchType(archs)) => archs.first().map(|a| Arch(u16::from(*a))),
        _ => None,
    };
    let vendor: Vec<String> = match opts.get(OptionCode::VendorClass) {
        Some(DhcpOption::VendorClass(v)) if v.num == PXE_ENTERPRISE => {
            v.data.iter().map(|d| String::from_utf8_lossy(d).into_owned()).collect()
        }
        _ => Vec::new(),
    };
    let user_classes: Vec<String> = match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(u)) => u.data.iter().map(|d| String::from_utf8_lossy(d).into_owned()).collect(),
        _ => Vec::new(),
    };
    let firmware = if user_classes.iter().any(|c| c == "iPXE") {
        Firmware::Ipxe
    } else if vendor.iter().any(|v| v.starts_with("HTTPClient")) {
        Firmware::HttpClient
    } else if vendor.iter().any(|v| v.starts_with("PXEClient")) || arch.is_some() {
        // EDK2's PXEv6 names its architecture (61); that alone marks a netboot client.
        Firmware::Pxe
    } else {
        Firmware::Plain
    };
    let mac = mac_of_duid(&duid).or_else(|| mac_of_link_local(peer));
    Ok(Client6 { mac, duid, arch, firmware, user_classes })
}

/// The boot decision's inputs besides the message: the v4 policy's boot tables
/// (with `boot_url` the server's IPv6 base, `http://[addr]:port`), the boot chain
/// of the node a MAC names (known once the message is classified), and iPXE
/// handovers.
pub struct BootInputs<'a> {
    pub boot: &'a DhcpPolicy,
    pub chain_of: &'a dyn Fn(Option<MacAddr>) -> BootChain,
    pub handovers: &'a mut Handovers,
}

/// One message as it arrived: the link-local (or relay) address it came from.
#[derive(Debug, Clone, Copy)]
pub struct Inbound6<'a> {
    pub msg: &'a Message,
    pub peer: Ipv6Addr,
}

/// Decide what to answer `msg` at `now` (Unix seconds).
pub fn decide6(
    inbound: Inbound6<'_>,
    policy: &Dhcp6Policy,
    pool: &mut Pool6,
    boot: BootInputs<'_>,
    now: u64,
) -> Decision6 {
    match decide_inner(inbound, policy, pool, boot, now) {
        Ok(d) => d,
        Err(reason) => Decision6::Ignore(reason),
    }
}

fn decide_inner(
    Inbound6 { msg, peer }: Inbound6<'_>,
    policy: &Dhcp6Policy,
    pool: &mut Pool6,
    boot: BootInputs<'_>,
    now: u64,
) -> Result<Decision6, IgnoreReason6> {
    use MessageType as M;
    let kind = msg.msg_type();
    if matches!(kind, M::RelayForw) {
        return Err(IgnoreReason6::Relayed);
    }
    if !matches!(
        kind,
        M::Solicit | M::Request | M::Renew | M::Rebind | M::Release | M::Decline | M::Confirm | M::InformationRequest
    ) {
        return Err(IgnoreReason6::NotForServers(kind));
    }
    let client = classify6(msg, peer)?;
    let server_id = match msg.opts().get(OptionCode::ServerId) {
        Some(DhcpOption::ServerId(id)) => Some(id.as_slice()),
        _ => None,
    };
    match (kind, server_id) {
        (M::Request | M::Renew | M::Release | M::Decline, Some(id)) if id != policy.server_duid => {
            return Err(IgnoreReason6::OtherServer)
        }
        (M::Request | M::Renew | M::Release | M::Decline, None) => return Err(IgnoreReason6::OtherServer),
        (M::Solicit | M::Confirm | M::Rebind, Some(_)) => return Err(IgnoreReason6::UnexpectedServerId),
        (M::InformationRequest, Some(id)) if id != policy.server_duid => return Err(IgnoreReason6::OtherServer),
        _ => {}
    }
    let rapid = kind == M::Solicit && policy.rapid_commit && msg.opts().get(OptionCode::RapidCommit).is_some();
    let reply_kind = if kind == M::Solicit && !rapid { M::Advertise } else { M::Reply };
    let mut reply = Message::new_with_id(reply_kind, msg.xid());
    {
        let opts = reply.opts_mut();
        opts.insert(DhcpOption::ServerId(policy.server_duid.clone()));
        opts.insert(DhcpOption::ClientId(client.duid.clone()));
        if rapid {
            opts.insert(DhcpOption::RapidCommit);
        }
    }
    let ias: Vec<&IANA> = msg
        .opts()
        .iter()
        .filter_map(|o| match o {
            DhcpOption::IANA(ia) => Some(ia),
            _ => None,
        })
        .collect();
    let mut grants = Vec::new();
    let mut released = Vec::new();
    let ask = |ia: &IANA| {
        ia.opts.iter().find_map(|o| match o {
            DhcpOption::IAAddr(a) => Some(a.addr),
            _ => None,
        })
    };
    match kind {
        M::Solicit | M::Request | M::Renew | M::Rebind => {
            for ia in &ias {
                let want = Want { duid: &client.duid, iaid: ia.id, mac: client.mac, hint: ask(ia) };
                let answer = match pool.pick(policy.range, want, now) {
                    // Renew and Rebind extend only what is bound (RFC 8415 §18.3.4-5).
                    Some(addr)
                        if matches!(kind, M::Renew | M::Rebind)
                            && pool
                                .of_client(&client.duid, ia.id, now)
                                .or_else(|| pool.of_mac(client.mac, now))
                                .map(|b| b.addr)
                                != Some(addr) =>
                    {
                        ia_status(ia.id, Status::NoBinding, "no binding for this IA")
                    }
                    Some(addr) => {
                        let binds = kind != M::Solicit || rapid;
                        let expires_at =
                            if binds { now + u64::from(policy.valid_secs) } else { now + policy.offer_hold_secs };
                        pool.bind(Binding6 {
                            duid: client.duid.clone(),
                            iaid: ia.id,
                            mac: client.mac,
                            addr,
                            expires_at,
                            held: !binds,
                        });
                        if binds {
                            grants.push(Grant6 {
                                mac: client.mac,
                                duid: client.duid.clone(),
                                iaid: ia.id,
                                addr,
                                expires_at,
                            });
                        }
                        ia_with(ia.id, addr, policy)
                    }
                    None => ia_status(ia.id, Status::NoAddrsAvail, "no address left in the range"),
                };
                reply.opts_mut().insert(DhcpOption::IANA(answer));
            }
        }
        M::Release => {
            for ia in &ias {
                if let Some(addr) = ask(ia) {
                    if pool.release(&client.duid, ia.id, addr) {
                        released.push(addr);
                    }
                }
            }
            reply.opts_mut().insert(status(Status::Success, "released"));
            return Ok(Decision6::Released {
                reply: Box::new(reply),
                duid: client.duid,
                addrs: released,
                quarantined_until: None,
            });
        }
        M::Decline => {
            let until = now + u64::from(policy.valid_secs);
            for ia in &ias {
                if let Some(addr) = ask(ia) {
                    if pool.release(&client.duid, ia.id, addr) {
                        pool.declined.insert(addr, until);
                        released.push(addr);
                    }
                }
            }
            reply.opts_mut().insert(status(Status::Success, "declined addresses are set aside"));
            return Ok(Decision6::Released {
                reply: Box::new(reply),
                duid: client.duid,
                addrs: released,
                quarantined_until: Some(until),
            });
        }
        M::Confirm => {
            let (first, last) = (u128::from(policy.range.0), u128::from(policy.range.1));
            let on_link = ias.iter().filter_map(|ia| ask(ia)).all(|a| (first..=last).contains(&u128::from(a)));
            let (code, text) =
                if on_link { (Status::Success, "on link") } else { (Status::NotOnLink, "not on this link") };
            reply.opts_mut().insert(status(code, text));
        }
        _ => {}
    }
    // Boot options: for every answer but Confirm (an Advertise carries them too:
    // EDK2 picks the offer that names a boot file).
    let boot_choice = if kind == M::Confirm {
        BootChoice::None("confirm")
    } else {
        let v4_client = Client {
            mac: client.mac.unwrap_or(MacAddr([0; 6])),
            arch: client.arch,
            firmware: client.firmware,
            uuid: None,
            vendor_class: None,
            user_classes: client.user_classes.clone(),
        };
        if client.mac.is_none() && client.firmware != Firmware::Plain {
            BootChoice::None("no MAC address in the client's DUID: the node cannot be named")
        } else {
            choose_boot(&v4_client, msg.xid_num(), (boot.boot, (boot.chain_of)(client.mac)), boot.handovers, now)
        }
    };
    if let Some(url) = boot_url(&boot_choice, policy, boot.boot) {
        reply
            .opts_mut()
            .insert(DhcpOption::Unknown(UnknownOption::new(OptionCode::Unknown(OPT_BOOTFILE_URL), url.into_bytes())));
        if client.firmware == Firmware::HttpClient {
            // UEFI HTTP Boot takes only an answer that echoes its vendor class.
            reply.opts_mut().insert(class_option(OptionCode::VendorClass, Some(PXE_ENTERPRISE), &[b"HTTPClient"]));
        }
    }
    if !policy.dns.is_empty() && kind != M::Confirm {
        reply.opts_mut().insert(DhcpOption::DomainNameServers(policy.dns.clone()));
    }
    if reply_kind == M::Advertise {
        // The most preferred: a client takes this Advertise at once (§18.2.1).
        reply.opts_mut().insert(DhcpOption::Preference(255));
    }
    Ok(Decision6::Reply { reply: Box::new(reply), grants, client, boot: boot_choice })
}

/// Option 59's URL for a boot choice: TFTP for what a PXE ROM loads; HTTP for an
/// iPXE handed ramboot's binary (every iPXE speaks HTTP, and on IPv6 the HTTP
/// server is the one every client reaches), and HTTP URLs as the choice names them.
pub fn boot_url(choice: &BootChoice, policy: &Dhcp6Policy, boot: &DhcpPolicy) -> Option<String> {
    match choice {
        BootChoice::Tftp(file) | BootChoice::Signed(file) => Some(format!("tftp://[{}]/{file}", policy.tftp_server)),
        BootChoice::ChainIpxe(file) => Some(format!("{}/ipxe/{file}", boot.boot_url)),
        BootChoice::IpxeScript(url, _) | BootChoice::Http(url) => Some(url.clone()),
        BootChoice::None(_) => None,
    }
}

/// Option 15 (user class) or 16 (vendor class, with its enterprise number) as raw
/// bytes: dhcproto 0.15 encodes their length as the number of items rather than
/// bytes (its decoder is right), so a reply is built with these instead.
pub fn class_option(code: OptionCode, enterprise: Option<u32>, items: &[&[u8]]) -> DhcpOption {
    let mut data = enterprise.map(|e| e.to_be_bytes().to_vec()).unwrap_or_default();
    for item in items {
        data.extend_from_slice(&u16::try_from(item.len()).unwrap_or(u16::MAX).to_be_bytes());
        data.extend_from_slice(item);
    }
    DhcpOption::Unknown(UnknownOption::new(code, data))
}

fn ia_with(iaid: u32, addr: Ipv6Addr, policy: &Dhcp6Policy) -> IANA {
    let mut ia =
        IANA { id: iaid, t1: policy.preferred_secs / 2, t2: policy.preferred_secs / 5 * 4, opts: Default::default() };
    ia.opts.insert(DhcpOption::IAAddr(IAAddr {
        addr,
        preferred_life: policy.preferred_secs,
        valid_life: policy.valid_secs,
        opts: Default::default(),
    }));
    ia
}

fn ia_status(iaid: u32, code: Status, text: &str) -> IANA {
    let mut ia = IANA { id: iaid, t1: 0, t2: 0, opts: Default::default() };
    ia.opts.insert(status(code, text));
    ia
}

fn status(code: Status, text: &str) -> DhcpOption {
    DhcpOption::StatusCode(StatusCode { status: code, msg: text.to_string() })
}

/// The v4 boot tables with `boot_url` an IPv6 base, for the fuzz fixture and tests.
#[cfg(any(test, feature = "fuzzing"))]
pub fn fixture_boot_policy(boot_url: &str) -> DhcpPolicy {
    DhcpPolicy {
        mode: crate::dhcp::policy::DhcpMode::Authoritative,
        tftp_server: std::net::Ipv4Addr::UNSPECIFIED,
        boot_url: boot_url.into(),
        boot_files: crate::dhcp::policy::default_boot_files(),
        signed_boot_files: crate::dhcp::policy::default_signed_boot_files(),
        boot_chain: BootChain::Ipxe,
        subnets: vec![],
        trusted_relays: vec![],
        offer_hold_secs: 60,
        quarantine_secs: 600,
        ipxe: Default::default(),
        share: Default::default(),
    }
}

/// The fuzz fixture: raw bytes through decode, decide (twice, so the second pass
/// sees the state the first left) and encode. The fuzz target and the property
/// test call it; it must never panic.
#[cfg(any(test, feature = "fuzzing"))]
pub fn decide6_bytes(bytes: &[u8]) {
    use dhcproto::{Decodable, Decoder, Encodable};
    let Ok(msg) = Message::decode(&mut Decoder::new(bytes)) else { return };
    let policy = Dhcp6Policy {
        server_duid: vec![0, 3, 0, 1, 2, 0, 0, 0, 0, 1],
        range: (Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100), Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10f)),
        preferred_secs: 1800,
        valid_secs: 3600,
        tftp_server: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
        offer_hold_secs: 60,
        rapid_commit: true,
        dns: vec![Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)],
    };
    let boot = fixture_boot_policy("http://[fd00::1]:8080");
    let mut pool = Pool6::default();
    let mut handovers = Handovers::default();
    for (now, chain) in [(1_000, BootChain::Ipxe), (1_001, BootChain::Signed)] {
        let inputs = BootInputs { boot: &boot, chain_of: &|_| chain, handovers: &mut handovers };
        let peer = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x5054, 0xff, 0xfe00, 1);
        match decide6(Inbound6 { msg: &msg, peer }, &policy, &mut pool, inputs, now) {
            Decision6::Reply { reply, .. } | Decision6::Released { reply, .. } => {
                let _ = reply.to_vec();
            }
            Decision6::Ignore(_) => {}
        }
    }
}
