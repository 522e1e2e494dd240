//! DHCPv6 and router advertisements of the real `ramboot serve` on an IPv6-only
//! segment, against real clients: the Linux kernel (RA: the on-link prefix), ISC
//! `dhclient -6` (Solicit/Advertise/Request/Reply, Release) and Kea's `perfdhcp -6`
//! (1,000 clients, every address unique and durable).
//!
//! Each test builds its own pair of network namespaces joined by a veth pair: the
//! server side (fd00:66::1/64) runs ramboot with `dhcp.ipv4: false`, the client side
//! the client. A [`Lab`] guard kills what it started and deletes both namespaces.

mod common;

use common::netns::{Dhclient, Ramboot, ServeInLab, DHCLIENT};
use common::perfdhcp::{PerfReport, PERFDHCP};
use ramboot::store::{Lease6, LeaseState, Store};
use ramboot_lab::harness::{ip_in, logs_context, read_lossy, tool, udp6_counters, veth, wait_for, Lab};
use std::collections::BTreeSet;
use std::net::Ipv6Addr;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SERVER_IP: &str = "fd00:66::1";
const RANGE: [&str; 2] = ["fd00:66::1:0", "fd00:66::1:ffff"];
const CLIENT_MAC: &str = "02:66:00:00:06:01";

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn in_range(a: Ipv6Addr) -> bool {
    let [first, last] = RANGE.map(|r| u128::from(r.parse::<Ipv6Addr>().unwrap()));
    (first..=last).contains(&u128::from(a))
}

fn store_leases6(url: &str) -> Vec<Lease6> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = Store::open(url).await.unwrap();
        let rows = store.leases6().await.unwrap();
        store.close().await;
        rows
    })
}

/// Two namespaces joined by a veth pair; ramboot serving DHCPv6 on the server side.
struct Segment6 {
    lab: Lab,
    server_ns: String,
    client_ns: String,
    client_if: String,
    ramboot: Option<Ramboot>,
}

impl Segment6 {
    fn new(mut lab: Lab, tag: char, lease_secs: u32) -> Segment6 {
        let base = format!("r6{tag}{}", std::process::id());
        let (server_ns, client_ns) = (lab.netns(&format!("{base}s")), lab.netns(&format!("{base}c")));
        let (server_if, client_if) = (format!("{base}s0"), format!("{base}c0"));
        veth((&server_ns, &server_if), (&client_ns, &client_if));
        ip_in(&client_ns, &["link", "set", &client_if, "address", CLIENT_MAC]);
        // nodad: the address is usable at once (the server binds HTTP to `::`).
        ip_in(&server_ns, &["addr", "add", &format!("{SERVER_IP}/64"), "dev", &server_if, "nodad"]);
        for (ns, ifname) in [(&server_ns, &server_if), (&client_ns, &client_if)] {
            ip_in(ns, &["link", "set", ifname, "up"]);
        }
        // The IPv4 side of the config is required but unused: no DHCPv4 is served.
        let config = format!(
            "interface: {server_if}\nserver_address: 10.66.0.1\ndhcp:\n  ipv4: false\n\
             dhcp6:\n  server_address: {SERVER_IP}\n  prefix: fd00:66::/64\n  range: [{}, {}]\n  \
             lease_time_secs: {lease_secs}\n",
            RANGE[0], RANGE[1]
        );
        let ramboot = Some(lab.start_ramboot(&server_ns, &config, "info,ramboot::dhcp::io6=debug"));
        let mut segment = Segment6 { lab, server_ns, client_ns, client_if, ramboot };
        segment.wait_link_local();
        segment
    }

    /// The client's link-local address out of DAD: DHCPv6 clients send from it.
    fn wait_link_local(&mut self) {
        let (ns, ifname) = (self.client_ns.clone(), self.client_if.clone());
        wait_for(
            Duration::from_secs(10),
            "the client's link-local address to leave DAD",
            || {
                let out = Command::new("ip")
                    .args(["netns", "exec", &ns, "ip", "-6", "addr", "show", "dev", &ifname, "scope", "link"])
                    .output()
                    .ok()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                (text.contains("fe80::") && !text.contains("tentative")).then_some(())
            },
            String::new,
        );
    }

    fn ramboot_log(&self) -> String {
        read_lossy(&self.lab.path("ramboot.log"))
    }

    /// Stop ramboot (it must exit cleanly); its log. The lab, its store included,
    /// stays until the segment is dropped.
    fn stop(&mut self) -> String {
        let ramboot = self.ramboot.take().expect("ramboot running");
        self.lab.stop_ramboot(&ramboot)
    }
}

