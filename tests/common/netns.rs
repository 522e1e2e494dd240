//! Network-namespace labs for tests that run the real `ramboot serve` binary and real
//! DHCP daemons and clients: a [`Lab`] guard that owns namespaces, the processes
//! started in them and a temp dir; bounded waits and runs; log helpers; a private
//! ISC `dhclient`; and reading the lease store.
//!
//! Nothing here touches the host's network: every interface lives in a namespace the
//! guard created, and dropping the guard stops the processes it started (by PID) and
//! deletes those namespaces, also when an assertion fails.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use ramboot::store::{Lease, Store};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------
// Tools and skipping

/// Where `ip` (iproute2) may be.
pub const IP: &[&str] = &["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"];
/// Where ISC `dhclient` may be.
pub const DHCLIENT: &[&str] = &["/usr/sbin/dhclient", "/sbin/dhclient"];

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
// Waiting, running and stopping

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
    let out = File::create(log).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            terminate(&mut child, Duration::from_secs(3));
            panic!("{cmd:?} did not finish within {timeout:?}; output:\n{}", tail(&read_lossy(log), 40));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, then SIGKILL if the process has not exited after `grace`; reaps it.
pub fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(pid, Signal::SIGKILL);
    child.wait().ok()
}

// ---------------------------------------------------------------------------------
// Logs and files

/// A file's text (lossily decoded); empty if it cannot be read (yet).
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// Strip ANSI escape sequences and carriage returns (tracing's colours, iPXE's and
/// SeaBIOS's console).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// A log file's text, without escape sequences.
pub fn log_text(path: &Path) -> String {
    strip_ansi(&read_lossy(path))
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The last `lines` lines of each log, under its name: what a failed wait shows.
pub fn logs_context<P: AsRef<Path>>(lines: usize, logs: &[(&str, P)]) -> String {
    let part = |(name, path): &(&str, P)| format!("{name}:\n{}", tail(&log_text(path.as_ref()), lines));
    logs.iter().map(part).collect::<Vec<_>>().join("\n")
}

/// `key=value` words per line, as the client scripts of the tests write them.
pub fn events(path: &Path) -> Vec<BTreeMap<String, String>> {
    read_lossy(path)
        .lines()
        .map(|line| {
            line.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
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

/// Write a script (or copy of a binary's bytes) and make it executable. The file that
/// runs is written by `install`, not by this process: a child that another test's
/// thread forks meanwhile inherits every open file until it execs, and exec of a file
/// still open for writing fails with ETXTBSY ("Text file busy").
pub fn write_executable(path: &Path, contents: impl AsRef<[u8]>) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, contents).unwrap();
    let status = Command::new("install").arg("-m").arg("0755").arg(&staged).arg(path).status().unwrap();
    assert!(status.success(), "install {} {}: {status}", staged.display(), path.display());
    std::fs::remove_file(&staged).unwrap();
}

// ---------------------------------------------------------------------------------
// The lease store

/// Every lease row in the store at `url` (state, expiry and all).
pub fn store_leases(url: &str) -> Vec<Lease> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = Store::open(url).await.unwrap_or_else(|e| panic!("opening {url}: {e}"));
        let leases = store.leases().await.unwrap();
        store.close().await;
        leases
    })
}

/// The lease rows of one client MAC.
pub fn leases_of(url: &str, mac: &str) -> Vec<Lease> {
    store_leases(url).into_iter().filter(|l| l.mac.to_string() == mac).collect()
}

/// A ramboot log must show no error and no NAK.
pub fn assert_no_errors_or_naks(log: &str) {
    assert!(!log.contains(" ERROR "), "ramboot logged errors:\n{log}");
    assert!(!log.contains("reply=Nak"), "ramboot NAKed:\n{log}");
}

// ---------------------------------------------------------------------------------
// `ip`

