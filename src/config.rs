//! Server configuration (`ramboot.yaml`).
//!
//! Two types, as in hickory-dns and dora: `WireConfig` is exactly what the operator
//! wrote (unknown keys refused), `Config` is the validated form the server runs on.
//! Relative paths are resolved against the config file's directory.

use crate::yaml::{self, SourceError, YamlError};
use ipnet::Ipv4Net;
use ramboot_core::dhcp::classify::Arch;
pub use ramboot_core::dhcp::ipxe::{ForeignIpxe, IpxePolicy};
pub use ramboot_core::dhcp::policy::{
    default_boot_files, default_signed_boot_files, DhcpMode, DhcpPolicy, SubnetConfig, UnknownClients,
};
pub use ramboot_core::lifecycle::Lifecycle;
use ramboot_core::profile::BootChain;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Yaml(#[from] YamlError),
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireConfig {
    /// The interface DHCP listens on (replies leave through it).
    interface: String,
    /// The address nodes reach this server on (DHCP server id, TFTP, HTTP URLs).
    server_address: Ipv4Addr,
    #[serde(default)]
    http: WireHttp,
    #[serde(default)]
    tftp: WireTftp,
    dhcp: WireDhcp,
    #[serde(default)]
    paths: WirePaths,
    /// `sqlite://…` (default `sqlite://<data>/ramboot.db`) or `postgres://user@host/db`
    /// (a unix socket: `postgres:///db?host=/var/run/postgresql`), never with a password.
    database: Option<String>,
    /// PostgreSQL's password, on the first line of a file only this user can read
    /// (else `PGPASSWORD` from the environment, or none).
    database_password_file: Option<PathBuf>,
    /// Profile for nodes that have none assigned and match no selector. Without
    /// one, such nodes boot into discovery and wait for an assignment.
    default_profile: Option<String>,
    /// Stage-one set a discovery boot runs (nodes with no profile yet).
    #[serde(default = "default_discovery_stage1")]
    discovery_stage1: String,
    /// YAML map of secret name → value, for `secret("name")` in overlay templates.
    secrets: Option<PathBuf>,
    #[serde(default)]
    lifecycle: WireLifecycle,
    /// iSCSI VM disks; absent: volumes are not managed by this server.
    iscsi: Option<WireIscsi>,
    /// Answer IPv6 router solicitations with an empty RA (see `ra`): saves iPXE's
    /// ~13 s IPv6 wait on boot networks that have no IPv6 router.
    #[serde(default)]
    ipv6_ra: bool,
    /// DHCPv6 for IPv6 boot networks (see `WireDhcp6`); absent: none.
    dhcp6: Option<WireDhcp6>,
    #[serde(default)]
    retention: WireRetention,
    #[serde(default)]
    cluster: WireCluster,
    /// Hooks a rollout may run before a node's reboot (drain) and after it is
    /// ready (undrain), by name. Defined here, not in the API: a token may pick a
    /// hook, never write a command.
    #[serde(default)]
    hooks: BTreeMap<String, WireHook>,
    /// Power over Redfish: the poller's interval and concurrency.
    #[serde(default)]
    bmc: crate::bmc::service::WirePowerSettings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireHook {
    /// A program and its arguments (no shell), run with the node in its environment.
    command: Option<Vec<String>>,
    /// Or a URL to POST the node to (JSON); any 2xx is success.
    webhook: Option<String>,
    /// How long it may take before it counts as failed.
    #[serde(default = "default_hook_timeout_secs")]
    timeout_secs: u64,
}

fn default_hook_timeout_secs() -> u64 {
    600
}

/// What a rollout hook runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookAction {
    Command(Vec<String>),
    Webhook(String),
}

/// A named rollout hook (`hooks:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub action: HookAction,
    pub timeout: Duration,
}

fn hooks_from_wire(wire: BTreeMap<String, WireHook>) -> Result<BTreeMap<String, Hook>, String> {
    wire.into_iter()
        .map(|(name, h)| {
            let action = match (h.command, h.webhook) {
                (Some(argv), None) if !argv.is_empty() && !argv[0].is_empty() => HookAction::Command(argv),
                (None, Some(url)) if url.starts_with("http://") || url.starts_with("https://") => {
                    HookAction::Webhook(url)
                }
                _ => {
                    return Err(format!(
                        "hooks.{name}: give either `command: [program, args...]` or `webhook: http(s)://...`"
                    ))
                }
            };
            if !(1..=86_400).contains(&h.timeout_secs) {
                return Err(format!("hooks.{name}.timeout_secs must be between 1 and 86400"));
            }
            Ok((name, Hook { action, timeout: Duration::from_secs(h.timeout_secs) }))
        })
        .collect()
}

/// `cluster:` the other ramboot servers that share this one's PostgreSQL database
/// and answer the same boot network (see docs/design/two-servers.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireCluster {
    /// This server's name in events and logs (default: its `server_address`).
    name: Option<String>,
    /// The other servers' boot URLs as nodes reach them (`http://10.0.0.2:8080`):
    /// boot scripts and stage one fall back to them, blobs are fetched from them,
    /// and each server offers addresses from its own share of every range.
    #[serde(default)]
    peers: Vec<String>,
    /// How often to ask the peers for images this server lacks (`images::sync`).
    image_sync_secs: Option<u64>,
}

/// `cluster.image_sync_secs` when unset.
pub const DEFAULT_IMAGE_SYNC: Duration = Duration::from_secs(30);

/// `retention:` how long history is kept before the pruning task deletes it; 0 keeps
/// it for ever. Nodes, and each node's current boot with its events, are never pruned.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct WireRetention {
    events_days: u32,
    finished_boots_days: u32,
}

