//! Trust on the boot network, over real HTTP on loopback: another host (a second
//! loopback address, 127.0.0.2) tries what an attacker on the boot network would,
//! while the real node (127.0.0.1, holding its DHCP lease) boots. Each attempt is
//! refused with a clear error, counted in `/metrics`, recorded on the node, and
//! leaks nothing; the real node's boot carries on.

mod common;

use common::{agent, call, call_from, send_json, token_of, TestServer};
use serde_json::{json, Value};
use std::net::Ipv4Addr;

const NODE: &str = "52:54:00:77:00:01";
const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A profile whose overlay renders a secret.
const SECRET_PROFILE: &str = "name: keyed\nstage1: stage1\nimage: tiny\nfiles:\n\
\x20 - path: /etc/motd\n    template: \"{{ node.hostname }}\"\n\
\x20 - path: /etc/key\n    mode: \"0600\"\n    template: \"{{ secret('cluster') }}\"\n";
const SECRET: &str = "s3cr3t-value";

fn error_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("no error.code in {body}")).to_string()
}

fn refusals(srv: &TestServer, reason: &str) -> f64 {
    let text = agent().get(&srv.url("/metrics")).call().unwrap().into_string().unwrap();
    let prefix = format!("ramboot_boot_refusals_total{{reason=\"{reason}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0.0, |v| v.trim().parse().unwrap())
}

fn server_with_secrets() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.yaml");
    std::fs::write(&secrets, format!("cluster: {SECRET}\n")).unwrap();
    std::fs::set_permissions(&secrets, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config = format!("secrets: {}\n", secrets.display());
    (TestServer::start_with(Some("keyed"), &[("keyed", SECRET_PROFILE)], &config), dir)
}

fn node(srv: &TestServer, mac: &str) -> Value {
    let (status, body) =
        call(agent().get(&srv.url(&format!("/api/v1/nodes/{mac}"))).set("Authorization", &srv.read_auth()));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn approve(srv: &TestServer, mac: &str) {
    let req = agent().post(&srv.url(&format!("/api/v1/nodes/{mac}/approve"))).set("Authorization", &srv.admin_auth());
    assert_eq!(send_json(req, json!({})).0, 200);
}

#[test]
fn a_script_goes_only_to_a_node_dhcp_knows_at_its_leased_address() {
    let srv = TestServer::start();
    let before = refusals(&srv, "unknown_node");
    // A MAC DHCP never saw: refused, and no node, boot or event is created.
    let (status, body) = call(agent().get(&srv.url("/boot.ipxe?mac=52:54:00:77:99:99")));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("nodes are created only by DHCP") && !body.contains("ramboot.token"), "{body}");
    let (_, list) = call(agent().get(&srv.url("/api/v1/nodes")).set("Authorization", &srv.read_auth()));
    assert_eq!(serde_json::from_str::<Value>(&list).unwrap()["nodes"], json!([]));
    assert_eq!(refusals(&srv, "unknown_node") - before, 1.0);

    // The node holds its lease at 127.0.0.1 and boots; another host asks for its script.
    srv.lease(NODE);
    let (status, script) = call(agent().get(&srv.url(&format!("/boot.ipxe?mac={NODE}"))));
    assert_eq!(status, 200, "{script}");
    let token = token_of(&script);
    let before = refusals(&srv, "not_lease_holder");
    let (status, body) = call_from(ATTACKER, "GET", &srv.url(&format!("/boot.ipxe?mac={NODE}")), None, None);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("127.0.0.2 does not hold the DHCP lease of 52:54:00:77:00:01"), "{body}");
    assert!(!body.contains("ramboot.token"), "{body}");
    assert_eq!(refusals(&srv, "not_lease_holder") - before, 1.0);
    // The real boot was not superseded: its token still works.
    let (status, _) = call(agent().get(&srv.url("/boot/v1/plan")).set("Authorization", &format!("Bearer {token}")));
    assert_eq!(status, 200);
    let detail = node(&srv, NODE);
    let events: Vec<&str> = detail["events"].as_array().unwrap().iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(
        events.iter().any(|m| m.starts_with("refused: 127.0.0.2 does not hold the DHCP lease")),
        "the node's log records the attempt: {events:?}"
    );
    assert_eq!(detail["boot"]["bound_ip"], "127.0.0.1", "{detail}");
}

#[test]
fn a_stolen_token_gets_nothing_from_another_address() {
    let (srv, _secrets) = server_with_secrets();
    srv.lease(NODE);
    approve(&srv, NODE);
    let token = token_of(&call(agent().get(&srv.url(&format!("/boot.ipxe?mac={NODE}")))).1);
    let before = refusals(&srv, "wrong_source");
    for (method, path, body) in [
        ("GET", "/boot/v1/plan", None),
        ("GET", "/boot/v1/overlay", None),
        ("POST", "/boot/v1/hello", Some(json!({"cpus": 1, "memory_bytes": 1, "nics": []}))),
        ("POST", "/boot/v1/events", Some(json!({"state": "failed", "message": "fake", "progress": null}))),
    ] {
        let (status, reply) = call_from(ATTACKER, method, &srv.url(path), Some(&token), body.as_ref());
        assert_eq!((status, error_code(&reply).as_str()), (403, "wrong_source"), "{path}: {reply}");
        assert!(reply.contains("bound to 127.0.0.1, not 127.0.0.2") && !reply.contains(SECRET), "{reply}");
    }
    assert_eq!(refusals(&srv, "wrong_source") - before, 4.0);
    // The fake failure counted for nothing, and the node's log says someone tried.
    let detail = node(&srv, NODE);
    assert_eq!((detail["node"]["state"].as_str(), detail["node"]["failures"].as_i64()), (Some("booting"), Some(0)));
    let refused = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.starts_with("refused: this boot's token is bound"))
        .count();
    assert_eq!(refused, 1, "one note per reason per minute, however many attempts");
    // The real node, from its own address, gets its overlay with the secret.
    let (status, overlay) =
        call(agent().get(&srv.url("/boot/v1/overlay")).set("Authorization", &format!("Bearer {token}")));
    assert_eq!(status, 200);
    assert!(overlay.contains(SECRET));
}

