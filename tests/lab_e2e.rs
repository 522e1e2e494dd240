//! End to end: a QEMU VM (SeaBIOS + the e1000 iPXE ROM) PXE-boots through ramboot's
//! own DHCP and HTTP into stage one, loads the tiny image into RAM and reports ready.
//! The node's final state and events are read back over the admin API by
//! `ramboot-lab --report`, and asserted here. `ramboot-lab` is the lab crate's
//! binary, built (with cargo, once) by `ramboot_lab::bins`.
//!
//! Needs root (namespaces, tap, port 67) and QEMU. CI runs as root and installs QEMU
//! (`.ci/run`); elsewhere the test skips with a message when either is missing.

mod common;

use ramboot_lab::harness;
use serde_json::Value;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One VM at a time: two TCG guests on two cores only slow each other down, and the
/// tests share one lab directory (its image cache).
static ONE_LAB: Mutex<()> = Mutex::new(());

/// Why the lab cannot run here (not root, no `ip` or no QEMU), if it cannot.
fn skip_reason() -> Option<String> {
    harness::skip_reason(&[("qemu-system-x86_64 (apt-get install qemu-system-x86)", harness::QEMU)])
}

/// `ramboot-lab`, built from this checkout.
fn ramboot_lab() -> Command {
    Command::new(&ramboot_lab::bins::workspace().unwrap_or_else(|e| panic!("building ramboot-lab: {e}")).lab)
}

fn lab_dir() -> PathBuf {
    // Kept between runs so the kernel download and image builds are cached.
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lab-e2e")
}

