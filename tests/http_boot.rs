//! The HTTP boot tier and admin API over real HTTP: the boot sequence an agent
//! follows, per-boot token checks, artifact Range/ETag semantics, bad bodies and
//! unknown paths, and the `ramboot nodes` CLI against the running server.

mod common;

use common::{agent, call, send_json, token_of, TestServer};
use serde_json::{json, Value};

const MAC: &str = "52:54:00:00:00:01";

fn inventory() -> Value {
    json!({"cpus": 2, "cpu_model": "QEMU", "memory_bytes": 536870912u64,
           "nics": [{"name": "eth0", "mac": MAC, "driver": "e1000", "speed_mbps": 1000}],
           "dmi": {"serial": "S123", "uuid": "u-1"}, "kernel": "6.1.0"})
}

fn error_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("no error.code in {body}")).to_string()
}

#[test]
fn a_boot_runs_from_script_to_ready_with_its_token() {
    let srv = TestServer::start();
    srv.lease(MAC);
    let http = agent();
    let (status, script) = call(http.get(&srv.url(&format!("/boot.ipxe?mac={MAC}"))));
    assert_eq!(status, 200);
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(script.contains("initrd=initrd.img") && script.contains("console=ttyS0"), "{script}");
    assert!(script.contains(&format!("ramboot.mac={MAC}")), "{script}");
    let token = token_of(&script);
    let bearer = format!("Bearer {token}");

    // No token, a wrong token: 401 in the one error shape.
    let (status, body) = send_json(http.post(&srv.url("/boot/v1/hello")), inventory());
    assert_eq!((status, error_code(&body).as_str()), (401, "unauthorized"));
    let (status, body) =
        send_json(http.post(&srv.url("/boot/v1/hello")).set("Authorization", "Bearer nope"), inventory());
    assert_eq!((status, error_code(&body).as_str()), (401, "unauthorized"));

    // Bad bodies: unknown field, wrong type, not JSON, oversize.
    let hello = || http.post(&srv.url("/boot/v1/hello")).set("Authorization", &bearer);
    let mut bad = inventory();
    bad["colour"] = json!("red");
    let (status, body) = send_json(hello(), bad);
    assert_eq!((status, error_code(&body).as_str()), (422, "bad_body"), "{body}");
    let (status, body) = send_json(hello(), json!({"cpus": "two", "memory_bytes": 1}));
    assert_eq!((status, error_code(&body).as_str()), (422, "bad_body"), "{body}");
    let (status, body) = match hello().set("Content-Type", "application/json").send_string("{not json") {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    };
    assert_eq!((status, error_code(&body).as_str()), (400, "bad_body"), "{body}");
    let mut huge = inventory();
    huge["cpu_model"] = json!("x".repeat(300 * 1024));
    assert!(matches!(common::send_oversize(hello(), huge).as_str(), "bad_body" | "cut"));

    // A stage one built for another boot protocol is told to rebuild, and the
    // node's timeline says so.
    let old_agent = hello().set("User-Agent", "ramboot-agent/0.0.1 (protocol 0)");
    let (status, body) = send_json(old_agent, inventory());
    assert_eq!((status, error_code(&body).as_str()), (409, "agent_incompatible"), "{body}");
    assert!(body.contains("ramboot images build stage1"), "{body}");

    let (status, _) = send_json(hello().set("User-Agent", &ramboot_proto::agent_user_agent("0.1.0")), inventory());
    assert_eq!(status, 204);
    let (status, plan) = call(http.get(&srv.url("/boot/v1/plan")).set("Authorization", &bearer));
    assert_eq!(status, 200);
    let plan: Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(plan["image"]["sha256"], srv.rootfs_digest.as_str());
    assert_eq!(plan["image"]["size"], srv.rootfs.len());
    assert_eq!(plan["image"]["format"], "squashfs");
    assert_eq!(plan["server"]["protocol"], ramboot_proto::PROTOCOL, "the plan names the server and its protocol");
    assert_eq!(plan["server"]["version"], env!("CARGO_PKG_VERSION"));

    // The agent downloads the image from the URL in its plan.
    let url = plan["image"]["url"].as_str().unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut http.get(url).call().unwrap().into_reader(), &mut got).unwrap();
    assert!(got == srv.rootfs, "image bytes differ");

    let event = |state: Option<&str>, message: &str| {
        send_json(
            http.post(&srv.url("/boot/v1/events")).set("Authorization", &bearer),
            json!({"state": state, "message": message, "progress": null}),
        )
    };
    assert_eq!(event(Some("loading"), "fetching").0, 204);
    assert_eq!(event(None, "fetched 50%").0, 204);
    assert_eq!(event(Some("handoff"), "mounted").0, 204);
    // Backwards is refused: a retried report cannot rewind the timeline.
    let (status, body) = event(Some("loading"), "late retry");
    assert_eq!((status, error_code(&body).as_str()), (409, "conflict"));
    assert_eq!(event(Some("ready"), "up").0, 204);

    let (status, body) =
        call(http.get(&srv.url(&format!("/api/v1/nodes/{MAC}"))).set("Authorization", &srv.read_auth()));
    assert_eq!(status, 200);
    let detail: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(detail["node"]["state"], "ready");
    assert_eq!(detail["node"]["inventory"]["dmi"]["serial"], "S123");
    let states: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "state")
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["discovered", "booting", "stage1", "loading", "handoff", "ready"]);

    // A new boot of the same node makes the old token worthless.
    let (_, script2) = call(http.get(&srv.url(&format!("/boot.ipxe?mac={MAC}"))));
    assert_ne!(token_of(&script2), token);
    let (status, _) = call(http.get(&srv.url("/boot/v1/plan")).set("Authorization", &bearer));
    assert_eq!(status, 401);

    // The CLI reads the same API.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ramboot"))
        .args(["nodes", "ls", "--server", &srv.base, "--token", &srv.reader])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(MAC) && text.contains("booting"), "{text}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ramboot"))
        .args(["nodes", "show", MAC, "--server", &srv.base])
        .env("RAMBOOT_TOKEN", &srv.reader)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[handoff] mounted") && text.contains("[ready] up"), "{text}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ramboot"))
        .args(["nodes", "show", "99", "--server", &srv.base, "--token", &srv.reader])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn nodes_that_cannot_boot_get_a_script_that_says_why() {
    let srv = TestServer::start();
    let http = agent();
    for query in ["/boot.ipxe", "/boot.ipxe?mac=not-a-mac", "/boot.ipxe?mac=52:54:00:00:00:01%0Achain%20x"] {
        let (status, script) = call(http.get(&srv.url(query)));
        assert_eq!(status, 200, "{query}");
        assert!(script.contains("no valid MAC address") && script.contains("sleep 60"), "{query}: {script}");
        assert!(!script.contains("\nchain"), "{script}");
    }
}

