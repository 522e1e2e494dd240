use super::super::classify::tests::{ipxe_bios, ipxe_bios_with_class, request};
use super::super::policy::default_boot_files;
use super::*;
use dhcproto::v4::Architecture;
use dhcproto::{Decodable, Encodable};
use std::time::Duration;

pub(super) const SERVER: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
pub(super) const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn subnet(net: &str, first: [u8; 4], last: [u8; 4]) -> SubnetConfig {
    let net: ipnet::Ipv4Net = net.parse().unwrap();
    SubnetConfig {
        net,
        ranges: vec![(Ipv4Addr::from(first), Ipv4Addr::from(last))],
        router: Some(Ipv4Addr::from(u32::from(net.network()) + 1)),
        dns: vec![],
        domain: None,
        lease_time: Duration::from_secs(3600),
        unknown_clients: UnknownClients::Discovery,
    }
}

pub(super) fn policy() -> DhcpPolicy {
    DhcpPolicy {
        mode: DhcpMode::Authoritative,
        tftp_server: SERVER,
        boot_url: "http://10.213.0.1:8080".into(),
        boot_files: default_boot_files(),
        signed_boot_files: crate::dhcp::policy::default_signed_boot_files(),
        boot_chain: Default::default(),
        subnets: vec![
            subnet("10.213.0.0/24", [10, 213, 0, 100], [10, 213, 0, 199]),
            subnet("10.9.0.0/24", [10, 9, 0, 10], [10, 9, 0, 20]),
        ],
        trusted_relays: vec![],
        offer_hold_secs: 60,
        quarantine_secs: 900,
        ipxe: Default::default(),
        share: Default::default(),
    }
}

/// Runs the pipeline on `msg` as if it arrived on port 67 of 10.213.0.1.
pub(super) struct Harness {
    policy: DhcpPolicy,
    leases: Leases,
    hosts: Hosts,
    /// The UDP source of every packet.
    pub(super) peer: Ipv4Addr,
}

impl Harness {
    pub(super) fn new() -> Harness {
        Self::with(policy())
    }
    pub(super) fn with(policy: DhcpPolicy) -> Harness {
        let leases = Leases::new(&policy);
        Harness { policy, leases, hosts: Hosts::default(), peer: Ipv4Addr::UNSPECIFIED }
    }
    pub(super) fn run_on(&mut self, msg: &Message, port: Port, now: u64) -> Decision {
        let raw = msg.to_vec().unwrap();
        let msg = Message::decode(&mut dhcproto::Decoder::new(&raw)).unwrap();
        let inbound = Inbound { msg: &msg, raw: &raw, arrival: Arrival { local_addr: SERVER, peer: self.peer, port } };
        decide(&inbound, &self.policy, &mut self.leases, &self.hosts, now)
    }
    pub(super) fn run(&mut self, msg: &Message, now: u64) -> Decision {
        self.run_on(msg, Port::Dhcp, now)
    }
    fn reserve(&mut self, mac: [u8; 6], ip: Option<Ipv4Addr>, hostname: Option<&str>) {
        self.hosts.insert(
            MacAddr(mac),
            Host { reserved_ip: ip, hostname: hostname.map(str::to_string), profile: None, boot_chain: None },
        );
        self.leases.set_reservations(&self.policy, &self.hosts);
    }
}

pub(super) fn reply_of(d: Decision) -> (Message, Option<LeaseGrant>, BootChoice) {
    match d {
        Decision::Reply { reply, grant, boot, .. } => (*reply, grant, boot),
        other => panic!("expected a reply, got {other:?}"),
    }
}

pub(super) fn with_opts(mut msg: Message, opts: impl IntoIterator<Item = DhcpOption>) -> Message {
    for o in opts {
        msg.opts_mut().insert(o);
    }
    msg
}

fn selecting(mac: [u8; 6], ip: Ipv4Addr) -> Message {
    with_opts(
        request(mac, MessageType::Request),
        [DhcpOption::RequestedIpAddress(ip), DhcpOption::ServerIdentifier(SERVER)],
    )
}

fn pxe(mac: [u8; 6], kind: MessageType, arch: u16) -> Message {
    with_opts(
        request(mac, kind),
        [
            DhcpOption::ClientSystemArchitecture(Architecture::from(arch)),
            DhcpOption::ClassIdentifier(format!("PXEClient:Arch:{arch:05}:UNDI:003016").into_bytes()),
        ],
    )
}

