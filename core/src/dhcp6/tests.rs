use super::*;
use dhcproto::{Decodable, Decoder, Encodable};
use proptest::prelude::*;

const SERVER_DUID: &[u8] = &[0, 3, 0, 1, 0x02, 0x72, 0x62, 0, 0, 1];
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x72, 0x62, 0x06];

fn policy() -> Dhcp6Policy {
    Dhcp6Policy {
        server_duid: SERVER_DUID.to_vec(),
        range: ("fd00:72::100".parse().unwrap(), "fd00:72::102".parse().unwrap()),
        preferred_secs: 1800,
        valid_secs: 3600,
        tftp_server: "fd00:72::1".parse().unwrap(),
        offer_hold_secs: 60,
        rapid_commit: true,
        dns: vec![],
    }
}

fn boot_policy() -> DhcpPolicy {
    fixture_boot_policy("http://[fd00:72::1]:8080")
}

/// A DUID-LLT as EDK2 makes it: type 1, hardware type 1, a time, the MAC.
fn duid_llt(mac: [u8; 6]) -> Vec<u8> {
    let mut d = vec![0, 1, 0, 1, 0x2e, 0x1f, 0x00, 0x01];
    d.extend_from_slice(&mac);
    d
}

/// What OVMF's PXEv6 sends: its DUID, an IA_NA, arch 7, the PXE vendor class.
fn pxe(kind: MessageType, mac: [u8; 6]) -> Message {
    let mut msg = Message::new_with_id(kind, [1, 2, 3]);
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::ClientId(duid_llt(mac)));
    opts.insert(DhcpOption::IANA(IANA { id: 7, t1: 0, t2: 0, opts: Default::default() }));
    opts.insert(DhcpOption::ClientArchType(vec![dhcproto::v6::Architecture::from(7)]));
    opts.insert(class_option(OptionCode::VendorClass, Some(PXE_ENTERPRISE), &[b"PXEClient:Arch:00007:UNDI:003000"]));
    msg
}

fn with_server(mut msg: Message) -> Message {
    msg.opts_mut().insert(DhcpOption::ServerId(SERVER_DUID.to_vec()));
    msg
}

struct Harness {
    policy: Dhcp6Policy,
    boot: DhcpPolicy,
    pool: Pool6,
    handovers: Handovers,
    chain: BootChain,
    /// Where messages come from: a link-local address of no MAC's (not EUI-64).
    peer: Ipv6Addr,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            policy: policy(),
            boot: boot_policy(),
            pool: Pool6::default(),
            handovers: Handovers::default(),
            chain: BootChain::Ipxe,
            peer: "fe80::1".parse().unwrap(),
        }
    }
    fn run(&mut self, msg: &Message, now: u64) -> Decision6 {
        // Through the wire and back, as the socket layer sees it.
        let raw = msg.to_vec().unwrap();
        let msg = Message::decode(&mut Decoder::new(&raw)).unwrap();
        let chain = self.chain;
        let boot = BootInputs { boot: &self.boot, chain_of: &|_| chain, handovers: &mut self.handovers };
        decide6(Inbound6 { msg: &msg, peer: self.peer }, &self.policy, &mut self.pool, boot, now)
    }
}

fn reply(d: Decision6) -> (Message, Vec<Grant6>, BootChoice) {
    match d {
        Decision6::Reply { reply, grants, boot, .. } => {
            // Every reply encodes.
            reply.to_vec().unwrap();
            (*reply, grants, boot)
        }
        other => panic!("not a reply: {other:?}"),
    }
}

fn addr_of(msg: &Message) -> Option<Ipv6Addr> {
    msg.opts().iter().find_map(|o| match o {
        DhcpOption::IANA(ia) => ia.opts.iter().find_map(|o| match o {
            DhcpOption::IAAddr(a) => Some(a.addr),
            _ => None,
        }),
        _ => None,
    })
}

fn url_of(msg: &Message) -> Option<String> {
    msg.opts().iter().find_map(|o| match o {
        DhcpOption::Unknown(u) if u16::from(u.code()) == OPT_BOOTFILE_URL => {
            Some(String::from_utf8_lossy(u.data()).into_owned())
        }
        _ => None,
    })
}

