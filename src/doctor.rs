//! `ramboot doctor`: what stands between this configuration, on this machine, and a
//! node that boots. Each check gives one line (ok, warn or FAIL) and, when something
//! is wrong, how to fix it. It changes nothing: no database is created or migrated,
//! no port is held, and the DHCP probe is one DISCOVER from a made-up MAC (other
//! servers hold an offer for it for a few seconds, nothing more).

use crate::config::Config;
use crate::images::ImageStore;
use crate::store::{Schema, Store};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub what: String,
    /// How to fix it (none for `ok`).
    pub fix: Option<String>,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Finding {
        Finding { level: Level::Ok, what: what.into(), fix: None }
    }
    fn warn(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { level: Level::Warn, what: what.into(), fix: Some(fix.into()) }
    }
    fn fail(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { level: Level::Fail, what: what.into(), fix: Some(fix.into()) }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = match self.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        write!(f, "{tag}  {}", self.what)?;
        if let Some(fix) = &self.fix {
            write!(f, ": {fix}")?;
        }
        Ok(())
    }
}

/// What to check besides the configuration itself.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Send a DHCPDISCOVER on the boot network and listen for other servers.
    pub probe_dhcp: bool,
    /// How long to listen for their offers.
    pub probe_wait: Duration,
}

/// Check the configuration at `path` and this machine; the findings in order.
pub async fn run(path: &Path, options: Options) -> Vec<Finding> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            return vec![Finding::fail(
                format!("configuration {}: {e}", path.display()),
                "fix the file (unknown keys are refused; the position is file:line:col)",
            )]
        }
    };
    let mut findings = vec![Finding::ok(format!("configuration {} is valid", path.display()))];
    findings.extend(interface(&config));
    findings.extend(ports(&config));
    if options.probe_dhcp {
        let cfg = config.clone();
        let wait = options.probe_wait;
        match tokio::task::spawn_blocking(move || other_dhcp_servers(&cfg, wait)).await {
            Ok(found) => findings.extend(found),
            Err(e) => findings.push(Finding::warn(format!("DHCP probe: {e}"), "run doctor again")),
        }
    }
    findings.extend(boot_files(&config));
    findings.extend(profiles(&config));
    findings.push(database(&config).await);
    findings.push(disk(&config.paths.data));
    if let Some(found) = neighbours(&config) {
        findings.push(found);
    }
    findings.push(clock(SystemTime::now(), binary_time()));
    if let Some(iscsi) = &config.iscsi {
        findings.push(iscsi_portal(iscsi.portal).await);
    }
    findings
}

/// Exit status for a report: 0 when nothing failed (warnings allowed), else 1.
pub fn exit_code(findings: &[Finding]) -> i32 {
    i32::from(findings.iter().any(|f| f.level == Level::Fail))
}

// ---------------------------------------------------------------------------------
// The interface

