//! The test harness: network-namespace labs for tests that run real servers, DHCP
//! daemons, clients and VMs. A [`Lab`] guard owns namespaces, the processes started
//! in them and a temp dir; bounded waits and runs; skipping a test whose tools are
//! missing (never in CI); a VM beside dnsmasq on a bridge; a loopback tgtd.
//!
//! Built on the fallible blocks of [`crate::net`], [`crate::process`], [`crate::qemu`]
//! and [`crate::tgtd`], this module panics with a clear message instead of returning
//! errors: it is for tests. Nothing here touches the host's network: every interface
//! lives in a namespace the guard created, and dropping the guard stops the
//! processes it started (by PID) and deletes those namespaces, also when an
//! assertion fails.

use crate::net::{self, in_ns, Netns};
use crate::process::Proc;
use crate::qemu::{Nic, PxeVm};
use crate::tgtd::{Tgtd, TgtdOptions};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use crate::logs::{events, log_text, logs_context, read_lossy, strip_ansi, tail};
pub use crate::net::udp_port_bound;
pub use crate::process::terminate;

// ---------------------------------------------------------------------------------
// Tools and skipping

/// Skip a test whose tools are missing here, saying why; CI never skips (it
/// installs the tools in `.ci/run`), so there a missing tool fails the test.
pub fn skipped(test: &str, missing: Option<&str>) -> bool {
    let Some(reason) = missing else { return false };
    assert!(std::env::var_os("CI").is_none(), "CI must run {test}, but: {reason}");
    eprintln!("SKIPPED {test}: {reason}");
    true
}

/// Where `ip` (iproute2) may be.
pub const IP: &[&str] = &["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"];
pub const QEMU: &[&str] = &[crate::qemu::QEMU];
pub const PXE_ROM: &[&str] = &[crate::qemu::PXE_ROM];
pub const DNSMASQ: &[&str] = &["/usr/sbin/dnsmasq", "/sbin/dnsmasq"];
pub const TGTD: &[&str] = &["/usr/sbin/tgtd"];
pub const ISCSI_INQ: &[&str] = &["/usr/bin/iscsi-inq"];

/// The first of `paths` that exists.
pub fn first_existing(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| p.exists())
}

/// A tool's path, once [`skip_reason`] has checked that it is there.
pub fn tool(paths: &[&str]) -> String {
    first_existing(paths).expect("checked by skip_reason").display().to_string()
}

/// Why a namespace test cannot run here (not root, or `ip` or one of `tools` — each a
/// name and where it may be — missing), if it cannot.
pub fn skip_reason(tools: &[(&str, &[&str])]) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces, DHCP ports)".into());
    }
    let mut all: Vec<(&str, &[&str])> = vec![("ip (iproute2)", IP)];
    all.extend_from_slice(tools);
    let missing: Vec<&str> = all.iter().filter(|(_, paths)| first_existing(paths).is_none()).map(|(n, _)| *n).collect();
    (!missing.is_empty()).then(|| format!("missing {}", missing.join(", ")))
}

// ---------------------------------------------------------------------------------
// Waiting and running

/// Poll `f` every 100 ms until it returns `Some`, or panic after `timeout` with `what`
/// and whatever `context` says then.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>, context: impl Fn() -> String) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run a command to completion with a deadline, output to `log`; killed if it overruns.
pub fn run_bounded(mut cmd: Command, log: &Path, timeout: Duration) -> ExitStatus {
    let out = File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
    let err = out.try_clone().expect("a second handle on the log");
    let child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn();
    let mut child = child.unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    match crate::process::wait_until(&mut child, Instant::now() + timeout) {
        Some(status) => status,
        None => {
            terminate(&mut child, Duration::from_secs(3));
            panic!("{cmd:?} did not finish within {timeout:?}; output:\n{}", tail(&read_lossy(log), 40));
        }
    }
}

