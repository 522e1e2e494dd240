//! `ramboot-agent dhcp6 IFACE`: stage one's DHCPv6 client (RFC 8415), for a boot
//! network without IPv4. Debian's static busybox has no `udhcpc6`.
//!
//! It asks for one address (IA_NA) on one interface: a Solicit with Rapid Commit
//! (option 14), then either the Reply that binds at once, or the best Advertise
//! (option 7, preference) and a Request for what it offered. On success it prints
//! one line on stdout, `ADDRESS PREFERRED_SECS VALID_SECS`, for the init script,
//! which configures the interface: the agent itself changes nothing on the node (no
//! address, no route) and renews nothing (stage one is over long before T1).
//! Progress and errors go to stderr, which is the serial console.
//!
//! [`Exchange`] is the protocol, with no socket and no clock of its own: it takes
//! datagrams and the time, and says what to send and until when to wait. [`run`]
//! moves its datagrams over a UDP socket. Every received datagram goes through
//! [`sanitize`] before dhcproto decodes it: only the options this client reads,
//! their lengths checked, so that no wire input reaches dhcproto's length
//! arithmetic or its unbounded recursion (Vendor Options, Relay Message).
//!
//! Not done: Renew, Rebind, Release, Confirm, Reconfigure, IA_TA and IA_PD,
//! authentication. Options 15 and 16 are never sent: dhcproto 0.15 encodes their
//! lengths wrongly.

use dhcproto::v6::{DhcpOption, DhcpOptions, IAAddr, Message, MessageType, OptionCode, Status, StatusCode, IANA, ORO};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use std::fs;
use std::io::{ErrorKind, Read};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

/// UDP ports (RFC 8415 §7.2).
const CLIENT_PORT: u16 = 546;
const SERVER_PORT: u16 = 547;
/// All_DHCP_Relay_Agents_and_Servers, link-scoped (RFC 8415 §7.1).
const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
/// How long `ramboot-agent dhcp6` tries before it gives up.
pub const LIMIT: Duration = Duration::from_secs(30);
/// First retransmission timeouts of Solicit and Request (RFC 8415 §7.6).
const SOL_TIMEOUT: Duration = Duration::from_secs(1);
const REQ_TIMEOUT: Duration = Duration::from_secs(1);
/// The cap of the doubling timeouts. RFC 8415's SOL_MAX_RT is an hour and
/// REQ_MAX_RT 30 s: a boot has [`LIMIT`] in all, so it asks more often.
const MAX_RT: Duration = Duration::from_secs(8);
/// Requests sent to a server before the client goes back to soliciting (RFC 8415
/// says REQ_MAX_RC = 10; 1 + 2 + 4 + 8 s is most of [`LIMIT`] already).
const REQ_MAX_SENDS: u32 = 4;
/// The preference (option 7) that makes a client take an Advertise at once.
const MAX_PREFERENCE: u8 = 255;
/// The longest status message (option 13) repeated on the console.
const MAX_STATUS_MESSAGE: usize = 200;

/// Who the client is: its DUID (option 1) and the IAID of its one IA_NA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub duid: Vec<u8>,
    pub iaid: u32,
}

impl Identity {
    /// DUID-LL of an Ethernet MAC (RFC 8415 §11.4: type 3, hardware type 1), and
    /// the MAC's last four bytes as the IAID: the same on every boot of the node.
    pub fn from_mac(mac: [u8; 6]) -> Identity {
        let mut duid = vec![0, 3, 0, 1];
        duid.extend_from_slice(&mac);
        Identity { duid, iaid: u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) }
    }
}

/// `52:54:00:ab:cd:ef` (as in `/sys/class/net/IFACE/address`).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// An address a server bound to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv6Addr,
    pub preferred_secs: u32,
    pub valid_secs: u32,
    /// Option 23 (RFC 3646).
    pub dns: Vec<Ipv6Addr>,
    pub server_id: Vec<u8>,
    /// Bound by a Reply to the Solicit (RFC 8415 §18.2.1), with no Request.
    pub rapid_commit: bool,
}

/// An address a server advertised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub server_id: Vec<u8>,
    /// Option 7; 0 when absent (RFC 8415 §18.2.9).
    pub preference: u8,
    pub address: Ipv6Addr,
}

/// What a received datagram is, for the client in its current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A Reply that binds an address.
    Bound(Lease),
    /// An Advertise that offers an address.
    Advertised(Offer),
    /// A server answered this client but gives it no address: why.
    Refused(String),
    /// Not an answer to what the client sent, or malformed: why.
    Ignored(String),
}

/// What the client waits for: `None` for an Advertise (or a Reply with Rapid
/// Commit) to its Solicit, else a Reply from the server its Request named.
type Requested<'a> = Option<&'a [u8]>;

/// The Solicit (RFC 8415 §18.2.1): one IA_NA, Rapid Commit, DNS servers asked.
pub fn solicit(id: &Identity, xid: [u8; 3], elapsed: Duration) -> Result<Vec<u8>, String> {
    let mut msg = Message::new_with_id(MessageType::Solicit, xid);
    let opts = msg.opts_mut();
    common_options(opts, id, elapsed);
    opts.insert(DhcpOption::IANA(IANA { id: id.iaid, t1: 0, t2: 0, opts: DhcpOptions::new() }));
    opts.insert(DhcpOption::RapidCommit);
    encode(&msg)
}

/// The Request for an advertised address (RFC 8415 §18.2.2), to the server that
/// advertised it. Lifetimes and T1/T2 are 0: the server decides them (§21.4, §21.6).
pub fn request(id: &Identity, xid: [u8; 3], offer: &Offer, elapsed: Duration) -> Result<Vec<u8>, String> {
    let mut msg = Message::new_with_id(MessageType::Request, xid);
    let opts = msg.opts_mut();
    common_options(opts, id, elapsed);
    opts.insert(DhcpOption::ServerId(offer.server_id.clone()));
    let mut ia_opts = DhcpOptions::new();
    ia_opts.insert(DhcpOption::IAAddr(IAAddr {
        addr: offer.address,
        preferred_life: 0,
        valid_life: 0,
        opts: DhcpOptions::new(),
    }));
    opts.insert(DhcpOption::IANA(IANA { id: id.iaid, t1: 0, t2: 0, opts: ia_opts }));
    encode(&msg)
}