#[test]
fn class_options_round_trip_where_dhcprotos_own_encoder_does_not() {
    let mut msg = Message::new(MessageType::Solicit);
    msg.opts_mut().insert(class_option(OptionCode::UserClass, None, &[b"iPXE", b"ramboot"]));
    msg.opts_mut().insert(class_option(OptionCode::VendorClass, Some(343), &[b"PXEClient:Arch:00007"]));
    msg.opts_mut().insert(DhcpOption::ClientArchType(vec![dhcproto::v6::Architecture::from(7)]));
    let back = Message::decode(&mut Decoder::new(&msg.to_vec().unwrap())).unwrap();
    assert!(matches!(back.opts().get(OptionCode::UserClass), Some(DhcpOption::UserClass(u)) if u.data.len() == 2));
    assert!(matches!(back.opts().get(OptionCode::VendorClass), Some(DhcpOption::VendorClass(v)) if v.num == 343));
    assert!(matches!(back.opts().get(OptionCode::ClientArchType), Some(DhcpOption::ClientArchType(a)) if a.len() == 1));
}

#[test]
fn the_mac_comes_from_duid_ll_and_llt_of_ethernet() {
    assert_eq!(mac_of_duid(&duid_llt(MAC)), Some(MacAddr(MAC)));
    let mut ll = vec![0, 3, 0, 1];
    ll.extend_from_slice(&MAC);
    assert_eq!(mac_of_duid(&ll), Some(MacAddr(MAC)));
    // DUID-EN (2), another hardware type, short and empty DUIDs: none.
    assert_eq!(mac_of_duid(&[0, 2, 0, 0, 1, 55, 1, 2]), None);
    assert_eq!(mac_of_duid(&[0, 3, 0, 6, 1, 2, 3, 4, 5, 6]), None);
    assert_eq!(mac_of_duid(&[0, 3, 0, 1, 1]), None);
    assert_eq!(mac_of_duid(&[]), None);
}

#[test]
fn a_pxe_firmware_is_advertised_then_granted_an_address_and_ipxe_over_tftp() {
    let mut h = Harness::new();
    let (advertise, grants, boot) = reply(h.run(&pxe(MessageType::Solicit, MAC), 100));
    assert_eq!(advertise.msg_type(), MessageType::Advertise);
    assert!(grants.is_empty(), "an Advertise binds nothing");
    assert_eq!(boot, BootChoice::Tftp("snponly.efi".into()));
    assert_eq!(url_of(&advertise).as_deref(), Some("tftp://[fd00:72::1]/snponly.efi"));
    assert_eq!(advertise.opts().get(OptionCode::Preference), Some(&DhcpOption::Preference(255)));
    let offered = addr_of(&advertise).expect("an address");
    assert_eq!(offered, "fd00:72::100".parse::<Ipv6Addr>().unwrap());

    let (ack, grants, _) = reply(h.run(&with_server(pxe(MessageType::Request, MAC)), 101));
    assert_eq!(ack.msg_type(), MessageType::Reply);
    assert_eq!(addr_of(&ack), Some(offered), "the advertised address");
    assert_eq!(
        grants,
        vec![Grant6 { mac: Some(MacAddr(MAC)), duid: duid_llt(MAC), iaid: 7, addr: offered, expires_at: 101 + 3600 }]
    );

    // Renew extends it; Release gives it back.
    let (renewed, grants, _) = reply(h.run(&with_server(pxe(MessageType::Renew, MAC)), 2000));
    assert_eq!(addr_of(&renewed), Some(offered));
    assert_eq!(grants[0].expires_at, 2000 + 3600);
    let mut release = with_server(pxe(MessageType::Release, MAC));
    release.opts_mut().remove(OptionCode::IANA);
    release.opts_mut().insert(DhcpOption::IANA(ia_with(7, offered, &policy())));
    match h.run(&release, 2001) {
        Decision6::Released { addrs, .. } => assert_eq!(addrs, vec![offered]),
        other => panic!("{other:?}"),
    }
    assert!(h.pool.binding(offered).is_none());
}

#[test]
fn the_mac_comes_from_an_eui64_link_local_address_when_the_duid_has_none() {
    let ll: Ipv6Addr = "fe80::5054:ff:fe72:6206".parse().unwrap();
    assert_eq!(mac_of_link_local(ll), Some(MacAddr(MAC)));
    assert_eq!(mac_of_link_local("fe80::1".parse().unwrap()), None, "not EUI-64");
    assert_eq!(mac_of_link_local("fd00::5054:ff:fe72:6206".parse().unwrap()), None, "not link-local");
}

/// iPXE's client id: a DUID-UUID (type 4), which names no MAC.
fn duid_uuid() -> Vec<u8> {
    let mut d = vec![0, 4];
    d.extend_from_slice(&[0x11; 16]);
    d
}