fn kind_of(m: &Message) -> Option<MessageType> {
    m.opts().msg_type()
}

#[test]
fn ipxe_discover_request_ack_carries_script_url_and_grant() {
    let mut h = Harness::new();
    let ours = |kind| ipxe_bios_with_class(MAC, kind, b"ramboot");
    let (offer, grant, boot) = reply_of(h.run(&ours(MessageType::Discover), 1000));
    assert_eq!(kind_of(&offer), Some(MessageType::Offer));
    assert!(grant.is_none(), "an OFFER is not a lease");
    assert_eq!(
        boot,
        BootChoice::IpxeScript(
            "http://10.213.0.1:8080/boot.ipxe?mac=52:54:00:12:34:56".into(),
            ScriptFor::OwnUserClass
        )
    );
    let ip = offer.yiaddr();
    assert!(h.leases.pool(0).unwrap().contains(ip));

    let req = with_opts(
        ours(MessageType::Request),
        [DhcpOption::RequestedIpAddress(ip), DhcpOption::ServerIdentifier(SERVER)],
    );
    let (ack, grant, _) = reply_of(h.run(&req, 1001));
    assert_eq!(kind_of(&ack), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), ip);
    let grant = grant.expect("an ACK carries its lease");
    assert_eq!((grant.mac, grant.ip, grant.expires_at), (MacAddr(MAC), ip, 1001 + 3600));
    // A commit failure rolls back to the offer the client was answering, not to nothing.
    h.leases.undo(&h.policy, &grant.undo);
    let pool = h.leases.pool(0).unwrap();
    assert_eq!(pool.binding(ip).map(|b| (b.mac, b.kind)), Some((MacAddr(MAC), BindingKind::Offered)));
    h.leases.pools[0].grant(MacAddr(MAC), ip, 1001 + 3600);
    assert_eq!(
        ack.opts().get(OptionCode::BootfileName),
        Some(&DhcpOption::BootfileName(b"http://10.213.0.1:8080/boot.ipxe?mac=52:54:00:12:34:56\0".to_vec()))
    );
    assert_eq!(ack.siaddr(), SERVER);
}

#[test]
fn every_pxe_arch_gets_its_binary_or_nothing() {
    for (code, want) in [
        (0u16, Some("undionly.kpxe")),
        (6, Some("ipxe-ia32.efi")),
        (7, Some("snponly.efi")),
        (9, Some("snponly.efi")),
        (10, Some("ipxe-arm32.efi")),
        (11, Some("ipxe-arm64.efi")),
        (27, Some("ipxe-riscv64.efi")),
        (2, None),
        (31, None),
        (999, None),
    ] {
        let (offer, _, boot) = reply_of(Harness::new().run(&pxe(MAC, MessageType::Discover, code), 0));
        assert_eq!(boot.file(), want, "arch {code}");
        assert_eq!(offer.fname_str().and_then(|f| f.ok()), want, "arch {code}");
        assert_eq!(offer.opts().get(OptionCode::BootfileName).is_some(), want.is_some());
    }
}

#[test]
fn operator_map_overrides_the_built_in_one() {
    let mut p = policy();
    p.boot_files.insert(Arch(7), "snponly.efi".into());
    let (_, _, boot) = reply_of(Harness::with(p).run(&pxe(MAC, MessageType::Discover, 7), 0));
    assert_eq!(boot, BootChoice::Tftp("snponly.efi".into()));
}

#[test]
fn uefi_http_boot_gets_a_url_and_its_class_echoed() {
    for (code, file) in [(16u16, "snponly.efi"), (19, "ipxe-arm64.efi")] {
        let msg = with_opts(
            request(MAC, MessageType::Discover),
            [
                DhcpOption::ClientSystemArchitecture(Architecture::from(code)),
                DhcpOption::ClassIdentifier(format!("HTTPClient:Arch:{code:05}:UNDI:003000").into_bytes()),
            ],
        );
        let (offer, _, boot) = reply_of(Harness::new().run(&msg, 0));
        assert_eq!(boot, BootChoice::Http(format!("http://10.213.0.1:8080/ipxe/{file}")));
        assert_eq!(
            offer.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
        );
    }
}