/// Client Identifier (1), Option Request (6: DNS servers, and SOL_MAX_RT, which
/// RFC 8415 §21.24 has every client ask for), Elapsed Time (8).
fn common_options(opts: &mut DhcpOptions, id: &Identity, elapsed: Duration) {
    opts.insert(DhcpOption::ClientId(id.duid.clone()));
    opts.insert(DhcpOption::ORO(ORO { opts: vec![OptionCode::DomainNameServers, OptionCode::SolMaxRt] }));
    opts.insert(DhcpOption::ElapsedTime(hundredths(elapsed)));
}

/// Option 8 counts hundredths of a second, and stays at its maximum (RFC 8415 §21.9).
fn hundredths(elapsed: Duration) -> u16 {
    u16::try_from(elapsed.as_millis() / 10).unwrap_or(u16::MAX)
}

fn encode(msg: &Message) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    msg.encode(&mut Encoder::new(&mut buf)).map_err(|e| format!("encoding a {:?}: {e}", msg.msg_type()))?;
    Ok(buf)
}

/// Where an option sits, for [`sanitize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Message,
    IaNa,
    IaAddr,
}

/// A copy of a received message with only the options this client reads, each
/// checked against the length RFC 8415 gives it: Client and Server Identifier (1,
/// 2), IA_NA (3) holding IA Addresses (5) and Status Codes (13), Preference (7),
/// Status Code, Rapid Commit (14), DNS servers (23). A status message that is not
/// UTF-8 is made so (dhcproto would drop every option after it). Any option that
/// overruns its container makes the whole message malformed (RFC 8415 §16).
pub fn sanitize(datagram: &[u8]) -> Result<Vec<u8>, String> {
    let Some((header, options)) = datagram.split_first_chunk::<4>() else {
        return Err(format!("{} bytes: shorter than a DHCPv6 header", datagram.len()));
    };
    let mut out = header.to_vec();
    keep_options(options, Level::Message, &mut out)?;
    Ok(out)
}

fn keep_options(mut rest: &[u8], level: Level, out: &mut Vec<u8>) -> Result<(), String> {
    while !rest.is_empty() {
        let Some((head, tail)) = rest.split_first_chunk::<4>() else {
            return Err("truncated option header".into());
        };
        let code = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        if tail.len() < len {
            return Err(format!("option {code} ({len} bytes) overruns its container"));
        }
        let (body, next) = tail.split_at(len);
        rest = next;
        match (level, code) {
            (Level::Message, 1 | 2) if len > 0 => put_option(out, code, body),
            (Level::Message, 7) if len == 1 => put_option(out, code, body),
            (Level::Message, 14) if len == 0 => put_option(out, code, body),
            (Level::Message, 23) if len % 16 == 0 => put_option(out, code, body),
            (_, 13) if len >= 2 => {
                let text = String::from_utf8_lossy(&body[2..]);
                let text: String = text.chars().take(MAX_STATUS_MESSAGE).collect();
                put_option(out, code, &[&body[..2], text.as_bytes()].concat());
            }
            // IAID, T1, T2 (RFC 8415 §21.4), then IA_NA options.
            (Level::Message, 3) if len >= 12 => put_container(out, code, &body[..12], &body[12..], Level::IaNa)?,
            // Address, preferred and valid lifetimes (§21.6), then IAaddr options.
            (Level::IaNa, 5) if len >= 24 => put_container(out, code, &body[..24], &body[24..], Level::IaAddr)?,
            _ => {}
        }
    }
    Ok(())
}

fn put_option(out: &mut Vec<u8>, code: u16, body: &[u8]) {
    out.extend_from_slice(&code.to_be_bytes());
    // Always fits: kept options are no longer than on the wire, status messages
    // are capped, and containers check their length.
    out.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(body);
}

fn put_container(out: &mut Vec<u8>, code: u16, fixed: &[u8], inner: &[u8], level: Level) -> Result<(), String> {
    let mut body = fixed.to_vec();
    keep_options(inner, level, &mut body)?;
    if body.len() > usize::from(u16::MAX) {
        return Err(format!("option {code} is too long"));
    }
    put_option(out, code, &body);
    Ok(())
}

