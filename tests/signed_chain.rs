//! The signed chain's files over real TFTP (curl as the client), as Debian's signed
//! GRUB asks for them: the bootstrap `grub/grub.cfg`, the node's own
//! `grub/node-<mac>.cfg` (rendered with the same trust rules and per-boot token as
//! `/boot.ipxe`), stage one's kernel and initrd by digest, and the optional probes
//! answered "not found". The boot in QEMU under Secure Boot is
//! `tests/lab_e2e.rs::qemu_secure_boot_signed_chain_boots_into_ram`.

mod common;

use common::{agent, call, TestServer};
use std::process::Command;

const MAC: &str = "52:54:00:5b:00:01";

/// `name` over TFTP from the test server: (curl's exit code, the bytes).
fn tftp_get(srv: &TestServer, name: &str) -> (i32, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("tftp://{}/{name}", srv.tftp))
        .output()
        .expect("running curl (.ci/run installs it)");
    (out.status.code().unwrap_or(-1), out.stdout)
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("UTF-8")
}

#[test]
fn grub_reads_its_bootstrap_then_the_nodes_config_and_stage_one_over_tftp() {
    let srv = TestServer::start();
    srv.lease(MAC);
    let (code, bootstrap) = tftp_get(&srv, "grub/grub.cfg");
    assert_eq!(code, 0);
    let bootstrap = text(bootstrap);
    assert!(bootstrap.contains("configfile $prefix/node-${net_default_mac}.cfg"), "{bootstrap}");

    let (code, config) = tftp_get(&srv, &format!("grub/node-{MAC}.cfg"));
    assert_eq!(code, 0);
    let config = text(config);
    let linux = config.lines().find(|l| l.starts_with("if linux ")).unwrap_or_else(|| panic!("{config}"));
    let kernel = linux.split_whitespace().nth(2).unwrap();
    assert!(kernel.starts_with("(tftp,127.0.0.1)/artifacts/sha256/") && kernel.ends_with("/vmlinuz"), "{linux}");
    for arg in ["console=ttyS0", "ramboot.server=http://127.0.0.1:", "ramboot.node=", "ramboot.token="] {
        assert!(linux.contains(&format!(" {arg}")), "{arg} missing: {linux}");
    }
    assert!(linux.contains(&format!(" ramboot.mac={MAC}; then")), "{linux}");
    // The boot started, as `/boot.ipxe` starts one: the token works for the agent.
    let token = linux.split_whitespace().find_map(|a| a.strip_prefix("ramboot.token=")).unwrap();
    let http = agent();
    let (status, _) = call(http.get(&srv.url("/boot/v1/plan")).set("Authorization", &format!("Bearer {token}")));
    assert_eq!(status, 200, "the token in the GRUB config is the boot's");
    let (_, node) = call(http.get(&srv.url(&format!("/api/v1/nodes/{MAC}"))).set("Authorization", &srv.admin_auth()));
    assert!(node.contains("GRUB config served (profile tiny"), "{node}");

    // Stage one's files by digest, byte for byte what HTTP serves.
    let initrd = config.lines().find_map(|l| l.trim().strip_prefix("if initrd ")).unwrap();
    for path in [kernel, initrd.trim_end_matches("; then")] {
        let name = path.strip_prefix("(tftp,127.0.0.1)/").unwrap();
        let (code, over_tftp) = tftp_get(&srv, name);
        assert_eq!(code, 0, "{name}");
        let mut over_http = Vec::new();
        std::io::Read::read_to_end(
            &mut http.get(&srv.url(&format!("/{name}"))).call().unwrap().into_reader(),
            &mut over_http,
        )
        .unwrap();
        assert!(over_tftp == over_http && !over_tftp.is_empty(), "{name}: TFTP and HTTP differ");
    }
    // curl's TFTP exit code 68: file not found.
    let (code, _) = tftp_get(&srv, &format!("artifacts/sha256/{}/vmlinuz", "0".repeat(64)));
    assert_eq!(code, 68);
    for probe in ["grub/x86_64-efi/command.lst", "grub/x86_64-efi/http.mod", "revocations_sbat.efi"] {
        assert_eq!(tftp_get(&srv, probe).0, 68, "{probe}");
    }
}

#[test]
fn grub_configs_follow_the_boot_scripts_trust_rules() {
    let srv = TestServer::start();
    // A MAC DHCP never saw: a config that says why and reboots later, no token.
    let (code, config) = tftp_get(&srv, &format!("grub/node-{MAC}.cfg"));
    assert_eq!(code, 0);
    let config = text(config);
    assert!(config.contains("ramboot: not booting") && config.contains("reboot"), "{config}");
    assert!(!config.contains("ramboot.token"), "{config}");
    // Not a MAC at all: not found.
    assert_eq!(tftp_get(&srv, "grub/node-not-a-mac.cfg").0, 68);
    // Leased elsewhere: the config is refused from this address.
    srv.lease_at(MAC, std::net::Ipv4Addr::new(127, 0, 0, 77));
    let (_, config) = tftp_get(&srv, &format!("grub/node-{MAC}.cfg"));
    let config = text(config);
    assert!(config.contains("ramboot: not booting") && !config.contains("ramboot.token"), "{config}");
}

#[test]
fn a_node_chooses_its_own_boot_chain_over_the_api() {
    let srv = TestServer::start();
    srv.lease(MAC);
    let http = agent();
    let url = srv.url(&format!("/api/v1/nodes/{MAC}"));
    let patch = |body: serde_json::Value| {
        common::send_json(http.request("PATCH", &url).set("Authorization", &srv.admin_auth()), body)
    };
    let (status, body) = patch(serde_json::json!({"boot_chain": "signed"}));
    assert_eq!(status, 200, "{body}");
    let node: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(node["boot_chain"], "signed");
    // Not a chain: refused with the error shape, nothing changed.
    let (status, body) = patch(serde_json::json!({"boot_chain": "pxe"}));
    assert_eq!(status, 422, "{body}");
    let (_, body) = call(http.get(&url).set("Authorization", &srv.admin_auth()));
    assert!(body.contains("\"boot_chain\":\"signed\""), "{body}");
    assert!(body.contains("boot chain set to signed"), "the timeline says it: {body}");
    // null: its profile's again.
    let (status, body) = patch(serde_json::json!({"boot_chain": null}));
    assert_eq!(status, 200, "{body}");
    let node: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(node["boot_chain"], serde_json::Value::Null);
    // The audit trail has both changes under the admin token.
    let (_, audit) = call(http.get(&srv.url("/api/v1/audit")).set("Authorization", &srv.admin_auth()));
    assert!(audit.matches("\"boot_chain\":\"signed\"").count() >= 2, "{audit}");
}
