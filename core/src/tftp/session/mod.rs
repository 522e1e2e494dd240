//! The TFTP read session as a pure state machine: bytes and timeouts in, packets
//! to send out. No sockets, no clock, no file access: the socket layer reads the
//! byte ranges a [`Datagram::Data`] names and owns the timer.
//!
//! RFC 1350 (the protocol), 2347 (option negotiation), 2348 (blksize), 2349
//! (timeout, tsize) and 7440 (windowsize). A client's ERROR ends the session at
//! once (PXE ROMs send ERROR 8 after reading tsize from the OACK); duplicate ACKs
//! never trigger a resend (the Sorcerer's Apprentice bug); an ACK inside a window
//! restarts the window after it (RFC 7440 §4); timeouts resend with back-off.

use std::time::Duration;

pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

/// TFTP error codes (RFC 1350 §5, RFC 2347).
pub mod code {
    pub const NOT_DEFINED: u16 = 0;
    pub const FILE_NOT_FOUND: u16 = 1;
    pub const ACCESS_VIOLATION: u16 = 2;
    pub const ILLEGAL_OPERATION: u16 = 4;
    pub const OPTION_REFUSED: u16 = 8;
}

/// A request on the server port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub write: bool,
    pub filename: String,
    pub mode: String,
    /// Option names lower-cased, in the order sent.
    pub options: Vec<(String, String)>,
}

/// A packet a client sends on a session's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPacket {
    Ack(u16),
    Error {
        code: u16,
        message: String,
    },
    /// Anything else (DATA to a read session, a stray request, ...).
    Other(u16),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("packet shorter than its opcode")]
    Short,
    #[error("opcode {0} is not a request")]
    NotARequest(u16),
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

/// Parse a request (RRQ or WRQ): opcode, then NUL-terminated filename, mode, and
/// option name/value pairs.
pub fn parse_request(bytes: &[u8]) -> Result<Request, ParseError> {
    let opcode = opcode(bytes)?;
    if opcode != OP_RRQ && opcode != OP_WRQ {
        return Err(ParseError::NotARequest(opcode));
    }
    let body = &bytes[2..];
    let body = body.strip_suffix(&[0]).ok_or(ParseError::Malformed("not NUL-terminated"))?;
    let mut fields =
        body.split(|&b| b == 0).map(|f| std::str::from_utf8(f).map_err(|_| ParseError::Malformed("not UTF-8")));
    let filename = fields.next().ok_or(ParseError::Malformed("no filename"))??.to_string();
    let mode = fields.next().ok_or(ParseError::Malformed("no mode"))??.to_ascii_lowercase();
    let mut options = Vec::new();
    while let Some(name) = fields.next() {
        let value = fields.next().ok_or(ParseError::Malformed("option without a value"))??;
        options.push((name?.to_ascii_lowercase(), value.to_string()));
    }
    if filename.is_empty() {
        return Err(ParseError::Malformed("empty filename"));
    }
    Ok(Request { write: opcode == OP_WRQ, filename, mode, options })
}

pub fn parse_client(bytes: &[u8]) -> Result<ClientPacket, ParseError> {
    match opcode(bytes)? {
        OP_ACK if bytes.len() >= 4 => Ok(ClientPacket::Ack(u16::from_be_bytes([bytes[2], bytes[3]]))),
        OP_ERROR if bytes.len() >= 4 => {
            let text = &bytes[4..];
            let text = text.split(|&b| b == 0).next().unwrap_or_default();
            Ok(ClientPacket::Error {
                code: u16::from_be_bytes([bytes[2], bytes[3]]),
                message: String::from_utf8_lossy(text).into_owned(),
            })
        }
        other => Ok(ClientPacket::Other(other)),
    }
}

fn opcode(bytes: &[u8]) -> Result<u16, ParseError> {
    match bytes {
        [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(ParseError::Short),
    }
}

pub fn error_packet(code: u16, message: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + message.len());
    p.extend_from_slice(&OP_ERROR.to_be_bytes());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(message.as_bytes());
    p.push(0);
    p
}

