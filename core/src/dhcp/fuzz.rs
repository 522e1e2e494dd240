//! The fuzz fixture: raw bytes through the whole pure pipeline. Compiled only with
//! the `fuzzing` feature (the cargo-fuzz target and the corpus-replay test), never
//! into the server.

/// Raw bytes through the whole pure pipeline (decode, classify, decide, encode the
/// reply) as the socket layer would run them: authoritative on port 67 (twice, so
/// the second pass sees the state the first left), then proxy on 67 and 4011.
/// The fuzz target and the corpus-replay test call this; it must never panic.
pub fn decide_bytes(bytes: &[u8]) {
    use super::decide::{decide, encode_reply, Arrival, Decision, Hosts, Inbound, Leases, Port};
    use super::policy::{default_boot_files, DhcpMode, DhcpPolicy, SubnetConfig, UnknownClients};
    use dhcproto::{Decodable, Decoder};
    use std::net::Ipv4Addr;

    let Ok(msg) = dhcproto::v4::Message::decode(&mut Decoder::new(bytes)) else { return };
    let subnet = |a: u8, unknown_clients| SubnetConfig {
        net: ipnet::Ipv4Net::new(Ipv4Addr::new(10, a, 0, 0), 24).unwrap_or_default(),
        ranges: vec![(Ipv4Addr::new(10, a, 0, 100), Ipv4Addr::new(10, a, 0, 109))],
        router: Some(Ipv4Addr::new(10, a, 0, 1)),
        dns: vec![Ipv4Addr::new(10, a, 0, 1)],
        domain: Some("lab.example".into()),
        lease_time: std::time::Duration::from_secs(3600),
        unknown_clients,
    };
    let mut policy = DhcpPolicy {
        mode: DhcpMode::Authoritative,
        tftp_server: Ipv4Addr::new(10, 213, 0, 1),
        boot_url: "http://10.213.0.1:8080".into(),
        boot_files: default_boot_files(),
        signed_boot_files: crate::dhcp::policy::default_signed_boot_files(),
        boot_chain: Default::default(),
        subnets: vec![subnet(213, UnknownClients::Discovery), subnet(9, UnknownClients::AddressOnly)],
        // 10.9.0.0/24 is a trusted relay network; other relays are not.
        trusted_relays: vec![ipnet::Ipv4Net::new(Ipv4Addr::new(10, 9, 0, 0), 24).unwrap_or_default()],
        offer_hold_secs: 60,
        quarantine_secs: 600,
        ipxe: Default::default(),
        share: Default::default(),
    };
    let mut leases = Leases::new(&policy);
    let hosts = Hosts::default();
    let mut run = |policy: &DhcpPolicy, port, now| {
        // The source is the packet's giaddr, as when a relay sends it: trusted if listed.
        let arrival = Arrival { local_addr: Ipv4Addr::new(10, 213, 0, 1), peer: msg.giaddr(), port };
        let inbound = Inbound { msg: &msg, raw: bytes, arrival };
        if let Decision::Reply { reply, .. } = decide(&inbound, policy, &mut leases, &hosts, now) {
            let _ = encode_reply(&reply, bytes);
        }
    };
    run(&policy, Port::Dhcp, 1_000);
    run(&policy, Port::Dhcp, 1_001);
    run(&policy, Port::Binl, 1_002);
    policy.mode = DhcpMode::Proxy;
    run(&policy, Port::Dhcp, 1_003);
    run(&policy, Port::Binl, 1_004);
}
