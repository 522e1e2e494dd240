//! `ramboot-dhcp-load`: an open-loop DHCPv4 load generator that costs a server's
//! benchmark less CPU per exchange than the server spends answering it.
//!
//! perfdhcp is the reference tool, but on one core it tops out near 12,000 DORA/s
//! (measured: 100 % of its core, about 90 µs per exchange), so on a two-core
//! machine it hides the server's ceiling. This generator does what perfdhcp's
//! `-R`/`-r` mode does (a relay agent offering DISCOVERs at a fixed rate over a
//! range of client MACs, answering each OFFER with a REQUEST) with one thread, one
//! socket, messages patched into templates, replies read without a full decode,
//! and a receive buffer forced large so a burst of ACKs is not lost on its side.
//!
//! The wire format is built and read by the pure functions below (unit-tested
//! against dhcproto); [`run`] is the loop around one socket.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// What to offer, from where, to whom.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadOptions {
    /// The relay address to send from: port 67 is bound on it, and it is giaddr.
    #[arg(long)]
    pub local: Ipv4Addr,
    /// The DHCP server's address (port 67).
    #[arg(long)]
    pub server: Ipv4Addr,
    /// DISCOVERs started per second.
    #[arg(long)]
    pub rate: u32,
    /// How long to offer load, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// How many distinct client MACs to cycle through.
    #[arg(long, default_value_t = 10_000)]
    pub clients: u32,
    /// The MACs' second octet (02:<base>:...), so several generators never share a client.
    #[arg(long, default_value_t = 0xa0)]
    pub mac_base: u8,
    /// After the last DISCOVER, how long to wait for the answers still due, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub exit_wait: f64,
    /// Include every exchange's latency (milliseconds) in the report.
    #[arg(long)]
    pub samples: bool,
    /// Sleep in poll(2) between DISCOVER ticks instead of spinning on the socket.
    /// Spinning (the default, as perfdhcp does) keeps the generator's core awake, so
    /// a server's reply never pays for waking an idle core: on a VM that wake-up (an
    /// IPI) is charged to the server and inflates its CPU per exchange.
    #[arg(long)]
    pub sleep: bool,
}

/// One side of the exchange, as perfdhcp counts it.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ExchangeStats {
    pub sent_packets: u64,
    pub received_packets: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Every latency in milliseconds, with `--samples`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples_ms: Vec<f64>,
}

/// What one run measured.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LoadReport {
    pub target_rate: u32,
    pub seconds: f64,
    pub discover_offer: ExchangeStats,
    pub request_ack: ExchangeStats,
    pub naks: u64,
    /// Replies for no exchange in flight (too late, or a duplicate).
    pub orphans: u64,
    /// Datagrams that were not a DHCP reply this generator can read.
    pub malformed: u64,
    /// Sends the kernel refused (a full send buffer): those exchanges never started.
    pub send_errors: u64,
    /// How far the DISCOVER schedule fell behind at worst: a generator that cannot
    /// keep its rate says so here instead of quietly offering less.
    pub max_lag_ms: f64,
    /// The generator's own CPU time (user + system) and wall time. Spinning, its CPU
    /// is its wall time; `busy_s` is the part spent on loop turns that sent or
    /// received something, the measure of how loaded the generator was.
    pub cpu_s: f64,
    pub wall_s: f64,
    pub busy_s: f64,
    /// Whether the receive buffer could be forced to the size asked for (root only).
    pub receive_buffer_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("binding {0}:67: {1}")]
    Bind(Ipv4Addr, std::io::Error),
    #[error("DHCP load socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("polling the DHCP load socket: {0}")]
    Poll(nix::Error),
    #[error("--rate and --clients must be positive, --seconds and --exit-wait finite and not negative")]
    Options,
}

// ---- the wire (pure)

const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;
/// The options perfdhcp's DISCOVER asks for (subnet mask, broadcast, time offset,
/// router, domain name, DNS, host name), so both generators load a server alike.
const PARAMETER_REQUEST_LIST: [u8; 7] = [1, 28, 2, 3, 15, 6, 12];

/// The client MAC of exchange `seq`.
pub fn client_mac(mac_base: u8, clients: u32, seq: u64) -> [u8; 6] {
    let c = (seq % u64::from(clients.max(1))) as u32;
    let b = c.to_be_bytes();
    [0x02, mac_base, b[0], b[1], b[2], b[3]]
}

