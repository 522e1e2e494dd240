//! iSCSI volumes through the admin API and the node's plan, against a real tgtd:
//! create, attach (the node's plan then carries working credentials), detach
//! (the export goes), node deletion that keeps volumes unless asked, and mutual
//! CHAP switched on and off per node.

mod common;

use common::{agent, call, send_json, token_of, TestServer};
use ramboot_lab::harness::{loopback_tgtd, tgtd_skip_reason as skip_reason};
use ramboot_lab::tgtd::Tgtd;
use serde_json::{json, Value};
use std::process::Command;

const MAC: &str = "52:54:00:15:c5:01";

fn inq(tgtd: &Tgtd, initiator: &str, target: &str, user: &str, secret: &str) -> (bool, String) {
    let out =
        Command::new("iscsi-inq").args(["-i", initiator, &tgtd.url(target, Some((user, secret)), 1)]).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// What tgtd exports now, as `tgtadm --op show` prints it.
fn targets(tgtd: &Tgtd) -> String {
    let out = Command::new("tgtadm")
        .args(["-C", &tgtd.control.to_string(), "--lld", "iscsi", "--op", "show", "--mode", "target"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn volumes_are_exported_to_their_node_and_outlive_it() {
    if common::skipped("iSCSI API", skip_reason()) {
        return;
    }
    let tgtd = loopback_tgtd();
    let config = format!("iscsi:\n  portal: 127.0.0.1:{}\n  tgt_control_port: {}\n", tgtd.portal, tgtd.control);
    let srv = TestServer::start_with(Some("tiny"), &[], &config);
    let http = agent();
    let api = |method: &str, path: &str, body: Value| {
        send_json(
            http.request(method, &srv.url(&format!("/api/v1{path}"))).set("Authorization", &srv.admin_auth()),
            body,
        )
    };
    let get = |path: &str| call(http.get(&srv.url(&format!("/api/v1{path}"))).set("Authorization", &srv.admin_auth()));

    assert_eq!(api("POST", "/nodes", json!({"mac": MAC})).0, 201);
    let (status, body) = api("POST", "/volumes", json!({"name": "vm-disks", "size_bytes": 32 << 20}));
    assert_eq!(status, 201, "{body}");
    let backing = srv.dir.path().join("data/volumes/vm-disks.img");
    assert_eq!(std::fs::metadata(&backing).unwrap().len(), 32 << 20);
    assert_eq!(api("POST", "/volumes", json!({"name": "vm-disks", "size_bytes": 32 << 20})).0, 409);
    assert_eq!(api("POST", "/volumes", json!({"name": "odd", "size_bytes": 1000})).0, 422);
    let (status, body) = api("POST", "/volumes/vm-disks/attach", json!({"node": MAC}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["lun"], 1);

    // The node boots and its plan says how to log in; those credentials work.
    srv.lease(MAC);
    let token = token_of(&call(http.get(&srv.url(&format!("/boot.ipxe?mac={MAC}")))).1);
    let (status, plan) = call(http.get(&srv.url("/boot/v1/plan")).set("Authorization", &format!("Bearer {token}")));
    assert_eq!(status, 200, "{plan}");
    let plan: Value = serde_json::from_str(&plan).unwrap();
    let iscsi = &plan["iscsi"];
    assert_eq!(iscsi["portal"], format!("127.0.0.1:{}", tgtd.portal));
    assert_eq!(iscsi["luns"], json!([{"lun": 1, "volume": "vm-disks", "size_bytes": 32 << 20}]));
    let (initiator, target) = (iscsi["initiator_iqn"].as_str().unwrap(), iscsi["target_iqn"].as_str().unwrap());
    let (user, secret) = (iscsi["chap_user"].as_str().unwrap(), iscsi["chap_secret"].as_str().unwrap());
    let (ok, out) = inq(&tgtd, initiator, target, user, secret);
    assert!(ok && out.contains("DIRECT_ACCESS"), "{out}");
    // The target admits the node's leased address with its CHAP secret (tgt cannot
    // also require the IQN: see `iscsi::Export::acl`); another secret is refused.
    let (ok, out) = inq(&tgtd, initiator, target, user, "not-the-secret-1");
    assert!(!ok, "a wrong CHAP secret logged in: {out}");

    let detail: Value = serde_json::from_str(&get(&format!("/nodes/{MAC}")).1).unwrap();
    assert_eq!(detail["volumes"][0]["name"], "vm-disks");
    let (status, _) = api("POST", "/volumes", json!({"name": "other", "size_bytes": 1 << 20}));
    assert_eq!(status, 201);
    assert_eq!(api("POST", "/nodes", json!({"mac": "52:54:00:15:c5:02"})).0, 201);
    let (status, body) = api("POST", "/volumes/vm-disks/attach", json!({"node": "52:54:00:15:c5:02"}));
    assert_eq!(status, 409, "attached elsewhere: {body}");
    assert_eq!(api("DELETE", "/volumes/vm-disks", json!(null)).0, 409, "attached volumes are not deleted");

    // Detach: the export goes with the node's last volume.
    assert_eq!(api("POST", "/volumes/vm-disks/detach", json!({})).0, 200);
    assert!(!targets(&tgtd).contains(target), "{}", targets(&tgtd));
    assert!(!inq(&tgtd, initiator, target, user, secret).0);

    // Deleting the node keeps its volumes (detached, data intact) unless asked.
    assert_eq!(api("POST", "/volumes/vm-disks/attach", json!({"node": MAC})).0, 200);
    std::fs::write(&backing, b"VM data").unwrap();
    let (status, body) =
        call(http.delete(&srv.url(&format!("/api/v1/nodes/{MAC}"))).set("Authorization", &srv.admin_auth()));
    assert_eq!(status, 204, "{body}");
    let vol: Value = serde_json::from_str(&get("/volumes/vm-disks").1).unwrap();
    assert_eq!(vol["node_id"], Value::Null);
    assert_eq!(&std::fs::read(&backing).unwrap()[..7], b"VM data");
    assert!(!targets(&tgtd).contains(target), "no export without a node");

    assert_eq!(api("POST", "/volumes/other/attach", json!({"node": "52:54:00:15:c5:02"})).0, 200);
    let other = srv.dir.path().join("data/volumes/other.img");
    let (status, _) = call(
        http.delete(&srv.url("/api/v1/nodes/52:54:00:15:c5:02?delete_volumes=true"))
            .set("Authorization", &srv.admin_auth()),
    );
    assert_eq!(status, 204);
    assert!(!other.exists() && get("/volumes/other").0 == 404, "deleted on explicit request");
    assert_eq!(call(http.delete(&srv.url("/api/v1/volumes/vm-disks")).set("Authorization", &srv.admin_auth())).0, 204);
    assert!(!backing.exists());
}

#[test]
fn without_iscsi_config_volume_changes_say_so() {
    let srv = TestServer::start();
    let (status, body) = send_json(
        agent().post(&srv.url("/api/v1/volumes")).set("Authorization", &srv.admin_auth()),
        json!({"name": "v", "size_bytes": 1 << 20}),
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("iscsi_disabled"), "{body}");
    let mac = "52:54:00:15:c5:0f";
    let (status, _) =
        send_json(agent().post(&srv.url("/api/v1/nodes")).set("Authorization", &srv.admin_auth()), json!({"mac": mac}));
    assert_eq!(status, 201);
    let (status, body) = send_json(
        agent().put(&srv.url(&format!("/api/v1/nodes/{mac}/iscsi"))).set("Authorization", &srv.admin_auth()),
        json!({"mutual_chap": true}),
    );
    assert!(status == 409 && body.contains("iscsi_disabled"), "{status} {body}");
}

/// Mutual CHAP through the API: on, the node's plan carries the target's account and
/// an initiator that checks it logs in (and refuses a target with another secret);
/// the API never shows a secret; off, the plan and the target drop it.
#[test]
fn mutual_chap_is_switched_per_node_through_the_api() {
    if common::skipped("iSCSI mutual CHAP API", skip_reason()) {
        return;
    }
    let tgtd = loopback_tgtd();
    let config = format!("iscsi:\n  portal: 127.0.0.1:{}\n  tgt_control_port: {}\n", tgtd.portal, tgtd.control);
    let srv = TestServer::start_with(Some("tiny"), &[], &config);
    let http = agent();
    let mac = "52:54:00:15:c5:0d";
    let path = format!("/api/v1/nodes/{mac}/iscsi");
    let api = |method: &str, path: &str, auth: &str, body: Value| {
        send_json(http.request(method, &srv.url(path)).set("Authorization", auth), body)
    };
    assert_eq!(api("POST", "/api/v1/nodes", &srv.admin_auth(), json!({"mac": mac})).0, 201);
    assert_eq!(api("POST", "/api/v1/volumes", &srv.admin_auth(), json!({"name": "mc", "size_bytes": 8 << 20})).0, 201);
    assert_eq!(api("POST", "/api/v1/volumes/mc/attach", &srv.admin_auth(), json!({"node": mac})).0, 200);

    let (status, body) = call(http.get(&srv.url(&path)).set("Authorization", &srv.read_auth()));
    assert_eq!(status, 200, "{body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((view["mutual_chap"].clone(), view["mutual_chap_user"].clone()), (json!(false), Value::Null));
    assert_eq!(api("PUT", &path, &srv.read_auth(), json!({"mutual_chap": true})).0, 403, "changes need admin");
    let (status, body) = api("PUT", &path, &srv.admin_auth(), json!({"mutual_chap": true, "secret": "x"}));
    assert!((400..500).contains(&status), "unknown fields are refused: {status} {body}");
    let (status, body) = api("PUT", &path, &srv.admin_auth(), json!({"mutual_chap": true}));
    assert_eq!(status, 200, "{body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    let node_id = view["target_iqn"].as_str().unwrap().rsplit('-').next().unwrap().to_string();
    assert_eq!(view["mutual_chap"], true);
    assert_eq!(view["mutual_chap_user"], format!("target-{node_id}"));
    assert!(!body.to_lowercase().contains("secret"), "no secret in the API: {body}");

    srv.lease(mac);
    let plan = || {
        let token = token_of(&call(http.get(&srv.url(&format!("/boot.ipxe?mac={mac}")))).1);
        let (status, plan) = call(http.get(&srv.url("/boot/v1/plan")).set("Authorization", &format!("Bearer {token}")));
        assert_eq!(status, 200, "{plan}");
        serde_json::from_str::<Value>(&plan).unwrap()["iscsi"].clone()
    };
    let iscsi = plan();
    assert_eq!(iscsi["mutual_chap_user"], format!("target-{node_id}"));
    let target_secret = iscsi["mutual_chap_secret"].as_str().unwrap().to_string();
    assert_ne!(target_secret, iscsi["chap_secret"].as_str().unwrap(), "each direction has its own secret");
    let inq = |target_user: &str, target_secret: &str| {
        let url = tgtd.url(
            iscsi["target_iqn"].as_str().unwrap(),
            Some((iscsi["chap_user"].as_str().unwrap(), iscsi["chap_secret"].as_str().unwrap())),
            1,
        );
        let out = Command::new("iscsi-inq")
            .args(["-i", iscsi["initiator_iqn"].as_str().unwrap(), &url])
            .env("LIBISCSI_CHAP_TARGET_USERNAME", target_user)
            .env("LIBISCSI_CHAP_TARGET_PASSWORD", target_secret)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, out) = inq(&format!("target-{node_id}"), &target_secret);
    assert!(ok && out.contains("DIRECT_ACCESS"), "{out}");
    let (ok, out) = inq(&format!("target-{node_id}"), "NotTheTarget99");
    assert!(!ok, "a target without the secret is refused: {out}");
    assert_eq!(plan()["mutual_chap_secret"], target_secret.as_str(), "kept while on");

    // Off, through the CLI.
    let out = Command::new(env!("CARGO_BIN_EXE_ramboot"))
        .args(["nodes", "iscsi", mac, "--mutual-chap", "off", "--server", &srv.base, "--token", &srv.admin])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(shown.contains("mutual CHAP off") && shown.contains(&format!("CHAP user node-{node_id}")), "{shown}");
    let (status, body) = api("GET", &path, &srv.admin_auth(), Value::Null);
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["mutual_chap"], false);
    let iscsi = plan();
    assert!(iscsi.get("mutual_chap_user").is_none() && iscsi.get("mutual_chap_secret").is_none(), "{iscsi}");
    let accounts = Command::new("tgtadm")
        .args(["-C", &tgtd.control.to_string(), "--lld", "iscsi", "--op", "show", "--mode", "account"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&accounts.stdout).contains(&format!("target-{node_id}")));
    let events = get_events(&srv, mac);
    assert!(events.contains("mutual CHAP on") && events.contains("mutual CHAP off"), "{events}");
    assert!(!events.contains(&target_secret), "secrets never reach the timeline");
}

fn get_events(srv: &TestServer, mac: &str) -> String {
    call(agent().get(&srv.url(&format!("/api/v1/nodes/{mac}"))).set("Authorization", &srv.admin_auth())).1
}

#[test]
fn volumes_from_the_cli() {
    if common::skipped("iSCSI CLI", skip_reason()) {
        return;
    }
    let tgtd = loopback_tgtd();
    let config = format!("iscsi:\n  portal: 127.0.0.1:{}\n  tgt_control_port: {}\n", tgtd.portal, tgtd.control);
    let srv = TestServer::start_with(Some("tiny"), &[], &config);
    let ramboot = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ramboot"))
            .args(args)
            .env("RAMBOOT_SERVER", &srv.base)
            .env("RAMBOOT_TOKEN", &srv.admin)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    assert!(ramboot(&["nodes", "add", "52:54:00:15:c5:09"]).0);
    let (ok, out) = ramboot(&["volumes", "create", "vm-9", "64M"]);
    assert!(ok && out.contains("64.0 MiB"), "{out}");
    let (ok, out) = ramboot(&["volumes", "attach", "vm-9", "52:54:00:15:c5:09"]);
    assert!(ok && out.lines().nth(1).is_some_and(|l| l.ends_with(" 1")), "attached as LUN 1: {out}");
    let (ok, out) = ramboot(&["volumes", "rm", "vm-9"]);
    assert!(!ok && out.contains("HTTP 409") && out.contains("detach it first"), "{out}");
    let (ok, out) = ramboot(&["nodes", "rm", "52:54:00:15:c5:09"]);
    assert!(ok, "{out}");
    let (ok, out) = ramboot(&["volumes", "ls"]);
    assert!(
        ok && out.contains("vm-9") && out.lines().nth(1).is_some_and(|l| l.contains(" - ")),
        "kept, detached: {out}"
    );
    let (ok, out) = ramboot(&["volumes", "create", "bad", "12X"]);
    assert!(!ok && out.contains("unknown unit"), "{out}");
    assert!(ramboot(&["volumes", "rm", "vm-9"]).0);
}

/// At start the server reconciles: an export deleted behind its back comes back over
/// the same data, and an in-sync one is left alone.
#[tokio::test]
async fn reconcile_repairs_drift_from_the_store() {
    if common::skipped("iSCSI reconcile", skip_reason()) {
        return;
    }
    let tgtd = loopback_tgtd();
    let dir = tempfile::tempdir().unwrap();
    let (store, volumes) = common::loopback_volumes(&tgtd, dir.path()).await;
    let node = store.ensure_node("52:54:00:15:c5:0a".parse().unwrap(), 0).await.unwrap();
    let op = common::operator();
    volumes.create("vm-a", 8 << 20, &op, 0).await.unwrap();
    volumes.attach("vm-a", node.id, &op, 0).await.unwrap();
    assert!(volumes.reconcile().await.unwrap().is_empty(), "in sync after attach");

    let backing = dir.path().join("volumes/vm-a.img");
    std::fs::write(&backing, b"precious").unwrap();
    let gone = Command::new("tgtadm")
        .args([
            "-C",
            &tgtd.control.to_string(),
            "--lld",
            "iscsi",
            "--op",
            "delete",
            "--mode",
            "target",
            "--tid",
            "1",
            "--force",
        ])
        .output()
        .unwrap();
    assert!(gone.status.success());
    let repaired = volumes.reconcile().await.unwrap();
    assert_eq!(repaired.len(), 1);
    assert!(repaired[0].1.created_target, "{}", repaired[0].1.describe());
    assert!(targets(&tgtd).contains("iqn.2026-11.io.ramboot:target-"), "{}", targets(&tgtd));
    assert_eq!(&std::fs::read(&backing).unwrap()[..8], b"precious");

    // With a lease, the target admits the node's address alone; a new lease moves it.
    let lease = |ip: [u8; 4]| ramboot::store::LeaseOp::Grant {
        mac: node.mac,
        ip: ip.into(),
        expires_at: u64::MAX >> 8,
        netboot: true,
        known: true,
        arch: None,
        uuid: None,
    };
    let stored = || Err(ramboot::store::StoreError::Corrupt("the secret should exist".into()));
    let chap = store.chap_secret(node.id, stored).await.unwrap();
    let (initiator, target) = (volumes.config.initiator_iqn(node.id), volumes.config.target_iqn(node.id));
    let login = || inq(&tgtd, &initiator, &target, &format!("node-{}", node.id), &chap);
    store.commit_dhcp(&[lease([127, 0, 0, 1])], 1).await.unwrap();
    let repaired = volumes.reconcile().await.unwrap();
    assert_eq!(repaired[0].1.unbound_initiators, [volumes.config.initiator_iqn(node.id)], "the IQN gives way");
    assert!(login().0, "from the leased address");
    store.commit_dhcp(&[lease([127, 0, 0, 9])], 2).await.unwrap();
    let repaired = volumes.reconcile().await.unwrap();
    assert_eq!(repaired[0].1.unbound_initiators, ["127.0.0.1"], "{}", repaired[0].1.describe());
    let (ok, out) = login();
    assert!(!ok && out.contains("Target not found"), "not from the old address: {out}");
}

/// A profile that declares volumes: each node gets its own (`<hostname>-<name>`),
/// created and attached on its first boot and found again on the next.
#[test]
fn profiles_declare_per_node_volumes() {
    if common::skipped("profile volumes", skip_reason()) {
        return;
    }
    let tgtd = loopback_tgtd();
    let config = format!("iscsi:\n  portal: 127.0.0.1:{}\n  tgt_control_port: {}\n", tgtd.portal, tgtd.control);
    let profile = "name: hv\nstage1: stage1\nimage: tiny\nvolumes:\n  - {name: vm-disks, size: 16M}\n  - {name: scratch, size: 8M}\n";
    let srv = TestServer::start_with(Some("hv"), &[("hv", profile)], &config);
    let http = agent();
    // The default profile attaches volumes: the node gets them once an operator vouches for it.
    srv.lease("52:54:00:15:c5:0b");
    let approve =
        http.post(&srv.url("/api/v1/nodes/52:54:00:15:c5:0b/approve")).set("Authorization", &srv.admin_auth());
    assert_eq!(send_json(approve, json!({})).0, 200);
    let boot = || {
        let token = token_of(&call(http.get(&srv.url("/boot.ipxe?mac=52:54:00:15:c5:0b"))).1);
        let (status, plan) = call(http.get(&srv.url("/boot/v1/plan")).set("Authorization", &format!("Bearer {token}")));
        assert_eq!(status, 200, "{plan}");
        serde_json::from_str::<Value>(&plan).unwrap()
    };
    let first = boot();
    let luns = first["iscsi"]["luns"].clone();
    assert_eq!(luns[0]["volume"], "node-52540015c50b-vm-disks", "{luns}");
    assert_eq!(luns[1]["volume"], "node-52540015c50b-scratch");
    assert_eq!(luns[1]["size_bytes"], 8 << 20);
    let iscsi = &first["iscsi"];
    let (ok, out) = inq(
        &tgtd,
        iscsi["initiator_iqn"].as_str().unwrap(),
        iscsi["target_iqn"].as_str().unwrap(),
        iscsi["chap_user"].as_str().unwrap(),
        iscsi["chap_secret"].as_str().unwrap(),
    );
    assert!(ok, "{out}");
    // The next boot finds the same volumes: nothing new is created.
    let second = boot();
    assert_eq!(second["iscsi"]["luns"], luns);
    let (_, list) = call(http.get(&srv.url("/api/v1/volumes")).set("Authorization", &srv.admin_auth()));
    assert_eq!(serde_json::from_str::<Value>(&list).unwrap().as_array().unwrap().len(), 2, "{list}");
}

/// Growing an attached volume: the file grows and the target reports the new size.
#[test]
fn volumes_grow_and_never_shrink() {
    if common::skipped("volume grow", skip_reason()) {
        return;
    }
    let tgtd = loopback_tgtd();
    let config = format!("iscsi:\n  portal: 127.0.0.1:{}\n  tgt_control_port: {}\n", tgtd.portal, tgtd.control);
    let srv = TestServer::start_with(Some("tiny"), &[], &config);
    let http = agent();
    let api = |path: &str, body: Value| {
        send_json(http.post(&srv.url(&format!("/api/v1{path}"))).set("Authorization", &srv.admin_auth()), body)
    };
    let mac = "52:54:00:15:c5:0c";
    assert_eq!(api("/nodes", json!({"mac": mac})).0, 201);
    assert_eq!(api("/volumes", json!({"name": "grow-me", "size_bytes": 16 << 20})).0, 201);
    assert_eq!(api("/volumes/grow-me/attach", json!({"node": mac})).0, 200);
    srv.lease(mac);
    let token = token_of(&call(http.get(&srv.url(&format!("/boot.ipxe?mac={mac}")))).1);
    let plan: Value = serde_json::from_str(
        &call(http.get(&srv.url("/boot/v1/plan")).set("Authorization", &format!("Bearer {token}"))).1,
    )
    .unwrap();
    let i = &plan["iscsi"];
    let capacity = || {
        let url = tgtd.url(
            i["target_iqn"].as_str().unwrap(),
            Some((i["chap_user"].as_str().unwrap(), i["chap_secret"].as_str().unwrap())),
            1,
        );
        let out = Command::new("iscsi-readcapacity16")
            .args(["-i", i["initiator_iqn"].as_str().unwrap(), &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(capacity().contains(&(16u64 << 20).to_string()), "{}", capacity());
    let (status, body) = api("/volumes/grow-me/grow", json!({"size_bytes": 32 << 20}));
    assert_eq!(status, 200, "{body}");
    assert!(capacity().contains(&(32u64 << 20).to_string()), "the target sees the new size: {}", capacity());
    assert_eq!(std::fs::metadata(srv.dir.path().join("data/volumes/grow-me.img")).unwrap().len(), 32 << 20);
    let (status, body) = api("/volumes/grow-me/grow", json!({"size_bytes": 8 << 20}));
    assert_eq!(status, 422, "volumes never shrink: {body}");
}
