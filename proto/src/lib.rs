//! What the stage-one agent and the server say to each other over HTTP, and how the
//! server hands the agent its coordinates on the kernel command line.
//!
//! Kept dependency-light: it is compiled into the static agent in every initramfs.

use serde::{Deserialize, Serialize};

/// Paths of the boot API, relative to the server URL.
pub mod paths {
    pub const HELLO: &str = "/boot/v1/hello";
    pub const PLAN: &str = "/boot/v1/plan";
    pub const EVENTS: &str = "/boot/v1/events";
    /// Stage two's long poll for what the server asks of the node ([`super::Command`]).
    pub const COMMAND: &str = "/boot/v1/command";
}

/// Kernel command-line keys the iPXE script sets for stage one.
pub mod cmdline {
    pub const SERVER: &str = "ramboot.server";
    pub const NODE: &str = "ramboot.node";
    pub const TOKEN: &str = "ramboot.token";
    pub const MAC: &str = "ramboot.mac";
    /// The other servers sharing this one's database, comma-separated boot URLs:
    /// where stage one turns when `ramboot.server` stops answering.
    pub const PEERS: &str = "ramboot.peers";
}

/// The agent's coordinates, as found on the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootArgs {
    pub server: String,
    pub node: String,
    pub token: String,
    pub mac: Option<String>,
    /// Other servers' boot URLs, in the order to try them; empty without peers.
    #[serde(default)]
    pub peers: Vec<String>,
}

/// `http://a:8080,http://b:8080` → its URLs, empty parts skipped (absent or empty: none).
pub fn parse_peers(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect()
}

impl BootArgs {
    /// Parse `/proc/cmdline`. `None` names the first missing key.
    pub fn from_cmdline(cmdline: &str) -> Result<BootArgs, &'static str> {
        let get = |key: &str| {
            cmdline
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        };
        Ok(BootArgs {
            server: get(cmdline::SERVER).ok_or(cmdline::SERVER)?,
            node: get(cmdline::NODE).ok_or(cmdline::NODE)?,
            token: get(cmdline::TOKEN).ok_or(cmdline::TOKEN)?,
            mac: get(cmdline::MAC),
            peers: get(cmdline::PEERS).map(|v| parse_peers(&v)).unwrap_or_default(),
        })
    }
}

/// Hardware facts reported in the agent's hello.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub cpus: u32,
    pub cpu_model: Option<String>,
    pub memory_bytes: u64,
    #[serde(default)]
    pub nics: Vec<Nic>,
    #[serde(default)]
    pub dmi: Dmi,
    pub kernel: Option<String>,
    /// What the firmware told the kernel (absent from agents before it was reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareFacts>,
}

impl std::fmt::Display for FirmwareFacts {
    /// `UEFI, Secure Boot on, lockdown integrity`, or `BIOS`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.uefi {
            return f.write_str("BIOS");
        }
        f.write_str("UEFI")?;
        match self.secure_boot {
            Some(true) => f.write_str(", Secure Boot on")?,
            Some(false) => f.write_str(", Secure Boot off")?,
            None => f.write_str(", Secure Boot unknown")?,
        }
        if let Some(mode) = &self.lockdown {
            write!(f, ", lockdown {mode}")?;
        }
        Ok(())
    }
}

/// The boot firmware as stage one sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareFacts {
    /// Booted by UEFI (the kernel has `/sys/firmware/efi`), not a BIOS.
    pub uefi: bool,
    /// UEFI's `SecureBoot` variable: the firmware enforced signatures on what it
    /// ran (`None`: not UEFI, or the variable could not be read).
    pub secure_boot: Option<bool>,
    /// The kernel's lockdown mode (`none`, `integrity`, `confidentiality`): under
    /// Secure Boot, Debian's kernel locks itself down.
    pub lockdown: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    pub name: String,
    pub mac: String,
    pub driver: Option<String>,
    pub speed_mbps: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dmi {
    pub vendor: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<String>,
}

/// What the node should become.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The server that made the plan (absent from servers older than this field).
    #[serde(default)]
    pub server: Option<ServerInfo>,
    pub node_id: i64,
    pub boot_id: i64,
    pub hostname: String,
    pub profile: String,
    pub image: PlanImage,
    /// Files rendered for this node, as a tar archive to extract over the root.
    pub overlay_url: Option<String>,
    /// iSCSI volumes attached to this node, if any.
    #[serde(default)]
    pub iscsi: Option<PlanIscsi>,
}

