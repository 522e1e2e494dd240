//! The operator surface over real HTTP: auth and roles, node CRUD and pagination,
//! bad bodies, maintenance, retries with backoff, discovery with selectors, per-node
//! overlays, the event log and its stream, OpenAPI and Prometheus metrics.

mod common;

use common::{agent, call, send_json, token_of, TestServer};

use serde_json::{json, Value};

fn error_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("no error.code in {body}")).to_string()
}

struct Api<'a> {
    srv: &'a TestServer,
    http: ureq::Agent,
    auth: String,
}

impl<'a> Api<'a> {
    fn admin(srv: &'a TestServer) -> Self {
        Api { srv, http: agent(), auth: srv.admin_auth() }
    }
    fn reader(srv: &'a TestServer) -> Self {
        Api { srv, http: agent(), auth: srv.read_auth() }
    }
    fn get(&self, path: &str) -> (u16, String) {
        call(self.http.get(&self.srv.url(&format!("/api/v1{path}"))).set("Authorization", &self.auth))
    }
    fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
    fn send(&self, method: &str, path: &str, body: Value) -> (u16, String) {
        send_json(
            self.http.request(method, &self.srv.url(&format!("/api/v1{path}"))).set("Authorization", &self.auth),
            body,
        )
    }
    fn delete(&self, path: &str) -> (u16, String) {
        call(self.http.delete(&self.srv.url(&format!("/api/v1{path}"))).set("Authorization", &self.auth))
    }
}

/// The iPXE script of `mac`, asked for from the address DHCP leased it.
fn boot(srv: &TestServer, mac: &str) -> String {
    srv.lease(mac);
    let (status, script) = call(agent().get(&srv.url(&format!("/boot.ipxe?mac={mac}"))));
    assert_eq!(status, 200);
    script
}

fn report(srv: &TestServer, token: &str, state: &str) -> u16 {
    send_json(
        agent().post(&srv.url("/boot/v1/events")).set("Authorization", &format!("Bearer {token}")),
        json!({"state": state, "message": format!("agent says {state}"), "progress": null}),
    )
    .0
}

fn hello(srv: &TestServer, token: &str, serial: &str) -> u16 {
    send_json(
        agent().post(&srv.url("/boot/v1/hello")).set("Authorization", &format!("Bearer {token}")),
        json!({"cpus": 1, "memory_bytes": 1u64 << 30, "nics": [], "dmi": {"serial": serial}}),
    )
    .0
}

#[test]
fn every_api_route_needs_a_token_and_changes_need_admin() {
    let srv = TestServer::start();
    let http = agent();
    for path in
        ["/nodes", "/nodes/1", "/profiles", "/profiles/errors", "/images", "/leases", "/leases6", "/events", "/audit"]
    {
        let (status, body) = call(http.get(&srv.url(&format!("/api/v1{path}"))));
        assert_eq!((status, error_code(&body).as_str()), (401, "unauthorized"), "{path}");
        let (status, _) = call(http.get(&srv.url(&format!("/api/v1{path}"))).set("Authorization", "Bearer wrong"));
        assert_eq!(status, 401, "{path}");
    }
    // A per-boot token is not an API token.
    let boot_token = token_of(&boot(&srv, "52:54:00:00:00:01"));
    let (status, _) = call(http.get(&srv.url("/api/v1/nodes")).set("Authorization", &format!("Bearer {boot_token}")));
    assert_eq!(status, 401);
    // And an API token is not a boot token.
    let (status, _) = call(http.get(&srv.url("/boot/v1/plan")).set("Authorization", &srv.admin_auth()));
    assert_eq!(status, 401);

    let reader = Api::reader(&srv);
    assert_eq!(reader.get("/nodes").0, 200);
    for (method, path, body) in [
        ("POST", "/nodes", json!({"mac": "52:54:00:00:00:02"})),
        ("PATCH", "/nodes/1", json!({"hostname": "x"})),
        ("POST", "/nodes/1/reprovision", json!({})),
        ("POST", "/nodes/1/maintenance", json!({"enabled": true})),
    ] {
        let (status, body) = reader.send(method, path, body);
        assert_eq!((status, error_code(&body).as_str()), (403, "forbidden"), "{method} {path}");
    }
    assert_eq!(reader.delete("/nodes/1").0, 403);
    assert_eq!(reader.get("/tokens").0, 403, "listing tokens is for admins");
    assert_eq!(reader.delete("/images/tiny").0, 403);
}

