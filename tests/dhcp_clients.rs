//! The real `ramboot serve` binary against real DHCP clients: ISC `dhclient`, busybox
//! `udhcpc` and Kea's `perfdhcp` load generator.
//!
//! Each test builds its own pair of network namespaces joined by a veth pair: the
//! server side (10.66.0.1/16) runs `ramboot serve`, the client side runs the client.
//! Nothing touches the host's network or DHCP client configuration; a [`Lab`] guard
//! kills every process it started and deletes both namespaces, also when an
//! assertion fails. Needs root and the tools (CI installs them); elsewhere a missing
//! tool or a non-root user skips the test with a message, CI fails instead.
//!
//! The dhclient test uses a 12 s lease and waits for dhclient's own renewal at T1
//! (6 s); udhcpc is told to renew at once with SIGUSR1.

mod common;

use common::netns::{assert_no_errors_or_naks, leases_of, store_leases, Dhclient, Ramboot, ServeInLab, DHCLIENT};
use common::perfdhcp::{PerfReport, PERFDHCP};
use nix::sys::signal::{kill, Signal};
use ramboot::store::{Lease, Store};
use ramboot_lab::harness::{
    events, first_existing, ip_in, logs_context, read_lossy, skip_reason, tail, tool, udp_counters, veth, wait_event,
    wait_for, write_executable, Lab,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::ops::{Deref, DerefMut};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SERVER_IP: &str = "10.66.0.1";
const RANGE: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 66, 1, 0), Ipv4Addr::new(10, 66, 60, 255)];
const CLIENT_MAC: &str = "02:66:00:00:00:01";
const DHCLIENT_LEASE_SECS: u32 = 12;

/// `udhcpc` as a program and leading arguments: the standalone applet link, or busybox.
fn udhcpc_command() -> Option<Vec<String>> {
    if let Some(p) = first_existing(&["/usr/sbin/udhcpc", "/usr/bin/udhcpc", "/sbin/udhcpc", "/bin/udhcpc"]) {
        return Some(vec![p.display().to_string()]);
    }
    first_existing(&["/usr/bin/busybox", "/bin/busybox"]).map(|b| vec![b.display().to_string(), "udhcpc".into()])
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The store's own answer to "which leases are active at `now`".
fn store_active_leases(url: &str, now: u64) -> Vec<Lease> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = Store::open(url).await.unwrap();
        let active = store.active_leases(now).await.unwrap();
        store.close().await;
        active
    })
}

fn in_range(ip: Ipv4Addr) -> bool {
    (u32::from(RANGE[0])..=u32::from(RANGE[1])).contains(&u32::from(ip))
}

// ---------------------------------------------------------------------------------
// The two namespaces, the veth pair and ramboot

/// A server and a client namespace joined by a veth pair, in a [`Lab`] guard (which
/// it derefs to), and the ramboot serving the server side.
struct Segment {
    lab: Lab,
    server_ns: String,
    client_ns: String,
    server_if: String,
    client_if: String,
    ramboot: Option<Ramboot>,
}

impl Deref for Segment {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl DerefMut for Segment {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

impl Segment {
    /// The namespaces in `lab`; `tag` keeps the names of tests running at once apart
    /// (names stay ≤ 15 chars). The server side is 10.66.0.1/16, the client side has
    /// MAC `CLIENT_MAC`.
    fn new(mut lab: Lab, tag: char) -> Segment {
        let base = format!("rb{tag}{}", std::process::id());
        let (server_ns, client_ns) = (lab.netns(&format!("{base}s")), lab.netns(&format!("{base}c")));
        let (server_if, client_if) = (format!("{base}s0"), format!("{base}c0"));
        veth((&server_ns, &server_if), (&client_ns, &client_if));
        ip_in(&client_ns, &["link", "set", &client_if, "address", CLIENT_MAC]);
        ip_in(&server_ns, &["addr", "add", &format!("{SERVER_IP}/16"), "dev", &server_if]);
        for (ns, ifname) in [(&server_ns, &server_if), (&client_ns, &client_if)] {
            ip_in(ns, &["link", "set", ifname, "up"]);
        }
        Segment { lab, server_ns, client_ns, server_if, client_if, ramboot: None }
    }

