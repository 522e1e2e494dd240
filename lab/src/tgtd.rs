//! A private tgtd (userspace iSCSI target), as LAB.md says to run one: its own
//! control port (the control socket directory `/var/run/tgtd` is shared by every
//! namespace), a portal of its own, optionally inside a lab namespace. Dropping it
//! stops it the only way tgtd stops (delete its targets, then the "system"; it
//! ignores SIGTERM), killing it by PID if it lingers.

use crate::net::in_ns;
use crate::LabError;
use ramboot::iscsi::tgt::Tgt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// A control port for a new tgtd, unique among this process's (up to three at a time)
/// and, by PID, among other processes'; tgtd refuses ports of 32768 and up.
pub fn control_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let next = NEXT.fetch_add(1, Ordering::Relaxed) % 3;
    1000 + (std::process::id() % 10000) as u16 * 3 + next
}

/// Where and how to run a tgtd.
#[derive(Debug, Clone)]
pub struct TgtdOptions {
    /// Run inside this namespace (`None`: where the caller is).
    pub netns: Option<String>,
    pub control: u16,
    pub host: IpAddr,
    pub port: u16,
    /// tgtd's own log (a file, never a pipe: it would block on a full one).
    pub log: PathBuf,
    /// Remove the log with the tgtd.
    pub remove_log: bool,
}

pub struct Tgtd {
    child: Child,
    pub control: u16,
    pub host: IpAddr,
    /// The portal's port.
    pub portal: u16,
    log: PathBuf,
    remove_log: bool,
}

impl Tgtd {
    /// Start tgtd and wait (up to 10 s) until it is ready: it holds its own control
    /// socket and answers on it, and it listens on its portal.
    ///
    /// Either port can be someone else's by the time tgtd binds it, and tgtd does not
    /// say so on its exit code: a portal it cannot bind is only logged ("failed to
    /// create/bind to portal") and it runs on without one, so every login is refused
    /// (libiscsi: "iscsi_service_reconnect_if_loggedin. Can not reconnect right now");
    /// a control port held by another tgtd makes ours exit while `tgtadm` gets its
    /// answers from the other one. Both come back as [`LabError::PortTaken`], with
    /// our tgtd stopped (and the other one untouched), for the caller to retry on
    /// fresh ports.
    pub fn start(opts: TgtdOptions) -> Result<Tgtd, LabError> {
        let program = ["tgtd", "-f", "-C", &opts.control.to_string(), "--iscsi", &portal_arg(opts.host, opts.port)];
        let mut cmd = match &opts.netns {
            Some(ns) => in_ns(ns, &program),
            None => {
                let mut cmd = Command::new(program[0]);
                cmd.args(&program[1..]);
                cmd
            }
        };
        let log = std::fs::File::create(&opts.log).map_err(|e| LabError::file(&opts.log, e))?;
        // `ip netns exec` execs tgtd in place, so this PID is tgtd's either way.
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| LabError::spawn("tgtd (apt-get install tgt)", e))?;
        let control_socket = format!("/var/run/tgtd/socket.{}", opts.control);
        let answers = || tgtadm(opts.control, &["--op", "show", "--mode", "system"]).is_ok_and(|o| o.status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // Not a `Tgtd` yet: its drop would stop the tgtd that owns the port.
                let log = crate::logs::read_lossy(&opts.log);
                if log.contains("another tgtd is using") {
                    return Err(LabError::PortTaken { what: format!("control port {}", opts.control), detail: log });
                }
                return Err(LabError::Failed { command: "tgtd".into(), detail: format!("exited ({status}): {log}") });
            }
            let ours = holds(child.id(), &listeners(child.id(), "unix", |f| f.get(7) == Some(&&*control_socket)));
            if ours && answers() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let detail = format!(" (see {})", opts.log.display());
                return Err(LabError::Timeout { what: "tgtd coming up".into(), secs: 10, detail });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let tgtd = Tgtd {
            child,
            control: opts.control,
            host: opts.host,
            portal: opts.port,
            log: opts.log,
            remove_log: opts.remove_log,
        };
        // tgtd answers from its event loop only, so by now it has bound its portal or
        // logged that it could not.
        if tgtd.listens_on_portal() {
            Ok(tgtd)
        } else {
            let detail = crate::logs::read_lossy(&tgtd.log);
            Err(LabError::PortTaken { what: format!("portal {}:{}", tgtd.host, tgtd.portal), detail })
        }
    }

    /// Whether tgtd itself holds the portal's listening socket (`/proc/<pid>/net`
    /// shows the tables of its own namespace).
    fn listens_on_portal(&self) -> bool {
        let pid = self.child.id();
        let (table, local) = match self.host {
            IpAddr::V4(v4) => ("tcp", format!("{:08X}:{:04X}", u32::from_ne_bytes(v4.octets()), self.portal)),
            IpAddr::V6(v6) => {
                let octets = v6.octets();
                let words: String =
                    octets.chunks(4).map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))).collect();
                ("tcp6", format!("{words}:{:04X}", self.portal))
            }
        };
        // Listening sockets are in state 0A.
        holds(pid, &listeners(pid, table, |f| f.get(1) == Some(&&*local) && f.get(3) == Some(&"0A")))
    }

    /// ramboot's tgt back-end, driving this tgtd.
    pub fn backend(&self) -> Tgt {
        Tgt { control_port: Some(self.control) }
    }

    /// An `iscsi://` URL (libiscsi's form) of a LUN of `target` on this portal.
    pub fn url(&self, target: &str, chap: Option<(&str, &str)>, lun: u32) -> String {
        let cred = chap.map(|(u, s)| format!("{u}%{s}@")).unwrap_or_default();
        format!("iscsi://{cred}{}:{}/{target}/{lun}", self.host, self.portal)
    }

    fn tgtadm(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        tgtadm(self.control, args)
    }
}