fn interface(config: &Config) -> Vec<Finding> {
    let name = &config.interface;
    let all = nix::ifaddrs::getifaddrs().map(|a| a.collect::<Vec<_>>()).unwrap_or_default();
    let names: BTreeSet<String> = all.iter().map(|a| a.interface_name.clone()).collect();
    if !names.contains(name) {
        let here = names.into_iter().collect::<Vec<_>>().join(", ");
        return vec![Finding::fail(
            format!("interface {name} does not exist (here: {here})"),
            "set `interface:` to the boot network's interface",
        )];
    }
    let addresses: Vec<IpAddr> = all
        .iter()
        .filter(|a| &a.interface_name == name)
        .filter_map(|a| {
            let addr = a.address.as_ref()?;
            addr.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| addr.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .collect();
    let mut found = Vec::new();
    let mut holds = |want: IpAddr, key: &str| {
        if addresses.contains(&want) {
            found.push(Finding::ok(format!("interface {name} holds {key} {want}")));
        } else {
            let has = addresses.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ");
            found.push(Finding::fail(
                format!(
                    "interface {name} does not hold {key} {want} (it has: {})",
                    if has.is_empty() { "none" } else { &has }
                ),
                format!("add it (ip addr add {want}/<prefix> dev {name}) or correct `{key}`"),
            ));
        }
    };
    holds(IpAddr::V4(config.server_address), "server_address");
    if let Some(v6) = &config.dhcp6 {
        holds(IpAddr::V6(v6.server_address), "dhcp6.server_address");
    }
    let state = std::fs::read_to_string(format!("/sys/class/net/{name}/operstate")).unwrap_or_default();
    if state.trim() == "down" {
        found.push(Finding::warn(format!("interface {name} is down"), format!("ip link set {name} up")));
    }
    found
}

// ---------------------------------------------------------------------------------
// Ports

/// A socket in `/proc/net/{udp,tcp}[6]`: its local port and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSocket {
    pub port: u16,
    pub inode: u64,
}

/// The sockets of one `/proc/net/*` table: for TCP only those listening.
pub fn parse_proc_net(text: &str, tcp: bool) -> Vec<ProcSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let port = u16::from_str_radix(cols.get(1)?.rsplit(':').next()?, 16).ok()?;
            // st 0A is LISTEN.
            if tcp && *cols.get(3)? != "0A" {
                return None;
            }
            let inode = cols.get(9)?.parse().ok()?;
            Some(ProcSocket { port, inode })
        })
        .collect()
}

/// Who holds `port` (UDP or a listening TCP one): (pid, program) of each holder
/// this user may see.
fn holders(port: u16, tcp: bool) -> Vec<(u32, String)> {
    let tables: &[&str] = if tcp { &["/proc/net/tcp", "/proc/net/tcp6"] } else { &["/proc/net/udp", "/proc/net/udp6"] };
    let inodes: BTreeSet<u64> = tables
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .flat_map(|text| parse_proc_net(&text, tcp))
        .filter(|s| s.port == port && s.inode != 0)
        .map(|s| s.inode)
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let mut found = BTreeMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else { continue };
            let inode = link.to_str().and_then(|l| l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok());
            if inode.is_some_and(|i| inodes.contains(&i)) {
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                found.insert(pid, comm.trim().to_string());
            }
        }
    }
    if found.is_empty() {
        // Bound, but by a process this user cannot see.
        return vec![(0, "another process".into())];
    }
    found.into_iter().collect()
}