#[test]
fn an_os_dhcp_client_gets_an_address_and_no_boot_file() {
    let (offer, _, boot) = reply_of(Harness::new().run(&request(MAC, MessageType::Discover), 0));
    assert!(matches!(boot, BootChoice::None(_)));
    assert!(!offer.yiaddr().is_unspecified());
    assert!(offer.opts().get(OptionCode::BootfileName).is_none());
}

#[test]
fn unknown_client_policies() {
    for (policy_kind, expect) in [
        (UnknownClients::Discovery, Some(true)),
        (UnknownClients::AddressOnly, Some(false)),
        (UnknownClients::Ignore, None),
    ] {
        let mut p = policy();
        p.subnets[0].unknown_clients = policy_kind;
        let mut h = Harness::with(p);
        let d = h.run(&pxe(MAC, MessageType::Discover, 0), 0);
        match expect {
            None => assert_eq!(d, Decision::Ignore(IgnoreReason::UnknownClient)),
            Some(with_boot) => assert_eq!(reply_of(d).2.file().is_some(), with_boot, "{policy_kind:?}"),
        }
        // A node in the inventory always gets the full treatment.
        h.reserve(MAC, None, None);
        assert!(reply_of(h.run(&pxe(MAC, MessageType::Discover, 0), 0)).2.file().is_some());
    }
}

#[test]
fn reservation_and_hostname_come_from_the_inventory() {
    let mut h = Harness::new();
    let ip = Ipv4Addr::new(10, 213, 0, 20);
    h.policy.subnets[0].domain = Some("lab.example".into());
    h.reserve(MAC, Some(ip), Some("node-07"));
    let (offer, _, _) = reply_of(h.run(&request(MAC, MessageType::Discover), 0));
    assert_eq!(offer.yiaddr(), ip, "reserved address, outside the dynamic range");
    assert_eq!(offer.opts().get(OptionCode::Hostname), Some(&DhcpOption::Hostname("node-07".into())));
    assert_eq!(offer.opts().get(OptionCode::DomainName), Some(&DhcpOption::DomainName("lab.example".into())));
    let (ack, grant, _) = reply_of(h.run(&selecting(MAC, ip), 1));
    assert_eq!((kind_of(&ack), grant.map(|g| g.ip)), (Some(MessageType::Ack), Some(ip)));
    // Nobody else can take it.
    let other = [2, 0, 0, 0, 0, 9];
    let (nak, _, _) = reply_of(h.run(&selecting(other, ip), 2));
    assert_eq!(kind_of(&nak), Some(MessageType::Nak));
}

#[test]
fn request_for_another_servers_offer_is_ignored_and_frees_ours() {
    let mut h = Harness::new();
    let (offer, _, _) = reply_of(h.run(&request(MAC, MessageType::Discover), 0));
    let mut req = selecting(MAC, offer.yiaddr());
    req.opts_mut().insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 213, 0, 2)));
    assert!(matches!(h.run(&req, 1), Decision::Ignore(IgnoreReason::OtherServer(_))));
    assert_eq!(h.leases.pool(0).unwrap().held_by(MacAddr(MAC), 1), None);
}

#[test]
fn request_for_a_foreign_or_taken_address_is_naked() {
    let mut h = Harness::new();
    let (nak, grant, _) = reply_of(h.run(&selecting(MAC, Ipv4Addr::new(192, 168, 1, 5)), 0));
    assert_eq!(kind_of(&nak), Some(MessageType::Nak));
    assert!(grant.is_none());
    assert!(nak.yiaddr().is_unspecified());

    // Another MAC holds .100: a REQUEST for it is refused.
    let taken = Ipv4Addr::new(10, 213, 0, 100);
    h.leases.pools[0].grant(MacAddr([2, 0, 0, 0, 0, 9]), taken, 5000);
    let (nak, _, _) = reply_of(h.run(&selecting(MAC, taken), 0));
    assert_eq!(kind_of(&nak), Some(MessageType::Nak));
}

