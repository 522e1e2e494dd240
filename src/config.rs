//! Server configuration (`ramboot.yaml`).
//!
//! Two types, as in hickory-dns and dora: `WireConfig` is exactly what the operator
//! wrote (unknown keys refused), `Config` is the validated form the server runs on.
//! Relative paths are resolved against the config file's directory.

use crate::yaml::{self, SourceError, YamlError};
use ipnet::Ipv4Net;
use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddr};
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
    /// sqlx URL; default `sqlite://<data>/ramboot.db`.
    database: Option<String>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireHttp {
    #[serde(default = "default_http_listen")]
    listen: SocketAddr,
}

impl Default for WireHttp {
    fn default() -> Self {
        Self { listen: default_http_listen() }
    }
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireTftp {
    #[serde(default = "default_tftp_listen")]
    listen: SocketAddr,
}

impl Default for WireTftp {
    fn default() -> Self {
        Self { listen: default_tftp_listen() }
    }
}

fn default_tftp_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 69))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireDhcp {
    subnet: Ipv4Net,
    /// First and last address of the dynamic pool, inclusive.
    range: [Ipv4Addr; 2],
    router: Option<Ipv4Addr>,
    #[serde(default)]
    dns: Vec<Ipv4Addr>,
    #[serde(default = "default_lease_secs")]
    lease_time_secs: u32,
    #[serde(default = "default_dhcp_port")]
    port: u16,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePaths {
    profiles: Option<PathBuf>,
    ipxe: Option<PathBuf>,
    data: Option<PathBuf>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub interface: String,
    pub server_address: Ipv4Addr,
    pub http_listen: SocketAddr,
    pub tftp_listen: SocketAddr,
    pub dhcp: DhcpConfig,
    pub paths: Paths,
    pub database_url: String,
    pub default_profile: Option<String>,
    pub discovery_stage1: String,
    pub secrets: Option<PathBuf>,
    pub lifecycle: Lifecycle,
    pub iscsi: Option<IscsiConfig>,
    pub ipv6_ra: bool,
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
}

#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub booting_timeout: Duration,
    pub stage1_timeout: Duration,
    pub loading_timeout: Duration,
    pub handoff_timeout: Duration,
    /// Consecutive failed boots after which the node is no longer retried.
    pub max_retries: u32,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
}

impl Lifecycle {
    /// How long a node that failed `failures` times in a row waits before retrying
    /// (exponential), or `None` once it has used up its retries.
    pub fn retry_delay(&self, failures: u32) -> Option<Duration> {
        if failures == 0 {
            return Some(Duration::ZERO);
        }
        if failures > self.max_retries {
            return None;
        }
        let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
        Some(self.retry_backoff.saturating_mul(factor).min(self.retry_backoff_max))
    }
}

#[derive(Debug, Clone)]
pub struct DhcpConfig {
    pub subnet: Ipv4Net,
    pub range_start: Ipv4Addr,
    pub range_end: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_time: Duration,
    pub port: u16,
}

#[derive(Debug, Clone)]
pub struct Paths {
    pub profiles: PathBuf,
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
        let d = &wire.dhcp;
        let [start, end] = d.range;
        if !d.subnet.contains(&start) || !d.subnet.contains(&end) {
            return Err(format!("dhcp.range {start}-{end} is not inside dhcp.subnet {}", d.subnet));
        }
        if u32::from(start) > u32::from(end) {
            return Err(format!("dhcp.range starts after it ends ({start} > {end})"));
        }
        if let Some(router) = d.router {
            if !d.subnet.contains(&router) {
                return Err(format!("dhcp.router {router} is not inside dhcp.subnet {}", d.subnet));
            }
        }
        if d.lease_time_secs < 60 {
            return Err("dhcp.lease_time_secs must be at least 60".into());
        }
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
        if wire.interface.is_empty() || wire.interface.len() > 15 {
            return Err(format!("interface {:?} is not a valid interface name", wire.interface));
        }
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
            ipxe: resolve(wire.paths.ipxe, "ipxe"),
            data: resolve(wire.paths.data, "data"),
        };
        let (iscsi, volumes_default) = (wire.iscsi, paths.data.join("volumes"));
        let database_url =
            wire.database.unwrap_or_else(|| format!("sqlite://{}", paths.data.join("ramboot.db").display()));
        Ok(Config {
            interface: wire.interface,
            server_address: wire.server_address,
            http_listen: wire.http.listen,
            tftp_listen: wire.tftp.listen,
            dhcp: DhcpConfig {
                subnet: d.subnet,
                range_start: start,
                range_end: end,
                router: d.router,
                dns: d.dns.clone(),
                lease_time: Duration::from_secs(u64::from(d.lease_time_secs)),
                port: d.port,
            },
            paths,
            database_url,
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
        })
    }

    /// Base URL nodes use to reach the HTTP boot service.
    pub fn boot_url(&self) -> String {
        format!("http://{}:{}", self.server_address, self.http_listen.port())
    }
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

    #[test]
    fn good_config_resolves_paths_against_its_directory() {
        let cfg = Config::parse(Path::new("/etc/ramboot/ramboot.yaml"), GOOD).unwrap();
        assert_eq!(cfg.paths.profiles, PathBuf::from("/etc/ramboot/profiles"));
        assert_eq!(cfg.database_url, "sqlite:///etc/ramboot/data/ramboot.db");
        assert_eq!(cfg.boot_url(), "http://10.213.0.1:8080");
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
        assert!(err.contains("not inside dhcp.subnet"), "{err}");
    }
}
