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

/// Run `ramboot-lab --once` booting profile `tiny` with `extra` options, in the
/// shared lab dir, and return its `--report` (the node's detail, as the admin API
/// answered it).
fn boot_tiny(report_name: &str, extra: &[&str]) -> Value {
    boot_tiny_with(report_name, extra, &[])
}

/// [`boot_tiny`] with `env` set for the lab (and so for the servers it starts).
fn boot_tiny_with(report_name: &str, extra: &[&str], env: &[(&str, &str)]) -> Value {
    let dir = lab_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join(report_name);
    let _ = std::fs::remove_file(&report);
    let status = ramboot_lab()
        .envs(env.iter().copied())
        .args(["--once", "--timeout", "300", "--profile", "tiny"])
        .args(extra)
        .arg("--dir")
        .arg(&dir)
        .arg("--report")
        .arg(&report)
        .status()
        .expect("running ramboot-lab");
    assert!(
        status.success(),
        "ramboot-lab {extra:?} failed ({status}); see {}/console.log and server*.err",
        dir.display()
    );
    serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap()
}

/// The current boot's id and its state moves, in order.
fn boot_moves(detail: &Value) -> (Value, Vec<&str>) {
    let boot = detail["boot"]["id"].clone();
    let moves = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["boot_id"] == boot && e["kind"] == "state")
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    (boot, moves)
}

