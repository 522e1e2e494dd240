//! TFTP against what real PXE firmware needs of the network (issue 12), with the real
//! `ramboot serve` in a namespace and real clients (tftp-hpa's `tftp`, curl, atftp) in
//! another, joined by a veth pair; tcpdump on the client's end records the wire.
//!
//! - NIC firmware drops DATA that does not come from the address its RRQ went to
//!   (pin/tftp issue 58, danderson/netboot issue 122): ramboot listens on `0.0.0.0`,
//!   the client asks the interface's *secondary* address, and every answer must come
//!   from it.
//! - UNDI ROMs drop IP fragments: the link has MTU 1400 on both ends and the client's
//!   namespace reassembles nothing (`ipfrag_high_thresh` 0), so a block that does
//!   not fit one frame never arrives. A client asking blksize 1468 must be granted
//!   1368 (1400 − 20 IP − 8 UDP − 4 TFTP) and get the whole file.

mod common;

use common::netns::ServeInLab;
use ramboot_lab::harness::{ip_in, log_text, ns_sh, tail, tool, veth, Lab};
use ramboot_lab::pcap::{capture, read_pcap, wait_capture, Packet, TCPDUMP};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

const PRIMARY: Ipv4Addr = Ipv4Addr::new(10, 76, 0, 1);
const SECONDARY: Ipv4Addr = Ipv4Addr::new(10, 76, 0, 9);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 76, 0, 100);
const TFTP_HPA: &[&str] = &["/usr/bin/tftp"];
const CURL: &[&str] = &["/usr/bin/curl"];
const ATFTP: &[&str] = &["/usr/bin/atftp"];

/// A server namespace running `ramboot serve` (TFTP on `0.0.0.0:69`) and a client
/// namespace, joined by a veth pair of `mtu`; the server's end has [`PRIMARY`] and
/// [`SECONDARY`], the client's [`CLIENT`]. tcpdump records UDP on the client's end.
struct Pair {
    lab: Lab,
    client_ns: String,
    ramboot: common::netns::Ramboot,
    tcpdump: usize,
    pcap: std::path::PathBuf,
    payload: Vec<u8>,
}

fn pair(test: &str, tag: char, mtu: u32, server_config: &str) -> Option<Pair> {
    let tools: [(&str, &[&str]); 4] =
        [("tcpdump", TCPDUMP), ("tftp (tftp-hpa)", TFTP_HPA), ("curl", CURL), ("atftp", ATFTP)];
    let mut lab = Lab::for_test(test, &tools)?;
    let pid = std::process::id();
    let (server_ns, client_ns) = (lab.netns(&format!("rb{tag}s{pid}")), lab.netns(&format!("rb{tag}c{pid}")));
    let (server_if, client_if) = (format!("{tag}s{pid}"), format!("{tag}c{pid}"));
    veth((&server_ns, &server_if), (&client_ns, &client_if));
    let mtu = mtu.to_string();
    for (ns, interface, addresses) in
        [(&server_ns, &server_if, vec![PRIMARY, SECONDARY]), (&client_ns, &client_if, vec![CLIENT])]
    {
        for address in addresses {
            ip_in(ns, &["addr", "add", &format!("{address}/24"), "dev", interface]);
        }
        ip_in(ns, &["link", "set", interface, "mtu", &mtu, "up"]);
    }
    // Like an UNDI ROM, the client reassembles no IP fragments: a block that does not
    // fit one frame is lost, every time. (low first: high may not go below it.)
    ns_sh(&client_ns, "sysctl -qw net.ipv4.ipfrag_low_thresh=0 && sysctl -qw net.ipv4.ipfrag_high_thresh=0");
    let (tcpdump, pcap) = capture(&mut lab, &client_ns, &client_if, "udp");

    let payload = common::pattern(300 * 1024 + 5);
    std::fs::create_dir_all(lab.path("ipxe")).unwrap();
    std::fs::write(lab.path("ipxe/undionly.kpxe"), &payload).unwrap();
    // TFTP on every address; DHCP (which cannot be switched off) in proxy mode on
    // ports no client sends to.
    let config = format!(
        "interface: {server_if}\nserver_address: {PRIMARY}\nhttp: {{listen: \"{PRIMARY}:8080\"}}\n\
         tftp:\n  listen: \"0.0.0.0:69\"\n{server_config}dhcp:\n  mode: proxy\n  port: 1067\n  proxy_port: 14011\n"
    );
    let ramboot = lab.start_ramboot(&server_ns, &config, "info");
    Some(Pair { lab, client_ns, ramboot, tcpdump, pcap, payload })
}

