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
        let control =
            1000 + (std::process::id() % 20000) as u16 * 2 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let child = Command::new("tgtd")
            .args(["-f", "-C", &control.to_string(), "--iscsi", &format!("portal=127.0.0.1:{portal}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting tgtd");
        let tgtd = Tgtd { child, control, portal };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Command::new("tgtadm")
            .args(["-C", &control.to_string(), "--op", "show", "--mode", "system"])
            .output()
            .map_or(true, |o| !o.status.success())
        {
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
    /// tgtd leaves its control socket behind; ours go with it.
    fn remove_sockets(&self) {
        for suffix in ["", ".lock"] {
            let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}{suffix}", self.control));
        }
    }
}