#[test]
fn init_reboot_rules() {
    let mut h = Harness::new();
    let init_reboot = |ip| with_opts(request(MAC, MessageType::Request), [DhcpOption::RequestedIpAddress(ip)]);
    // Wrong network: NAK.
    let (nak, _, _) = reply_of(h.run(&init_reboot(Ipv4Addr::new(10, 9, 0, 15)), 0));
    assert_eq!(kind_of(&nak), Some(MessageType::Nak));
    // No record at all: silence (another server may own it).
    let ip = Ipv4Addr::new(10, 213, 0, 150);
    assert_eq!(h.run(&init_reboot(ip), 0), Decision::Ignore(IgnoreReason::NoRecord(ip)));
    // Its own lease: ACK, extended.
    h.leases.pools[0].grant(MacAddr(MAC), ip, 100);
    let (ack, grant, _) = reply_of(h.run(&init_reboot(ip), 50));
    assert_eq!(kind_of(&ack), Some(MessageType::Ack));
    assert_eq!(grant.unwrap().expires_at, 50 + 3600);
    // An address someone else holds: NAK.
    let theirs = Ipv4Addr::new(10, 213, 0, 160);
    h.leases.pools[0].grant(MacAddr([2, 0, 0, 0, 0, 9]), theirs, 5000);
    let (nak, _, _) = reply_of(h.run(&init_reboot(theirs), 60));
    assert_eq!(kind_of(&nak), Some(MessageType::Nak));
}

#[test]
fn renewing_uses_ciaddr_and_rebinding_after_loss_is_reinstated() {
    let mut h = Harness::new();
    let ip = Ipv4Addr::new(10, 213, 0, 150);
    h.leases.pools[0].grant(MacAddr(MAC), ip, 100);
    let mut req = request(MAC, MessageType::Request);
    req.set_ciaddr(ip);
    let (ack, grant, _) = reply_of(h.run(&req, 50));
    assert_eq!((ack.yiaddr(), ack.ciaddr()), (ip, ip));
    assert_eq!(grant.unwrap().expires_at, 50 + 3600);
    // A free in-range address renewed by a client we lost track of is reinstated.
    let mut req = request([2, 0, 0, 0, 0, 7], MessageType::Request);
    req.set_ciaddr(Ipv4Addr::new(10, 213, 0, 170));
    assert_eq!(kind_of(&reply_of(h.run(&req, 50)).0), Some(MessageType::Ack));
}

/// What a server learns of a peer's lease through the database's change feed
/// (`Leases::restore`) makes it answer that client as its own: RENEW, REBIND and
/// INIT-REBOOT are ACKed, a DISCOVER is offered the same address, and nobody else
/// is offered it until the peer's release is learned too.
#[test]
fn a_lease_learned_from_another_server_is_served_here() {
    let mut h = Harness::new();
    let ip = Ipv4Addr::new(10, 213, 0, 150);
    assert!(h.leases.restore(&h.policy, ip, MacAddr(MAC), 1000, BindingKind::Leased));
    let mut renew = request(MAC, MessageType::Request);
    renew.set_ciaddr(ip);
    let (ack, grant, _) = reply_of(h.run(&renew, 50));
    assert_eq!((kind_of(&ack), ack.yiaddr()), (Some(MessageType::Ack), ip));
    assert_eq!(grant.unwrap().expires_at, 50 + 3600);
    let init_reboot = with_opts(request(MAC, MessageType::Request), [DhcpOption::RequestedIpAddress(ip)]);
    let (ack, _, _) = reply_of(h.run(&init_reboot, 60));
    assert_eq!((kind_of(&ack), ack.yiaddr()), (Some(MessageType::Ack), ip));
    let (offer, _, _) = reply_of(h.run(&request(MAC, MessageType::Discover), 70));
    assert_eq!(offer.yiaddr(), ip);
    let other = [2, 0, 0, 0, 0, 8];
    let (offer, _, _) = reply_of(h.run(&request(other, MessageType::Discover), 70));
    assert_ne!(offer.yiaddr(), ip);
    // The peer's release, learned: free for others, still remembered as MAC's.
    h.leases.released_elsewhere(&h.policy, MacAddr(MAC), ip);
    assert!(h.leases.pools[0].binding(ip).is_none());
}