#[test]
fn nodes_crud_with_validation() {
    let srv = TestServer::start();
    let api = Api::admin(&srv);
    let (status, body) =
        api.send("POST", "/nodes", json!({"mac": "52:54:00:AA:00:01", "hostname": "web-1", "labels": {"rack": "r1"}}));
    assert_eq!(status, 201, "{body}");
    let node: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((node["mac"].as_str(), node["state"].as_str()), (Some("52:54:00:aa:00:01"), Some("discovered")));
    let id = node["id"].as_i64().unwrap();

    let (status, body) = api.send("POST", "/nodes", json!({"mac": "52:54:00:aa:00:01"}));
    assert_eq!((status, error_code(&body).as_str()), (409, "conflict"), "{body}");
    for bad in [
        json!({"mac": "not-a-mac"}),
        json!({"mac": 5}),
        json!({"mac": "52:54:00:aa:00:02", "colour": "red"}),
        json!({"mac": "52:54:00:aa:00:02", "labels": {"rack": 1}}),
    ] {
        let (status, body) = api.send("POST", "/nodes", bad.clone());
        assert_eq!((status, error_code(&body).as_str()), (422, "bad_body"), "{bad}: {body}");
    }
    for bad in [
        json!({"mac": "52:54:00:aa:00:02", "hostname": "bad_name"}),
        json!({"mac": "52:54:00:aa:00:02", "profile": "nope"}),
        json!({"mac": "52:54:00:aa:00:02", "labels": {"a b": "c"}}),
    ] {
        let (status, body) = api.send("POST", "/nodes", bad.clone());
        assert_eq!((status, error_code(&body).as_str()), (422, "invalid"), "{bad}: {body}");
    }
    let oversize = json!({"mac": "52:54:00:aa:00:02", "hostname": "x".repeat(300 * 1024)});
    let req = agent().post(&srv.url("/api/v1/nodes")).set("Authorization", &srv.admin_auth());
    assert!(matches!(common::send_oversize(req, oversize).as_str(), "bad_body" | "cut"));

    // By id and by MAC; patch; assign and clear.
    assert_eq!(api.json(&format!("/nodes/{id}"))["node"]["hostname"], "web-1");
    assert_eq!(api.json("/nodes/52:54:00:aa:00:01")["node"]["id"], id);
    let (status, body) =
        api.send("PATCH", &format!("/nodes/{id}"), json!({"labels": {"rack": "r2", "role": "db"}, "hostname": "db-1"}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.send("PATCH", &format!("/nodes/{id}"), json!({"profile": "tiny"}));
    assert_eq!(status, 200, "{body}");
    let node: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((node["profile"].as_str(), node["state"].as_str()), (Some("tiny"), Some("assigned")));
    assert_eq!(node["labels"], json!({"rack": "r2", "role": "db"}));
    let (status, body) = api.send("PATCH", &format!("/nodes/{id}"), json!({"profile": null}));
    let node: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, node["profile"].clone(), node["state"].as_str()), (200, Value::Null, Some("discovered")));
    let (status, body) = api.send("PATCH", &format!("/nodes/{id}"), json!({"profile": "ghost"}));
    assert_eq!((status, error_code(&body).as_str()), (422, "invalid"));
    let (status, _) = api.send("PATCH", "/nodes/999", json!({"hostname": "x"}));
    assert_eq!(status, 404);

    let timeline = api.json(&format!("/nodes/{id}/events"));
    let messages: Vec<&str> = timeline.as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert!(
        messages.contains(&"profile tiny assigned") && messages.contains(&"profile assignment cleared"),
        "{messages:?}"
    );

    assert_eq!(api.delete(&format!("/nodes/{id}")).0, 204);
    assert_eq!(api.get(&format!("/nodes/{id}")).0, 404);
    assert_eq!(api.delete(&format!("/nodes/{id}")).0, 404);
}

