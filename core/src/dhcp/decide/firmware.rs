//! Replies to what real PXE firmware sends, field by field. The fixtures are our
//! own, built from facts in public captures and bug reports (named at each), not
//! copies of them; each asserts what that firmware needs of the reply (see
//! `docs/firmware-quirks.md`).

use super::super::classify::tests::{ipxe_bios, IPXE_BIOS_175};
use super::tests::Harness;
use super::*;
use dhcproto::v4::Architecture;
use dhcproto::{Decodable, Encodable};

/// `reply` on the wire, as the server sends it in answer to `request`.
fn encode(reply: &Message, request: &Message) -> Vec<u8> {
    encode_reply(reply, &request.to_vec().unwrap()).unwrap()
}

const ASROCK_MAC: [u8; 6] = [0xbc, 0x5f, 0xf4, 0x11, 0x22, 0x33];

/// A PXE ROM's DISCOVER or REQUEST, as the ASRock BIOS ROM in google/netboot's
/// `dhcp4/testdata/dhcp.pcap` sends it: vendor class `PXEClient:Arch:00000:UNDI:002001`,
/// max message size 1260 (57), arch 0 (93), UNDI 2.1 (94), a type-0 UUID (97).
fn pxe_rom(mac: [u8; 6], kind: MessageType, arch: u16, vendor_class: &str) -> Message {
    let any = Ipv4Addr::UNSPECIFIED;
    let mut msg = Message::new_with_id(0x5e1f_a001, any, any, any, any, &mac);
    msg.set_flags(Flags::default().set_broadcast());
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::MaxMessageSize(1260));
    opts.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(arch)));
    opts.insert(DhcpOption::ClientNetworkInterface(1, 2, 1));
    let mut uuid = vec![0u8];
    uuid.extend_from_slice(&[
        0x03, 0x00, 0x02, 0x00, 0x04, 0x00, 0x05, 0x00, 0x00, 0x06, 0x00, 0x07, 0x00, 0x08, 0x00, 0x09,
    ]);
    opts.insert(DhcpOption::ClientMachineIdentifier(uuid));
    opts.insert(DhcpOption::ClassIdentifier(vendor_class.as_bytes().to_vec()));
    msg
}

/// What every reply to a PXE ROM must be on the wire.
fn assert_rom_can_read(reply: &Message, raw: &[u8], file: &str) {
    assert!(raw.len() >= MIN_BOOTP_LEN, "{} bytes: BOOTP's minimum is 300", raw.len());
    let mut named = file.as_bytes().to_vec();
    named.push(0);
    assert_eq!(reply.opts().get(OptionCode::BootfileName), Some(&DhcpOption::BootfileName(named)), "67 ends in NUL");
    // `file` is 128 bytes: the name, then at least one NUL.
    let fname = &raw[108..236];
    assert_eq!(&fname[..file.len()], file.as_bytes());
    assert_eq!(fname[file.len()], 0, "`file` is NUL-terminated");
    assert_eq!(
        reply.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec())),
        "option 60 echoed: a BIOS ROM retries DISCOVER waiting for it"
    );
}

fn vendor_options(reply: &Message) -> Option<Vec<u8>> {
    match reply.opts().get(OptionCode::VendorExtensions) {
        Some(DhcpOption::Unknown(o)) => Some(o.data().to_vec()),
        _ => None,
    }
}

