//! ramboot's TFTP service against real clients (tftp-hpa's `tftp`, curl, atftp) and a
//! hand-driven client for what real ones only do by accident (ERROR after tsize, loss).
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_negotiates_windowsize() {
    let t = start().await;
    if !have("atftp") {
        return;
    }
    let out_file = t.dir.path().join("atftp.kpxe");
    let out = Command::new("atftp")
        .args(["--option", "blksize 1468", "--option", "windowsize 16", "--option", "tsize 0", "--verbose", "-g"])
        .args(["-r", "undionly.kpxe", "-l"])
        .arg(&out_file)
        .args(["127.0.0.1", &t.port.to_string()])
        .output()
        .await
        .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    assert!(log.contains("windowsize") && log.contains("16"), "OACK names the window: {log}");
    assert!(std::fs::read(&out_file).unwrap() == t.payload, "downloaded bytes differ");
    t.cancel.cancel();
}

/// A hand-driven client, to do what real clients only do by accident.
struct RawClient {
    socket: tokio::net::UdpSocket,
    server: std::net::SocketAddr,
}

impl RawClient {
    async fn new(port: u16) -> RawClient {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        RawClient { socket, server: ([127, 0, 0, 1], port).into() }
    }
    async fn rrq(&self, options: &[(&str, &str)]) {
        let mut p = vec![0, 1];
        for field in ["undionly.kpxe", "octet"].into_iter().chain(options.iter().flat_map(|(n, v)| [*n, *v])) {
            p.extend_from_slice(field.as_bytes());
            p.push(0);
        }
        self.socket.send_to(&p, self.server).await.unwrap();
    }
    /// The next packet and the port it came from, or `None` after `wait`.
    async fn recv(&self, wait: std::time::Duration) -> Option<(Vec<u8>, std::net::SocketAddr)> {
        let mut buf = vec![0u8; 70_000];
        let (n, from) = tokio::time::timeout(wait, self.socket.recv_from(&mut buf)).await.ok()?.unwrap();
        buf.truncate(n);
        Some((buf, from))
    }
    async fn ack(&self, to: std::net::SocketAddr, block: u16) {
        let [a, b] = block.to_be_bytes();
        self.socket.send_to(&[0, 4, a, b], to).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pxe_roms_tsize_probe_ends_the_session_at_once() {
    let t = start().await;
    let c = RawClient::new(t.port).await;
    c.rrq(&[("tsize", "0")]).await;
    let (oack, session) = c.recv(std::time::Duration::from_secs(5)).await.expect("OACK");
    assert_eq!(&oack[..2], &[0, 6]);
    assert!(oack.windows(6).any(|w| w == format!("{}", t.payload.len()).as_bytes()), "tsize in the OACK");
    // ERROR 8: what PXE ROMs send once they know the size.
    c.socket.send_to(b"\x00\x05\x00\x08tsize only\x00", session).await.unwrap();
    // The server neither resends the OACK nor sends data (its timeout is 1 s).
    assert_eq!(c.recv(std::time::Duration::from_millis(2500)).await, None, "session still talking after ERROR");
    t.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_block_in_a_window_is_resent_and_the_file_arrives_whole() {
    let t = start().await;
    let c = RawClient::new(t.port).await;
    c.rrq(&[("blksize", "1024"), ("windowsize", "8")]).await;
    let wait = std::time::Duration::from_secs(5);
    let (oack, session) = c.recv(wait).await.expect("OACK");
    assert_eq!(&oack[2..], b"blksize\x001024\x00windowsize\x008\x00");
    c.ack(session, 0).await;
    let mut file: Vec<u8> = Vec::new();
    let mut dropped_one = false;
    let mut duplicates_sent = false;
    loop {
        let (p, from) = c.recv(wait).await.expect("DATA");
        assert_eq!((from, &p[..2]), (session, &[0u8, 3][..]));
        let block = u16::from_be_bytes([p[2], p[3]]);
        let expected = (file.len() / 1024 + 1) as u16;
        if block == 3 && !dropped_one {
            // Lose block 3: acknowledge 2 (in-window ACK) once blocks 4..8 have come.
            dropped_one = true;
            for _ in 4..=8 {
                c.recv(wait).await.expect("rest of the window");
            }
            c.ack(session, 2).await;
            if !duplicates_sent {
                // A duplicate ACK must not make the server send the window twice.
                c.ack(session, 2).await;
                duplicates_sent = true;
            }
            continue;
        }
        if block != expected {
            continue; // the rest of a window after our partial ACK
        }
        file.extend_from_slice(&p[4..]);
        let window_end = block % 8 == 0;
        if p.len() < 4 + 1024 {
            c.ack(session, block).await;
            break;
        }
        if window_end {
            c.ack(session, block).await;
        }
    }
    assert!(dropped_one);
    assert!(file == t.payload, "reassembled file differs ({} bytes)", file.len());
    t.cancel.cancel();
}