#[test]
fn dhcp_reservations_are_validated_unique_and_cleared() {
    let srv = TestServer::start();
    let api = Api::admin(&srv);
    let mut ids = Vec::new();
    for mac in ["52:54:00:ab:00:01", "52:54:00:ab:00:02"] {
        let (status, body) = api.send("POST", "/nodes", json!({ "mac": mac }));
        assert_eq!(status, 201, "{body}");
        ids.push(serde_json::from_str::<Value>(&body).unwrap()["id"].as_i64().unwrap());
    }
    let (a, b) = (format!("/nodes/{}", ids[0]), format!("/nodes/{}", ids[1]));
    let (status, body) = api.send("PATCH", &a, json!({"reserved_ip": "127.0.0.20"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["reserved_ip"], "127.0.0.20");
    // The same address for a second node is a conflict; outside every subnet, or not
    // an address at all, is invalid.
    let (status, body) = api.send("PATCH", &b, json!({"reserved_ip": "127.0.0.20"}));
    assert_eq!((status, error_code(&body).as_str()), (409, "conflict"), "{body}");
    for bad in ["10.9.9.9", "127.255.255.255", "banana"] {
        let (status, body) = api.send("PATCH", &b, json!({ "reserved_ip": bad }));
        assert_eq!((status, error_code(&body).as_str()), (422, "invalid"), "{bad}: {body}");
    }
    let (status, body) = api.send("PATCH", &a, json!({"reserved_ip": null}));
    assert_eq!(status, 200, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["reserved_ip"].is_null());
    let (status, body) = api.send("PATCH", &b, json!({"reserved_ip": "127.0.0.20"}));
    assert_eq!(status, 200, "freed for the other node: {body}");
}

#[test]
fn node_lists_page_and_filter() {
    let srv = TestServer::start();
    let api = Api::admin(&srv);
    for i in 0..7 {
        let labels = if i % 2 == 0 { json!({"rack": "even"}) } else { json!({"rack": "odd"}) };
        let (status, _) =
            api.send("POST", "/nodes", json!({"mac": format!("52:54:00:bb:00:{i:02x}"), "labels": labels}));
        assert_eq!(status, 201);
    }
    let mut seen = vec![];
    let mut after = 0;
    loop {
        let page = api.json(&format!("/nodes?limit=3&after={after}"));
        let ids: Vec<i64> = page["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_i64().unwrap()).collect();
        assert!(ids.len() <= 3);
        seen.extend(ids);
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seen, (1..=7).collect::<Vec<_>>());
    // A full last page points to an empty one: the edge is well defined.
    let page = api.json("/nodes?limit=7");
    assert_eq!(page["next_after"], 7);
    assert_eq!(api.json("/nodes?after=7")["nodes"], json!([]));
    assert_eq!(api.json("/nodes?label=rack=odd")["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(api.json("/nodes?state=discovered")["nodes"].as_array().unwrap().len(), 7);
    assert_eq!(api.json("/nodes?state=ready")["nodes"], json!([]));
    for bad in ["limit=0", "limit=501", "after=-1", "state=sleepy", "label=novalue", "limit=x", "bogus=1"] {
        let (status, body) = api.get(&format!("/nodes?{bad}"));
        assert_eq!((status, error_code(&body).as_str()), (400, "bad_request"), "{bad}: {body}");
    }
}

#[test]
fn maintenance_retries_and_reprovision_shape_the_boot_script() {
    let backoff = "lifecycle:\n  retry_backoff_secs: 1\n  retry_backoff_max_secs: 1\n";
    let srv = TestServer::start_with(Some("tiny"), &[], backoff);
    let api = Api::admin(&srv);
    let mac = "52:54:00:cc:00:01";
    let token = token_of(&boot(&srv, mac));
    assert_eq!(report(&srv, &token, "failed"), 204);
    let node = api.json(&format!("/nodes/{mac}"))["node"].clone();
    assert_eq!((node["state"].as_str(), node["failures"].as_i64()), (Some("failed"), Some(1)));
    // The server enforces the back-off: no token until it is over.
    let script = boot(&srv, mac);
    assert!(
        script.contains("1 failed boot(s): backing off, next boot in 1 s")
            && script.contains("sleep 1")
            && !script.contains("kernel"),
        "{script}"
    );
    // Fail it to the limit (5 by default): then it is not retried any more.
    for _ in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let token = token_of(&boot(&srv, mac));
        assert_eq!(report(&srv, &token, "failed"), 204);
    }
    let script = boot(&srv, mac);
    assert!(script.contains("6 boots failed in a row; reprovision the node") && !script.contains("kernel"), "{script}");
    let (status, body) = api.send("POST", &format!("/nodes/{mac}/reprovision"), json!({}));
    assert_eq!(status, 200, "{body}");
    let script = boot(&srv, mac);
    assert!(script.contains("kernel") && !script.contains("sleep"), "{script}");

    let (status, body) =
        api.send("POST", &format!("/nodes/{mac}/maintenance"), json!({"enabled": true, "reason": "disk swap"}));
    assert_eq!(status, 200, "{body}");
    let script = boot(&srv, mac);
    assert!(script.contains("in maintenance (disk swap)") && !script.contains("kernel"), "{script}");
    let (_, body) = api.send("POST", &format!("/nodes/{mac}/maintenance"), json!({"enabled": false}));
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["state"], "discovered");
    assert!(boot(&srv, mac).contains("kernel"));
    let (status, _) = api.send("POST", &format!("/nodes/{mac}/maintenance"), json!({"enabled": "yes"}));
    assert_eq!(status, 422);
}

const SELECTED: &str = "name: by-serial\nstage1: stage1\nimage: tiny\nselectors:\n  - serial: SN-42\n\
    vars: {site: lab}\nfiles:\n  - path: /etc/motd\n    template: \"{{ node.hostname }} at {{ vars.site }} ({{ node.inventory.dmi.serial }})\"\n\
\x20 - path: /etc/ramboot/secret\n    mode: \"0600\"\n    template: \"{{ secret('cluster') }}\"\n";

#[test]
fn discovery_waits_for_a_selector_or_an_assignment_and_overlays_render() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.yaml");
    std::fs::write(&secrets, "cluster: s3cr3t\n").unwrap();
    // Secrets files others can read are refused (`ramboot::secrets`).
    std::fs::set_permissions(&secrets, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let srv = TestServer::start_with(None, &[("by-serial", SELECTED)], &format!("secrets: {}\n", secrets.display()));
    let api = Api::admin(&srv);

    // Unknown node, no default profile: a discovery boot of stage one.
    let script = boot(&srv, "52:54:00:dd:00:01");
    assert!(script.contains("profile (discovery)") && script.contains("/vmlinuz"), "{script}");
    let token = token_of(&script);
    let plan =
        |token: &str| call(agent().get(&srv.url("/boot/v1/plan")).set("Authorization", &format!("Bearer {token}")));
    // Its inventory names serial SN-42: the selector matches within the same boot.
    // But the profile renders a secret, and a serial is the node's own word: it
    // waits for an operator to vouch for it.
    assert_eq!(hello(&srv, &token, "SN-42"), 204);
    let (status, body) = plan(&token);
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("profile by-serial renders secrets") && body.contains("approve"), "{body}");
    let (status, body) = api.send("POST", "/nodes/52:54:00:dd:00:01/approve", json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["approved"], true);
    let (status, body) = plan(&token);
    assert_eq!(status, 200, "{body}");
    let p: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(p["profile"], "by-serial");
    let overlay_url = p["overlay_url"].as_str().expect("profile has files");
    let node = api.json("/nodes/52:54:00:dd:00:01")["node"].clone();
    assert_eq!(node["state"], "assigned");

    // The overlay: rendered from the node's facts, profile vars and secrets.
    let resp = agent().get(overlay_url).set("Authorization", &format!("Bearer {token}")).call().unwrap();
    assert_eq!(resp.header("content-type"), Some("application/x-tar"));
    let mut bytes = vec![];
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).unwrap();
    let mut archive = tar::Archive::new(bytes.as_slice());
    let mut files = std::collections::BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut e = entry.unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut e, &mut text).unwrap();
        files.insert(e.path().unwrap().to_string_lossy().into_owned(), (e.header().mode().unwrap(), text));
    }
    assert_eq!(files["etc/motd"].1, "node-525400dd0001 at lab (SN-42)");
    assert_eq!(files["etc/ramboot/secret"], (0o600, "s3cr3t".to_string()));

    // Another unknown node matches nothing: it waits (202) until an operator assigns it.
    let token = token_of(&boot(&srv, "52:54:00:dd:00:02"));
    assert_eq!(hello(&srv, &token, "SN-1"), 204);
    let (status, body) = plan(&token);
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("retry_after_secs"), "{body}");
    assert_eq!(api.send("PATCH", "/nodes/52:54:00:dd:00:02", json!({"profile": "tiny"})).0, 200);
    let (status, body) = plan(&token);
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["image"]["name"], "tiny");
}