/// The header of a DATA packet for wire block number `block`.
pub fn data_header(block: u16) -> [u8; 4] {
    let [a, b] = OP_DATA.to_be_bytes();
    let [c, d] = block.to_be_bytes();
    [a, b, c, d]
}

/// What a DATA packet adds to its block on the wire: IPv4 (20), UDP (8) and TFTP
/// (4) headers. A block of `mtu − 32` bytes fills one frame exactly.
pub const DATA_OVERHEAD: u32 = 32;
/// RFC 2348's bounds on `blksize`.
pub const BLKSIZE_RANGE: std::ops::RangeInclusive<u16> = 8..=65464;

/// What the server allows; clients negotiate down from it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest block: 1468 fits one Ethernet frame (1500 − IP − UDP − TFTP headers).
    /// Per session it is lowered further to the link's MTU ([`Limits::for_link_mtu`]).
    pub max_blksize: u16,
    pub max_windowsize: u16,
    /// Resend timeout when the client asks for none, or for one out of bounds.
    pub default_timeout: Duration,
    /// The client's `timeout` option (RFC 2349) is accepted only within these
    /// bounds (whole seconds). A long one would let a silent client hold a session
    /// for minutes of back-off (255 s ×8 per resend).
    pub min_timeout_secs: u8,
    pub max_timeout_secs: u8,
    /// Resends of one window before the session is given up.
    pub max_retries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blksize: 1468,
            max_windowsize: 64,
            default_timeout: Duration::from_secs(1),
            min_timeout_secs: 1,
            max_timeout_secs: 10,
            max_retries: 5,
        }
    }
}

impl Limits {
    /// These limits for a client reached over a link of `mtu` bytes: the block size
    /// is capped so one DATA packet fits one frame. A bigger block would leave as IP
    /// fragments, which UNDI ROMs drop (pixiecore uses 1450; smee cut to 1400 under
    /// overlays, its issue 70). The configured `max_blksize` still applies below it.
    pub fn for_link_mtu(self, mtu: u32) -> Limits {
        let fits = mtu.saturating_sub(DATA_OVERHEAD);
        let fits = fits.clamp(u32::from(*BLKSIZE_RANGE.start()), u32::from(*BLKSIZE_RANGE.end())) as u16;
        Limits { max_blksize: self.max_blksize.min(fits), ..self }
    }
}

/// The session's parameters after negotiation, and the OACK to send (if the
/// client asked for any option we honour).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    pub timeout: Duration,
    pub oack: Option<Vec<u8>>,
}

/// RFC 2347: answer each recognised option with the value we use; ignore the rest.
pub fn negotiate(options: &[(String, String)], file_len: u64, limits: &Limits) -> Negotiated {
    let mut n = Negotiated { blksize: 512, windowsize: 1, timeout: limits.default_timeout, oack: None };
    let mut acked: Vec<(&str, String)> = Vec::new();
    for (name, value) in options {
        let Ok(v) = value.parse::<u64>() else { continue };
        match name.as_str() {
            // RFC 2348: 8..=65464; we answer with no more than the path allows (the
            // smallest of the client's ask, `max_blksize` and the link's MTU).
            "blksize" if (u64::from(*BLKSIZE_RANGE.start())..=u64::from(*BLKSIZE_RANGE.end())).contains(&v) => {
                n.blksize = (v as u16).min(limits.max_blksize);
                acked.push(("blksize", n.blksize.to_string()));
            }
            "windowsize" if (1..=65535).contains(&v) => {
                n.windowsize = (v as u16).min(limits.max_windowsize);
                acked.push(("windowsize", n.windowsize.to_string()));
            }
            // RFC 2349 §"Timeout Interval": the OACK must carry the client's value
            // unchanged, so a value out of our bounds cannot be clamped in the answer:
            // it is declined (left out of the OACK) and the server keeps its default.
            "timeout" if timeout_accepted(v, limits) => {
                n.timeout = Duration::from_secs(v);
                acked.push(("timeout", v.to_string()));
            }
            // RFC 2349: a read request carries 0; the answer is the file's size.
            "tsize" => acked.push(("tsize", file_len.to_string())),
            _ => {}
        }
    }
    if !acked.is_empty() {
        let mut p = OP_OACK.to_be_bytes().to_vec();
        for (name, value) in acked {
            p.extend_from_slice(name.as_bytes());
            p.push(0);
            p.extend_from_slice(value.as_bytes());
            p.push(0);
        }
        n.oack = Some(p);
    }
    n
}

