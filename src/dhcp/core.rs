//! The DHCP decision pipeline: `(message, now, pool) → Decision`.
//!
//! Pure: no sockets, no clock, no store. Stages, each a small function with its own
//! tests: classify the client → choose the boot file → act on the message type
//! (offer, grant, release, decline) → build the reply's options.
//! The socket layer (`dhcp::io`) persists any [`LeaseGrant`] *before* it sends the
//! reply that carries it.

use super::classify::{classify, Arch, ClassifyError, Client, Firmware};
use super::pool::LeasePool;
use crate::node::MacAddr;
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// How long an OFFER holds its address for the client's REQUEST.
pub const OFFER_HOLD_SECS: u64 = 60;

/// Largest `file` header field (RFC 2131 §2); longer names go only in option 67.
const FILE_FIELD_LEN: usize = 128;

/// Static inputs of the decision: what the operator configured.
#[derive(Debug, Clone)]
pub struct DhcpPolicy {
    pub server_id: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_secs: u32,
    /// `http://server:port`: iPXE and UEFI HTTP clients get URLs under it.
    pub boot_url: String,
    pub boot_files: BootFiles,
}

/// iPXE binaries per architecture, served over TFTP (or HTTP for HTTP-boot clients).
#[derive(Debug, Clone)]
pub struct BootFiles {
    pub bios: String,
    pub efi_x64: String,
    pub efi_ia32: String,
    pub efi_arm64: String,
}

impl Default for BootFiles {
    fn default() -> Self {
        BootFiles {
            bios: "undionly.kpxe".into(),
            efi_x64: "ipxe.efi".into(),
            efi_ia32: "ipxe-ia32.efi".into(),
            efi_arm64: "ipxe-arm64.efi".into(),
        }
    }
}

/// The boot file a client is told to load, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootChoice {
    /// iPXE already runs: hand it its per-node script (breaks the chainload loop).
    IpxeScript(String),
    /// A PXE ROM: load iPXE over TFTP.
    Tftp(String),
    /// UEFI HTTP boot: load iPXE by URL.
    Http(String),
    /// Not a network-boot client (an OS's DHCP client), or an arch we have no binary for.
    None,
}

impl BootChoice {
    pub fn file(&self) -> Option<&str> {
        match self {
            BootChoice::IpxeScript(f) | BootChoice::Tftp(f) | BootChoice::Http(f) => Some(f),
            BootChoice::None => None,
        }
    }
}

pub fn choose_boot(client: &Client, policy: &DhcpPolicy) -> BootChoice {
    if client.firmware == Firmware::Ipxe {
        return BootChoice::IpxeScript(format!("{}/boot.ipxe?mac={}", policy.boot_url, client.mac));
    }
    let binary = |arch: Arch| -> Option<&str> {
        match arch {
            Arch::Bios => Some(&policy.boot_files.bios),
            Arch::EfiX64 | Arch::EfiX64Http => Some(&policy.boot_files.efi_x64),
            Arch::EfiIa32 | Arch::EfiIa32Http => Some(&policy.boot_files.efi_ia32),
            Arch::EfiArm64 | Arch::EfiArm64Http => Some(&policy.boot_files.efi_arm64),
            Arch::EfiArm32 | Arch::EfiArm32Http | Arch::Other(_) => None,
        }
    };
    match (client.firmware, client.arch) {
        (Firmware::HttpClient, Some(arch)) => match binary(arch) {
            Some(file) => BootChoice::Http(format!("{}/ipxe/{file}", policy.boot_url)),
            None => BootChoice::None,
        },
        // A PXE ROM that sends no option 93 is a legacy BIOS one (RFC 4578 §2.1).
        (Firmware::Pxe, arch) => match binary(arch.unwrap_or(Arch::Bios)) {
            Some(file) => BootChoice::Tftp(file.to_string()),
            None => BootChoice::None,
        },
        _ => BootChoice::None,
    }
}

/// A lease the socket layer must persist before sending the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGrant {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send `reply`; if `grant` is set, persist it first and send nothing if that fails.
    Reply { reply: Box<Message>, grant: Option<LeaseGrant>, client: Client, boot: BootChoice },
    /// The client gave its address back: mark the stored lease released.
    Released { mac: MacAddr, ip: Ipv4Addr },
    /// The client found the address in use: quarantined in the pool, record it.
    Declined { mac: MacAddr, ip: Ipv4Addr },
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
    #[error("address pool exhausted")]
    PoolExhausted,
    #[error("client chose another server ({0})")]
    OtherServer(Ipv4Addr),
    #[error("REQUEST names no address")]
    NoRequestedAddress,
    #[error("{0} is not ours to release or decline")]
    NotOurs(Ipv4Addr),
}