/// Wait (up to `timeout`) for the first event in `path` (see [`events`]) whose `key`
/// is `value`, and return it.
pub fn wait_event(
    path: &Path,
    (key, value): (&str, &str),
    timeout: Duration,
    what: &str,
    context: impl Fn() -> String,
) -> BTreeMap<String, String> {
    let matches = |e: &BTreeMap<String, String>| e.get(key).is_some_and(|v| v == value);
    wait_for(timeout, what, || events(path).into_iter().find(matches), context)
}

/// Write a script (or copy of a binary's bytes) and make it executable.
pub fn write_executable(path: &Path, contents: impl AsRef<[u8]>) {
    // The file that runs is written by `install`, not by this process: a child that
    // another test's thread forks meanwhile inherits every open file until it execs,
    // and exec of a file still open for writing fails with ETXTBSY ("Text file busy").
    let staged = path.with_extension("staged");
    std::fs::write(&staged, contents).unwrap_or_else(|e| panic!("writing {}: {e}", staged.display()));
    let status = Command::new("install").arg("-m").arg("0755").arg(&staged).arg(path).status().expect("install");
    assert!(status.success(), "install {} {}: {status}", staged.display(), path.display());
    std::fs::remove_file(&staged).unwrap_or_else(|e| panic!("removing {}: {e}", staged.display()));
}

// ---------------------------------------------------------------------------------
// `ip`

