//! `GET /boot/v1/command`, stage two's long poll through which the server reboots
//! a node without a BMC, over real HTTP on loopback: nothing asked → 204 when the
//! wait ends; a reboot asked while a poll waits → that poll answers at once, 200
//! `{"command":"reboot"}`, once; the request is audited; the boot after it does not
//! hear it again; a stale boot's token, another node's token and another address
//! get the usual refusals. And a rollout of a node without a BMC asks through it.

mod common;

use common::{agent, call, call_from, send_json, token_of, TestServer};
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const NODE: &str = "52:54:00:77:0c:01";
const OTHER: &str = "52:54:00:77:0c:02";
const OTHER_AT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const TINY2: &str = "name: tiny2\nstage1: stage1\nimage: tiny\nkernel_args: [console=ttyS0]\n";

/// A long-poll-sized client (the shared one gives up after 10 s).
fn poller() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(40)).max_idle_connections(0).build()
}

/// `GET /boot/v1/command?wait=SECS` with `token`: status, body, and how long it took.
fn poll(srv: &TestServer, token: &str, wait: u64) -> (u16, String, Duration) {
    let started = Instant::now();
    let req = poller()
        .get(&srv.url(&format!("/boot/v1/command?wait={wait}")))
        .set("Authorization", &format!("Bearer {token}"));
    let (status, body) = call(req);
    (status, body, started.elapsed())
}

/// A 25 s poll with `token` that `meanwhile` (run once the poll waits) should end.
fn poll_while(srv: &TestServer, token: &str, meanwhile: impl FnOnce()) -> (u16, String, Duration) {
    std::thread::scope(|s| {
        let waiting = s.spawn(|| poll(srv, token, 25));
        std::thread::sleep(Duration::from_millis(700));
        meanwhile();
        waiting.join().unwrap()
    })
}

/// A new boot of `mac` from 127.0.0.1: its token.
fn boot(srv: &TestServer, mac: &str) -> String {
    let (status, script) = call(agent().get(&srv.url(&format!("/boot.ipxe?mac={mac}"))));
    assert_eq!(status, 200, "{script}");
    token_of(&script)
}

fn node(srv: &TestServer, mac: &str) -> Value {
    let (status, body) =
        call(agent().get(&srv.url(&format!("/api/v1/nodes/{mac}"))).set("Authorization", &srv.read_auth()));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// What an operator or a rollout does: ask the node's agent to reboot it.
fn request_reboot(srv: &TestServer, mac: &str) {
    let id = node(srv, mac)["node"]["id"].as_i64().unwrap();
    let now = ramboot::clock::now_ms();
    srv.handle.block_on(srv.store.request_reboot(id, &common::operator(), now)).unwrap();
}

/// Stage one and two of a boot, as the agent reports them: up to `ready`.
fn boot_to_ready(srv: &TestServer, token: &str) -> Value {
    let bearer = format!("Bearer {token}");
    let hello = json!({"cpus": 1, "memory_bytes": 268435456u64, "nics": [], "cpu_model": null, "kernel": null});
    let (status, body) = send_json(agent().post(&srv.url("/boot/v1/hello")).set("Authorization", &bearer), hello);
    assert_eq!(status, 204, "{body}");
    let (status, plan) = call(agent().get(&srv.url("/boot/v1/plan")).set("Authorization", &bearer));
    assert_eq!(status, 200, "{plan}");
    for state in ["loading", "handoff", "ready"] {
        let event = json!({"state": state, "message": state, "progress": null});
        let (status, body) = send_json(agent().post(&srv.url("/boot/v1/events")).set("Authorization", &bearer), event);
        assert_eq!(status, 204, "{body}");
    }
    serde_json::from_str(&plan).unwrap()
}

#[test]
fn without_a_request_a_poll_ends_with_204_after_its_wait() {
    let srv = TestServer::start();
    srv.lease(NODE);
    let token = boot(&srv, NODE);
    let (status, body, took) = poll(&srv, &token, 1);
    assert_eq!((status, body.as_str()), (204, ""));
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "waited {took:?}");
    // No wait asked: an answer at once.
    let (status, _, took) = poll(&srv, &token, 0);
    assert_eq!(status, 204);
    assert!(took < Duration::from_secs(1), "{took:?}");
    // An unknown query parameter is the client's mistake.
    let req = agent().get(&srv.url("/boot/v1/command?wait=1&x=1")).set("Authorization", &format!("Bearer {token}"));
    assert_eq!(call(req).0, 400);
}

