//! Two `ramboot serve` on one PostgreSQL database, both answering one boot network
//! (issue 13): Kea's `perfdhcp` loads both at once, then one server is killed with
//! SIGKILL under load. After each phase an audit reads the lease table: every
//! (MAC, address) pair a client was ACKed is active there, and no address is active
//! for two MACs. Then the survivor answers the clients only the dead server knew.
//!
//! The servers, each in its own namespace, and the load generators' namespace are
//! ports of one bridge. perfdhcp runs as a relay (giaddr = its address), one instance
//! per server, each with its own clients; both servers allocate from the same range.
//!
//! Needs PostgreSQL (`RAMBOOT_TEST_POSTGRES`, as the PostgreSQL pass of `.ci/run`
//! sets it): a SQLite file belongs to one server, so without it the test skips.

mod common;

use common::netns::{set_lab_database_reachable, store_leases, Ramboot, ServeInLab};
use common::perfdhcp::{PerfReport, PERFDHCP};
use nix::sys::signal::{kill, Signal};
use ramboot::store::LeaseState;
use ramboot_lab::harness::{bridge_port_ns, bridge_with_tap, log_text, read_lossy, tail, tool, wait_for, Lab};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SERVERS: [&str; 2] = ["10.67.0.1", "10.67.0.3"];
/// One perfdhcp per server, each relaying from an address of its own.
const RELAYS: [&str; 2] = ["10.67.0.2", "10.67.0.4"];
const RANGE: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 67, 1, 0), Ipv4Addr::new(10, 67, 80, 255)];
/// Clients per perfdhcp in the first phase: 10,000 in all, against both at once.
const CLIENTS: u64 = 5_000;
/// Exchanges per second each perfdhcp offers (the load is bounded by count and time;
/// speed is measured in bench/dhcp).
const RATE: u64 = 250;
/// DISCOVERs perfdhcp may send past its -n on a busy machine.
const SLIP: u64 = 5;

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Two servers on one bridge, and the namespace perfdhcp runs in.
struct Fleet {
    lab: Lab,
    /// Namespace tags (switch, server 0, server 1, clients): tests that run at once
    /// in one process (one PID) use different ones.
    tags: [char; 4],
    server_ns: Vec<String>,
    servers: Vec<Option<Ramboot>>,
    client_ns: String,
}

impl Fleet {
    /// The lab of `test` with its fleet, or `None` when it skips (no PostgreSQL,
    /// perfdhcp or curl; saying why).
    fn for_test(test: &str, tags: [char; 4]) -> Option<Fleet> {
        if common::skipped_without_postgres(test) {
            return None;
        }
        let lab = Lab::for_test(test, &[("perfdhcp", PERFDHCP), ("curl", &["/usr/bin/curl"])])?;
        Some(Fleet::new(lab, tags))
    }

    fn new(mut lab: Lab, tags: [char; 4]) -> Fleet {
        let pid = std::process::id();
        let switch = lab.netns(&format!("rb{}{pid}", tags[0]));
        // The bridge's own tap carries nothing: the bridge is a switch here.
        let (bridge, _tap) = bridge_with_tap(&switch, tags[0], &[]);
        let mut server_ns = Vec::new();
        for (i, ip) in SERVERS.iter().enumerate() {
            let (ns, _) = bridge_port_ns(&mut lab, (&switch, &bridge), tags[1 + i], &[format!("{ip}/16")], 1500);
            server_ns.push(ns);
        }
        let relays: Vec<String> = RELAYS.iter().map(|ip| format!("{ip}/16")).collect();
        let (client_ns, _) = bridge_port_ns(&mut lab, (&switch, &bridge), tags[3], &relays, 1500);
        Fleet { lab, tags, server_ns, servers: vec![None, None], client_ns }
    }

    /// Start server `i` with the other as its peer, and wait until DHCP serves.
    fn start(&mut self, i: usize) {
        let (ip, peer) = (SERVERS[i], SERVERS[1 - i]);
        let iface = format!("{}{}v", self.tags[1 + i], std::process::id());
        let config = format!(
            "interface: {iface}\nserver_address: {ip}\nhttp:\n  listen: {ip}:8080\ntftp:\n  listen: {ip}:69\n\
             dhcp:\n  subnet: 10.67.0.0/16\n  range: [{start}, {end}]\n  router: {ip}\n  lease_time_secs: 3600\n\
             cluster:\n  name: server-{i}\n  peers: [\"http://{peer}:8080\"]\n",
            start = RANGE[0],
            end = RANGE[1],
        );
        let ns = self.server_ns[i].clone();
        self.servers[i] = Some(self.lab.start_named_ramboot(&format!("server-{i}"), &ns, &config, "info"));
    }