impl Default for WireRetention {
    fn default() -> Self {
        WireRetention { events_days: 30, finished_boots_days: 90 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireHttp {
    #[serde(default = "default_http_listen")]
    listen: SocketAddr,
    /// Open connections one address may hold; more are answered 503 and closed.
    /// Nodes use one or two at a time; the fleet simulator drives many nodes from
    /// one address and needs this raised.
    #[serde(default = "default_http_per_source")]
    max_connections_per_source: usize,
    /// Open admin event streams (`/api/v1/events/stream`), in all and per address.
    #[serde(default = "default_event_streams")]
    max_event_streams: usize,
    #[serde(default = "default_event_streams_per_source")]
    max_event_streams_per_source: usize,
}

impl Default for WireHttp {
    fn default() -> Self {
        Self {
            listen: default_http_listen(),
            max_connections_per_source: default_http_per_source(),
            max_event_streams: default_event_streams(),
            max_event_streams_per_source: default_event_streams_per_source(),
        }
    }
}

fn default_http_per_source() -> usize {
    HttpLimits::default().max_connections_per_source
}

fn default_event_streams() -> usize {
    HttpLimits::default().max_event_streams
}

fn default_event_streams_per_source() -> usize {
    HttpLimits::default().max_event_streams_per_source
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireTftp {
    #[serde(default = "default_tftp_listen")]
    listen: SocketAddr,
    /// Concurrent sessions in all, and per client address (a PXE ROM reads one
    /// file at a time; the fleet simulator reads for many nodes from one address).
    #[serde(default = "default_tftp_sessions")]
    max_sessions: usize,
    #[serde(default = "default_tftp_per_source")]
    max_sessions_per_source: usize,
    /// A session still running after this long is ended with an ERROR. 120 s moves
    /// a 1 MB iPXE binary even at 512-byte lock-step blocks over a slow link.
    #[serde(default = "default_tftp_session_secs")]
    max_session_secs: u64,
    /// A client's `timeout` option (RFC 2349) outside these bounds is declined and
    /// the server's 1 s is used.
    #[serde(default = "default_tftp_min_timeout")]
    min_timeout_secs: u8,
    #[serde(default = "default_tftp_max_timeout")]
    max_timeout_secs: u8,
    /// The largest block (RFC 2348) any client gets. Each session is further capped
    /// to its link's MTU − 32 (IP, UDP, TFTP headers); set this lower when the path
    /// to the nodes is narrower than the server's interface (an overlay or tunnel
    /// beyond it): UNDI ROMs drop IP fragments. 1468 fills one 1500-byte frame.
    #[serde(default = "default_tftp_max_blksize")]
    max_blksize: u16,
    /// Sessions that run on a thread each (the lowest per-block turnaround); past
    /// this many at once, sessions share the TFTP runtime's one thread, so a boot
    /// storm's thousands cannot crowd DHCP and HTTP off the CPU. 0: all share it.
    #[serde(default = "default_tftp_threaded_sessions")]
    threaded_sessions: usize,
}

impl Default for WireTftp {
    fn default() -> Self {
        Self {
            listen: default_tftp_listen(),
            max_sessions: default_tftp_sessions(),
            max_sessions_per_source: default_tftp_per_source(),
            max_session_secs: default_tftp_session_secs(),
            min_timeout_secs: default_tftp_min_timeout(),
            max_timeout_secs: default_tftp_max_timeout(),
            max_blksize: default_tftp_max_blksize(),
            threaded_sessions: default_tftp_threaded_sessions(),
        }
    }
}

fn default_tftp_sessions() -> usize {
    TftpLimits::default().max_sessions
}

fn default_tftp_per_source() -> usize {
    TftpLimits::default().max_sessions_per_source
}

fn default_tftp_session_secs() -> u64 {
    TftpLimits::default().max_session.as_secs()
}

fn default_tftp_min_timeout() -> u8 {
    TftpLimits::default().session.min_timeout_secs
}

fn default_tftp_max_timeout() -> u8 {
    TftpLimits::default().session.max_timeout_secs
}

fn default_tftp_max_blksize() -> u16 {
    TftpLimits::default().session.max_blksize
}

fn default_tftp_threaded_sessions() -> usize {
    TftpLimits::default().threaded_sessions
}

impl WireTftp {
    fn limits(&self) -> Result<TftpLimits, String> {
        if self.max_sessions == 0 || self.max_sessions_per_source == 0 {
            return Err("tftp.max_sessions and tftp.max_sessions_per_source must be at least 1".into());
        }
        if self.max_session_secs < 10 {
            return Err("tftp.max_session_secs must be at least 10".into());
        }
        if self.min_timeout_secs == 0 || self.min_timeout_secs > self.max_timeout_secs {
            return Err(format!(
                "tftp: min_timeout_secs ({}) must be at least 1 and at most max_timeout_secs ({})",
                self.min_timeout_secs, self.max_timeout_secs
            ));
        }
        let blksize = ramboot_core::tftp::session::BLKSIZE_RANGE;
        if !blksize.contains(&self.max_blksize) {
            return Err(format!(
                "tftp.max_blksize ({}) must be within {}..={} (RFC 2348)",
                self.max_blksize,
                blksize.start(),
                blksize.end()
            ));
        }
        let defaults = TftpLimits::default();
        Ok(TftpLimits {
            session: ramboot_core::tftp::session::Limits {
                max_blksize: self.max_blksize,
                min_timeout_secs: self.min_timeout_secs,
                max_timeout_secs: self.max_timeout_secs,
                ..defaults.session
            },
            max_sessions: self.max_sessions,
            max_sessions_per_source: self.max_sessions_per_source,
            max_session: Duration::from_secs(self.max_session_secs),
            // More could never run at once.
            threaded_sessions: self.threaded_sessions.min(self.max_sessions),
        })
    }
}

fn default_tftp_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 69))
}

/// `dhcp:`. Keys that describe a subnet (router, dns, domain, lease time, unknown
/// clients) set the default for every entry of `subnets`; `subnet` + `range` at
/// this level declare one subnet inline (the common single-segment case).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireDhcp {
    #[serde(default)]
    mode: DhcpMode,
    /// `false`: answer no DHCPv4 at all (an IPv6-only boot network, with `dhcp6`).
    #[serde(default = "default_true")]
    ipv4: bool,
    #[serde(default = "default_dhcp_port")]
    port: u16,
    /// PXE's BINL port, answered in proxy mode (PXE 2.1 §2.2.1).
    #[serde(default = "default_proxy_port")]
    proxy_port: u16,
    /// Interfaces DHCP listens on; default: the top-level `interface`.
    #[serde(default)]
    interfaces: Vec<String>,
    #[serde(default = "default_offer_hold_secs")]
    offer_hold_secs: u32,
    /// How long an address a client DECLINEd (someone else answers ARP for it) is
    /// kept out of the pool.
    #[serde(default = "default_quarantine_secs")]
    decline_quarantine_secs: u32,
    /// Group commit under load: when the last lease commit carried more than one
    /// lease, the committer waits this long (µs) before gathering the next batch, so
    /// one fsync covers more ACKs. A lone client never waits. 0 turns it off.
    #[serde(default = "default_commit_delay_us")]
    commit_delay_us: u32,
    /// Architecture (name such as `efi-x64`, or option-93 code) → boot file; merged
    /// over the built-in map.
    #[serde(default)]
    boot_files: std::collections::BTreeMap<String, String>,
    /// Architecture → the signed chain's first binary (shim), for nodes on
    /// `boot_chain: signed`; merged over the built-in map.
    #[serde(default)]
    signed_boot_files: std::collections::BTreeMap<String, String>,
    /// The boot chain of nodes whose profile names none, and of unknown clients.
    #[serde(default)]
    boot_chain: BootChain,
    #[serde(default)]
    subnets: Vec<WireSubnet>,
    /// Relays (an address, or a network in CIDR) whose link selection (option 82
    /// sub-option 5, option 118) and agent information are believed: both the
    /// packet's giaddr and its UDP source must be listed. Relays not listed still
    /// route by giaddr.
    #[serde(default)]
    trusted_relays: Vec<String>,
    /// Which iPXE runs the boot script: see `WireIpxe`.
    #[serde(default)]
    ipxe: WireIpxe,
    // The inline subnet, and defaults for `subnets` (see `WireSubnet`). Spelled out,
    // not `#[serde(flatten)]`, which would lose unknown-key refusal and positions.
    subnet: Option<Ipv4Net>,
    range: Option<[Ipv4Addr; 2]>,
    ranges: Option<Vec<[Ipv4Addr; 2]>>,
    router: Option<Ipv4Addr>,
    dns: Option<Vec<Ipv4Addr>>,
    domain: Option<String>,
    lease_time_secs: Option<u32>,
    unknown_clients: Option<UnknownClients>,
}