#[test]
fn a_reboot_wakes_the_waiting_poll_once_and_is_audited() {
    let srv = TestServer::start();
    srv.lease(NODE);
    let token = boot(&srv, NODE);
    let (status, body, took) = poll_while(&srv, &token, || request_reboot(&srv, NODE));
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"command": "reboot"}));
    // Woken by the change feed, not by the 5 s recheck or the end of the wait.
    assert!(took < Duration::from_secs(4), "answered after {took:?}");
    // Once.
    let (status, _, _) = poll(&srv, &token, 1);
    assert_eq!(status, 204);

    // In the audit trail and the node's timeline.
    let (status, body) =
        call(agent().get(&srv.url(&format!("/api/v1/audit?node={NODE}"))).set("Authorization", &srv.read_auth()));
    assert_eq!(status, 200, "{body}");
    let audit: Value = serde_json::from_str(&body).unwrap();
    let records = audit.as_array().or_else(|| audit["records"].as_array()).expect("a list of records").clone();
    let reboot = records.iter().find(|r| r["action"] == "node.reboot").unwrap_or_else(|| panic!("{audit:#}"));
    assert_eq!(reboot["after"]["via"], "agent", "{reboot:#}");
    let (_, events) = call(
        agent().get(&srv.url(&format!("/api/v1/nodes/{NODE}/events?limit=100"))).set("Authorization", &srv.read_auth()),
    );
    assert!(events.contains("reboot requested through the agent by token test-operator"), "{events}");
    assert!(events.contains("reboot request delivered to the agent"), "{events}");

    // Asked before the current boot started: the next boot does not hear it.
    request_reboot(&srv, NODE);
    let next = boot(&srv, NODE);
    assert_eq!(poll(&srv, &next, 0).0, 204);
}

#[test]
fn stale_boots_other_nodes_and_other_addresses_are_refused() {
    let srv = TestServer::start();
    srv.lease(NODE);
    let old = boot(&srv, NODE);
    let current = boot(&srv, NODE);
    request_reboot(&srv, NODE);

    // The superseded boot's token is dead, as for every boot route.
    let (status, body, _) = poll(&srv, &old, 0);
    assert_eq!(status, 401, "{body}");

    // Another node's token: from its own address it hears nothing of this node's
    // request; from this node's address it is refused.
    srv.lease_at(OTHER, OTHER_AT);
    let (status, script) = call_from(OTHER_AT, "GET", &srv.url(&format!("/boot.ipxe?mac={OTHER}")), None, None);
    assert_eq!(status, 200, "{script}");
    let other = token_of(&script);
    let (status, body) = call_from(OTHER_AT, "GET", &srv.url("/boot/v1/command?wait=0"), Some(&other), None);
    assert_eq!((status, body.as_str()), (204, ""));
    let (status, body, _) = poll(&srv, &other, 0);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("wrong_source"), "{body}");
    // This node's token from another address: refused, and the request stays.
    let (status, body) = call_from(OTHER_AT, "GET", &srv.url("/boot/v1/command?wait=0"), Some(&current), None);
    assert_eq!(status, 403, "{body}");
    let (status, body, _) = poll(&srv, &current, 0);
    assert_eq!((status, body.as_str()), (200, r#"{"command":"reboot"}"#));
    // No token at all.
    assert_eq!(call(agent().get(&srv.url("/boot/v1/command?wait=0"))).0, 401);
}

#[test]
fn a_waiting_poll_ends_when_the_server_stops() {
    let srv = TestServer::start();
    srv.lease(NODE);
    let token = boot(&srv, NODE);
    let (status, _, took) = poll_while(&srv, &token, || srv.shutdown.cancel());
    // Answered, not held until the drain deadline cuts it.
    assert_eq!(status, 204);
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[test]
fn polls_are_rate_limited_per_boot() {
    let srv = TestServer::start();
    srv.lease(NODE);
    let token = boot(&srv, NODE);
    let statuses: Vec<u16> = (0..12).map(|_| poll(&srv, &token, 0).0).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 204).count(), 10, "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
}

/// The driver's side: a rollout of a node with no BMC asks its agent, the node
/// boots again on the target profile, and the rollout is done.
#[test]
fn a_rollout_reboots_a_node_without_a_bmc_through_its_agent() {
    let srv = TestServer::start_with(Some("tiny"), &[("tiny2", TINY2)], "");
    srv.lease(NODE);
    let token = boot(&srv, NODE);
    boot_to_ready(&srv, &token);
    assert_eq!(node(&srv, NODE)["node"]["state"], "ready");

    let req = agent().post(&srv.url("/api/v1/rollouts")).set("Authorization", &srv.admin_auth());
    let (status, body) = send_json(req, json!({"nodes": [NODE], "to_profile": "tiny2", "ready_timeout_secs": 60}));
    assert!(status == 201 || status == 200, "{status} {body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"].as_i64().unwrap();

    let (status, body, took) = poll(&srv, &token, 25);
    assert_eq!((status, body.as_str()), (200, r#"{"command":"reboot"}"#), "after {took:?}");

    // The agent reboots the node: a new boot, now on tiny2.
    let next = boot(&srv, NODE);
    let plan = boot_to_ready(&srv, &next);
    assert_eq!(plan["profile"], "tiny2");
    let deadline = Instant::now() + Duration::from_secs(20);
    let rollout = loop {
        let (_, body) =
            call(agent().get(&srv.url(&format!("/api/v1/rollouts/{id}"))).set("Authorization", &srv.read_auth()));
        let rollout: Value = serde_json::from_str(&body).unwrap();
        if rollout["status"] != "running" || Instant::now() > deadline {
            break rollout;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(rollout["status"], "done", "{rollout:#}");
    let (_, events) = call(
        agent()
            .get(&srv.url(&format!("/api/v1/rollouts/{id}/events?limit=100")))
            .set("Authorization", &srv.read_auth()),
    );
    assert!(events.contains("reboot through the agent"), "{events}");
}