    /// SIGKILL server `i`, as a crash would: no shutdown, nothing flushed.
    fn crash(&mut self, i: usize) {
        let ramboot = self.servers[i].take().expect("running");
        kill(self.lab.pid(ramboot.idx), Signal::SIGKILL).unwrap();
        wait_for(Duration::from_secs(10), "the killed server to exit", || self.lab.try_wait(ramboot.idx), String::new);
    }

    fn stop(&mut self, i: usize) -> String {
        let ramboot = self.servers[i].take().expect("running");
        self.lab.stop_ramboot(&ramboot)
    }

    fn log(&self, i: usize) -> String {
        log_text(&self.lab.path(&format!("server-{i}/ramboot.log")))
    }

    /// Start perfdhcp relaying from `RELAYS[relay]` to server `server`: `clients`
    /// clients from MAC `02:<mac_byte>:00:00:00:00` at `RATE`/s. Returns its index.
    fn spawn_perfdhcp(&mut self, name: &str, relay: usize, server: usize, mac_byte: u8, clients: u64) -> usize {
        let perfdhcp = tool(PERFDHCP);
        let base = format!("mac=02:{mac_byte:02x}:00:00:00:00");
        let (macs, n, rate) = ((clients + SLIP).to_string(), clients.to_string(), RATE.to_string());
        // -R: walk `macs` distinct MACs (never wrapping to a client already served);
        // -d 5: an answer later than 5 s is a drop; -W: wait 5 s for stragglers;
        // -u: perfdhcp checks that no address is handed to two of its clients;
        // -x l: list the leases it was ACKed.
        let args = [&perfdhcp, "-4", "-l", RELAYS[relay], "-b", &base, "-R", &macs, "-n", &n, "-r", &rate]
            .into_iter()
            .chain(["-d", "5", "-d", "5", "-W", "5000000", "-u", "-x", "el", SERVERS[server]])
            .map(String::from)
            .collect::<Vec<_>>();
        let (ns, log) = (self.client_ns.clone(), self.lab.path(&format!("{name}.out")));
        self.lab.spawn(name, &ns, &args, &log, &[])
    }

    /// Wait for perfdhcp `idx` to finish; its report and what it was ACKed.
    fn finish_perfdhcp(&mut self, name: &str, idx: usize, clients: u64) -> (PerfReport, Vec<(String, Ipv4Addr)>) {
        let limit = Duration::from_secs(clients / RATE + 60);
        let out_path = self.lab.path(&format!("{name}.out"));
        let context = move || tail(&read_lossy(&out_path), 20);
        let status = wait_for(limit, &format!("{name} to finish"), || self.lab.try_wait(idx), context);
        let out = self.out(name);
        let report = PerfReport::parse(&out);
        // 0: every exchange completed; 3: some were not (drops, judged by the caller).
        assert!(matches!(status.code(), Some(0) | Some(3)), "{name} failed: {status}\n{}", tail(&out, 30));
        assert_eq!(report.malformed, Some(0), "{name}: malformed replies");
        for exchange in ["DISCOVER-OFFER", "REQUEST-ACK"] {
            for key in ["rejected leases", "non unique addresses"] {
                assert_eq!(report.num(exchange, key), 0, "{name}: {exchange} {key}");
            }
        }
        let acked: Vec<(String, Ipv4Addr)> = report.leases["REQUEST-ACK"]
            .iter()
            .map(|(mac, ip)| {
                assert_eq!(mac.len(), 17, "{name}: an ACK without the client identifier echoed: {mac:?},{ip}");
                (mac.clone(), ip.parse().unwrap_or_else(|_| panic!("{name}: yiaddr {ip:?}")))
            })
            .collect();
        assert_eq!(acked.len() as u64, report.num("REQUEST-ACK", "received packets"), "{name}: one lease per ACK");
        (report, acked)
    }