/// A relayed DISCOVER, or a REQUEST for `(requested, server_id)`, into `out`.
pub fn encode_request(out: &mut Vec<u8>, xid: u32, mac: [u8; 6], giaddr: Ipv4Addr, take: Option<(Ipv4Addr, Ipv4Addr)>) {
    out.clear();
    out.extend_from_slice(&[1, 1, 6, 1]); // BOOTREQUEST, Ethernet, hlen 6, hops 1 (relayed)
    out.extend_from_slice(&xid.to_be_bytes());
    out.extend_from_slice(&[0; 4]); // secs, flags
    out.extend_from_slice(&[0; 12]); // ciaddr, yiaddr, siaddr
    out.extend_from_slice(&giaddr.octets());
    out.extend_from_slice(&mac);
    out.resize(236, 0); // chaddr padding, sname, file
    out.extend_from_slice(&MAGIC_COOKIE);
    let kind = if take.is_some() { REQUEST } else { DISCOVER };
    out.extend_from_slice(&[53, 1, kind]);
    if let Some((requested, server_id)) = take {
        out.extend_from_slice(&[50, 4]);
        out.extend_from_slice(&requested.octets());
        out.extend_from_slice(&[54, 4]);
        out.extend_from_slice(&server_id.octets());
    }
    out.extend_from_slice(&[55, PARAMETER_REQUEST_LIST.len() as u8]);
    out.extend_from_slice(&PARAMETER_REQUEST_LIST);
    out.push(255);
}

/// The parts of a server reply the generator needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub xid: u32,
    pub kind: u8,
    pub yiaddr: Ipv4Addr,
    pub server_id: Option<Ipv4Addr>,
}

/// Read a BOOTREPLY's xid, yiaddr, message type and server identifier, walking the
/// options without decoding the rest. None for anything else.
pub fn read_reply(bytes: &[u8]) -> Option<Reply> {
    if bytes.len() < 240 || bytes[0] != 2 || bytes[236..240] != MAGIC_COOKIE {
        return None;
    }
    let xid = u32::from_be_bytes(bytes[4..8].try_into().ok()?);
    let yiaddr = Ipv4Addr::new(bytes[16], bytes[17], bytes[18], bytes[19]);
    let (mut kind, mut server_id) = (None, None);
    let mut at = 240;
    while at < bytes.len() {
        match bytes[at] {
            0 => at += 1,
            255 => break,
            code => {
                let len = usize::from(*bytes.get(at + 1)?);
                let value = bytes.get(at + 2..at + 2 + len)?;
                match (code, value) {
                    (53, [k]) => kind = Some(*k),
                    (54, [a, b, c, d]) => server_id = Some(Ipv4Addr::new(*a, *b, *c, *d)),
                    _ => {}
                }
                at += 2 + len;
            }
        }
    }
    Some(Reply { xid, kind: kind?, yiaddr, server_id })
}

// ---- the loop

/// One exchange in flight, in a ring indexed by its xid.
#[derive(Clone, Copy, Default)]
struct Slot {
    xid: u32,
    live: bool,
    requested: bool,
    sent_at: Duration,
}

struct Latencies(Vec<f64>);

impl Latencies {
    fn stats(mut self, stats: &mut ExchangeStats, keep: bool) {
        self.0.sort_by(f64::total_cmp);
        let at = |p: f64| (!self.0.is_empty()).then(|| crate::sim::percentile(&self.0, p));
        stats.p50_ms = at(50.0);
        stats.p99_ms = at(99.0);
        stats.max_ms = self.0.last().copied();
        if keep {
            stats.samples_ms = self.0;
        }
    }
}

