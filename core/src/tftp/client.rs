//! A TFTP read (download) as a pure state machine, the client's side of
//! [`super::core`]: packets in, packets to send and bytes to keep out. The fleet
//! simulator drives it over a socket the way a PXE ROM does (RRQ with blksize,
//! tsize and optionally windowsize, ACK per window, resend the last ACK on silence).

use super::session::{code, error_packet, OP_ACK, OP_DATA, OP_ERROR, OP_OACK, OP_RRQ};

/// What a client asks for in its RRQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub filename: String,
    pub blksize: Option<u16>,
    pub windowsize: Option<u16>,
    /// Ask for the file size (RFC 2349) and check the download against it.
    pub tsize: bool,
}

impl ReadRequest {
    /// The RRQ packet, octet mode, options in RFC order.
    pub fn packet(&self) -> Vec<u8> {
        let mut p = OP_RRQ.to_be_bytes().to_vec();
        let mut field = |s: &str| {
            p.extend_from_slice(s.as_bytes());
            p.push(0);
        };
        field(&self.filename);
        field("octet");
        if let Some(b) = self.blksize {
            field("blksize");
            field(&b.to_string());
        }
        if self.tsize {
            field("tsize");
            field("0");
        }
        if let Some(w) = self.windowsize {
            field("windowsize");
            field(&w.to_string());
        }
        p
    }
}