#[test]
fn asrock_bios_rom_gets_a_combined_offer_and_ack_it_can_read() {
    let mut h = Harness::new();
    let class = "PXEClient:Arch:00000:UNDI:002001";
    let discover = pxe_rom(ASROCK_MAC, MessageType::Discover, 0, class);
    let (offer, _, _) = super::tests::reply_of(h.run(&discover, 1));
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_rom_can_read(&offer, &encode(&offer, &discover), "undionly.kpxe");
    let request = super::tests::with_opts(
        pxe_rom(ASROCK_MAC, MessageType::Request, 0, class),
        [DhcpOption::RequestedIpAddress(offer.yiaddr()), DhcpOption::ServerIdentifier(super::tests::SERVER)],
    );
    let (ack, grant, _) = super::tests::reply_of(h.run(&request, 2));
    assert!(grant.is_some());
    assert_rom_can_read(&ack, &encode(&ack, &request), "undionly.kpxe");
    // The PXE spec has servers echo the client's UUID in proxy replies; a combined
    // offer needs no option 43 (the ROM boots the file it names).
    assert_eq!(vendor_options(&offer), None);
}

#[test]
fn intel_rom_relayed_request_is_acked_to_the_relay_in_a_readable_reply() {
    // google/netboot's capture also holds an Intel NIC's REQUEST through a relay
    // (giaddr set, hops 1).
    let mut h = Harness::new();
    let relay = Ipv4Addr::new(10, 9, 0, 1);
    h.peer = relay;
    let mut discover =
        pxe_rom([0x00, 0x1b, 0x21, 0x0a, 0x0b, 0x0c], MessageType::Discover, 0, "PXEClient:Arch:00000:UNDI:002001");
    discover.set_giaddr(relay).set_hops(1);
    let (offer, _, _) = super::tests::reply_of(h.run(&discover, 1));
    assert!(u32::from(offer.yiaddr()) >> 8 == u32::from(Ipv4Addr::new(10, 9, 0, 0)) >> 8, "{}", offer.yiaddr());
    let mut request = super::tests::with_opts(
        pxe_rom([0x00, 0x1b, 0x21, 0x0a, 0x0b, 0x0c], MessageType::Request, 0, "PXEClient:Arch:00000:UNDI:002001"),
        [DhcpOption::RequestedIpAddress(offer.yiaddr()), DhcpOption::ServerIdentifier(super::tests::SERVER)],
    );
    request.set_giaddr(relay).set_hops(1);
    let (ack, _, _) = super::tests::reply_of(h.run(&request, 2));
    assert_eq!(ack.giaddr(), relay);
    assert_rom_can_read(&ack, &encode(&ack, &request), "undionly.kpxe");
}

#[test]
fn uefi_proxy_offers_leave_option_43_to_the_boot_server_port() {
    // EDK2 (`PxeBcDhcp4.c`) takes a port-67 proxy offer with option 43 for a PXE
    // 1.0 offer it never caches (edk2 issue 6944 on Dell 13G; danderson/netboot
    // issue 43 on HP DL380 Gen9): none on 67, all of it on 4011.
    let mut policy = super::tests::policy();
    policy.mode = DhcpMode::Proxy;
    let mut h = Harness::with(policy);
    let class = "PXEClient:Arch:00007:UNDI:003016";
    let discover = pxe_rom(ASROCK_MAC, MessageType::Discover, 7, class);
    let (offer, _, _) = super::tests::reply_of(h.run(&discover, 1));
    assert_eq!(vendor_options(&offer), None, "no option 43 to UEFI on port 67");
    assert_rom_can_read(&offer, &encode(&offer, &discover), "snponly.efi");
    let mut request = pxe_rom(ASROCK_MAC, MessageType::Request, 7, class);
    request.set_ciaddr(Ipv4Addr::new(10, 213, 0, 140));
    let (ack, _, _) = super::tests::reply_of(h.run_on(&request, Port::Binl, 2));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_rom_can_read(&ack, &encode(&ack, &request), "snponly.efi");
    assert_eq!(vendor_options(&ack).as_deref(), Some(PXE_VENDOR_OPTIONS.as_slice()), "4011 carries option 43");
}