#[test]
fn artifacts_support_range_etag_and_head() {
    let srv = TestServer::start();
    let http = agent();
    let url = srv.url(&format!("/artifacts/sha256/{}/rootfs.squashfs", srv.rootfs_digest));
    let len = srv.rootfs.len();
    let etag = format!("\"{}\"", srv.rootfs_digest);

    let r = http.get(&url).call().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("content-length"), Some(len.to_string().as_str()));

    let r = http.get(&url).set("Range", "bytes=100-199").call().unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.header("content-range"), Some(format!("bytes 100-199/{len}").as_str()));
    let mut part = Vec::new();
    std::io::Read::read_to_end(&mut r.into_reader(), &mut part).unwrap();
    assert_eq!(part, &srv.rootfs[100..200]);

    let r = http.get(&url).set("Range", "bytes=-10").call().unwrap();
    assert_eq!(r.header("content-range"), Some(format!("bytes {}-{}/{len}", len - 10, len - 1).as_str()));

    // A stale If-Range validator means "send everything".
    let r = http.get(&url).set("Range", "bytes=0-0").set("If-Range", "\"other\"").call().unwrap();
    assert_eq!(r.status(), 200);

    let (status, _) = call(http.get(&url).set("Range", &format!("bytes={len}-")));
    assert_eq!(status, 416);
    let (status, _) = call(http.get(&url).set("Range", "bytes=0-1,5-6"));
    assert_eq!(status, 416);
    let (status, _) = call(http.get(&url).set("If-None-Match", &etag));
    assert_eq!(status, 304);

    let r = http.head(&url).call().unwrap();
    assert_eq!(r.header("content-length"), Some(len.to_string().as_str()));
    assert_eq!(r.into_string().unwrap(), "");

    for bad in [
        "/artifacts/sha256/../../etc/passwd",
        "/artifacts/sha256/ABCDEF",
        &format!("/artifacts/sha256/{}", "0".repeat(64)),
    ] {
        let (status, body) = call(http.get(&srv.url(bad)));
        assert_eq!((status, error_code(&body).as_str()), (404, "not_found"), "{bad}: {body}");
    }
}