#[test]
fn qemu_node_pxe_boots_into_ram_and_reports_ready() {
    if common::skipped("qemu_node_pxe_boots_into_ram_and_reports_ready", skip_reason().as_deref()) {
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    // JSON logs, so the log check below reads fields, not text.
    let detail = boot_tiny_with("report.json", &[], &[("RAMBOOT_LOG_FORMAT", "json")]);
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
    let (boot, moves) = boot_moves(&detail);
    let events = detail["events"].as_array().unwrap();
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
    let console = std::fs::read_to_string(lab_dir().join("console.log")).unwrap();
    assert!(
        console.contains("ramboot: node-525400726201 (52:54:00:72:62:01) runs profile tiny"),
        "stage two prints its rendered /etc/motd; console:\n{console}"
    );
    server_logged_one_line_per_boot_phase(node);
}

/// At `info` the server logs one line per boot phase of a node, no more (README,
/// "Running it for real"): a lease for each DHCP client (the ROM's iPXE, ramboot's iPXE,
/// stage one), the TFTP read, the script, the agent's hello, and each state it reports.
/// Offers, HTTP requests and the like are `debug`.
fn server_logged_one_line_per_boot_phase(node: &Value) {
    let log = std::fs::read_to_string(lab_dir().join("server.err")).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {l}")))
        .collect();
    let (mac, id, ip) = (node["mac"].as_str().unwrap(), &node["id"], node["ip"].as_str().unwrap());
    let about_node = |l: &&Value| {
        l["mac"] == mac
            || l["span"]["mac"] == mac
            || l["node"] == *id
            || l["span"]["client"].as_str().is_some_and(|c| c.starts_with(&format!("{ip}:")))
    };
    let ours: Vec<&Value> = lines.iter().filter(|l| l["level"] == "INFO").filter(about_node).collect();
    let phase = |l: &Value| {
        let message = l["message"].as_str().unwrap_or_default();
        message.split(':').next().unwrap_or_default().to_string()
    };
    let mut phases: Vec<String> = ours.iter().map(|l| phase(l)).collect();
    phases.dedup();
    let shown: Vec<String> = ours.iter().map(|l| l.to_string()).collect();
    assert_eq!(
        phases,
        ["DHCP decision", "TFTP read", "DHCP decision", "boot started", "DHCP decision", "agent hello", "node moved"],
        "the node's info lines:\n{}",
        shown.join("\n")
    );
    assert_eq!(ours.len(), 9, "one line per phase:\n{}", shown.join("\n"));
    let states: Vec<&str> = ours.iter().filter_map(|l| l["state"].as_str()).collect();
    assert_eq!(states, ["loading", "handoff", "ready"], "{}", shown.join("\n"));
    let leases: Vec<&str> =
        ours.iter().filter(|l| l["message"] == "DHCP decision").filter_map(|l| l["reply"].as_str()).collect();
    assert_eq!(leases, ["Ack"; 3], "offers are debug: {}", shown.join("\n"));
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

/// Issue 13: two servers on one PostgreSQL database, on one bridge. The one that
/// served the VM's iPXE script is killed (SIGKILL) at once; the node finishes the
/// boot on the other: stage one finds its server gone, moves on to the peer named
/// on its command line, and the peer accepts the boot token the dead one minted.
#[test]
fn a_boot_finishes_on_the_other_server_when_its_server_dies() {
    const TEST: &str = "a_boot_finishes_on_the_other_server_when_its_server_dies";
    if common::skipped(TEST, skip_reason().as_deref()) {
        return;
    }
    if common::skipped_without_postgres(TEST) {
        return;
    }
    let db = common::testdb::TestDb::postgres().expect("RAMBOOT_TEST_POSTGRES is set");
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let detail = boot_tiny("report-failover.json", &["--failover", "--database", db.url()]);
    assert_eq!(detail["node"]["state"], "ready", "{detail:#}");
    let (boot, moves) = boot_moves(&detail);
    let events = detail["events"].as_array().unwrap();
    assert_eq!(moves, ["booting", "stage1", "loading", "handoff", "ready"], "{events:#?}");

    let failover = &detail["failover"];
    let (killed, survivor) = (failover["killed"].as_str().unwrap(), failover["survivor"].as_str().unwrap());
    assert_ne!(killed, survivor, "{failover}");
    assert_eq!(failover["script_server"], killed, "the server killed is the one that served the script");
    let log = |server: &str| harness::log_text(std::path::Path::new(failover["logs"][server].as_str().unwrap()));
    assert!(log(killed).contains("boot started: iPXE script served"), "{}", log(killed));
    // The timeline names the server that served the script (its `cluster.name`,
    // by default its address).
    let killed_name = killed.trim_start_matches("http://").split(':').next().unwrap_or_default();
    let served_by = format!("; server {killed_name})");
    assert!(
        events
            .iter()
            .any(|e| e["state"] == "booting" && e["message"].as_str().is_some_and(|m| m.ends_with(&served_by))),
        "the booting event names {killed_name}: {events:#?}"
    );
    // The later reports went to the survivor: the agent says it moved on, and only
    // the survivor took the `ready` report.
    let moved_on = format!("server {killed} unreachable, continuing on {survivor}");
    assert!(
        events.iter().any(|e| e["boot_id"] == boot && e["message"].as_str().is_some_and(|m| m.contains(&moved_on))),
        "the agent reports its failover ({moved_on}): {events:#?}"
    );
    assert_eq!(failover["ready_logged_by"], serde_json::json!([survivor]), "{failover}");
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
    let detail = boot_tiny("report-uefi.json", &["--uefi"]);
    assert_eq!(detail["node"]["state"], "ready", "{detail:#}");
    assert_eq!(detail["node"]["arch"], "efi-x64", "DHCP saw UEFI x64 (option 93)");
}

/// UEFI HTTP Boot (issue 16, item 1): OVMF's own HTTP Boot client, on a NIC with
/// no iPXE ROM and the firmware's PXE turned off, asks DHCP as `HTTPClient`, gets
/// `http://…/ipxe/snponly.efi`, fetches it from ramboot's HTTP server and runs it;
/// that iPXE (over the firmware's SNP) boots the node into RAM as usual.
#[test]
fn qemu_uefi_http_boot_node_boots_into_ram() {
    if common::skipped("qemu_uefi_http_boot_node_boots_into_ram", skip_reason().as_deref()) {
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let detail = boot_tiny("report-http-boot.json", &["--http-boot"]);
    assert_eq!(detail["node"]["state"], "ready", "{detail:#}");
    // The firmware's own DHCP said HTTPClient and was handed the URL (the iPXE it
    // loaded then asks as iPXE, arch 7, and is given the script).
    let log = ramboot_lab::logs::log_text(&lab_dir().join("server.err"));
    let http_offer = log
        .lines()
        .find(|l| l.contains("DHCP decision") && l.contains("firmware=HttpClient"))
        .unwrap_or_else(|| panic!("no DHCP decision for an HTTPClient in the server's log"));
    assert!(http_offer.contains("boot_file=\"http://") && http_offer.contains("/ipxe/snponly.efi\""), "{http_offer}");
    let console = ramboot_lab::logs::log_text(&lab_dir().join("console.log"));
    for step in ["Start HTTP Boot over IPv4", "URI: http://", "/ipxe/snponly.efi", "using SNP"] {
        assert!(console.contains(step), "the console lacks {step:?}");
    }
    assert!(!console.contains("Start PXE over IPv4"), "the firmware tried PXE");
}

/// Secure Boot (issue 16, item 2): OVMF's Secure Boot build with Microsoft's keys
/// enrolled, enforcing, boots through its own PXE a node whose profile says
/// `boot_chain: signed`. DHCP hands it shim (Microsoft-signed), shim loads Debian's
/// signed GRUB, GRUB reads the node's config that ramboot renders over TFTP and
/// loads Debian's signed kernel and stage one's initrd, and the node reaches
/// `ready`. Enforcement is proved from inside: the kernel saw Secure Boot on, and
/// the agent read the firmware's `SecureBoot` variable and the lockdown it caused.
/// (`tests/firmware_paths.rs` shows the same firmware refusing unsigned iPXE.)
#[test]
fn qemu_secure_boot_signed_chain_boots_into_ram() {
    if common::skipped("qemu_secure_boot_signed_chain_boots_into_ram", skip_reason().as_deref()) {
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let detail = boot_tiny("report-secure-boot.json", &["--secure-boot"]);
    assert_eq!(detail["node"]["state"], "ready", "{detail:#}");
    assert_eq!(detail["node"]["inventory"]["firmware"]["secure_boot"], true, "{detail:#}");
    assert_eq!(detail["node"]["inventory"]["firmware"]["lockdown"], "integrity", "{detail:#}");
    let messages: Vec<&str> =
        detail["events"].as_array().unwrap().iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(messages.iter().any(|m| m.starts_with("GRUB config served (profile tiny")), "{messages:#?}");
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("agent hello:") && m.ends_with("; UEFI, Secure Boot on, lockdown integrity")),
        "{messages:#?}"
    );
    let log = ramboot_lab::logs::log_text(&lab_dir().join("server.err"));
    let offer = log
        .lines()
        .find(|l| l.contains("DHCP decision") && l.contains("firmware=Pxe"))
        .unwrap_or_else(|| panic!("no DHCP decision for the firmware's PXE in the server's log"));
    assert!(offer.contains("boot_file=\"shimx64.efi\""), "{offer}");
    let console = ramboot_lab::logs::log_text(&lab_dir().join("console.log"));
    for step in [
        "NBP filename is shimx64.efi",
        "Fetching Netboot Image grubx64.efi",
        "is booting profile tiny",
        "EFI stub: UEFI Secure Boot is enabled",
        "secureboot: Secure boot enabled",
        "Kernel is locked down from EFI Secure Boot",
    ] {
        assert!(console.contains(step), "the console lacks {step:?}");
    }
}

/// arm64 (issue 16, item 4): QEMU's `virt` machine (cortex-a57, TCG) with AAVMF,
/// whose own PXE asks DHCP as arch 11. Debian ships no arm64 iPXE, so the node is
/// on the signed chain: shimaa64 → grubaa64 → its GRUB config over TFTP → Debian's
/// arm64 kernel and a stage one built for arm64 (`stage1-arm64`, the agent for
/// aarch64-unknown-linux-musl) → `tiny-arm64` → `ready`.
#[test]
fn qemu_arm64_node_boots_into_ram() {
    if common::skipped("qemu_arm64_node_boots_into_ram", skip_reason().as_deref()) {
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let detail = boot_tiny("report-arm64.json", &["--arch", "arm64", "--memory-mb", "1024"]);
    assert_eq!(detail["node"]["state"], "ready", "{detail:#}");
    assert_eq!(detail["node"]["arch"], "efi-arm64", "DHCP saw arm64 UEFI (option 93 = 11)");
    let kernel = detail["node"]["inventory"]["kernel"].as_str().unwrap_or_default();
    assert!(kernel.ends_with("-arm64"), "stage one ran Debian's arm64 kernel: {kernel}");
    assert_eq!(detail["node"]["inventory"]["firmware"]["uefi"], true, "{detail:#}");
    assert_eq!(detail["boot"]["image"]["name"], "tiny-arm64", "{detail:#}");
    let console = ramboot_lab::logs::log_text(&lab_dir().join("console.log"));
    for step in ["NBP filename is shimaa64.efi", "Fetching Netboot Image grubaa64.efi", "(stage one stage1-arm64)"] {
        assert!(console.contains(step), "the console lacks {step:?}");
    }
}

/// An IPv6-only boot network (`ramboot-lab --ipv6`: no DHCPv4 for the node). QEMU's
/// iPXE ROM under OVMF takes its address from ramboot's DHCPv6 (the RA says M),
/// is handed ramboot's iPXE over HTTP, which fetches the script, kernel and initrd
/// from `http://[fd00:213::1]:8080`; stage one's agent gets the same address by
/// DHCPv6 (one address per node across three DUIDs: the boot token is bound to it)
/// and talks to the server over IPv6 until `ready`.
#[test]
fn qemu_ipv6_only_node_boots_into_ram() {
    if common::skipped("qemu_ipv6_only_node_boots_into_ram", skip_reason().as_deref()) {
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let detail = boot_tiny("report-ipv6.json", &["--ipv6"]);
    assert_eq!(detail["node"]["state"], "ready", "{detail:#}");
    let ip = detail["node"]["ip"].as_str().unwrap_or_default();
    assert!(ip.starts_with("fd00:213::"), "the node's address is its DHCPv6 one: {ip}");
    let messages: Vec<&str> =
        detail["events"].as_array().unwrap().iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(messages.iter().any(|m| m.starts_with(&format!("DHCPv6 lease {ip} "))), "{messages:#?}");
    assert!(!messages.iter().any(|m| m.starts_with("DHCP lease ")), "no DHCPv4 lease: {messages:#?}");
    let console = ramboot_lab::logs::log_text(&lab_dir().join("console.log"));
    for step in [
        "Filename: http://[fd00:213::1]:8080/ipxe/snponly.efi".to_string(),
        "Filename: http://[fd00:213::1]:8080/boot.ipxe?mac=52:54:00:72:62:01".to_string(),
        format!("network up on eth0 ({ip})"),
        "talking to http://[fd00:213::1]:8080".to_string(),
        "RAMBOOT-STAGE2-READY".to_string(),
    ] {
        assert!(console.contains(&step), "the console lacks {step:?}");
    }
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

/// Another host on the boot network (its own namespace on the lab's bridge, with its
/// own DHCP lease) tries every attack of `docs/threat-model.md` while the real node
/// PXE-boots to ready in QEMU: each is refused, recorded and leaks nothing.
#[test]
fn another_host_on_the_boot_network_gets_nothing_while_the_node_boots() {
    const TEST: &str = "another_host_on_the_boot_network_gets_nothing_while_the_node_boots";
    let tools = [
        ("udhcpc (apt-get install udhcpc)", &["/usr/sbin/udhcpc", "/sbin/udhcpc", "/usr/bin/udhcpc"][..]),
        ("curl (apt-get install curl)", &["/usr/bin/curl"][..]),
        ("python3", &["/usr/bin/python3"][..]),
        ("iscsi-inq (apt-get install libiscsi-bin)", &["/usr/bin/iscsi-inq"][..]),
    ];
    let missing = skip_reason().or_else(|| harness::skip_reason(&tools));
    if common::skipped(TEST, missing.as_deref()) {
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let dir = lab_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report-adversary.json");
    let _ = std::fs::remove_file(&report);
    let mut lab = ramboot_lab()
        .args(["--timeout", "300", "--profile", "tiny", "--iscsi", "--dir"])
        .arg(&dir)
        .arg("--report")
        .arg(&report)
        .stdout(Stdio::piped())
        .spawn()
        .expect("running ramboot-lab");
    let lines = adversary::follow_stdout(lab.stdout.take().unwrap());
    let lab_ns = adversary::wait_line(&lines, "lab: network namespace ", Duration::from_secs(900))
        .split_whitespace()
        .nth(3)
        .map(|n| n.trim_end_matches(':').to_string())
        .expect("the lab names its namespace");
    adversary::wait_line(&lines, "lab: registered ", Duration::from_secs(60));
    let attacker = adversary::Host::join(&lab_ns, &dir);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| adversary::attack(&attacker, &dir, &lines)));
    // Ctrl-C: the lab stops the VM and ramboot and deletes its namespace.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(lab.id() as i32), nix::sys::signal::Signal::SIGINT);
    let status = lab.wait().expect("waiting for ramboot-lab");
    drop(attacker);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert!(status.success(), "ramboot-lab failed ({status}); see {}/console.log and server.log", dir.display());

    let detail: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(detail["node"]["state"], "ready", "the node booted to ready meanwhile: {detail:#}");
    assert_eq!(detail["node"]["failures"], 0, "no fake failure counted");
    let messages: Vec<&str> =
        detail["events"].as_array().unwrap().iter().filter_map(|e| e["message"].as_str()).collect();
    for expected in ["does not hold the DHCP lease of 52:54:00:72:62:01", "this boot's token is bound to 10.213.0."] {
        assert!(messages.iter().any(|m| m.starts_with("refused: ") && m.contains(expected)), "{messages:#?}");
    }
}

mod adversary {
    use super::*;
    use std::sync::mpsc;

    pub const SERVER: &str = "10.213.0.1";
    pub const NODE_MAC: &str = "52:54:00:72:62:01";

    /// The lab's stdout, line by line, echoed for the test log.
    pub fn follow_stdout(out: std::process::ChildStdout) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                println!("{line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }

    pub fn wait_line(lines: &mpsc::Receiver<String>, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(e) => panic!("the lab never printed {prefix:?} ({e})"),
            }
        }
    }

    /// The other host: a namespace whose veth joins the lab's bridge, with a lease
    /// from ramboot's DHCP like any machine on the segment.
    pub struct Host {
        pub ns: String,
        pub ip: String,
    }

    impl Host {
        pub fn join(lab_ns: &str, dir: &std::path::Path) -> Host {
            let pid = std::process::id();
            let (ns, inside, outside) = (format!("rbadv{pid}"), format!("adv{pid}h"), format!("adv{pid}b"));
            harness::ip(&["netns", "add", &ns]);
            let mut host = Host { ns: ns.clone(), ip: String::new() };
            harness::veth((&ns, &inside), (lab_ns, &outside));
            harness::ip_in(lab_ns, &["link", "set", &outside, "master", "rbbr0", "up"]);
            harness::ip_in(&ns, &["link", "set", &inside, "address", "02:00:00:ad:00:01", "up"]);
            harness::ip_in(&ns, &["link", "set", "lo", "up"]);
            let script = dir.join("adversary-udhcpc.sh");
            harness::write_executable(
                &script,
                "#!/bin/sh\n[ \"$1\" = bound ] && ip addr add \"$ip/$mask\" dev \"$interface\"\nexit 0\n",
            );
            let udhcpc = harness::tool(&["/usr/sbin/udhcpc", "/sbin/udhcpc", "/usr/bin/udhcpc"]);
            let script = script.display().to_string();
            let out = run(&ns, &[&udhcpc, "-i", &inside, "-n", "-q", "-f", "-t", "10", "-T", "1", "-s", &script]);
            assert!(out.status.success(), "the other host got no lease: {}", text(&out));
            let addr = String::from_utf8_lossy(&run(&ns, &["ip", "-4", "-o", "addr", "show", "dev", &inside]).stdout)
                .split_whitespace()
                .nth(3)
                .and_then(|a| a.split('/').next())
                .expect("the other host's address")
                .to_string();
            println!("adversary: host {ns} leased {addr} from ramboot");
            host.ip = addr;
            host
        }
    }

    impl Drop for Host {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        }
    }

    pub fn run(ns: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip").args(["netns", "exec", ns]).args(args).output().expect("ip netns exec")
    }

    pub fn text(out: &std::process::Output) -> String {
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// `curl` from the other host: status and body.
    pub fn http(host: &Host, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
        let url = format!("http://{SERVER}:8080{path}");
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec!["curl", "-s", "-m", "10", "-X", method, "-w", "\n%{http_code}"];
        if let Some(a) = &auth {
            args.extend(["-H", a.as_str()]);
        }
        if let Some(b) = body {
            args.extend(["-H", "Content-Type: application/json", "--data", b]);
        }
        args.push(&url);
        let out = run(&host.ns, &args);
        let all = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = all.rsplit_once('\n').unwrap_or(("", &all));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn metric(host: &Host, needle: &str) -> f64 {
        let (_, text) = http(host, "GET", "/metrics", None, None);
        text.lines().filter(|l| l.contains(needle)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }

    const PY_DHCP_82: &str = r#"
import socket, struct, sys
pkt = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x0a0b0c0d, 0, 0x8000, bytes(4), bytes(4), bytes(4), bytes(4),
                  bytes.fromhex("020000ad0099") + bytes(10), bytes(64), bytes(128))
pkt += bytes([99, 130, 83, 99, 53, 1, 1, 82, 6, 1, 4, 0x65, 0x76, 0x69, 0x6c, 255])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[1].encode())
s.bind(("0.0.0.0", 68))
for _ in range(3):
    s.sendto(pkt, ("255.255.255.255", 67))
"#;

    const PY_TFTP_FLOOD: &str = r#"
import socket, sys
server, count = sys.argv[1], int(sys.argv[2])
refused = 0
socks = []
for i in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(b"\x00\x01undionly.kpxe\x00octet\x00", (server, 69))
    socks.append(s)
for s in socks:
    try:
        data, _ = s.recvfrom(2048)
        if data[:2] == b"\x00\x05":
            refused += 1
    except socket.timeout:
        pass
print(refused)
"#;

    /// Every attack, in boot order.
    pub fn attack(host: &Host, dir: &std::path::Path, lines: &mpsc::Receiver<String>) {
        let refusals = |reason: &str| metric(host, &format!("ramboot_boot_refusals_total{{reason=\"{reason}\"}}"));

        // A MAC DHCP never saw, then the real node's MAC: no script, no token.
        let (status, body) = http(host, "GET", "/boot.ipxe?mac=52:54:00:ad:ad:ad", None, None);
        assert!(status == 403 && !body.contains("ramboot.token"), "{status} {body}");
        let (status, body) = http(host, "GET", &format!("/boot.ipxe?mac={NODE_MAC}"), None, None);
        assert!(status == 403 && !body.contains("ramboot.token"), "{status} {body}");
        assert!(body.contains(&format!("{} does not hold the DHCP lease of {NODE_MAC}", host.ip)), "{body}");
        assert!(refusals("unknown_node") >= 1.0 && refusals("not_lease_holder") >= 1.0);

        // Option 82 from a directly attached client (giaddr 0): dropped.
        let inside = format!("adv{}h", std::process::id());
        let out = run(&host.ns, &["python3", "-c", PY_DHCP_82, &inside]);
        assert!(out.status.success(), "{}", text(&out));
        let dropped = wait_metric(host, "outcome=\"dropped_relay_info\"");
        println!("adversary: option 82 without giaddr dropped ({dropped} counted)");

        // A TFTP session flood from one address: refused past the per-source cap.
        let out = run(&host.ns, &["python3", "-c", PY_TFTP_FLOOD, SERVER, "24"]);
        let refused: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
        assert!(refused >= 8, "the flood was not refused: {}", text(&out));
        assert!(metric(host, "outcome=\"source_busy\"") >= f64::from(refused));

        // The node's token, as anyone who saw its kernel command line has it.
        let console = dir.join("console.log");
        let token = harness::wait_for(
            Duration::from_secs(300),
            "the node's kernel command line on its console",
            || {
                let text = String::from_utf8_lossy(&std::fs::read(&console).ok()?).into_owned();
                let at = text.find("ramboot.token=")? + "ramboot.token=".len();
                let token: String = text[at..].chars().take_while(|c| c.is_ascii_hexdigit()).collect();
                (token.len() >= 32).then_some(token)
            },
            String::new,
        );
        let before = refusals("wrong_source");
        for (method, path, body) in [
            ("GET", "/boot/v1/plan", None),
            ("GET", "/boot/v1/overlay", None),
            ("POST", "/boot/v1/hello", Some(r#"{"cpus":1,"memory_bytes":1,"nics":[]}"#)),
            ("POST", "/boot/v1/events", Some(r#"{"state":"failed","message":"fake","progress":null}"#)),
            ("POST", "/boot/v1/events", Some(r#"{"state":"failed","message":"fake","progress":null}"#)),
        ] {
            let (status, reply) = http(host, method, path, Some(&token), body);
            assert_eq!(status, 403, "{method} {path} with a stolen token: {reply}");
            assert!(reply.contains("\"wrong_source\"") && !reply.contains("chap_secret"), "{reply}");
        }
        assert!(refusals("wrong_source") - before >= 5.0);

        // The node boots to ready meanwhile.
        wait_line(lines, "lab: node is ready", Duration::from_secs(300));

        // The node's iSCSI target, with its IQN and its CHAP secret (as if stolen),
        // from this host's address: refused by the target's ACL.
        let (iqn, target, user, secret) = node_iscsi_credentials(dir);
        let url = format!("iscsi://{user}%{secret}@{SERVER}:3260/{target}/1");
        let out = run(&host.ns, &["iscsi-inq", "-i", &iqn, &url]);
        assert!(!out.status.success(), "the node's disk answered another host: {}", text(&out));
        println!("adversary: iSCSI login as {iqn} from {} refused: {}", host.ip, text(&out).trim());
        // And the stolen token still gets nothing after ready.
        let (status, _) = http(host, "GET", "/boot/v1/overlay", Some(&token), None);
        assert_eq!(status, 403);
    }

    fn wait_metric(host: &Host, needle: &str) -> f64 {
        harness::wait_for(
            Duration::from_secs(10),
            needle,
            || Some(metric(host, needle)).filter(|v| *v >= 1.0),
            String::new,
        )
    }

    /// What the node's plan carried, read from the lab's database.
    fn node_iscsi_credentials(dir: &std::path::Path) -> (String, String, String, String) {
        let url = format!("sqlite://{}", dir.join("data/ramboot.db").display());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = ramboot::store::Store::open(&url).await.expect("the lab's database");
            let node = store.node_by_mac(NODE_MAC.parse().unwrap()).await.unwrap().expect("the node");
            let secret = store
                .chap_secret(node.id, || Err::<String, _>(ramboot::store::StoreError::NoSuchNode("no secret".into())))
                .await
                .expect("the node's CHAP secret");
            store.close().await;
            let prefix = "iqn.2026-11.io.ramboot";
            (
                format!("{prefix}:node-{}", node.id),
                format!("{prefix}:target-{}", node.id),
                ramboot::config::IscsiConfig::chap_user(node.id),
                secret,
            )
        })
    }
}