    fn out(&self, name: &str) -> String {
        read_lossy(&self.lab.path(&format!("{name}.out")))
    }
}

/// The audit: in the lease table, no address is active for two MACs nor a MAC
/// active at two addresses, and every ACKed pair is active. Returns the table's
/// active leases, MAC → address.
fn audit(phase: &str, url: &str, acked: &[(String, Ipv4Addr)]) -> HashMap<String, Ipv4Addr> {
    let now = unix_now();
    let mut by_mac: HashMap<String, Ipv4Addr> = HashMap::new();
    let mut by_ip: HashMap<Ipv4Addr, String> = HashMap::new();
    for l in store_leases(url).iter().filter(|l| l.state == LeaseState::Active && l.expires_at > now) {
        let mac = l.mac.to_string();
        if let Some(other) = by_ip.insert(l.ip, mac.clone()) {
            panic!("{phase}: {} is active for {other} and {mac}", l.ip);
        }
        if let Some(other) = by_mac.insert(mac.clone(), l.ip) {
            panic!("{phase}: {mac} is active at {other} and {}", l.ip);
        }
    }
    let mut acked_ips: HashMap<Ipv4Addr, &str> = HashMap::new();
    for (mac, ip) in acked {
        assert!((u32::from(RANGE[0])..=u32::from(RANGE[1])).contains(&u32::from(*ip)), "{phase}: {mac} got {ip}");
        if let Some(other) = acked_ips.insert(*ip, mac) {
            assert_eq!(other, mac, "{phase}: {ip} was ACKed to {other} and to {mac}");
        }
        assert_eq!(by_mac.get(mac), Some(ip), "{phase}: ACKed lease {mac} {ip} is not active in the database");
    }
    eprintln!(
        "{phase}: audit passed: {} ACKed pairs all active; {} active leases, none shared",
        acked.len(),
        by_mac.len()
    );
    by_mac
}

/// Each server's metric `name` (summed over labels), scraped from inside the lab.
fn metric(fleet: &Fleet, i: usize, name: &str) -> f64 {
    let out = ramboot_lab::net::in_ns(&fleet.server_ns[i], &["curl", "-sS", "--max-time", "10"])
        .arg(format!("http://{}:8080/metrics", SERVERS[i]))
        .output()
        .expect("curl");
    common::prometheus_sum(&String::from_utf8_lossy(&out.stdout), name)
}

/// An event written through server 0 reaches `ramboot events --follow` on
/// server 1, and server 1's `/metrics`.
fn events_reach_the_other_server(fleet: &mut Fleet) {
    // The first server to start wrote the admin token; tokens are rows, so it works
    // on both.
    let token = std::fs::read_to_string(fleet.lab.path("server-0/data/admin.token")).expect("admin token");
    let token = token.trim().to_string();
    let events_before = metric(fleet, 1, "ramboot_events_total");
    let follow_out = fleet.lab.path("follow.out");
    let follow: Vec<String> = [env!("CARGO_BIN_EXE_ramboot"), "events", "--follow", "--json", "--server"]
        .into_iter()
        .map(String::from)
        .chain([format!("http://{}:8080", SERVERS[1]), "--token".into(), token.clone()])
        .collect();
    let ns = fleet.client_ns.clone();
    let follower = fleet.lab.spawn("events-follow", &ns, &follow, &follow_out, &[]);
    let mac = "02:67:00:00:00:01";
    let created =
        ramboot_lab::net::in_ns(&ns, &["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"])
            .args([
                "-X",
                "POST",
                "-H",
                &format!("Authorization: Bearer {token}"),
                "-H",
                "Content-Type: application/json",
            ])
            .args(["-d", &format!("{{\"mac\":\"{mac}\"}}"), &format!("http://{}:8080/api/v1/nodes", SERVERS[0])])
            .output()
            .expect("curl");
    assert_eq!(String::from_utf8_lossy(&created.stdout), "201", "creating a node through server 0");
    let seen = wait_for(
        Duration::from_secs(20),
        "server 1's event stream to show the node server 0 created",
        || read_lossy(&follow_out).lines().find(|l| l.contains(mac)).map(str::to_string),
        || read_lossy(&follow_out),
    );
    fleet.lab.stop(follower, Duration::from_secs(5));
    wait_for(
        Duration::from_secs(20),
        "server 1's /metrics to count server 0's event",
        || (metric(fleet, 1, "ramboot_events_total") > events_before).then_some(()),
        String::new,
    );
    eprintln!("server 1 streamed server 0's event: {seen}");
}