#[test]
fn unknown_paths_and_bad_queries_get_the_error_shape() {
    let srv = TestServer::start();
    let http = agent();
    let (status, body) = call(http.get(&srv.url("/no/such/path")));
    assert_eq!((status, error_code(&body).as_str()), (404, "not_found"));
    let get = |path: &str| call(http.get(&srv.url(path)).set("Authorization", &srv.read_auth()));
    let (status, body) = get("/api/v1/nodes/99");
    assert_eq!((status, error_code(&body).as_str()), (404, "not_found"));
    let (status, body) = get("/api/v1/nodes/1/events?after=abc");
    assert_eq!((status, error_code(&body).as_str()), (400, "bad_request"));
    let (status, body) = get("/api/v1/nodes/1/events?limit=0");
    assert_eq!(status, 400, "{body}");
    let (status, body) = get("/api/v1/images");
    assert_eq!(status, 200);
    assert!(body.contains("\"stage1\"") && body.contains("\"tiny\""), "{body}");
}

/// One response read off a raw connection: status line, headers (lower-cased names)
/// and exactly `content-length` body bytes (none for HEAD).
fn read_response(
    reader: &mut std::io::BufReader<std::net::TcpStream>,
    head: bool,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::{BufRead, Read};
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':').unwrap();
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let len: usize = headers.iter().find(|(n, _)| n == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0u8; if head { 0 } else { len }];
    reader.read_exact(&mut body).unwrap();
    (status, headers, body)
}

fn sendfile_responses(srv: &TestServer) -> f64 {
    let text = agent().get(&srv.url("/metrics")).call().unwrap().into_string().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("ramboot_http_artifact_sendfile_responses_total "))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Artifact bodies go out with sendfile(2); on the same keep-alive connection, the
/// answers without a body (304, 416) and other paths are hyper's, and the bytes are
/// the same either way.
#[test]
fn artifact_bodies_use_sendfile_and_share_keep_alive_connections_with_hyper() {
    use std::io::Write;
    let srv = TestServer::start();
    let path = format!("/artifacts/sha256/{}/rootfs.squashfs", srv.rootfs_digest);
    let (len, etag) = (srv.rootfs.len(), format!("\"{}\"", srv.rootfs_digest));
    let before = sendfile_responses(&srv);
    let addr = srv.base.trim_start_matches("http://").to_string();
    let stream = std::net::TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut ask = |request: String, head: bool| {
        writer.write_all(request.as_bytes()).unwrap();
        read_response(&mut reader, head)
    };
    let header =
        |headers: &[(String, String)], name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());

    let (status, headers, body) = ask(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"), false);
    assert_eq!((status, body.len()), (200, len));
    assert!(body == srv.rootfs, "whole body");
    assert_eq!(header(&headers, "etag"), Some(etag.clone()));
    assert_eq!(header(&headers, "accept-ranges").as_deref(), Some("bytes"));
    assert!(header(&headers, "date").is_some());

    let (status, headers, body) = ask(format!("GET {path} HTTP/1.1\r\nHost: t\r\nRange: bytes=100-199\r\n\r\n"), false);
    assert_eq!(status, 206);
    assert_eq!(header(&headers, "content-range"), Some(format!("bytes 100-199/{len}")));
    assert_eq!(body, &srv.rootfs[100..200]);

    let (status, headers, _) = ask(format!("HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n"), true);
    assert_eq!((status, header(&headers, "content-length")), (200, Some(len.to_string())));
    // At least: tests running at the same time in this process download artifacts too.
    assert!(sendfile_responses(&srv) - before >= 3.0, "the three body answers went out with sendfile");

    // hyper's, on the same connection: a 304, a 416, another path, then an artifact again.
    let (status, _, _) = ask(format!("GET {path} HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n"), false);
    assert_eq!(status, 304);
    let (status, headers, _) = ask(format!("GET {path} HTTP/1.1\r\nHost: t\r\nRange: bytes={len}-\r\n\r\n"), false);
    assert_eq!((status, header(&headers, "content-range")), (416, Some(format!("bytes */{len}"))));
    let (status, _, _) = ask("GET /artifacts/sha256/00/x HTTP/1.1\r\nHost: t\r\n\r\n".into(), false);
    assert_eq!(status, 404);
    let (status, _, body) = ask(format!("GET {path} HTTP/1.1\r\nHost: t\r\nRange: bytes=-10\r\n\r\n"), false);
    assert_eq!((status, body.as_slice()), (206, &srv.rootfs[len - 10..]));

    // A client that asks to close gets its body and then the end of the connection.
    let fresh = std::net::TcpStream::connect(&addr).unwrap();
    let mut fresh_writer = fresh.try_clone().unwrap();
    let mut fresh_reader = std::io::BufReader::new(fresh);
    fresh_writer.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).unwrap();
    let (status, headers, body) = read_response(&mut fresh_reader, false);
    assert_eq!((status, body.len(), header(&headers, "connection").as_deref()), (200, len, Some("close")));
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut fresh_reader, &mut rest).unwrap();
    assert!(rest.is_empty(), "closed after the body");
}

