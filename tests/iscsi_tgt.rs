//! ramboot's tgt back-end against a real tgtd and libiscsi's initiator tools:
//! the node's IQN with its CHAP secret sees its LUN; a wrong IQN, a wrong secret or
//! no secret are refused; exports are idempotent; a target deleted behind ramboot's
//! back is reported and re-created over the same data; and a few suites of
//! libiscsi's conformance tests pass against the target ramboot configured.
//!
//! Needs root and Debian's `tgt` and `libiscsi-bin`, which `.ci/run` installs; the
//! tgtd is private (its own control port, a loopback portal) and stopped after.

use ramboot::iscsi::tgt::Tgt;
use ramboot::iscsi::{ensure_backing, Backend, Chap, Export, Lun};
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

const TARGET: &str = "iqn.2026-11.io.ramboot:node-7";
const INITIATOR: &str = "iqn.2026-11.io.ramboot:init-node-7";
const USER: &str = "node-7";
const SECRET: &str = "s3cr3tChapKey";

fn skip_reason() -> Option<&'static str> {
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
struct Tgtd {
    child: Child,
    control: u16,
    portal: u16,
}

impl Tgtd {
    fn start() -> Tgtd {
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

    fn backend(&self) -> Tgt {
        Tgt { control_port: Some(self.control) }
    }

    fn url(&self, chap: Option<(&str, &str)>, lun: u32) -> String {
        let cred = chap.map(|(u, s)| format!("{u}%{s}@")).unwrap_or_default();
        format!("iscsi://{cred}127.0.0.1:{}/{TARGET}/{lun}", self.portal)
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

fn run(tool: &str, args: &[&str]) -> Output {
    Command::new(tool).args(args).output().unwrap_or_else(|e| panic!("{tool}: {e}"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn export(backing: &Path) -> Export {
    Export {
        target_iqn: TARGET.into(),
        initiator_iqn: INITIATOR.into(),
        chap: Chap { user: USER.into(), secret: SECRET.into() },
        mutual_chap: None,
        luns: vec![Lun { number: 1, backing: backing.to_path_buf() }],
    }
}

#[tokio::test]
async fn only_the_nodes_iqn_with_its_chap_secret_sees_its_volume() {
    if let Some(reason) = skip_reason() {
        assert!(std::env::var_os("CI").is_none(), "CI must run the iSCSI tests, but: {reason}");
        eprintln!("SKIPPED iSCSI access control: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("node-7-vm.img");
    ensure_backing(&backing, 64 << 20).unwrap();
    let tgtd = Tgtd::start();
    let tgt = tgtd.backend();

    let first = tgt.ensure_export(&export(&backing)).await.unwrap();
    assert!(
        first.created_target && first.bound_initiator && first.bound_account && first.added_luns == [1],
        "{first:?}"
    );
    let again = tgt.ensure_export(&export(&backing)).await.unwrap();
    assert!(again.is_noop(), "exports are idempotent: {again:?}");

    let ok = run("iscsi-inq", &["-i", INITIATOR, &tgtd.url(Some((USER, SECRET)), 1)]);
    assert!(ok.status.success() && text(&ok).contains("DIRECT_ACCESS"), "{}", text(&ok));
    let cap = run("iscsi-readcapacity16", &["-i", INITIATOR, &tgtd.url(Some((USER, SECRET)), 1)]);
    assert!(cap.status.success() && text(&cap).contains(&(64u64 << 20).to_string()), "{}", text(&cap));

    let wrong_iqn = run("iscsi-inq", &["-i", "iqn.2026-11.io.ramboot:init-node-8", &tgtd.url(Some((USER, SECRET)), 1)]);
    assert!(!wrong_iqn.status.success() && text(&wrong_iqn).contains("Target not found"), "{}", text(&wrong_iqn));
    let listed = run(
        "iscsi-ls",
        &["-i", "iqn.2026-11.io.ramboot:init-node-8", &format!("iscsi://{USER}%{SECRET}@127.0.0.1:{}", tgtd.portal)],
    );
    assert!(!text(&listed).contains(TARGET), "another IQN does not even see the target: {}", text(&listed));
    let wrong_secret = run("iscsi-inq", &["-i", INITIATOR, &tgtd.url(Some((USER, "WrongSecret12")), 1)]);
    assert!(
        !wrong_secret.status.success() && text(&wrong_secret).contains("Authentication failure"),
        "{}",
        text(&wrong_secret)
    );
    let no_secret = run("iscsi-inq", &["-i", INITIATOR, &tgtd.url(None, 1)]);
    assert!(!no_secret.status.success(), "{}", text(&no_secret));

    // libiscsi's conformance suite, a few suites that tgt passes (LAB.md: 17 of its
    // 615 tests are tgt's own failures), against the target exactly as configured.
    let cu = run(
        "iscsi-test-cu",
        &[
            "-i",
            INITIATOR,
            "-t",
            "SCSI.TestUnitReady,SCSI.Inquiry,SCSI.ReadCapacity16,SCSI.Read10,SCSI.Write10",
            &tgtd.url(Some((USER, SECRET)), 1),
        ],
    );
    let report = text(&cu);
    assert!(cu.status.success(), "iscsi-test-cu:\n{report}");
    assert!(report.contains("Run Summary") && !report.contains("FAILED"), "{report}");
}

#[tokio::test]
async fn a_target_deleted_behind_our_back_is_recreated_over_the_same_data() {
    if let Some(reason) = skip_reason() {
        assert!(std::env::var_os("CI").is_none(), "CI must run the iSCSI tests, but: {reason}");
        eprintln!("SKIPPED iSCSI reconcile: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("node-7-vm.img");
    ensure_backing(&backing, 16 << 20).unwrap();
    std::fs::write(&backing, b"VM data that must survive").unwrap();
    ensure_backing(&backing, 16 << 20).unwrap();
    let tgtd = Tgtd::start();
    let tgt = tgtd.backend();
    tgt.ensure_export(&export(&backing)).await.unwrap();

    // Someone deletes the target with tgtadm directly.
    let c = tgtd.control.to_string();
    let gone =
        run("tgtadm", &["-C", &c, "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1", "--force"]);
    assert!(gone.status.success(), "{}", text(&gone));
    assert!(tgt.list().await.unwrap().is_empty(), "the drift is visible");

    let repair = tgt.ensure_export(&export(&backing)).await.unwrap();
    assert!(repair.created_target && repair.added_luns == [1], "{}", repair.describe());
    assert_eq!(&std::fs::read(&backing).unwrap()[..25], b"VM data that must survive");
    let ok = run("iscsi-inq", &["-i", INITIATOR, &tgtd.url(Some((USER, SECRET)), 1)]);
    assert!(ok.status.success(), "{}", text(&ok));

    assert!(tgt.remove_export(TARGET).await.unwrap());
    assert!(!tgt.remove_export(TARGET).await.unwrap(), "removing twice is fine");
    assert!(backing.exists(), "removing an export never deletes data");
}
