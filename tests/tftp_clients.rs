//! ramboot's TFTP service against real clients (tftp-hpa's `tftp`, curl, atftp) and a
//! hand-driven client for what real ones only do by accident (ERROR after tsize, loss).
//! Downloads (default and negotiated block size), not-found, traversal, and the
//! refusal of writes. CI installs both clients (`.ci/run`); elsewhere a missing
//! client skips its part with a message.
//!
//! Last, the real thing: a QEMU VM's iPXE ROM fetches `undionly.kpxe` from the real
//! `ramboot serve` with its own TFTP client and options, and the chained iPXE runs
//! (`ipxe_rom_in_qemu_fetches_undionly_over_tftp_with_its_own_options`).

mod common;

use common::netns::{tftp_reads, ServeInLab};
use ramboot_lab::harness::{
    lab_with_bridge, log_text, logs_context, spawn_pxe_vm, start_chaining_dnsmasq, tail, tool, wait_for,
};
use ramboot_lab::pcap::{capture, percent_decode, read_pcap, wait_capture, Packet};
use ramboot_lab::wire::{parse_tftp, show_options, Dhcp, TftpPacket};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

struct Tftp {
    port: u16,
    dir: tempfile::TempDir,
    payload: Vec<u8>,
    cancel: CancellationToken,
}

/// Both kinds of session: on a thread each (a normal day's few), and as tasks
/// sharing the TFTP runtime (past `threaded_sessions`, in a storm).
const SESSION_KINDS: [usize; 2] = [ramboot::tftp::THREADED_SESSIONS, 0];