#[test]
fn a_node_keeps_its_address_across_the_firmware_ipxe_and_stage_one() {
    let mut h = Harness::new();
    h.peer = "fe80::5054:ff:fe72:6206".parse().unwrap();
    let mut firmware = pxe(MessageType::Solicit, MAC);
    firmware.opts_mut().insert(DhcpOption::RapidCommit);
    let (r, _, _) = reply(h.run(&firmware, 10));
    let first = addr_of(&r).unwrap();
    // Another client of the same range takes the next address.
    let (r, _, _) = reply(h.run(&pxe(MessageType::Solicit, [0x52, 0x54, 0, 9, 9, 9]), 10));
    assert_ne!(addr_of(&r), Some(first));

    // iPXE: a DUID-UUID and another IAID, from the EUI-64 link-local address.
    let mut ipxe = Message::new_with_id(MessageType::Solicit, [4, 4, 4]);
    ipxe.opts_mut().insert(DhcpOption::ClientId(duid_uuid()));
    ipxe.opts_mut().insert(DhcpOption::IANA(IANA { id: 0xabcd, t1: 0, t2: 0, opts: Default::default() }));
    ipxe.opts_mut().insert(DhcpOption::RapidCommit);
    ipxe.opts_mut().insert(class_option(OptionCode::UserClass, None, &[b"iPXE"]));
    let (r, grants, _) = reply(h.run(&ipxe, 11));
    assert_eq!(addr_of(&r), Some(first), "the node's address, taken over");
    assert_eq!(grants[0].mac, Some(MacAddr(MAC)));
    assert_eq!(grants[0].duid, duid_uuid());

    // Stage one: a DUID-LL of the MAC.
    let mut ll = vec![0, 3, 0, 1];
    ll.extend_from_slice(&MAC);
    let mut stage1 = Message::new_with_id(MessageType::Solicit, [5, 5, 5]);
    stage1.opts_mut().insert(DhcpOption::ClientId(ll.clone()));
    stage1.opts_mut().insert(DhcpOption::IANA(IANA { id: 1, t1: 0, t2: 0, opts: Default::default() }));
    stage1.opts_mut().insert(DhcpOption::RapidCommit);
    let (r, _, _) = reply(h.run(&stage1, 12));
    assert_eq!(addr_of(&r), Some(first));
    assert_eq!(h.pool.len(), 2, "one binding per node: {:?}", h.pool);
    assert_eq!(h.pool.binding(first).map(|b| b.duid.clone()), Some(ll), "the last client holds it");

    // The earlier client's Release no longer frees it.
    let mut release = with_server(pxe(MessageType::Release, MAC));
    release.opts_mut().remove(OptionCode::IANA);
    release.opts_mut().insert(DhcpOption::IANA(ia_with(7, first, &policy())));
    match h.run(&release, 13) {
        Decision6::Released { addrs, .. } => assert!(addrs.is_empty()),
        other => panic!("{other:?}"),
    }
    assert!(h.pool.binding(first).is_some());
}

#[test]
fn rapid_commit_binds_at_once() {
    let mut h = Harness::new();
    let mut solicit = pxe(MessageType::Solicit, MAC);
    solicit.opts_mut().insert(DhcpOption::RapidCommit);
    let (r, grants, _) = reply(h.run(&solicit, 5));
    assert_eq!(r.msg_type(), MessageType::Reply);
    assert_eq!(r.opts().get(OptionCode::RapidCommit), Some(&DhcpOption::RapidCommit));
    assert_eq!(grants.len(), 1);
}

#[test]
fn ipxe_gets_the_script_and_http_boot_its_url_with_the_vendor_class() {
    let mut h = Harness::new();
    let mut ipxe = pxe(MessageType::Solicit, MAC);
    // Another iPXE build loads ramboot's over TFTP first, as on IPv4.
    let mut foreign = ipxe.clone();
    foreign.opts_mut().insert(class_option(OptionCode::UserClass, None, &[b"iPXE"]));
    let (r, _, _) = reply(h.run(&foreign, 1));
    assert_eq!(url_of(&r).as_deref(), Some("http://[fd00:72::1]:8080/ipxe/snponly.efi"), "over HTTP: iPXE speaks it");
    // ramboot's own iPXE (its user class) gets the script.
    ipxe.opts_mut().insert(class_option(OptionCode::UserClass, None, &[b"iPXE", b"ramboot"]));
    let (r, _, _) = reply(h.run(&ipxe, 1));
    assert_eq!(url_of(&r).as_deref(), Some("http://[fd00:72::1]:8080/boot.ipxe?mac=52:54:00:72:62:06"));

    let mut http = Message::new_with_id(MessageType::Solicit, [9, 9, 9]);
    let o = http.opts_mut();
    o.insert(DhcpOption::ClientId(duid_llt([0x52, 0x54, 0, 1, 1, 1])));
    o.insert(DhcpOption::IANA(IANA { id: 1, t1: 0, t2: 0, opts: Default::default() }));
    o.insert(DhcpOption::ClientArchType(vec![dhcproto::v6::Architecture::from(16)]));
    o.insert(class_option(OptionCode::VendorClass, Some(PXE_ENTERPRISE), &[b"HTTPClient:Arch:00016:UNDI:003000"]));
    let (r, _, boot) = reply(h.run(&http, 2));
    assert_eq!(boot, BootChoice::Http("http://[fd00:72::1]:8080/ipxe/snponly.efi".into()));
    assert_eq!(url_of(&r).as_deref(), Some("http://[fd00:72::1]:8080/ipxe/snponly.efi"));
    // On the wire and back: the vendor class HTTP Boot looks for.
    let back = Message::decode(&mut Decoder::new(&r.to_vec().unwrap())).unwrap();
    assert!(
        matches!(back.opts().get(OptionCode::VendorClass),
            Some(DhcpOption::VendorClass(v)) if v.num == PXE_ENTERPRISE && v.data == vec![b"HTTPClient".to_vec()]),
        "{back:?}"
    );
}

