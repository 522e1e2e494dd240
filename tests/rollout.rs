//! A rolling re-provision end to end: three diskless VMs behind a real Redfish BMC
//! (sushy-emulator over a private libvirtd, `ramboot_lab::redfish`), declared in an
//! inventory file with their BMCs, booted into RAM on profile `tiny`, then rolled to
//! profile `tiny2` one at a time by `ramboot rollout`, with a drain and an undrain
//! hook from the server's config.
//!
//! The drain hook of the second node fails once (its "VMs" cannot migrate): the
//! rollout halts with that node, and the third stays untouched. The hook fixed, the
//! rollout is resumed, and ramboot is killed (SIGKILL) at that moment: the restarted
//! server continues the rollout from the database, and all three nodes end `ready`
//! on `tiny2`. From the rollout's events: never two nodes down at once. The audit
//! trail shows the file's declarations, the token's rollout commands and the
//! rollout's own changes.
//!
//! Needs root, QEMU with the iPXE ROM, libvirt, sushy-tools and the lab's image
//! build (`.ci/run` installs them all); elsewhere it skips with a message, in CI it
//! fails.

mod common;

use common::netns::ServeInLab;
use nix::sys::signal::{kill, Signal};
use ramboot_lab::harness::{log_text, read_lossy, tail, wait_for};
use ramboot_lab::redfish::{lab_with_bmc_bridge, Bmc, Vm};
use serde_json::Value;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const USER: &str = "ramboot";
const PASSWORD: &str = "bmc-Pa55word-rollout";
const ADDR: &str = "10.218.0.1";
const MACS: [&str; 3] = ["52:54:00:72:71:01", "52:54:00:72:71:02", "52:54:00:72:71:03"];
const HOSTS: [&str; 3] = ["hv-1", "hv-2", "hv-3"];

/// `ramboot ARGS` in `ns` against the lab's server: (success, stdout, stderr).
fn cli(ns: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    common::netns::cli_in(ns, &format!("http://{ADDR}:8080"), token, args)
}

/// One admin-API GET from inside `ns`; `None` while the server is down.
fn get(ns: &str, token: &str, path: &str) -> Option<Value> {
    common::netns::api_get_in(ns, &format!("http://{ADDR}:8080"), token, path)
}

/// When each node was down, from the rollout's events: from "draining" until
/// "ready on the target revision" or "up again".
fn down_intervals(events: &[Value]) -> Vec<(i64, i64, i64)> {
    let mut open: std::collections::BTreeMap<i64, i64> = Default::default();
    let mut out = vec![];
    for e in events {
        let (Some(node), Some(at), Some(m)) = (e["node_id"].as_i64(), e["at_ms"].as_i64(), e["message"].as_str())
        else {
            continue;
        };
        if m.contains(": draining") || m.contains(": no drain hook") {
            open.entry(node).or_insert(at);
        } else if m.starts_with("ready on the target revision") || m == "up again" {
            if let Some(start) = open.remove(&node) {
                out.push((node, start, at));
            }
        }
    }
    out.extend(open.into_iter().map(|(node, start)| (node, start, i64::MAX)));
    out
}