impl Pair {
    /// Run `program` in the client namespace (bounded); its exit status and output.
    fn client(&self, name: &str, program: &[String]) -> (std::process::ExitStatus, String) {
        let log = self.lab.path(&format!("{name}.log"));
        let status = self.lab.run(&self.client_ns, program, &log, Duration::from_secs(60));
        (status, log_text(&log))
    }

    /// Stop ramboot (it must exit cleanly) and tcpdump; ramboot's log and the capture.
    fn finish(mut self, done: impl Fn(&[Packet]) -> bool) -> (String, Vec<Packet>, Lab) {
        let log = self.lab.stop_ramboot(&self.ramboot);
        wait_capture(&self.pcap, Duration::from_secs(5), done);
        self.lab.stop(self.tcpdump, Duration::from_secs(5));
        (log, read_pcap(&self.pcap), self.lab)
    }
}

fn args(parts: &[&str], file: &Path) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).map(|s| if s == "{}" { file.display().to_string() } else { s }).collect()
}

/// TFTP packets from the server to the client: (source address, source port, payload).
fn from_server(packets: &[Packet]) -> Vec<(Ipv4Addr, u16, &[u8])> {
    packets.iter().filter(|p| p.proto == 17 && p.dst == CLIENT).map(|p| (p.src, p.sport, &p.payload[..])).collect()
}

/// The value of `option` in an OACK payload (opcode 6, then NUL-separated pairs).
fn oack_option(payload: &[u8], option: &str) -> Option<String> {
    let fields: Vec<String> = payload.get(2..)?.split(|&b| b == 0).map(|f| String::from_utf8_lossy(f).into()).collect();
    fields.chunks(2).find(|p| p[0].eq_ignore_ascii_case(option)).and_then(|p| p.get(1).cloned())
}

#[test]
fn tftp_answers_from_the_secondary_address_the_client_asked() {
    const TEST: &str = "tftp_answers_from_the_secondary_address_the_client_asked";
    let Some(pair) = pair(TEST, 'a', 1500, "") else { return };
    let tftp_file = pair.lab.path("tftp-hpa.kpxe");
    let tftp = args(
        &[&tool(TFTP_HPA), "-m", "binary", &SECONDARY.to_string(), "-c", "get", "undionly.kpxe", "{}"],
        &tftp_file,
    );
    let (status, out) = pair.client("tftp-hpa", &tftp);
    assert!(status.success() && out.trim().is_empty(), "tftp-hpa: {status}: {out}");
    let curl_file = pair.lab.path("curl.kpxe");
    let url = format!("tftp://{SECONDARY}/undionly.kpxe");
    let curl = args(&[&tool(CURL), "-sS", "--max-time", "30", "--tftp-blksize", "1468", "-o", "{}", &url], &curl_file);
    let (status, out) = pair.client("curl", &curl);
    assert!(status.success(), "curl: {status}: {out}");
    let payload = pair.payload.clone();
    // Both transfers' last blocks (short ones) on the wire. tcpdump may miss packets
    // of a fast transfer, so the wait is bounded and the checks below need no count.
    let last_blocks = [payload.len() % 512, payload.len() % 1468].map(|rest| 4 + rest);
    let data_seen = |packets: &[Packet]| {
        let answers = from_server(packets);
        last_blocks.iter().all(|len| answers.iter().any(|(_, _, p)| p.starts_with(&[0, 3]) && p.len() == *len))
    };
    let (log, packets, lab) = pair.finish(data_seen);

    for (client, file) in [("tftp-hpa", &tftp_file), ("curl", &curl_file)] {
        let got = std::fs::read(file).unwrap_or_default();
        assert!(got == payload, "{client}: {} bytes downloaded, not the file's {}", got.len(), payload.len());
    }
    // The wire: every answer (OACK, DATA, and none from anywhere else) came from the
    // address asked, on a transfer port of its own, one per transfer.
    let answers = from_server(&packets);
    let data: Vec<_> = answers.iter().filter(|(_, _, p)| p.starts_with(&[0, 3])).collect();
    let mut ports: Vec<u16> = data.iter().map(|(_, port, _)| *port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 2, "DATA of two transfers captured ({} packets):\n{}", data.len(), tail(&log, 20));
    let strays: Vec<_> = answers.iter().filter(|(src, port, _)| *src != SECONDARY || *port == 69).collect();
    assert!(strays.is_empty(), "answers not from {SECONDARY} on a transfer port: {:?}", &strays[..strays.len().min(5)]);
    assert_eq!(log.matches("TFTP read").count(), 2, "two transfers logged:\n{}", tail(&log, 20));
    assert!(log.contains(&format!("from={SECONDARY}")), "{}", tail(&log, 20));
    drop(lab);
}