#[test]
fn uefi_pxe_offers_from_an_authoritative_server_are_plain_dhcp_with_the_boot_file() {
    // OVMF's PXE (EDK2 `PxeBcDhcp4.c`) takes an offer with `PXEClient` and no
    // option 43 for a BINL offer and asks the boot server on 4011, which only a
    // proxy answers (seen in the lab: "PXE-E16: No valid offer received"). A plain
    // offer with the boot file is one it loads as it is.
    let mut h = Harness::new();
    let class = "PXEClient:Arch:00007:UNDI:003000";
    let discover = pxe_rom(ASROCK_MAC, MessageType::Discover, 7, class);
    let (offer, _, boot) = super::tests::reply_of(h.run(&discover, 1));
    assert_eq!(boot, BootChoice::Tftp("snponly.efi".into()));
    assert_eq!(offer.opts().get(OptionCode::ClassIdentifier), None, "no PXEClient: not a BINL offer");
    assert_eq!(vendor_options(&offer), None);
    assert_eq!(offer.opts().get(OptionCode::BootfileName), Some(&DhcpOption::BootfileName(b"snponly.efi\0".to_vec())));
    assert_eq!(offer.siaddr(), super::tests::SERVER, "the TFTP server");
    // A BIOS ROM still gets its `PXEClient` (it waits for one).
    let bios = pxe_rom([0x52, 0x54, 0, 1, 2, 3], MessageType::Discover, 0, "PXEClient:Arch:00000:UNDI:002001");
    let (offer, _, _) = super::tests::reply_of(h.run(&bios, 2));
    assert_rom_can_read(&offer, &encode(&offer, &bios), "undionly.kpxe");
}

#[test]
fn bios_proxy_offers_carry_discovery_control_and_a_menu_prompt() {
    // dnsmasq always adds sub-option 10 (a prompt); edk2 issue 8149 was fixed by it.
    let mut policy = super::tests::policy();
    policy.mode = DhcpMode::Proxy;
    let mut h = Harness::with(policy);
    let discover = pxe_rom(ASROCK_MAC, MessageType::Discover, 0, "PXEClient:Arch:00000:UNDI:002001");
    let (offer, _, _) = super::tests::reply_of(h.run(&discover, 1));
    let options = vendor_options(&offer).expect("option 43 for a BIOS ROM");
    assert_eq!(&options[..3], &[6, 1, 8], "discovery control: boot the file named here");
    assert_eq!(&options[3..6], &[10, 4, 0], "a menu prompt, timeout 0");
    assert_eq!(options.last(), Some(&255));
    assert_rom_can_read(&offer, &encode(&offer, &discover), "undionly.kpxe");
}

#[test]
fn ipxe_behind_a_proxy_is_chained_once_then_gets_its_script_url_nul_terminated_in_300_bytes() {
    // ipxe/ipxe issue 954's capture: iPXE (user class `iPXE`, option 175) next to a
    // site DHCP server and a proxy. It is not ramboot's build, so it loads ramboot's
    // iPXE first; that one (a new DHCP session) gets the script.
    let mut policy = super::tests::policy();
    policy.mode = DhcpMode::Proxy;
    let mut h = Harness::with(policy);
    let mut discover = ipxe_bios(super::tests::MAC, MessageType::Discover);
    let (offer, _, boot) = super::tests::reply_of(h.run(&discover, 1));
    assert_eq!(boot, BootChoice::ChainIpxe("undionly.kpxe".into()));
    assert_eq!(user_class(&offer).as_deref(), Some(&b"ramboot"[..]), "the planted user class");
    let raw = encode(&offer, &discover);
    assert!(raw.len() >= MIN_BOOTP_LEN);
    assert_eq!(
        offer.opts().get(OptionCode::BootfileName),
        Some(&DhcpOption::BootfileName(b"undionly.kpxe\0".to_vec()))
    );

    discover.set_xid(0x0c4a_1bed);
    let (offer, _, boot) = super::tests::reply_of(h.run(&discover, 9));
    let url = boot.file().expect("a script URL").to_string();
    assert!(url.ends_with("/boot.ipxe?mac=52:54:00:12:34:56"), "{url}");
    let raw = encode(&offer, &discover);
    assert!(raw.len() >= MIN_BOOTP_LEN);
    let mut named = url.into_bytes();
    named.push(0);
    assert_eq!(offer.opts().get(OptionCode::BootfileName), Some(&DhcpOption::BootfileName(named)));
    assert_eq!(vendor_options(&offer), None, "option 43 is for PXE ROMs, not iPXE");
    assert_eq!(user_class(&offer), None, "nothing handed over, nothing planted");
}