/// What `datagram` is to a client `id` that sent transaction `xid`, waiting for
/// what `requested` says. Never panics, whatever the bytes.
pub fn interpret(id: &Identity, xid: [u8; 3], requested: Requested<'_>, datagram: &[u8]) -> Received {
    let ignored = |why: String| Received::Ignored(why);
    let msg = match sanitize(datagram)
        .and_then(|clean| Message::decode(&mut Decoder::new(&clean)).map_err(|e| format!("undecodable: {e}")))
    {
        Ok(msg) => msg,
        Err(why) => return ignored(format!("malformed: {why}")),
    };
    let kind = msg.msg_type();
    if msg.xid() != xid {
        return ignored(format!("{kind:?} for transaction {:06x}, not ours", msg.xid_num()));
    }
    match (kind, requested) {
        (MessageType::Advertise, None) | (MessageType::Reply, _) => {}
        _ => return ignored(format!("unexpected {kind:?}")),
    }
    // RFC 8415 §16.3 and §16.10: both identifiers, the client's being ours.
    match msg.opts().get(OptionCode::ClientId) {
        Some(DhcpOption::ClientId(duid)) if *duid == id.duid => {}
        Some(_) => return ignored(format!("{kind:?} for another client")),
        None => return ignored(format!("{kind:?} without a client identifier")),
    }
    let Some(DhcpOption::ServerId(server_id)) = msg.opts().get(OptionCode::ServerId) else {
        return ignored(format!("{kind:?} without a server identifier"));
    };
    let server = hex::encode(server_id);
    if let Some(wanted) = requested {
        if server_id.as_slice() != wanted {
            return ignored(format!("Reply from server {server}, not the one requested from"));
        }
    }
    let rapid_commit = msg.opts().get(OptionCode::RapidCommit).is_some();
    if kind == MessageType::Reply && requested.is_none() && !rapid_commit {
        return ignored("Reply to a Solicit without Rapid Commit".into());
    }
    if let Some(why) = refusal(msg.opts()) {
        return Received::Refused(format!("server {server}: {why}"));
    }
    let iana = msg.opts().get_all(OptionCode::IANA).unwrap_or_default().iter().find_map(|o| match o {
        DhcpOption::IANA(ia) if ia.id == id.iaid => Some(ia),
        _ => None,
    });
    let Some(iana) = iana else {
        return Received::Refused(format!("server {server}: no IA_NA {:08x} in its {kind:?}", id.iaid));
    };
    if let Some(why) = refusal(&iana.opts) {
        return Received::Refused(format!("server {server}: {why}"));
    }
    // RFC 8415 §18.2.10.1: an address whose preferred lifetime exceeds its valid
    // one is discarded; so is one that is no longer valid.
    let addr = iana.opts.get_all(OptionCode::IAAddr).unwrap_or_default().iter().find_map(|o| match o {
        DhcpOption::IAAddr(a) if a.valid_life > 0 && a.preferred_life <= a.valid_life && refusal(&a.opts).is_none() => {
            Some(a)
        }
        _ => None,
    });
    let Some(addr) = addr else {
        return Received::Refused(format!("server {server}: no usable address in its {kind:?}"));
    };
    if kind == MessageType::Advertise {
        let preference = match msg.opts().get(OptionCode::Preference) {
            Some(DhcpOption::Preference(p)) => *p,
            _ => 0,
        };
        return Received::Advertised(Offer { server_id: server_id.clone(), preference, address: addr.addr });
    }
    let dns = match msg.opts().get(OptionCode::DomainNameServers) {
        Some(DhcpOption::DomainNameServers(dns)) => dns.clone(),
        _ => vec![],
    };
    Received::Bound(Lease {
        address: addr.addr,
        preferred_secs: addr.preferred_life,
        valid_secs: addr.valid_life,
        dns,
        server_id: server_id.clone(),
        rapid_commit: requested.is_none(),
    })
}

/// A Status Code (option 13) other than Success among `opts`, for people:
/// `NoAddrsAvail (2): no addresses available`.
fn refusal(opts: &DhcpOptions) -> Option<String> {
    match opts.get(OptionCode::StatusCode) {
        Some(DhcpOption::StatusCode(StatusCode { status, msg })) if *status != Status::Success => {
            let text: String = msg.chars().filter(|c| !c.is_control()).collect();
            let code = u16::from(*status);
            Some(if text.is_empty() { format!("{status:?} ({code})") } else { format!("{status:?} ({code}): {text}") })
        }
        _ => None,
    }
}

/// What the client does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this to All_DHCP_Relay_Agents_and_Servers; `note` says what it is.
    Send { datagram: Vec<u8>, note: String },
    /// Wait for a datagram until then, and ask again.
    Wait(Instant),
    /// Bound, or given up.
    Done(Result<Lease, String>),
}

#[derive(Debug)]
enum Phase {
    /// Soliciting. Advertises are collected until `collect_until` (the end of the
    /// first retransmission timeout, RFC 8415 §18.2.1), the best one kept; after
    /// it (`None`) the first one is taken.
    Soliciting {
        best: Option<Offer>,
        collect_until: Option<Instant>,
    },
    Requesting {
        offer: Offer,
    },
}

/// One client getting one address: the protocol without I/O. The caller sends
/// what [`Exchange::step`] gives, waits as long as it says, and hands every
/// datagram it receives to [`Exchange::handle`].
#[derive(Debug)]
pub struct Exchange {
    id: Identity,
    limit: Duration,
    deadline: Instant,
    rng: u64,
    phase: Phase,
    xid: [u8; 3],
    /// When the current message exchange began (option 8 counts from it).
    started: Instant,
    /// Messages sent in the current exchange, and the last timeout.
    sends: u32,
    rt: Duration,
    next_send: Instant,
    solicits: u32,
    /// Why the last server that answered gave no address.
    refusal: Option<String>,
    outcome: Option<Result<Lease, String>>,
}

impl Exchange {
    /// Start soliciting at `now`, giving up after `limit`. `seed` drives the
    /// transaction ids and the retransmission jitter.
    pub fn new(id: Identity, now: Instant, limit: Duration, seed: u64) -> Exchange {
        let mut exchange = Exchange {
            id,
            limit,
            deadline: now + limit,
            // xorshift needs a state other than zero.
            rng: seed | 1,
            phase: Phase::Soliciting { best: None, collect_until: None },
            xid: [0; 3],
            started: now,
            sends: 0,
            rt: Duration::ZERO,
            next_send: now,
            solicits: 0,
            refusal: None,
            outcome: None,
        };
        exchange.restart(now, Phase::Soliciting { best: None, collect_until: None }, now);
        exchange
    }

    /// A new message exchange (a new transaction id, RFC 8415 §16.1), its first
    /// message due at `first`.
    fn restart(&mut self, now: Instant, phase: Phase, first: Instant) {
        let [a, b, c, ..] = self.random().to_be_bytes();
        self.xid = [a, b, c];
        self.phase = phase;
        self.started = first.max(now);
        self.sends = 0;
        self.rt = Duration::ZERO;
        self.next_send = first;
    }

    /// xorshift64*: plenty for transaction ids and jitter.
    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// RAND of RFC 8415 §15: uniform in [-0.1, 0.1].
    fn jitter(&mut self) -> f64 {
        (self.random() >> 11) as f64 / (1u64 << 53) as f64 * 0.2 - 0.1
    }

    /// The next retransmission timeout (RFC 8415 §15), capped at [`MAX_RT`]. The
    /// first Solicit's is strictly above its initial value.
    fn next_rt(&mut self, initial: Duration, soliciting: bool) -> Duration {
        let rand = self.jitter();
        if self.sends == 0 {
            let rand = if soliciting { rand.abs().max(0.001) } else { rand };
            initial.mul_f64(1.0 + rand)
        } else if self.rt * 2 > MAX_RT {
            MAX_RT.mul_f64(1.0 + rand)
        } else {
            self.rt.mul_f64(2.0 + rand)
        }
    }

