//! The simulator's DHCP side: what a PXE ROM and then iPXE send (pure builders and
//! readers), and a relay agent socket that carries every simulated node's exchange.
//!
//! The simulator acts as a DHCP relay (giaddr = its own address), so one socket on
//! port 67 serves thousands of MACs and the server's replies come back unicast.

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, Opcode, OptionCode, UnknownOption};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use ramboot_core::node::MacAddr;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Which boot program is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The NIC's PXE ROM: wants a TFTP boot file.
    Firmware,
    /// The chainloaded iPXE: user class `iPXE`, wants the script URL.
    Ipxe,
}

/// One simulated machine as DHCP sees it.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub mac: MacAddr,
    pub arch: u16,
    /// SMBIOS UUID bytes as option 97 carries them.
    pub uuid: [u8; 16],
}

/// What an OFFER or ACK told the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub kind: MessageType,
    pub yiaddr: Ipv4Addr,
    pub server_id: Option<Ipv4Addr>,
    /// siaddr, or option 66 when it is an address.
    pub next_server: Ipv4Addr,
    /// The `file` field, or option 67.
    pub boot_file: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpSimError {
    #[error("no {0:?} after {1} tries")]
    NoAnswer(MessageType, usize),
    #[error("server answered {got:?} instead of {wanted:?}")]
    Refused { wanted: MessageType, got: MessageType },
    #[error("encoding a DHCP message: {0}")]
    Encode(String),
    #[error("DHCP socket: {0}")]
    Io(#[from] std::io::Error),
}

/// A DISCOVER or REQUEST as `stage` sends it. `relay` becomes giaddr.
pub fn message(client: &Client, stage: Stage, xid: u32, relay: Ipv4Addr, kind: MessageType) -> Message {
    let mut msg = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        relay,
        &client.mac.0,
    );
    msg.set_hops(1);
    let o = msg.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::MaxMessageSize(1472));
    o.insert(DhcpOption::ParameterRequestList(
        [1, 3, 6, 12, 15, 43, 54, 60, 66, 67, 97, 119, 175].into_iter().map(OptionCode::from).collect(),
    ));
    o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(client.arch)));
    o.insert(DhcpOption::ClientNetworkInterface(1, 2, 1));
    let mut uuid = vec![0u8];
    uuid.extend_from_slice(&client.uuid);
    o.insert(DhcpOption::ClientMachineIdentifier(uuid));
    let class = format!("PXEClient:Arch:{:05}:UNDI:002001", client.arch);
    o.insert(DhcpOption::ClassIdentifier(class.into_bytes()));
    if stage == Stage::Ipxe {
        // What iPXE sends (LAB.md): user class "iPXE" and its option 175 encapsulation.
        o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        o.insert(DhcpOption::Unknown(UnknownOption::new(175.into(), vec![0xb1, 1, 1])));
    }
    msg
}

/// The REQUEST that takes `offer`.
pub fn request_for(client: &Client, stage: Stage, xid: u32, relay: Ipv4Addr, offer: &Answer) -> Message {
    let mut msg = message(client, stage, xid, relay, MessageType::Request);
    msg.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr));
    if let Some(server) = offer.server_id {
        msg.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    }
    msg
}

/// Read a server reply.
pub fn read_answer(msg: &Message) -> Option<Answer> {
    let kind = match msg.opts().get(OptionCode::MessageType) {
        Some(DhcpOption::MessageType(t)) => *t,
        _ => return None,
    };
    let server_id = match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let text = |bytes: &[u8]| {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        Some(String::from_utf8_lossy(&bytes[..end]).into_owned()).filter(|s| !s.is_empty())
    };
    let boot_file = match msg.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(name)) => text(name),
        _ => msg.fname().and_then(text),
    };
    let option_66 = match msg.opts().get(OptionCode::TFTPServerName) {
        Some(DhcpOption::TFTPServerName(name)) => text(name).and_then(|s| s.parse().ok()),
        _ => None,
    };
    let next_server = match msg.siaddr() {
        ip if !ip.is_unspecified() => ip,
        _ => option_66.or(server_id).unwrap_or(Ipv4Addr::UNSPECIFIED),
    };
    Some(Answer { kind, yiaddr: msg.yiaddr(), server_id, next_server, boot_file })
}