/// Decide what to do with one decoded message at time `now` (Unix seconds).
pub fn decide(msg: &Message, policy: &DhcpPolicy, pool: &mut LeasePool, now: u64) -> Decision {
    match decide_inner(msg, policy, pool, now) {
        Ok(decision) => decision,
        Err(reason) => Decision::Ignore(reason),
    }
}

fn decide_inner(msg: &Message, policy: &DhcpPolicy, pool: &mut LeasePool, now: u64) -> Result<Decision, IgnoreReason> {
    if msg.opcode() != Opcode::BootRequest {
        return Err(IgnoreReason::NotRequest);
    }
    let kind = msg.opts().msg_type().ok_or(IgnoreReason::NoMessageType)?;
    let client = classify(msg)?;
    let requested = match msg.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    match kind {
        MessageType::Discover => {
            let ip = pool.offer(client.mac, requested, now, OFFER_HOLD_SECS).ok_or(IgnoreReason::PoolExhausted)?;
            let boot = choose_boot(&client, policy);
            let reply = build_reply(msg, MessageType::Offer, ip, &boot, policy);
            Ok(Decision::Reply { reply: Box::new(reply), grant: None, client, boot })
        }
        MessageType::Request => {
            if let Some(id) = server_id.filter(|id| *id != policy.server_id) {
                // SELECTING another server's offer: free ours at once.
                if let Some(ip) = pool.held_by(client.mac, now) {
                    if pool.binding(ip).is_some_and(|b| b.kind == super::pool::BindingKind::Offered) {
                        pool.forget(client.mac, ip);
                    }
                }
                return Err(IgnoreReason::OtherServer(id));
            }
            // SELECTING/INIT-REBOOT name the address in option 50; RENEWING/REBINDING in ciaddr.
            let ip = requested
                .or_else(|| (!msg.ciaddr().is_unspecified()).then_some(msg.ciaddr()))
                .ok_or(IgnoreReason::NoRequestedAddress)?;
            let boot = choose_boot(&client, policy);
            if !pool.can_grant(client.mac, ip, now) {
                let reply = build_nak(msg, policy);
                return Ok(Decision::Reply { reply: Box::new(reply), grant: None, client, boot });
            }
            let expires_at = now + u64::from(policy.lease_secs);
            pool.grant(client.mac, ip, expires_at);
            let reply = build_reply(msg, MessageType::Ack, ip, &boot, policy);
            let grant = LeaseGrant { mac: client.mac, ip, expires_at };
            Ok(Decision::Reply { reply: Box::new(reply), grant: Some(grant), client, boot })
        }
        MessageType::Release => {
            let ip = msg.ciaddr();
            if pool.binding(ip).is_some_and(|b| b.mac == client.mac) {
                pool.forget(client.mac, ip);
                Ok(Decision::Released { mac: client.mac, ip })
            } else {
                Err(IgnoreReason::NotOurs(ip))
            }
        }
        MessageType::Decline => {
            let ip = requested.ok_or(IgnoreReason::NoRequestedAddress)?;
            if pool.binding(ip).is_some_and(|b| b.mac == client.mac) {
                pool.quarantine(client.mac, ip, now + u64::from(policy.lease_secs));
                Ok(Decision::Declined { mac: client.mac, ip })
            } else {
                Err(IgnoreReason::NotOurs(ip))
            }
        }
        other => Err(IgnoreReason::UnsupportedType(other)),
    }
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

fn build_reply(req: &Message, kind: MessageType, ip: Ipv4Addr, boot: &BootChoice, policy: &DhcpPolicy) -> Message {
    let mut reply = reply_header(req);
    reply.set_yiaddr(ip).set_siaddr(policy.server_id);
    if kind == MessageType::Ack {
        reply.set_ciaddr(req.ciaddr());
    }
    if let Some(file) = boot.file() {
        if file.len() <= FILE_FIELD_LEN {
            reply.set_fname_str(file);
        }
    }
    let lease = policy.lease_secs;
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(policy.server_id));
    opts.insert(DhcpOption::AddressLeaseTime(lease));
    opts.insert(DhcpOption::Renewal(lease / 2));
    opts.insert(DhcpOption::Rebinding(lease / 8 * 7));
    opts.insert(DhcpOption::SubnetMask(policy.subnet.netmask()));
    opts.insert(DhcpOption::BroadcastAddr(policy.subnet.broadcast()));
    if let Some(router) = policy.router {
        opts.insert(DhcpOption::Router(vec![router]));
    }
    if !policy.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(policy.dns.clone()));
    }
    if let Some(file) = boot.file() {
        opts.insert(DhcpOption::TFTPServerName(policy.server_id.to_string().into_bytes()));
        opts.insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
    }
    if let BootChoice::Http(_) = boot {
        // UEFI HTTP boot only accepts an offer that echoes its vendor class (UEFI 2.x §24.7).
        opts.insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
    }
    if let Some(DhcpOption::ClientIdentifier(id)) = req.opts().get(OptionCode::ClientIdentifier) {
        // RFC 6842: echo the client identifier.
        opts.insert(DhcpOption::ClientIdentifier(id.clone()));
    }
    reply
}