#[test]
fn profiles_images_and_leases_are_listed() {
    let srv = TestServer::start();
    let api = Api::reader(&srv);
    let list = api.json("/profiles");
    assert_eq!(list["profiles"][0]["profile"]["name"], "tiny");
    assert_eq!(list["profiles"][0]["revision"].as_str().map(str::len), Some(12));
    assert_eq!(list["errors"], json!([]));
    assert_eq!(api.json("/profiles/tiny")["profile"]["stage1"], "stage1");
    assert_eq!(api.get("/profiles/nope").0, 404);
    assert_eq!(api.json("/profiles/errors"), json!([]));
    assert_eq!(api.json("/images/tiny")["kind"], "rootfs");
    assert_eq!(api.get("/images/..%2Fetc").0, 400);
    assert_eq!(api.json("/leases"), json!([]));
    // An image a profile uses cannot be deleted.
    let (status, body) = Api::admin(&srv).delete("/images/tiny");
    assert_eq!((status, error_code(&body).as_str()), (409, "in_use"));
    assert_eq!(Api::admin(&srv).delete("/images/nope").0, 404);
}

#[test]
fn events_tail_and_stream() {
    let srv = TestServer::start();
    let api = Api::reader(&srv);
    boot(&srv, "52:54:00:ee:00:01");
    let all = api.json("/events?after=0");
    assert!(all.as_array().unwrap().len() >= 2);
    let last = api.json("/events?last=1");
    assert_eq!(last.as_array().unwrap().len(), 1);
    assert_eq!(last[0]["id"], all.as_array().unwrap().last().unwrap()["id"]);

    // The stream from the start replays, then goes on live.
    let resp =
        agent().get(&srv.url("/api/v1/events/stream?after=0")).set("Authorization", &srv.read_auth()).call().unwrap();
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(resp.into_reader()));
    let first = lines.find(|l| l.as_ref().is_ok_and(|l| l.starts_with("data:"))).unwrap().unwrap();
    let event: Value = serde_json::from_str(first.trim_start_matches("data:").trim()).unwrap();
    assert_eq!(event["id"], all[0]["id"]);
}

