//! The node inventory in git, through a real server: files under `inventory/` are
//! applied, a bad save keeps the last good version (and says where it is wrong),
//! the API may not change what a file owns, a removed file releases its nodes, and
//! the audit trail names the file and its revision, or the token.

mod common;

use common::{agent, call, send_json, TestServer};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn get(srv: &TestServer, path: &str) -> Value {
    let (status, body) = call(agent().get(&srv.url(&format!("/api/v1{path}"))).set("Authorization", &srv.admin_auth()));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn patch(srv: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let req = agent().request("PATCH", &srv.url(&format!("/api/v1{path}"))).set("Authorization", &srv.admin_auth());
    let (status, body) = send_json(req, body);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Save `text` as an editor does: a new file renamed over the old one.
fn save(srv: &TestServer, name: &str, text: &str) {
    let dir = srv.dir.path().join("inventory");
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = dir.join(format!(".{name}.swp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const MAC: &str = "52:54:00:00:b0:01";

fn node(srv: &TestServer) -> Option<Value> {
    let (status, body) =
        call(agent().get(&srv.url(&format!("/api/v1/nodes/{MAC}"))).set("Authorization", &srv.admin_auth()));
    (status == 200).then(|| serde_json::from_str::<Value>(&body).unwrap()["node"].clone())
}

const RACK1: &str = "\
# rack 1, hypervisors
nodes:
  - mac: 52:54:00:00:b0:01
    hostname: hv-01
    labels: {rack: r1, role: compute}
    profile: tiny
    reserved_ip: 127.0.0.150
    bmc:
      url: http://10.0.5.21:8000/redfish/v1/Systems/hv-01
      credential: bmc-rack1
";

#[test]
fn the_inventory_in_git_owns_what_it_declares() {
    let srv = TestServer::start_with(Some("tiny"), &[], "secrets: secrets.yaml\n");
    // The BMC credential a file names must be in the secrets file (mode 0600).
    let secrets = srv.dir.path().join("secrets.yaml");
    std::fs::write(&secrets, "bmc-rack1: \"admin:hunter2\"\n").unwrap();
    std::fs::set_permissions(&secrets, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    save(&srv, "rack1.yaml", RACK1);
    let n = wait_until("the file applied", || {
        let errors = get(&srv, "/inventory")["errors"].clone();
        assert_eq!(errors, json!([]), "no errors expected");
        node(&srv).filter(|n| n["hostname"] == "hv-01")
    });
    assert_eq!(n["declared_in"], "rack1.yaml");
    assert_eq!(n["labels"], json!({"rack": "r1", "role": "compute"}));
    assert_eq!((n["profile"].as_str(), n["reserved_ip"].as_str()), (Some("tiny"), Some("127.0.0.150")));
    assert_eq!(n["bmc"], json!({"url": "http://10.0.5.21:8000/redfish/v1/Systems/hv-01", "credential": "bmc-rack1"}));
    assert_eq!(n["approved"], true, "a declared node is an operator's word for it");
    let inv = get(&srv, "/inventory");
    let revision = inv["files"][0]["revision"].as_str().unwrap().to_string();
    assert_eq!(inv["files"][0]["applied"], revision.as_str(), "{inv}");

    // The API may not change a declared field; the refusal names the file.
    let (status, body) = patch(&srv, &format!("/nodes/{MAC}"), json!({"hostname": "renamed"}));
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("declared_in_file")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("rack1.yaml"), "{body}");
    // Setting a declared field to what the file says changes nothing, and is allowed;
    // an undeclared one is the API's.
    let (status, body) = patch(&srv, &format!("/nodes/{MAC}"), json!({"hostname": "hv-01", "approved": true}));
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(
        agent().request("DELETE", &srv.url(&format!("/api/v1/nodes/{MAC}"))).set("Authorization", &srv.admin_auth()),
    );
    assert_eq!(status, 409, "a declared node is removed from its file, not through the API");

    // A bad save: reported at its line and column; the last good version stays.
    save(&srv, "rack1.yaml", &RACK1.replace("hostname: hv-01", "hostname: hv-01\n    colour: blue"));
    let errors = wait_until("the bad save reported", || {
        let inv = get(&srv, "/inventory");
        inv["errors"].as_array().filter(|e| !e.is_empty()).cloned()
    });
    let error = &errors[0];
    assert!(error["file"].as_str().unwrap().ends_with("inventory/rack1.yaml"), "{error}");
    assert_eq!((error["line"].as_u64(), error["column"].as_u64()), (Some(5), Some(5)), "{error}");
    assert!(error["message"].as_str().unwrap().contains("colour"), "{error}");
    assert_eq!(node(&srv).unwrap()["hostname"], "hv-01", "the last good version keeps serving");
    // A semantic error is placed at its value.
    save(&srv, "rack1.yaml", &RACK1.replace("127.0.0.150", "10.99.0.1"));
    wait_until("the out-of-subnet address reported", || {
        let inv = get(&srv, "/inventory");
        let e = inv["errors"][0].clone();
        (e["line"] == 7 && e["message"].as_str().is_some_and(|m| m.contains("not a host address"))).then_some(())
    });

    // The fix applies, and the audit trail names the file and its revision.
    save(&srv, "rack1.yaml", &RACK1.replace("hostname: hv-01", "hostname: hv-01a"));
    wait_until("the fix applied", || node(&srv).filter(|n| n["hostname"] == "hv-01a"));
    assert!(get(&srv, "/inventory")["errors"].as_array().unwrap().is_empty());
    let trail = get(&srv, &format!("/audit?node={MAC}"))["records"].as_array().unwrap().clone();
    let by_file: Vec<&Value> = trail.iter().filter(|r| r["actor"]["kind"] == "file").collect();
    assert_eq!(by_file[0]["action"], "node.create");
    assert_eq!(by_file[0]["actor"]["revision"], revision.as_str());
    let update = by_file.last().unwrap();
    assert_eq!(
        (update["before"].clone(), update["after"].clone()),
        (json!({"hostname": "hv-01"}), json!({"hostname": "hv-01a"}))
    );
    assert_ne!(update["actor"]["revision"], revision.as_str(), "a new revision");
    assert!(trail.iter().any(|r| r["actor"] == json!({"kind": "token", "name": "admin"})), "{trail:?}");

    // A removed file releases its nodes: their fields stay and are the API's again.
    std::fs::remove_file(srv.dir.path().join("inventory/rack1.yaml")).unwrap();
    let n = wait_until("the node released", || node(&srv).filter(|n| n["declared_in"].is_null()));
    assert_eq!(n["hostname"], "hv-01a");
    let (status, body) = patch(&srv, &format!("/nodes/{MAC}"), json!({"hostname": "hv-x"}));
    assert_eq!(status, 200, "{body}");
}

/// A file that declares what another file already does is refused whole, and the
/// offline validator says so the same way.
#[test]
fn two_files_cannot_declare_one_node_and_validate_says_where() {
    let srv = TestServer::start();
    save(&srv, "a.yaml", "nodes:\n  - mac: 52:54:00:00:b0:02\n    hostname: hv-02\n");
    save(&srv, "b.yaml", "nodes:\n  - mac: 52:54:00:00:b0:03\n  - mac: 52:54:00:00:b0:02\n");
    let errors = wait_until("the clash reported", || {
        let inv = get(&srv, "/inventory");
        inv["errors"].as_array().filter(|e| !e.is_empty()).cloned()
    });
    assert_eq!(errors[0]["line"], 3, "{errors:?}");
    assert!(errors[0]["message"].as_str().unwrap().contains("already declared in a.yaml"), "{errors:?}");
    assert_eq!(get(&srv, "/nodes?limit=10")["nodes"].as_array().unwrap().len(), 1, "b.yaml applied nothing");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ramboot"))
        .args(["inventory", "validate"])
        .arg(srv.dir.path().join("inventory"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("inventory/b.yaml:3:") && stderr.contains("already declared in a.yaml"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok  a.yaml"), "{stdout}");
}