    /// Start `ramboot serve` in the server namespace, leases of `lease_secs`, and wait
    /// until DHCP serves.
    fn start_ramboot(&mut self, lease_secs: u32) {
        let config = format!(
            "interface: {iface}\nserver_address: {SERVER_IP}\nhttp:\n  listen: {SERVER_IP}:8080\n\
             tftp:\n  listen: {SERVER_IP}:69\ndhcp:\n  subnet: 10.66.0.0/16\n  range: [{start}, {end}]\n  \
             router: {SERVER_IP}\n  dns: [{SERVER_IP}]\n  lease_time_secs: {lease_secs}\n",
            iface = self.server_if,
            start = RANGE[0],
            end = RANGE[1],
        );
        let ns = self.server_ns.clone();
        self.ramboot = Some(self.lab.start_ramboot(&ns, &config, "info"));
    }

    /// Stop ramboot with SIGTERM; it must exit cleanly. Returns its log.
    fn stop_ramboot(&mut self) -> String {
        let ramboot = self.ramboot.take().expect("ramboot running");
        self.lab.stop_ramboot(&ramboot)
    }

    /// Spawn a client program in the client namespace, output to `<name>.log` (its
    /// script writes events to `<name>.events`).
    fn spawn_client(&mut self, name: &str, args: &[String]) -> usize {
        let (ns, log) = (self.client_ns.clone(), self.path(&format!("{name}.log")));
        self.lab.spawn(name, &ns, args, &log, &[])
    }

    /// What a failed wait on client `name` shows: its output, its script's events (see
    /// [`Segment::spawn_client`]) and ramboot's log.
    fn client_context(&self, name: &str) -> impl Fn() -> String {
        let (output, events) = (self.path(&format!("{name}.log")), self.path(&format!("{name}.events")));
        let logs = [("client", output), ("script events", events), ("ramboot", self.path("ramboot.log"))];
        move || logs_context(20, &logs)
    }

    /// The client interface's IPv4 addresses, as `a.b.c.d/len`.
    fn client_addrs(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-n", &self.client_ns, "-4", "-o", "addr", "show", "dev", &self.client_if])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1).map(str::to_string))
            .collect()
    }

    /// What a client's `bound` event says, checked: an address from the pool, each of
    /// `expect` as the client saw it, the address configured, and one active lease for
    /// it in the store. Returns the address and that lease row.
    fn check_bound(
        &self,
        bound: &BTreeMap<String, String>,
        expect: &str,
        context: impl Fn() -> String,
    ) -> (Ipv4Addr, Lease) {
        let leased: Ipv4Addr = bound["ip"].parse().unwrap();
        assert!(in_range(leased), "{leased} outside the pool\n{}", context());
        for (key, value) in expect.split_whitespace().filter_map(|w| w.split_once('=')) {
            assert_eq!(bound[key], value, "option {key} as the client bound with it: {bound:?}");
        }
        let configured = self.client_addrs();
        assert!(configured.contains(&format!("{leased}/16")), "{leased} not configured: {configured:?}");
        let first = leases_of(&self.database_url(), CLIENT_MAC);
        assert_eq!(first.len(), 1, "one lease row for the client: {first:?}");
        assert_eq!((first[0].ip, first[0].state.as_str()), (leased, "active"));
        (leased, first[0].clone())
    }

    /// After a renewal: still one active lease for `first`'s address, expiring at least
    /// `later` seconds later than `first`.
    fn check_renewed(&self, first: &Lease, later: u64) {
        let renewed = leases_of(&self.database_url(), CLIENT_MAC);
        assert_eq!(renewed.len(), 1, "{renewed:?}");
        assert_eq!((renewed[0].ip, renewed[0].state.as_str()), (first.ip, "active"));
        assert!(
            renewed[0].expires_at >= first.expires_at + later,
            "renewal did not move the stored expiry forward: {} -> {}",
            first.expires_at,
            renewed[0].expires_at
        );
    }

    /// After a release: the store marks the lease of `leased` released, and the client
    /// has deconfigured it.
    fn check_released(&self, leased: Ipv4Addr, context: impl Fn() -> String) {
        let url = self.database_url();
        wait_for(
            Duration::from_secs(10),
            "the lease to be marked released in the store",
            || {
                let l = leases_of(&url, CLIENT_MAC);
                (l.len() == 1 && l[0].ip == leased && l[0].state.as_str() == "released").then_some(())
            },
            || format!("{:?}\n{}", leases_of(&url, CLIENT_MAC), context()),
        );
        assert!(self.client_addrs().is_empty(), "address still configured after release: {:?}", self.client_addrs());
    }