impl WireDhcp {
    fn defaults(&self) -> WireSubnet {
        WireSubnet {
            subnet: self.subnet,
            range: self.range,
            ranges: self.ranges.clone(),
            router: self.router,
            dns: self.dns.clone(),
            domain: self.domain.clone(),
            lease_time_secs: self.lease_time_secs,
            unknown_clients: self.unknown_clients,
        }
    }
}

/// `dhcp6:` netboot over IPv6 on the top-level `interface`: DHCPv6 (UDP 547) hands
/// out addresses from `range` and the boot file as a URL (option 59); router
/// advertisements announce `prefix` as on-link with the M and O flags, so clients
/// ask DHCPv6 for their address (no SLAAC: the boot path's trust rules want the
/// address DHCP bound to the node). HTTP also listens on IPv6.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireDhcp6 {
    /// The address nodes reach this server on over IPv6 (on `interface`).
    server_address: Ipv6Addr,
    /// The boot network's on-link prefix, announced in router advertisements.
    prefix: ipnet::Ipv6Net,
    /// Addresses handed out, inclusive, inside `prefix`.
    range: [Ipv6Addr; 2],
    #[serde(default = "default_lease_secs")]
    lease_time_secs: u32,
    /// Answer a Solicit that asks for Rapid Commit with a Reply at once.
    #[serde(default = "default_true")]
    rapid_commit: bool,
    #[serde(default)]
    dns: Vec<Ipv6Addr>,
}

fn default_true() -> bool {
    true
}

/// Validated `dhcp6:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dhcp6Config {
    pub server_address: Ipv6Addr,
    pub prefix: ipnet::Ipv6Net,
    pub range: (Ipv6Addr, Ipv6Addr),
    pub lease_time: Duration,
    pub rapid_commit: bool,
    pub dns: Vec<Ipv6Addr>,
}

fn dhcp6_from_wire(w: WireDhcp6) -> Result<Dhcp6Config, String> {
    let [first, last] = w.range;
    if w.prefix.trunc() != w.prefix {
        return Err(format!("dhcp6.prefix: {} has host bits set (did you mean {}?)", w.prefix, w.prefix.trunc()));
    }
    if !w.prefix.contains(&first) || !w.prefix.contains(&last) {
        return Err(format!("dhcp6.range: {first}-{last} is not inside the prefix {}", w.prefix));
    }
    if first > last {
        return Err(format!("dhcp6.range starts after it ends ({first} > {last})"));
    }
    if !w.prefix.contains(&w.server_address) {
        return Err(format!("dhcp6.server_address {} is not inside the prefix {}", w.server_address, w.prefix));
    }
    if (first..=last).contains(&w.server_address) {
        return Err(format!("dhcp6.server_address {} is inside the range it hands out", w.server_address));
    }
    if w.lease_time_secs < 60 {
        return Err("dhcp6.lease_time_secs must be at least 60".into());
    }
    Ok(Dhcp6Config {
        server_address: w.server_address,
        prefix: w.prefix,
        range: (first, last),
        lease_time: Duration::from_secs(u64::from(w.lease_time_secs)),
        rapid_commit: w.rapid_commit,
        dns: w.dns,
    })
}

/// `dhcp.ipxe`: an iPXE that is not ramboot's own build loads ramboot's first
/// (`foreign: chain`, the default) or runs the script as it is (`foreign: script`).
/// `user_class` is what marks ramboot's own iPXE: ramboot plants it in the replies
/// that hand its iPXE over, and an iPXE built with `set user-class <it>` sends it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireIpxe {
    user_class: Option<String>,
    foreign: Option<ForeignIpxe>,
}

impl WireIpxe {
    fn policy(self) -> Result<IpxePolicy, String> {
        let defaults = IpxePolicy::default();
        let user_class = self.user_class.unwrap_or(defaults.user_class);
        if user_class.is_empty() || user_class.len() > 64 || !user_class.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "dhcp.ipxe.user_class: {user_class:?} must be 1 to 64 printable ASCII characters without spaces"
            ));
        }
        if user_class == "iPXE" {
            return Err("dhcp.ipxe.user_class: \"iPXE\" is what every iPXE sends; to let any iPXE run the \
                        script, set dhcp.ipxe.foreign: script"
                .into());
        }
        Ok(IpxePolicy { user_class, foreign: self.foreign.unwrap_or(defaults.foreign), ..defaults })
    }
}

/// One subnet; in `dhcp:` itself every field is optional and acts as a default.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSubnet {
    subnet: Option<Ipv4Net>,
    /// First and last address of one dynamic range, inclusive.
    range: Option<[Ipv4Addr; 2]>,
    /// Several dynamic ranges.
    ranges: Option<Vec<[Ipv4Addr; 2]>>,
    router: Option<Ipv4Addr>,
    dns: Option<Vec<Ipv4Addr>>,
    domain: Option<String>,
    lease_time_secs: Option<u32>,
    unknown_clients: Option<UnknownClients>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireIscsi {
    /// Where nodes reach the target, e.g. `192.0.2.1:3260`.
    portal: SocketAddr,
    /// Target and initiator IQNs are `<prefix>:target-<node id>`, `<prefix>:node-<node id>`.
    #[serde(default = "default_iqn_prefix")]
    iqn_prefix: String,
    /// A private tgtd control port (tests, the lab); production uses tgt.service's.
    tgt_control_port: Option<u16>,
    /// Backing files; default `<data>/volumes`.
    volumes_dir: Option<PathBuf>,
}

fn default_iqn_prefix() -> String {
    "iqn.2026-11.io.ramboot".into()
}

fn default_discovery_stage1() -> String {
    "stage1".into()
}

/// How long each boot phase may take, and how failed boots are retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct WireLifecycle {
    booting_timeout_secs: u64,
    stage1_timeout_secs: u64,
    loading_timeout_secs: u64,
    handoff_timeout_secs: u64,
    max_retries: u32,
    retry_backoff_secs: u32,
    retry_backoff_max_secs: u32,
}

impl Default for WireLifecycle {
    fn default() -> Self {
        WireLifecycle {
            booting_timeout_secs: 300,
            stage1_timeout_secs: 300,
            loading_timeout_secs: 1800,
            handoff_timeout_secs: 600,
            max_retries: 5,
            retry_backoff_secs: 15,
            retry_backoff_max_secs: 600,
        }
    }
}

fn default_lease_secs() -> u32 {
    3600
}

fn default_dhcp_port() -> u16 {
    67
}

fn default_proxy_port() -> u16 {
    4011
}

fn default_offer_hold_secs() -> u32 {
    60
}

/// bench/dhcp: at 8,000 DORA/s a 1 ms delay cut ramboot's CPU per exchange by a
/// quarter for 1 ms more ACK latency; at low rates batches are single and nothing waits.
fn default_commit_delay_us() -> u32 {
    1000
}

/// More than this and a lease ACK waits longer than a DHCP client's patience warrants.
const MAX_COMMIT_DELAY_US: u32 = 100_000;