#[test]
fn the_kernel_takes_the_boot_prefix_on_link_from_ramboots_router_advertisement() {
    const TEST: &str = "the_kernel_takes_the_boot_prefix_on_link_from_ramboots_router_advertisement";
    let Some(lab) = Lab::for_test(TEST, &[]) else { return };
    let mut segment = Segment6::new(lab, 'r', 3600);
    // The kernel solicits when the link comes up; ramboot answers with the prefix
    // (on-link, not autonomous) and M/O set.
    let (ns, ifname) = (segment.client_ns.clone(), segment.client_if.clone());
    let route = wait_for(
        Duration::from_secs(15),
        "the on-link route for fd00:66::/64 learnt from an RA",
        || {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns, "ip", "-6", "route", "show", "fd00:66::/64", "dev", &ifname])
                .output()
                .ok()?;
            // Learnt from an RA: the route expires with the prefix's valid lifetime.
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("expires").then_some(text)
        },
        || segment.ramboot_log(),
    );
    assert!(!route.contains("via"), "on-link, not through a router: {route}");
    // Not autonomous: the kernel formed no global address of its own.
    let out = Command::new("ip")
        .args(["netns", "exec", &segment.client_ns, "ip", "-6", "addr", "show", "dev", &segment.client_if])
        .output()
        .unwrap();
    let addrs = String::from_utf8_lossy(&out.stdout);
    assert!(!addrs.contains("fd00:66::"), "no SLAAC address: {addrs}");
    // And no default route: ramboot is not a router.
    let out = Command::new("ip").args(["netns", "exec", &segment.client_ns, "ip", "-6", "route"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("default"), "{}", String::from_utf8_lossy(&out.stdout));
    segment.stop();
}

#[test]
fn dhclient6_gets_and_releases_a_durable_address() {
    const TEST: &str = "dhclient6_gets_and_releases_a_durable_address";
    let Some(lab) = Lab::for_test(TEST, &[("dhclient", DHCLIENT)]) else { return };
    let started = Instant::now();
    let mut segment = Segment6::new(lab, 'd', 3600);
    let events = segment.lab.path("dhclient.events");
    // The -sf script: record each event with the address, configure nothing.
    let script = format!(
        "#!/bin/sh\necho \"$reason ${{new_ip6_address:-}} ${{old_ip6_address:-}}\" >> {}\nexit 0\n",
        events.display()
    );
    let dhclient = Dhclient::new(&segment.lab, "", &script);
    let (ns, ifname) = (segment.client_ns.clone(), segment.client_if.clone());
    let log = segment.lab.path("dhclient.log");
    let idx = segment.lab.spawn("dhclient", &ns, &dhclient.args6(&["-d", "-v"], &ifname), &log, &[]);
    let ramboot_log = segment.lab.path("ramboot.log");
    let context = || logs_context(20, &[("dhclient", log.clone()), ("ramboot", ramboot_log.clone())]);
    let bound = wait_for(
        Duration::from_secs(30),
        "dhclient -6 to bind an address",
        || {
            read_lossy(&events)
                .lines()
                .find_map(|l| l.strip_prefix("BOUND6 ").and_then(|rest| rest.split_whitespace().next()?.parse().ok()))
        },
        context,
    );
    let bound: Ipv6Addr = bound;
    assert!(in_range(bound), "{bound} is outside the range");
    // Durable before the Reply went out: the row is in the store.
    let url = segment.lab.database_url();
    let rows = store_leases6(&url);
    let row = rows.iter().find(|r| r.address == bound).unwrap_or_else(|| panic!("{bound} not stored: {rows:?}"));
    assert_eq!((row.state, row.mac.map(|m| m.to_string())), (LeaseState::Active, Some(CLIENT_MAC.to_string())));
    assert!(row.expires_at > unix_now() + 3000, "{row:?}");
    let out = read_lossy(&log);
    assert!(out.contains("Advertise") || out.contains("ADVERTISE") || out.contains("Reply"), "{out}");
    // The admin API lists it, over HTTP on IPv6 (ramboot's second listener).
    let token = std::fs::read_to_string(segment.lab.path("data/admin.token")).unwrap();
    let listed = Command::new("ip")
        .args(["netns", "exec", &segment.server_ns, "curl", "-sf", "-g", "-H"])
        .arg(format!("Authorization: Bearer {}", token.trim()))
        .arg(format!("http://[{SERVER_IP}]:8080/api/v1/leases6"))
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout)
        .unwrap_or_else(|e| panic!("GET /api/v1/leases6: {e}: {}", String::from_utf8_lossy(&listed.stderr)));
    let listed = listed.as_array().unwrap();
    assert!(
        listed.iter().any(|l| l["address"] == bound.to_string() && l["mac"] == CLIENT_MAC && l["state"] == "active"),
        "{listed:?}"
    );

    // dhclient -6 -r releases it; the store marks it released.
    let running_pid = segment.lab.pid(idx);
    let release_log = segment.lab.path("dhclient-release.log");
    let status = segment.lab.run(&ns, &dhclient.args6(&["-r", "-v"], &ifname), &release_log, Duration::from_secs(20));
    assert!(status.success(), "dhclient -6 -r: {status}\n{}", read_lossy(&release_log));
    wait_for(Duration::from_secs(5), "the running dhclient to exit after -r", || segment.lab.try_wait(idx), context);
    let released = wait_for(
        Duration::from_secs(10),
        "the store to mark the address released",
        || store_leases6(&url).into_iter().find(|r| r.address == bound && r.state == LeaseState::Released),
        || format!("dhclient pid {running_pid}\n{}", segment.ramboot_log()),
    );
    assert_eq!(released.mac.map(|m| m.to_string()), Some(CLIENT_MAC.to_string()));
    segment.stop();
    eprintln!("{TEST}: {:.1?}", started.elapsed());
}