#[test]
fn openapi_document_and_metrics() {
    let srv = TestServer::start();
    let doc: Value = agent().get(&srv.url("/api/v1/openapi.json")).call().unwrap().into_json().unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/api/v1/nodes", "/api/v1/nodes/{id}", "/api/v1/events/stream", "/api/v1/profiles/errors"] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    // A full boot, so the phase histogram has samples.
    let mac = "52:54:00:ff:00:01";
    let token = token_of(&boot(&srv, mac));
    assert_eq!(hello(&srv, &token, "x"), 204);
    for state in ["loading", "handoff", "ready"] {
        assert_eq!(report(&srv, &token, state), 204);
    }
    let text = agent().get(&srv.url("/metrics")).call().unwrap().into_string().unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
    let find = |name: &'static str| scrape.samples.iter().filter(move |s| s.metric == name);
    assert_eq!(find("ramboot_build_info").count(), 1, "{text}");
    let ready = find("ramboot_nodes").find(|s| s.labels.get("state") == Some("ready")).expect("nodes by state");
    assert!(matches!(ready.value, prometheus_parse::Value::Gauge(v) if v >= 1.0), "{text}");
    let phases: Vec<&str> = find("ramboot_boot_phase_duration_seconds")
        .filter(|s| s.labels.get("profile") == Some("tiny"))
        .filter_map(|s| s.labels.get("phase"))
        .collect();
    for phase in ["booting", "stage1", "loading", "handoff"] {
        assert!(phases.contains(&phase), "histogram for {phase}: {text}");
    }
}