/// RFC 2349 allows 1..=255 s; we accept only what `limits` allow.
fn timeout_accepted(secs: u64, limits: &Limits) -> bool {
    (1..=255).contains(&secs)
        && (u64::from(limits.min_timeout_secs)..=u64::from(limits.max_timeout_secs)).contains(&secs)
}

/// One packet to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datagram {
    /// The option acknowledgement (bytes as built by [`negotiate`]).
    Oack,
    /// DATA for block `index` (1-based, not wrapped): the file's bytes
    /// `offset..offset + len`, sent with wire block number `index as u16`.
    Data { index: u64, offset: u64, len: usize },
}

/// What the socket layer does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these, then wait for the client (up to [`Session::timeout`]).
    Send(Vec<Datagram>),
    /// Nothing to send; keep waiting.
    Wait,
    /// The last block is acknowledged.
    Done,
    /// The session ends without success.
    Abort(AbortReason),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbortReason {
    #[error("client sent ERROR {code}: {message}")]
    ClientError { code: u16, message: String },
    #[error("no answer after {0} resends")]
    Timeout(u32),
    /// The client's port is closed (ICMP port unreachable): its transfer is over,
    /// typically a late repeat of a request whose transfer already finished.
    #[error("the client's port is closed (it no longer waits for this transfer)")]
    ClientGone,
    #[error("unexpected opcode {0} from the client")]
    Unexpected(u16),
}

impl AbortReason {
    /// A PXE ROM reading `tsize` and aborting (ERROR 8) is routine, not a failure.
    pub fn is_tsize_probe(&self) -> bool {
        matches!(self, AbortReason::ClientError { code: code::OPTION_REFUSED, .. })
    }

    /// The metric label of a session that ended this way.
    pub fn outcome(&self) -> &'static str {
        match self {
            _ if self.is_tsize_probe() => "tsize_probe",
            AbortReason::ClientGone => "client_gone",
            _ => "aborted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// OACK sent; waiting for ACK 0.
    Negotiating,
    Transferring,
    Finished,
}

/// One read transfer.
#[derive(Debug, Clone)]
pub struct Session {
    blksize: u64,
    windowsize: u64,
    file_len: u64,
    /// Blocks in the file: the last is shorter than blksize (possibly empty).
    blocks: u64,
    /// Highest block index the client acknowledged (0: none yet).
    acked: u64,
    phase: Phase,
    base_timeout: Duration,
    retries: u32,
    max_retries: u32,
}

impl Session {
    /// A session for a file of `file_len` bytes, and the first packets to send.
    pub fn start(n: &Negotiated, file_len: u64, limits: &Limits) -> (Session, Step) {
        let blksize = u64::from(n.blksize.max(8));
        let s = Session {
            blksize,
            windowsize: u64::from(n.windowsize.max(1)),
            file_len,
            blocks: file_len / blksize + 1,
            acked: 0,
            phase: if n.oack.is_some() { Phase::Negotiating } else { Phase::Transferring },
            base_timeout: n.timeout,
            retries: 0,
            max_retries: limits.max_retries,
        };
        let step = if s.phase == Phase::Negotiating { Step::Send(vec![Datagram::Oack]) } else { s.window() };
        (s, step)
    }