#[test]
fn two_servers_share_one_pool_and_the_survivor_of_a_crash_serves_everyone() {
    const TEST: &str = "two_servers_share_one_pool_and_the_survivor_of_a_crash_serves_everyone";
    let Some(mut fleet) = Fleet::for_test(TEST, ['w', 'a', 'b', 'c']) else { return };
    let started = Instant::now();
    fleet.start(0);
    fleet.start(1);
    let url = fleet.lab.database_url();
    events_reach_the_other_server(&mut fleet);

    // Phase 1: 10,000 clients, half through each server, all from one range.
    let p1 = fleet.spawn_perfdhcp("perf-a", 0, 0, 0x77, CLIENTS);
    let p2 = fleet.spawn_perfdhcp("perf-b", 1, 1, 0x78, CLIENTS);
    let (r1, acked_a) = fleet.finish_perfdhcp("perf-a", p1, CLIENTS);
    let (r2, acked_b) = fleet.finish_perfdhcp("perf-b", p2, CLIENTS);
    let phase1: Vec<(String, Ipv4Addr)> = acked_a.iter().chain(&acked_b).cloned().collect();
    for (name, r) in [("perf-a", &r1), ("perf-b", &r2)] {
        let acked = r.num("REQUEST-ACK", "received packets");
        eprintln!(
            "{name}: {} DISCOVERs, {} OFFERs, {acked} ACKs, drops {}/{}",
            r.num("DISCOVER-OFFER", "sent packets"),
            r.num("DISCOVER-OFFER", "received packets"),
            r.num("DISCOVER-OFFER", "drops"),
            r.num("REQUEST-ACK", "drops"),
        );
        // Almost every client gets a lease; a lost race or a dropped reply costs a
        // client its exchange (perfdhcp does not retry), never a duplicate.
        assert!(acked * 100 >= CLIENTS * 95, "{name}: only {acked} of {CLIENTS} clients were ACKed");
    }
    let table = audit("both servers", &url, &phase1);
    let races: Vec<f64> = (0..2).map(|i| metric(&fleet, i, "ramboot_dhcp_grants_taken_total") + 0.0).collect();
    let learned: Vec<f64> = (0..2).map(|i| metric(&fleet, i, "ramboot_dhcp_leases_learned_total")).collect();
    eprintln!("grants refused by the database (lost races): {races:.0?}; leases learned from the peer: {learned:.0?}");
    // Each server heard about (nearly) every lease the other committed.
    for (i, n) in learned.iter().enumerate() {
        let other = if i == 0 { acked_b.len() } else { acked_a.len() };
        assert!(*n as usize >= other, "server {i} learned {n} leases of the {other} its peer ACKed");
    }

    // Phase 2: new clients on both, and server 0 is killed while they arrive.
    let p3 = fleet.spawn_perfdhcp("perf-c", 0, 0, 0x79, CLIENTS / 2);
    let p4 = fleet.spawn_perfdhcp("perf-d", 1, 1, 0x7a, CLIENTS / 2);
    let wanted = (CLIENTS / 2 / 3) as f64;
    wait_for(
        Duration::from_secs(60),
        "server 0 to serve a third of its new clients",
        || (metric(&fleet, 0, "ramboot_dhcp_messages_total") > 2.0 * (CLIENTS as f64 + wanted)).then_some(()),
        || tail(&fleet.log(0), 20),
    );
    fleet.crash(0);
    let crashed_at = Instant::now();
    let (_, acked_c) = fleet.finish_perfdhcp("perf-c", p3, CLIENTS / 2);
    let (r4, acked_d) = fleet.finish_perfdhcp("perf-d", p4, CLIENTS / 2);
    eprintln!(
        "server 0 killed with {} of perf-c's {} clients ACKed; perf-d (survivor): {} ACKed",
        acked_c.len(),
        CLIENTS / 2,
        acked_d.len()
    );
    assert!(!acked_c.is_empty() && (acked_c.len() as u64) < CLIENTS / 2, "the kill came mid-run");
    assert!(r4.num("REQUEST-ACK", "received packets") * 100 >= CLIENTS / 2 * 95, "the survivor kept serving");
    let everything: Vec<(String, Ipv4Addr)> = phase1.iter().chain(&acked_c).chain(&acked_d).cloned().collect();
    audit("after server 0 was killed", &url, &everything);

    // Phase 3: the clients server 0 served come back to the survivor, which finds
    // their leases in the database: each gets its own address again.
    let returning: u64 = 1_000;
    let p5 = fleet.spawn_perfdhcp("perf-e", 1, 1, 0x77, returning);
    let (_, acked_e) = fleet.finish_perfdhcp("perf-e", p5, returning);
    assert!(acked_e.len() as u64 * 100 >= returning * 95, "the survivor ACKed only {} returning", acked_e.len());
    let moved: Vec<_> = acked_e.iter().filter(|(mac, ip)| table.get(mac).is_some_and(|was| was != ip)).collect();
    assert!(moved.is_empty(), "returning clients got another address: {:?}", &moved[..moved.len().min(5)]);
    assert!(acked_e.iter().all(|(mac, _)| table.contains_key(mac)), "every returning client had a lease");
    audit("returning clients on the survivor", &url, &everything);

    let log = fleet.stop(1);
    assert!(!log.contains(" ERROR "), "the survivor logged errors:\n{}", tail(&log, 40));
    let summary: BTreeMap<&str, usize> = [
        ("phase 1 ACKs", phase1.len()),
        ("phase 2 ACKs", acked_c.len() + acked_d.len()),
        ("returning ACKs", acked_e.len()),
    ]
    .into_iter()
    .collect();
    eprintln!("{TEST}: {summary:?}; after the kill {:.1?}; test took {:.1?}", crashed_at.elapsed(), started.elapsed());
}