/// Retransmission schedule for one exchange: RFC 2131 §4.1's doubling, shortened
/// because a storm should show slowness as latency, not as a four-minute stall.
const RETRIES: [Duration; 4] =
    [Duration::from_secs(2), Duration::from_secs(4), Duration::from_secs(8), Duration::from_secs(8)];

/// A relay agent socket shared by all simulated nodes: replies are routed to the
/// waiting node by transaction id.
pub struct Relay {
    socket: Arc<UdpSocket>,
    pub address: Ipv4Addr,
    server: SocketAddrV4,
    waiting: Arc<Mutex<HashMap<u32, mpsc::Sender<Message>>>>,
}

impl Relay {
    /// Bind `address:67` and start routing replies, on a thread of its own that
    /// ends when the returned [`Router`] is dropped.
    ///
    /// Why a thread: a reply must reach its node's queue when it arrives, as it
    /// would reach a real node's NIC. A routing task would wait its turn behind
    /// thousands of busy node tasks, and a node whose OFFER sat unread in this
    /// socket would count (and send) a retransmission the server never caused.
    pub async fn bind(address: Ipv4Addr, server: Ipv4Addr) -> Result<(Relay, Router), DhcpSimError> {
        let std_socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        // Thousands of replies can arrive in a burst after the server's group commit.
        let _ = std_socket.set_recv_buffer_size(4 << 20);
        std_socket.set_nonblocking(true)?;
        std_socket.bind(&SocketAddrV4::new(address, 67).into())?;
        let reader = std_socket.try_clone()?;
        let socket = Arc::new(UdpSocket::from_std(std_socket.into())?);
        let waiting: Arc<Mutex<HashMap<u32, mpsc::Sender<Message>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (waiting, stop) = (waiting.clone(), stop.clone());
            std::thread::Builder::new().name("sim-dhcp-relay".into()).spawn(move || route(&reader, &waiting, &stop))?
        };
        let router = Router { stop, thread: Some(thread) };
        Ok((Relay { socket, address, server: SocketAddrV4::new(server, 67), waiting }, router))
    }

    /// Send `msg` and wait for a reply of `wanted` type (a NAK is a refusal),
    /// resending on silence; each resend counts in `resends`.
    pub async fn exchange(
        &self,
        msg: &Message,
        wanted: MessageType,
        resends: &mut u32,
    ) -> Result<Answer, DhcpSimError> {
        let mut bytes = Vec::with_capacity(400);
        msg.encode(&mut Encoder::new(&mut bytes)).map_err(|e| DhcpSimError::Encode(e.to_string()))?;
        let (tx, mut rx) = mpsc::channel(4);
        let xid = msg.xid();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(xid, tx);
        }
        let _unregister = Unregister { waiting: &self.waiting, xid };
        for (attempt, wait) in RETRIES.into_iter().enumerate() {
            if attempt > 0 {
                *resends += 1;
            }
            self.socket.send_to(&bytes, self.server).await?;
            let deadline = tokio::time::Instant::now() + wait;
            while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                match read_answer(&reply) {
                    Some(a) if a.kind == wanted => return Ok(a),
                    Some(a) if a.kind == MessageType::Nak => {
                        return Err(DhcpSimError::Refused { wanted, got: a.kind });
                    }
                    _ => {}
                }
            }
        }
        Err(DhcpSimError::NoAnswer(wanted, RETRIES.len()))
    }

    /// DISCOVER → OFFER → REQUEST → ACK.
    pub async fn dora(
        &self,
        client: &Client,
        stage: Stage,
        xid: u32,
        resends: &mut u32,
    ) -> Result<Answer, DhcpSimError> {
        let discover = message(client, stage, xid, self.address, MessageType::Discover);
        let offer = self.exchange(&discover, MessageType::Offer, resends).await?;
        let request = request_for(client, stage, xid, self.address, &offer);
        let ack = self.exchange(&request, MessageType::Ack, resends).await?;
        // Options a server sends only in the ACK still count; the OFFER's boot file
        // is the fallback.
        Ok(Answer { boot_file: ack.boot_file.clone().or(offer.boot_file), ..ack })
    }
}

