//! A rollout of a node that has no BMC, end to end: a real `ramboot serve` in a lab
//! namespace and one diskless QEMU VM (reboots allowed: a guest reboot PXE-boots
//! again), booted into RAM on profile `tiny`. `ramboot rollout start --node MAC
//! --to-profile tiny2` cannot power-cycle it, so the server asks its agent:
//! stage two's `ramboot-agent commands` hears the reboot on its long poll of
//! `GET /boot/v1/command`, says so, and runs `reboot -f`; the VM netboots `tiny2`,
//! reports ready, and the rollout is done. Checked on the way: the request is in
//! the audit trail under the rollout's name and in the node's timeline, with its
//! delivery; the console shows the agent's own words.
//!
//! Needs root, QEMU with the iPXE ROM and the lab's image build (`.ci/run`
//! installs them); elsewhere it skips with a message, in CI it fails.

mod common;

use common::netns::{api_get_in, cli_in, link_lab_images, ServeInLab};
use ramboot_lab::harness::{bridge_with_tap, log_text, read_lossy, tail, Lab, PXE_ROM, QEMU};
use ramboot_lab::qemu::PxeVm;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const ADDR: &str = "10.219.0.1";
const MAC: &str = "52:54:00:72:73:01";

/// `ramboot ARGS` in `ns` against the lab's server.
fn cli(ns: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    cli_in(ns, &format!("http://{ADDR}:8080"), token, args)
}

/// One admin-API GET from inside `ns`; `None` while the server does not answer.
fn get(ns: &str, token: &str, path: &str) -> Option<Value> {
    api_get_in(ns, &format!("http://{ADDR}:8080"), token, path)
}

#[test]
fn a_rollout_reboots_a_node_without_a_bmc_through_its_agent() {
    let test = "a_rollout_reboots_a_node_without_a_bmc_through_its_agent";
    let tools: Vec<(&str, &[&str])> =
        vec![("qemu-system-x86_64 (qemu-system-x86)", QEMU), ("pxe-e1000.rom (ipxe-qemu)", PXE_ROM)];
    let Some(mut lab) = Lab::for_test(test, &tools) else { return };
    let pid = std::process::id();
    let ns = lab.netns(&format!("rba{pid}"));
    let (bridge, tap) = bridge_with_tap(&ns, 'a', &[format!("{ADDR}/24")]);

    // The server's files: images and two profiles alike but for their names.
    let root = lab.dir().to_path_buf();
    for d in ["data", "profiles"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let built = Instant::now();
    link_lab_images(&root.join("data"));
    eprintln!("images ready in {:.0}s", built.elapsed().as_secs_f64());
    let started = Instant::now();
    let tiny = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/tiny.yaml")).unwrap();
    std::fs::write(root.join("profiles/tiny.yaml"), &tiny).unwrap();
    std::fs::write(root.join("profiles/tiny2.yaml"), tiny.replace("name: tiny", "name: tiny2")).unwrap();
    let config = format!(
        "interface: {bridge}\nserver_address: {ADDR}\nhttp:\n  listen: {ADDR}:8080\ntftp:\n  listen: {ADDR}:69\n\
         dhcp:\n  subnet: 10.219.0.0/24\n  range: [10.219.0.100, 10.219.0.150]\nipv6_ra: true\n\
         default_profile: tiny\n"
    );
    let ramboot = lab.start_ramboot(&ns, &config, "info");
    let token = std::fs::read_to_string(root.join("data/admin.token")).unwrap().trim().to_string();

    // One diskless VM, no BMC: a guest reboot boots from the network again.
    let console = lab.path("console.log");
    let vm = PxeVm { no_reboot: false, ..PxeVm::bios(&tap, MAC, &console) };
    let qemu = lab.spawn("qemu", &ns, &vm.command_line(), &lab.path("qemu.log"), &[]);
    let log_path = ramboot.log.clone();
    let context =
        || format!("console:\n{}\nramboot:\n{}", tail(&read_lossy(&console), 30), tail(&log_text(&log_path), 40));
    let shown = |path: &str| get(&ns, &token, path);
    let first = lab.wait_alive(
        qemu,
        Duration::from_secs(300),
        "the VM ready on tiny",
        || shown(&format!("/nodes/{MAC}")).filter(|d| d["node"]["state"] == "ready" && d["boot"]["profile"] == "tiny"),
        context,
    );
    let first_boot = first["node"]["current_boot_id"].clone();
    eprintln!("ready on tiny at {:.0}s", started.elapsed().as_secs_f64());
    assert!(first["node"]["bmc"].is_null(), "no BMC: {first:#}");

    let (ok, out, err) = cli(&ns, &token, &["rollout", "start", "--node", MAC, "--to-profile", "tiny2", "--json"]);
    assert!(ok, "{out}{err}");
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"].as_i64().unwrap();
    let rollout = || shown(&format!("/rollouts/{id}"));
    let done = lab.wait_alive(
        qemu,
        Duration::from_secs(300),
        "the rollout to end",
        || rollout().filter(|r| matches!(r["status"].as_str(), Some("done" | "halted" | "aborted"))),
        || format!("{}\nrollout: {:#}", context(), rollout().unwrap_or_default()),
    );
    eprintln!("rollout ended at {:.0}s", started.elapsed().as_secs_f64());
    assert_eq!(done["status"], "done", "{done:#}\n{}", context());

    // On tiny2, in a new boot, after the agent's reboot.
    let now = shown(&format!("/nodes/{MAC}")).unwrap();
    assert_eq!((now["node"]["state"].as_str(), now["boot"]["profile"].as_str()), (Some("ready"), Some("tiny2")));
    assert_ne!(now["node"]["current_boot_id"], first_boot, "a new boot");
    let text = read_lossy(&console);
    assert!(text.contains("rebooting at the server's request"), "{}", context());
    assert_eq!(text.matches("RAMBOOT-STAGE2-READY").count(), 2, "two boots: {}", context());

    // The timeline, the rollout's events and the audit trail say how.
    let events = shown(&format!("/nodes/{MAC}/events?limit=500")).unwrap().to_string();
    let by_rollout = format!("(rollout {id})");
    for said in [
        "reboot requested through the agent by server",
        "reboot request delivered to the agent",
        "rebooting at the server's request",
    ] {
        assert!(events.contains(said), "{said:?} not in the node's events: {events}");
    }
    let timeline = shown(&format!("/rollouts/{id}/events?limit=500")).unwrap().to_string();
    assert!(timeline.contains("reboot through the agent (no BMC)"), "{timeline}");
    let (ok, audit, _) = cli(&ns, &token, &["audit", "--node", MAC]);
    assert!(ok);
    assert!(
        audit.lines().any(|l| l.contains(&by_rollout) && l.contains("node.reboot")),
        "the reboot request is audited as the rollout: {audit}"
    );
    lab.stop_ramboot(&ramboot);
    eprintln!("done in {:.0}s", started.elapsed().as_secs_f64());
}