    /// Stop ramboot, which must have logged no error and no NAK, and say how it went.
    fn finish(mut self, test: &str, leased: Ipv4Addr, started: Instant) {
        assert_no_errors_or_naks(&self.stop_ramboot());
        eprintln!("{test}: lease {leased}, renewed and released in {:.1?}", started.elapsed());
    }
}

// ---------------------------------------------------------------------------------
// ISC dhclient

#[test]
fn dhclient_gets_renews_and_releases_a_lease() {
    const TEST: &str = "dhclient_gets_renews_and_releases_a_lease";
    let Some(lab) = Lab::for_test(TEST, &[("dhclient", DHCLIENT)]) else { return };
    let started = Instant::now();
    let mut lab = Segment::new(lab, 'd');
    lab.start_ramboot(DHCLIENT_LEASE_SECS);

    // A private config, lease file, pid file and script: nothing of the host's is used.
    let events_path = lab.path("dhclient.events");
    let script = format!(
        "#!/bin/sh\n\
         # (Un)configure the address like dhclient-script, then record what dhclient handed\n\
         # the script: an event in the file means its address change is done.\n\
         case \"$reason\" in\n\
         BOUND|RENEW|REBIND|REBOOT) ip addr replace \"$new_ip_address/$new_subnet_mask\" dev \"$interface\" ;;\n\
         RELEASE|EXPIRE|STOP|FAIL) [ -z \"$old_ip_address\" ] || ip addr del \"$old_ip_address/$old_subnet_mask\" dev \"$interface\" ;;\n\
         esac\n\
         echo \"reason=$reason ip=$new_ip_address mask=$new_subnet_mask routers=$new_routers \
         dns=$new_domain_name_servers lease=$new_dhcp_lease_time renew=$new_dhcp_renewal_time \
         rebind=$new_dhcp_rebinding_time sid=$new_dhcp_server_identifier bcast=$new_broadcast_address \
         old=$old_ip_address\" >> {events}\n\
         exit 0\n",
        events = events_path.display()
    );
    let conf = "request subnet-mask, broadcast-address, routers, domain-name-servers,\n  \
                dhcp-lease-time, dhcp-renewal-time, dhcp-rebinding-time;\n";
    let dhclient = Dhclient::new(&lab, conf, &script);
    let dh = lab.spawn_client("dhclient", &dhclient.args(&["-d", "-v"], &lab.client_if));
    let dh_log = lab.path("dhclient.log");
    let context = lab.client_context("dhclient");

    // 1. Lease.
    let bound = wait_event(&events_path, ("reason", "BOUND"), Duration::from_secs(30), "dhclient BOUND", &context);
    let expect = format!(
        "mask=255.255.0.0 routers={SERVER_IP} dns={SERVER_IP} lease=12 renew=6 sid={SERVER_IP} bcast=10.66.255.255"
    );
    let (leased, first) = lab.check_bound(&bound, &expect, &context);
    let bound_at = unix_now();
    assert!(
        first.expires_at + 2 >= bound_at + 12 && first.expires_at <= bound_at + 12,
        "expires_at {} should be about bound time {bound_at} + 12",
        first.expires_at
    );

    // 2. Renewal at dhclient's own T1 (6 s, randomised by dhclient to about 4.5-6 s): a
    // unicast REQUEST from the leased address (RENEWING), answered by an ACK.
    let renew =
        wait_event(&events_path, ("reason", "RENEW"), Duration::from_secs(20), "dhclient RENEW at T1", &context);
    assert_eq!(renew["ip"], leased.to_string(), "renewal kept the address: {renew:?}");
    assert_eq!(renew["old"], leased.to_string());
    assert_eq!(renew["lease"], "12");
    let dh_out = read_lossy(&dh_log);
    let unicast = format!("DHCPREQUEST for {leased} on {} to {SERVER_IP} port 67", lab.client_if);
    assert!(dh_out.contains(&unicast), "renewal was not unicast to the server (RENEWING):\n{dh_out}");
    assert!(!dh_out.contains("DHCPNAK"), "server NAKed:\n{dh_out}");
    lab.check_renewed(&first, 3);
    assert!(lab.client_addrs().contains(&format!("{leased}/16")), "client lost its address after renewing");

    // 3. Release: `dhclient -r` stops the running dhclient (pid file) and sends RELEASE.
    let (client_ns, client_if) = (lab.client_ns.clone(), lab.client_if.clone());
    let ended = dhclient.release(&mut lab, (&client_ns, &client_if), leased, dh, &events_path, &context);
    eprintln!("running dhclient ended with {ended} after -r");
    lab.check_released(leased, &context);
    assert!(events(&events_path).iter().any(|e| e["reason"] == "RELEASE"), "{}", context());
    lab.finish(TEST, leased, started);
}

// ---------------------------------------------------------------------------------
// busybox udhcpc

#[test]
fn udhcpc_gets_renews_and_releases_a_lease() {
    const TEST: &str = "udhcpc_gets_renews_and_releases_a_lease";
    let missing = skip_reason(&[]).or_else(|| udhcpc_command().is_none().then(|| "missing udhcpc/busybox".into()));
    if common::skipped(TEST, missing.as_deref()) {
        return;
    }
    let started = Instant::now();
    let mut lab = Segment::new(Lab::new(), 'u');
    lab.start_ramboot(60);

    let events_path = lab.path("udhcpc.events");
    let script = lab.path("udhcpc-script");
    write_executable(
        &script,
        format!(
            "#!/bin/sh\n\
             # (Un)configure the address like simple.script, then record what udhcpc handed\n\
             # the script: an event in the file means its address change is done.\n\
             case \"$1\" in\n\
             bound|renew) ip addr replace \"$ip/$mask\" dev \"$interface\" ;;\n\
             deconfig) ip -4 addr flush dev \"$interface\" ;;\n\
             esac\n\
             echo \"event=$1 ip=$ip subnet=$subnet mask=$mask router=$router dns=$dns lease=$lease \
             serverid=$serverid broadcast=$broadcast\" >> {events}\n\
             exit 0\n",
            events = events_path.display()
        ),
    );
    let mut args = udhcpc_command().unwrap();
    // Foreground, release on exit, bounded retries.
    args.extend(["-f", "-R", "-t", "5", "-T", "2", "-A", "3", "-i"].map(String::from));
    args.push(lab.client_if.clone());
    args.extend(["-s".to_string(), script.display().to_string()]);
    let ud = lab.spawn_client("udhcpc", &args);
    let ud_log = lab.path("udhcpc.log");
    let context = lab.client_context("udhcpc");

    // 1. Lease, with the options the script sees.
    let bound = wait_event(&events_path, ("event", "bound"), Duration::from_secs(30), "udhcpc bound", &context);
    let expect = format!(
        "subnet=255.255.0.0 mask=16 router={SERVER_IP} dns={SERVER_IP} lease=60 serverid={SERVER_IP} \
         broadcast=10.66.255.255"
    );
    let (leased, first) = lab.check_bound(&bound, &expect, &context);

    // 2. Renew now (SIGUSR1): a unicast REQUEST from the leased address. Wait for the
    // clock to pass two whole seconds so the new expiry is visibly later.
    let t0 = unix_now();
    wait_for(Duration::from_secs(5), "two seconds to pass", || (unix_now() >= t0 + 2).then_some(()), String::new);
    kill(lab.pid(ud), Signal::SIGUSR1).unwrap();
    let renew =
        wait_event(&events_path, ("event", "renew"), Duration::from_secs(15), "udhcpc renew after SIGUSR1", &context);
    assert_eq!(renew["ip"], leased.to_string(), "renewal kept the address: {renew:?}");
    assert_eq!((renew["lease"].as_str(), renew["serverid"].as_str()), ("60", SERVER_IP));
    let ud_out = read_lossy(&ud_log);
    assert!(ud_out.contains(&format!("sending renew to server {SERVER_IP}")), "renewal not unicast:\n{ud_out}");
    assert!(!ud_out.to_lowercase().contains("nak"), "server NAKed:\n{ud_out}");
    lab.check_renewed(&first, 2);

    // 3. Release on exit (-R): SIGTERM makes udhcpc unicast a RELEASE and deconfigure.
    let status = lab.stop(ud, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "udhcpc exit: {status:?}\n{}", context());
    let ud_out = read_lossy(&ud_log);
    assert!(ud_out.contains(&format!("unicasting a release of {leased} to {SERVER_IP}")), "{ud_out}");
    lab.check_released(leased, &context);
    let evs = events(&events_path);
    assert_eq!(evs.last().map(|e| e["event"].as_str()), Some("deconfig"), "{}", context());
    lab.finish(TEST, leased, started);
}

// ---------------------------------------------------------------------------------
// perfdhcp: 10,000 clients

/// Clients perfdhcp simulates (distinct MACs), and the exchange rate it offers them at.
/// Leases are group-committed (one fsync per batch), so even the debug build keeps
/// up with far more than this on a disk-backed store; the rate keeps the test short
/// and leaves headroom for a busy CI machine. Speed is measured in bench/dhcp, not here.
const CLIENTS: u64 = 10_000;
const RATE: u64 = 500;
/// DISCOVERs perfdhcp may send past its -n on a busy machine (seen: one).
const SLIP: u64 = 5;

#[test]
fn perfdhcp_10k_clients_get_one_unique_durable_lease_each() {
    const TEST: &str = "perfdhcp_10k_clients_get_one_unique_durable_lease_each";
    let Some(lab) = Lab::for_test(TEST, &[("perfdhcp", PERFDHCP)]) else { return };
    let perfdhcp = tool(PERFDHCP);
    let started = Instant::now();
    // The database on disk (the lab's temp dir), as in production: every ACK is durable
    // before it leaves.
    let mut lab = Segment::new(lab, 'p');
    // Leases outlive the test, so every ACKed lease is still active at the end.
    lab.start_ramboot(3600);
    let client_ip = "10.66.0.2";
    ip_in(&lab.client_ns, &["addr", "add", &format!("{client_ip}/16"), "dev", &lab.client_if]);

    // perfdhcp (DHCPv4) acts as a relay: giaddr = its address, replies come to port 67.
    // Without -s it walks the client MACs sequentially from the base, so -n CLIENTS
    // exchanges are CLIENTS distinct clients. Its rate timer may slip a few DISCOVERs
    // past -n on a busy machine (SLIP): -R leaves MACs for them, so they are new clients
    // too; were the walk to wrap, the first client would rightly be offered its address
    // again, and -u would count that as handed out twice. -d: an answer later than 5 s
    // is a drop (given for both exchanges); -W: after the last DISCOVER, wait 5 s for
    // stragglers.
    // -u: perfdhcp checks that no address is handed to two clients. -x l: list leases.
    let out_path = lab.path("perfdhcp.out");
    let (macs, clients, rate) = ((CLIENTS + SLIP).to_string(), CLIENTS.to_string(), RATE.to_string());
    let args = [&perfdhcp, "-4", "-l", client_ip, "-b", "mac=02:77:00:00:00:00", "-R", &macs, "-n", &clients]
        .into_iter()
        .chain(["-r", &rate, "-d", "5", "-d", "5", "-W", "5000000", "-u", "-x", "el", SERVER_IP])
        .map(String::from)
        .collect::<Vec<_>>();
    let run_started = Instant::now();
    let status = lab.run(&lab.client_ns, &args, &out_path, Duration::from_secs(CLIENTS / RATE + 40));
    let run_time = run_started.elapsed();
    let out = read_lossy(&out_path);
    let report = PerfReport::parse(&out);
    let summary: String =
        out.lines().filter(|l| !l.starts_with("02") && !l.starts_with("01")).collect::<Vec<_>>().join("\n");

    let (offers, acks) = ("DISCOVER-OFFER", "REQUEST-ACK");
    let discovers = report.num(offers, "sent packets");
    let acked = report.num(acks, "received packets");
    let (do_drops, ra_drops) = (report.num(offers, "drops"), report.num(acks, "drops"));
    eprintln!(
        "perfdhcp: {discovers} DISCOVERs at {RATE}/s in {run_time:.1?}; {} OFFERs, {} REQUESTs, {acked} ACKs; \
         drops {do_drops}/{ra_drops}; avg delay {} / {}; exit {status}",
        report.num(offers, "received packets"),
        report.num(acks, "sent packets"),
        report.stats[offers]["avg delay"],
        report.stats[acks]["avg delay"],
    );

    // perfdhcp's own verdict: exit 0 is every exchange completed; 3 is some were not
    // (drops), accepted below only where the kernel saw perfdhcp drop the reply; anything
    // else is an error.
    assert!(matches!(status.code(), Some(0) | Some(3)), "perfdhcp failed: {status}\n{summary}");
    assert_eq!(report.malformed, Some(0), "malformed replies\n{summary}");
    // perfdhcp's rate timer may slip a DISCOVER or two past -n on a busy machine.
    assert!((CLIENTS..=CLIENTS + SLIP).contains(&discovers), "{summary}");
    for exchange in [offers, acks] {
        for key in ["orphans", "rejected leases", "non unique addresses"] {
            assert_eq!(report.num(exchange, key), 0, "{exchange} {key}\n{summary}");
        }
    }
    // ramboot must answer every datagram it received, exactly once (its own queues drop
    // nothing at this rate), and every answer perfdhcp missed must have been dropped by
    // perfdhcp's own socket. Group commit sends a batch's ACKs together, one burst per
    // fsync; on a slow disk a burst can overflow perfdhcp's one receive queue (the
    // default size; it cannot be raised from inside a namespace), which the kernel
    // counts as RcvbufErrors. Real clients each have their own socket, and retransmit.
    let (server_udp, client_udp) = (udp_counters(&lab.server_ns), udp_counters(&lab.client_ns));
    let (received, answered) = (server_udp["InDatagrams"], server_udp["OutDatagrams"]);
    assert_eq!(server_udp["InErrors"], 0, "ramboot's sockets dropped requests: {server_udp:?}");
    assert_eq!(received, answered, "ramboot answered {answered} of the {received} requests it received");
    let unanswered = (discovers - report.num(offers, "received packets")) + (report.num(acks, "sent packets") - acked);
    let lost_at_client = client_udp["RcvbufErrors"];
    assert!(
        unanswered <= lost_at_client,
        "{unanswered} exchanges unanswered but perfdhcp's socket dropped only {lost_at_client} replies\n{summary}"
    );
    if unanswered > 0 {
        eprintln!("NOTE: {unanswered} replies overflowed perfdhcp's receive queue (RcvbufErrors {lost_at_client})");
    }

    // What perfdhcp was ACKed: one lease per client, no address twice, all in the pool.
    // The MAC comes from the echoed client identifier (RFC 6842).
    let acked_leases = &report.leases[acks];
    assert_eq!(acked_leases.len() as u64, acked, "one listed lease per ACK");
    let mut acked_by_mac: HashMap<String, Ipv4Addr> = HashMap::new();
    let mut acked_ips = BTreeSet::new();
    for (mac, ip) in acked_leases {
        assert_eq!(mac.len(), 17, "ACK without the client identifier echoed: {mac:?},{ip}");
        let ip: Ipv4Addr = ip.parse().unwrap_or_else(|_| panic!("yiaddr {ip:?}"));
        assert!(in_range(ip), "{mac} got {ip}, outside the pool");
        assert!(acked_by_mac.insert(mac.clone(), ip).is_none(), "{mac} was ACKed twice");
        assert!(acked_ips.insert(ip), "{ip} was ACKed to two clients");
    }

    // The store after a clean stop: exactly one active lease per client MAC, no address
    // in two active leases, and every lease perfdhcp was ACKed is there (committed
    // before the ACK). A lease whose ACK perfdhcp never saw may also be there, but only
    // as many as there were unanswered REQUESTs.
    let log = lab.stop_ramboot();
    let now = unix_now();
    let all = store_leases(&lab.database_url());
    let active: Vec<&Lease> = all.iter().filter(|l| l.state.as_str() == "active" && l.expires_at > now).collect();
    assert_eq!(store_active_leases(&lab.database_url(), now).len(), active.len());
    let mut stored_by_mac: HashMap<String, Ipv4Addr> = HashMap::new();
    let mut stored_ips = BTreeSet::new();
    for l in &active {
        assert!(stored_by_mac.insert(l.mac.to_string(), l.ip).is_none(), "{} holds two active leases", l.mac);
        assert!(stored_ips.insert(l.ip), "{} is in two active leases", l.ip);
    }
    for (mac, ip) in &acked_by_mac {
        assert_eq!(stored_by_mac.get(mac), Some(ip), "ACKed lease {mac} {ip} is not active in the store");
    }
    let unacked: Vec<_> = stored_by_mac.keys().filter(|m| !acked_by_mac.contains_key(*m)).collect();
    assert!(
        unacked.len() as u64 <= ra_drops,
        "{} active leases were never ACKed to perfdhcp but only {ra_drops} REQUESTs went unanswered: {:?}",
        unacked.len(),
        &unacked[..unacked.len().min(10)]
    );
    assert_eq!(all.len(), active.len(), "nothing was released, declined or expired");
    let naks = log.matches("reply=Nak").count();
    assert_eq!(naks, 0, "ramboot NAKed {naks} requests:\n{}", tail(&log, 20));
    assert!(!log.contains(" ERROR "), "ramboot logged errors:\n{}", tail(&log, 40));
    eprintln!(
        "{TEST}: {} active leases for {} ACKed clients; ramboot answered {:.0} DORA/s; test took {:.1?}",
        active.len(),
        acked,
        // perfdhcp waits 5 s (-W) after its last DISCOVER.
        acked as f64 / (run_time.as_secs_f64() - 5.0).max(1.0),
        started.elapsed()
    );
}
