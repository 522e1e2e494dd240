//! `IP_PKTINFO` on UDP sockets: which local address and interface a datagram
//! arrived on, and sending a datagram from a chosen local address. A server bound to
//! `0.0.0.0` needs both to answer from the address a client spoke to: NIC firmware
//! drops answers from any other (pin/tftp issue 58, danderson/netboot issue 122).
//!
//! Only socket plumbing lives here; which address to answer from is the caller's
//! decision. IPv4 only (IPv6 would be `IPV6_RECVPKTINFO`).

use nix::sys::socket::{self as sock, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn};
use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// One datagram's `IP_PKTINFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    /// The local address the packet reached: the header's destination for unicast,
    /// the interface's primary address for a broadcast (the kernel's
    /// `ipi_spec_dst`). The address to answer from.
    pub local: Ipv4Addr,
    /// The IP header's destination.
    pub header_dst: Ipv4Addr,
    /// The interface it arrived on (0: unknown).
    pub ifindex: u32,
}

/// Ask the kernel for `IP_PKTINFO` on every datagram `socket` receives.
pub fn enable(socket: &impl AsFd) -> std::io::Result<()> {
    sock::setsockopt(socket, sock::sockopt::Ipv4PacketInfo, &true).map_err(std::io::Error::from)
}

/// Receive one datagram with its `IP_PKTINFO` (see [`enable`]): (length, sender,
/// where it arrived). A datagram without the control message (the option off)
/// reports unspecified addresses and interface 0.
pub async fn recv_from(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddrV4, PacketInfo)> {
    socket.async_io(Interest::READABLE, || recv_now(socket, buf, Wait::No)).await
}

/// Whether a call on a blocking socket may wait (a non-blocking socket never does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Yes,
    No,
}

impl Wait {
    fn flags(self) -> MsgFlags {
        match self {
            Wait::Yes => MsgFlags::empty(),
            Wait::No => MsgFlags::MSG_DONTWAIT,
        }
    }
}

/// One `recvmsg` with its `IP_PKTINFO`, from any thread: with [`Wait::No`],
/// `WouldBlock` when nothing is queued; with [`Wait::Yes`] on a blocking socket,
/// until a datagram comes or the socket's receive timeout passes.
pub fn recv_now(
    socket: &impl AsRawFd,
    buf: &mut [u8],
    wait: Wait,
) -> std::io::Result<(usize, SocketAddrV4, PacketInfo)> {
    let mut cmsg = nix::cmsg_space!(nix::libc::in_pktinfo);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = sock::recvmsg::<SockaddrIn>(socket.as_raw_fd(), &mut iov, Some(&mut cmsg), wait.flags())?;
    let peer = msg.address.map_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), SocketAddrV4::from);
    let mut info = PacketInfo { local: Ipv4Addr::UNSPECIFIED, header_dst: Ipv4Addr::UNSPECIFIED, ifindex: 0 };
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::Ipv4PacketInfo(pi) = c {
            info.local = Ipv4Addr::from(u32::from_be(pi.ipi_spec_dst.s_addr));
            info.header_dst = Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr));
            info.ifindex = u32::try_from(pi.ipi_ifindex).unwrap_or(0);
        }
    }
    Ok((msg.bytes, peer, info))
}

/// Send `bytes` to `dest` from local address `source` (unspecified: the kernel
/// chooses), so a multi-homed host answers from the address the client spoke to.
pub async fn send_from(
    socket: &UdpSocket,
    bytes: &[u8],
    dest: SocketAddrV4,
    source: Ipv4Addr,
) -> std::io::Result<usize> {
    socket.async_io(Interest::WRITABLE, || send_from_now(socket, bytes, dest, source, Wait::No)).await
}

/// [`send_from`] from any thread: one `sendmsg`. With [`Wait::No`], `WouldBlock`
/// if the send buffer is full; with [`Wait::Yes`] on a blocking socket, it waits
/// for room.
pub fn send_from_now(
    socket: &impl AsRawFd,
    bytes: &[u8],
    dest: SocketAddrV4,
    source: Ipv4Addr,
    wait: Wait,
) -> std::io::Result<usize> {
    let info = nix::libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: nix::libc::in_addr { s_addr: u32::from(source).to_be() },
        ipi_addr: nix::libc::in_addr { s_addr: 0 },
    };
    let dest = SockaddrIn::from(dest);
    let cmsgs: &[ControlMessage] = if source.is_unspecified() { &[] } else { &[ControlMessage::Ipv4PacketInfo(&info)] };
    Ok(sock::sendmsg(socket.as_raw_fd(), &[IoSlice::new(bytes)], cmsgs, wait.flags(), Some(&dest))?)
}

/// The MTU of interface `ifindex` (from sysfs, in this process's network namespace
/// as mounted), or `None` if it cannot be read.
pub fn interface_mtu(ifindex: u32) -> Option<u32> {
    if ifindex == 0 {
        return None;
    }
    let name = nix::net::if_::if_indextoname(ifindex).ok()?;
    let name = name.to_str().ok()?;
    // A name is never a path: refuse anything that could leave /sys/class/net.
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    std::fs::read_to_string(format!("/sys/class/net/{name}/mtu")).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_datagrams_carry_their_destination_and_interface() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        enable(&server).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"hello", server.local_addr().unwrap()).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, peer, info) = recv_from(&server, &mut buf).await.unwrap();
        assert_eq!((&buf[..n], std::net::SocketAddr::V4(peer)), (&b"hello"[..], client.local_addr().unwrap()));
        assert_eq!((info.local, info.header_dst), (Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST));
        let lo = nix::net::if_::if_nametoindex("lo").unwrap();
        assert_eq!(info.ifindex, lo);
        assert_eq!(interface_mtu(info.ifindex), Some(65536), "loopback's MTU");
        assert_eq!(interface_mtu(0), None);

        send_from(&server, b"back", peer, Ipv4Addr::LOCALHOST).await.unwrap();
        let (n, from) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (&b"back"[..], server.local_addr().unwrap()));
    }
}