/// Which server made a plan, and the boot protocol it speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub version: String,
    pub protocol: u32,
}

/// The boot protocol between the server and stage one's agent (the shapes of
/// hello, plan, events, overlay and command). Raised by any change an agent
/// built before it cannot follow: the server then refuses such an agent's hello
/// with a message that says to rebuild stage one.
pub const PROTOCOL: u32 = 1;

/// The agent's User-Agent: its version and the protocol it speaks.
pub fn agent_user_agent(version: &str) -> String {
    format!("ramboot-agent/{version} (protocol {PROTOCOL})")
}

/// (agent version, protocol) from a User-Agent. An agent built before versions
/// were sent says `ureq/...`: it speaks protocol 1.
pub fn parse_agent_user_agent(user_agent: &str) -> (Option<String>, u32) {
    let Some(rest) = user_agent.strip_prefix("ramboot-agent/") else { return (None, 1) };
    let (version, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    let protocol = tail
        .trim_start_matches('(')
        .trim_end_matches(')')
        .strip_prefix("protocol ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(1);
    (Some(version.to_string()), protocol)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanImage {
    pub name: String,
    pub url: String,
    /// Lowercase hex SHA-256 of the whole file.
    pub sha256: String,
    pub size: u64,
    /// `squashfs` is the only format stage one mounts today.
    pub format: String,
}

/// Lifecycle states an agent may report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportedState {
    Loading,
    Handoff,
    Ready,
    Failed,
}

/// One report from the agent: a state move, or progress within the current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEvent {
    /// `None` for a progress report.
    pub state: Option<ReportedState>,
    pub message: String,
    pub progress: Option<Progress>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    pub done_bytes: u64,
    pub total_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_args_come_from_the_kernel_command_line() {
        let line = "BOOT_IMAGE=vmlinuz initrd=initrd.img console=ttyS0 ramboot.server=http://10.0.0.1:8080 \
                    ramboot.node=7 ramboot.token=abc ramboot.mac=52:54:00:00:00:01 quiet";
        let args = BootArgs::from_cmdline(line).unwrap();
        assert_eq!(args.server, "http://10.0.0.1:8080");
        assert_eq!(args.node, "7");
        assert_eq!(args.token, "abc");
        assert_eq!(args.mac.as_deref(), Some("52:54:00:00:00:01"));
        assert_eq!(BootArgs::from_cmdline("quiet ramboot.node=1"), Err(cmdline::SERVER));
        assert!(args.peers.is_empty(), "no ramboot.peers: no peers");
    }

    #[test]
    fn peers_are_optional_and_parsed_tolerantly() {
        let line = "ramboot.server=http://10.0.0.1:8080 ramboot.node=7 ramboot.token=abc \
                    ramboot.peers=http://10.0.0.2:8080,,http://10.0.0.3:8080,";
        let args = BootArgs::from_cmdline(line).unwrap();
        assert_eq!(args.peers, ["http://10.0.0.2:8080", "http://10.0.0.3:8080"]);
        let empty = BootArgs::from_cmdline("ramboot.server=s ramboot.node=1 ramboot.token=t ramboot.peers=").unwrap();
        assert!(empty.peers.is_empty());
        assert!(parse_peers(" , ").is_empty());
    }

    #[test]
    fn ipv6_servers_come_through_whole() {
        let line = "ramboot.server=http://[fd00:213::1]:8080 ramboot.node=7 ramboot.token=abc \
                    ramboot.peers=http://[fd00:213::2]:8080,http://10.0.0.3:8080";
        let args = BootArgs::from_cmdline(line).unwrap();
        assert_eq!(args.server, "http://[fd00:213::1]:8080");
        assert_eq!(args.peers, ["http://[fd00:213::2]:8080", "http://10.0.0.3:8080"]);
    }
}

/// Byte counts for people: `960 KiB`, `12.3 MiB`, `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod human_tests {
    #[test]
    fn sizes_read_naturally() {
        assert_eq!(super::human_bytes(512), "512 B");
        assert_eq!(super::human_bytes(983_040), "960 KiB");
        assert_eq!(super::human_bytes(12_900_000), "12.3 MiB");
        assert_eq!(super::human_bytes(3 << 30), "3.0 GiB");
    }
}