    /// How long to wait for the client now: doubles with each resend, up to 8×.
    pub fn timeout(&self) -> Duration {
        self.base_timeout.saturating_mul(1 << self.retries.min(3))
    }

    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// The window after the last acknowledged block.
    fn window(&self) -> Step {
        let first = self.acked + 1;
        let last = (self.acked + self.windowsize).min(self.blocks);
        Step::Send(
            (first..=last)
                .map(|index| {
                    let offset = (index - 1) * self.blksize;
                    let len = self.blksize.min(self.file_len - offset) as usize;
                    Datagram::Data { index, offset, len }
                })
                .collect(),
        )
    }

    /// The block index a wire ACK number stands for, if it acknowledges something
    /// new: one of the blocks after `acked`, up to the end of the current window.
    fn ack_index(&self, wire: u16) -> Option<u64> {
        let last_sent = (self.acked + self.windowsize).min(self.blocks);
        let ahead = u64::from(wire.wrapping_sub(self.acked as u16));
        (ahead >= 1 && self.acked + ahead <= last_sent).then_some(self.acked + ahead)
    }

    /// A packet from the client.
    pub fn on_packet(&mut self, packet: &ClientPacket) -> Step {
        if self.phase == Phase::Finished {
            return Step::Done;
        }
        match *packet {
            ClientPacket::Error { code, ref message } => {
                self.phase = Phase::Finished;
                Step::Abort(AbortReason::ClientError { code, message: message.clone() })
            }
            ClientPacket::Ack(0) if self.phase == Phase::Negotiating => {
                self.phase = Phase::Transferring;
                self.retries = 0;
                self.window()
            }
            ClientPacket::Ack(wire) if self.phase == Phase::Transferring => match self.ack_index(wire) {
                Some(index) => {
                    self.acked = index;
                    self.retries = 0;
                    if index == self.blocks {
                        self.phase = Phase::Finished;
                        Step::Done
                    } else {
                        // Whole window acknowledged, or a partial ACK (the client
                        // lost what followed): either way send on from here.
                        self.window()
                    }
                }
                // A duplicate or stale ACK: resending on it would double the traffic.
                None => Step::Wait,
            },
            ClientPacket::Ack(_) => Step::Wait,
            ClientPacket::Other(op) => {
                self.phase = Phase::Finished;
                Step::Abort(AbortReason::Unexpected(op))
            }
        }
    }

    /// The client sent its read request again (same bytes, same port) while this
    /// session runs. Before the client has answered anything, that means our first
    /// packet was lost or late: send it again now, without counting a resend (the
    /// client is there). Once the client has answered, the repeat is stale: it
    /// stays with this session, so a second session would resend into the void.
    pub fn on_repeated_request(&mut self) -> Step {
        match self.phase {
            Phase::Negotiating => Step::Send(vec![Datagram::Oack]),
            Phase::Transferring if self.acked == 0 => self.window(),
            Phase::Transferring => Step::Wait,
            Phase::Finished => Step::Done,
        }
    }

    /// The client's port is closed: nobody will ever answer, so resending is waste.
    pub fn on_client_gone(&mut self) -> Step {
        if self.phase == Phase::Finished {
            return Step::Done;
        }
        self.phase = Phase::Finished;
        Step::Abort(AbortReason::ClientGone)
    }

    /// The timer ran out: resend what is unacknowledged, or give up.
    pub fn on_timeout(&mut self) -> Step {
        if self.phase == Phase::Finished {
            return Step::Done;
        }
        if self.retries >= self.max_retries {
            self.phase = Phase::Finished;
            return Step::Abort(AbortReason::Timeout(self.retries));
        }
        self.retries += 1;
        match self.phase {
            Phase::Negotiating => Step::Send(vec![Datagram::Oack]),
            _ => self.window(),
        }
    }
}

#[cfg(test)]
mod tests;
