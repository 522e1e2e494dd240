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
    pub fn start() -> Tgtd {
        let portal = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // Unique per tgtd: the control socket lives in /var/run/tgtd, shared by all.
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        // tgtd refuses control ports of 32768 and up; room for three per test process.
        let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 3;
        let control = 1000 + (std::process::id() % 10000) as u16 * 3 + next;
        let child = Command::new("tgtd")
            .args(["-f", "-C", &control.to_string(), "--iscsi", &format!("portal=127.0.0.1:{portal}")])
            .stdout(std::process::Stdio::null())
            // A file, not a pipe: tgtd logs as it works and would block on a full pipe.
            .stderr(std::fs::File::create(Self::log_path(control)).expect("tgtd log file"))
            .spawn()
            .expect("starting tgtd");
        let mut tgtd = Tgtd { child, control, portal };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Command::new("tgtadm")
            .args(["-C", &control.to_string(), "--op", "show", "--mode", "system"])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            if let Ok(Some(status)) = tgtd.child.try_wait() {
                let log = std::fs::read_to_string(Self::log_path(control)).unwrap_or_default();
                panic!("tgtd exited ({status}): {log}");
            }
            assert!(Instant::now() < deadline, "tgtd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        tgtd
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
    fn log_path(control: u16) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("ramboot-test-tgtd-{control}.log"))
    }

    /// tgtd leaves its control socket behind; ours go with it (and its log).
    fn remove_sockets(&self) {
        let _ = std::fs::remove_file(Self::log_path(self.control));
        for suffix in ["", ".lock"] {
            let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}{suffix}", self.control));
        }
    }
}