/// The most a `GET /boot/v1/command` waits for a command (seconds) before it
/// answers 204 No Content; the query `?wait=SECS` asks for less.
pub const MAX_COMMAND_WAIT_SECS: u64 = 25;

/// The query of `GET /boot/v1/command`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandQuery {
    /// How long to wait for a command, in seconds (at most [`MAX_COMMAND_WAIT_SECS`],
    /// the default).
    pub wait: Option<u64>,
}

/// What the server asks of a node in stage two: the body of a 200 answer to
/// `GET /boot/v1/command` (`{"command": "reboot"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub command: CommandKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandKind {
    /// Reboot now (the next boot is a fresh network boot): how a node without a
    /// BMC is rebooted by a rollout.
    Reboot,
    /// A command this agent does not know (a newer server's): ignored.
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod command_tests {
    use super::*;

    #[test]
    fn commands_read_and_unknown_ones_do_not_break_an_older_agent() {
        let reboot = Command { command: CommandKind::Reboot };
        assert_eq!(serde_json::to_string(&reboot).unwrap(), r#"{"command":"reboot"}"#);
        assert_eq!(serde_json::from_str::<Command>(r#"{"command":"reboot"}"#).unwrap(), reboot);
        let newer: Command = serde_json::from_str(r#"{"command":"kexec","extra":1}"#).unwrap();
        assert_eq!(newer.command, CommandKind::Unknown);
    }
}

/// A discovery boot's answer to `GET plan` while the node has no profile (HTTP 202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanWait {
    pub reason: String,
    pub retry_after_secs: u64,
}

/// Path of the per-node overlay archive (tar), relative to the server URL.
pub const OVERLAY_PATH: &str = "/boot/v1/overlay";

/// The node's iSCSI volumes: how to log in to them. Stage two writes the
/// open-iscsi configuration from this and logs in on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanIscsi {
    pub initiator_iqn: String,
    /// `host:port` of the target portal.
    pub portal: String,
    pub target_iqn: String,
    pub chap_user: String,
    pub chap_secret: String,
    /// Mutual CHAP, if on: the target answers with this account, and the node
    /// logs in only to a target that does (open-iscsi's `username_in`/`password_in`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_chap_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_chap_secret: Option<String>,
    pub luns: Vec<PlanLun>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanLun {
    pub lun: u32,
    pub volume: String,
    pub size_bytes: u64,
}

/// `20G`, `512M`, `1T` (binary units, an optional `iB`/`B`) or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| format!("size {s:?}: expected a number with an optional K/M/G/T"))?;
    let shift = match unit.trim_end_matches(['i', 'B']).to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        other => return Err(format!("size {s:?}: unknown unit {other:?} (use K, M, G or T)")),
    };
    n.checked_shl(shift).filter(|v| v >> shift == n).ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod size_tests {

    #[test]
    fn firmware_facts_read_as_one_phrase() {
        let sb = super::FirmwareFacts { uefi: true, secure_boot: Some(true), lockdown: Some("integrity".into()) };
        assert_eq!(sb.to_string(), "UEFI, Secure Boot on, lockdown integrity");
        let off = super::FirmwareFacts { uefi: true, secure_boot: Some(false), lockdown: None };
        assert_eq!(off.to_string(), "UEFI, Secure Boot off");
        assert_eq!(super::FirmwareFacts::default().to_string(), "BIOS");
    }

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(super::parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(super::parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(super::parse_size("4096").unwrap(), 4096);
        assert!(super::parse_size("12X").is_err() && super::parse_size("G").is_err());
        assert!(super::parse_size("99999999999T").is_err());
    }

    #[test]
    fn the_agents_user_agent_names_its_version_and_protocol() {
        use crate::{agent_user_agent, parse_agent_user_agent, PROTOCOL};
        let ua = agent_user_agent("0.1.0");
        assert_eq!(parse_agent_user_agent(&ua), (Some("0.1.0".into()), PROTOCOL));
        assert_eq!(parse_agent_user_agent("ramboot-agent/0.0.9 (protocol 0)"), (Some("0.0.9".into()), 0));
        assert_eq!(parse_agent_user_agent("ureq/2.12.1"), (None, 1), "an agent from before versions");
        assert_eq!(parse_agent_user_agent("ramboot-agent/x"), (Some("x".into()), 1));
    }
}