#[test]
fn a_1400_mtu_link_that_drops_fragments_still_gets_the_whole_file() {
    const TEST: &str = "a_1400_mtu_link_that_drops_fragments_still_gets_the_whole_file";
    let Some(pair) = pair(TEST, 'm', 1400, "") else { return };
    let curl_file = pair.lab.path("curl.kpxe");
    let url = format!("tftp://{PRIMARY}/undionly.kpxe");
    let curl = args(&[&tool(CURL), "-sS", "--max-time", "30", "--tftp-blksize", "1468", "-o", "{}", &url], &curl_file);
    let (status, out) = pair.client("curl", &curl);
    assert!(status.success(), "curl (the file must arrive without fragments): {status}: {out}");
    let atftp_file = pair.lab.path("atftp.kpxe");
    let atftp = args(
        &[&tool(ATFTP), "--option", "blksize 1468", "--option", "tsize 0", "--verbose", "-g", "-r", "undionly.kpxe"],
        &atftp_file,
    );
    let atftp: Vec<String> =
        atftp.into_iter().chain(["-l".into(), atftp_file.display().to_string(), SECONDARY.to_string()]).collect();
    let (status, out) = pair.client("atftp", &atftp);
    assert!(status.success(), "atftp: {status}: {out}");
    let payload = pair.payload.clone();
    // Both transfers' last (short) blocks; tcpdump may miss some of a fast transfer.
    let last_block = 4 + payload.len() % 1368;
    let data_seen = |packets: &[Packet]| {
        from_server(packets).iter().filter(|(_, _, p)| p.starts_with(&[0, 3]) && p.len() == last_block).count() >= 2
    };
    let (log, packets, lab) = pair.finish(data_seen);

    for (client, file) in [("curl", &curl_file), ("atftp", &atftp_file)] {
        let got = std::fs::read(file).unwrap_or_default();
        assert!(got == payload, "{client}: {} bytes downloaded, not the file's {}", got.len(), payload.len());
    }
    // Both asked 1468 and were granted what fits one 1400-byte frame (the log says so
    // of both, below; the capture, of every OACK it caught).
    let answers = from_server(&packets);
    let granted: Vec<Option<String>> =
        answers.iter().filter(|(_, _, p)| p.starts_with(&[0, 6])).map(|(_, _, p)| oack_option(p, "blksize")).collect();
    assert!(!granted.is_empty() && granted.iter().all(|g| g.as_deref() == Some("1368")), "OACKs: {granted:?}");
    let largest = answers.iter().filter(|(_, _, p)| p.starts_with(&[0, 3])).map(|(_, _, p)| p.len()).max();
    assert_eq!(largest, Some(4 + 1368), "the largest DATA: one full block of 1368");
    let logged: Vec<&str> = log.lines().filter(|l| l.contains("TFTP read")).collect();
    assert_eq!(logged.len(), 2, "{}", tail(&log, 20));
    assert!(logged.iter().all(|l| l.contains("blksize=1368") && l.contains("link_mtu=Some(1400)")), "{logged:?}");
    assert!(!log.contains("TFTP transfer aborted"), "{}", tail(&log, 20));
    drop(lab);
}

/// `tftp.max_blksize` caps the block below a roomier link (pixiecore's 1450 here).
#[test]
fn the_configured_max_blksize_caps_what_a_1500_mtu_link_would_allow() {
    const TEST: &str = "the_configured_max_blksize_caps_what_a_1500_mtu_link_would_allow";
    let Some(pair) = pair(TEST, 'k', 1500, "  max_blksize: 1450\n") else { return };
    let curl_file = pair.lab.path("curl.kpxe");
    let url = format!("tftp://{PRIMARY}/undionly.kpxe");
    let curl = args(&[&tool(CURL), "-sS", "--max-time", "30", "--tftp-blksize", "1468", "-o", "{}", &url], &curl_file);
    let (status, out) = pair.client("curl", &curl);
    assert!(status.success(), "curl: {status}: {out}");
    let payload = pair.payload.clone();
    let seen_oack = |packets: &[Packet]| from_server(packets).iter().any(|(_, _, p)| p.starts_with(&[0, 6]));
    let (log, packets, lab) = pair.finish(seen_oack);
    assert!(std::fs::read(&curl_file).unwrap_or_default() == payload, "curl's download differs");
    let oack = from_server(&packets).into_iter().find(|(_, _, p)| p.starts_with(&[0, 6])).map(|(_, _, p)| p);
    assert_eq!(oack.and_then(|p| oack_option(p, "blksize")).as_deref(), Some("1450"), "{}", tail(&log, 20));
    drop(lab);
}
