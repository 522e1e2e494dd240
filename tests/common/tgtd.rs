//! A private tgtd for tests: its own control port, a loopback portal.

use ramboot::iscsi::tgt::Tgt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub fn skip_reason() -> Option<&'static str> {
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    if !root {
        return Some("not root (tgtd needs it)");
    }
    if !Path::new("/usr/sbin/tgtd").exists() || !Path::new("/usr/bin/iscsi-inq").exists() {
        return Some("tgt and libiscsi-bin are not installed");
    }
    None
}

/// A private tgtd: stopped as LAB.md says (delete targets, then the system; tgtd
/// ignores SIGTERM), and killed by PID if it lingers.
pub struct Tgtd {
    child: Child,
    pub control: u16,
    pub portal: u16,
}

impl Tgtd {
    /// A tgtd of our own, listening on its portal. Both of its ports can be taken by
    /// someone else between our pick and tgtd's bind, and tgtd does not say so on its
    /// exit code: a portal it cannot bind is only logged ("failed to create/bind to
    /// portal"), and it runs on without one, so every login is refused (libiscsi:
    /// "iscsi_service_reconnect_if_loggedin. Can not reconnect right now"); a control
    /// port held by another tgtd makes ours exit while `tgtadm` gets its answers from
    /// the other one. So it is ready only when our child holds both listening sockets;
    /// when another process took one, a fresh pair of ports is tried.
    pub fn start() -> Tgtd {
        let mut taken = vec![];
        for _ in 0..5 {
            match Self::try_start() {
                Ok(tgtd) => return tgtd,
                Err(why) => {
                    eprintln!("{why}\ntrying fresh ports");
                    taken.push(why)
                }
            }
        }
        panic!("no tgtd of our own could start:\n{}", taken.join("\n"));
    }

    fn try_start() -> Result<Tgtd, String> {
        // Free now; tgtd binds it a few milliseconds later, unless another process does.
        let portal = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // Unique per tgtd: the control socket lives in /var/run/tgtd, shared by all.
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        // tgtd refuses control ports of 32768 and up; room for three per test process.
        let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 3;
        let control = 1000 + (std::process::id() % 10000) as u16 * 3 + next;
        let mut child = Command::new("tgtd")
            .args(["-f", "-C", &control.to_string(), "--iscsi", &format!("portal=127.0.0.1:{portal}")])
            .stdout(std::process::Stdio::null())
            // A file, not a pipe: tgtd logs as it works and would block on a full pipe.
            .stderr(std::fs::File::create(Self::log_path(control, portal)).expect("tgtd log file"))
            .spawn()
            .expect("starting tgtd");
        let control_socket = format!("/var/run/tgtd/socket.{control}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(Self::log_path(control, portal)).unwrap_or_default();
                let _ = std::fs::remove_file(Self::log_path(control, portal));
                // The socket files are the other tgtd's: leave them.
                if log.contains("another tgtd is using") {
                    return Err(format!("control port {control} is another tgtd's: {log}"));
                }
                panic!("tgtd exited ({status}): {log}");
            }
            let ours = holds(child.id(), &listeners("/proc/net/unix", |f| f.get(7) == Some(&control_socket.as_str())));
            if ours
                && Command::new("tgtadm")
                    .args(["-C", &control.to_string(), "--op", "show", "--mode", "system"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(Self::log_path(control, portal)).unwrap_or_default();
                let _ = std::fs::remove_file(Self::log_path(control, portal));
                panic!("tgtd did not come up: {log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let tgtd = Tgtd { child, control, portal };
        // tgtd answers from its event loop only, so it has bound its portal by now, or
        // logged that it could not.
        let local = format!("{:08X}:{portal:04X}", u32::from_ne_bytes([127, 0, 0, 1]));
        if holds(
            tgtd.child.id(),
            &listeners("/proc/net/tcp", |f| f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A")),
        ) {
            return Ok(tgtd);
        }
        let log = std::fs::read_to_string(Self::log_path(control, portal)).unwrap_or_default();
        drop(tgtd);
        Err(format!("portal 127.0.0.1:{portal} was taken before tgtd bound it: {log}"))
    }

    pub fn backend(&self) -> Tgt {
        Tgt { control_port: Some(self.control) }
    }

    pub fn url(&self, target: &str, chap: Option<(&str, &str)>, lun: u32) -> String {
        let cred = chap.map(|(u, s)| format!("{u}%{s}@")).unwrap_or_default();
        format!("iscsi://{cred}127.0.0.1:{}/{target}/{lun}", self.portal)
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        let c = self.control.to_string();
        let _ = Command::new("tgtadm")
            .args(["-C", &c, "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1", "--force"])
            .output();
        let _ = Command::new("tgtadm").args(["-C", &c, "--op", "delete", "--mode", "system"]).output();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.remove_sockets();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.remove_sockets();
    }
}

impl Tgtd {
    /// Per control port and portal: a tgtd that finds its control port taken must not
    /// write over the log of the one that has it.
    fn log_path(control: u16, portal: u16) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("ramboot-test-tgtd-{control}-{portal}.log"))
    }

    /// tgtd leaves its control socket behind; ours go with it (and its log, shown
    /// first if the test failed).
    fn remove_sockets(&self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(Self::log_path(self.control, self.portal)).unwrap_or_default();
            eprintln!("tgtd (control port {}, portal {}) logged:\n{log}", self.control, self.portal);
        }
        let _ = std::fs::remove_file(Self::log_path(self.control, self.portal));
        for suffix in ["", ".lock"] {
            let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}{suffix}", self.control));
        }
    }
}

/// The inodes of the listening sockets in a `/proc/net` table whose row (split on
/// white space) matches.
fn listeners(table: &str, row: impl Fn(&[&str]) -> bool) -> Vec<String> {
    let text = std::fs::read_to_string(table).unwrap_or_default();
    let inode = if table.ends_with("unix") { 6 } else { 9 };
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