/// Stopping the server ends an open event stream at once, so the shutdown drain (10 s
/// here) does not wait for it, and the server stops.
#[test]
fn an_open_event_stream_ends_when_the_server_stops() {
    let srv = TestServer::start();
    let resp = agent().get(&srv.url("/api/v1/events/stream")).set("Authorization", &srv.read_auth()).call().unwrap();
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let mut body = resp.into_reader();
    let stopped = std::time::Instant::now();
    srv.shutdown.cancel();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut body, &mut rest).expect("the stream ends cleanly");
    let ended = stopped.elapsed();
    let TestServer { runtime, .. } = srv;
    runtime.join().unwrap();
    assert!(ended < std::time::Duration::from_secs(5), "the stream ended {ended:?} after the stop, not at once");
    eprintln!("event stream ended {ended:?} after the stop; server stopped {:?} after it", stopped.elapsed());
}

/// Deleting an image collects unreferenced blobs, but never one a boot in progress
/// pinned: here `tiny` is rebuilt while a node is loading its first build, and that
/// build's blob outlives a collection until the boot is over.
#[test]
fn image_gc_keeps_the_blob_of_a_boot_in_progress() {
    let srv = TestServer::start();
    let api = Api::admin(&srv);
    let mac = "52:54:00:9c:00:01";
    let (status, body) = api.send("POST", "/nodes", json!({"mac": mac}));
    assert_eq!(status, 201, "{body}");
    let token = token_of(&boot(&srv, mac));
    assert_eq!(hello(&srv, &token, "gc"), 204);
    assert_eq!(report(&srv, &token, "loading"), 204);

    let images = ramboot::images::ImageStore::new(srv.dir.path().join("data/images"));
    let pinned: ramboot::images::Digest = srv.rootfs_digest.parse().unwrap();
    let rootfs = ramboot::images::ImageKind::Rootfs;
    common::write_image(&images, srv.dir.path(), "tiny", rootfs, &[("rootfs", "squashfs", b"tiny, rebuilt")]);
    common::write_image(&images, srv.dir.path(), "old", rootfs, &[("rootfs", "squashfs", b"unused")]);
    let unused = images.manifest("old").unwrap().artifacts["rootfs"].digest;
    assert_eq!(api.delete("/images/old").0, 204);
    assert!(!images.blob_path(&unused).exists(), "an unreferenced blob is collected");
    assert!(images.blob_path(&pinned).exists(), "the loading node's image survives the collection");

    for state in ["handoff", "ready"] {
        assert_eq!(report(&srv, &token, state), 204);
    }
    common::write_image(&images, srv.dir.path(), "old", rootfs, &[("rootfs", "squashfs", b"unused")]);
    assert_eq!(api.delete("/images/old").0, 204);
    assert!(!images.blob_path(&pinned).exists(), "once the boot is over, the old build is garbage");
}

