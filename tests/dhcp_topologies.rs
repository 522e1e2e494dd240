//! The real `ramboot serve` binary in two network topologies other than "one flat
//! segment":
//!
//! - **Through a relay**: ISC `dhcrelay -a` between the server's network (10.70.0.0/24)
//!   and the client's (10.71.0.0/24), ISC `dhclient` as the client. The subnet must be
//!   chosen by giaddr, replies must go back to the relay, and option 82 must come back
//!   exactly as the relay sent it (dhcrelay drops replies whose circuit id matches no
//!   interface). A RELEASE from the relayed client must free the stored lease.
//! - **proxyDHCP beside dnsmasq**: ramboot in `mode: proxy` and dnsmasq (the "site"
//!   DHCP server, no boot options) on the same bridge; a QEMU VM with the e1000 iPXE
//!   ROM must take dnsmasq's address and ramboot's boot file, i.e. fetch
//!   `/boot.ipxe?mac=<its mac>` from the address dnsmasq leased it.
//!
//! Evidence comes from the daemons' logs and from a `tcpdump` capture on the server
//! side, parsed here (a tiny pcap/IPv4/UDP/TCP/DHCP reader), so the wire bytes are
//! checked, not only what the client accepted.
//!
//! Each test makes its own namespaces (named after the test process's PID) and a guard
//! that, also when an assertion fails, stops every process it started (by PID) and
//! deletes the namespaces. Needs root and the tools (CI installs them); elsewhere a
//! missing tool or a non-root user skips with a message, CI fails instead.

mod common;

use common::netns::{assert_no_errors_or_naks, leases_of, Dhclient, ServeInLab, DHCLIENT};
use ramboot_lab::harness::{
    ip_in, lab_with_bridge, log_text, logs_context, ns_sh, read_lossy, spawn_pxe_vm, start_site_dnsmasq, tail, tool,
    veth, wait_event, wait_for, Lab,
};
use ramboot_lab::pcap::{capture, read_pcap, wait_capture, Packet, TCPDUMP};
use ramboot_lab::wire::{describe, describe_all, dhcp_of, http_requests, Dhcp};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const DHCRELAY: &[&str] = &["/usr/sbin/dhcrelay", "/sbin/dhcrelay"];

// Address plans. 1. Through a relay: the server's network 10.70.0.0/24 (the relay's
// upstream side .2), the client's 10.71.0.0/24 (the relay's downstream side .1).
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 70, 0, 1);
const RELAY_UP_IP: Ipv4Addr = Ipv4Addr::new(10, 70, 0, 2);
const RELAY_DOWN_IP: Ipv4Addr = Ipv4Addr::new(10, 71, 0, 1);
const RELAYED_CLIENT_MAC: &str = "02:70:00:00:00:01";
// 2. proxyDHCP beside dnsmasq: one bridge, both daemons' addresses on it.
const PROXY_IP: Ipv4Addr = Ipv4Addr::new(10, 72, 0, 1);
const SITE_DHCP_IP: Ipv4Addr = Ipv4Addr::new(10, 72, 0, 2);
const VM_MAC: &str = "52:54:00:72:72:01";

// ---------------------------------------------------------------------------------
// Small helpers

/// Option 82's sub-options (RFC 3046): (code, value) in order.
fn suboptions(raw: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = vec![];
    let mut rest = raw;
    while let [code, len, tail @ ..] = rest {
        let Some(value) = tail.get(..usize::from(*len)) else { break };
        out.push((*code, value.to_vec()));
        rest = &tail[usize::from(*len)..];
    }
    out
}

// ---------------------------------------------------------------------------------
// 1. Through a relay