fn default_quarantine_secs() -> u32 {
    600
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePaths {
    profiles: Option<PathBuf>,
    inventory: Option<PathBuf>,
    ipxe: Option<PathBuf>,
    data: Option<PathBuf>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub interface: String,
    pub server_address: Ipv4Addr,
    pub http_listen: SocketAddr,
    pub http_limits: HttpLimits,
    pub tftp_listen: SocketAddr,
    pub tftp_limits: TftpLimits,
    pub dhcp: DhcpConfig,
    pub paths: Paths,
    pub database_url: String,
    pub database_password_file: Option<PathBuf>,
    pub default_profile: Option<String>,
    pub discovery_stage1: String,
    pub secrets: Option<PathBuf>,
    pub lifecycle: Lifecycle,
    pub iscsi: Option<IscsiConfig>,
    pub ipv6_ra: bool,
    pub dhcp6: Option<Dhcp6Config>,
    pub retention: crate::retention::Retention,
    pub cluster: Cluster,
    /// Rollout hooks by name.
    pub hooks: BTreeMap<String, Hook>,
    pub bmc: crate::bmc::service::PowerSettings,
}

/// This server among those sharing one database (`cluster:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Named in events and logs: which server served a boot.
    pub name: String,
    /// The other servers' HTTP addresses on the boot network, as configured.
    pub peers: Vec<SocketAddrV4>,
    /// The part of every range this server offers from first.
    pub share: ramboot_core::dhcp::pool::Share,
    /// How often image sync asks the peers for images this server lacks.
    pub image_sync: Duration,
}

impl Cluster {
    /// This server as the author of changes it makes itself (audit trail).
    pub fn actor(&self) -> crate::store::Actor {
        crate::store::Actor::Server { name: self.name.clone() }
    }

    /// Every server's boot URL, this one's first: where nodes may fetch from.
    pub fn boot_urls(&self, own: &str) -> Vec<String> {
        std::iter::once(own.to_string()).chain(self.peers.iter().map(|p| format!("http://{p}"))).collect()
    }

    /// Read `cluster:`: a peer is `http://<IPv4>:<port>` (nodes reach it by
    /// address, without DNS), never this server itself, and listed once. The share
    /// is this server's position among all of them, sorted, so every server
    /// computes the same split from the same list.
    fn from_wire(wire: WireCluster, own: SocketAddrV4, sqlite: bool) -> Result<Cluster, String> {
        let mut peers = Vec::new();
        for text in &wire.peers {
            let addr = text
                .strip_prefix("http://")
                .map(|rest| rest.trim_end_matches('/'))
                .and_then(|hostport| hostport.parse::<SocketAddrV4>().ok())
                .ok_or_else(|| format!("cluster.peers: {text:?} is not http://<IPv4 address>:<port>"))?;
            if addr == own {
                return Err(format!("cluster.peers: {text:?} is this server (server_address and http.listen's port)"));
            }
            if peers.contains(&addr) {
                return Err(format!("cluster.peers: {text:?} is listed twice"));
            }
            peers.push(addr);
        }
        if sqlite && !peers.is_empty() {
            return Err("cluster.peers: servers share leases through one PostgreSQL database; \
                        set `database: postgres://…` (a SQLite file belongs to one server)"
                .into());
        }
        let name = wire.name.unwrap_or_else(|| own.ip().to_string());
        if !valid_server_name(&name) {
            return Err(format!("cluster.name {name:?}: 1-63 letters, digits, '.', '-' or '_'"));
        }
        let image_sync = match wire.image_sync_secs {
            None => DEFAULT_IMAGE_SYNC,
            Some(secs @ 1..=86_400) => Duration::from_secs(secs),
            Some(secs) => return Err(format!("cluster.image_sync_secs {secs}: between 1 and 86400")),
        };
        let mut all: Vec<SocketAddrV4> = peers.iter().copied().chain([own]).collect();
        all.sort();
        let index = all.iter().position(|a| *a == own).unwrap_or(0);
        let share = ramboot_core::dhcp::pool::Share { index: index as u32, of: all.len() as u32 };
        Ok(Cluster { name, peers, share, image_sync })
    }
}

fn valid_server_name(name: &str) -> bool {
    (1..=63).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

pub use crate::tftp::TftpLimits;

/// Per-source and overall caps of the HTTP service (`http:`); the accept loop's
/// own timeouts are `http::server::ServerLimits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections_per_source: usize,
    pub max_event_streams: usize,
    pub max_event_streams_per_source: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { max_connections_per_source: 64, max_event_streams: 32, max_event_streams_per_source: 4 }
    }
}

#[derive(Debug, Clone)]
pub struct IscsiConfig {
    pub portal: SocketAddr,
    pub iqn_prefix: String,
    pub tgt_control_port: Option<u16>,
    pub volumes_dir: PathBuf,
}

impl IscsiConfig {
    pub fn initiator_iqn(&self, node: i64) -> String {
        format!("{}:node-{node}", self.iqn_prefix)
    }
    pub fn target_iqn(&self, node: i64) -> String {
        format!("{}:target-{node}", self.iqn_prefix)
    }
    pub fn chap_user(node: i64) -> String {
        format!("node-{node}")
    }
    /// The account the target answers mutual CHAP with (tgt's accounts are global,
    /// so one per node).
    pub fn mutual_chap_user(node: i64) -> String {
        format!("target-{node}")
    }
}

#[derive(Debug, Clone)]
pub struct DhcpConfig {
    pub mode: DhcpMode,
    pub port: u16,
    pub proxy_port: u16,
    pub interfaces: Vec<String>,
    pub offer_hold: Duration,
    pub decline_quarantine: Duration,
    /// See `WireDhcp::commit_delay_us`.
    pub commit_delay: Duration,
    /// The effective architecture → boot file map (built-in, then the operator's).
    pub boot_files: std::collections::BTreeMap<Arch, String>,
    /// The same for the signed chain's shim.
    pub signed_boot_files: std::collections::BTreeMap<Arch, String>,
    pub boot_chain: BootChain,
    pub subnets: Vec<SubnetConfig>,
    /// See `WireDhcp::trusted_relays`.
    pub trusted_relays: Vec<Ipv4Net>,
    /// See `WireIpxe`.
    pub ipxe: IpxePolicy,
}

impl DhcpConfig {
    /// The subnet an address belongs to (relay link, giaddr, ciaddr or interface).
    pub fn subnet_of(&self, addr: Ipv4Addr) -> Option<&SubnetConfig> {
        self.subnets.iter().find(|s| s.net.contains(&addr))
    }
}

/// The operator's `dhcp.<key>` architecture → file map, merged over `table`.
fn merge_boot_files(
    key: &str,
    mut table: std::collections::BTreeMap<Arch, String>,
    wire: &std::collections::BTreeMap<String, String>,
) -> Result<std::collections::BTreeMap<Arch, String>, String> {
    for (name, file) in wire {
        let codes = Arch::codes_named(name);
        if codes.is_empty() {
            let known: Vec<_> = Arch::known_names().collect();
            return Err(format!(
                "dhcp.{key}: unknown architecture {name:?} (use a code such as 11, or one of: {})",
                known.join(", ")
            ));
        }
        if file.is_empty() || file.contains("..") || file.starts_with('/') {
            return Err(format!("dhcp.{key}.{name}: {file:?} must be a relative path under ipxe/"));
        }
        for code in codes {
            table.insert(code, file.clone());
        }
    }
    Ok(table)
}