fn tgtadm(control: u16, args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new("tgtadm").arg("-C").arg(control.to_string()).args(args).output()
}

/// The inodes of the listening sockets in one of `pid`'s `/proc/<pid>/net` tables
/// whose row (split on white space) matches.
fn listeners(pid: u32, table: &str, row: impl Fn(&[&str]) -> bool) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
    let inode = if table == "unix" { 6 } else { 9 };
    text.lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|f| row(f))
        .filter_map(|f| f.get(inode).map(|i| i.to_string()))
        .collect()
}

/// Whether process `pid` has one of these sockets open.
fn holds(pid: u32, inodes: &[String]) -> bool {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten();
    fds.filter_map(|fd| std::fs::read_link(fd.path()).ok()).any(|link| {
        let link = link.to_string_lossy();
        link.strip_prefix("socket:[").and_then(|l| l.strip_suffix(']')).is_some_and(|i| inodes.iter().any(|x| x == i))
    })
}

fn portal_arg(host: IpAddr, port: u16) -> String {
    format!("portal={host}:{port}")
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        if let Ok(out) = self.tgtadm(&["--lld", "iscsi", "--op", "show", "--mode", "target"]) {
            for target in ramboot::iscsi::tgt::parse_show(&String::from_utf8_lossy(&out.stdout)) {
                let tid = target.tid.to_string();
                let _ =
                    self.tgtadm(&["--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", &tid, "--force"]);
            }
        }
        let _ = self.tgtadm(&["--op", "delete", "--mode", "system"]);
        if crate::process::wait_until(&mut self.child, Instant::now() + Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // tgtd leaves its control socket behind; ours go with it.
        for suffix in ["", ".lock"] {
            let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}{suffix}", self.control));
        }
        if std::thread::panicking() {
            eprintln!(
                "tgtd (control port {}, portal {}) logged:\n{}",
                self.control,
                self.portal,
                crate::logs::read_lossy(&self.log)
            );
        }
        if self.remove_log {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
