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
    /// Start tgtd and wait (up to 10 s) until it answers on its control port.
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
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| LabError::spawn("tgtd (apt-get install tgt)", e))?;
        let mut tgtd = Tgtd {
            child,
            control: opts.control,
            host: opts.host,
            portal: opts.port,
            log: opts.log,
            remove_log: opts.remove_log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !tgtd.tgtadm(&["--op", "show", "--mode", "system"]).is_ok_and(|o| o.status.success()) {
            let log = || crate::logs::read_lossy(&tgtd.log);
            if let Ok(Some(status)) = tgtd.child.try_wait() {
                return Err(LabError::Failed {
                    command: "tgtd".into(),
                    detail: format!("exited ({status}): {}", log()),
                });
            }
            if Instant::now() > deadline {
                let detail = format!(" (see {})", tgtd.log.display());
                return Err(LabError::Timeout { what: "tgtd coming up".into(), secs: 10, detail });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(tgtd)
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
        Command::new("tgtadm").arg("-C").arg(self.control.to_string()).args(args).output()
    }
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
        if self.remove_log {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