#[test]
fn a_rollout_drains_reboots_and_survives_a_failed_hook_and_a_restart() {
    let test = "a_rollout_drains_reboots_and_survives_a_failed_hook_and_a_restart";
    let Some((mut lab, ns, bridge)) = lab_with_bmc_bridge(test, &[], 'R', ADDR) else { return };
    let started = Instant::now();
    let pid = std::process::id();

    let vms: Vec<Vm> = (0..3)
        .map(|i| Vm {
            name: format!("rbr{pid}n{i}"),
            mac: MACS[i].into(),
            bridge: bridge.clone(),
            tap: format!("R{pid}t{i}"),
            memory_mb: 256,
        })
        .collect();
    let listen: SocketAddr = format!("{ADDR}:8000").parse().unwrap();
    let bmc = Bmc::start(&ns, listen, (USER, PASSWORD), &vms, &lab.path("sushy")).unwrap_or_else(|e| panic!("{e}"));

    // The server's files: images, two profiles, the BMC credential, the hooks.
    let root = lab.dir().to_path_buf();
    for d in ["data", "profiles", "inventory"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    common::netns::link_lab_images(&root.join("data"));
    let tiny = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/tiny.yaml")).unwrap();
    std::fs::write(root.join("profiles/tiny.yaml"), &tiny).unwrap();
    std::fs::write(root.join("profiles/tiny2.yaml"), tiny.replace("name: tiny", "name: tiny2")).unwrap();
    let secrets = root.join("secrets.yaml");
    std::fs::write(&secrets, format!("bmc-lab: \"{USER}:{PASSWORD}\"\n")).unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (hooks_log, fixed) = (root.join("hooks.log"), root.join("migration-fixed"));
    let drain = root.join("drain.sh");
    std::fs::write(
        &drain,
        format!(
            "#!/bin/sh\necho \"drain $RAMBOOT_NODE_HOSTNAME\" >> {log}\n\
             if [ \"$RAMBOOT_NODE_HOSTNAME\" = hv-2 ] && [ ! -e {fixed} ]; then\n\
             echo 'VM vm-42 could not migrate: no capacity on other hosts' >&2; exit 3\nfi\n",
            log = hooks_log.display(),
            fixed = fixed.display()
        ),
    )
    .unwrap();
    let undrain = root.join("undrain.sh");
    std::fs::write(
        &undrain,
        format!("#!/bin/sh\necho \"undrain $RAMBOOT_NODE_HOSTNAME\" >> {}\n", hooks_log.display()),
    )
    .unwrap();
    for f in [&drain, &undrain] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // The fleet in git: three hypervisors and their BMCs (no profile: that is the
    // rollout's to change).
    let mut fleet = String::from("nodes:\n");
    for i in 0..3 {
        fleet.push_str(&format!(
            "  - mac: {}\n    hostname: {}\n    labels: {{role: compute}}\n    bmc:\n      url: {}\n      credential: bmc-lab\n",
            MACS[i],
            HOSTS[i],
            bmc.system_url(i)
        ));
    }
    std::fs::write(root.join("inventory/fleet.yaml"), fleet).unwrap();
    let config = format!(
        "interface: {bridge}\nserver_address: {ADDR}\nhttp:\n  listen: {ADDR}:8080\ntftp:\n  listen: {ADDR}:69\n\
         dhcp:\n  subnet: 10.218.0.0/24\n  range: [10.218.0.100, 10.218.0.150]\nipv6_ra: true\n\
         default_profile: tiny\nsecrets: {}\nhooks:\n  drain-vms:\n    command: [{}]\n    timeout_secs: 30\n\
         \x20 undrain-vms:\n    command: [{}]\n    timeout_secs: 30\n",
        secrets.display(),
        drain.display(),
        undrain.display()
    );
    let mut ramboot = lab.start_ramboot(&ns, &config, "info");
    let token = std::fs::read_to_string(root.join("data/admin.token")).unwrap().trim().to_string();
    let log_path = ramboot.log.clone();
    let consoles: Vec<PathBuf> = bmc.domains.iter().map(|d| d.console.clone()).collect();
    let context = || {
        let consoles: Vec<String> = consoles.iter().map(|c| tail(&read_lossy(c), 8)).collect();
        format!("consoles:\n{}\nramboot:\n{}", consoles.join("\n--\n"), tail(&log_text(&log_path), 40))
    };
    let node = |i: usize| get(&ns, &token, &format!("/nodes/{}", MACS[i])).map(|d| d["node"].clone());
    wait_for(
        Duration::from_secs(30),
        "the inventory file applied",
        || (0..3).all(|i| node(i).is_some_and(|n| n["bmc"]["credential"] == "bmc-lab")).then_some(()),
        context,
    );

    // First boot of the fleet: all three netboot `tiny` at once.
    for mac in MACS {
        let (ok, out, err) = cli(&ns, &token, &["nodes", "power", mac, "on", "--pxe"]);
        assert!(ok, "{out}{err}");
    }
    let boots: Vec<Value> = wait_for(
        Duration::from_secs(400),
        "all three ready on tiny",
        || {
            let nodes: Vec<Value> = (0..3).filter_map(node).collect();
            (nodes.len() == 3 && nodes.iter().all(|n| n["state"] == "ready")).then_some(nodes)
        },
        context,
    );
    let first_boot = |i: usize| boots[i]["current_boot_id"].clone();
    eprintln!("fleet ready on tiny at {:.0}s", started.elapsed().as_secs_f64());

    // The rollout: one at a time, no failure tolerated.
    let (ok, out, err) = cli(
        &ns,
        &token,
        &[
            "rollout",
            "start",
            "--label",
            "role=compute",
            "--to-profile",
            "tiny2",
            "--batch",
            "1",
            "--max-failures",
            "0",
            "--drain",
            "drain-vms",
            "--undrain",
            "undrain-vms",
            "--ready-timeout",
            "5m",
            "--json",
        ],
    );
    assert!(ok, "{out}{err}");
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"].as_i64().unwrap();
    let rollout = |path: &str| get(&ns, &token, &format!("/rollouts/{id}{path}"));
    let halted = wait_for(
        Duration::from_secs(300),
        "the rollout to halt on hv-2's drain hook",
        || rollout("").filter(|r| r["status"] == "halted"),
        context,
    );
    eprintln!("halted at {:.0}s: {}", started.elapsed().as_secs_f64(), halted["reason"]);
    let reason = halted["reason"].as_str().unwrap();
    assert!(reason.contains("could not migrate"), "the hook's own words: {reason}");
    let phases: Vec<&str> =
        halted["nodes"].as_array().unwrap().iter().map(|n| n["phase"]["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, ["done", "failed", "pending"], "{halted:#}");
    assert_eq!(halted["nodes"][2]["attempts"], 0, "hv-3 untouched");
    let hv3 = node(2).unwrap();
    assert_eq!(
        (hv3["current_boot_id"].clone(), hv3["profile"].clone()),
        (first_boot(2), Value::Null),
        "hv-3 untouched"
    );
    assert!(bmc.domain_running(2).unwrap());
    let hv2 = node(1).unwrap();
    assert_eq!(
        (hv2["state"].as_str(), hv2["current_boot_id"].clone()),
        (Some("ready"), first_boot(1)),
        "hv-2 never rebooted"
    );
    let (ok, out, _) = cli(&ns, &token, &["rollout", "show", &id.to_string()]);
    assert!(ok);
    eprintln!("$ ramboot rollout show {id}\n{out}");

    // Fixed and resumed. Once hv-2's reboot is issued, the server crashes (SIGKILL)
    // and starts again: the rollout goes on from the database.
    std::fs::write(&fixed, "").unwrap();
    let (ok, out, err) = cli(&ns, &token, &["rollout", "resume", &id.to_string()]);
    assert!(ok, "{out}{err}");
    let hv2_id = halted["nodes"][1]["node_id"].as_i64().unwrap();
    wait_for(
        Duration::from_secs(60),
        "hv-2's second reboot issued",
        || {
            let events = rollout("/events?limit=500")?;
            let reboots = events.as_array()?.iter().filter(|e| {
                e["node_id"] == hv2_id && e["message"].as_str().is_some_and(|m| m.starts_with("reboot issued"))
            });
            (reboots.count() == 1).then_some(())
        },
        context,
    );
    kill(lab.pid(ramboot.idx), Signal::SIGKILL).unwrap();
    let _ = lab.stop(ramboot.idx, Duration::from_secs(5));
    let restarted_ms = ramboot::clock::now_ms();
    eprintln!("ramboot killed at {:.0}s, during hv-2's reboot; starting it again", started.elapsed().as_secs_f64());
    ramboot = lab.start_ramboot(&ns, &config, "info");
    let done = wait_for(
        Duration::from_secs(600),
        "the rollout done after the restart",
        || rollout("").filter(|r| matches!(r["status"].as_str(), Some("done" | "halted" | "aborted"))),
        || format!("{}\nrollout: {:#}", context(), rollout("").unwrap_or_default()),
    );
    eprintln!("rollout ended at {:.0}s", started.elapsed().as_secs_f64());
    assert_eq!(done["status"], "done", "{done:#}");
    for (i, mac) in MACS.iter().enumerate() {
        let n = node(i).unwrap();
        let boot = get(&ns, &token, &format!("/nodes/{mac}")).unwrap()["boot"].clone();
        assert_eq!((n["state"].as_str(), boot["profile"].as_str()), (Some("ready"), Some("tiny2")), "{n:#}");
        assert_ne!(n["current_boot_id"], first_boot(i), "a new boot");
    }

    // The restarted server saw hv-2 ready and drove hv-3.
    let events = rollout("/events?limit=500").unwrap();
    let after_restart: Vec<(i64, &str)> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["at_ms"].as_i64().is_some_and(|at| at >= restarted_ms))
        .filter_map(|e| Some((e["node_id"].as_i64()?, e["message"].as_str()?)))
        .collect();
    assert!(
        after_restart.iter().any(|(n, m)| *n == hv2_id && m.starts_with("ready on the target revision")),
        "{after_restart:?}"
    );

    // Never two down at once, from the rollout's own events.
    let events = rollout("/events?limit=500").unwrap();
    let events = events.as_array().unwrap().clone();
    let down = down_intervals(&events);
    for (a, (na, sa, ea)) in down.iter().enumerate() {
        for (nb, sb, eb) in &down[a + 1..] {
            assert!(ea <= sb || eb <= sa, "nodes {na} and {nb} were down at once: {down:?}\n{events:#?}");
        }
    }
    assert_eq!(down.len(), 4, "hv-1, hv-2 twice (its failed drain, then the retry), hv-3: {down:?}");
    let hooks = std::fs::read_to_string(&hooks_log).unwrap();
    assert_eq!(
        hooks.lines().collect::<Vec<_>>(),
        ["drain hv-1", "undrain hv-1", "drain hv-2", "drain hv-2", "undrain hv-2", "drain hv-3", "undrain hv-3"],
        "each hook ran once per attempt, in order, across the restart"
    );

    // Following a rollout that ended prints its timeline and its last progress line.
    let (ok, out, err) = cli(&ns, &token, &["rollout", "show", &id.to_string(), "--follow"]);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l == "[####################] 3/3 done · done"), "{out}");

    // The timeline as the CLI prints it, and the audit records the rollout left.
    let (ok, out, _) = cli(&ns, &token, &["rollout", "show", &id.to_string()]);
    assert!(ok);
    eprintln!("$ ramboot rollout show {id}\n{out}");
    let (ok, audit, _) = cli(&ns, &token, &["audit"]);
    assert!(ok);
    eprintln!("$ ramboot audit\n{audit}");
    let lines: Vec<&str> = audit.lines().collect();
    assert!(lines.iter().any(|l| l.contains("file fleet.yaml@") && l.contains("node.create")), "{audit}");
    assert!(lines.iter().any(|l| l.contains("token admin") && l.contains("rollout.start")), "{audit}");
    assert!(lines.iter().any(|l| l.contains("token admin") && l.contains("rollout.resume")), "{audit}");
    let by_rollout = format!("(rollout {id})");
    assert!(
        lines.iter().any(|l| l.contains(&by_rollout) && l.contains("node.update") && l.contains("\"tiny2\"")),
        "the rollout's profile change is audited: {audit}"
    );
    lab.stop_ramboot(&ramboot);
    eprintln!("done in {:.0}s", started.elapsed().as_secs_f64());
}
