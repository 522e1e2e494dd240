//! Network plumbing with iproute2, inside namespaces the lab creates: a [`Netns`]
//! guard (deleted when dropped), veth pairs, a bridge with a tap for a VM, and
//! commands run inside a namespace. Nothing here touches the host's own interfaces.

use crate::LabError;
use std::process::{Command, Stdio};

/// Run `ip args`; an error carries ip's own message.
pub fn ip(args: &[&str]) -> Result<(), LabError> {
    let out = Command::new("ip").args(args).output().map_err(|e| LabError::spawn("ip", e))?;
    if !out.status.success() {
        let command = format!("ip {}", args.join(" "));
        return Err(LabError::Failed { command, detail: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(())
}

/// Run `ip -n ns args`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<(), LabError> {
    ip(&[&["-n", ns], args].concat())
}

/// `ip netns exec ns program…`: `ip` execs the program, so a child's PID is the
/// program's (and stopping it by PID stops the program).
pub fn in_ns<S: AsRef<std::ffi::OsStr>>(ns: &str, program: &[S]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(program);
    cmd
}

/// The longest name Linux gives an interface.
const IFNAMSIZ: usize = 15;

fn check_ifname(name: &str) -> Result<(), LabError> {
    if name.len() > IFNAMSIZ {
        return Err(LabError::Other(format!("interface name {name} is longer than {IFNAMSIZ} characters")));
    }
    Ok(())
}

/// Join namespaces `a` and `b` with a veth pair, interface `a.1` in `a.0` and `b.1` in
/// `b.0`; both ends stay down.
pub fn veth(a: (&str, &str), b: (&str, &str)) -> Result<(), LabError> {
    check_ifname(a.1)?;
    check_ifname(b.1)?;
    ip(&["link", "add", a.1, "netns", a.0, "type", "veth", "peer", "name", b.1, "netns", b.0])
}

/// A bridge `bridge` in `ns` (no STP delay) with a tap `tap` enslaved for a VM, both
/// up, the bridge carrying `addresses` (CIDR; the first is the primary).
pub fn bridge_with_tap(ns: &str, bridge: &str, tap: &str, addresses: &[String]) -> Result<(), LabError> {
    check_ifname(bridge)?;
    check_ifname(tap)?;
    ip_in(ns, &["link", "add", "name", bridge, "type", "bridge", "forward_delay", "0"])?;
    ip_in(ns, &["tuntap", "add", "dev", tap, "mode", "tap"])?;
    ip_in(ns, &["link", "set", tap, "master", bridge])?;
    for address in addresses {
        ip_in(ns, &["addr", "add", address, "dev", bridge])?;
    }
    ip_in(ns, &["link", "set", tap, "up"])?;
    ip_in(ns, &["link", "set", bridge, "up"])
}

/// Is a UDP socket bound to `port` in namespace `ns`?
pub fn udp_port_bound(ns: &str, port: u16) -> bool {
    let Ok(out) = in_ns(ns, &["cat", "/proc/net/udp"]).output() else {
        return false;
    };
    let needle = format!(":{port:04X}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1).is_some_and(|a| a.ends_with(&needle)))
}

/// A network namespace this process created (loopback up), deleted when dropped.
/// Processes still inside it then are reported, never killed: stop your own first.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Create namespace `name` and bring its loopback up.
    pub fn create(name: &str) -> Result<Netns, LabError> {
        ip(&["netns", "add", name])?;
        let ns = Netns { name: name.to_string() };
        ip_in(name, &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Like [`Netns::create`], after deleting a leftover of the same name (one of an
    /// earlier run of a process with this PID, which would make `ip netns add` fail).
    pub fn recreate(name: &str) -> Result<Netns, LabError> {
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        Netns::create(name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            let pids = String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
            if !pids.is_empty() {
                eprintln!("WARNING: processes still in namespace {} (not started by this guard): {pids}", self.name);
            }
        }
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("could not delete namespace {}: {e}", self.name);
        }
    }
}