#[test]
fn release_frees_the_address() {
    let mut h = Harness::new();
    let ip = Ipv4Addr::new(10, 213, 0, 150);
    h.leases.pools[0].grant(MacAddr(MAC), ip, 100);
    let mut rel = request(MAC, MessageType::Release);
    rel.set_ciaddr(ip);
    let Decision::Released { mac, ip: released, undo } = h.run(&rel, 1) else { panic!("not released") };
    assert_eq!((mac, released), (MacAddr(MAC), ip));
    assert!(h.leases.pools[0].can_grant(MacAddr([2, 0, 0, 0, 0, 9]), ip, 1));
    // A release that fails to persist leaves the stored lease active: so is the pool's.
    h.leases.undo(&h.policy, &undo);
    assert!(!h.leases.pools[0].can_grant(MacAddr([2, 0, 0, 0, 0, 9]), ip, 1));
}

#[test]
fn decline_quarantines_for_the_configured_time() {
    let mut h = Harness::new();
    let (offer, _, _) = reply_of(h.run(&request(MAC, MessageType::Discover), 0));
    let ip = offer.yiaddr();
    reply_of(h.run(&selecting(MAC, ip), 1));
    let decline = with_opts(request(MAC, MessageType::Decline), [DhcpOption::RequestedIpAddress(ip)]);
    assert_eq!(h.run(&decline, 2), Decision::Declined { mac: MacAddr(MAC), ip, until: 902 });
    // Nobody, not even the decliner, gets it until the quarantine ends.
    let (again, _, _) = reply_of(h.run(&request(MAC, MessageType::Discover), 3));
    assert_ne!(again.yiaddr(), ip);
    assert!(!h.leases.pools[0].can_grant(MacAddr([2, 0, 0, 0, 0, 9]), ip, 901));
    assert!(h.leases.pools[0].can_grant(MacAddr([2, 0, 0, 0, 0, 9]), ip, 902));
}

#[test]
fn inform_gets_options_but_no_lease() {
    let mut msg = request(MAC, MessageType::Inform);
    msg.set_ciaddr(Ipv4Addr::new(10, 213, 0, 7));
    let (ack, grant, _) = reply_of(Harness::new().run(&msg, 0));
    assert_eq!(kind_of(&ack), Some(MessageType::Ack));
    assert!(grant.is_none() && ack.yiaddr().is_unspecified());
    assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert!(ack.opts().get(OptionCode::SubnetMask).is_some());
}

#[test]
fn relayed_request_picks_the_relays_subnet_and_echoes_option_82_verbatim() {
    let mut h = Harness::new();
    let mut msg = pxe(MAC, MessageType::Discover, 7);
    msg.set_giaddr(Ipv4Addr::new(10, 9, 0, 1)).set_hops(1);
    let mut raw = msg.to_vec().unwrap();
    // Append option 82 by hand, sub-options out of numeric order (2 before 1), as a
    // relay may: it must come back byte for byte.
    let opt82 = [82u8, 10, 2, 4, b'r', b'e', b'm', b'1', 1, 2, b'c', b'7'];
    let end = raw.iter().rposition(|&b| b == 255).unwrap();
    raw.splice(end..end, opt82);
    let decoded = Message::decode(&mut dhcproto::Decoder::new(&raw)).unwrap();
    let arrival = Arrival { local_addr: SERVER, peer: Ipv4Addr::new(10, 213, 0, 2), port: Port::Dhcp };
    let inbound = Inbound { msg: &decoded, raw: &raw, arrival };
    let (offer, _, boot) = reply_of(decide(&inbound, &h.policy, &mut h.leases, &h.hosts, 0));
    let bytes = encode_reply(&offer, &raw).unwrap();
    assert!(h.policy.subnets[1].net.contains(&offer.yiaddr()), "{} from the relay's subnet", offer.yiaddr());
    assert_eq!(offer.giaddr(), Ipv4Addr::new(10, 9, 0, 1));
    assert_eq!(offer.opts().get(OptionCode::Router), Some(&DhcpOption::Router(vec![Ipv4Addr::new(10, 9, 0, 1)])));
    assert_eq!(boot, BootChoice::Tftp("snponly.efi".into()));
    // Exactly once, unchanged, as the last option.
    let end = end_option_at(&bytes).unwrap();
    assert_eq!(&bytes[end - opt82.len()..end], opt82, "option 82 echoed unchanged, last");
    assert_eq!(bytes.windows(opt82.len()).filter(|w| *w == opt82).count(), 1, "once");
    let again = Message::decode(&mut dhcproto::Decoder::new(&bytes)).unwrap();
    assert!(again.opts().get(OptionCode::RelayAgentInformation).is_some());
    // A request without option 82 gets a reply without one.
    let plain = encode_reply(&offer, &offer.to_vec().unwrap()).unwrap();
    assert_eq!(plain, offer.to_vec().unwrap());
}