#[test]
fn changes_are_audited_with_who_and_what_and_tokens_expire() {
    let srv = TestServer::start();
    let admin = Api::admin(&srv);
    let (status, body) =
        admin.send("POST", "/tokens", json!({"name": "alice", "role": "admin", "expires_in_seconds": 0}));
    assert_eq!((status, error_code(&body).as_str()), (422, "invalid"), "{body}");
    // A time-boxed admin token.
    let (status, body) =
        admin.send("POST", "/tokens", json!({"name": "alice", "role": "admin", "expires_in_seconds": 3}));
    assert_eq!(status, 201, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    let expires_at = created["expires_at_ms"].as_i64().expect("an expiry");
    let alice = Api { srv: &srv, http: agent(), auth: format!("Bearer {}", created["token"].as_str().unwrap()) };

    let mac = "52:54:00:00:a0:01";
    let (status, body) = alice.send("POST", "/nodes", json!({"mac": mac, "hostname": "hv-1"}));
    assert_eq!(status, 201, "{body}");
    let (status, body) = alice.send("PATCH", &format!("/nodes/{mac}"), json!({"labels": {"rack": "r1"}}));
    assert_eq!(status, 200, "{body}");
    // A refused change leaves no record: it is written in the change's transaction.
    let (status, _) = alice.send("PATCH", &format!("/nodes/{mac}"), json!({"reserved_ip": "10.9.9.9"}));
    assert_eq!(status, 422);

    let reader = Api::reader(&srv);
    let trail = reader.json(&format!("/audit?node={mac}"));
    let records = trail["records"].as_array().unwrap();
    let summary: Vec<(&str, &str)> =
        records.iter().map(|r| (r["actor"]["name"].as_str().unwrap(), r["action"].as_str().unwrap())).collect();
    assert_eq!(summary, [("alice", "node.create"), ("alice", "node.update")], "{trail}");
    assert_eq!(records[0]["before"], Value::Null, "a creation has no before");
    assert_eq!(records[0]["after"]["hostname"], "hv-1");
    assert_eq!(records[1]["before"], json!({"labels": {}}), "only the changed field");
    assert_eq!(records[1]["after"], json!({"labels": {"rack": "r1"}}));
    assert_eq!(records[1]["target"], mac);
    let by_admin = reader.json("/audit?actor=admin");
    let actions: Vec<&str> =
        by_admin["records"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["token.create"], "{by_admin}");
    assert_eq!(by_admin["records"][0]["after"], json!({"role": "admin", "expires_at_ms": expires_at}));

    // The token is refused once it has expired, and says so.
    while ramboot::clock::now_ms() < expires_at + 50 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (status, body) = alice.get("/nodes");
    assert_eq!((status, error_code(&body).as_str()), (401, "token_expired"), "{body}");
    assert!(body.contains("alice") && body.contains("expired at"), "{body}");
    let tokens = admin.json("/tokens");
    let listed = tokens.as_array().unwrap().iter().find(|t| t["name"] == "alice").unwrap();
    assert_eq!(listed["expires_at_ms"], expires_at, "listed with its expiry until revoked");
    assert_eq!(admin.delete("/tokens/alice").0, 204);
    let last = admin.json("/audit?actor=admin")["records"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["action"].as_str(), last["target"].as_str()), (Some("token.delete"), Some("alice")));
}