fn user_class(reply: &Message) -> Option<Vec<u8>> {
    match reply.opts().get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(raw)) => Some(raw.clone()),
        _ => None,
    }
}

/// Option 175 as QEMU's UEFI iPXE ROM (`efi-e1000.rom`) and Debian's
/// `snponly.efi` send it (captured in the lab): bus id, version 1.0.0, then DNS,
/// EFI, HTTP, iSCSI, menu, NFS, TFTP, AoE (no bzImage, no PXE).
const IPXE_EFI_175: &[u8] = &[
    0xb1, 5, 1, 0x80, 0x86, 0x10, 0x0e, 0xeb, 3, 1, 0, 0, 0x17, 1, 1, 0x24, 1, 1, 0x13, 1, 1, 0x11, 1, 1, 0x27, 1, 1,
    0x29, 1, 1, 0x15, 1, 1, 0x12, 1, 1,
];

fn ipxe_efi(mac: [u8; 6], kind: MessageType, xid: u32) -> Message {
    let mut msg = pxe_rom(mac, kind, 7, "PXEClient:Arch:00007:UNDI:003010");
    msg.set_xid(xid);
    msg.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    msg.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(175.into(), IPXE_EFI_175.to_vec())));
    msg
}

#[test]
fn a_foreign_ipxe_loads_ramboots_ipxe_once_and_the_one_after_it_runs_the_script() {
    let mut h = Harness::new();
    let mac = [0x52, 0x54, 0x00, 0x0e, 0xf1, 0x01];
    // The NIC's iPXE: offer and ACK both hand over snponly.efi, with the user class
    // planted and iPXE's priority options.
    let discover = ipxe_efi(mac, MessageType::Discover, 0xa);
    let (offer, _, boot) = super::tests::reply_of(h.run(&discover, 10));
    assert_eq!(boot, BootChoice::ChainIpxe("snponly.efi".into()));
    assert_eq!(user_class(&offer).as_deref(), Some(&b"ramboot"[..]));
    assert!(offer.opts().get(OptionCode::Unknown(175)).is_some());
    let take = |msg: Message, offer: &Message| {
        super::tests::with_opts(
            msg,
            [DhcpOption::RequestedIpAddress(offer.yiaddr()), DhcpOption::ServerIdentifier(super::tests::SERVER)],
        )
    };
    let (_, grant, boot) = super::tests::reply_of(h.run(&take(ipxe_efi(mac, MessageType::Request, 0xa), &offer), 11));
    assert!(grant.is_some());
    assert_eq!(boot, BootChoice::ChainIpxe("snponly.efi".into()), "the same session, the same answer");
    // The UEFI snponly.efi of 2019 sends the same bytes as the NIC's iPXE, in a new
    // session: it is the one handed over, and gets the script, offer and ACK.
    let (offer, _, boot) = super::tests::reply_of(h.run(&ipxe_efi(mac, MessageType::Discover, 0xb), 30));
    assert!(matches!(boot, BootChoice::IpxeScript(_, ScriptFor::FollowsHandover)), "{boot:?}");
    let (_, _, boot) = super::tests::reply_of(h.run(&take(ipxe_efi(mac, MessageType::Request, 0xb), &offer), 31));
    assert!(matches!(boot, BootChoice::IpxeScript(_, ScriptFor::FollowsHandover)), "{boot:?}");
    // The next boot's NIC iPXE is handed over again.
    let (_, _, boot) = super::tests::reply_of(h.run(&ipxe_efi(mac, MessageType::Discover, 0xc), 400));
    assert_eq!(boot, BootChoice::ChainIpxe("snponly.efi".into()));
}