fn ports(config: &Config) -> Vec<Finding> {
    let mut wanted: Vec<(bool, u16, &str)> = Vec::new();
    if !config.dhcp.interfaces.is_empty() {
        wanted.push((false, config.dhcp.port, "DHCP"));
        if config.dhcp.mode == ramboot_core::dhcp::policy::DhcpMode::Proxy {
            wanted.push((false, config.dhcp.proxy_port, "PXE boot server (proxy mode)"));
        }
    }
    if config.dhcp6.is_some() {
        wanted.push((false, crate::dhcp::io6::SERVER_PORT, "DHCPv6"));
    }
    wanted.push((false, config.tftp_listen.port(), "TFTP"));
    wanted.push((true, config.http_listen.port(), "HTTP"));
    wanted
        .into_iter()
        .filter(|(_, port, _)| *port != 0)
        .map(|(tcp, port, what)| {
            let proto = if tcp { "TCP" } else { "UDP" };
            let others: Vec<(u32, String)> = holders(port, tcp);
            let (ours, theirs): (Vec<_>, Vec<_>) = others.into_iter().partition(|(_, comm)| comm == "ramboot");
            if let Some((pid, comm)) = theirs.first() {
                let who = if *pid == 0 { comm.clone() } else { format!("{comm} (pid {pid})") };
                let fix = if port == 67 && !tcp {
                    format!(
                        "stop {comm} on this machine, or let it keep DHCP and run ramboot beside it (dhcp.mode: proxy)"
                    )
                } else {
                    format!("stop {comm}, or move ramboot's {what} to another port")
                };
                Finding::fail(format!("{proto} {port} ({what}) is held by {who}"), fix)
            } else if let Some((pid, _)) = ours.first() {
                Finding::ok(format!("{proto} {port} ({what}) is held by ramboot (pid {pid}): a server is running"))
            } else {
                Finding::ok(format!("{proto} {port} ({what}) is free"))
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Other DHCP servers on the boot network

/// A DHCPDISCOVER from a made-up, locally administered MAC, asking for a broadcast reply.
pub fn probe_discover(xid: u32, mac: [u8; 6]) -> Message {
    let mut msg = Message::default();
    msg.set_opcode(Opcode::BootRequest).set_xid(xid).set_flags(Flags::default().set_broadcast()).set_chaddr(&mac);
    msg.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
    msg.opts_mut().insert(DhcpOption::ParameterRequestList(vec![OptionCode::SubnetMask, OptionCode::Router]));
    msg
}

/// The server that made `reply` an offer to our `xid`: its server id (or source).
pub fn offer_from(reply: &[u8], xid: u32, source: Ipv4Addr) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let msg = Message::decode(&mut Decoder::new(reply)).ok()?;
    if msg.xid() != xid || msg.opts().msg_type() != Some(MessageType::Offer) {
        return None;
    }
    let server = match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(id)) => *id,
        _ => source,
    };
    Some((server, msg.yiaddr()))
}

fn other_dhcp_servers(config: &Config, wait: Duration) -> Vec<Finding> {
    use ramboot_core::dhcp::policy::DhcpMode;
    let mut findings = Vec::new();
    for interface in &config.dhcp.interfaces {
        let offers = match probe(interface, config.dhcp.port, wait) {
            Ok(offers) => offers,
            Err(e) => {
                findings.push(Finding::warn(
                    format!("could not probe {interface} for other DHCP servers: {e}"),
                    "run doctor as root (it binds the DHCP client port on the interface)",
                ));
                continue;
            }
        };
        let others: BTreeMap<Ipv4Addr, Ipv4Addr> =
            offers.into_iter().filter(|(server, _)| *server != config.server_address).collect();
        let list = others.iter().map(|(s, y)| format!("{s} offered {y}")).collect::<Vec<_>>().join("; ");
        findings.push(match (config.dhcp.mode, others.is_empty()) {
            (DhcpMode::Authoritative, true) => Finding::ok(format!("no other DHCP server answers on {interface}")),
            (DhcpMode::Authoritative, false) => Finding::fail(
                format!("another DHCP server answers on {interface}: {list}"),
                "stop it for this network, or keep it and run ramboot beside it (dhcp.mode: proxy)",
            ),
            (DhcpMode::Proxy, false) => Finding::ok(format!("the site's DHCP server answers on {interface} ({list})")),
            (DhcpMode::Proxy, true) => Finding::fail(
                format!("no DHCP server answers on {interface}, and proxy mode gives no addresses"),
                "start the site's DHCP server, or let ramboot give addresses (dhcp.mode: authoritative)",
            ),
        });
    }
    findings
}

/// Broadcast a DISCOVER on `interface` and collect (server, offered address) for `wait`.
fn probe(interface: &str, server_port: u16, wait: Duration) -> std::io::Result<Vec<(Ipv4Addr, Ipv4Addr)>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.bind_device(Some(interface.as_bytes()))?;
    let client_port = server_port.checked_add(1).ok_or_else(|| std::io::Error::other("no client port"))?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, client_port)).into())?;
    let socket: std::net::UdpSocket = socket.into();
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(std::io::Error::other)?;
    let xid = u32::from_be_bytes([random[0], random[1], random[2], random[3]]);
    let mac = [0x02, 0x72, 0x64, random[4], random[5], random[6]];
    let bytes = probe_discover(xid, mac).to_vec().map_err(std::io::Error::other)?;
    socket.send_to(&bytes, (Ipv4Addr::BROADCAST, server_port))?;
    let deadline = Instant::now() + wait;
    let mut offers = Vec::new();
    let mut buf = [0u8; 1500];
    while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        socket.set_read_timeout(Some(left))?;
        match socket.recv_from(&mut buf) {
            Ok((len, SocketAddr::V4(from))) => offers.extend(offer_from(&buf[..len], xid, *from.ip())),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(offers)
}