/// Run `ip args` and require success.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Run `ip -n ns args` and require success.
pub fn ip_in(ns: &str, args: &[&str]) {
    ip(&[&["-n", ns], args].concat());
}

/// Join namespaces `a` and `b` with a veth pair, interface `a.1` in `a.0` and `b.1` in
/// `b.0` (names of at most 15 characters); both ends stay down.
pub fn veth(a: (&str, &str), b: (&str, &str)) {
    for name in [a.1, b.1] {
        assert!(name.len() <= 15, "interface name {name} too long");
    }
    ip(&["link", "add", a.1, "netns", a.0, "type", "veth", "peer", "name", b.1, "netns", b.0]);
}

/// Run `sh -c script` in namespace `ns` and require success.
pub fn ns_sh(ns: &str, script: &str) {
    let out = Command::new("ip").args(["netns", "exec", ns, "sh", "-c", script]).output().unwrap();
    assert!(out.status.success(), "in {ns}: {script}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Is a UDP socket bound to `port` in namespace `ns`?
pub fn udp_port_bound(ns: &str, port: u16) -> bool {
    let Ok(out) = Command::new("ip").args(["netns", "exec", ns, "cat", "/proc/net/udp"]).output() else {
        return false;
    };
    let needle = format!(":{port:04X}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1).is_some_and(|a| a.ends_with(&needle)))
}

/// The kernel's UDP counters in namespace `ns` (`/proc/net/snmp`, e.g. `RcvbufErrors`:
/// datagrams dropped because a socket's receive queue was full).
pub fn udp_counters(ns: &str) -> HashMap<String, u64> {
    let out = Command::new("ip").args(["netns", "exec", ns, "cat", "/proc/net/snmp"]).output().unwrap();
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

/// `ip netns exec ns program…`: `ip` execs the program, so a child's PID is the
/// program's.
fn in_ns(ns: &str, program: &[String]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(program);
    cmd
}

// ---------------------------------------------------------------------------------
// The guard

/// Namespaces and processes one test made, and its temp dir. Dropping it stops those
/// processes (by PID, the last started first) and deletes those namespaces, also when
/// an assertion failed. Processes it did not start are reported, never killed.
/// `RAMBOOT_KEEP_TEST_DIR` keeps the temp dir (logs, captures) for a look afterwards.
pub struct Lab {
    namespaces: Vec<String>,
    children: Vec<(String, Option<Child>)>,
    dir: tempfile::TempDir,
}

/// A `ramboot serve` a [`Lab`] started: its process index and log.
pub struct Ramboot {
    pub idx: usize,
    pub log: PathBuf,
}

impl Default for Lab {
    fn default() -> Lab {
        Lab::new()
    }
}

impl Lab {
    pub fn new() -> Lab {
        Lab { namespaces: vec![], children: vec![], dir: tempfile::tempdir().unwrap() }
    }

    /// A new lab for `test`, or `None` when the test cannot run here (see
    /// [`skip_reason`]): `common::skipped` says why, and fails the test in CI instead.
    pub fn for_test(test: &str, tools: &[(&str, &[&str])]) -> Option<Lab> {
        (!super::skipped(test, skip_reason(tools).as_deref())).then(Lab::new)
    }

    /// `name` in the lab's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Create namespace `name` (with loopback up), owned by this guard.
    pub fn netns(&mut self, name: &str) -> String {
        // A leftover of an earlier run with the same PID would make `ip netns add` fail.
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        ip(&["netns", "add", name]);
        self.namespaces.push(name.to_string());
        ip_in(name, &["link", "set", "lo", "up"]);
        name.to_string()
    }

    /// Start `program` in namespace `ns`, stdin from /dev/null, output to `log`, with
    /// `env` added; returns its index in this guard.
    pub fn spawn(&mut self, name: &str, ns: &str, program: &[String], log: &Path, env: &[(&str, &str)]) -> usize {
        let out = File::create(log).unwrap();
        let mut cmd = in_ns(ns, program);
        cmd.stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out);
        cmd.envs(env.iter().copied());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        self.children.push((name.to_string(), Some(child)));
        self.children.len() - 1
    }

    /// Run `program` in namespace `ns` to completion (see [`run_bounded`]); not kept.
    pub fn run(&self, ns: &str, program: &[String], log: &Path, timeout: Duration) -> ExitStatus {
        run_bounded(in_ns(ns, program), log, timeout)
    }

    /// The PID of a process this guard started and still tracks.
    pub fn pid(&self, idx: usize) -> Pid {
        Pid::from_raw(self.children[idx].1.as_ref().expect("process still tracked").id() as i32)
    }

    /// How a process ended, if it has.
    pub fn try_wait(&mut self, idx: usize) -> Option<ExitStatus> {
        self.children[idx].1.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// Stop a process (SIGTERM, SIGKILL after `grace`) and return how it ended.
    pub fn stop(&mut self, idx: usize, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.children[idx].1.take()?;
        terminate(&mut child, grace)
    }

    /// Wait (up to `timeout`) until `ready` holds for process `idx`'s log text; panics
    /// with the log if the process exits first.
    pub fn wait_ready(&mut self, idx: usize, log: &Path, timeout: Duration, what: &str, ready: impl Fn(&str) -> bool) {
        let name = self.children[idx].0.clone();
        wait_for(
            timeout,
            &format!("{name} to log {what}"),
            || {
                if let Some(status) = self.try_wait(idx) {
                    panic!("{name} exited early ({status}):\n{}", log_text(log));
                }
                ready(&read_lossy(log)).then_some(())
            },
            || log_text(log),
        );
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

    /// Start `ramboot serve` in `ns` with `config` (YAML up to, not including, the
    /// `paths:` section, which this adds under the lab's temp dir) and `RUST_LOG`
    /// `rust_log`, and wait until DHCP serves: the log line, or (should its wording
    /// change) the DHCP socket bound, where requests queue until the service reads.
    pub fn start_ramboot(&mut self, ns: &str, config: &str, rust_log: &str) -> Ramboot {
        let root = self.dir.path();
        for d in ["data", "profiles", "ipxe"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let paths =
            format!("paths:\n  data: {r}/data\n  profiles: {r}/profiles\n  ipxe: {r}/ipxe\n", r = root.display());
        let config_path = self.path("ramboot.yaml");
        std::fs::write(&config_path, format!("{config}{paths}")).unwrap();
        let log = self.path("ramboot.log");
        let program =
            [env!("CARGO_BIN_EXE_ramboot"), "serve", "--config", &config_path.display().to_string()].map(String::from);
        let idx = self.spawn("ramboot", ns, &program, &log, &[("RUST_LOG", rust_log), ("NO_COLOR", "1")]);
        let ready = |text: &str| text.contains("DHCP serving") || udp_port_bound(ns, 67);
        self.wait_ready(idx, &log, Duration::from_secs(30), "\"DHCP serving\"", ready);
        Ramboot { idx, log }
    }

    /// Stop ramboot with SIGTERM; it must exit cleanly. Returns its log.
    pub fn stop_ramboot(&mut self, ramboot: &Ramboot) -> String {
        let status = self.stop(ramboot.idx, Duration::from_secs(15));
        let log = log_text(&ramboot.log);
        assert!(status.is_some_and(|s| s.success()), "ramboot did not exit cleanly: {status:?}\n{}", tail(&log, 30));
        log
    }

    /// The URL of the lease store of the ramboot [`Lab::start_ramboot`] configures.
    pub fn database_url(&self) -> String {
        format!("sqlite://{}", self.path("data/ramboot.db").display())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Clients first, servers last: the reverse of the order they started in.
        for (_, child) in self.children.iter_mut().rev() {
            if let Some(mut c) = child.take() {
                terminate(&mut c, Duration::from_secs(3));
            }
        }
        for ns in &self.namespaces {
            // Only our own processes are ended (above); anything else still inside is
            // reported, not killed.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                let pids = String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
                if !pids.is_empty() {
                    eprintln!("WARNING: processes still in namespace {ns} (not started by this test): {pids}");
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if std::env::var_os("RAMBOOT_KEEP_TEST_DIR").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("kept {} (RAMBOOT_KEEP_TEST_DIR)", dir.keep().display());
        }
    }
}

// ---------------------------------------------------------------------------------
// ISC dhclient

/// ISC `dhclient` with a private config, script, lease file and pid file in a lab's
/// temp dir, run from a private copy of its binary: AppArmor's profile for
/// /usr/sbin/dhclient (enforced on stock Debian) forbids a script and lease file in a
/// temp dir. Nothing of the host's DHCP client configuration is used.
pub struct Dhclient {
    binary: PathBuf,
    files: Vec<String>,
    pid_file: PathBuf,
}

impl Dhclient {
    /// Copy the binary into `lab`'s dir and write `conf` (dhclient.conf) and `script`
    /// (the `-sf` script, made executable) beside it.
    pub fn new(lab: &Lab, conf: &str, script: &str) -> Dhclient {
        let binary = lab.path("dhclient");
        write_executable(&binary, std::fs::read(tool(DHCLIENT)).unwrap());
        let (conf_path, script_path) = (lab.path("dhclient.conf"), lab.path("dhclient-script"));
        std::fs::write(&conf_path, conf).unwrap();
        write_executable(&script_path, script);
        let files = [
            ("-cf", conf_path),
            ("-sf", script_path),
            ("-lf", lab.path("dhclient.leases")),
            ("-pf", lab.path("dhclient.pid")),
        ];
        let pid_file = lab.path("dhclient.pid");
        let files = files.iter().flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()]).collect();
        Dhclient { binary, files, pid_file }
    }

    /// The command line `dhclient -4 <flags> <the private files> <interface>`.
    pub fn args(&self, flags: &[&str], interface: &str) -> Vec<String> {
        let mut args = vec![self.binary.display().to_string(), "-4".into()];
        args.extend(flags.iter().map(|f| f.to_string()));
        args.extend(self.files.iter().cloned());
        args.push(interface.to_string());
        args
    }

    /// `dhclient -r` in `ns`: it must release `leased` and succeed, and the running
    /// dhclient `running` (found through the pid file) must exit; returns how it ended.
    /// `events` is the file the `-sf` script records its events in.
    pub fn release(
        &self,
        lab: &mut Lab,
        (ns, interface): (&str, &str),
        leased: Ipv4Addr,
        running: usize,
        events: &Path,
        context: impl Fn() -> String,
    ) -> ExitStatus {
        // With -d, dhclient rewrites its pid file (truncated, then the number written)
        // after the script of each bind (BOUND, RENEW) has run: just after the script
        // recorded its event the file can be empty for a moment, and a `-r` reading it
        // then stops nothing, so the running dhclient goes on. Wait for that rewrite:
        // the pid file written no earlier than the last event, holding the running PID.
        let pid_line = format!("{}\n", lab.pid(running));
        let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let rewritten = || {
            let (written, event) = (modified(&self.pid_file)?, modified(events)?);
            (written >= event && read_lossy(&self.pid_file) == pid_line).then_some(())
        };
        wait_for(Duration::from_secs(5), "dhclient to rewrite its pid file after the last event", rewritten, &context);
        let log = lab.path("dhclient-release.log");
        let status = lab.run(ns, &self.args(&["-r", "-v"], interface), &log, Duration::from_secs(20));
        let out = read_lossy(&log);
        assert!(status.success(), "dhclient -r: {status}\n{out}");
        assert!(out.contains(&format!("DHCPRELEASE of {leased}")), "{out}");
        wait_for(Duration::from_secs(5), "the running dhclient to exit after -r", || lab.try_wait(running), context)
    }
}