/// Clients perfdhcp simulates (distinct DUIDs) and the rate it offers them at.
const CLIENTS: u64 = 1_000;
const RATE: u64 = 250;

#[test]
fn perfdhcp6_1k_clients_get_one_unique_durable_address_each() {
    const TEST: &str = "perfdhcp6_1k_clients_get_one_unique_durable_address_each";
    let Some(lab) = Lab::for_test(TEST, &[("perfdhcp", PERFDHCP)]) else { return };
    let perfdhcp = tool(PERFDHCP);
    let mut segment = Segment6::new(lab, 'p', 3600);
    // -6 -l IFACE: Solicit to ff02::1:2 from the link-local address. Without -s the
    // DUIDs (DUID-LLT of a MAC) walk sequentially from the base: -n CLIENTS exchanges
    // are CLIENTS distinct clients; -R leaves room for a few past -n. -d: an answer
    // later than 5 s is a drop; -W: wait 5 s for stragglers after the last Solicit.
    let out_path = segment.lab.path("perfdhcp.out");
    let (clients, macs, rate) = (CLIENTS.to_string(), (CLIENTS + 10).to_string(), RATE.to_string());
    let args = [&perfdhcp, "-6", "-l", &segment.client_if, "-b", "mac=02:76:00:00:00:00", "-R", &macs]
        .into_iter()
        .chain(["-n", &clients, "-r", &rate, "-d", "5", "-d", "5", "-W", "5000000"])
        .map(String::from)
        .collect::<Vec<_>>();
    let run_started = Instant::now();
    let status = segment.lab.run(&segment.client_ns, &args, &out_path, Duration::from_secs(CLIENTS / RATE + 40));
    let run_time = run_started.elapsed();
    let out = read_lossy(&out_path);
    let report = PerfReport::parse(&out);
    let (sa, rr) = ("SOLICIT-ADVERTISE", "REQUEST-REPLY");
    let solicits = report.num(sa, "sent packets");
    let replied = report.num(rr, "received packets");
    eprintln!(
        "perfdhcp -6: {solicits} Solicits at {RATE}/s in {run_time:.1?}; {} Advertises, {} Requests, {replied} \
         Replies; drops {}/{}; avg delay {} / {}; exit {status}",
        report.num(sa, "received packets"),
        report.num(rr, "sent packets"),
        report.num(sa, "drops"),
        report.num(rr, "drops"),
        report.stats[sa]["avg delay"],
        report.stats[rr]["avg delay"],
    );
    assert!(matches!(status.code(), Some(0) | Some(3)), "perfdhcp failed: {status}\n{out}");
    assert_eq!(report.malformed, Some(0), "malformed replies\n{out}");
    for exchange in [sa, rr] {
        for key in ["orphans", "rejected leases", "non unique addresses"] {
            assert_eq!(report.num(exchange, key), 0, "{exchange} {key}\n{out}");
        }
    }
    // Every datagram ramboot received was answered, and what perfdhcp missed its own
    // socket dropped (see dhcp_clients.rs's perfdhcp test for why that can happen).
    let (server_udp, client_udp) = (udp6_counters(&segment.server_ns), udp6_counters(&segment.client_ns));
    let (received, answered) = (server_udp["InDatagrams"], server_udp["OutDatagrams"]);
    assert_eq!(server_udp["InErrors"], 0, "ramboot's socket dropped requests: {server_udp:?}");
    assert_eq!(received, answered, "ramboot answered {answered} of the {received} messages it received");
    let unanswered = (solicits - report.num(sa, "received packets")) + (report.num(rr, "sent packets") - replied);
    assert!(
        unanswered <= client_udp.get("RcvbufErrors").copied().unwrap_or(0),
        "{unanswered} exchanges unanswered\n{out}\n{}",
        segment.ramboot_log().lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );

    // The store after a clean stop: one active row per client, addresses unique and
    // in the range, at least one per Reply perfdhcp saw (committed before it left).
    let url = segment.lab.database_url();
    let log = segment.stop();
    assert!(!log.contains("ERROR"), "{log}");
    let rows = store_leases6(&url);
    let active: Vec<&Lease6> = rows.iter().filter(|r| r.state == LeaseState::Active).collect();
    let macs: BTreeSet<String> = active.iter().map(|r| r.mac.map(|m| m.to_string()).unwrap_or_default()).collect();
    let addrs: BTreeSet<Ipv6Addr> = active.iter().map(|r| r.address).collect();
    assert_eq!(macs.len(), active.len(), "one active address per client");
    assert_eq!(addrs.len(), active.len());
    assert!(active.iter().all(|r| in_range(r.address)));
    assert!(active.len() as u64 >= replied, "{} stored < {replied} replied", active.len());
    assert!(active.len() as u64 <= report.num(rr, "sent packets"));
}