#[test]
fn a_pxe_rom_handover_plants_the_user_class_and_the_bios_ipxe_announces_it() {
    // BIOS iPXE (`undionly.kpxe`) takes the PXE stack's cached DHCPACK as settings,
    // so the user class ramboot planted there is what it sends (seen in the lab).
    let mut h = Harness::new();
    let class = "PXEClient:Arch:00000:UNDI:002001";
    let (offer, _, boot) = super::tests::reply_of(h.run(&pxe_rom(ASROCK_MAC, MessageType::Discover, 0, class), 1));
    assert_eq!(boot, BootChoice::Tftp("undionly.kpxe".into()));
    assert_eq!(user_class(&offer).as_deref(), Some(&b"ramboot"[..]));
    let ours = super::super::classify::tests::ipxe_bios_with_class(ASROCK_MAC, MessageType::Discover, b"ramboot");
    let (_, _, boot) = super::tests::reply_of(h.run(&ours, 5));
    assert!(matches!(boot, BootChoice::IpxeScript(_, ScriptFor::OwnUserClass)), "{boot:?}");
    // A stock iPXE that does not carry it over is recognised by sequence instead.
    let mut h = Harness::new();
    super::tests::reply_of(h.run(&pxe_rom(ASROCK_MAC, MessageType::Discover, 0, class), 1));
    let (_, _, boot) = super::tests::reply_of(h.run(&ipxe_bios(ASROCK_MAC, MessageType::Discover), 5));
    assert!(matches!(boot, BootChoice::IpxeScript(_, ScriptFor::FollowsHandover)), "{boot:?}");
}

#[test]
fn flexboot_without_the_ipxe_user_class_is_chained_and_operators_can_allow_foreign_builds() {
    // Mellanox FlexBoot is iPXE inside but sends option 175 and no `iPXE` user class.
    let mut flexboot =
        pxe_rom([0x24, 0x8a, 0x07, 1, 2, 3], MessageType::Discover, 0, "PXEClient:Arch:00000:UNDI:002001");
    flexboot.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(175.into(), IPXE_BIOS_175.to_vec())));
    let (_, _, boot) = super::tests::reply_of(Harness::new().run(&flexboot, 1));
    assert_eq!(boot, BootChoice::ChainIpxe("undionly.kpxe".into()));

    let mut policy = super::tests::policy();
    policy.ipxe.foreign = ForeignIpxe::Script;
    let (_, _, boot) = super::tests::reply_of(Harness::with(policy).run(&flexboot, 1));
    assert!(matches!(boot, BootChoice::IpxeScript(_, ScriptFor::AnyIpxe)), "{boot:?}");
    // With no binary of ramboot's for its arch (none configured, or not in the
    // TFTP root), any iPXE runs the script rather than fail.
    let mut policy = super::tests::policy();
    policy.boot_files.remove(&Arch::BIOS);
    let (_, _, boot) = super::tests::reply_of(Harness::with(policy).run(&flexboot, 1));
    assert!(matches!(boot, BootChoice::IpxeScript(_, ScriptFor::NoOwnBinary)), "{boot:?}");
    let mut policy = super::tests::policy();
    policy.ipxe.missing.insert("undionly.kpxe".into());
    let (_, _, boot) = super::tests::reply_of(Harness::with(policy).run(&flexboot, 1));
    assert!(matches!(boot, BootChoice::IpxeScript(_, ScriptFor::NoOwnBinary)), "{boot:?}");
}