#[test]
fn qemu_node_pxe_boots_into_ram_and_reports_ready() {
    if common::skipped("qemu_node_pxe_boots_into_ram_and_reports_ready", skip_reason().as_deref()) {
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let dir = lab_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.json");
    let _ = std::fs::remove_file(&report);
    let status = ramboot_lab()
        .args(["--once", "--timeout", "300", "--profile", "tiny", "--dir"])
        .arg(&dir)
        .arg("--report")
        .arg(&report)
        .status()
        .expect("running ramboot-lab");
    assert!(status.success(), "ramboot-lab failed ({status}); see {}/console.log and server.log", dir.display());

    let detail: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let node = &detail["node"];
    assert_eq!(node["state"], "ready", "{detail:#}");
    assert_eq!(node["mac"], "52:54:00:72:62:01");
    assert!(node["ip"].as_str().is_some_and(|ip| ip.starts_with("10.213.0.")), "{node}");
    assert_eq!(node["arch"], "bios", "DHCP saw SeaBIOS's iPXE ROM as BIOS (option 93 = 0)");
    let nics = node["inventory"]["nics"].as_array().expect("inventory from the agent's hello");
    assert!(nics.iter().any(|n| n["mac"] == "52:54:00:72:62:01"), "{nics:?}");
    assert_eq!(detail["boot"]["outcome"], "ready");
    assert_eq!(detail["boot"]["image"]["name"], "tiny");

    // The current boot's state moves, in order, each with a timestamp and phase duration.
    let boot = detail["boot"]["id"].clone();
    let events = detail["events"].as_array().unwrap();
    let moves: Vec<&str> = events
        .iter()
        .filter(|e| e["boot_id"] == boot && e["kind"] == "state")
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(moves, ["booting", "stage1", "loading", "handoff", "ready"], "{events:#?}");
    for e in events.iter().filter(|e| e["boot_id"] == boot && e["kind"] == "state" && e["state"] != "booting") {
        assert!(e["phase_ms"].as_i64().is_some_and(|ms| ms >= 0), "{e}");
    }
    assert!(
        events.iter().any(|e| e["message"].as_str().is_some_and(|m| m.starts_with("image verified: sha256"))),
        "the agent reports the verified hash: {events:#?}"
    );
    assert!(events.iter().any(|e| e["kind"] == "dhcp"), "the lease is an event too");
    // The profile's overlay was rendered for this node and laid over the image.
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap();
    assert!(
        console.contains("ramboot: node-525400726201 (52:54:00:72:62:01) runs profile tiny"),
        "stage two prints its rendered /etc/motd; console:\n{console}"
    );
}

/// Operators edit profiles while nodes boot. A broken save must not disturb the boot
/// in flight (it completes on the last good version) and a fixed save applies to
/// the next boot. Boot 1 runs while the test saves a broken `tiny.yaml` and then a
/// fixed, changed one; the lab then resets the VM for boot 2.
#[test]
fn live_profile_edits_never_break_a_boot_and_apply_to_the_next() {
    if common::skipped("live_profile_edits_never_break_a_boot_and_apply_to_the_next", skip_reason().as_deref()) {
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let dir = lab_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report-live-edit.json");
    let mut lab = ramboot_lab()
        .args(["--once", "--boots", "2", "--timeout", "300", "--profile", "tiny", "--dir"])
        .arg(&dir)
        .arg("--report")
        .arg(&report)
        .stdout(Stdio::piped())
        .spawn()
        .expect("running ramboot-lab");
    let profile = dir.join("profiles/tiny.yaml");
    let server_log = dir.join("server.err");
    let mut edited = false;
    for line in std::io::BufReader::new(lab.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        println!("{line}");
        if !edited && line.contains("iPXE script served") {
            edited = true;
            let good = std::fs::read_to_string(&profile).unwrap();
            // A broken save (as an editor writes it: a new file renamed over the old one).
            let tmp = dir.join("profiles/.tiny.yaml.swp");
            std::fs::write(&tmp, "name: tiny\nstage1: stage1\nimage: [broken\n").unwrap();
            std::fs::rename(&tmp, &profile).unwrap();
            let refused = wait_for(Duration::from_secs(20), || {
                std::fs::read_to_string(&server_log).unwrap_or_default().contains("profile refused")
            });
            assert!(refused, "the server logs the refused edit");
            let log = std::fs::read_to_string(&server_log).unwrap();
            assert!(log.contains("tiny.yaml:3:"), "with file:line:col: {log}");
            // The fix, with a visible change: a new revision.
            std::fs::write(&tmp, format!("{good}vars:\n  edition: two\n")).unwrap();
            std::fs::rename(&tmp, &profile).unwrap();
        }
    }
    let status = lab.wait().unwrap();
    assert!(edited, "the lab served a boot script");
    assert!(status.success(), "ramboot-lab failed ({status}); see {}/console.log and server.err", dir.display());

    let detail: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let events = detail["events"].as_array().unwrap();
    let moves = |state: &str| -> Vec<&Value> { events.iter().filter(|e| e["state"] == state).collect() };
    let booting = moves("booting");
    assert_eq!(booting.len(), 2, "two boots: {events:#?}");
    let revision = |e: &Value| e["message"].as_str().unwrap().split("revision ").nth(1).unwrap()[..12].to_string();
    let (first, second) = (revision(booting[0]), revision(booting[1]));
    assert_ne!(first, second, "the fix applies to the next boot");
    let ready: Vec<&Value> = moves("ready");
    assert_eq!(ready.len(), 2, "both boots reached ready: {events:#?}");
    assert_eq!(ready[0]["boot_id"], booting[0]["boot_id"], "boot 1 completed on the last good version");
    assert_eq!(detail["node"]["state"], "ready");
}

fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// UEFI: OVMF with QEMU's efi-e1000 iPXE ROM (option 93 = 7) boots the same way.
#[test]
fn qemu_uefi_node_pxe_boots_into_ram() {
    if common::skipped("qemu_uefi_node_pxe_boots_into_ram", skip_reason().as_deref()) {
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let dir = lab_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report-uefi.json");
    let status = ramboot_lab()
        .args(["--once", "--uefi", "--timeout", "300", "--profile", "tiny", "--dir"])
        .arg(&dir)
        .arg("--report")
        .arg(&report)
        .status()
        .expect("running ramboot-lab");
    assert!(status.success(), "ramboot-lab --uefi failed ({status}); see {}/console.log", dir.display());
    let detail: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(detail["node"]["state"], "ready", "{detail:#}");
    assert_eq!(detail["node"]["arch"], "efi-x64", "DHCP saw UEFI x64 (option 93)");
}

/// The other half of the diskless design: a compute node logs in to its iSCSI
/// volume, writes a file and syncs; QEMU is killed (SIGKILL, a hypervisor crash); the
/// node PXE-boots again, logs in again on its own, and reads the file back intact.
#[test]
fn vm_data_on_iscsi_survives_a_hypervisor_crash() {
    if common::skipped("vm_data_on_iscsi_survives_a_hypervisor_crash", skip_reason().as_deref()) {
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let dir = lab_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let profiles = dir.join("crash-profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    std::fs::write(profiles.join("crash.yaml"), CRASH_PROFILE).unwrap();
    let report = dir.join("report-crash.json");
    let status = ramboot_lab()
        .args(["--once", "--iscsi", "--crash", "--boots", "2", "--memory-mb", "1024", "--timeout", "400"])
        .args(["--profile", "crash", "--profiles"])
        .arg(&profiles)
        .arg("--dir")
        .arg(&dir)
        .arg("--report")
        .arg(&report)
        .status()
        .expect("running ramboot-lab");
    assert!(status.success(), "ramboot-lab failed ({status}); see {}/console.log", dir.display());
    let detail: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let messages: Vec<&str> =
        detail["events"].as_array().unwrap().iter().filter_map(|e| e["message"].as_str()).collect();
    let logins =
        messages.iter().filter(|m| m.starts_with("iSCSI: logged in to iqn.2026-11.io.ramboot:target-")).count();
    assert_eq!(logins, 2, "each boot logged in on its own: {messages:#?}");
    let wrote = messages.iter().find_map(|m| m.strip_prefix("crashtest: wrote ")).expect("boot 1 wrote");
    let read = messages.iter().find_map(|m| m.strip_prefix("crashtest: read ")).expect("boot 2 read");
    assert_eq!(read, wrote, "the file written before the crash reads back intact");
    assert_eq!(detail["node"]["state"], "ready");
}

const CRASH_PROFILE: &str = r#"name: crash
description: compute-node plus a hook that writes (first boot) or reads (later boots) a marker on its VM disk.
stage1: stage1
image: compute-node
kernel_args:
  - console=tty0
  - console=ttyS0,115200n8
files:
  - path: /etc/ramboot/hooks/volumes-ready
    mode: "0755"
    template: |
      #!/bin/sh
      set -e
      dev=$(ls /dev/disk/by-path/*-lun-1 | head -n 1)
      blkid "$dev" >/dev/null 2>&1 || mkfs.ext4 -q -F "$dev"
      mkdir -p /mnt/vmdisk
      mount "$dev" /mnt/vmdisk
      if [ -f /mnt/vmdisk/marker ]; then
        /usr/sbin/ramboot-agent report "crashtest: read $(cat /mnt/vmdisk/marker)"
      else
        echo "written by boot $(cat /proc/sys/kernel/random/boot_id)" >/mnt/vmdisk/marker
        sync
        /usr/sbin/ramboot-agent report "crashtest: wrote $(cat /mnt/vmdisk/marker)"
      fi
"#;