#[test]
fn link_selection_beats_giaddr_from_a_trusted_relay_only() {
    let relay_addr = Ipv4Addr::new(10, 213, 0, 254);
    let mut msg = request(MAC, MessageType::Discover);
    msg.set_giaddr(relay_addr);
    let mut info = relay::RelayAgentInformation::default();
    info.insert(relay::RelayInfo::LinkSelection(Ipv4Addr::new(10, 9, 0, 0)));
    msg.opts_mut().insert(DhcpOption::RelayAgentInformation(info));
    let mut trusted = policy();
    trusted.trusted_relays = vec!["10.213.0.254/32".parse().unwrap()];
    let mut h = Harness::with(trusted);
    h.peer = relay_addr;
    let (offer, _, _) = reply_of(h.run(&msg, 0));
    assert_eq!(offer.yiaddr().octets()[..3], [10, 9, 0]);
    // From a relay not in the list, giaddr routes as ordinary DHCP; the link it names is ignored.
    let mut h = Harness::new();
    h.peer = relay_addr;
    let (offer, _, _) = reply_of(h.run(&msg, 0));
    assert_eq!(offer.yiaddr().octets()[..3], [10, 213, 0]);
    // The same for option 118 from a client on the server's own segment.
    let mut direct = request([2, 0, 0, 0, 0, 8], MessageType::Discover);
    direct.opts_mut().insert(DhcpOption::SubnetSelection(Ipv4Addr::new(10, 9, 0, 0)));
    let (offer, _, _) = reply_of(Harness::new().run(&direct, 0));
    assert_eq!(offer.yiaddr().octets()[..3], [10, 213, 0]);
}

#[test]
fn option_82_from_a_directly_attached_client_is_dropped() {
    let mut msg = ipxe_bios(MAC, MessageType::Discover);
    let mut info = relay::RelayAgentInformation::default();
    info.insert(relay::RelayInfo::AgentCircuitId(b"forged".to_vec()));
    msg.opts_mut().insert(DhcpOption::RelayAgentInformation(info));
    let mut h = Harness::new();
    assert_eq!(h.run(&msg, 0), Decision::Ignore(IgnoreReason::AgentInfoWithoutRelay));
    assert!(h.leases.pool(0).unwrap().held_by(MacAddr(MAC), 0).is_none(), "nothing offered, nothing held");
}

#[test]
fn a_link_with_no_subnet_is_ignored() {
    let mut msg = request(MAC, MessageType::Discover);
    msg.set_giaddr(Ipv4Addr::new(172, 16, 0, 1));
    assert_eq!(Harness::new().run(&msg, 0), Decision::Ignore(IgnoreReason::NoSubnet(Ipv4Addr::new(172, 16, 0, 1))));
}