    /// What to do at `now`.
    pub fn step(&mut self, now: Instant) -> Step {
        if let Some(outcome) = &self.outcome {
            return Step::Done(outcome.clone());
        }
        if now >= self.deadline {
            let why = match &self.refusal {
                Some(refusal) => format!("no address in {} s; {refusal}", self.limit.as_secs()),
                None => {
                    format!("no DHCPv6 server answered in {} s ({} Solicits sent)", self.limit.as_secs(), self.solicits)
                }
            };
            self.outcome = Some(Err(why.clone()));
            return Step::Done(Err(why));
        }
        if let Phase::Soliciting { best, collect_until: Some(until) } = &mut self.phase {
            if now >= *until {
                match best.take() {
                    Some(offer) => self.restart(now, Phase::Requesting { offer }, now),
                    None => self.phase = Phase::Soliciting { best: None, collect_until: None },
                }
            }
        }
        if now < self.next_send {
            let mut until = self.next_send.min(self.deadline);
            if let Phase::Soliciting { collect_until: Some(c), .. } = &self.phase {
                until = until.min(*c);
            }
            return Step::Wait(until);
        }
        if let Phase::Requesting { offer } = &self.phase {
            if self.sends >= REQ_MAX_SENDS {
                self.refusal = Some(format!("server {} did not answer our Requests", hex::encode(&offer.server_id)));
                self.restart(now, Phase::Soliciting { best: None, collect_until: None }, now);
            }
        }
        let elapsed = now.saturating_duration_since(self.started);
        let (built, note, initial, soliciting) = match &self.phase {
            Phase::Soliciting { .. } => (
                solicit(&self.id, self.xid, elapsed),
                format!("solicit #{} (rapid commit)", self.sends + 1),
                SOL_TIMEOUT,
                true,
            ),
            Phase::Requesting { offer } => (
                request(&self.id, self.xid, offer, elapsed),
                format!(
                    "request #{} for {} to server {}",
                    self.sends + 1,
                    offer.address,
                    hex::encode(&offer.server_id)
                ),
                REQ_TIMEOUT,
                false,
            ),
        };
        let datagram = match built {
            Ok(datagram) => datagram,
            Err(e) => {
                self.outcome = Some(Err(e.clone()));
                return Step::Done(Err(e));
            }
        };
        self.rt = self.next_rt(initial, soliciting);
        self.sends += 1;
        self.next_send = now + self.rt;
        if let Phase::Soliciting { collect_until, .. } = &mut self.phase {
            self.solicits += 1;
            if self.sends == 1 {
                *collect_until = Some(self.next_send);
            }
        }
        Step::Send { datagram, note }
    }

    /// Take in a datagram received at `now`; what it was, for the log.
    pub fn handle(&mut self, now: Instant, datagram: &[u8]) -> Received {
        if self.outcome.is_some() {
            return Received::Ignored("already done".into());
        }
        let requested = match &self.phase {
            Phase::Requesting { offer } => Some(offer.server_id.as_slice()),
            Phase::Soliciting { .. } => None,
        };
        let got = interpret(&self.id, self.xid, requested, datagram);
        match &got {
            Received::Bound(lease) => self.outcome = Some(Ok(lease.clone())),
            Received::Advertised(offer) => {
                if let Phase::Soliciting { best, collect_until } = &mut self.phase {
                    if offer.preference == MAX_PREFERENCE || collect_until.is_none() {
                        self.restart(now, Phase::Requesting { offer: offer.clone() }, now);
                    } else if best.as_ref().is_none_or(|b| offer.preference > b.preference) {
                        *best = Some(offer.clone());
                    }
                }
            }
            Received::Refused(why) => {
                self.refusal = Some(why.clone());
                // A Request refused (RFC 8415 §18.2.10.1): solicit again, after a
                // pause, so that a server that keeps refusing is not hammered.
                if matches!(self.phase, Phase::Requesting { .. }) {
                    let phase = Phase::Soliciting { best: None, collect_until: None };
                    self.restart(now, phase, now + SOL_TIMEOUT);
                }
            }
            Received::Ignored(_) => {}
        }
        got
    }
}

/// Progress and errors: stderr, which reaches the console (stdout is the lease).
pub fn log(msg: &str) {
    eprintln!("ramboot-agent dhcp6: {msg}");
}

/// `ramboot-agent dhcp6 IFACE`: print `ADDRESS PREFERRED_SECS VALID_SECS`.
pub fn command(args: &[String]) -> Result<(), String> {
    let [iface] = args else {
        return Err("usage: ramboot-agent dhcp6 IFACE".into());
    };
    let lease = run(iface, LIMIT)?;
    for dns in &lease.dns {
        log(&format!("DNS server {dns}"));
    }
    println!("{} {} {}", lease.address, lease.preferred_secs, lease.valid_secs);
    Ok(())
}

/// Get an address for `iface` over UDP, within `limit`.
pub fn run(iface: &str, limit: Duration) -> Result<Lease, String> {
    if iface.is_empty() || iface.contains('/') || iface.starts_with('.') {
        return Err(format!("{iface:?} is not an interface name"));
    }
    let sys = format!("/sys/class/net/{iface}");
    let mac_text = fs::read_to_string(format!("{sys}/address"))
        .map_err(|e| format!("no interface {iface}? {sys}/address: {e}"))?;
    let mac =
        parse_mac(&mac_text).ok_or_else(|| format!("{iface} has no Ethernet MAC address ({:?})", mac_text.trim()))?;
    let ifindex: u32 = fs::read_to_string(format!("{sys}/ifindex"))
        .map_err(|e| format!("{sys}/ifindex: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("{sys}/ifindex: {e}"))?;
    let socket = UdpSocket::bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, CLIENT_PORT, 0, 0))
        .map_err(|e| format!("cannot bind UDP port {CLIENT_PORT}: {e}"))?;
    // The scope makes Linux send the link-scoped multicast out of `iface`.
    let servers = SocketAddrV6::new(ALL_SERVERS, SERVER_PORT, 0, ifindex);
    let id = Identity::from_mac(mac);
    log(&format!("soliciting on {iface} as DUID-LL {}, IAID {:08x}", hex::encode(&id.duid), id.iaid));
    let mut exchange = Exchange::new(id, Instant::now(), limit, seed(mac));
    let mut buf = vec![0u8; 65536];
    let mut last_send_error = String::new();
    loop {
        let now = Instant::now();
        match exchange.step(now) {
            Step::Done(outcome) => return outcome,
            Step::Send { datagram, note } => {
                log(&format!("{note} on {iface}"));
                if let Err(e) = socket.send_to(&datagram, servers) {
                    // The link may still be settling: say so once, and keep trying.
                    let e = e.to_string();
                    if e != last_send_error {
                        log(&format!("sending on {iface}: {e}"));
                        last_send_error = e;
                    }
                }
            }
            Step::Wait(until) => {
                let wait = until.saturating_duration_since(now).max(Duration::from_millis(1));
                socket.set_read_timeout(Some(wait)).map_err(|e| format!("socket timeout: {e}"))?;
                match socket.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let got = exchange.handle(Instant::now(), buf.get(..n).unwrap_or_default());
                        log_received(&got, from);
                    }
                    Err(e)
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                    }
                    Err(e) => return Err(format!("receiving on {iface}: {e}")),
                }
            }
        }
    }
}