#[test]
fn secrets_are_released_once_and_only_before_handoff() {
    let (srv, _secrets) = server_with_secrets();
    srv.lease(NODE);
    approve(&srv, NODE);
    let token = token_of(&call(agent().get(&srv.url(&format!("/boot.ipxe?mac={NODE}")))).1);
    let bearer = format!("Bearer {token}");
    let get = |path: &str| call(agent().get(&srv.url(path)).set("Authorization", &bearer));
    assert_eq!(get("/boot/v1/plan").0, 200);
    let (status, body) = get("/boot/v1/plan");
    assert_eq!((status, error_code(&body).as_str()), (409, "already_released"), "{body}");
    let (status, overlay) = get("/boot/v1/overlay");
    assert!(status == 200 && overlay.contains(SECRET));
    let (status, body) = get("/boot/v1/overlay");
    assert_eq!((status, error_code(&body).as_str()), (409, "already_released"), "{body}");
    assert!(!body.contains(SECRET));

    // A fresh boot, up to handoff: then the token only reports.
    let token = token_of(&call(agent().get(&srv.url(&format!("/boot.ipxe?mac={NODE}")))).1);
    let bearer = format!("Bearer {token}");
    let get = |path: &str| call(agent().get(&srv.url(path)).set("Authorization", &bearer));
    let report = |state: Option<&str>| {
        send_json(
            agent().post(&srv.url("/boot/v1/events")).set("Authorization", &bearer),
            json!({"state": state, "message": "m", "progress": null}),
        )
        .0
    };
    assert_eq!(report(Some("loading")), 204);
    assert_eq!(report(Some("handoff")), 204);
    for path in ["/boot/v1/plan", "/boot/v1/overlay"] {
        let (status, body) = get(path);
        assert_eq!((status, error_code(&body).as_str()), (403, "after_handoff"), "{path}: {body}");
        assert!(!body.contains(SECRET));
    }
    assert_eq!(report(Some("ready")), 204);
    assert_eq!(report(None), 204, "after ready, still a report");
    let (status, body) = get("/boot/v1/overlay");
    assert_eq!((status, error_code(&body).as_str()), (403, "after_handoff"), "{body}");

    // Reports are rate-limited per boot: a burst passes (60), then 5 a second.
    let counted_before = node(&srv, NODE)["boot"]["reports"].as_u64().unwrap();
    let started = std::time::Instant::now();
    let limited = (0..120).map(|_| report(None)).filter(|s| *s == 429).count();
    let refilled = (started.elapsed().as_secs_f64() * 5.0).ceil() as u64;
    let counted = node(&srv, NODE)["boot"]["reports"].as_u64().unwrap() - counted_before;
    assert!(counted <= 60 + refilled, "{counted} reports counted in {:?}", started.elapsed());
    assert_eq!(counted + limited as u64, 120, "every report is counted or refused");
}

#[test]
fn a_node_matched_only_by_what_it_says_waits_for_approval() {
    // The secret profile is the default: it vouches for nobody.
    let (srv, _secrets) = server_with_secrets();
    srv.lease(NODE);
    let (status, script) = call(agent().get(&srv.url(&format!("/boot.ipxe?mac={NODE}"))));
    assert_eq!(status, 200);
    assert!(script.contains("profile (discovery)"), "{script}");
    let token = token_of(&script);
    let bearer = format!("Bearer {token}");
    let (status, body) = call(agent().get(&srv.url("/boot/v1/plan")).set("Authorization", &bearer));
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("profile keyed renders secrets") && body.contains("ramboot nodes approve"), "{body}");
    let (status, body) = call(agent().get(&srv.url("/boot/v1/overlay")).set("Authorization", &bearer));
    assert_eq!(status, 409, "no profile, no overlay: {body}");
    let detail = node(&srv, NODE);
    let events: Vec<&str> = detail["events"].as_array().unwrap().iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(events.iter().any(|m| m.contains("waiting for an operator to approve it")), "{events:?}");
    assert_eq!(detail["node"]["approved"], false);

    // The CLI vouches for it; the same boot's agent then gets its plan.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ramboot"))
        .args(["nodes", "approve", NODE, "--server", &srv.base, "--token", &srv.admin])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, body) = call(agent().get(&srv.url("/boot/v1/plan")).set("Authorization", &bearer));
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["profile"], "keyed");
}