/// Offer the load and count what came back.
pub fn run(opts: &LoadOptions) -> Result<LoadReport, LoadError> {
    if opts.rate == 0
        || opts.clients == 0
        || !(opts.seconds.is_finite() && opts.seconds >= 0.0)
        || !(opts.exit_wait.is_finite() && opts.exit_wait >= 0.0)
    {
        return Err(LoadError::Options);
    }
    let socket = bind(opts.local)?;
    let receive_buffer_bytes = socket2::SockRef::from(&socket).recv_buffer_size()?;
    let server = SocketAddrV4::new(opts.server, 67);
    let offering = Duration::from_secs_f64(opts.seconds);
    let total = (f64::from(opts.rate) * opts.seconds).round() as u64;
    // Room for every exchange started in the last few seconds, so a late reply
    // finds its own slot or an obviously newer one.
    let ring = (u64::from(opts.rate) * 8).next_power_of_two().max(1024) as usize;
    let mut slots = vec![Slot::default(); ring];
    let mut report =
        LoadReport { target_rate: opts.rate, seconds: opts.seconds, receive_buffer_bytes, ..LoadReport::default() };
    let (mut offer_ms, mut ack_ms) = (Latencies(Vec::new()), Latencies(Vec::new()));
    let (mut out, mut buf) = (Vec::with_capacity(300), vec![0u8; 1500]);
    let cpu_before = cpu_seconds();
    let start = Instant::now();
    let mut started: u64 = 0;
    let mut in_flight: u64 = 0;
    let deadline = offering + Duration::from_secs_f64(opts.exit_wait);
    let mut busy = Duration::ZERO;
    loop {
        let now = start.elapsed();
        let mut worked = false;
        // DISCOVERs due by now, on the fixed schedule (open loop: answers don't pace it).
        let due = if now >= offering { total } else { (now.as_secs_f64() * f64::from(opts.rate)) as u64 };
        if due > started + 1 {
            let behind = (due - started) as f64 / f64::from(opts.rate) * 1e3;
            report.max_lag_ms = report.max_lag_ms.max(behind);
        }
        while started < due {
            worked = true;
            let seq = started;
            started += 1;
            let xid = seq as u32;
            encode_request(&mut out, xid, client_mac(opts.mac_base, opts.clients, seq), opts.local, None);
            match socket.send_to(&out, server) {
                Ok(_) => {
                    let slot = &mut slots[seq as usize & (ring - 1)];
                    if !slot.live {
                        in_flight += 1; // else an exchange too old to finish gives up its slot
                    }
                    *slot = Slot { xid, live: true, requested: false, sent_at: now };
                    report.discover_offer.sent_packets += 1;
                }
                Err(_) => report.send_errors += 1,
            }
        }
        // Every reply waiting now.
        loop {
            let len = match socket.recv_from(&mut buf) {
                Ok((len, _)) => len,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            worked = true;
            let at = start.elapsed();
            let Some(reply) = read_reply(&buf[..len]) else {
                report.malformed += 1;
                continue;
            };
            let slot = &mut slots[reply.xid as usize & (ring - 1)];
            if !slot.live || slot.xid != reply.xid {
                report.orphans += 1;
                continue;
            }
            let waited = (at - slot.sent_at).as_secs_f64() * 1e3;
            match (reply.kind, slot.requested) {
                (OFFER, false) => {
                    report.discover_offer.received_packets += 1;
                    offer_ms.0.push(waited);
                    let Some(server_id) = reply.server_id else {
                        report.malformed += 1;
                        slot.live = false;
                        in_flight -= 1;
                        continue;
                    };
                    let seq = u64::from(reply.xid);
                    let mac = client_mac(opts.mac_base, opts.clients, seq);
                    encode_request(&mut out, reply.xid, mac, opts.local, Some((reply.yiaddr, server_id)));
                    match socket.send_to(&out, server) {
                        Ok(_) => {
                            *slot = Slot { xid: reply.xid, live: true, requested: true, sent_at: at };
                            report.request_ack.sent_packets += 1;
                        }
                        Err(_) => {
                            slot.live = false;
                            in_flight -= 1;
                            report.send_errors += 1;
                        }
                    }
                }
                (ACK, true) => {
                    report.request_ack.received_packets += 1;
                    ack_ms.0.push(waited);
                    slot.live = false;
                    in_flight -= 1;
                }
                (NAK, _) => {
                    report.naks += 1;
                    slot.live = false;
                    in_flight -= 1;
                }
                _ => report.orphans += 1, // a second OFFER, or an ACK before any REQUEST
            }
        }
        let turn_ended = start.elapsed();
        if worked {
            busy += turn_ended - now;
        }
        if turn_ended >= deadline || (started >= total && in_flight == 0) {
            break;
        }
        if !opts.sleep {
            std::hint::spin_loop();
            continue;
        }
        // Sleep until the next DISCOVER is due or a reply arrives (1 ms granularity).
        let wait = if started < total { PollTimeout::from(1u16) } else { PollTimeout::from(5u16) };
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, wait) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(LoadError::Poll(e)),
        }
    }
    report.wall_s = start.elapsed().as_secs_f64();
    report.busy_s = busy.as_secs_f64();
    report.cpu_s = cpu_seconds() - cpu_before;
    offer_ms.stats(&mut report.discover_offer, opts.samples);
    ack_ms.stats(&mut report.request_ack, opts.samples);
    Ok(report)
}