/// A server that loses its database sends no ACK at all (not from memory, not a
/// NAK): clients wait and retry. When the database returns, so do ACKs, and the
/// table holds exactly the leases that were ACKed.
#[test]
fn a_server_that_loses_its_database_acks_nothing_until_it_returns() {
    const TEST: &str = "a_server_that_loses_its_database_acks_nothing_until_it_returns";
    let Some(mut fleet) = Fleet::for_test(TEST, ['x', 'd', 'e', 'f']) else { return };
    fleet.start(0);
    let url = fleet.lab.database_url();
    let clients = 300;

    let before = fleet.spawn_perfdhcp("before", 0, 0, 0x71, clients);
    let (_, acked_before) = fleet.finish_perfdhcp("before", before, clients);
    assert_eq!(acked_before.len() as u64, clients, "with its database, every client is ACKed");

    set_lab_database_reachable(&fleet.lab, false);
    let during = fleet.spawn_perfdhcp("during", 0, 0, 0x72, clients);
    let (report, acked_during) = fleet.finish_perfdhcp("during", during, clients);
    let offers = report.num("DISCOVER-OFFER", "received packets");
    assert!(
        acked_during.is_empty(),
        "ACKs sent without the database: {:?}",
        &acked_during[..acked_during.len().min(5)]
    );
    let unreachable = metric(&fleet, 0, "ramboot_dhcp_commit_failures_total");
    let log = fleet.log(0);
    assert!(log.contains("database unreachable"), "the log names the cause:\n{}", tail(&log, 20));
    assert!(log.matches("reply=Nak").count() == 0, "clients were NAKed, not left to retry");
    eprintln!("without its database: {offers} OFFERs, 0 ACKs, {unreachable} failed lease batches");

    set_lab_database_reachable(&fleet.lab, true);
    let after = fleet.spawn_perfdhcp("after", 0, 0, 0x73, clients);
    let (_, acked_after) = fleet.finish_perfdhcp("after", after, clients);
    // The first batch may still meet the broken connection the pool held.
    assert!(acked_after.len() as u64 * 100 >= clients * 95, "only {} ACKed after the return", acked_after.len());
    let acked: Vec<(String, Ipv4Addr)> = acked_before.iter().chain(&acked_after).cloned().collect();
    let table = audit("after the database returned", &url, &acked);
    let ghosts: Vec<&String> = table.keys().filter(|mac| mac.starts_with("02:72:")).collect();
    assert!(ghosts.is_empty(), "leases of clients never ACKed: {ghosts:?}");
    fleet.stop(0);
}