fn must<T>(result: Result<T, crate::LabError>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// Run `ip args` and require success.
pub fn ip(args: &[&str]) {
    must(net::ip(args))
}

/// Run `ip -n ns args` and require success.
pub fn ip_in(ns: &str, args: &[&str]) {
    must(net::ip_in(ns, args))
}

/// Join namespaces `a` and `b` with a veth pair, interface `a.1` in `a.0` and `b.1` in
/// `b.0` (names of at most 15 characters); both ends stay down.
pub fn veth(a: (&str, &str), b: (&str, &str)) {
    must(net::veth(a, b))
}

/// Run `sh -c script` in namespace `ns` and require success.
pub fn ns_sh(ns: &str, script: &str) {
    let out = in_ns(ns, &["sh", "-c", script]).output().expect("running ip netns exec");
    assert!(out.status.success(), "in {ns}: {script}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The kernel's UDP counters in namespace `ns` (`/proc/net/snmp`, e.g. `RcvbufErrors`:
/// datagrams dropped because a socket's receive queue was full).
pub fn udp_counters(ns: &str) -> HashMap<String, u64> {
    let out = in_ns(ns, &["cat", "/proc/net/snmp"]).output().expect("running ip netns exec");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = text.lines().filter_map(|l| l.strip_prefix("Udp:"));
    let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
        panic!("no Udp rows in {ns}'s /proc/net/snmp:\n{text}")
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace().map(|v| v.parse().unwrap_or(0)))
        .map(|(n, v)| (n.to_string(), v))
        .collect()
}

/// The kernel's UDP-over-IPv6 counters in namespace `ns` (`/proc/net/snmp6`, named
/// as in [`udp_counters`]: `InDatagrams`, `RcvbufErrors`, ...).
pub fn udp6_counters(ns: &str) -> HashMap<String, u64> {
    let out = in_ns(ns, &["cat", "/proc/net/snmp6"]).output().expect("running ip netns exec");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(char::is_whitespace)?;
            Some((name.strip_prefix("Udp6")?.to_string(), value.trim().parse().unwrap_or(0)))
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// The guard

/// Namespaces and processes one test made, and its temp dir. Dropping it stops those
/// processes (by PID, the last started first) and deletes those namespaces, also when
/// an assertion failed. Processes it did not start are reported, never killed.
/// `RAMBOOT_KEEP_TEST_DIR` keeps the temp dir (logs, captures) for a look afterwards.
pub struct Lab {
    children: Vec<Option<Proc>>,
    namespaces: Vec<Netns>,
    dir: tempfile::TempDir,
}

impl Default for Lab {
    fn default() -> Lab {
        Lab::new()
    }
}

impl Lab {
    pub fn new() -> Lab {
        Lab { namespaces: vec![], children: vec![], dir: tempfile::tempdir().expect("a temp dir") }
    }

    /// A new lab for `test`, or `None` when the test cannot run here (see
    /// [`skip_reason`]): [`skipped`] says why, and fails the test in CI instead.
    pub fn for_test(test: &str, tools: &[(&str, &[&str])]) -> Option<Lab> {
        (!skipped(test, skip_reason(tools).as_deref())).then(Lab::new)
    }

    /// The lab's temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `name` in the lab's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Create namespace `name` (with loopback up), owned by this guard.
    pub fn netns(&mut self, name: &str) -> String {
        self.namespaces.push(must(Netns::recreate(name)));
        name.to_string()
    }

    /// Start `program` in namespace `ns`, stdin from /dev/null, output to `log`, with
    /// `env` added; returns its index in this guard.
    pub fn spawn(&mut self, name: &str, ns: &str, program: &[String], log: &Path, env: &[(&str, &str)]) -> usize {
        let out = File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let mut cmd = in_ns(ns, program);
        cmd.stdin(Stdio::null()).stdout(out.try_clone().expect("a second handle on the log")).stderr(out);
        cmd.envs(env.iter().copied());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        self.children.push(Some(Proc::new(name, child)));
        self.children.len() - 1
    }

    /// Run `program` in namespace `ns` to completion (see [`run_bounded`]); not kept.
    pub fn run(&self, ns: &str, program: &[String], log: &Path, timeout: Duration) -> ExitStatus {
        run_bounded(in_ns(ns, program), log, timeout)
    }

    fn child(&mut self, idx: usize) -> &mut Proc {
        self.children[idx].as_mut().expect("process still tracked")
    }

    /// The PID of a process this guard started and still tracks.
    pub fn pid(&mut self, idx: usize) -> nix::unistd::Pid {
        self.child(idx).pid()
    }

    /// How a process ended, if it has.
    pub fn try_wait(&mut self, idx: usize) -> Option<ExitStatus> {
        self.children[idx].as_mut().and_then(Proc::try_wait)
    }

    /// Stop a process (SIGTERM, SIGKILL after `grace`) and return how it ended.
    pub fn stop(&mut self, idx: usize, grace: Duration) -> Option<ExitStatus> {
        self.children[idx].take()?.stop(grace)
    }

    /// Wait (up to `timeout`) until `ready` holds for process `idx`'s log text; panics
    /// with the log if the process exits first.
    pub fn wait_ready(&mut self, idx: usize, log: &Path, timeout: Duration, what: &str, ready: impl Fn(&str) -> bool) {
        let name = self.child(idx).name().to_string();
        let what = format!("{name} to log {what}");
        self.wait_alive(idx, timeout, &what, || ready(&read_lossy(log)).then_some(()), || log_text(log));
    }

    /// [`wait_for`] `f` while process `idx` runs: panics with `context` if it exits
    /// first (a VM that gave up, a server that died).
    pub fn wait_alive<T>(
        &mut self,
        idx: usize,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut() -> Option<T>,
        context: impl Fn() -> String,
    ) -> T {
        let name = self.child(idx).name().to_string();
        let alive = || {
            if let Some(status) = self.try_wait(idx) {
                panic!("{name} exited early ({status}):\n{}", context());
            }
            f()
        };
        wait_for(timeout, what, alive, &context)
    }

    /// Start a process (no extra environment) and wait until its log contains every
    /// one of `ready`; returns its index.
    pub fn start_until(
        &mut self,
        name: &str,
        ns: &str,
        program: &[String],
        log: &Path,
        ready: &[&str],
        timeout: Duration,
    ) -> usize {
        let idx = self.spawn(name, ns, program, log, &[]);
        self.wait_ready(idx, log, timeout, &format!("{ready:?}"), |text| ready.iter().all(|r| text.contains(r)));
        idx
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Clients first, servers last: the reverse of the order they started in; then
        // the namespaces (a dropped `Netns` reports what is still inside).
        while let Some(child) = self.children.pop() {
            drop(child);
        }
        self.namespaces.clear();
        if std::env::var_os("RAMBOOT_KEEP_TEST_DIR").is_some() {
            if let Ok(empty) = tempfile::tempdir() {
                let dir = std::mem::replace(&mut self.dir, empty);
                eprintln!("kept {} (RAMBOOT_KEEP_TEST_DIR)", dir.keep().display());
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// A network-booting VM beside dnsmasq

/// What a test with a network-booting VM beside dnsmasq needs (CI installs it all).
pub const VM_BESIDE_DNSMASQ: [(&str, &[&str]); 4] = [
    ("dnsmasq (dnsmasq-base)", DNSMASQ),
    ("qemu-system-x86_64 (qemu-system-x86)", QEMU),
    ("pxe-e1000.rom (ipxe-qemu)", PXE_ROM),
    ("tcpdump", crate::pcap::TCPDUMP),
];

/// The lab of `test` (`None`: skipped, see [`Lab::for_test`]) needing
/// [`VM_BESIDE_DNSMASQ`] and `more` tools, with a namespace `rb<tag><pid>` holding
/// [`bridge_with_tap`]. Returns (lab, namespace, bridge, tap).
pub fn lab_with_bridge(
    test: &str,
    more: &[(&str, &[&str])],
    tag: char,
    addresses: &[String],
) -> Option<(Lab, String, String, String)> {
    let tools: Vec<(&str, &[&str])> = VM_BESIDE_DNSMASQ.iter().chain(more).copied().collect();
    let mut lab = Lab::for_test(test, &tools)?;
    let ns = lab.netns(&format!("rb{tag}{}", std::process::id()));
    let (bridge, tap) = bridge_with_tap(&ns, tag, addresses);
    Some((lab, ns, bridge, tap))
}

/// A bridge `<tag><pid>br` in `ns` with a tap `<tag><pid>tp` enslaved, both up, the
/// bridge carrying `addresses` (CIDR; the first is the primary). Returns (bridge, tap).
pub fn bridge_with_tap(ns: &str, tag: char, addresses: &[String]) -> (String, String) {
    let pid = std::process::id();
    let (bridge, tap) = (format!("{tag}{pid}br"), format!("{tag}{pid}tp"));
    must(net::bridge_with_tap(ns, &bridge, &tap, addresses));
    (bridge, tap)
}

/// Start dnsmasq in `ns` as a site's DHCP server on `bridge`: DHCP only (no DNS),
/// leasing `first`..=`last` for 12 h from `listen`, logging each decision to
/// `<lab>/dnsmasq.log` (leases in `<lab>/dnsmasq.leases`); `extra` adds options
/// (boot files, a hosts dir). Waits until it serves; returns the lab's index.
pub fn start_site_dnsmasq(
    lab: &mut Lab,
    ns: &str,
    bridge: &str,
    listen: Ipv4Addr,
    (first, last): (Ipv4Addr, Ipv4Addr),
    extra: &[String],
) -> usize {
    let mut command: Vec<String> = vec![
        tool(DNSMASQ),
        "--no-daemon".into(),
        "--port=0".into(),
        "--conf-file=/dev/null".into(),
        format!("--interface={bridge}"),
        "--bind-interfaces".into(),
        format!("--listen-address={listen}"),
        format!("--dhcp-range={first},{last},12h"),
        format!("--dhcp-leasefile={}", lab.path("dnsmasq.leases").display()),
        format!("--pid-file={}", lab.path("dnsmasq.pid").display()),
        "--user=root".into(),
        "--log-dhcp".into(),
    ];
    command.extend_from_slice(extra);
    let ready = format!("DHCP, IP range {first} -- {last}");
    let log = lab.path("dnsmasq.log");
    lab.start_until("dnsmasq", ns, &command, &log, &[ready.as_str()], Duration::from_secs(15))
}

/// dnsmasq as the site DHCP server of a PXE setup that chains iPXE, with ramboot
/// serving only TFTP and HTTP: see [`start_chaining_dnsmasq`].
pub struct ChainingDnsmasq {
    /// The lab's index of the dnsmasq process.
    pub idx: usize,
    hosts_dir: PathBuf,
    staged: PathBuf,
}

/// Start dnsmasq (see [`start_site_dnsmasq`]) on `interface` telling a client to
/// TFTP-load `undionly.kpxe` from `next_server`, as a site points a plain PXE ROM
/// at iPXE; once [`ChainingDnsmasq::mark_chained`] has named its MAC, it gets
/// `script_url` instead (iPXE expands `${net0/mac}` in it itself).
///
/// The distinguisher is the test's: QEMU's ROM and the chained Debian
/// `undionly.kpxe` are the same iPXE build, and their requests differ only in the
/// xid and the broadcast flag, which dnsmasq cannot match. A tag set too late costs
/// one more load of `undionly.kpxe`, not the boot.
pub fn start_chaining_dnsmasq(
    lab: &mut Lab,
    ns: &str,
    interface: &str,
    listen: Ipv4Addr,
    range: (Ipv4Addr, Ipv4Addr),
    (next_server, script_url): (Ipv4Addr, &str),
) -> ChainingDnsmasq {
    let hosts_dir = lab.path("dnsmasq-hosts");
    std::fs::create_dir_all(&hosts_dir).unwrap_or_else(|e| panic!("creating {}: {e}", hosts_dir.display()));
    let extra = [
        format!("--dhcp-hostsdir={}", hosts_dir.display()),
        format!("--dhcp-boot=tag:!chained,undionly.kpxe,,{next_server}"),
        format!("--dhcp-boot=tag:chained,{script_url}"),
    ];
    let idx = start_site_dnsmasq(lab, ns, interface, listen, range, &extra);
    ChainingDnsmasq { idx, hosts_dir, staged: lab.path("dnsmasq-chained.staged") }
}

impl ChainingDnsmasq {
    /// From now on `mac` is the chained iPXE: it gets the script URL. Written beside
    /// the directory and renamed in, so dnsmasq's inotify never reads half a file.
    pub fn mark_chained(&self, mac: &str) {
        std::fs::write(&self.staged, format!("{mac},set:chained\n"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", self.staged.display()));
        let target = self.hosts_dir.join(mac.replace(':', ""));
        std::fs::rename(&self.staged, &target).unwrap_or_else(|e| panic!("renaming to {}: {e}", target.display()));
    }
}

/// Start QEMU (TCG, SeaBIOS, 256 MiB) booting from the network through the e1000
/// iPXE ROM on `tap`, MAC `mac`, serial console to `console`; QEMU's own output goes
/// to `log`. Returns the lab's index of the process.
pub fn spawn_pxe_vm(lab: &mut Lab, ns: &str, tap: &str, mac: &str, console: &Path, log: &Path) -> usize {
    lab.spawn("qemu", ns, &PxeVm::bios(tap, mac, console).command_line(), log, &[])
}

/// Start QEMU (TCG, OVMF on q35, 256 MiB) booting from the network through the
/// firmware's own UEFI PXE stack (EDK2 NetworkPkg over its VirtioNetDxe driver): a
/// virtio-net NIC with no option ROM, so no iPXE takes over. Its variables are a
/// fresh copy in the lab's dir. Otherwise as [`spawn_pxe_vm`].
pub fn spawn_uefi_firmware_pxe_vm(lab: &mut Lab, ns: &str, tap: &str, mac: &str, console: &Path, log: &Path) -> usize {
    spawn_uefi_firmware_vm(lab, ns, (tap, mac, Nic::VirtioFirmwarePxe), console, log)
}

/// As [`spawn_uefi_firmware_pxe_vm`], with the firmware's PXE turned off: OVMF
/// boots with its UEFI HTTP Boot client (DHCP as `HTTPClient`, the boot file by URL).
pub fn spawn_uefi_http_boot_vm(lab: &mut Lab, ns: &str, tap: &str, mac: &str, console: &Path, log: &Path) -> usize {
    spawn_uefi_firmware_vm(lab, ns, (tap, mac, Nic::VirtioFirmwareHttp), console, log)
}

/// As [`spawn_uefi_firmware_pxe_vm`], on OVMF's Secure Boot build with
/// Microsoft's keys enrolled, enforcing: it runs only what Microsoft's CA signed.
pub fn spawn_secure_boot_pxe_vm(lab: &mut Lab, ns: &str, tap: &str, mac: &str, console: &Path, log: &Path) -> usize {
    let vars = lab.path("OVMF_VARS.fd");
    crate::qemu::fresh_vars(&vars, true).unwrap_or_else(|e| panic!("copying {}: {e}", crate::qemu::OVMF_MS_VARS));
    let vm = PxeVm {
        uefi_vars: Some(vars),
        secure_boot: true,
        nic: Nic::VirtioFirmwarePxe,
        ..PxeVm::bios(tap, mac, console)
    };
    lab.spawn("qemu", ns, &vm.command_line(), log, &[])
}

fn spawn_uefi_firmware_vm(
    lab: &mut Lab,
    ns: &str,
    (tap, mac, nic): (&str, &str, Nic),
    console: &Path,
    log: &Path,
) -> usize {
    let vars = lab.path("OVMF_VARS.fd");
    crate::qemu::fresh_vars(&vars, false).unwrap_or_else(|e| panic!("copying {}: {e}", crate::qemu::OVMF_VARS));
    let vm = PxeVm { uefi_vars: Some(vars), nic, ..PxeVm::bios(tap, mac, console) };
    lab.spawn("qemu", ns, &vm.command_line(), log, &[])
}

/// A namespace `rb<tag><pid>` joined to `bridge` (in `bridge_ns`) by a veth pair:
/// its end `<tag><pid>v` carries `addresses` (CIDR; the first is the primary), the
/// other, `<tag><pid>p`, is a port of the bridge; both ends get `mtu` and come up.
/// For a host on the boot network whose traffic to the VM the bridge *forwards*
/// (where a bridge-family firewall rule sees it). Returns (namespace, interface).
pub fn bridge_port_ns(
    lab: &mut Lab,
    (bridge_ns, bridge): (&str, &str),
    tag: char,
    addresses: &[String],
    mtu: u32,
) -> (String, String) {
    let pid = std::process::id();
    let ns = lab.netns(&format!("rb{tag}{pid}"));
    let (inside, port) = (format!("{tag}{pid}v"), format!("{tag}{pid}p"));
    veth((&ns, &inside), (bridge_ns, &port));
    let mtu = mtu.to_string();
    ip_in(bridge_ns, &["link", "set", &port, "master", bridge]);
    ip_in(bridge_ns, &["link", "set", &port, "mtu", &mtu, "up"]);
    for address in addresses {
        ip_in(&ns, &["addr", "add", address, "dev", &inside]);
    }
    ip_in(&ns, &["link", "set", &inside, "mtu", &mtu, "up"]);
    (ns, inside)
}

// ---------------------------------------------------------------------------------
// tgtd

/// Why a loopback tgtd test cannot run here, if it cannot.
pub fn tgtd_skip_reason() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (tgtd needs it)");
    }
    if first_existing(TGTD).is_none() || first_existing(ISCSI_INQ).is_none() {
        return Some("tgt and libiscsi-bin are not installed");
    }
    None
}

/// A private tgtd on a free loopback port with its own control port (see
/// [`crate::tgtd`]); stopped when dropped. A port taken between our pick and
/// tgtd's bind is retried on fresh ports.
pub fn loopback_tgtd() -> Tgtd {
    let mut taken = vec![];
    for _ in 0..5 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let port = listener.local_addr().expect("its address").port();
        drop(listener);
        let control = crate::tgtd::control_port();
        // Per control port and portal: a tgtd that finds its control port taken must
        // not write over the log of the one that has it.
        let log = std::env::temp_dir().join(format!("ramboot-test-tgtd-{control}-{port}.log"));
        let host = Ipv4Addr::LOCALHOST.into();
        match Tgtd::start(TgtdOptions { netns: None, control, host, port, log: log.clone(), remove_log: true }) {
            Err(e @ crate::LabError::PortTaken { .. }) => {
                let _ = std::fs::remove_file(&log);
                eprintln!("{e}; trying fresh ports");
                taken.push(e.to_string());
            }
            started => return must(started),
        }
    }
    panic!("no tgtd of our own could start:\n{}", taken.join("\n"));
}