fn build_nak(req: &Message, policy: &DhcpPolicy) -> Message {
    let mut reply = reply_header(req);
    // RFC 2131 §4.3.2: a NAK relayed from another subnet must reach the client by broadcast.
    if !req.giaddr().is_unspecified() {
        reply.set_flags(Flags::default().set_broadcast());
    }
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(MessageType::Nak));
    opts.insert(DhcpOption::ServerIdentifier(policy.server_id));
    reply
}

#[cfg(test)]
mod tests {
    use super::super::classify::tests::{ipxe_bios, request};
    use super::*;
    use dhcproto::v4::Architecture;
    use dhcproto::{Decodable, Encodable};

    fn policy() -> DhcpPolicy {
        DhcpPolicy {
            server_id: Ipv4Addr::new(10, 213, 0, 1),
            subnet: "10.213.0.0/24".parse().unwrap(),
            router: Some(Ipv4Addr::new(10, 213, 0, 1)),
            dns: vec![],
            lease_secs: 3600,
            boot_url: "http://10.213.0.1:8080".into(),
            boot_files: BootFiles::default(),
        }
    }

    fn pool() -> LeasePool {
        LeasePool::new(Ipv4Addr::new(10, 213, 0, 100), Ipv4Addr::new(10, 213, 0, 199))
    }