#[test]
fn rollouts_are_validated_and_take_commands_by_status() {
    // A drain that takes its time: the node stays in flight while commands come.
    let srv = TestServer::start_with(Some("tiny"), &[], "hooks:\n  drain-vms:\n    command: [/bin/sleep, \"60\"]\n");
    let admin = Api::admin(&srv);
    let reader = Api::reader(&srv);
    let mac = "52:54:00:00:d0:01";
    let (status, body) =
        admin.send("POST", "/nodes", json!({"mac": mac, "profile": "tiny", "labels": {"role": "compute"}}));
    assert_eq!(status, 201, "{body}");

    for (body, needle) in [
        (json!({}), "at least one"),
        (
            json!({"labels": {"role": "compute"}, "drain": "nope"}),
            "no hook named \"nope\" in the server's config (hooks: drain-vms)",
        ),
        (json!({"labels": {"role": "compute"}, "to_profile": "huge"}), "no valid profile named \"huge\""),
        (json!({"labels": {"role": "storage"}}), "no node matches"),
        (json!({"nodes": [mac], "batch_size": 0}), "batch_size"),
    ] {
        let (status, text) = admin.send("POST", "/rollouts", body.clone());
        assert_eq!(status, 422, "{body}: {text}");
        let message = serde_json::from_str::<Value>(&text).unwrap()["error"]["message"].clone();
        assert!(message.as_str().unwrap().contains(needle), "{body}: {text}");
    }
    let (status, _) = reader.send("POST", "/rollouts", json!({"nodes": [mac]}));
    assert_eq!(status, 403, "starting a rollout is for admins");

    let (status, text) =
        admin.send("POST", "/rollouts", json!({"nodes": [mac], "drain": "drain-vms", "ready_timeout_secs": 600}));
    assert_eq!(status, 201, "{text}");
    let rollout: Value = serde_json::from_str(&text).unwrap();
    let id = rollout["id"].as_i64().unwrap();
    assert_eq!(rollout["nodes"][0]["target_profile"], "tiny", "no to_profile: the node's own");
    assert!(rollout["nodes"][0]["target_digest"].as_str().is_some_and(|d| d.len() == 64), "{rollout}");
    // One unfinished rollout per node.
    let (status, text) = admin.send("POST", "/rollouts", json!({"nodes": [mac]}));
    assert_eq!(status, 409, "{text}");
    assert!(text.contains(&format!("rollout {id}")), "{text}");

    // Commands follow the status: a paused rollout takes resume or abort, not pause.
    assert_eq!(reader.send("POST", &format!("/rollouts/{id}/pause"), json!({})).0, 403);
    let (status, text) = admin.send("POST", &format!("/rollouts/{id}/pause"), json!({}));
    assert_eq!(status, 200, "{text}");
    let paused = (0..100).find_map(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let r = admin.json(&format!("/rollouts/{id}"));
        (r["status"] == "paused").then_some(r)
    });
    assert!(paused.is_some(), "the driver takes the pause");
    let (status, text) = admin.send("POST", &format!("/rollouts/{id}/pause"), json!({}));
    assert_eq!(status, 409, "{text}");
    let (status, _) = admin.send("POST", &format!("/rollouts/{id}/abort"), json!({}));
    assert_eq!(status, 200);
    let aborted = (0..100).find_map(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let r = admin.json(&format!("/rollouts/{id}"));
        (r["status"] == "aborted").then_some(r)
    });
    assert!(aborted.is_some(), "the driver takes the abort");
    assert_eq!(admin.send("POST", &format!("/rollouts/{id}/resume"), json!({})).0, 409, "aborted is final");
    assert_eq!(admin.get("/rollouts/999").0, 404);

    let events: Vec<String> = admin
        .json(&format!("/rollouts/{id}/events"))
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert!(events.iter().any(|m| m.starts_with("pause requested by token admin")), "{events:?}");
    assert!(events.iter().any(|m| m.starts_with("aborted")), "{events:?}");
    let trail = admin.json("/audit?actor=admin")["records"].as_array().unwrap().clone();
    let actions: Vec<&str> = trail.iter().map(|r| r["action"].as_str().unwrap()).collect();
    for a in ["rollout.start", "rollout.pause", "rollout.abort"] {
        assert!(actions.contains(&a), "{actions:?}");
    }
    // A new rollout may take the node once the old one ended.
    assert_eq!(admin.send("POST", "/rollouts", json!({"nodes": [mac]})).0, 201);
    assert_eq!(admin.json("/rollouts").as_array().unwrap().len(), 2);
}