/// UEFI HTTP Boot: DHCP hands the client `{boot_url}/ipxe/<file>`, and the HTTP
/// server serves the very files TFTP does, with the same path safety.
#[test]
fn ipxe_binaries_are_served_over_http_from_ipxe_only() {
    let srv = TestServer::start();
    let ipxe = srv.dir.path().join("ipxe");
    std::fs::create_dir_all(ipxe.join("arm64")).unwrap();
    let binary: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(ipxe.join("snponly.efi"), &binary).unwrap();
    std::fs::write(ipxe.join("arm64/snponly.efi"), b"arm64 binary").unwrap();
    std::fs::write(srv.dir.path().join("secret.txt"), b"not for nodes").unwrap();
    std::os::unix::fs::symlink(srv.dir.path().join("secret.txt"), ipxe.join("escape.efi")).unwrap();

    let response = agent().get(&srv.url("/ipxe/snponly.efi")).call().unwrap();
    assert_eq!(response.header("content-type"), Some("application/efi"), "what UEFI HTTP Boot checks");
    assert_eq!(response.header("cache-control"), Some("no-cache"), "fetch.sh may replace it");
    let etag = response.header("etag").unwrap().to_string();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut body).unwrap();
    assert!(body == binary, "the bytes on disk");
    let (status, text) = call(agent().get(&srv.url("/ipxe/arm64/snponly.efi")));
    assert_eq!((status, text.as_str()), (200, "arm64 binary"), "subdirectories, as boot_files names them");

    // Firmware resumes with a range, and revalidates with its ETag.
    let part = agent().get(&srv.url("/ipxe/snponly.efi")).set("Range", "bytes=100-199").call().unwrap();
    assert_eq!((part.status(), part.header("content-range")), (206, Some("bytes 100-199/200000")));
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut part.into_reader(), &mut got).unwrap();
    assert!(got == binary[100..200]);
    let (status, _) = call(agent().get(&srv.url("/ipxe/snponly.efi")).set("If-None-Match", &etag));
    assert_eq!(status, 304);

    // Nothing outside ipxe/: not by `..` (encoded or not), nor a symlink pointing out.
    for path in
        ["/ipxe/missing.efi", "/ipxe/%2e%2e/secret.txt", "/ipxe/..%2fsecret.txt", "/ipxe/escape.efi", "/ipxe/a%5cb"]
    {
        let (status, body) = call(agent().get(&srv.url(path)));
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.contains("not for nodes"), "{path}");
    }
    let metrics = call(agent().get(&srv.url("/metrics"))).1;
    assert!(metrics.contains("ramboot_http_boot_file_requests_total{result=\"refused\"}"), "refusals are counted");
}