#[test]
fn proxy_offers_boot_options_only_and_answers_binl_requests() {
    let mut p = policy();
    p.mode = DhcpMode::Proxy;
    let mut h = Harness::with(p);
    let mut discover = pxe(MAC, MessageType::Discover, 0);
    discover.opts_mut().insert(DhcpOption::ClientMachineIdentifier(vec![0; 17]));
    let (offer, grant, boot) = reply_of(h.run(&discover, 0));
    assert_eq!(kind_of(&offer), Some(MessageType::Offer));
    assert!(grant.is_none() && offer.yiaddr().is_unspecified(), "no address from a proxy");
    assert_eq!(boot, BootChoice::Tftp("undionly.kpxe".into()));
    assert_eq!(
        offer.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert_eq!(
        offer.opts().get(OptionCode::ClientMachineIdentifier),
        Some(&DhcpOption::ClientMachineIdentifier(vec![0; 17]))
    );
    assert!(offer.opts().get(OptionCode::AddressLeaseTime).is_none());
    // The site server's address is the client's; its boot-server request on 4011 gets an ACK.
    let mut req = pxe(MAC, MessageType::Request, 0);
    req.set_ciaddr(Ipv4Addr::new(10, 213, 0, 77));
    let (ack, _, _) = reply_of(h.run_on(&req, Port::Binl, 1));
    assert_eq!(kind_of(&ack), Some(MessageType::Ack));
    assert_eq!(ack.fname_str().unwrap().unwrap(), "undionly.kpxe");
    // Where the boot token may go: the address it names, if it sent from there too.
    let seen_of = |d: Decision| match d {
        Decision::Reply { seen, .. } => seen,
        other => panic!("expected a reply, got {other:?}"),
    };
    assert_eq!(seen_of(h.run_on(&req, Port::Binl, 1)), None, "sent from another address");
    h.peer = Ipv4Addr::new(10, 213, 0, 77);
    assert_eq!(seen_of(h.run_on(&req, Port::Binl, 1)), Some(h.peer));
    assert_eq!(seen_of(h.run(&pxe(MAC, MessageType::Discover, 0), 1)), None, "an offer on 67 names no address");
    h.peer = Ipv4Addr::UNSPECIFIED;
    // An OS's DHCP client is the site server's business; a network-boot client's
    // REQUEST on 67 gets no answer, but says which address it takes.
    assert_eq!(h.run(&request(MAC, MessageType::Discover), 2), Decision::Ignore(IgnoreReason::NotNetbootClient));
    assert_eq!(h.run(&pxe(MAC, MessageType::Request, 0), 2), Decision::Ignore(IgnoreReason::NoRequestedAddress));
    let asked = Ipv4Addr::new(10, 213, 0, 78);
    let req = with_opts(pxe(MAC, MessageType::Request, 0), [DhcpOption::RequestedIpAddress(asked)]);
    assert!(matches!(h.run(&req, 2), Decision::Seen { ip, client } if ip == asked && client.mac == MacAddr(MAC)));
    // ramboot's iPXE behind a proxy still gets its script.
    let (_, _, boot) = reply_of(h.run(&ipxe_bios_with_class(MAC, MessageType::Discover, b"ramboot"), 3));
    assert!(matches!(boot, BootChoice::IpxeScript(_, ScriptFor::OwnUserClass)));
}

#[test]
fn binl_port_is_not_served_when_authoritative() {
    let req = pxe(MAC, MessageType::Request, 0);
    assert_eq!(Harness::new().run_on(&req, Port::Binl, 0), Decision::Ignore(IgnoreReason::BinlNotProxy));
}

#[test]
fn long_script_url_goes_only_in_option_67() {
    let mut p = policy();
    p.boot_url = format!("http://{}.example:8080", "x".repeat(120));
    let ours = ipxe_bios_with_class(MAC, MessageType::Discover, b"ramboot");
    let (offer, _, _) = reply_of(Harness::with(p).run(&ours, 0));
    assert!(offer.fname().is_none());
    assert!(offer.opts().get(OptionCode::BootfileName).is_some());
}

#[test]
fn replies_encode_and_decode_again() {
    let (offer, _, _) = reply_of(Harness::new().run(&ipxe_bios(MAC, MessageType::Discover), 0));
    // Byte-level: dhcproto keeps the NUL terminator of `file` when decoding.
    let bytes = offer.to_vec().unwrap();
    let again = Message::decode(&mut dhcproto::Decoder::new(&bytes)).unwrap();
    assert_eq!(again.to_vec().unwrap(), bytes);
    assert_eq!(again.opts(), offer.opts());
}

#[test]
fn raw_option_scan_stops_at_end_and_at_truncation() {
    let mut p = vec![0u8; 240];
    p.extend_from_slice(&[0, 82, 2, 1, 0, 255, 82, 1, 9]);
    assert_eq!(raw_option(&p, 82), Some(&[1u8, 0][..]));
    p.truncate(240);
    p.extend_from_slice(&[82, 5, 1]);
    assert_eq!(raw_option(&p, 82), None);
    assert_eq!(raw_option(&[1, 2, 3], 82), None);
}

proptest::proptest! {
    /// Any bytes at all: decoding may fail, deciding must never panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        crate::dhcp::fuzz::decide_bytes(&bytes);
    }
}