async fn start(threaded_sessions: usize) -> Tftp {
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
    let limits = ramboot::tftp::TftpLimits { threaded_sessions, ..Default::default() };
    tokio::spawn(async move { ramboot::tftp::serve_with(&root, socket, limits, None, stop).await.unwrap() });
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
    for threads in SESSION_KINDS {
        let t = start(threads).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_negotiates_blksize_and_tsize() {
    for threads in SESSION_KINDS {
        let t = start(threads).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_negotiates_windowsize() {
    for threads in SESSION_KINDS {
        let t = start(threads).await;
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
    for threads in SESSION_KINDS {
        let t = start(threads).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_block_in_a_window_is_resent_and_the_file_arrives_whole() {
    for threads in SESSION_KINDS {
        let t = start(threads).await;
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
}

// ---------------------------------------------------------------------------------
// Bounds against floods

/// Download `undionly.kpxe` from `port` with the core's client, from a socket bound
/// to `local`; the file's bytes, or the error (a refusal is `Server { .. }`).
async fn download_from(local: Ipv4Addr, port: u16) -> Result<Vec<u8>, String> {
    use ramboot_core::tftp::client::{Download, ReadRequest, Step};
    let socket = tokio::net::UdpSocket::bind((local, 0)).await.unwrap();
    let server = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let request =
        ReadRequest { filename: "undionly.kpxe".into(), blksize: Some(1468), windowsize: Some(8), tsize: true };
    let (mut download, rrq) = Download::start(request, 5);
    socket.send_to(&rrq, server).await.unwrap();
    let (mut file, mut peer, mut buf) = (Vec::new(), None, vec![0u8; 70_000]);
    // Bounded: every packet or timeout moves the state machine, which gives up
    // after its tries; the loop's own cap is a backstop.
    for _ in 0..100_000 {
        let step = match tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf)).await {
            Err(_) => download.on_timeout(),
            Ok(r) => {
                let (n, from) = r.unwrap();
                peer.get_or_insert(from);
                download.on_packet(&buf[..n])
            }
        };
        let to = peer.unwrap_or(server);
        match step {
            Step::Data { keep, reply } => {
                file.extend_from_slice(keep);
                if let Some(p) = reply {
                    socket.send_to(&p, to).await.unwrap();
                }
                if download.is_complete() {
                    return Ok(file);
                }
            }
            Step::Send(p) => {
                socket.send_to(&p, to).await.unwrap();
            }
            Step::Wait => {}
            Step::Failed { error, .. } => return Err(error.to_string()),
        }
    }
    Err("no end".into())
}

/// The counter `ramboot_tftp_sessions_total{outcome}` as the metrics endpoint renders it.
fn sessions_counter(outcome: &str) -> f64 {
    let text = ramboot::http::metrics::handle().render();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == "ramboot_tftp_sessions_total" && s.labels.get("outcome") == Some(outcome))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// A flood of read requests from one address: beyond its cap each is answered with
/// an ERROR and counted, another address is still served meanwhile, the flood's
/// sessions (which never ACK) end at the session lifetime, and afterwards the
/// flooding address is served again: nothing is held for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_flood_from_one_address_is_refused_recorded_and_leaks_nothing() {
    const FLOOD: usize = 24;
    const PER_SOURCE: usize = 4;
    ramboot::http::metrics::handle();
    let t = {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ipxe");
        std::fs::create_dir_all(&root).unwrap();
        let payload = common::pattern(100 * 1024 + 7);
        std::fs::write(root.join("undionly.kpxe"), &payload).unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let cancel = CancellationToken::new();
        let limits = ramboot::tftp::TftpLimits {
            max_sessions_per_source: PER_SOURCE,
            // Long enough that the flood's sessions outlive the flood on a busy
            // machine; short enough to wait for.
            max_session: Duration::from_secs(6),
            ..Default::default()
        };
        let stop = cancel.clone();
        tokio::spawn(async move { ramboot::tftp::serve_with(&root, socket, limits, None, stop).await.unwrap() });
        Tftp { port, dir, payload, cancel }
    };
    let (busy_before, expired_before) = (sessions_counter("source_busy"), sessions_counter("expired"));

    // The flood: each request from its own port of 127.0.0.1, none ever ACKs.
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        let c = RawClient::new(t.port).await;
        c.rrq(&[("blksize", "1468"), ("tsize", "0")]).await;
        flood.push(c);
    }
    let (mut sessions, mut refused) = (0, 0);
    for c in &flood {
        let (packet, from) = c.recv(Duration::from_secs(5)).await.expect("an answer to every request");
        match &packet[..2] {
            [0, 6] => sessions += 1,
            [0, 5] => {
                assert_eq!(from.port(), t.port, "refusals come from the server port");
                assert_eq!(&packet[2..4], &[0, 0], "ERROR 0");
                let text = String::from_utf8_lossy(&packet[4..]);
                assert!(text.contains("too many sessions from your address"), "{text}");
                refused += 1;
            }
            other => panic!("unexpected opcode {other:?}"),
        }
    }
    assert_eq!((sessions, refused), (PER_SOURCE, FLOOD - PER_SOURCE));
    assert!(sessions_counter("source_busy") - busy_before >= refused as f64, "refusals counted");

    // Meanwhile another address is served in full.
    let got = download_from(Ipv4Addr::new(127, 0, 0, 2), t.port).await.expect("another address is served");
    assert!(got == t.payload, "downloaded bytes differ");

    // The flood's sessions end at their lifetime (each tells its client why); then
    // the flooding address gets sessions again.
    for c in flood.iter().take(PER_SOURCE) {
        let mut ended = false;
        for _ in 0..20 {
            match c.recv(Duration::from_secs(2)).await {
                Some((p, _)) if p.starts_with(&[0, 5]) => {
                    assert!(String::from_utf8_lossy(&p[4..]).contains("time limit"));
                    ended = true;
                    break;
                }
                // OACK resends while the session waits for ACK 0.
                Some(_) => continue,
                None => continue,
            }
        }
        assert!(ended, "a flood session never ended");
    }
    assert!(sessions_counter("expired") - expired_before >= PER_SOURCE as f64, "expiries counted");
    let mut served = None;
    for _ in 0..10 {
        match download_from(Ipv4Addr::LOCALHOST, t.port).await {
            Ok(bytes) => {
                served = Some(bytes);
                break;
            }
            // The last expiry and this request may cross; a refusal is answered at once.
            Err(e) => {
                eprintln!("flooding address refused again: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    assert!(served.is_some_and(|b| b == t.payload), "the flooding address is served once its sessions ended");
    t.cancel.cancel();
}

// ---------------------------------------------------------------------------------
// A real iPXE ROM in QEMU fetches undionly.kpxe with its own TFTP client
//
// dnsmasq is the site's DHCP server and points next-server at ramboot, which serves
// only TFTP and HTTP here (its DHCP is moved to ports no client uses). The VM's e1000
// ROM is already iPXE; it is told to load `undionly.kpxe` over TFTP, as a plain PXE
// ROM would be, so ramboot's TFTP server meets iPXE's own client and options.
//
// The chained undionly.kpxe then asks DHCP again. It cannot be told apart from the
// ROM on the wire: both are the same Debian iPXE build (1.0.0+git-20190125), and their
// requests are byte for byte the same (user class "iPXE", option 60, option 175 with
// its bus id and feature list) but for the xid and the BOOTP broadcast flag, which
// dnsmasq cannot match. So the test stands in for the distinguisher: once ramboot has
// logged the complete transfer, it tags the VM's MAC `chained` in dnsmasq's
// `--dhcp-hostsdir` (re-read by inotify), and the chained iPXE gets ramboot's script
// URL. Should that tag come too late, the chained iPXE loads undionly.kpxe once more
// and its successor gets the URL: the assertions hold either way.

const UNDIONLY: &[&str] = &["/usr/lib/ipxe/undionly.kpxe"];

const RAMBOOT_IP: Ipv4Addr = Ipv4Addr::new(10, 74, 0, 1);
const SITE_DHCP_IP: Ipv4Addr = Ipv4Addr::new(10, 74, 0, 2);
const VM_MAC: &str = "52:54:00:74:74:01";
/// ramboot's largest block (`ramboot_core::tftp::session::Limits::default().max_blksize`).
const MAX_BLKSIZE: u64 = 1468;

#[test]
fn ipxe_rom_in_qemu_fetches_undionly_over_tftp_with_its_own_options() {
    const TEST: &str = "ipxe_rom_in_qemu_fetches_undionly_over_tftp_with_its_own_options";
    // ramboot's address first (the primary one), then the site DHCP server's.
    let addresses = [format!("{RAMBOOT_IP}/24"), format!("{SITE_DHCP_IP}/24")];
    let more = [("undionly.kpxe (ipxe)", UNDIONLY)];
    let Some((mut lab, ns, bridge, tap)) = lab_with_bridge(TEST, &more, 't', &addresses) else { return };
    let started = Instant::now();

    // Every UDP packet (DHCP, TFTP) and the HTTP fetch on the bridge, each in the file
    // as soon as it is seen (`<interface>.pcap`: the name AppArmor's tcpdump profile
    // lets it write).
    let (tcpdump, pcap) = capture(&mut lab, &ns, &bridge, "udp or tcp port 8080");

    // ramboot's TFTP root (`paths.ipxe`) holds Debian's undionly.kpxe.
    let undionly = std::fs::read(tool(UNDIONLY)).unwrap();
    std::fs::create_dir_all(lab.path("ipxe")).unwrap();
    std::fs::write(lab.path("ipxe/undionly.kpxe"), &undionly).unwrap();
    // TFTP and HTTP on the bridge; DHCP (which cannot be switched off) in proxy mode on
    // ports no client sends to; router advertisements so iPXE does not wait for IPv6.
    let config = format!(
        "interface: {bridge}\nserver_address: {RAMBOOT_IP}\nipv6_ra: true\nhttp: {{listen: \"{RAMBOOT_IP}:8080\"}}\n\
         tftp: {{listen: \"{RAMBOOT_IP}:69\"}}\ndhcp:\n  mode: proxy\n  port: 1067\n  proxy_port: 14011\n"
    );
    // tower_http at debug logs each request's URI.
    let ramboot = lab.start_ramboot(&ns, &config, "info,tower_http=debug");
    let ramboot_log = ramboot.log.clone();

    // dnsmasq: DHCP only, next-server = ramboot. Untagged clients get undionly.kpxe
    // over TFTP; `chained` ones (see above) get ramboot's script URL.
    let script_url = format!("http://{RAMBOOT_IP}:8080/boot.ipxe?mac=${{net0/mac}}");
    let range = (Ipv4Addr::new(10, 74, 0, 50), Ipv4Addr::new(10, 74, 0, 90));
    let dnsmasq = start_chaining_dnsmasq(&mut lab, &ns, &bridge, SITE_DHCP_IP, range, (RAMBOOT_IP, &script_url));
    let dnsmasq_log = lab.path("dnsmasq.log");

    // QEMU: SeaBIOS + the e1000 iPXE ROM, booting from the network, console to a file.
    let console = lab.path("console.log");
    let qemu_log = lab.path("qemu.log");
    let vm_started = Instant::now();
    let qemu = spawn_pxe_vm(&mut lab, &ns, &tap, VM_MAC, &console, &qemu_log);
    let logs = [("console", &console), ("qemu", &qemu_log), ("dnsmasq", &dnsmasq_log), ("ramboot", &ramboot_log)];
    let context = || logs_context(25, &logs);

    // 1. The ROM's transfer, complete: ramboot logs it on the last block's ACK.
    ramboot.wait_tftp_read(&mut lab, qemu, "undionly.kpxe", Duration::from_secs(45), context);
    let transferred_at = vm_started.elapsed();
    // The chained iPXE is next: from now on, this MAC is `chained` for dnsmasq.
    dnsmasq.mark_chained(VM_MAC);

    // 2. The chained iPXE's script fetch (the handler's span names the MAC).
    ramboot.wait_script_served(&mut lab, qemu, VM_MAC, Duration::from_secs(45), context);
    let script_at = vm_started.elapsed();
    // ... and ramboot's answer, on the console. Its DHCP listens where no client
    // sends here, so the VM is no node of its: the script request is refused (only
    // DHCP creates nodes; a token goes only to an address DHCP bound to the MAC).
    let chained_got_answer = || {
        let text = log_text(&console);
        let chained = text.find("using undionly on")?;
        text[chained..].contains("Operation not permitted").then_some(())
    };
    wait_for(Duration::from_secs(15), "the chained iPXE to be answered", chained_got_answer, context);
    lab.stop(qemu, Duration::from_secs(3));
    lab.stop(dnsmasq.idx, Duration::from_secs(5));
    let log = lab.stop_ramboot(&ramboot);
    let got_get = |packets: &[Packet]| packets.iter().any(|p| p.proto == 6 && p.payload.starts_with(b"GET /boot.ipxe"));
    wait_capture(&pcap, Duration::from_secs(5), got_get);
    lab.stop(tcpdump, Duration::from_secs(5));

    // 3. The wire: the first RRQ is the ROM's (undionly.kpxe does not exist before it).
    let packets = read_pcap(&pcap);
    let rrqs: Vec<(usize, &Packet, TftpPacket)> = packets
        .iter()
        .enumerate()
        .filter(|(_, p)| p.proto == 17 && p.dst == RAMBOOT_IP && p.dport == 69)
        .filter_map(|(i, p)| parse_tftp(&p.payload).map(|t| (i, p, t)))
        .collect();
    let Some((rrq_at, rrq_packet, TftpPacket::Rrq { file, mode, options: asked })) = rrqs.first().cloned() else {
        panic!("no RRQ to {RAMBOOT_IP}:69 on the bridge: {rrqs:?}\n{}", context())
    };
    let (vm_ip, client_port) = (rrq_packet.src, rrq_packet.sport);
    assert_eq!((file.as_str(), mode.as_str()), ("undionly.kpxe", "octet"), "the ROM's RRQ");
    // iPXE asks for its block size and the transfer size (RFC 2348, RFC 2349).
    let asked_map: BTreeMap<&str, &str> = asked.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let asked_blksize: u64 = asked_map
        .get("blksize")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the ROM's RRQ asked no blksize: {}", show_options(&asked)));
    assert_eq!(asked_map.get("tsize"), Some(&"0"), "the ROM's RRQ asked no tsize 0: {}", show_options(&asked));

    // The session: everything between the client's port and ramboot's transfer ID.
    let session: Vec<(bool, TftpPacket, u16)> = packets[rrq_at + 1..]
        .iter()
        .filter(|p| p.proto == 17)
        .filter_map(|p| {
            let from_server = p.src == RAMBOOT_IP && p.dst == vm_ip && p.dport == client_port;
            let from_client = p.src == vm_ip && p.sport == client_port && p.dst == RAMBOOT_IP && p.dport != 69;
            let server_port = if from_server { p.sport } else { p.dport };
            (from_server || from_client).then(|| parse_tftp(&p.payload).map(|t| (from_server, t, server_port)))?
        })
        .collect();
    let describe = || {
        session
            .iter()
            .map(|(s, t, port)| match t {
                TftpPacket::Data { block, data } => format!("{} {port} DATA {block} ({} bytes)", s, data.len()),
                other => format!("{} {port} {other:?}", s),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let Some((_, TftpPacket::Oack { options: granted }, tid)) = session.first().cloned() else {
        panic!("the server's first answer to the ROM is not an OACK:\n{}", describe())
    };
    assert_ne!(tid, 69, "the transfer runs from its own port (TID)");
    assert!(session.iter().all(|(_, _, port)| *port == tid), "one transfer ID for the session:\n{}", describe());
    // Granted: the block size asked for (up to ramboot's limit), the real file size,
    // and nothing iPXE did not ask for.
    let blksize = asked_blksize.min(MAX_BLKSIZE);
    let expected = vec![("blksize".to_string(), blksize.to_string()), ("tsize".into(), undionly.len().to_string())];
    assert_eq!(granted, expected, "ramboot's OACK to the ROM's RRQ ({})", show_options(&asked));
    let errors: Vec<&TftpPacket> =
        session.iter().map(|(_, t, _)| t).filter(|t| matches!(t, TftpPacket::Error { .. })).collect();
    assert!(errors.is_empty(), "ERROR packets in the ROM's transfer: {errors:?}");
    // The ROM acknowledged the OACK (block 0), then every block; the file arrived whole.
    let acks: Vec<u16> = session
        .iter()
        .filter_map(|(s, t, _)| match t {
            TftpPacket::Ack { block } if !s => Some(*block),
            _ => None,
        })
        .collect();
    assert_eq!(acks.first(), Some(&0), "the ROM's first ACK is for the OACK:\n{}", describe());
    let mut blocks: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
    for (_, t, _) in session.iter().filter(|(s, _, _)| *s) {
        if let TftpPacket::Data { block, data } = t {
            let first = blocks.entry(*block).or_insert_with(|| data.clone());
            assert_eq!(first, data, "block {block} resent with other bytes");
        }
    }
    let last = *blocks.keys().last().expect("DATA from ramboot");
    assert_eq!(blocks.keys().copied().collect::<Vec<_>>(), (1..=last).collect::<Vec<_>>(), "blocks 1..={last}");
    for (block, data) in &blocks {
        let full = *block < last;
        assert!(
            if full { data.len() as u64 == blksize } else { (data.len() as u64) < blksize },
            "block {block} of {last} has {} bytes at blksize {blksize}",
            data.len()
        );
    }
    let received: Vec<u8> = blocks.values().flatten().copied().collect();
    assert!(received == undionly, "the blocks on the wire ({} bytes) are not undionly.kpxe", received.len());
    assert_eq!(acks.last(), Some(&last), "the ROM acknowledged the last block:\n{}", describe());
    let unacked: Vec<u16> = (0..=last).filter(|b| !acks.contains(b)).collect();
    assert!(unacked.is_empty(), "blocks the ROM never acknowledged: {unacked:?}\n{}", describe());
    let resent_blocks =
        session.iter().filter(|(s, t, _)| *s && matches!(t, TftpPacket::Data { .. })).count() - blocks.len();

    // ramboot's log: the same transfer, by the ROM's address and port, all of it.
    let read_line = format!("tftp{{client={vm_ip}:{client_port} file=undionly.kpxe}}");
    let logged = log
        .lines()
        .find(|l| l.contains(&read_line) && l.contains("TFTP read"))
        .unwrap_or_else(|| panic!("no TFTP read logged for {read_line}:\n{}", tail(&log, 30)));
    assert!(
        logged.contains(&format!("bytes={} blksize={blksize} windowsize=1", undionly.len())),
        "ramboot's log of the ROM's transfer: {logged}"
    );
    assert!(
        logged.contains(&format!("asked=\"{}\"", show_options(&asked))),
        "ramboot logs the options the ROM asked for: {logged}"
    );
    assert!(!log.contains(" ERROR "), "ramboot logged errors:\n{log}");
    assert!(!log.contains("TFTP transfer aborted"), "a TFTP transfer was aborted:\n{log}");
    assert!(
        log.contains(&format!("no node has MAC {VM_MAC}: nodes are created only by DHCP")),
        "ramboot refused the script because its DHCP never saw the VM:\n{log}"
    );
    let transfers = tftp_reads(&log, "undionly.kpxe").len();

    // 4. Then the chained iPXE ran: the console shows the ROM's driver, its TFTP fetch,
    // the NBP handing over, and a second iPXE on the ROM's UNDI API that expanded the
    // URL dnsmasq gave it and asked for the script (refused: see above).
    let console_text = log_text(&console);
    let steps = [
        "using 82540em on".to_string(),
        format!("tftp://{RAMBOOT_IP}/undionly.kpxe... ok"),
        format!("undionly.kpxe : {} bytes [PXE-NBP]", undionly.len()),
        "PXE->EB: !PXE".to_string(),
        "using undionly on".to_string(),
        format!("Filename: http://{RAMBOOT_IP}:8080/boot.ipxe?mac={VM_MAC}"),
        format!("http://{RAMBOOT_IP}:8080/boot.ipxe... Operation not permitted"),
    ];
    let mut from = 0;
    for step in &steps {
        let at = console_text[from..]
            .find(step.as_str())
            .unwrap_or_else(|| panic!("the console lacks {step:?} (after offset {from}):\n{console_text}"));
        from += at + step.len();
    }
    // dnsmasq told the ROM to load undionly.kpxe from ramboot, and the chained iPXE to
    // run the script; the script GET came from the address dnsmasq leased.
    let dhcp: Vec<(usize, Dhcp)> = packets
        .iter()
        .enumerate()
        .filter(|(_, p)| p.proto == 17 && [67, 68].contains(&p.dport))
        .filter_map(|(i, p)| Dhcp::parse(&p.payload).map(|d| (i, d)))
        .filter(|(_, d)| d.chaddr == VM_MAC)
        .collect();
    let acks_to_vm: Vec<&(usize, Dhcp)> = dhcp.iter().filter(|(_, d)| d.op == 2 && d.kind() == "ACK").collect();
    let rom_ack = acks_to_vm.iter().rfind(|(i, _)| *i < rrq_at).expect("a DHCPACK before the ROM's RRQ");
    assert_eq!((rom_ack.1.boot_file().as_str(), rom_ack.1.siaddr), ("undionly.kpxe", RAMBOOT_IP), "{rom_ack:?}");
    let chained_ack = acks_to_vm.last().expect("DHCPACKs");
    assert_eq!(chained_ack.1.boot_file(), script_url, "the last DHCPACK, the chained iPXE's: {chained_ack:?}");
    let get = packets
        .iter()
        .filter(|p| p.proto == 6 && p.dport == 8080 && p.payload.starts_with(b"GET /boot.ipxe"))
        .map(|p| (p.src, percent_decode(String::from_utf8_lossy(&p.payload).split_whitespace().nth(1).unwrap_or(""))))
        .next()
        .unwrap_or_else(|| panic!("no GET /boot.ipxe on the wire"));
    assert_eq!(get, (vm_ip, format!("/boot.ipxe?mac={VM_MAC}")), "the chained iPXE's script request");
    // The two iPXEs' DHCP requests, for the record: transactions and BOOTP flags.
    let requests = |before: bool| {
        let mut seen: Vec<String> = dhcp
            .iter()
            .filter(|(i, d)| d.op == 1 && (*i < rrq_at) == before)
            .map(|(_, d)| format!("{:08x}/flags={:04x}", d.xid, d.flags))
            .collect();
        seen.dedup();
        seen.join(",")
    };

    eprintln!(
        "{TEST}: the ROM asked RRQ {file} {mode} {} from {vm_ip}:{client_port}; ramboot's OACK from port {tid} \
         granted {}; {} blocks of {blksize} ({} resent), {} bytes, all ACKed; transfer complete {transferred_at:.1?} \
         after QEMU started (ramboot: {}), chained iPXE fetched the script {script_at:.1?} after; \
         {transfers} undionly.kpxe transfer(s) logged; DHCP requests before the RRQ [{}], after [{}]; \
         test took {:.1?}",
        show_options(&asked),
        show_options(&granted),
        blocks.len(),
        resent_blocks,
        received.len(),
        logged.split("ramboot::tftp: ").nth(1).unwrap_or(logged),
        requests(true),
        requests(false),
        started.elapsed()
    );
}