fn log_received(got: &Received, from: SocketAddr) {
    match got {
        Received::Bound(lease) => log(&format!(
            "bound {} (preferred {} s, valid {} s) by server {}{}",
            lease.address,
            lease.preferred_secs,
            lease.valid_secs,
            hex::encode(&lease.server_id),
            if lease.rapid_commit { ", rapid commit" } else { "" }
        )),
        Received::Advertised(offer) => log(&format!(
            "advertise from server {} ({from}): {} (preference {})",
            hex::encode(&offer.server_id),
            offer.address,
            offer.preference
        )),
        Received::Refused(why) => log(&format!("no address from {from}: {why}")),
        Received::Ignored(why) => log(&format!("ignored a datagram from {from}: {why}")),
    }
}

/// Randomness for transaction ids and jitter: the kernel's, else the clock's, and
/// the MAC either way, so that nodes powered on together still differ.
fn seed(mac: [u8; 6]) -> u64 {
    let mut bytes = [0u8; 8];
    let random = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).is_ok();
    let mut seed = u64::from_le_bytes(bytes);
    if !random {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        seed = nanos ^ u64::from(std::process::id()).rotate_left(32);
    }
    let mut mac8 = [0u8; 8];
    mac8[2..].copy_from_slice(&mac);
    seed ^ u64::from_be_bytes(mac8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x72, 0x62, 0x01];
    const SERVER: &[u8] = &[0, 1, 0, 1, 0x2c, 0xa9, 0x3f, 0x79, 0x16, 0x42, 0xe2, 0x17, 0x84, 0x1a];
    const OTHER_SERVER: &[u8] = &[0, 3, 0, 1, 2, 0, 0, 0, 0, 9];

    fn id() -> Identity {
        Identity::from_mac(MAC)
    }

    fn addr(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn decode(bytes: &[u8]) -> Message {
        Message::decode(&mut Decoder::new(bytes)).unwrap()
    }

    /// A server's answer: an IA_NA for our IAID holding `ia` (address options and
    /// status codes), plus `extra` options.
    fn answer(
        kind: MessageType,
        xid: [u8; 3],
        client: &[u8],
        server: &[u8],
        ia: Vec<DhcpOption>,
        extra: Vec<DhcpOption>,
    ) -> Vec<u8> {
        let mut msg = Message::new_with_id(kind, xid);
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::ClientId(client.to_vec()));
        opts.insert(DhcpOption::ServerId(server.to_vec()));
        opts.insert(DhcpOption::IANA(IANA { id: id().iaid, t1: 1800, t2: 2880, opts: ia.into_iter().collect() }));
        for o in extra {
            opts.insert(o);
        }
        encode(&msg).unwrap()
    }

    fn ia_addr(a: &str, preferred: u32, valid: u32) -> DhcpOption {
        DhcpOption::IAAddr(IAAddr {
            addr: addr(a),
            preferred_life: preferred,
            valid_life: valid,
            opts: DhcpOptions::new(),
        })
    }

    fn status(status: Status, msg: &str) -> DhcpOption {
        DhcpOption::StatusCode(StatusCode { status, msg: msg.into() })
    }

    /// The rapid-commit Reply a server gives to a Solicit of transaction `xid`.
    fn rapid_reply(xid: [u8; 3]) -> Vec<u8> {
        answer(
            MessageType::Reply,
            xid,
            &id().duid,
            SERVER,
            vec![ia_addr("fd00:213::100", 3600, 7200)],
            vec![DhcpOption::RapidCommit, DhcpOption::DomainNameServers(vec![addr("fd00:213::1")])],
        )
    }

    fn advertise(xid: [u8; 3], server: &[u8], address: &str, preference: Option<u8>) -> Vec<u8> {
        let extra = preference.map(DhcpOption::Preference).into_iter().collect();
        answer(MessageType::Advertise, xid, &id().duid, server, vec![ia_addr(address, 3600, 7200)], extra)
    }

    #[test]
    fn the_identity_is_a_duid_ll_of_the_mac() {
        let id = id();
        assert_eq!(id.duid, [0, 3, 0, 1, 0x52, 0x54, 0x00, 0x72, 0x62, 0x01]);
        assert_eq!(id.iaid, 0x0072_6201);
        assert_eq!(parse_mac("52:54:00:72:62:01\n"), Some(MAC));
        for bad in
            ["", "52:54:00:72:62", "52:54:00:72:62:01:02", "52:54:00:72:62:+1", "5254.0072.6201", "00:00:00:00:00:0g"]
        {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_solicit_asks_for_one_address_with_rapid_commit() {
        let bytes = solicit(&id(), [1, 2, 3], Duration::from_millis(1234)).unwrap();
        let msg = decode(&bytes);
        assert_eq!(msg.msg_type(), MessageType::Solicit);
        assert_eq!(msg.xid(), [1, 2, 3]);
        let opts = msg.opts();
        assert_eq!(opts.get(OptionCode::ClientId), Some(&DhcpOption::ClientId(id().duid)));
        assert_eq!(
            opts.get(OptionCode::IANA),
            Some(&DhcpOption::IANA(IANA { id: id().iaid, t1: 0, t2: 0, opts: DhcpOptions::new() }))
        );
        assert_eq!(opts.get(OptionCode::RapidCommit), Some(&DhcpOption::RapidCommit));
        assert_eq!(opts.get(OptionCode::ElapsedTime), Some(&DhcpOption::ElapsedTime(123)));
        let Some(DhcpOption::ORO(oro)) = opts.get(OptionCode::ORO) else { panic!("no ORO") };
        assert!(oro.opts.contains(&OptionCode::DomainNameServers));
        assert!(opts.get(OptionCode::ServerId).is_none());
        // dhcproto 0.15 encodes 15 and 16 wrongly: never sent.
        assert!(opts.get(OptionCode::UserClass).is_none() && opts.get(OptionCode::VendorClass).is_none());
        // Byte for byte, the header and the first option (RFC 8415 §8, §21.2).
        assert_eq!(bytes[..4], [1, 1, 2, 3]);
        assert_eq!(bytes[4..8], [0, 1, 0, 10]);
        assert_eq!(hundredths(Duration::from_secs(10_000)), u16::MAX);
    }

    #[test]
    fn a_request_names_the_server_and_the_advertised_address() {
        let offer = Offer { server_id: SERVER.to_vec(), preference: 0, address: addr("fd00:213::100") };
        let msg = decode(&request(&id(), [9, 8, 7], &offer, Duration::ZERO).unwrap());
        assert_eq!(msg.msg_type(), MessageType::Request);
        assert_eq!(msg.xid(), [9, 8, 7]);
        let opts = msg.opts();
        assert_eq!(opts.get(OptionCode::ServerId), Some(&DhcpOption::ServerId(SERVER.to_vec())));
        assert_eq!(opts.get(OptionCode::ClientId), Some(&DhcpOption::ClientId(id().duid)));
        assert_eq!(opts.get(OptionCode::ElapsedTime), Some(&DhcpOption::ElapsedTime(0)));
        assert!(opts.get(OptionCode::RapidCommit).is_none());
        let Some(DhcpOption::IANA(ia)) = opts.get(OptionCode::IANA) else { panic!("no IA_NA") };
        assert_eq!(ia.id, id().iaid);
        assert_eq!(ia.opts.get(OptionCode::IAAddr), Some(&ia_addr("fd00:213::100", 0, 0)));
    }

    #[test]
    fn a_rapid_commit_reply_binds_at_once() {
        let got = interpret(&id(), [1, 2, 3], None, &rapid_reply([1, 2, 3]));
        assert_eq!(
            got,
            Received::Bound(Lease {
                address: addr("fd00:213::100"),
                preferred_secs: 3600,
                valid_secs: 7200,
                dns: vec![addr("fd00:213::1")],
                server_id: SERVER.to_vec(),
                rapid_commit: true,
            })
        );
        // Without option 14, a Reply is no answer to a Solicit (RFC 8415 §18.2.1).
        let plain =
            answer(MessageType::Reply, [1, 2, 3], &id().duid, SERVER, vec![ia_addr("fd00:213::100", 1, 2)], vec![]);
        assert!(matches!(interpret(&id(), [1, 2, 3], None, &plain), Received::Ignored(_)));
        // But it is the answer to a Request.
        assert!(matches!(interpret(&id(), [1, 2, 3], Some(SERVER), &plain), Received::Bound(_)));
    }

    #[test]
    fn answers_to_others_are_ignored() {
        let ours = [1, 2, 3];
        let cases = [
            ("wrong xid", rapid_reply([1, 2, 4])),
            (
                "another client",
                answer(
                    MessageType::Reply,
                    ours,
                    &[0, 3, 0, 1, 1, 1, 1, 1, 1, 1],
                    SERVER,
                    vec![],
                    vec![DhcpOption::RapidCommit],
                ),
            ),
            ("an Advertise", advertise(ours, SERVER, "fd00:213::100", None)),
        ];
        for (what, bytes) in &cases[..2] {
            assert!(matches!(interpret(&id(), ours, None, bytes), Received::Ignored(_)), "{what}");
        }
        // Once a Request is out, an Advertise and another server's Reply are not answers.
        let (_, adv) = &cases[2];
        assert!(matches!(interpret(&id(), ours, Some(SERVER), adv), Received::Ignored(_)));
        let other = answer(MessageType::Reply, ours, &id().duid, OTHER_SERVER, vec![ia_addr("fd00::9", 1, 2)], vec![]);
        assert!(matches!(interpret(&id(), ours, Some(SERVER), &other), Received::Ignored(_)));
        // No client or server identifier at all.
        let mut msg = Message::new_with_id(MessageType::Reply, ours);
        msg.opts_mut().insert(DhcpOption::RapidCommit);
        assert!(matches!(interpret(&id(), ours, None, &encode(&msg).unwrap()), Received::Ignored(_)));
        msg.opts_mut().insert(DhcpOption::ClientId(id().duid));
        let Received::Ignored(why) = interpret(&id(), ours, None, &encode(&msg).unwrap()) else { panic!() };
        assert!(why.contains("server identifier"), "{why}");
        // Our own Solicit, looped back.
        let own = solicit(&id(), ours, Duration::ZERO).unwrap();
        assert!(matches!(interpret(&id(), ours, None, &own), Received::Ignored(_)));
    }

    #[test]
    fn status_codes_refuse_with_the_servers_words() {
        let xid = [1, 2, 3];
        let no_addrs = answer(
            MessageType::Advertise,
            xid,
            &id().duid,
            SERVER,
            vec![status(Status::NoAddrsAvail, "no addresses\x1b[2J available")],
            vec![],
        );
        let Received::Refused(why) = interpret(&id(), xid, None, &no_addrs) else { panic!() };
        assert_eq!(why, format!("server {}: NoAddrsAvail (2): no addresses[2J available", hex::encode(SERVER)));
        // At the top of a Reply too.
        let top = answer(
            MessageType::Reply,
            xid,
            &id().duid,
            SERVER,
            vec![ia_addr("fd00::1", 1, 2)],
            vec![status(Status::UnspecFail, "")],
        );
        let Received::Refused(why) = interpret(&id(), xid, Some(SERVER), &top) else { panic!() };
        assert!(why.ends_with("UnspecFail (1)"), "{why}");
        // No address, or only unusable ones (preferred above valid, valid 0).
        for ia in [vec![], vec![ia_addr("fd00::1", 10, 5), ia_addr("fd00::2", 0, 0)]] {
            let bytes = answer(MessageType::Reply, xid, &id().duid, SERVER, ia, vec![]);
            assert!(matches!(interpret(&id(), xid, Some(SERVER), &bytes), Received::Refused(_)));
        }
        // A Success status is no refusal.
        let ok = answer(
            MessageType::Reply,
            xid,
            &id().duid,
            SERVER,
            vec![ia_addr("fd00::1", 1, 2), status(Status::Success, "ok")],
            vec![status(Status::Success, "")],
        );
        assert!(matches!(interpret(&id(), xid, Some(SERVER), &ok), Received::Bound(_)));
    }

    #[test]
    fn sanitize_keeps_what_is_read_and_drops_the_rest() {
        // Vendor options nested deep (dhcproto would recurse into every level),
        // then a Preference: the former goes, the latter stays.
        let mut vendor = vec![];
        for _ in 0..2000 {
            let mut outer = vec![0, 17, 0, 0, 0, 0, 0, 1];
            let len = u16::try_from(vendor.len() + 4).unwrap_or(u16::MAX);
            outer[2..4].copy_from_slice(&len.to_be_bytes());
            outer.extend_from_slice(&vendor);
            if outer.len() > 60_000 {
                break;
            }
            vendor = outer;
        }
        let mut bytes = vec![2, 1, 2, 3];
        bytes.extend_from_slice(&vendor);
        bytes.extend_from_slice(&[0, 7, 0, 1, 9]);
        assert_eq!(sanitize(&bytes).unwrap(), [2, 1, 2, 3, 0, 7, 0, 1, 9]);
        // Wrong fixed lengths are dropped, overruns refused.
        assert_eq!(sanitize(&[2, 1, 2, 3, 0, 7, 0, 2, 9, 9, 0, 14, 0, 1, 0]).unwrap(), [2, 1, 2, 3]);
        assert!(sanitize(&[2, 1, 2, 3, 0, 1, 0, 9, 1]).is_err());
        assert!(sanitize(&[2, 1, 2, 3, 0, 1, 0]).is_err());
        assert!(sanitize(&[2, 1]).is_err());
        // A status message that is not UTF-8 is made so.
        let clean = sanitize(&[2, 1, 2, 3, 0, 13, 0, 3, 0, 2, 0xff]).unwrap();
        assert_eq!(clean, [&[2, 1, 2, 3, 0, 13, 0, 5, 0, 2][..], "\u{fffd}".as_bytes()].concat());
    }

    /// A small deterministic generator for the garbage tests.
    fn lcg(state: &mut u64) -> u64 {
        *state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        *state >> 33
    }

    #[test]
    fn garbage_never_panics() {
        let xid = [1, 2, 3];
        let valid = [rapid_reply(xid), advertise(xid, SERVER, "fd00::5", Some(7))];
        let mut state = 42;
        let mut inputs: Vec<Vec<u8>> = vec![vec![], vec![7], vec![7, 1, 2, 3], vec![0xff; 70_000]];
        for v in &valid {
            // Every truncation, and random byte flips.
            inputs.extend((0..v.len()).map(|n| v[..n].to_vec()));
            for _ in 0..3000 {
                let mut m = v.clone();
                for _ in 0..(lcg(&mut state) % 4 + 1) {
                    let i = (lcg(&mut state) as usize) % m.len();
                    m[i] = lcg(&mut state) as u8;
                }
                inputs.push(m);
            }
        }
        for _ in 0..3000 {
            let len = (lcg(&mut state) % 200) as usize;
            let mut m: Vec<u8> = (0..len).map(|_| lcg(&mut state) as u8).collect();
            if m.len() >= 4 {
                m[..4].copy_from_slice(&[7, 1, 2, 3]);
            }
            inputs.push(m);
        }
        for input in &inputs {
            for requested in [None, Some(SERVER)] {
                let _ = interpret(&id(), xid, requested, input);
            }
        }
    }

    /// The datagram an [`Exchange`] sends next at `now`, decoded.
    fn sends(ex: &mut Exchange, now: Instant) -> Message {
        match ex.step(now) {
            Step::Send { datagram, .. } => decode(&datagram),
            other => panic!("expected a send at {:?}, got {other:?}", now),
        }
    }

    fn waits(ex: &mut Exchange, now: Instant) -> Instant {
        match ex.step(now) {
            Step::Wait(until) => until,
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[test]
    fn solicits_back_off_and_give_up_at_the_limit() {
        let t0 = Instant::now();
        let mut ex = Exchange::new(id(), t0, LIMIT, 7);
        let first = sends(&mut ex, t0);
        assert_eq!(first.msg_type(), MessageType::Solicit);
        let mut now = t0;
        let mut gaps = vec![];
        loop {
            match ex.step(now) {
                Step::Wait(until) => {
                    assert!(until > now, "never a wait into the past");
                    now = until;
                }
                Step::Send { datagram, .. } => {
                    let msg = decode(&datagram);
                    assert_eq!(msg.xid(), first.xid(), "retransmissions keep the transaction id");
                    let Some(DhcpOption::ElapsedTime(e)) = msg.opts().get(OptionCode::ElapsedTime) else { panic!() };
                    assert_eq!(u128::from(*e), (now - t0).as_millis() / 10);
                    gaps.push((now - t0).as_secs_f64());
                }
                Step::Done(outcome) => {
                    let why = outcome.unwrap_err();
                    assert!(why.contains("no DHCPv6 server answered in 30 s"), "{why}");
                    assert!(now >= t0 + LIMIT);
                    break;
                }
            }
        }
        // About 1, 3, 7, 15, 23 s: doubling from 1 s, capped at 8 s, each ±10 %.
        assert!((5..=6).contains(&gaps.len()), "{gaps:?}");
        for (got, want) in gaps.iter().zip([1.0, 3.0, 7.0, 15.0, 23.0]) {
            assert!((got - want).abs() <= want * 0.2, "{gaps:?}");
        }
        assert!(gaps[0] > 1.0 && gaps[0] <= 1.1, "the first Solicit timeout is just above 1 s (RFC 8415 §15)");
        assert!(gaps.windows(2).all(|w| w[1] - w[0] <= 8.8), "capped: {gaps:?}");
        assert!(matches!(ex.step(now), Step::Done(Err(_))));
    }

    #[test]
    fn a_rapid_commit_exchange_is_one_round_trip() {
        let t0 = Instant::now();
        let mut ex = Exchange::new(id(), t0, LIMIT, 1);
        let sol = sends(&mut ex, t0);
        let got = ex.handle(t0, &rapid_reply(sol.xid()));
        assert!(matches!(got, Received::Bound(_)));
        let Step::Done(Ok(lease)) = ex.step(t0) else { panic!() };
        assert_eq!((lease.address, lease.rapid_commit), (addr("fd00:213::100"), true));
    }

    #[test]
    fn the_best_advertise_of_the_first_timeout_is_requested() {
        let t0 = Instant::now();
        let mut ex = Exchange::new(id(), t0, LIMIT, 2);
        let xid = sends(&mut ex, t0).xid();
        let soon = t0 + Duration::from_millis(100);
        assert!(matches!(ex.handle(soon, &advertise(xid, OTHER_SERVER, "fd00::9", Some(10))), Received::Advertised(_)));
        assert!(matches!(
            ex.handle(soon, &advertise(xid, SERVER, "fd00:213::100", Some(200))),
            Received::Advertised(_)
        ));
        ex.handle(soon, &advertise(xid, OTHER_SERVER, "fd00::10", None));
        // Nothing until the first timeout ends; then the Request, to the best.
        let until = waits(&mut ex, soon);
        assert!(until > t0 + SOL_TIMEOUT);
        let req = sends(&mut ex, until);
        assert_eq!(req.msg_type(), MessageType::Request);
        assert_ne!(req.xid(), xid, "a new exchange, a new transaction id");
        assert_eq!(req.opts().get(OptionCode::ServerId), Some(&DhcpOption::ServerId(SERVER.to_vec())));
        // Its Reply (no Rapid Commit needed) binds.
        let reply =
            answer(MessageType::Reply, req.xid(), &id().duid, SERVER, vec![ia_addr("fd00:213::100", 60, 120)], vec![]);
        assert!(matches!(ex.handle(until, &reply), Received::Bound(_)));
        let Step::Done(Ok(lease)) = ex.step(until) else { panic!() };
        assert_eq!((lease.address, lease.preferred_secs, lease.valid_secs), (addr("fd00:213::100"), 60, 120));
        assert!(!lease.rapid_commit);
    }

    #[test]
    fn preference_255_and_late_advertises_are_taken_at_once() {
        let t0 = Instant::now();
        let mut ex = Exchange::new(id(), t0, LIMIT, 3);
        let xid = sends(&mut ex, t0).xid();
        ex.handle(t0, &advertise(xid, SERVER, "fd00::1", Some(255)));
        assert_eq!(sends(&mut ex, t0).msg_type(), MessageType::Request);

        let mut ex = Exchange::new(id(), t0, LIMIT, 4);
        let xid = sends(&mut ex, t0).xid();
        let late = t0 + Duration::from_secs(2);
        let first_timeout = waits(&mut ex, t0);
        assert_eq!(sends(&mut ex, first_timeout).msg_type(), MessageType::Solicit, "nothing came: retransmit");
        ex.handle(late, &advertise(xid, SERVER, "fd00::1", Some(3)));
        assert_eq!(sends(&mut ex, late).msg_type(), MessageType::Request);
    }

    #[test]
    fn a_refused_request_goes_back_to_soliciting_and_says_why_at_the_end() {
        let t0 = Instant::now();
        let mut ex = Exchange::new(id(), t0, LIMIT, 5);
        let xid = sends(&mut ex, t0).xid();
        ex.handle(t0, &advertise(xid, SERVER, "fd00::1", Some(255)));
        let req = sends(&mut ex, t0);
        let refused = answer(
            MessageType::Reply,
            req.xid(),
            &id().duid,
            SERVER,
            vec![status(Status::NoAddrsAvail, "pool exhausted")],
            vec![],
        );
        assert!(matches!(ex.handle(t0, &refused), Received::Refused(_)));
        // A pause, then a Solicit of a new transaction.
        let until = waits(&mut ex, t0);
        assert!(until >= t0 + SOL_TIMEOUT);
        let sol = sends(&mut ex, until);
        assert_eq!(sol.msg_type(), MessageType::Solicit);
        assert_ne!(sol.xid(), req.xid());
        let Step::Done(Err(why)) = ex.step(t0 + LIMIT) else { panic!() };
        assert!(why.contains("NoAddrsAvail (2): pool exhausted"), "{why}");
    }

    #[test]
    fn an_unanswered_request_goes_back_to_soliciting() {
        let t0 = Instant::now();
        let mut ex = Exchange::new(id(), t0, LIMIT, 6);
        let xid = sends(&mut ex, t0).xid();
        ex.handle(t0, &advertise(xid, SERVER, "fd00::1", Some(255)));
        let mut now = t0;
        let mut kinds = vec![];
        while kinds.len() < REQ_MAX_SENDS as usize + 1 {
            match ex.step(now) {
                Step::Send { datagram, .. } => kinds.push(decode(&datagram).msg_type()),
                Step::Wait(until) => now = until,
                Step::Done(o) => panic!("{o:?}"),
            }
        }
        assert!(kinds[..REQ_MAX_SENDS as usize].iter().all(|k| *k == MessageType::Request), "{kinds:?}");
        assert_eq!(kinds.last(), Some(&MessageType::Solicit));
        let Step::Done(Err(why)) = ex.step(t0 + LIMIT) else { panic!() };
        assert!(why.contains("did not answer our Requests"), "{why}");
    }
}