/// The relay socket: port 67 on `local`, non-blocking, with a receive buffer big
/// enough for a burst of a few thousand replies.
fn bind(local: Ipv4Addr) -> Result<UdpSocket, LoadError> {
    const RECEIVE_BUFFER: usize = 8 << 20;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    // The size it got is in the report (`receive_buffer_bytes`).
    ramboot::udp::deepen_receive_queue(&socket, RECEIVE_BUFFER);
    socket.set_send_buffer_size(1 << 20)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddrV4::new(local, 67).into()).map_err(|e| LoadError::Bind(local, e))?;
    Ok(socket.into())
}

/// This process's CPU time so far (user + system), in seconds.
fn cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            secs(u.user_time()) + secs(u.system_time())
        })
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};

    const RELAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

    #[test]
    fn a_discover_and_a_request_decode_as_dhcproto_reads_them() {
        let mac = client_mac(0xa1, 10_000, 12_345);
        assert_eq!(mac, [2, 0xa1, 0, 0, 0x09, 0x29], "client 12,345 mod 10,000 = 2,345");
        let mut bytes = Vec::new();
        encode_request(&mut bytes, 77, mac, RELAY, None);
        let d = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!((d.opcode(), d.xid(), d.giaddr(), d.hops()), (Opcode::BootRequest, 77, RELAY, 1));
        assert_eq!(&d.chaddr()[..6], &mac);
        assert_eq!(d.opts().msg_type(), Some(MessageType::Discover));

        let (ip, server) = (Ipv4Addr::new(10, 77, 1, 9), Ipv4Addr::new(10, 77, 0, 1));
        encode_request(&mut bytes, 78, mac, RELAY, Some((ip, server)));
        let r = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(r.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(r.opts().get(OptionCode::RequestedIpAddress), Some(&DhcpOption::RequestedIpAddress(ip)));
        assert_eq!(r.opts().get(OptionCode::ServerIdentifier), Some(&DhcpOption::ServerIdentifier(server)));
    }

    #[test]
    fn a_reply_is_read_without_a_full_decode() {
        let mut msg = Message::new_with_id(
            0xdead_beef,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 77, 3, 4),
            Ipv4Addr::UNSPECIFIED,
            RELAY,
            &[2, 0xa0, 0, 0, 0, 1],
        );
        msg.set_opcode(Opcode::BootReply);
        msg.opts_mut().insert(DhcpOption::MessageType(MessageType::Offer));
        msg.opts_mut().insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 77, 0, 1)));
        msg.opts_mut().insert(DhcpOption::AddressLeaseTime(3600));
        let mut bytes = Vec::new();
        msg.encode(&mut Encoder::new(&mut bytes)).unwrap();
        let reply = read_reply(&bytes).unwrap();
        assert_eq!(
            reply,
            Reply {
                xid: 0xdead_beef,
                kind: OFFER,
                yiaddr: Ipv4Addr::new(10, 77, 3, 4),
                server_id: Some(Ipv4Addr::new(10, 77, 0, 1)),
            }
        );
    }

    #[test]
    fn truncated_or_foreign_datagrams_are_not_replies() {
        let mut bytes = Vec::new();
        encode_request(&mut bytes, 1, [2, 0, 0, 0, 0, 1], RELAY, None);
        assert_eq!(read_reply(&bytes), None, "a BOOTREQUEST is not a reply");
        bytes[0] = 2;
        assert!(read_reply(&bytes).is_some());
        // An option whose length runs past the end.
        let cut = bytes.len() - 4;
        bytes.truncate(cut);
        assert_eq!(read_reply(&bytes), None);
        assert_eq!(read_reply(&bytes[..100]), None);
        for len in 0..bytes.len() {
            let _ = read_reply(&bytes[..len]); // never panics
        }
    }
}