// ---------------------------------------------------------------------------------
// Files: iPXE binaries, profiles and images

/// The x86 firmwares every fleet has: their binaries missing is a failure; other
/// architectures' only matter if such nodes exist.
fn required_arch(name: &str) -> bool {
    matches!(name, "bios" | "efi-x64" | "efi-bc")
}

fn boot_files(config: &Config) -> Vec<Finding> {
    let dir = &config.paths.ipxe;
    // file → (the architectures that boot it, whether one of them is required)
    let mut files: BTreeMap<&str, (Vec<String>, bool)> = BTreeMap::new();
    for (arch, file) in &config.dhcp.boot_files {
        let name = arch.to_string();
        let entry = files.entry(file.as_str()).or_default();
        entry.1 |= required_arch(&name);
        if !entry.0.contains(&name) {
            entry.0.push(name);
        }
    }
    let (present, missing): (Vec<_>, Vec<_>) = files.into_iter().partition(|(file, _)| dir.join(file).is_file());
    let describe = |list: &[(&str, (Vec<String>, bool))]| {
        list.iter().map(|(file, (archs, _))| format!("{file} ({})", archs.join(", "))).collect::<Vec<_>>().join("; ")
    };
    let (required, optional): (Vec<_>, Vec<_>) = missing.into_iter().partition(|(_, (_, required))| *required);
    let mut findings = Vec::new();
    if required.is_empty() {
        let names = present.iter().map(|(file, _)| *file).collect::<Vec<_>>().join(", ");
        findings.push(Finding::ok(format!("iPXE binaries in {}: {names}", dir.display())));
    } else {
        findings.push(Finding::fail(
            format!("iPXE binaries missing in {}: {}", dir.display(), describe(&required)),
            format!("run ipxe/fetch.sh {} (Debian's ipxe package)", dir.display()),
        ));
    }
    if !optional.is_empty() {
        findings.push(Finding::warn(
            format!("no iPXE binary for other architectures: {}", describe(&optional)),
            "nodes of those architectures cannot boot; add a binary, or ignore this if there are none",
        ));
    }
    findings
}