fn dhcp_from_wire(d: WireDhcp, interface: &str) -> Result<DhcpConfig, String> {
    let boot_files = merge_boot_files("boot_files", default_boot_files(), &d.boot_files)?;
    let signed_boot_files = merge_boot_files("signed_boot_files", default_signed_boot_files(), &d.signed_boot_files)?;
    let defaults = d.defaults();
    let mut wires = d.subnets.clone();
    if defaults.subnet.is_some() {
        wires.insert(0, defaults.clone());
    } else if defaults.range.is_some() || defaults.ranges.is_some() {
        return Err("dhcp.range needs dhcp.subnet".into());
    }
    if wires.is_empty() && d.mode == DhcpMode::Authoritative && d.ipv4 {
        return Err("dhcp: an authoritative server needs at least one subnet (dhcp.subnet or dhcp.subnets)".into());
    }
    let mut subnets: Vec<SubnetConfig> = Vec::new();
    for (i, w) in wires.iter().enumerate() {
        let net = w.subnet.ok_or_else(|| format!("dhcp.subnets[{i}] has no subnet"))?;
        let at = format!("dhcp subnet {net}");
        let mut ranges: Vec<(Ipv4Addr, Ipv4Addr)> =
            w.range.iter().chain(w.ranges.iter().flatten()).map(|[a, b]| (*a, *b)).collect();
        ranges.sort();
        for (start, end) in &ranges {
            if !net.contains(start) || !net.contains(end) {
                return Err(format!("{at}: range {start}-{end} is not inside the subnet"));
            }
            if start > end {
                return Err(format!("{at}: range starts after it ends ({start} > {end})"));
            }
        }
        if let Some(pair) = ranges.windows(2).find(|p| p[0].1 >= p[1].0) {
            return Err(format!("{at}: ranges {}-{} and {}-{} overlap", pair[0].0, pair[0].1, pair[1].0, pair[1].1));
        }
        if ranges.is_empty() && d.mode == DhcpMode::Authoritative {
            return Err(format!("{at}: no dynamic range (range: [first, last])"));
        }
        if let Some(other) = subnets.iter().find(|s| s.net.contains(&net.network()) || net.contains(&s.net.network())) {
            return Err(format!("{at} overlaps subnet {}", other.net));
        }
        let router = w.router.or(defaults.router);
        if let Some(router) = router {
            if !net.contains(&router) {
                return Err(format!("{at}: router {router} is not inside the subnet"));
            }
        }
        let lease_secs = w.lease_time_secs.or(defaults.lease_time_secs).unwrap_or_else(default_lease_secs);
        if lease_secs < 4 {
            return Err(format!("{at}: lease_time_secs must be at least 4"));
        }
        let domain = w.domain.clone().or_else(|| defaults.domain.clone());
        if let Some(domain) = &domain {
            if domain.is_empty() || domain.len() > 253 || !domain.split('.').all(ramboot_core::node::valid_hostname) {
                return Err(format!("{at}: domain {domain:?} is not a valid DNS name"));
            }
        }
        subnets.push(SubnetConfig {
            net,
            ranges,
            router,
            dns: w.dns.clone().or_else(|| defaults.dns.clone()).unwrap_or_default(),
            domain,
            lease_time: Duration::from_secs(u64::from(lease_secs)),
            unknown_clients: w.unknown_clients.or(defaults.unknown_clients).unwrap_or_default(),
        });
    }
    let interfaces = match (d.ipv4, d.interfaces.is_empty()) {
        (false, _) => Vec::new(),
        (true, true) => vec![interface.to_string()],
        (true, false) => d.interfaces,
    };
    if let Some(bad) = interfaces.iter().find(|i| i.is_empty() || i.len() > 15) {
        return Err(format!("dhcp.interfaces: {bad:?} is not a valid interface name"));
    }
    let trusted_relays = d
        .trusted_relays
        .iter()
        .map(|text| {
            let parsed = match text.parse::<Ipv4Net>() {
                Ok(net) => Ok(net),
                Err(_) => text.parse::<Ipv4Addr>().map(Ipv4Net::from),
            };
            match parsed {
                Ok(net) if net.trunc() == net => Ok(net),
                Ok(net) => {
                    Err(format!("dhcp.trusted_relays: {text:?} has host bits set (did you mean {}?)", net.trunc()))
                }
                Err(_) => Err(format!("dhcp.trusted_relays: {text:?} is not an IPv4 address or network (CIDR)")),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ipxe = d.ipxe.policy()?;
    if d.decline_quarantine_secs == 0 || d.offer_hold_secs == 0 {
        return Err("dhcp.offer_hold_secs and dhcp.decline_quarantine_secs must be positive".into());
    }
    if d.commit_delay_us > MAX_COMMIT_DELAY_US {
        return Err(format!(
            "dhcp.commit_delay_us: {} is over the limit of {MAX_COMMIT_DELAY_US} (100 ms); a few hundred to a \
             thousand microseconds is what batching needs",
            d.commit_delay_us
        ));
    }
    Ok(DhcpConfig {
        mode: d.mode,
        port: d.port,
        proxy_port: d.proxy_port,
        interfaces,
        offer_hold: Duration::from_secs(u64::from(d.offer_hold_secs)),
        decline_quarantine: Duration::from_secs(u64::from(d.decline_quarantine_secs)),
        commit_delay: Duration::from_micros(u64::from(d.commit_delay_us)),
        boot_files,
        signed_boot_files,
        boot_chain: d.boot_chain,
        subnets,
        trusted_relays,
        ipxe,
    })
}

#[derive(Debug, Clone)]
pub struct Paths {
    pub profiles: PathBuf,
    /// Node declarations (the inventory in git); absent directory: none.
    pub inventory: PathBuf,
    pub ipxe: PathBuf,
    pub data: PathBuf,
}

impl Paths {
    /// Where content-addressed artifacts and manifests live.
    pub fn images(&self) -> PathBuf {
        self.data.join("images")
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let wire: WireConfig = yaml::load(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_wire(wire, base).map_err(|message| ConfigError::Invalid { file: path.to_path_buf(), message })
    }

    /// Parse config text as if it came from `file` (for tests and `--check`).
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let wire: WireConfig = yaml::parse(file, text).map_err(|e: SourceError| YamlError::Invalid(e))?;
        let base = file.parent().unwrap_or(Path::new("."));
        Config::from_wire(wire, base).map_err(|message| ConfigError::Invalid { file: file.to_path_buf(), message })
    }

    fn from_wire(wire: WireConfig, base: &Path) -> Result<Config, String> {
        let l = &wire.lifecycle;
        for (name, secs) in [
            ("booting", l.booting_timeout_secs),
            ("stage1", l.stage1_timeout_secs),
            ("loading", l.loading_timeout_secs),
            ("handoff", l.handoff_timeout_secs),
        ] {
            if secs < 10 {
                return Err(format!("lifecycle.{name}_timeout_secs must be at least 10"));
            }
        }
        if let Some(i) = &wire.iscsi {
            if !crate::iscsi::valid_iqn(&format!("{}:x", i.iqn_prefix)) {
                return Err(format!("iscsi.iqn_prefix {:?} must look like iqn.yyyy-mm.reversed.domain", i.iqn_prefix));
            }
        }
        let h = &wire.http;
        if h.max_connections_per_source == 0 || h.max_event_streams == 0 || h.max_event_streams_per_source == 0 {
            return Err("http: max_connections_per_source, max_event_streams and max_event_streams_per_source \
                        must be at least 1"
                .into());
        }
        let http_limits = HttpLimits {
            max_connections_per_source: h.max_connections_per_source,
            max_event_streams: h.max_event_streams,
            max_event_streams_per_source: h.max_event_streams_per_source,
        };
        let tftp_limits = wire.tftp.limits()?;
        if wire.interface.is_empty() || wire.interface.len() > 15 {
            return Err(format!("interface {:?} is not a valid interface name", wire.interface));
        }
        if !wire.dhcp.ipv4 && wire.dhcp6.is_none() {
            return Err("dhcp.ipv4: false needs a dhcp6 section (else nodes get no address at all)".into());
        }
        let dhcp = dhcp_from_wire(wire.dhcp, &wire.interface)?;
        let resolve = |p: Option<PathBuf>, default: &str| {
            let p = p.unwrap_or_else(|| PathBuf::from(default));
            if p.is_absolute() {
                p
            } else {
                base.join(p)
            }
        };
        let paths = Paths {
            profiles: resolve(wire.paths.profiles, "profiles"),
            inventory: resolve(wire.paths.inventory, "inventory"),
            ipxe: resolve(wire.paths.ipxe, "ipxe"),
            data: resolve(wire.paths.data, "data"),
        };
        let (iscsi, volumes_default) = (wire.iscsi, paths.data.join("volumes"));
        let database_url =
            wire.database.unwrap_or_else(|| format!("sqlite://{}", paths.data.join("ramboot.db").display()));
        check_database_url(&database_url, wire.database_password_file.is_some())?;
        let database_password_file =
            wire.database_password_file.map(|p| if p.is_absolute() { p } else { base.join(p) });
        let own = SocketAddrV4::new(wire.server_address, wire.http.listen.port());
        let cluster = Cluster::from_wire(wire.cluster, own, !crate::store::is_postgres_url(&database_url))?;
        Ok(Config {
            interface: wire.interface,
            server_address: wire.server_address,
            http_listen: wire.http.listen,
            http_limits,
            tftp_listen: wire.tftp.listen,
            tftp_limits,
            dhcp,
            paths,
            database_url,
            database_password_file,
            default_profile: wire.default_profile,
            discovery_stage1: wire.discovery_stage1,
            secrets: wire.secrets.map(|p| if p.is_absolute() { p } else { base.join(p) }),
            lifecycle: Lifecycle {
                booting_timeout: Duration::from_secs(l.booting_timeout_secs),
                stage1_timeout: Duration::from_secs(l.stage1_timeout_secs),
                loading_timeout: Duration::from_secs(l.loading_timeout_secs),
                handoff_timeout: Duration::from_secs(l.handoff_timeout_secs),
                max_retries: l.max_retries,
                retry_backoff: Duration::from_secs(u64::from(l.retry_backoff_secs)),
                retry_backoff_max: Duration::from_secs(u64::from(l.retry_backoff_max_secs)),
            },
            iscsi: iscsi.map(|i| IscsiConfig {
                portal: i.portal,
                iqn_prefix: i.iqn_prefix,
                tgt_control_port: i.tgt_control_port,
                volumes_dir: i
                    .volumes_dir
                    .map_or_else(|| volumes_default.clone(), |p| if p.is_absolute() { p } else { base.join(p) }),
            }),
            ipv6_ra: wire.ipv6_ra,
            dhcp6: wire.dhcp6.map(dhcp6_from_wire).transpose()?,
            retention: crate::retention::Retention::from_days(
                wire.retention.events_days,
                wire.retention.finished_boots_days,
            ),
            cluster,
            hooks: hooks_from_wire(wire.hooks)?,
            bmc: wire.bmc.try_into()?,
        })
    }

    /// Base URL nodes use to reach the HTTP boot service.
    /// What the DHCP decision core needs of this configuration.
    pub fn dhcp_policy(&self) -> DhcpPolicy {
        DhcpPolicy {
            mode: self.dhcp.mode,
            tftp_server: self.server_address,
            boot_url: self.boot_url(),
            boot_files: self.dhcp.boot_files.clone(),
            signed_boot_files: self.dhcp.signed_boot_files.clone(),
            boot_chain: self.dhcp.boot_chain,
            subnets: self.dhcp.subnets.clone(),
            trusted_relays: self.dhcp.trusted_relays.clone(),
            offer_hold_secs: self.dhcp.offer_hold.as_secs(),
            quarantine_secs: self.dhcp.decline_quarantine.as_secs(),
            ipxe: self.dhcp.ipxe.clone(),
            share: self.cluster.share,
        }
    }

    pub fn boot_url(&self) -> String {
        format!("http://{}:{}", self.server_address, self.http_listen.port())
    }

    /// The boot URL for a node that reached this server from `source`: over IPv6
    /// (`http://[addr]:port`) when `dhcp6` is set and the node came over IPv6.
    pub fn boot_url_for(&self, source: Option<std::net::IpAddr>) -> String {
        match (&self.dhcp6, source.map(|s| s.to_canonical())) {
            (Some(v6), Some(std::net::IpAddr::V6(_))) => {
                format!("http://[{}]:{}", v6.server_address, self.http_listen.port())
            }
            _ => self.boot_url(),
        }
    }

    /// Every server a node at `source` may fetch from, this one first. The
    /// cluster's peers are IPv4 addresses (`cluster.peers`), so a node that came
    /// over IPv6 is given this server only.
    pub fn boot_urls_for(&self, source: std::net::IpAddr) -> Vec<String> {
        match (&self.dhcp6, source.to_canonical()) {
            (Some(_), std::net::IpAddr::V6(_)) => vec![self.boot_url_for(Some(source))],
            _ => self.cluster.boot_urls(&self.boot_url()),
        }
    }
}

/// A PostgreSQL URL must parse and carry no password (the YAML is not a secret,
/// and the URL is logged): that comes from `database_password_file` or `PGPASSWORD`.
fn check_database_url(url: &str, password_file: bool) -> Result<(), String> {
    if !crate::store::is_postgres_url(url) {
        if password_file {
            return Err("database_password_file is for a postgres:// database".into());
        }
        return Ok(());
    }
    if crate::store::copy::url_holds_password(url) {
        return Err("database: the URL holds a password; put it in database_password_file \
                    (mode 0600) or PGPASSWORD instead"
            .into());
    }
    url.parse::<sqlx::postgres::PgConnectOptions>().map_err(|e| format!("database: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
interface: br0
server_address: 10.213.0.1
dhcp:
  subnet: 10.213.0.0/24
  range: [10.213.0.100, 10.213.0.200]
  router: 10.213.0.1
default_profile: tiny
";

    /// GOOD with extra lines inside its `dhcp:` block.
    fn with_dhcp(extra: &str) -> String {
        GOOD.replace("  router: 10.213.0.1\n", &format!("  router: 10.213.0.1\n{extra}"))
    }

    #[test]
    fn the_lease_commit_delay_defaults_to_a_millisecond_and_is_bounded() {
        let cfg = Config::parse(Path::new("r.yaml"), GOOD).unwrap();
        assert_eq!(cfg.dhcp.commit_delay, Duration::from_millis(1));
        let off = Config::parse(Path::new("r.yaml"), &with_dhcp("  commit_delay_us: 0\n")).unwrap();
        assert!(off.dhcp.commit_delay.is_zero());
        let err = Config::parse(Path::new("r.yaml"), &with_dhcp("  commit_delay_us: 2000000\n")).unwrap_err();
        assert!(err.to_string().contains("dhcp.commit_delay_us"), "{err}");
    }

    #[test]
    fn good_config_resolves_paths_against_its_directory() {
        let cfg = Config::parse(Path::new("/etc/ramboot/ramboot.yaml"), GOOD).unwrap();
        assert_eq!(cfg.paths.profiles, PathBuf::from("/etc/ramboot/profiles"));
        assert_eq!(cfg.database_url, "sqlite:///etc/ramboot/data/ramboot.db");
        assert_eq!(cfg.boot_url(), "http://10.213.0.1:8080");
    }

    #[test]
    fn a_postgres_url_selects_postgres_and_never_carries_a_password() {
        let text =
            format!("{GOOD}database: postgres:///ramboot?host=/var/run/postgresql\ndatabase_password_file: pw\n");
        let cfg = Config::parse(Path::new("/etc/ramboot/ramboot.yaml"), &text).unwrap();
        assert_eq!(cfg.database_url, "postgres:///ramboot?host=/var/run/postgresql");
        assert_eq!(cfg.database_password_file, Some(PathBuf::from("/etc/ramboot/pw")));
        for url in ["postgres://u:secret@db/ramboot", "postgres://u@db/ramboot?password=secret"] {
            let err = Config::parse(Path::new("r.yaml"), &format!("{GOOD}database: {url}\n")).unwrap_err();
            let err = err.to_string();
            assert!(err.contains("holds a password") && !err.contains("secret"), "{err}");
        }
        let err = Config::parse(Path::new("r.yaml"), &format!("{GOOD}database_password_file: pw\n")).unwrap_err();
        assert!(err.to_string().contains("is for a postgres:// database"), "{err}");
    }

    #[test]
    fn peers_split_the_ranges_the_same_way_on_every_server() {
        let pg = "database: postgres:///ramboot?host=/var/run/postgresql\n";
        let on = |own: &str, peers: &str| {
            let text = GOOD.replace("10.213.0.1\ndhcp", &format!("{own}\ndhcp"));
            Config::parse(Path::new("r.yaml"), &format!("{text}{pg}cluster:\n  peers: [{peers}]\n")).unwrap()
        };
        let a = on("10.213.0.1", "http://10.213.0.3:8080, http://10.213.0.2:8080/");
        let b = on("10.213.0.2", "http://10.213.0.1:8080, http://10.213.0.3:8080");
        let c = on("10.213.0.3", "http://10.213.0.2:8080, http://10.213.0.1:8080");
        let shares: Vec<_> = [&a, &b, &c].iter().map(|c| (c.cluster.share.index, c.cluster.share.of)).collect();
        assert_eq!(shares, [(0, 3), (1, 3), (2, 3)]);
        assert_eq!(a.cluster.name, "10.213.0.1");
        assert_eq!(
            a.cluster.boot_urls(&a.boot_url()),
            ["http://10.213.0.1:8080", "http://10.213.0.3:8080", "http://10.213.0.2:8080"]
        );
        // Alone, a server has the whole range.
        let alone = Config::parse(Path::new("r.yaml"), GOOD).unwrap();
        assert_eq!(alone.cluster.share, ramboot_core::dhcp::pool::Share::WHOLE);
        assert_eq!((a.cluster.image_sync, alone.cluster.image_sync), (DEFAULT_IMAGE_SYNC, DEFAULT_IMAGE_SYNC));
        let fast = Config::parse(Path::new("r.yaml"), &format!("{GOOD}{pg}cluster:\n  image_sync_secs: 2\n")).unwrap();
        assert_eq!(fast.cluster.image_sync, Duration::from_secs(2));
    }

    #[test]
    fn bad_peers_are_refused_with_the_reason() {
        let pg = "database: postgres:///ramboot?host=/var/run/postgresql\n";
        for (peers, why) in [
            ("[10.213.0.2]", "is not http://<IPv4 address>:<port>"),
            ("[\"http://ramboot-b:8080\"]", "is not http://<IPv4 address>:<port>"),
            ("[\"http://10.213.0.1:8080\"]", "is this server"),
            ("[\"http://10.213.0.2:8080\", \"http://10.213.0.2:8080\"]", "listed twice"),
        ] {
            let text = format!("{GOOD}{pg}cluster:\n  peers: {peers}\n");
            let err = Config::parse(Path::new("r.yaml"), &text).unwrap_err().to_string();
            assert!(err.contains(why), "{peers}: {err}");
        }
        let text = format!("{GOOD}cluster:\n  peers: [\"http://10.213.0.2:8080\"]\n");
        let err = Config::parse(Path::new("r.yaml"), &text).unwrap_err().to_string();
        assert!(err.contains("one PostgreSQL database"), "{err}");
        let text = format!("{GOOD}{pg}cluster:\n  name: \"a b\"\n");
        assert!(Config::parse(Path::new("r.yaml"), &text).is_err());
        let text = format!("{GOOD}{pg}cluster:\n  image_sync_secs: 0\n");
        let err = Config::parse(Path::new("r.yaml"), &text).unwrap_err().to_string();
        assert!(err.contains("image_sync_secs 0"), "{err}");
    }

    #[test]
    fn unknown_key_is_refused_with_position() {
        let text = GOOD.replace("router:", "routr:");
        let err = Config::parse(Path::new("r.yaml"), &text).unwrap_err().to_string();
        assert!(err.starts_with("r.yaml:6:3:"), "{err}");
    }

    #[test]
    fn retry_backoff_doubles_up_to_a_cap_then_stops() {
        let cfg = Config::parse(Path::new("r.yaml"), GOOD).unwrap();
        let delays: Vec<_> = (0..=6).map(|n| cfg.lifecycle.retry_delay(n).map(|d| d.as_secs())).collect();
        assert_eq!(delays, [Some(0), Some(15), Some(30), Some(60), Some(120), Some(240), None]);
    }

    #[test]
    fn range_outside_subnet_is_refused() {
        let text = GOOD.replace("10.213.0.200]", "10.214.0.200]");
        let err = Config::parse(Path::new("r.yaml"), &text).unwrap_err().to_string();
        assert!(err.contains("not inside the subnet"), "{err}");
    }

    #[test]
    fn dhcp_level_keys_are_defaults_for_listed_subnets() {
        let text = with_dhcp(
            "  dns: [10.213.0.53]\n  domain: lab.example\n  boot_files:\n    efi-x64: snponly.efi\n    '11': arm.efi\n  subnets:\n    \
             - subnet: 10.9.0.0/24\n      ranges: [[10.9.0.10, 10.9.0.20], [10.9.0.100, 10.9.0.110]]\n      \
             router: 10.9.0.1\n      unknown_clients: ignore\n",
        );
        let cfg = Config::parse(Path::new("r.yaml"), &text).unwrap();
        let d = &cfg.dhcp;
        assert_eq!(d.subnets.len(), 2);
        let relayed = d.subnet_of(Ipv4Addr::new(10, 9, 0, 15)).unwrap();
        assert_eq!(relayed.ranges.len(), 2);
        assert_eq!(relayed.dns, vec![Ipv4Addr::new(10, 213, 0, 53)], "inherited");
        assert_eq!(relayed.domain.as_deref(), Some("lab.example"));
        assert_eq!(relayed.unknown_clients, UnknownClients::Ignore);
        assert_eq!(d.subnets[0].unknown_clients, UnknownClients::Discovery);
        assert_eq!(d.boot_files[&Arch(7)], "snponly.efi");
        assert_eq!(d.boot_files[&Arch(9)], "snponly.efi");
        assert_eq!(d.boot_files[&Arch(11)], "arm.efi");
        assert_eq!(d.boot_files[&Arch(0)], "undionly.kpxe");
        assert_eq!(d.interfaces, vec!["br0".to_string()]);
    }

    #[test]
    fn foreign_ipxe_builds_are_chained_unless_the_operator_says_otherwise() {
        let cfg = Config::parse(Path::new("r.yaml"), GOOD).unwrap();
        assert_eq!(cfg.dhcp_policy().ipxe, IpxePolicy::default());
        assert_eq!(cfg.dhcp.ipxe.foreign, ForeignIpxe::Chain);
        let text = with_dhcp("  ipxe:\n    user_class: acme-ipxe\n    foreign: script\n");
        let cfg = Config::parse(Path::new("r.yaml"), &text).unwrap();
        assert_eq!((cfg.dhcp.ipxe.user_class.as_str(), cfg.dhcp.ipxe.foreign), ("acme-ipxe", ForeignIpxe::Script));
    }

    #[test]
    fn bad_dhcp_settings_are_named() {
        for (edit, expect) in [
            ("  boot_files: {efi-vax: x.efi}\n", "unknown architecture \"efi-vax\""),
            ("  boot_files: {bios: ../../etc/passwd}\n", "relative path under ipxe/"),
            ("  subnets:\n    - subnet: 10.213.0.128/25\n      range: [10.213.0.130, 10.213.0.140]\n", "overlaps"),
            ("  ranges: [[10.213.0.150, 10.213.0.250]]\n", "overlap"),
            ("  ipxe: {user_class: iPXE}\n", "set dhcp.ipxe.foreign: script"),
            ("  ipxe: {user_class: 'my ipxe'}\n", "printable ASCII characters without spaces"),
            ("  ipxe: {foreign: maybe}\n", "unknown variant `maybe`"),
        ] {
            let err = Config::parse(Path::new("r.yaml"), &with_dhcp(edit)).unwrap_err().to_string();
            assert!(err.contains(expect), "{edit}: {err}");
        }
    }

    #[test]
    fn the_readme_example_is_a_valid_config() {
        let readme = include_str!("../README.md");
        let start = readme.find("```yaml\ninterface:").expect("README has a config example") + "```yaml\n".len();
        let text = &readme[start..start + readme[start..].find("```").unwrap()];
        let cfg = Config::parse(Path::new("/etc/ramboot/ramboot.yaml"), text).unwrap();
        assert_eq!(cfg.dhcp.subnets.len(), 2);
        assert_eq!(cfg.dhcp.boot_files[&Arch(11)], "arm64/snponly.efi");
    }

    #[test]
    fn trusted_relays_are_addresses_or_networks() {
        let cfg =
            Config::parse(Path::new("r.yaml"), &with_dhcp("  trusted_relays: [10.9.0.1, 10.213.0.0/30]\n")).unwrap();
        let nets: Vec<String> = cfg.dhcp_policy().trusted_relays.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.9.0.1/32", "10.213.0.0/30"]);
        assert!(Config::parse(Path::new("r.yaml"), GOOD).unwrap().dhcp.trusted_relays.is_empty(), "none by default");
        for (bad, expect) in
            [("[10.9.0.1/24]", "host bits set (did you mean 10.9.0.0/24?)"), ("[relay1]", "not an IPv4")]
        {
            let text = with_dhcp(&format!("  trusted_relays: {bad}\n"));
            let err = Config::parse(Path::new("r.yaml"), &text).unwrap_err().to_string();
            assert!(err.contains(expect), "{bad}: {err}");
        }
    }

    #[test]
    fn flood_bounds_have_defaults_and_are_checked() {
        let cfg = Config::parse(Path::new("r.yaml"), GOOD).unwrap();
        assert_eq!(cfg.http_limits, HttpLimits::default());
        assert_eq!(cfg.tftp_limits.max_sessions_per_source, 8);
        assert_eq!(cfg.tftp_limits.max_session, Duration::from_secs(120));
        assert_eq!(cfg.tftp_limits.session.max_blksize, 1468, "one 1500-byte frame by default");
        let text = format!(
            "{GOOD}http:\n  max_connections_per_source: 600\ntftp:\n  max_sessions_per_source: 500\n  \
             max_session_secs: 30\n  max_timeout_secs: 5\n  max_blksize: 1400\n"
        );
        let cfg = Config::parse(Path::new("r.yaml"), &text).unwrap();
        assert_eq!(cfg.http_limits.max_connections_per_source, 600);
        assert_eq!(cfg.tftp_limits.max_sessions_per_source, 500);
        assert_eq!(cfg.tftp_limits.max_session, Duration::from_secs(30));
        assert_eq!(cfg.tftp_limits.session.max_timeout_secs, 5);
        assert_eq!(cfg.tftp_limits.session.max_blksize, 1400);
        for (extra, expect) in [
            ("tftp:\n  max_blksize: 7\n", "tftp.max_blksize (7) must be within 8..=65464"),
            ("tftp:\n  max_blksize: 65465\n", "tftp.max_blksize (65465)"),
            ("http:\n  max_event_streams: 0\n", "at least 1"),
            ("tftp:\n  max_sessions_per_source: 0\n", "at least 1"),
            ("tftp:\n  max_session_secs: 1\n", "at least 10"),
            ("tftp:\n  min_timeout_secs: 20\n", "min_timeout_secs"),
        ] {
            let err = Config::parse(Path::new("r.yaml"), &format!("{GOOD}{extra}")).unwrap_err().to_string();
            assert!(err.contains(expect), "{extra}: {err}");
        }
    }

    #[test]
    fn retention_defaults_and_zero_keeps_for_ever() {
        let cfg = Config::parse(Path::new("r.yaml"), GOOD).unwrap();
        assert_eq!(cfg.retention, crate::retention::Retention::from_days(30, 90));
        let text = format!("{GOOD}retention:\n  events_days: 0\n  finished_boots_days: 7\n");
        let cfg = Config::parse(Path::new("r.yaml"), &text).unwrap();
        assert_eq!(cfg.retention.events, None);
        assert_eq!(cfg.retention.finished_boots, Some(Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn proxy_mode_needs_no_subnet() {
        let text = "interface: br0\nserver_address: 10.0.0.2\ndhcp:\n  mode: proxy\n";
        let cfg = Config::parse(Path::new("r.yaml"), text).unwrap();
        assert_eq!(cfg.dhcp.mode, DhcpMode::Proxy);
        assert!(cfg.dhcp.subnets.is_empty());
    }
}