/// Read replies from the relay socket (non-blocking: the nodes send on it through
/// tokio) and hand each to the node waiting on its transaction id, until `stop`.
fn route(socket: &socket2::Socket, waiting: &Mutex<HashMap<u32, mpsc::Sender<Message>>>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        // Wakes at least this often to notice `stop`.
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(100u16)).is_err() {
            continue;
        }
        loop {
            let len = match std::io::Read::read(&mut &*socket, &mut buf) {
                Ok(len) => len,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let Ok(msg) = Message::decode(&mut Decoder::new(&buf[..len])) else { continue };
            if msg.opcode() != Opcode::BootReply {
                continue;
            }
            let target = waiting.lock().ok().and_then(|w| w.get(&msg.xid()).cloned());
            if let Some(tx) = target {
                let _ = tx.try_send(msg);
            }
        }
    }
}

/// The relay's reply-routing thread; dropping this stops it.
pub struct Router {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Router {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // At most one poll interval.
            let _ = thread.join();
        }
    }
}

struct Unregister<'a> {
    waiting: &'a Mutex<HashMap<u32, mpsc::Sender<Message>>>,
    xid: u32,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        if let Ok(mut w) = self.waiting.lock() {
            w.remove(&self.xid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramboot_core::dhcp::classify::{classify, Firmware};

    fn client() -> Client {
        Client { mac: MacAddr([2, 0x5a, 0, 0, 0, 7]), arch: 7, uuid: [9; 16] }
    }

    #[test]
    fn ramboot_classifies_what_the_simulator_sends() {
        let relay = Ipv4Addr::new(10, 9, 0, 2);
        let fw = classify(&message(&client(), Stage::Firmware, 1, relay, MessageType::Discover)).unwrap();
        assert_eq!((fw.firmware, fw.arch.map(|a| a.name().into_owned())), (Firmware::Pxe, Some("efi-x64".into())));
        let ipxe = classify(&message(&client(), Stage::Ipxe, 1, relay, MessageType::Discover)).unwrap();
        assert_eq!(ipxe.firmware, Firmware::Ipxe);
        assert!(ipxe.uuid.is_some(), "option 97 is read");
    }

    #[test]
    fn answers_read_the_boot_file_and_next_server() {
        let mut reply = message(&client(), Stage::Firmware, 5, Ipv4Addr::UNSPECIFIED, MessageType::Offer);
        reply.set_opcode(Opcode::BootReply).set_yiaddr(Ipv4Addr::new(10, 9, 0, 50));
        reply.set_siaddr(Ipv4Addr::new(10, 9, 0, 1)).set_fname_str("ipxe.efi");
        let a = read_answer(&reply).unwrap();
        assert_eq!(a.kind, MessageType::Offer);
        assert_eq!((a.yiaddr, a.next_server), (Ipv4Addr::new(10, 9, 0, 50), Ipv4Addr::new(10, 9, 0, 1)));
        assert_eq!(a.boot_file.as_deref(), Some("ipxe.efi"));
        reply.opts_mut().insert(DhcpOption::BootfileName(b"http://x/boot.ipxe\0".to_vec()));
        assert_eq!(read_answer(&reply).unwrap().boot_file.as_deref(), Some("http://x/boot.ipxe"));
    }
}