#[test]
fn dhcp_through_a_relay() {
    const TEST: &str = "dhcp_through_a_relay";
    let tools =
        [("dhclient (isc-dhcp-client)", DHCLIENT), ("dhcrelay (isc-dhcp-relay)", DHCRELAY), ("tcpdump", TCPDUMP)];
    let Some(mut topo) = Lab::for_test(TEST, &tools) else { return };
    let started = Instant::now();
    let pid = std::process::id();
    // server [s] --- [u] relay [d] --- [c] client
    let (server_ns, relay_ns, client_ns) =
        (topo.netns(&format!("rbr{pid}s")), topo.netns(&format!("rbr{pid}r")), topo.netns(&format!("rbr{pid}c")));
    let (server_if, up_if, down_if, client_if) =
        (format!("r{pid}s"), format!("r{pid}u"), format!("r{pid}d"), format!("r{pid}c"));
    veth((&server_ns, &server_if), (&relay_ns, &up_if));
    veth((&relay_ns, &down_if), (&client_ns, &client_if));
    ip_in(&client_ns, &["link", "set", &client_if, "address", RELAYED_CLIENT_MAC]);
    ip_in(&server_ns, &["addr", "add", &format!("{SERVER_IP}/24"), "dev", &server_if]);
    ip_in(&relay_ns, &["addr", "add", &format!("{RELAY_UP_IP}/24"), "dev", &up_if]);
    ip_in(&relay_ns, &["addr", "add", &format!("{RELAY_DOWN_IP}/24"), "dev", &down_if]);
    for (ns, ifname) in [(&server_ns, &server_if), (&relay_ns, &up_if), (&relay_ns, &down_if), (&client_ns, &client_if)]
    {
        ip_in(ns, &["link", "set", ifname, "up"]);
    }
    // The relay routes (the client's unicast RELEASE goes through it as plain IP);
    // the server reaches the relayed subnet, and the relay's giaddr, through it.
    ns_sh(&relay_ns, "echo 1 > /proc/sys/net/ipv4/ip_forward");
    ip_in(&server_ns, &["route", "add", "10.71.0.0/24", "via", &RELAY_UP_IP.to_string()]);

    // Everything DHCP on the server's link, as the server sees it.
    let (tcpdump, pcap) = capture(&mut topo, &server_ns, &server_if, "udp port 67 or udp port 68");

    let config = format!(
        "interface: {server_if}\nserver_address: {SERVER_IP}\nhttp: {{listen: \"{SERVER_IP}:8080\"}}\n\
         tftp: {{listen: \"{SERVER_IP}:69\"}}\ndhcp:\n  subnet: 10.70.0.0/24\n  range: [10.70.0.100, 10.70.0.199]\n  \
         router: {SERVER_IP}\n  lease_time_secs: 600\n  subnets:\n    - subnet: 10.71.0.0/24\n      \
         range: [10.71.0.100, 10.71.0.199]\n      router: {RELAY_DOWN_IP}\n"
    );
    let ramboot = topo.start_ramboot(&server_ns, &config, "info");
    let ramboot_log = ramboot.log.clone();

    // ISC dhcrelay: foreground, add option 82 (circuit id = downstream interface name),
    // upstream/downstream interfaces, the server.
    let relay_log = topo.path("dhcrelay.log");
    let relay_cmd: Vec<String> =
        [tool(DHCRELAY).as_str(), "-d", "-4", "-a", "--no-pid", "-iu", &up_if, "-id", &down_if, &SERVER_IP.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let listening = [format!("Listening on LPF/{up_if}/"), format!("Listening on LPF/{down_if}/")];
    let relay_ready = [listening[0].as_str(), listening[1].as_str()];
    let relay = topo.start_until("dhcrelay", &relay_ns, &relay_cmd, &relay_log, &relay_ready, Duration::from_secs(15));

    // dhclient (a private copy; see `Dhclient`): private config, lease, pid file and script.
    let events_path = topo.path("dhclient.events");
    let script = format!(
        "#!/bin/sh\n\
         # Configure first, then record: an event in the file means it is done.\n\
         case \"$reason\" in\n\
         BOUND|RENEW|REBIND|REBOOT)\n  ip addr replace \"$new_ip_address/$new_subnet_mask\" dev \"$interface\"\n  \
         [ -z \"$new_routers\" ] || ip route replace default via \"${{new_routers%% *}}\" dev \"$interface\" ;;\n\
         RELEASE|EXPIRE|STOP|FAIL) [ -z \"$old_ip_address\" ] || ip addr del \"$old_ip_address/$old_subnet_mask\" dev \"$interface\" ;;\n\
         esac\n\
         echo \"reason=$reason ip=$new_ip_address mask=$new_subnet_mask routers=$new_routers \
         lease=$new_dhcp_lease_time sid=$new_dhcp_server_identifier old=$old_ip_address\" >> {events}\n\
         exit 0\n",
        events = events_path.display()
    );
    let conf = "timeout 30;\nrequest subnet-mask, broadcast-address, routers, domain-name-servers,\n  \
                dhcp-lease-time, dhcp-renewal-time, dhcp-rebinding-time;\n";
    let dhclient = Dhclient::new(&topo, conf, &script);
    let dh_log = topo.path("dhclient.log");
    // Foreground, one try (exits if no lease within `timeout`).
    let dh = topo.spawn("dhclient", &client_ns, &dhclient.args(&["-d", "-1", "-v"], &client_if), &dh_log, &[]);
    let logs =
        [("dhclient", &dh_log), ("script events", &events_path), ("dhcrelay", &relay_log), ("ramboot", &ramboot_log)];
    let context = || logs_context(20, &logs);

    // 1. A lease on the relayed subnet, chosen by giaddr.
    let what = "dhclient BOUND through the relay";
    let bound = wait_event(&events_path, ("reason", "BOUND"), Duration::from_secs(40), what, context);
    let leased: Ipv4Addr = bound["ip"].parse().unwrap_or_else(|_| panic!("BOUND without an address: {bound:?}"));
    let pool = u32::from(Ipv4Addr::new(10, 71, 0, 100))..=u32::from(Ipv4Addr::new(10, 71, 0, 199));
    assert!(pool.contains(&u32::from(leased)), "{leased} is not from the relayed subnet's range\n{}", context());
    for (key, value) in [("mask", "255.255.255.0"), ("routers", "10.71.0.1"), ("sid", "10.70.0.1"), ("lease", "600")] {
        assert_eq!(bound[key], value, "{key} in the ACK dhclient bound with: {bound:?}\n{}", context());
    }
    let dh_out = read_lossy(&dh_log);
    // dhclient names the sender of what it received: the relay, not the server.
    for line in
        [format!("DHCPOFFER of {leased} from {RELAY_DOWN_IP}"), format!("DHCPACK of {leased} from {RELAY_DOWN_IP}")]
    {
        assert!(dh_out.contains(&line), "dhclient did not log {line:?}:\n{dh_out}");
    }
    let relay_out = read_lossy(&relay_log);
    assert!(relay_out.contains(&format!("Forwarded BOOTREPLY for {RELAYED_CLIENT_MAC}")), "{relay_out}");
    let url = topo.database_url();
    let stored = leases_of(&url, RELAYED_CLIENT_MAC);
    assert_eq!(stored.len(), 1, "one lease row for the client: {stored:?}");
    assert_eq!((stored[0].ip, stored[0].state.as_str()), (leased, "active"), "{stored:?}");
    let log = log_text(&ramboot_log);
    assert!(
        log.lines()
            .any(|l| l.contains("reply=Ack") && l.contains(&format!("ip={leased}")) && l.contains("relay=10.71.0.1")),
        "no relayed ACK decision in ramboot's log:\n{}",
        tail(&log, 20)
    );

    // 2. RELEASE: `dhclient -r` stops the running dhclient (pid file) and unicasts a
    // RELEASE to the server identifier; it crosses the relay namespace as routed IP.
    dhclient.release(&mut topo, (&client_ns, &client_if), leased, dh, &events_path, context);
    let released = format!("DHCP release mac={RELAYED_CLIENT_MAC} ip={leased}");
    let logged = || log_text(&ramboot_log).contains(&released).then_some(());
    wait_for(Duration::from_secs(10), "ramboot to log the release", logged, context);

    topo.stop(relay, Duration::from_secs(5));
    let log = topo.stop_ramboot(&ramboot);
    // The capture has seen the RELEASE (or the checks below say what it did see).
    wait_capture(&pcap, Duration::from_secs(5), |packets| {
        dhcp_of(packets).iter().any(|(_, d)| d.kind() == "RELEASE" && d.ciaddr == leased)
    });
    topo.stop(tcpdump, Duration::from_secs(5));
    let stored = leases_of(&url, RELAYED_CLIENT_MAC);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!((stored[0].ip, stored[0].state.as_str()), (leased, "released"), "after RELEASE: {stored:?}");
    assert_no_errors_or_naks(&log);

    // 3. The wire, on the server's link.
    let msgs = dhcp_of(&read_pcap(&pcap));
    let wire = describe_all(&msgs);
    let from_relay: Vec<&(Packet, Dhcp)> =
        msgs.iter().filter(|(p, d)| p.src == RELAY_UP_IP && d.op == 1 && d.chaddr == RELAYED_CLIENT_MAC).collect();
    let to_relay: Vec<&(Packet, Dhcp)> =
        msgs.iter().filter(|(p, d)| p.dst == RELAY_DOWN_IP && d.op == 2 && d.chaddr == RELAYED_CLIENT_MAC).collect();
    for kind in ["DISCOVER", "REQUEST"] {
        assert!(from_relay.iter().any(|(_, d)| d.kind() == kind), "no relayed {kind} on the server's link:\n{wire}");
    }
    for kind in ["OFFER", "ACK"] {
        assert!(to_relay.iter().any(|(_, d)| d.kind() == kind), "no {kind} to the relay on the server's link:\n{wire}");
    }
    // Requests as dhcrelay sent them: giaddr = its downstream address, one option 82
    // whose circuit id is the downstream interface's name.
    for (p, d) in &from_relay {
        let line = describe(p, d);
        assert_eq!((p.sport, p.dport), (67, 67), "{line}");
        assert_eq!(d.giaddr, RELAY_DOWN_IP, "{line}");
        assert!(d.hops >= 1, "{line}");
        let agent = d.all(82);
        assert_eq!(agent.len(), 1, "relayed request without exactly one option 82: {line}");
        let circuit = suboptions(agent[0]).into_iter().find(|(c, _)| *c == 1).map(|(_, v)| v);
        assert_eq!(circuit.as_deref(), Some(down_if.as_bytes()), "circuit id: {line}");
    }
    // Replies: from the address the relay spoke to, to giaddr:67, the relayed subnet's
    // options, and option 82 exactly once and byte for byte as in the request
    // (RFC 3046 §2.2). The relay strips it; a doubled option is visible only here.
    for (p, d) in &to_relay {
        let line = describe(p, d);
        assert_eq!((p.src, p.sport, p.dport), (SERVER_IP, 67, 67), "reply source/port: {line}");
        assert_eq!(d.giaddr, RELAY_DOWN_IP, "{line}");
        assert_eq!(d.yiaddr, leased, "{line}");
        assert_eq!(d.opt_addr(54), Some(SERVER_IP), "server identifier: {line}");
        assert_eq!(d.opt_addr(3), Some(RELAY_DOWN_IP), "router: {line}");
        assert_eq!(d.opt_addr(1), Some(Ipv4Addr::new(255, 255, 255, 0)), "mask: {line}");
        let request = from_relay
            .iter()
            .rev()
            .find(|(_, r)| r.xid == d.xid && r.kind() == if d.kind() == "OFFER" { "DISCOVER" } else { "REQUEST" })
            .unwrap_or_else(|| panic!("no relayed request for reply {line}\n{wire}"));
        let sent = request.1.all(82);
        let echoed = d.all(82);
        assert!(
            echoed.len() == 1 && echoed[0] == sent[0],
            "option 82 not echoed exactly once, byte for byte (RFC 3046 §2.2): the relay sent {} and the {} \
             carries {} cop{}: {:?}\nreply: {line}\nrequest: {}",
            hex::encode(sent[0]),
            d.kind(),
            echoed.len(),
            if echoed.len() == 1 { "y" } else { "ies" },
            echoed.iter().map(hex::encode).collect::<Vec<_>>(),
            describe(&request.0, &request.1)
        );
    }
    // The RELEASE reached the server (routed from the client; dhcrelay, which sees
    // it pass on its downstream interface, may relay a second copy).
    let releases: Vec<&(Packet, Dhcp)> = msgs.iter().filter(|(_, d)| d.kind() == "RELEASE").collect();
    assert!(
        releases.iter().any(|(p, d)| p.dst == SERVER_IP && d.ciaddr == leased && d.opt_addr(54) == Some(SERVER_IP)),
        "no RELEASE of {leased} to {SERVER_IP} on the server's link:\n{wire}"
    );
    eprintln!(
        "{TEST}: {leased} via relay {RELAY_DOWN_IP} (circuit id {down_if}), released; {} RELEASE cop{} on the wire \
         ({}); {:.1?}",
        releases.len(),
        if releases.len() == 1 { "y" } else { "ies" },
        releases.iter().map(|(p, d)| format!("from {} giaddr {}", p.src, d.giaddr)).collect::<Vec<_>>().join(", "),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------
// 2. proxyDHCP beside dnsmasq

#[test]
fn proxy_dhcp_beside_dnsmasq_boots_ipxe() {
    const TEST: &str = "proxy_dhcp_beside_dnsmasq_boots_ipxe";
    // ramboot's address first (the primary one), then the site DHCP server's.
    let addresses = [format!("{PROXY_IP}/24"), format!("{SITE_DHCP_IP}/24")];
    let Some((mut topo, ns, bridge, tap)) = lab_with_bridge(TEST, &[], 'p', &addresses) else { return };
    let started = Instant::now();

    let filter = "udp port 67 or udp port 68 or udp port 4011 or tcp port 8080";
    let (tcpdump, pcap) = capture(&mut topo, &ns, &bridge, filter);

    // ramboot: proxy mode, and router advertisements so iPXE does not wait for IPv6.
    // Its TFTP root holds Debian's undionly.kpxe: the VM's ROM iPXE is not ramboot's
    // build, so it loads that first.
    std::fs::create_dir_all(topo.path("ipxe")).unwrap();
    std::fs::copy("/usr/lib/ipxe/undionly.kpxe", topo.path("ipxe/undionly.kpxe")).unwrap();
    let config = format!(
        "interface: {bridge}\nserver_address: {PROXY_IP}\nipv6_ra: true\nhttp: {{listen: \"{PROXY_IP}:8080\"}}\n\
         tftp: {{listen: \"{PROXY_IP}:69\"}}\ndhcp:\n  mode: proxy\n"
    );
    // tower_http at debug logs each request's URI.
    let ramboot = topo.start_ramboot(&ns, &config, "info,tower_http=debug");
    let ramboot_log = ramboot.log.clone();

    // dnsmasq: DHCP only (no DNS), addresses only (no boot options), on the same
    // bridge. Both daemons bind 0.0.0.0:67 on the bridge (SO_BINDTODEVICE +
    // SO_REUSEADDR, dnsmasq also SO_REUSEPORT), so both get every broadcast.
    let range = (Ipv4Addr::new(10, 72, 0, 50), Ipv4Addr::new(10, 72, 0, 90));
    let dnsmasq = start_site_dnsmasq(&mut topo, &ns, &bridge, SITE_DHCP_IP, range, &[]);
    let (dnsmasq_log, leasefile) = (topo.path("dnsmasq.log"), topo.path("dnsmasq.leases"));

    // QEMU: SeaBIOS + the e1000 iPXE ROM, booting from the network.
    let console = topo.path("console.log");
    let vm_started = Instant::now();
    let qemu_log = topo.path("qemu.log");
    let qemu = spawn_pxe_vm(&mut topo, &ns, &tap, VM_MAC, &console, &qemu_log);
    let logs = [("console", &console), ("dnsmasq", &dnsmasq_log), ("ramboot", &ramboot_log)];
    let context = || logs_context(25, &logs);
    ramboot.wait_script_served(&mut topo, qemu, VM_MAC, Duration::from_secs(75), context);
    let boot_time = vm_started.elapsed();
    topo.stop(qemu, Duration::from_secs(3));
    // The handover and the script are counted by how the iPXE was recognised.
    let metrics = ramboot_lab::net::in_ns(&ns, &["curl", "-sS", "--max-time", "10"])
        .arg(format!("http://{PROXY_IP}:8080/metrics"))
        .output()
        .expect("curl");
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    let choices: Vec<&str> = metrics.lines().filter(|l| l.starts_with("ramboot_dhcp_boot_choices_total")).collect();
    assert!(choices.iter().any(|l| l.contains("choice=\"chain_ipxe\"")), "{choices:#?}");
    assert!(choices.iter().any(|l| l.contains("choice=\"script_")), "{choices:#?}");
    topo.stop(dnsmasq, Duration::from_secs(5));
    let log = topo.stop_ramboot(&ramboot);
    wait_capture(&pcap, Duration::from_secs(5), |packets| {
        packets.iter().any(|p| p.proto == 6 && p.dport == 8080 && p.payload.starts_with(b"GET /boot.ipxe"))
    });
    topo.stop(tcpdump, Duration::from_secs(5));

    let packets = read_pcap(&pcap);
    let msgs = dhcp_of(&packets);
    let wire = describe_all(&msgs);
    let vm_msgs: Vec<&(Packet, Dhcp)> = msgs.iter().filter(|(_, d)| d.chaddr == VM_MAC).collect();

    // (a) dnsmasq leased the VM an address from its range, with no boot options.
    let dnsmasq_out = read_lossy(&dnsmasq_log);
    let acks: Vec<&(Packet, Dhcp)> = vm_msgs.iter().copied().filter(|(_, d)| d.op == 2 && d.kind() == "ACK").collect();
    // (iPXE may repeat a REQUEST whose ACK is slow; every ACK names the same address.)
    assert!(!acks.is_empty(), "no DHCPACK for the VM (dnsmasq's; ramboot ACKs only on 4011):\n{wire}");
    let vm_ip = acks[0].1.yiaddr;
    assert!(acks.iter().all(|(_, d)| d.yiaddr == vm_ip), "ACKs for different addresses:\n{wire}");
    let range = u32::from(Ipv4Addr::new(10, 72, 0, 50))..=u32::from(Ipv4Addr::new(10, 72, 0, 90));
    assert!(range.contains(&u32::from(vm_ip)), "the VM's address {vm_ip} is not from dnsmasq's range\n{wire}");
    assert!(
        dnsmasq_out.contains(&format!("DHCPACK({bridge}) {vm_ip} {VM_MAC}")),
        "dnsmasq did not log the lease of {vm_ip} to {VM_MAC}:\n{dnsmasq_out}"
    );
    assert!(read_lossy(&leasefile).contains(&format!("{VM_MAC} {vm_ip}")), "{}", read_lossy(&leasefile));
    let site: Vec<&(Packet, Dhcp)> =
        vm_msgs.iter().copied().filter(|(_, d)| d.op == 2 && !d.yiaddr.is_unspecified()).collect();
    for (p, d) in &site {
        let line = describe(p, d);
        assert!(d.opt(67).is_none() && d.opt(66).is_none() && d.file.is_empty(), "dnsmasq sent boot options: {line}");
        assert_eq!(d.opt(60), None, "dnsmasq's reply is not a PXE one: {line}");
    }

    // ramboot's proxy offers: no address, PXEClient, its own address as server
    // identifier and source. The ROM iPXE's session is handed undionly.kpxe (with
    // ramboot's user class planted); the session of the iPXE that follows gets the
    // script URL for this MAC.
    let url = format!("http://{PROXY_IP}:8080/boot.ipxe?mac={VM_MAC}");
    let proxy: Vec<&(Packet, Dhcp)> =
        vm_msgs.iter().copied().filter(|(_, d)| d.op == 2 && d.opt(60) == Some(b"PXEClient".as_slice())).collect();
    assert!(!proxy.is_empty(), "no proxyDHCP offer from ramboot on the wire:\n{wire}");
    let handovers = proxy.iter().take_while(|(_, d)| d.file == "undionly.kpxe").count();
    assert!(handovers > 0, "the ROM iPXE was not handed ramboot's iPXE first:\n{wire}");
    assert!(proxy.len() > handovers, "no script offer after the handover:\n{wire}");
    let handover_xid = proxy[0].1.xid;
    for (i, (p, d)) in proxy.iter().enumerate() {
        let line = describe(p, d);
        assert!(d.yiaddr.is_unspecified(), "a proxy offer carries no address: {line}");
        // NUL-terminated in option 67 and `file`, and at least BOOTP's 300 bytes:
        // what real PXE ROMs need (docs/firmware-quirks.md).
        let file = if i < handovers {
            assert_eq!(d.xid, handover_xid, "one session is handed over: {line}");
            assert_eq!(d.opt(77), Some(b"ramboot".as_slice()), "the planted user class: {line}");
            "undionly.kpxe".to_string()
        } else {
            assert_ne!(d.xid, handover_xid, "the handed-over session got the script: {line}");
            assert_eq!(d.opt(77), None, "{line}");
            url.clone()
        };
        assert_eq!(d.opt_str(67), Some(format!("{file}\0")), "boot file: {line}");
        assert_eq!(d.file, file, "file field: {line}");
        assert!(p.payload.len() >= 300, "{} bytes: {line}", p.payload.len());
        assert_eq!(d.siaddr, PROXY_IP, "{line}");
        assert_eq!(d.opt_addr(54), Some(PROXY_IP), "server identifier: {line}");
        assert_eq!((p.src, p.sport), (PROXY_IP, 67), "{line}");
        assert!(d.kind() == "OFFER" && p.dport == 68, "proxy answers on 67 are OFFERs to the client port: {line}");
    }

    // (b) the GET for the script came from the address dnsmasq gave the VM.
    let gets = http_requests(&packets, 8080);
    let script_get = gets
        .iter()
        .find(|(_, request)| request.starts_with("GET /boot.ipxe?"))
        .unwrap_or_else(|| panic!("no GET /boot.ipxe on the wire: {gets:?}"));
    assert_eq!(script_get.1, format!("GET /boot.ipxe?mac={VM_MAC}"), "{gets:?}");
    assert_eq!(script_get.0, vm_ip, "the script was fetched from {} instead of dnsmasq's {vm_ip}", script_get.0);
    let console_text = log_text(&console);
    assert!(console_text.contains("undionly.kpxe : "), "ramboot's iPXE was not loaded:\n{console_text}");
    // How the chained iPXE was recognised: by the user class it carried over from the
    // cached DHCP packets, or as the session that followed the handover.
    let recognised_by = vm_msgs
        .iter()
        .filter(|(_, d)| d.op == 1 && d.xid != handover_xid)
        .find_map(|(_, d)| d.opt_str(77))
        .unwrap_or_default();
    assert!(console_text.contains(&format!("net0: {vm_ip}/255.255.255.0")), "iPXE's address:\n{console_text}");
    assert!(console_text.contains(&url), "iPXE did not show the script URL:\n{console_text}");

    // Did iPXE follow up with a ProxyDHCP REQUEST to port 4011? (iPXE skips it when the
    // proxy offer already has next-server + boot file, as ramboot's does.)
    let binl: Vec<&(Packet, Dhcp)> =
        vm_msgs.iter().copied().filter(|(p, _)| p.dport == 4011 || p.sport == 4011).collect();
    let binl_decisions =
        log.lines().filter(|l| l.contains("DHCP decision") && l.contains("request=Some(Request)")).count();
    assert!(!log.contains(" ERROR "), "ramboot logged errors:\n{log}");
    eprintln!(
        "{TEST}: VM {VM_MAC} got {vm_ip} from dnsmasq and fetched {url} from it, {boot_time:.1?} after QEMU started; \
         {} proxy offer(s), {handovers} handing over undionly.kpxe, the chained iPXE's user class {recognised_by:?}; \
         port 4011: {} packet(s), {} REQUEST decision(s); test took {:.1?}",
        proxy.len(),
        binl.len(),
        binl_decisions,
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------
// 3. a second DHCP server on the boot network, offering no boot file

const RACE_IP: Ipv4Addr = Ipv4Addr::new(10, 73, 0, 1);
const ROGUE_IP: Ipv4Addr = Ipv4Addr::new(10, 73, 0, 2);
const RACE_MAC: &str = "52:54:00:73:73:01";

/// dnsmasq answers on the same bridge as authoritative ramboot with plain address
/// offers (no boot file). Whichever offer arrives first, iPXE must take ramboot's:
/// its offers carry iPXE's priority (175.1), so the VM gets ramboot's address and
/// script. Without it iPXE takes the last offer of equal priority: a coin toss.
#[test]
fn a_second_dhcp_server_without_a_boot_file_does_not_win_the_race() {
    const TEST: &str = "a_second_dhcp_server_without_a_boot_file_does_not_win_the_race";
    let addresses = [format!("{RACE_IP}/24"), format!("{ROGUE_IP}/24")];
    let Some((mut topo, ns, bridge, tap)) = lab_with_bridge(TEST, &[], 'r', &addresses) else { return };
    let filter = "udp port 67 or udp port 68 or tcp port 8080";
    let (tcpdump, pcap) = capture(&mut topo, &ns, &bridge, filter);
    let config = format!(
        "interface: {bridge}\nserver_address: {RACE_IP}\nipv6_ra: true\nhttp: {{listen: \"{RACE_IP}:8080\"}}\n\
         tftp: {{listen: \"{RACE_IP}:69\"}}\ndhcp:\n  subnet: 10.73.0.0/24\n  range: [10.73.0.100, 10.73.0.150]\n"
    );
    let ramboot = topo.start_ramboot(&ns, &config, "info");
    let ramboot_log = ramboot.log.clone();
    // With its ping check first, dnsmasq's offer arrives after ramboot's: iPXE
    // keeps the *last* offer of equal priority, so without 175.1 it would win.
    let range = (Ipv4Addr::new(10, 73, 0, 50), Ipv4Addr::new(10, 73, 0, 90));
    let dnsmasq = start_site_dnsmasq(&mut topo, &ns, &bridge, ROGUE_IP, range, &[]);
    let dnsmasq_log = topo.path("dnsmasq.log");

    let console = topo.path("console.log");
    let qemu_log = topo.path("qemu.log");
    let qemu = spawn_pxe_vm(&mut topo, &ns, &tap, RACE_MAC, &console, &qemu_log);
    let logs = [("console", &console), ("dnsmasq", &dnsmasq_log), ("ramboot", &ramboot_log)];
    let context = || logs_context(25, &logs);
    ramboot.wait_script_served(&mut topo, qemu, RACE_MAC, Duration::from_secs(75), context);
    // dnsmasq made its offer too (late, or the race is not one).
    wait_for(
        Duration::from_secs(20),
        "dnsmasq to offer the VM an address",
        || read_lossy(&dnsmasq_log).contains(&format!("DHCPOFFER({bridge}) 10.73.0.")).then_some(()),
        context,
    );
    topo.stop(qemu, Duration::from_secs(3));
    topo.stop(dnsmasq, Duration::from_secs(5));
    topo.stop_ramboot(&ramboot);
    wait_capture(&pcap, Duration::from_secs(5), |packets| {
        packets.iter().any(|p| p.proto == 6 && p.dport == 8080 && p.payload.starts_with(b"GET /boot.ipxe"))
    });
    topo.stop(tcpdump, Duration::from_secs(5));

    let packets = read_pcap(&pcap);
    let msgs = dhcp_of(&packets);
    let wire = describe_all(&msgs);
    // Both servers speak from the bridge's primary address (dnsmasq answers from
    // it too), so ramboot's offers are told by their range: .100-.150.
    let ours = |ip: Ipv4Addr| ip.octets()[..3] == [10, 73, 0] && (100..=150).contains(&ip.octets()[3]);
    let offered = msgs.iter().any(|(_, d)| d.chaddr == RACE_MAC && d.kind() == "OFFER" && ours(d.yiaddr));
    assert!(offered, "ramboot offered:\n{wire}");
    let requests: Vec<&(Packet, Dhcp)> =
        msgs.iter().filter(|(_, d)| d.chaddr == RACE_MAC && d.kind() == "REQUEST").collect();
    assert!(!requests.is_empty(), "no REQUEST:\n{wire}");
    for (p, d) in &requests {
        let asked = d.opt_addr(50).unwrap_or(d.ciaddr);
        assert!(ours(asked), "iPXE chose ramboot's offer: {}", describe(p, d));
    }
    let get = packets
        .iter()
        .find(|p| p.proto == 6 && p.dport == 8080 && p.payload.starts_with(b"GET /boot.ipxe"))
        .expect("the script request");
    assert!(ours(get.src), "the script was asked for from ramboot's lease, not {}", get.src);
}
