//! DHCP and TFTP messages as a capture shows them, for tests that assert on the wire
//! bytes (see [`crate::pcap`] for the capture): every DHCP option instance in order
//! (a doubled option stays visible), the raw `file` field (to see its NUL), and TFTP
//! packets (RFC 1350, OACK of RFC 2347). Readers of captures, not codecs: a
//! malformed message is `None`, never a panic.

use crate::pcap::Packet;
use std::net::Ipv4Addr;

// ---------------------------------------------------------------------------------
// DHCP

/// A DHCP message as it was on the wire: header fields and every option instance in
/// order (duplicates kept, so a doubled option is visible).
#[derive(Debug, Clone)]
pub struct Dhcp {
    pub op: u8,
    pub hops: u8,
    pub xid: u32,
    /// The BOOTP flags (0x8000: broadcast).
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: String,
    /// `file` up to its first NUL.
    pub file: String,
    /// The whole 128-byte `file` field.
    pub file_field: Vec<u8>,
    pub options: Vec<(u8, Vec<u8>)>,
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_str(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

impl Dhcp {
    pub fn parse(b: &[u8]) -> Option<Dhcp> {
        if b.len() < 240 || b[236..240] != [99, 130, 83, 99] {
            return None;
        }
        let addr = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
        let file_field = &b[108..236];
        let file_end = file_field.iter().position(|&c| c == 0).unwrap_or(file_field.len());
        let mut options = vec![];
        let mut rest = &b[240..];
        while let Some((&code, tail)) = rest.split_first() {
            match code {
                0 => rest = tail,
                255 => break,
                _ => {
                    let (&len, tail) = tail.split_first()?;
                    let value = tail.get(..usize::from(len))?;
                    options.push((code, value.to_vec()));
                    rest = &tail[usize::from(len)..];
                }
            }
        }
        Some(Dhcp {
            op: b[0],
            hops: b[3],
            xid: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            flags: u16::from_be_bytes([b[10], b[11]]),
            ciaddr: addr(12),
            yiaddr: addr(16),
            siaddr: addr(20),
            giaddr: addr(24),
            chaddr: mac_str(&b[28..34]),
            file: String::from_utf8_lossy(&file_field[..file_end]).into_owned(),
            file_field: file_field.to_vec(),
            options,
        })
    }

    pub fn all(&self, code: u8) -> Vec<&[u8]> {
        self.options.iter().filter(|(c, _)| *c == code).map(|(_, v)| v.as_slice()).collect()
    }

    pub fn opt(&self, code: u8) -> Option<&[u8]> {
        self.all(code).first().copied()
    }

    pub fn opt_addr(&self, code: u8) -> Option<Ipv4Addr> {
        self.opt(code).filter(|v| v.len() >= 4).map(|v| Ipv4Addr::new(v[0], v[1], v[2], v[3]))
    }

    pub fn opt_str(&self, code: u8) -> Option<String> {
        self.opt(code).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The boot file a client reads: option 67 up to a NUL if sent, else `file`.
    pub fn boot_file(&self) -> String {
        match self.opt(67) {
            Some(v) => String::from_utf8_lossy(v.split(|&c| c == 0).next().unwrap_or_default()).into_owned(),
            None => self.file.clone(),
        }
    }

    /// The user classes of option 77 (RFC 3004 length-prefixed, or one bare string
    /// as iPXE and EDK2 send it).
    pub fn user_class(&self) -> Option<String> {
        self.opt_str(77)
    }

    /// Option 53's name.
    pub fn kind(&self) -> &'static str {
        match self.opt(53).and_then(|v| v.first()) {
            Some(1) => "DISCOVER",
            Some(2) => "OFFER",
            Some(3) => "REQUEST",
            Some(4) => "DECLINE",
            Some(5) => "ACK",
            Some(6) => "NAK",
            Some(7) => "RELEASE",
            Some(8) => "INFORM",
            Some(_) => "other",
            None => "BOOTP",
        }
    }
}

/// The DHCP messages of a capture (to or from ports 67, 68 and 4011), with their
/// packets.
pub fn dhcp_of(packets: &[Packet]) -> Vec<(Packet, Dhcp)> {
    packets
        .iter()
        .filter(|p| p.proto == 17 && [67, 68, 4011].iter().any(|port| [p.sport, p.dport].contains(port)))
        .filter_map(|p| Dhcp::parse(&p.payload).map(|d| (p.clone(), d)))
        .collect()
}

/// One line: addresses, kind, header fields and every option in hex.
pub fn describe(p: &Packet, d: &Dhcp) -> String {
    let opts: Vec<String> = d.options.iter().map(|(c, v)| format!("{c}={}", hex::encode(v))).collect();
    format!(
        "{}:{} > {}:{} {} ({} bytes) xid={:08x} hops={} ciaddr={} yiaddr={} siaddr={} giaddr={} chaddr={} file={:?} \
         opts[{}]",
        p.src,
        p.sport,
        p.dst,
        p.dport,
        d.kind(),
        p.payload.len(),
        d.xid,
        d.hops,
        d.ciaddr,
        d.yiaddr,
        d.siaddr,
        d.giaddr,
        d.chaddr,
        d.file,
        opts.join(" ")
    )
}

pub fn describe_all(msgs: &[(Packet, Dhcp)]) -> String {
    msgs.iter().map(|(p, d)| describe(p, d)).collect::<Vec<_>>().join("\n")
}

// ---------------------------------------------------------------------------------
// HTTP

/// The HTTP requests to `port` a capture saw start: (client address, method and
/// target with `%xx` decoded), e.g. `GET /boot.ipxe?mac=52:54:00:00:00:01`.
pub fn http_requests(packets: &[Packet], port: u16) -> Vec<(Ipv4Addr, String)> {
    let methods: [&[u8]; 3] = [b"GET ", b"HEAD ", b"POST "];
    packets
        .iter()
        .filter(|p| p.proto == 6 && p.dport == port && methods.iter().any(|m| p.payload.starts_with(m)))
        .map(|p| {
            let text = String::from_utf8_lossy(&p.payload);
            let mut words = text.split_whitespace();
            let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
            (p.src, format!("{method} {}", crate::pcap::percent_decode(target)))
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// TFTP

/// A TFTP packet (RFC 1350, OACK of RFC 2347).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TftpPacket {
    Rrq { file: String, mode: String, options: Vec<(String, String)> },
    Data { block: u16, data: Vec<u8> },
    Ack { block: u16 },
    Error { code: u16, message: String },
    Oack { options: Vec<(String, String)> },
}

impl TftpPacket {
    /// The value of option `name` (case-insensitive, RFC 2347) of an RRQ or OACK.
    pub fn option(&self, name: &str) -> Option<&str> {
        let (TftpPacket::Rrq { options, .. } | TftpPacket::Oack { options }) = self else { return None };
        options.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// NUL-terminated strings.
fn tftp_strings(b: &[u8]) -> Vec<String> {
    let mut fields: Vec<String> = b.split(|&c| c == 0).map(|f| String::from_utf8_lossy(f).into_owned()).collect();
    if b.last() == Some(&0) {
        fields.pop();
    }
    fields
}

/// Name/value pairs of option fields.
fn tftp_pairs(fields: &[String]) -> Vec<(String, String)> {
    fields.chunks(2).map(|p| (p[0].clone(), p.get(1).cloned().unwrap_or_default())).collect()
}

pub fn parse_tftp(b: &[u8]) -> Option<TftpPacket> {
    let (op, rest) = (u16::from_be_bytes([*b.first()?, *b.get(1)?]), &b[2..]);
    let number = || rest.get(..2).map(|n| u16::from_be_bytes([n[0], n[1]]));
    Some(match op {
        1 => {
            let fields = tftp_strings(rest);
            let (file, mode) = (fields.first()?.clone(), fields.get(1)?.clone());
            TftpPacket::Rrq { file, mode, options: tftp_pairs(&fields[2..]) }
        }
        3 => TftpPacket::Data { block: number()?, data: rest.get(2..)?.to_vec() },
        4 => TftpPacket::Ack { block: number()? },
        5 => TftpPacket::Error {
            code: number()?,
            message: tftp_strings(rest.get(2..)?).first().cloned().unwrap_or_default(),
        },
        6 => TftpPacket::Oack { options: tftp_pairs(&tftp_strings(rest)) },
        _ => return None,
    })
}

/// The TFTP packets of a capture (UDP, DHCP's ports left out), with their packets.
pub fn tftp_of(packets: &[Packet]) -> Vec<(Packet, TftpPacket)> {
    packets
        .iter()
        .filter(|p| p.proto == 17 && ![67, 68, 4011].iter().any(|port| [p.sport, p.dport].contains(port)))
        .filter_map(|p| parse_tftp(&p.payload).map(|t| (p.clone(), t)))
        .collect()
}

/// `name=value name=value`.
pub fn show_options(options: &[(String, String)]) -> String {
    options.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tftp_packets_read_back_and_short_ones_are_none() {
        let rrq = parse_tftp(b"\0\x01undionly.kpxe\0octet\0blksize\x001432\0tsize\x000\0").unwrap();
        assert_eq!(rrq.option("BLKSIZE"), Some("1432"));
        assert_eq!(parse_tftp(b"\0\x03\0\x07abc"), Some(TftpPacket::Data { block: 7, data: b"abc".to_vec() }));
        for short in [&b""[..], b"\0", b"\0\x03\0", b"\0\x05\0", b"\0\x01name"] {
            assert_eq!(parse_tftp(short), None, "{short:?}");
        }
    }

    #[test]
    fn a_dhcp_message_keeps_its_file_field_and_every_option() {
        let mut b = vec![0u8; 240];
        b[0] = 2;
        b[108..113].copy_from_slice(b"a.efi");
        b[236..240].copy_from_slice(&[99, 130, 83, 99]);
        b.extend_from_slice(&[53, 1, 2, 67, 6, b'a', b'.', b'e', b'f', b'i', 0, 60, 1, b'x', 60, 1, b'y', 255]);
        let d = Dhcp::parse(&b).unwrap();
        assert_eq!((d.kind(), d.file.as_str(), d.boot_file().as_str()), ("OFFER", "a.efi", "a.efi"));
        assert_eq!(d.file_field.len(), 128);
        assert_eq!(d.all(60), vec![b"x".as_slice(), b"y"]);
        assert!(Dhcp::parse(&b[..239]).is_none());
    }
}
