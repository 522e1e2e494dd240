//! Packet captures for tests that check what went over the wire: `tcpdump` in a
//! namespace, and a tiny pcap reader (IPv4 over Ethernet or Linux cooked capture,
//! UDP and TCP payloads). Part of the test harness: it panics on a file that is not
//! a capture.

use crate::harness::{tool, Lab};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const TCPDUMP: &[&str] = &["/usr/bin/tcpdump", "/usr/sbin/tcpdump"];

/// An IPv4 UDP or TCP packet of a capture.
#[derive(Debug, Clone)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// 6 = TCP, 17 = UDP.
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
}

/// `tcpdump` on `interface` in `ns` into `<name>.pcap` (the name AppArmor's tcpdump
/// profile lets it write); returns (index, capture path). Immediate mode and
/// packet-buffered output: each packet is in the file as soon as it is seen (the
/// default ring buffer hands packets over in blocks, and loses the last ones when
/// tcpdump is stopped).
pub fn capture(lab: &mut Lab, ns: &str, interface: &str, filter: &str) -> (usize, PathBuf) {
    let pcap = lab.path(&format!("{interface}.pcap"));
    let log = lab.path(&format!("tcpdump-{interface}.log"));
    let mut program: Vec<String> =
        // -B: a 16 MiB kernel buffer (default 2 MiB), so that a capture on a busy
        // machine (tcpdump not scheduled for a while) loses no packet a test counts.
        [tool(TCPDUMP).as_str(), "-i", interface, "--immediate-mode", "-B", "16384", "-U", "-n", "-Z", "root", "-w"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    program.push(pcap.display().to_string());
    program.extend(filter.split_whitespace().map(String::from));
    let idx = lab.start_until("tcpdump", ns, &program, &log, &["listening on"], Duration::from_secs(15));
    (idx, pcap)
}

/// Wait (up to `timeout`) until the capture so far satisfies `done`; whether it did.
pub fn wait_capture(pcap: &Path, timeout: Duration, done: impl Fn(&[Packet]) -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done(&read_pcap(pcap)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The IPv4 UDP/TCP packets of a pcap file, in capture order; a record cut short
/// (the writer still running) ends the list.
pub fn read_pcap(path: &Path) -> Vec<Packet> {
    let data = std::fs::read(path).unwrap_or_default();
    if data.len() < 24 {
        return vec![];
    }
    let little = match data[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("{} is not a pcap file", path.display()),
    };
    let u32_at = |at: usize| {
        let a = [data[at], data[at + 1], data[at + 2], data[at + 3]];
        if little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let linktype = u32_at(20);
    let mut packets = vec![];
    let mut at = 24;
    while at + 16 <= data.len() {
        let incl = u32_at(at + 8) as usize;
        let Some(frame) = data.get(at + 16..at + 16 + incl) else { break };
        at += 16 + incl;
        let ipv4 = match linktype {
            // Ethernet, with at most one VLAN tag.
            1 if frame.len() >= 14 => {
                let (mut ethertype, mut off) = (u16::from_be_bytes([frame[12], frame[13]]), 14);
                if ethertype == 0x8100 && frame.len() >= 18 {
                    ethertype = u16::from_be_bytes([frame[16], frame[17]]);
                    off = 18;
                }
                (ethertype == 0x0800).then(|| &frame[off..])
            }
            // Linux cooked capture (`-i any`).
            113 if frame.len() >= 16 => (u16::from_be_bytes([frame[14], frame[15]]) == 0x0800).then(|| &frame[16..]),
            _ => None,
        };
        if let Some(p) = ipv4.and_then(parse_ipv4) {
            packets.push(p);
        }
    }
    packets
}

fn parse_ipv4(b: &[u8]) -> Option<Packet> {
    if b.len() < 20 || b[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(b[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([b[2], b[3]])).min(b.len());
    let proto = b[9];
    let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
    let dst = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
    let l4 = b.get(ihl..total)?;
    if l4.len() < 8 {
        return None;
    }
    let (sport, dport) = (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]]));
    let payload = match proto {
        17 => {
            let len = usize::from(u16::from_be_bytes([l4[4], l4[5]])).clamp(8, l4.len());
            l4[8..len].to_vec()
        }
        6 if l4.len() >= 20 => l4.get(usize::from(l4[12] >> 4) * 4..)?.to_vec(),
        _ => return None,
    };
    Some(Packet { src, dst, proto, sport, dport, payload })
}

/// `%xx` escapes of a URL (as seen in a captured request line) decoded.
pub fn percent_decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&c, after)) = rest.split_first() {
        let hex = after.get(..2).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (c, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                rest = &after[2..];
            }
            _ => {
                out.push(c);
                rest = after;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