fn profiles(config: &Config) -> Vec<Finding> {
    let dir = &config.paths.profiles;
    let images = ImageStore::new(config.paths.images());
    let ctx = crate::profiles::Context::for_dir(dir, Some(&images));
    match crate::profiles::load_dir(dir, &ctx) {
        Ok(set) if set.is_empty() => vec![Finding::warn(
            format!("no profiles in {}", dir.display()),
            "nodes boot into discovery until one is written (see profiles/ in the source)",
        )],
        Ok(set) => {
            let mut found =
                vec![Finding::ok(format!("{} profiles valid in {}, their images built", set.len(), dir.display()))];
            if let Some(default) = &config.default_profile {
                if set.get(default).is_none() {
                    found.push(Finding::fail(
                        format!("default_profile {default} is not among the profiles"),
                        "write it, or correct `default_profile`",
                    ));
                }
            }
            found
        }
        Err(errors) => errors
            .0
            .iter()
            .map(|e| {
                Finding::fail(
                    e.to_string(),
                    "fix the profile (a missing image: ramboot images build <recipe> --data <data dir>)",
                )
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------
// Database, disk, clock, iSCSI

async fn database(config: &Config) -> Finding {
    match Store::schema(&config.database_url, config.database_password_file.as_deref()).await {
        Ok(Schema::NotCreated) => Finding::ok(format!("database {} is created at first start", config.database_url)),
        Ok(Schema::At { at, latest }) if at == latest => {
            Finding::ok(format!("database {} is reachable and migrated (schema {at})", config.database_url))
        }
        Ok(Schema::At { at, latest }) if at < latest => Finding::ok(format!(
            "database {} is reachable; the server migrates it at start (schema {at} to {latest})",
            config.database_url
        )),
        Ok(Schema::At { at, latest }) => Finding::fail(
            format!("database {} has schema {at}, newer than this ramboot knows ({latest})", config.database_url),
            "run the ramboot that migrated it, or restore the backup taken before that upgrade",
        ),
        Err(e) => Finding::fail(
            format!("database {}: {e}", config.database_url),
            "check `database:` (and the password file, or PGPASSWORD) and that the server runs",
        ),
    }
}

/// Below this much free space the image store and the database are at risk.
const DISK_FAIL_BYTES: u64 = 1 << 30;
const DISK_WARN_BYTES: u64 = 8 << 30;

fn disk(data: &Path) -> Finding {
    // The data dir may not exist yet: the file system it will be on.
    let mut at: PathBuf = data.to_path_buf();
    while !at.exists() {
        match at.parent() {
            Some(p) => at = p.to_path_buf(),
            None => break,
        }
    }
    match nix::sys::statvfs::statvfs(&at) {
        Ok(fs) => {
            let free = fs.blocks_available().saturating_mul(fs.fragment_size());
            judge_disk(data, free)
        }
        Err(e) => Finding::warn(format!("cannot read free space under {}: {e}", data.display()), "check the path"),
    }
}

pub fn judge_disk(data: &Path, free: u64) -> Finding {
    let shown = ramboot_proto::human_bytes(free);
    if free < DISK_FAIL_BYTES {
        Finding::fail(
            format!("{shown} free under {}", data.display()),
            "free space (old images: ramboot images ls) or move `paths.data`",
        )
    } else if free < DISK_WARN_BYTES {
        Finding::warn(format!("{shown} free under {}", data.display()), "images need room; free some soon")
    } else {
        Finding::ok(format!("{shown} free under {}", data.display()))
    }
}

/// Whether the kernel keeps a neighbour (ARP) entry for every node on the server's
/// own link. None when no DHCP range is on that link (proxy mode, relays only).
fn neighbours(config: &Config) -> Option<Finding> {
    let on_link: u64 = config
        .dhcp
        .subnets
        .iter()
        .filter(|s| s.net.contains(&config.server_address))
        .flat_map(|s| &s.ranges)
        .map(|&(first, last)| u64::from(u32::from(last).saturating_sub(u32::from(first))) + 1)
        .sum();
    if on_link == 0 {
        return None;
    }
    let limit = std::fs::read_to_string("/proc/sys/net/ipv4/neigh/default/gc_thresh3").ok()?.trim().parse().ok()?;
    Some(judge_neighbours(on_link, limit))
}

/// Past `gc_thresh3` entries Linux refuses new neighbours ("neighbor table
/// overflow"): in a storm the nodes beyond it get no SYN-ACK, no TFTP block, and
/// time out. Nodes behind a relay take one entry (the router) in all.
pub fn judge_neighbours(on_link: u64, gc_thresh3: u64) -> Finding {
    if on_link < gc_thresh3 {
        return Finding::ok(format!(
            "the neighbour table holds all {on_link} on-link DHCP addresses (net.ipv4.neigh.default.gc_thresh3 {gc_thresh3})"
        ));
    }
    let want = (on_link + 1024).next_power_of_two();
    Finding::warn(
        format!(
            "{on_link} DHCP addresses are on this server's link, but the kernel keeps neighbour entries for \
             {gc_thresh3} (net.ipv4.neigh.default.gc_thresh3): in a boot storm the nodes past it time out"
        ),
        format!(
            "sysctl -w net.ipv4.neigh.default.gc_thresh1={} net.ipv4.neigh.default.gc_thresh2={} \
             net.ipv4.neigh.default.gc_thresh3={want} (and the same in /etc/sysctl.d/)",
            want / 4,
            want / 2
        ),
    )
}

/// When this binary was written: a floor for a sane clock.
fn binary_time() -> Option<SystemTime> {
    std::env::current_exe().ok()?.metadata().ok()?.modified().ok()
}

/// A clock behind the time this binary was built or installed is wrong (leases,
/// tokens and TLS certificates all depend on it).
pub fn clock(now: SystemTime, floor: Option<SystemTime>) -> Finding {
    let slack = Duration::from_secs(24 * 3600);
    match floor {
        Some(floor) if now + slack < floor => Finding::fail(
            "the clock is behind the date this ramboot was installed",
            "set the time (timedatectl set-ntp true, or chrony/ntpsec): leases and tokens expire by it",
        ),
        _ => Finding::ok("the clock is sane"),
    }
}

async fn iscsi_portal(portal: SocketAddr) -> Finding {
    match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(portal)).await {
        Ok(Ok(_)) => Finding::ok(format!("iSCSI target answers at {portal}")),
        Ok(Err(e)) => Finding::fail(
            format!("iSCSI target at {portal}: {e}"),
            "start tgtd (tgt package) listening there, or correct `iscsi.portal`",
        ),
        Err(_) => Finding::fail(format!("iSCSI target at {portal}: no answer in 2 s"), "check the portal and firewall"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tables_give_ports_and_inodes() {
        let udp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                   \x20 12: 00000000:0043 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0 0\n";
        assert_eq!(parse_proc_net(udp, false), [ProcSocket { port: 67, inode: 4242 }]);
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                   \x20  0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1\n\
                   \x20  1: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 78 1\n";
        assert_eq!(parse_proc_net(tcp, true), [ProcSocket { port: 8080, inode: 77 }], "listening sockets only");
        assert!(parse_proc_net("header\ngarbage line\n", false).is_empty());
    }

    #[test]
    fn an_offer_names_its_server() {
        let mut offer = probe_discover(7, [2, 0, 0, 0, 0, 1]);
        offer.set_opcode(Opcode::BootReply).set_yiaddr(Ipv4Addr::new(10, 0, 0, 50));
        offer.opts_mut().insert(DhcpOption::MessageType(MessageType::Offer));
        offer.opts_mut().insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 2)));
        let bytes = offer.to_vec().unwrap();
        let from = Ipv4Addr::new(10, 0, 0, 9);
        assert_eq!(offer_from(&bytes, 7, from), Some((Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 50))));
        assert_eq!(offer_from(&bytes, 8, from), None, "another transaction");
        assert_eq!(offer_from(b"junk", 7, from), None);
    }

    #[test]
    fn a_neighbour_table_smaller_than_the_on_link_fleet_is_named_with_its_sysctl() {
        assert_eq!(judge_neighbours(101, 1024).level, Level::Ok);
        // The lab's storm bench: 10,240 addresses on one /16 against Linux's default.
        let short = judge_neighbours(10_240, 1024);
        assert_eq!(short.level, Level::Warn);
        assert!(short.what.contains("10240 DHCP addresses") && short.what.contains("1024"), "{}", short.what);
        let fix = short.fix.unwrap();
        assert!(fix.contains("gc_thresh3=16384") && fix.contains("gc_thresh2=8192"), "{fix}");
    }

    #[test]
    fn disk_and_clock_judgements() {
        let data = Path::new("/var/lib/ramboot");
        assert_eq!(judge_disk(data, 100 << 20).level, Level::Fail);
        assert_eq!(judge_disk(data, 4 << 30).level, Level::Warn);
        assert_eq!(judge_disk(data, 100 << 30).level, Level::Ok);
        let built = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        assert_eq!(clock(built + Duration::from_secs(60), Some(built)).level, Level::Ok);
        assert_eq!(clock(SystemTime::UNIX_EPOCH + Duration::from_secs(86_400), Some(built)).level, Level::Fail);
        assert_eq!(clock(SystemTime::UNIX_EPOCH, None).level, Level::Ok, "no floor known");
    }

    #[test]
    fn a_report_fails_only_on_a_failure() {
        let ok = Finding::ok("a");
        let warn = Finding::warn("b", "c");
        assert_eq!(exit_code(&[ok.clone(), warn.clone()]), 0);
        assert_eq!(exit_code(&[ok, warn, Finding::fail("d", "e")]), 1);
        assert_eq!(Finding::fail("port 67 is held", "stop it").to_string(), "FAIL  port 67 is held: stop it");
    }
}
