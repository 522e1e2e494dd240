//! Power over Redfish end to end: a real `ramboot serve` whose secrets file holds
//! the BMC's credential, sushy-emulator in front of a private libvirtd whose VM sits
//! on ramboot's boot network (`ramboot_lab::redfish`), and the `ramboot` CLI.
//!
//! The VM boots from its empty disk unless told otherwise, so a DHCP lease from
//! ramboot after `nodes power MAC cycle --pxe` is the one-time override's doing.
//! Checked on the way: a node without a BMC says how to give it one; status is off,
//! then on; off stops the domain; every power action is in the audit trail under
//! the token's name; the poller's `ramboot_bmc_nodes` gauge follows; a wrong
//! password written into the secrets file (read on every call: no restart) is a
//! 502 naming the BMC, and no password appears in any answer, audit record or log.
//!
//! Needs root, QEMU with the iPXE ROM, libvirt and sushy-tools (`.ci/run` installs
//! them all); elsewhere it skips with a message, in CI it fails.

mod common;

use common::netns::ServeInLab;
use ramboot_lab::harness::{log_text, read_lossy, tail, wait_for};
use ramboot_lab::redfish::{in_netns, lab_with_bmc_bridge, Bmc, Vm};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

const USER: &str = "ramboot";
const PASSWORD: &str = "bmc-Pa55word-power";
const WRONG: &str = "not-the-Pa55word";
const MAC: &str = "52:54:00:72:70:01";
const ADDR: &str = "10.216.0.1";

/// `ramboot ARGS` in `ns` against the lab's server: (success, stdout, stderr).
fn cli(ns: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    common::netns::cli_in(ns, &format!("http://{ADDR}:8080"), token, args)
}