#[test]
fn the_signed_chain_gets_shim_over_tftp() {
    let mut h = Harness::new();
    h.chain = BootChain::Signed;
    let (r, _, boot) = reply(h.run(&pxe(MessageType::Solicit, MAC), 1));
    assert_eq!(boot, BootChoice::Signed("shimx64.efi".into()));
    assert_eq!(url_of(&r).as_deref(), Some("tftp://[fd00:72::1]/shimx64.efi"));
}

#[test]
fn other_servers_messages_and_a_full_range_are_answered_as_the_rfc_says() {
    let mut h = Harness::new();
    // A Request naming no server, or another one: not ours.
    assert_eq!(h.run(&pxe(MessageType::Request, MAC), 1), Decision6::Ignore(IgnoreReason6::OtherServer));
    let mut other = pxe(MessageType::Request, MAC);
    other.opts_mut().insert(DhcpOption::ServerId(vec![0, 3, 0, 1, 9, 9, 9, 9, 9, 9]));
    assert_eq!(h.run(&other, 1), Decision6::Ignore(IgnoreReason6::OtherServer));
    // A Solicit must not name one; no client id at all is dropped.
    assert_eq!(
        h.run(&with_server(pxe(MessageType::Solicit, MAC)), 1),
        Decision6::Ignore(IgnoreReason6::UnexpectedServerId)
    );
    let mut anonymous = pxe(MessageType::Solicit, MAC);
    anonymous.opts_mut().remove(OptionCode::ClientId);
    assert_eq!(h.run(&anonymous, 1), Decision6::Ignore(IgnoreReason6::NoClientId));
    // Renewing an IA never bound: NoBinding, no grant.
    let (r, grants, _) = reply(h.run(&with_server(pxe(MessageType::Renew, MAC)), 1));
    assert!(grants.is_empty());
    assert!(format!("{r:?}").contains("NoBinding"), "{r:?}");
    // Three addresses, four clients: the fourth is told there is none left.
    for i in 0..3u8 {
        let (_, grants, _) = reply(h.run(&with_server(pxe(MessageType::Request, [2, 0, 0, 0, 0, i])), 10));
        assert_eq!(grants.len(), 1);
    }
    let (r, grants, _) = reply(h.run(&with_server(pxe(MessageType::Request, [2, 0, 0, 0, 0, 9])), 10));
    assert!(grants.is_empty());
    assert!(format!("{r:?}").contains("NoAddrsAvail"), "{r:?}");
    // Relayed and server-to-client messages are not served here.
    assert_eq!(
        h.run(&Message::new(MessageType::Advertise), 1),
        Decision6::Ignore(IgnoreReason6::NotForServers(MessageType::Advertise))
    );
}

#[test]
fn confirm_says_whether_the_clients_addresses_are_on_this_link() {
    let mut h = Harness::new();
    let confirm = |addr: &str| {
        let mut m = Message::new_with_id(MessageType::Confirm, [4, 4, 4]);
        m.opts_mut().insert(DhcpOption::ClientId(duid_llt(MAC)));
        m.opts_mut().insert(DhcpOption::IANA(ia_with(7, addr.parse().unwrap(), &policy())));
        m
    };
    let (r, _, _) = reply(h.run(&confirm("fd00:72::101"), 1));
    assert!(format!("{r:?}").contains("Success"), "{r:?}");
    let (r, _, _) = reply(h.run(&confirm("fd00:99::1"), 1));
    assert!(format!("{r:?}").contains("NotOnLink"), "{r:?}");
}

proptest! {
    /// Any bytes: decoding may fail, deciding never panics, every reply encodes.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        crate::dhcp6::decide6_bytes(&bytes);
    }
}
