//! ramboot's TFTP service against real clients: tftp-hpa's `tftp` and curl.
//! Downloads (default and negotiated block size), not-found, traversal, and the
//! refusal of writes. CI installs both clients (`.ci/run`); elsewhere a missing
//! client skips its part with a message.

mod common;

use std::path::Path;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

struct Tftp {
    port: u16,
    dir: tempfile::TempDir,
    payload: Vec<u8>,
    cancel: CancellationToken,
}

async fn start() -> Tftp {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ipxe");
    std::fs::create_dir_all(&root).unwrap();
    let payload = common::pattern(200 * 1024 + 3);
    std::fs::write(root.join("undionly.kpxe"), &payload).unwrap();
    std::fs::write(dir.path().join("secret"), b"not for TFTP").unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move { ramboot::tftp::serve(&root, socket, stop).await.unwrap() });
    Tftp { port, dir, payload, cancel }
}

fn have(tool: &str) -> bool {
    let found = Path::new("/usr/bin").join(tool).exists();
    if !found {
        assert!(std::env::var_os("CI").is_none(), "CI must install {tool}");
        eprintln!("SKIPPED part of the TFTP client test: {tool} is not installed");
    }
    found
}

/// tftp-hpa's client prints errors and exits 0; return its combined output.
async fn tftp_hpa(port: u16, cwd: &Path, command: &str) -> String {
    let out = Command::new("tftp")
        .current_dir(cwd)
        .args(["-m", "binary", "127.0.0.1", &port.to_string(), "-c"])
        .args(command.split_whitespace())
        .output()
        .await
        .unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_downloads_and_is_refused_what_it_should_be() {
    let t = start().await;
    if !have("tftp") {
        return;
    }
    let work = t.dir.path().join("client");
    std::fs::create_dir_all(&work).unwrap();
    let out = tftp_hpa(t.port, &work, "get undionly.kpxe got.kpxe").await;
    assert!(out.trim().is_empty(), "{out}");
    assert!(std::fs::read(work.join("got.kpxe")).unwrap() == t.payload, "downloaded bytes differ");

    let out = tftp_hpa(t.port, &work, "get missing.efi x").await;
    assert!(out.contains("Error code 1"), "file not found: {out}");
    for name in ["../secret", "/../secret", "..\\secret"] {
        let out = tftp_hpa(t.port, &work, &format!("get {name} x")).await;
        assert!(out.contains("Error code 2") || out.contains("Error code 1"), "{name}: {out}");
        assert!(!out.contains("not for TFTP"));
    }
    std::fs::write(work.join("upload"), b"data").unwrap();
    let out = tftp_hpa(t.port, &work, "put upload undionly.kpxe").await;
    assert!(out.contains("Error code 4"), "write refused as an illegal operation: {out}");
    assert!(std::fs::read(t.dir.path().join("ipxe/undionly.kpxe")).unwrap() == t.payload, "file untouched");
    t.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_negotiates_blksize_and_tsize() {
    let t = start().await;
    if !have("curl") {
        return;
    }
    let out_file = t.dir.path().join("curl.kpxe");
    let status = Command::new("curl")
        .args(["-sS", "--tftp-blksize", "1468", "-o"])
        .arg(&out_file)
        .arg(format!("tftp://127.0.0.1:{}/undionly.kpxe", t.port))
        .status()
        .await
        .unwrap();
    assert!(status.success());
    assert!(std::fs::read(&out_file).unwrap() == t.payload, "downloaded bytes differ");
    // curl's TFTP exit codes: 68 file not found, 69 access violation.
    let status = Command::new("curl")
        .args(["-sS", "-o", "/dev/null"])
        .arg(format!("tftp://127.0.0.1:{}/nope", t.port))
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(68));
    t.cancel.cancel();
}