    fn reply_of(d: Decision) -> (Message, Option<LeaseGrant>, BootChoice) {
        match d {
            Decision::Reply { reply, grant, boot, .. } => (*reply, grant, boot),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    #[test]
    fn ipxe_discover_request_ack_carries_script_url_and_grant() {
        let (p, mut pool) = (policy(), pool());
        let (offer, grant, boot) = reply_of(decide(&ipxe_bios(MAC, MessageType::Discover), &p, &mut pool, 1000));
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert!(grant.is_none(), "an OFFER is not a lease");
        assert_eq!(boot, BootChoice::IpxeScript("http://10.213.0.1:8080/boot.ipxe?mac=52:54:00:12:34:56".into()));
        let ip = offer.yiaddr();
        assert!(pool.contains(ip));

        let mut req = ipxe_bios(MAC, MessageType::Request);
        req.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        req.opts_mut().insert(DhcpOption::ServerIdentifier(p.server_id));
        let (ack, grant, _) = reply_of(decide(&req, &p, &mut pool, 1001));
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), ip);
        assert_eq!(grant, Some(LeaseGrant { mac: MacAddr(MAC), ip, expires_at: 1001 + 3600 }));
        assert_eq!(
            ack.opts().get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(b"http://10.213.0.1:8080/boot.ipxe?mac=52:54:00:12:34:56".to_vec()))
        );
        assert_eq!(ack.siaddr(), p.server_id);
    }

    #[test]
    fn plain_pxe_bios_rom_gets_undionly_over_tftp() {
        let mut msg = request(MAC, MessageType::Discover);
        msg.opts_mut().insert(DhcpOption::ClientSystemArchitecture(Architecture::from(0)));
        msg.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()));
        let (offer, _, boot) = reply_of(decide(&msg, &policy(), &mut pool(), 0));
        assert_eq!(boot, BootChoice::Tftp("undionly.kpxe".into()));
        assert_eq!(offer.fname_str().unwrap().unwrap(), "undionly.kpxe");
    }

    #[test]
    fn plain_pxe_uefi_x64_rom_gets_ipxe_efi() {
        for code in [7u16, 9] {
            let mut msg = request(MAC, MessageType::Discover);
            msg.opts_mut().insert(DhcpOption::ClientSystemArchitecture(Architecture::from(code)));
            msg.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007".to_vec()));
            let (_, _, boot) = reply_of(decide(&msg, &policy(), &mut pool(), 0));
            assert_eq!(boot, BootChoice::Tftp("ipxe.efi".into()), "arch {code}");
        }
    }

    #[test]
    fn an_os_dhcp_client_gets_an_address_and_no_boot_file() {
        let (offer, _, boot) = reply_of(decide(&request(MAC, MessageType::Discover), &policy(), &mut pool(), 0));
        assert_eq!(boot, BootChoice::None);
        assert!(offer.opts().get(OptionCode::BootfileName).is_none());
    }

    #[test]
    fn request_for_another_servers_offer_is_ignored_and_frees_ours() {
        let (p, mut pool) = (policy(), pool());
        let (offer, _, _) = reply_of(decide(&request(MAC, MessageType::Discover), &p, &mut pool, 0));
        let mut req = request(MAC, MessageType::Request);
        req.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        req.opts_mut().insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 213, 0, 2)));
        assert!(matches!(decide(&req, &p, &mut pool, 1), Decision::Ignore(IgnoreReason::OtherServer(_))));
        assert_eq!(pool.held_by(MacAddr(MAC), 1), None);
    }

    #[test]
    fn request_for_a_foreign_or_taken_address_is_naked() {
        let (p, mut pool) = (policy(), pool());
        let mut req = request(MAC, MessageType::Request);
        req.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(192, 168, 1, 5)));
        let (nak, grant, _) = reply_of(decide(&req, &p, &mut pool, 0));
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        assert!(grant.is_none());
        assert!(nak.yiaddr().is_unspecified());

        // Another MAC holds .100; a REQUEST for it must not be granted.
        pool.grant(MacAddr([2, 0, 0, 0, 0, 9]), Ipv4Addr::new(10, 213, 0, 100), 5000);
        let mut req = request(MAC, MessageType::Request);
        req.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 213, 0, 100)));
        let (nak, _, _) = reply_of(decide(&req, &p, &mut pool, 0));
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    }

    #[test]
    fn renewing_uses_ciaddr() {
        let (p, mut pool) = (policy(), pool());
        let ip = Ipv4Addr::new(10, 213, 0, 150);
        pool.grant(MacAddr(MAC), ip, 100);
        let mut req = request(MAC, MessageType::Request);
        req.set_ciaddr(ip);
        let (ack, grant, _) = reply_of(decide(&req, &p, &mut pool, 50));
        assert_eq!(ack.yiaddr(), ip);
        assert_eq!(ack.ciaddr(), ip);
        assert_eq!(grant.unwrap().expires_at, 50 + 3600);
    }

    #[test]
    fn release_frees_the_address() {
        let (p, mut pool) = (policy(), pool());
        let ip = Ipv4Addr::new(10, 213, 0, 150);
        pool.grant(MacAddr(MAC), ip, 100);
        let mut rel = request(MAC, MessageType::Release);
        rel.set_ciaddr(ip);
        assert_eq!(decide(&rel, &p, &mut pool, 1), Decision::Released { mac: MacAddr(MAC), ip });
        assert!(pool.can_grant(MacAddr([2, 0, 0, 0, 0, 9]), ip, 1));
    }

    #[test]
    fn long_script_url_goes_only_in_option_67() {
        let mut p = policy();
        p.boot_url = format!("http://{}.example:8080", "x".repeat(120));
        let (offer, _, _) = reply_of(decide(&ipxe_bios(MAC, MessageType::Discover), &p, &mut pool(), 0));
        assert!(offer.fname().is_none());
        assert!(offer.opts().get(OptionCode::BootfileName).is_some());
    }

    #[test]
    fn replies_encode_and_decode_again() {
        let (offer, _, _) = reply_of(decide(&ipxe_bios(MAC, MessageType::Discover), &policy(), &mut pool(), 0));
        // Byte-level: dhcproto keeps the NUL terminator of `file` when decoding.
        let bytes = offer.to_vec().unwrap();
        let again = Message::decode(&mut dhcproto::Decoder::new(&bytes)).unwrap();
        assert_eq!(again.to_vec().unwrap(), bytes);
        assert_eq!(again.opts(), offer.opts());
    }

    proptest::proptest! {
        /// Any bytes at all: decoding may fail, deciding must never panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            if let Ok(msg) = Message::decode(&mut dhcproto::Decoder::new(&bytes)) {
                let _ = decide(&msg, &policy(), &mut pool(), 0);
            }
        }
    }
}