/// One admin-API call from inside `ns` (the server listens on the bridge there).
fn api(ns: &str, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    in_netns(ns, || {
        let req = ureq::request(method, &format!("http://{ADDR}:8080{path}"))
            .set("Authorization", &format!("Bearer {token}"));
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match result {
            Ok(resp) => {
                let status = resp.status();
                let text = resp.into_string().unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
            }
            Err(ureq::Error::Status(code, resp)) => (code, resp.into_json().unwrap_or(Value::Null)),
            Err(e) => panic!("{method} {path}: {e}"),
        }
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A series' value in `/metrics` (0 when absent).
fn metric(ns: &str, token: &str, series: &str) -> f64 {
    match api(ns, token, "GET", "/metrics", None).1 {
        Value::String(text) => common::prometheus_sum(&text, series),
        _ => 0.0,
    }
}

#[test]
fn nodes_power_through_the_cli_netboots_a_vm_behind_a_redfish_bmc() {
    let test = "nodes_power_through_the_cli_netboots_a_vm_behind_a_redfish_bmc";
    let Some((mut lab, ns, bridge)) = lab_with_bmc_bridge(test, &[], 'P', ADDR) else { return };
    let started = Instant::now();
    let pid = std::process::id();

    let vm = Vm {
        name: format!("rbp{pid}"),
        mac: MAC.into(),
        bridge: bridge.clone(),
        tap: format!("P{pid}t0"),
        memory_mb: 128,
    };
    let listen: SocketAddr = format!("{ADDR}:8000").parse().unwrap();
    let bmc = Bmc::start(&ns, listen, (USER, PASSWORD), &[vm], &lab.path("sushy")).unwrap_or_else(|e| panic!("{e}"));
    let system_url = bmc.system_url(0);
    eprintln!("BMC up in {:.1}s: {system_url}", started.elapsed().as_secs_f64());

    let secrets = lab.path("secrets.yaml");
    std::fs::write(&secrets, format!("bmc-lab: \"{USER}:{PASSWORD}\"\n")).unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = format!(
        "interface: {bridge}\nserver_address: {ADDR}\nhttp:\n  listen: {ADDR}:8080\ntftp:\n  listen: {ADDR}:69\n\
         dhcp:\n  subnet: 10.216.0.0/24\n  range: [10.216.0.100, 10.216.0.150]\nipv6_ra: true\n\
         secrets: {}\nbmc:\n  poll_secs: 1\n",
        secrets.display()
    );
    let ramboot = lab.start_ramboot(&ns, &config, "info,ramboot::bmc=debug");
    let token = std::fs::read_to_string(lab.path("data/admin.token")).unwrap().trim().to_string();
    let console = bmc.domains[0].console.clone();
    let context = || {
        format!(
            "console:\n{}\nsushy:\n{}\nramboot:\n{}",
            tail(&read_lossy(&console), 20),
            tail(&read_lossy(bmc.sushy.log()), 20),
            tail(&log_text(&ramboot.log), 30)
        )
    };
    let power = |args: &[&str]| {
        let mut all = vec!["nodes", "power", MAC];
        all.extend(args);
        let (ok, out, err) = cli(&ns, &token, &all);
        eprintln!("$ ramboot {}\n{out}{err}", all.join(" "));
        (ok, out, err)
    };

    // A registered node without a BMC: the error says how to give it one.
    let (ok, _, err) = cli(&ns, &token, &["nodes", "add", MAC, "--hostname", "power-1"]);
    assert!(ok, "{err}");
    let (ok, _, err) = power(&["status"]);
    assert!(!ok && err.contains("HTTP 409") && err.contains("has no BMC") && err.contains("PATCH"), "{err}");

    let (status, node) = api(
        &ns,
        &token,
        "PATCH",
        &format!("/api/v1/nodes/{MAC}"),
        Some(json!({"bmc": {"url": system_url, "credential": "bmc-lab"}})),
    );
    assert_eq!(status, 200, "{node}");
    assert!(!node.to_string().contains(PASSWORD));

    // Off, booting from its disk; then a PXE cycle: it netboots from ramboot.
    let (ok, out, err) = power(&["status"]);
    assert!(ok && out.contains(&format!("node {MAC}: power off")), "{out}{err}");
    let cycled = Instant::now();
    let (ok, out, err) = power(&["cycle", "--pxe"]);
    assert!(ok, "{err}\n{}", context());
    assert_eq!(out.trim(), format!("node {MAC}: power cycle (was off, now on; one-time PXE boot set)"));
    assert!(bmc.domain_running(0).unwrap());
    let lease = wait_for(
        Duration::from_secs(90),
        "a DHCP lease from ramboot for the VM",
        || {
            let (_, leases) = api(&ns, &token, "GET", "/api/v1/leases", None);
            leases.as_array()?.iter().find(|l| l["mac"] == MAC && l["state"] == "active").cloned()
        },
        context,
    );
    eprintln!("leased {} {:.1}s after the PXE cycle", lease["ip"], cycled.elapsed().as_secs_f64());

    let (ok, out, err) = power(&["status"]);
    assert!(ok && out.contains(&format!("node {MAC}: power on; boot override Pxe")), "{out}{err}");
    let (ok, out, _) = power(&["status", "--json"]);
    let view: Value = serde_json::from_str(&out).unwrap();
    assert!(ok && view["power"] == "on" && view["bmc_url"] == system_url.as_str(), "{view}");
    wait_for(
        Duration::from_secs(20),
        "the poller to count the node as on",
        || (metric(&ns, &token, "ramboot_bmc_nodes{status=\"on\"}") == 1.0).then_some(()),
        context,
    );
    assert!(metric(&ns, &token, "ramboot_bmc_poll_duration_seconds_count") >= 1.0);

    let (ok, out, err) = power(&["off"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("node {MAC}: power off (was on, now off)"));
    assert!(!bmc.domain_running(0).unwrap(), "ForceOff stops the domain");

    // The audit trail: both actions, by the admin token, with what they did.
    let (_, audit) = api(&ns, &token, "GET", &format!("/api/v1/audit?node={MAC}"), None);
    let powers: Vec<&Value> =
        audit["records"].as_array().unwrap().iter().filter(|r| r["action"] == "node.power").collect();
    assert_eq!(powers.len(), 2, "{audit}");
    assert!(powers.iter().all(|r| r["actor"] == json!({"kind": "token", "name": "admin"})), "{audit}");
    assert_eq!(powers[0]["before"]["power"], "off", "{audit}");
    assert_eq!(powers[0]["after"], json!({"power": "cycle", "pxe_once": true}));
    assert_eq!(powers[1]["after"], json!({"power": "off", "pxe_once": false}));

    // The password rotated in the secrets file only (read on every call: no restart)
    // and now wrong: a 502 that names the BMC, never a password; the poller sees it too.
    std::fs::write(&secrets, format!("bmc-lab: \"{USER}:{WRONG}\"\n")).unwrap();
    let (ok, _, err) = power(&["on"]);
    assert!(
        !ok && err.contains("HTTP 502") && err.contains(&format!("BMC {ADDR}:8000 refused the credentials")),
        "{err}"
    );
    let (status, body) = api(&ns, &token, "POST", &format!("/api/v1/nodes/{MAC}/power"), Some(json!({"action": "on"})));
    assert_eq!((status, body["error"]["code"].as_str()), (502, Some("bmc_refused")), "{body}");
    assert!(!bmc.domain_running(0).unwrap());
    wait_for(
        Duration::from_secs(20),
        "the poller to count the node as unauthorized",
        || (metric(&ns, &token, "ramboot_bmc_nodes{status=\"unauthorized\"}") == 1.0).then_some(()),
        context,
    );
    let (_, audit) = api(&ns, &token, "GET", &format!("/api/v1/audit?node={MAC}"), None);
    let text = audit.to_string();
    assert!(text.contains("refused the credentials"), "refused attempts are audited too: {audit}");

    let log = lab.stop_ramboot(&ramboot);
    for secret in [PASSWORD, WRONG] {
        assert!(!log.contains(secret) && !text.contains(secret), "a password leaked");
    }
    eprintln!("done in {:.1}s", started.elapsed().as_secs_f64());
}