#[test]
fn short_replies_are_padded_and_a_name_too_long_for_file_goes_only_in_67() {
    let mut h = Harness::new();
    // A NAK is the shortest reply (250 bytes unpadded).
    let wrong = super::tests::with_opts(
        super::super::classify::tests::request(super::tests::MAC, MessageType::Request),
        [
            DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 213, 0, 250)),
            DhcpOption::ServerIdentifier(super::tests::SERVER),
        ],
    );
    let (nak, _, _) = super::tests::reply_of(h.run(&wrong, 1));
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    let raw = encode(&nak, &wrong);
    assert_eq!(raw.len(), MIN_BOOTP_LEN);
    assert_eq!(Message::decode(&mut dhcproto::Decoder::new(&raw)).unwrap().opts().msg_type(), Some(MessageType::Nak));
    // A 128-byte name cannot be NUL-terminated in `file`: option 67 only.
    let mut policy = super::tests::policy();
    let long = "x".repeat(128);
    policy.boot_files.insert(Arch::BIOS, long.clone());
    let mut h = Harness::with(policy);
    let discover = pxe_rom(ASROCK_MAC, MessageType::Discover, 0, "PXEClient:Arch:00000:UNDI:002001");
    let (offer, _, _) = super::tests::reply_of(h.run(&discover, 1));
    let raw = encode(&offer, &discover);
    assert!(raw[108..236].iter().all(|b| *b == 0), "`file` left empty");
    let mut named = long.into_bytes();
    named.push(0);
    assert_eq!(offer.opts().get(OptionCode::BootfileName), Some(&DhcpOption::BootfileName(named)));
}

#[test]
fn authoritative_offers_to_ipxe_outrank_a_plain_server_and_skip_proxydhcp() {
    // iPXE keeps the last offer of the highest priority (175.1, 0 when absent), so
    // a plain DHCP server on the same segment wins half the races unless ours says
    // more; 175.176 tells it no proxy offer is coming.
    let mut h = Harness::new();
    let discover = ipxe_bios(super::tests::MAC, MessageType::Discover);
    let (offer, _, _) = super::tests::reply_of(h.run(&discover, 1));
    let raw = encode(&offer, &discover);
    let decoded = Message::decode(&mut dhcproto::Decoder::new(&raw)).unwrap();
    match decoded.opts().get(OptionCode::Unknown(175)) {
        Some(DhcpOption::Unknown(o)) => assert_eq!(o.data(), IPXE_OPTIONS.as_slice()),
        other => panic!("no option 175 in the offer: {other:?}"),
    }
    // Not to PXE ROMs (they get PXEClient), and not from a proxy (it offers no address).
    let rom = pxe_rom(ASROCK_MAC, MessageType::Discover, 0, "PXEClient:Arch:00000:UNDI:002001");
    let (offer, _, _) = super::tests::reply_of(h.run(&rom, 2));
    assert!(offer.opts().get(OptionCode::Unknown(175)).is_none());
    let mut policy = super::tests::policy();
    policy.mode = DhcpMode::Proxy;
    let (offer, _, _) = super::tests::reply_of(Harness::with(policy).run(&discover, 3));
    assert!(offer.opts().get(OptionCode::Unknown(175)).is_none());
}

#[test]
fn an_infiniband_flexboot_client_is_refused_as_not_ethernet() {
    // RFC 4390: IPoIB sets htype 32 and hlen 0, leaves chaddr zero and names itself
    // by option 61 (type 255, IAID, DUID); Mellanox FlexBoot in IB mode sends this.
    // ramboot knows nodes by their Ethernet MAC (store, script URL, agent), so it
    // declines them clearly (docs/firmware-quirks.md).
    let mut msg = pxe_rom([0; 6], MessageType::Discover, 0, "PXEClient:Arch:00000:UNDI:002001");
    msg.set_htype(dhcproto::v4::HType::from(32)).set_chaddr(&[]); // hlen follows chaddr: 0
    let mut client_id = vec![255, 0, 0, 0, 1, 0, 4];
    client_id.extend_from_slice(&[0xf4, 0x52, 0x14, 0x03, 0x00, 0x8a, 0xbc, 0x01]);
    msg.opts_mut().insert(DhcpOption::ClientIdentifier(client_id));
    let decision = Harness::new().run(&msg, 1);
    assert!(
        matches!(decision, Decision::Ignore(IgnoreReason::Unclassifiable(ClassifyError::NotEthernet { hlen: 0, .. }))),
        "{decision:?}"
    );
}