/// A packet from the server's transfer port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerPacket<'a> {
    Oack(Vec<(String, String)>),
    Data { block: u16, payload: &'a [u8] },
    Error { code: u16, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    #[error("server error {code}: {message}")]
    Server { code: u16, message: String },
    #[error("malformed packet from the server: {0}")]
    Malformed(&'static str),
    #[error("server granted an option it was not asked for, or a bad value: {0}")]
    BadOption(String),
    #[error("got {got} bytes but the server announced tsize {announced}")]
    SizeMismatch { got: u64, announced: u64 },
    #[error("no answer after {0} tries")]
    Timeout(u32),
}

pub fn parse_server(bytes: &[u8]) -> Result<ServerPacket<'_>, DownloadError> {
    let (op, rest) = match bytes {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        _ => return Err(DownloadError::Malformed("shorter than an opcode")),
    };
    match (op, rest) {
        (OP_DATA, [a, b, payload @ ..]) => Ok(ServerPacket::Data { block: u16::from_be_bytes([*a, *b]), payload }),
        (OP_ERROR, [a, b, text @ ..]) => Ok(ServerPacket::Error {
            code: u16::from_be_bytes([*a, *b]),
            message: String::from_utf8_lossy(text.split(|&c| c == 0).next().unwrap_or_default()).into_owned(),
        }),
        (OP_OACK, body) => {
            let body = body.strip_suffix(&[0]).ok_or(DownloadError::Malformed("OACK not NUL-terminated"))?;
            let fields: Vec<String> =
                body.split(|&c| c == 0).map(|f| String::from_utf8_lossy(f).to_ascii_lowercase()).collect();
            if fields.len() % 2 != 0 {
                return Err(DownloadError::Malformed("OACK option without a value"));
            }
            Ok(ServerPacket::Oack(fields.chunks(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect()))
        }
        _ => Err(DownloadError::Malformed("unexpected opcode")),
    }
}

fn ack(block: u16) -> Vec<u8> {
    let mut p = OP_ACK.to_be_bytes().to_vec();
    p.extend_from_slice(&block.to_be_bytes());
    p
}

/// What the driver does after a packet or a timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'a> {
    /// Keep these bytes (the next ones of the file, in order), then send `reply` if
    /// any. After the last block, [`Download::is_complete`] is true.
    Data { keep: &'a [u8], reply: Option<Vec<u8>> },
    /// Send this (an ACK, the RRQ again, or an ERROR) and keep waiting.
    Send(Vec<u8>),
    /// A stray or duplicate packet: nothing to do.
    Wait,
    /// Stop: the download failed (send `reply` first if any).
    Failed { error: DownloadError, reply: Option<Vec<u8>> },
}

/// One download in progress.
#[derive(Debug)]
pub struct Download {
    request: ReadRequest,
    blksize: usize,
    windowsize: u64,
    tsize: Option<u64>,
    /// Index of the last block received in order (0: none yet). Wire block numbers
    /// are this modulo 65536, rolling over to 0.
    received: u64,
    /// Blocks received in order since the last ACK.
    in_window: u64,
    /// A gap was ACKed: ignore the rest of that window until the resent block comes.
    gap_acked: bool,
    bytes: u64,
    /// Whether the server has answered at all (until then a timeout resends the RRQ).
    answered: bool,
    last_sent: Vec<u8>,
    tries: u32,
    max_tries: u32,
}

impl Download {
    /// Start a download: the RRQ to send to the server port.
    pub fn start(request: ReadRequest, max_tries: u32) -> (Download, Vec<u8>) {
        let rrq = request.packet();
        let d = Download {
            request,
            blksize: 512,
            windowsize: 1,
            tsize: None,
            received: 0,
            in_window: 0,
            gap_acked: false,
            bytes: 0,
            answered: false,
            last_sent: rrq.clone(),
            tries: 0,
            max_tries,
        };
        (d, rrq)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The negotiated (blksize, windowsize, tsize).
    pub fn negotiated(&self) -> (usize, u64, Option<u64>) {
        (self.blksize, self.windowsize, self.tsize)
    }

    fn send(&mut self, packet: Vec<u8>) -> Vec<u8> {
        self.last_sent = packet.clone();
        packet
    }

    fn fail(&self, error: DownloadError) -> Step<'static> {
        let reply = match &error {
            DownloadError::BadOption(_) => Some(error_packet(code::OPTION_REFUSED, "option not requested")),
            DownloadError::Malformed(_) => Some(error_packet(code::ILLEGAL_OPERATION, "malformed packet")),
            _ => None,
        };
        Step::Failed { error, reply }
    }

    pub fn on_packet<'p>(&mut self, bytes: &'p [u8]) -> Step<'p> {
        let packet = match parse_server(bytes) {
            Ok(p) => p,
            Err(e) => return self.fail(e),
        };
        self.tries = 0;
        match packet {
            ServerPacket::Error { code, message } => {
                Step::Failed { error: DownloadError::Server { code, message }, reply: None }
            }
            ServerPacket::Oack(options) => {
                if self.answered {
                    return Step::Wait; // a resent OACK: our ACK 0 will be resent on timeout
                }
                self.answered = true;
                if let Err(e) = self.accept_options(&options) {
                    return self.fail(e);
                }
                Step::Send(self.send(ack(0)))
            }
            ServerPacket::Data { block, payload } => {
                if !self.answered {
                    // No OACK: the server ignored our options (RFC 2347 allows it).
                    self.answered = true;
                }
                let expected = self.received + 1;
                if block != expected as u16 {
                    // Out of order inside a window: ACK what we have so the server
                    // restarts the window after it (RFC 7440 §4). Old duplicates are ignored.
                    let behind = (self.received as u16).wrapping_sub(block);
                    if behind < 0x8000 || self.gap_acked {
                        return Step::Wait;
                    }
                    self.in_window = 0;
                    self.gap_acked = true;
                    return Step::Send(self.send(ack(self.received as u16)));
                }
                if payload.len() > self.blksize {
                    return self.fail(DownloadError::Malformed("DATA larger than the block size"));
                }
                self.received = expected;
                self.bytes += payload.len() as u64;
                self.in_window += 1;
                self.gap_acked = false;
                if payload.len() < self.blksize {
                    if let Some(announced) = self.tsize.filter(|&t| t != self.bytes) {
                        let error = DownloadError::SizeMismatch { got: self.bytes, announced };
                        return Step::Failed { error, reply: None };
                    }
                    return Step::Data { keep: payload, reply: Some(self.send(ack(block))) };
                }
                let reply = (self.in_window >= self.windowsize).then(|| {
                    self.in_window = 0;
                    self.send(ack(block))
                });
                Step::Data { keep: payload, reply }
            }
        }
    }

    /// Whether the last block has arrived (after a [`Step::Data`] carrying it).
    pub fn is_complete(&self) -> bool {
        self.answered && self.received > 0 && self.bytes < self.received * self.blksize as u64
    }

    /// Nothing heard for a while: resend the RRQ or the last ACK, up to the limit.
    pub fn on_timeout(&mut self) -> Step<'static> {
        self.tries += 1;
        if self.tries >= self.max_tries {
            return Step::Failed { error: DownloadError::Timeout(self.tries), reply: None };
        }
        self.in_window = 0;
        Step::Send(self.last_sent.clone())
    }

    fn accept_options(&mut self, options: &[(String, String)]) -> Result<(), DownloadError> {
        for (name, value) in options {
            let bad = || DownloadError::BadOption(format!("{name}={value}"));
            let n: u64 = value.parse().map_err(|_| bad())?;
            match name.as_str() {
                "blksize" => {
                    let asked = self.request.blksize.ok_or_else(bad)?;
                    if n < 8 || n > u64::from(asked) {
                        return Err(bad());
                    }
                    self.blksize = n as usize;
                }
                "windowsize" => {
                    let asked = self.request.windowsize.ok_or_else(bad)?;
                    if n < 1 || n > u64::from(asked) {
                        return Err(bad());
                    }
                    self.windowsize = n;
                }
                "tsize" if self.request.tsize => self.tsize = Some(n),
                _ => return Err(bad()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tftp::session::{negotiate, parse_request, Limits};

    fn data(block: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = OP_DATA.to_be_bytes().to_vec();
        p.extend_from_slice(&block.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn oack(options: &[(&str, &str)]) -> Vec<u8> {
        let mut p = OP_OACK.to_be_bytes().to_vec();
        for (k, v) in options {
            for s in [k, v] {
                p.extend_from_slice(s.as_bytes());
                p.push(0);
            }
        }
        p
    }

    fn request() -> ReadRequest {
        ReadRequest { filename: "undionly.kpxe".into(), blksize: Some(1468), windowsize: Some(4), tsize: true }
    }

    #[test]
    fn the_server_core_reads_our_request() {
        let parsed = parse_request(&request().packet()).unwrap();
        assert_eq!(parsed.filename, "undionly.kpxe");
        assert_eq!(parsed.mode, "octet");
        let n = negotiate(&parsed.options, 5000, &Limits::default());
        // And we read the server core's OACK.
        let (mut d, _) = Download::start(request(), 5);
        assert_eq!(d.on_packet(&n.oack.unwrap()), Step::Send(ack(0)));
        assert_eq!(d.negotiated(), (1468, 4, Some(5000)));
    }

    #[test]
    fn windowed_download_acks_each_window_and_the_end() {
        let (mut d, _) = Download::start(request(), 5);
        let o = oack(&[("blksize", "8"), ("tsize", "20"), ("windowsize", "2")]);
        assert_eq!(d.on_packet(&o), Step::Send(ack(0)));
        let (b1, b2, b3) = (data(1, &[1; 8]), data(2, &[2; 8]), data(3, &[3; 4]));
        assert_eq!(d.on_packet(&b1), Step::Data { keep: &[1; 8], reply: None });
        assert_eq!(d.on_packet(&b2), Step::Data { keep: &[2; 8], reply: Some(ack(2)) });
        assert_eq!(d.on_packet(&b3), Step::Data { keep: &[3; 4], reply: Some(ack(3)) });
        assert!(d.is_complete());
        assert_eq!(d.bytes(), 20);
    }

    #[test]
    fn a_gap_in_the_window_acks_the_last_block_in_order_and_ignores_stale_blocks() {
        let (mut d, _) = Download::start(request(), 5);
        d.on_packet(&oack(&[("blksize", "8"), ("windowsize", "4")]));
        d.on_packet(&data(1, &[0; 8]));
        assert_eq!(d.on_packet(&data(3, &[0; 8])), Step::Send(ack(1)), "block 2 lost");
        assert_eq!(d.on_packet(&data(4, &[0; 8])), Step::Wait, "rest of the broken window");
        assert_eq!(d.on_packet(&data(1, &[0; 8])), Step::Wait, "duplicate");
        assert!(matches!(d.on_packet(&data(2, &[0; 8])), Step::Data { .. }));
    }

    #[test]
    fn without_an_oack_the_defaults_apply_and_an_empty_last_block_finishes() {
        let (mut d, _) = Download::start(request(), 5);
        assert!(matches!(d.on_packet(&data(1, &[0; 512])), Step::Data { reply: Some(_), .. }));
        assert!(!d.is_complete());
        assert_eq!(d.on_packet(&data(2, &[])), Step::Data { keep: &[], reply: Some(ack(2)) });
        assert!(d.is_complete());
    }

    #[test]
    fn unasked_options_tsize_mismatch_errors_and_timeouts_fail() {
        let (mut d, _) = Download::start(ReadRequest { windowsize: None, ..request() }, 3);
        assert!(matches!(d.on_packet(&oack(&[("windowsize", "8")])), Step::Failed { reply: Some(_), .. }));

        let (mut d, _) = Download::start(request(), 3);
        d.on_packet(&oack(&[("blksize", "8"), ("tsize", "99")]));
        assert!(matches!(
            d.on_packet(&data(1, &[0; 3])),
            Step::Failed { error: DownloadError::SizeMismatch { got: 3, announced: 99 }, .. }
        ));

        let (mut d, rrq) = Download::start(request(), 3);
        assert_eq!(d.on_timeout(), Step::Send(rrq));
        d.on_timeout();
        assert!(matches!(d.on_timeout(), Step::Failed { error: DownloadError::Timeout(3), .. }));

        let (mut d, _) = Download::start(request(), 3);
        let err = crate::tftp::session::error_packet(1, "File not found");
        assert!(matches!(d.on_packet(&err), Step::Failed { error: DownloadError::Server { code: 1, .. }, .. }));
    }

    #[test]
    fn block_numbers_roll_over_to_zero() {
        let (mut d, _) = Download::start(ReadRequest { windowsize: None, ..request() }, 3);
        d.on_packet(&oack(&[("blksize", "8")]));
        for i in 1..=65_535u32 {
            assert!(matches!(d.on_packet(&data(i as u16, &[0; 8])), Step::Data { .. }));
        }
        assert!(matches!(d.on_packet(&data(0, &[0; 8])), Step::Data { reply: Some(_), .. }));
        assert_eq!(d.on_packet(&data(1, &[])), Step::Data { keep: &[], reply: Some(ack(1)) });
        assert!(d.is_complete());
        assert_eq!(d.bytes(), 65_536 * 8);
    }
}