#[test]
fn the_signed_chain_is_chosen_by_node_then_profile_then_default_profile_then_policy() {
    use crate::profile::BootChain::{Ipxe, Signed};
    let policy = super::tests::policy();
    let host =
        |profile: Option<&str>, own| Host { profile: profile.map(str::to_string), boot_chain: own, ..Host::default() };
    let mut hosts = Hosts::default();
    hosts.set_profile_chains([("secure".to_string(), Signed), ("plain".to_string(), Ipxe)], Some("secure"));
    // The node's own chain wins over its profile's.
    assert_eq!(hosts.chain_of(Some(&host(Some("secure"), Some(Ipxe))), &policy), Ipxe);
    assert_eq!(hosts.chain_of(Some(&host(Some("plain"), Some(Signed))), &policy), Signed);
    // Else its assigned profile's; a profile naming none follows the policy.
    assert_eq!(hosts.chain_of(Some(&host(Some("plain"), None)), &policy), Ipxe);
    assert_eq!(hosts.chain_of(Some(&host(Some("other"), None)), &policy), policy.boot_chain);
    // No assignment (and unknown clients): the default profile's.
    assert_eq!(hosts.chain_of(Some(&host(None, None)), &policy), Signed);
    assert_eq!(hosts.chain_of(None, &policy), Signed);
    hosts.set_profile_chains([], None);
    assert_eq!(hosts.chain_of(None, &policy), Ipxe, "the policy's default");
}

#[test]
fn signed_chain_nodes_get_shim_from_their_firmware_and_the_script_from_ipxe() {
    let mut policy = super::tests::policy();
    policy.boot_chain = crate::profile::BootChain::Signed;
    let mut h = Harness::with(policy);
    // UEFI x64 PXE: shim over TFTP, a plain offer (no PXEClient), no iPXE user class.
    let discover = pxe_rom(ASROCK_MAC, MessageType::Discover, 7, "PXEClient:Arch:00007:UNDI:003000");
    let (offer, _, boot) = super::tests::reply_of(h.run(&discover, 1));
    assert_eq!(boot, BootChoice::Signed("shimx64.efi".into()));
    assert_eq!(boot.label(), "signed_chain");
    assert_eq!(offer.opts().get(OptionCode::BootfileName), Some(&DhcpOption::BootfileName(b"shimx64.efi\0".to_vec())));
    assert_eq!(offer.opts().get(OptionCode::UserClass), None, "shim is not ramboot's iPXE");
    // arm64 PXE: shimaa64.
    let arm = pxe_rom([0x52, 0x54, 0, 0xaa, 0, 1], MessageType::Discover, 11, "PXEClient:Arch:00011:UNDI:003000");
    assert_eq!(super::tests::reply_of(h.run(&arm, 2)).2, BootChoice::Signed("shimaa64.efi".into()));
    // BIOS has no signed chain: iPXE as ever.
    let bios = pxe_rom([0x52, 0x54, 0, 0xb1, 0, 1], MessageType::Discover, 0, "PXEClient:Arch:00000:UNDI:002001");
    assert_eq!(super::tests::reply_of(h.run(&bios, 3)).2, BootChoice::Tftp("undionly.kpxe".into()));
    // An iPXE that runs anyway (the chain changed mid-boot) gets the script.
    let ipxe = ipxe_efi([0x52, 0x54, 0, 0xb1, 0, 2], MessageType::Discover, 4);
    assert!(matches!(super::tests::reply_of(h.run(&ipxe, 4)).2, BootChoice::ChainIpxe(_) | BootChoice::IpxeScript(..)));
}
