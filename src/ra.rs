//! IPv6 router advertisements that say "nothing to configure here".
//!
//! iPXE starts IPv6 autoconfiguration next to DHCPv4 and waits for a router
//! advertisement before it runs the boot script: about 13 s on a boot network with no
//! IPv6 router. Answering each router solicitation with an RA that announces no
//! router (lifetime 0), no prefix and no DHCPv6 (M=O=0) ends that wait at once and
//! configures nothing on any host. Enable it (`ipv6_ra: true`) only where no real
//! IPv6 router serves the boot network.

use nix::sys::socket::{recvfrom, sendto, MsgFlags, SockaddrIn6};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
/// RFC 4861 §4.2 and §6.1.2: hop limit 255 proves the RA was not forwarded.
const HOP_LIMIT: u32 = 255;

/// An RFC 4861 §4.2 router advertisement with every field zero: not a default
/// router, no managed/other configuration, no options. The kernel fills the checksum.
pub fn empty_advertisement() -> [u8; 16] {
    let mut ra = [0u8; 16];
    ra[0] = ROUTER_ADVERTISEMENT;
    ra
}

/// Is this ICMPv6 message (as a raw socket delivers it, without the IPv6 header) a
/// router solicitation?
pub fn is_solicitation(icmp: &[u8]) -> bool {
    icmp.len() >= 8 && icmp[0] == ROUTER_SOLICITATION && icmp[1] == 0
}

#[derive(Debug, thiserror::Error)]
pub enum RaError {
    #[error("router advertisements on {interface}: {source}")]
    Socket {
        interface: String,
        #[source]
        source: std::io::Error,
    },
}

/// Answer router solicitations on `interface` until `cancel` fires.
///
/// The load is one packet per booting node, so a blocking thread with a short read
/// timeout (to notice cancellation) is enough, and needs no unsafe fd registration.
pub async fn serve(interface: &str, cancel: CancellationToken) -> Result<(), RaError> {
    let interface = interface.to_string();
    let worker = tokio::task::spawn_blocking(move || answer_solicitations(&interface, &cancel));
    match worker.await {
        Ok(result) => result,
        Err(e) => Err(RaError::Socket { interface: "?".into(), source: std::io::Error::other(e) }),
    }
}

fn answer_solicitations(interface: &str, cancel: &CancellationToken) -> Result<(), RaError> {
    let err = |source: std::io::Error| RaError::Socket { interface: interface.to_string(), source };
    let ifindex = nix::net::if_::if_nametoindex(interface).map_err(|e| err(e.into()))?;
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).map_err(err)?;
    socket.bind_device(Some(interface.as_bytes())).map_err(err)?;
    socket.set_unicast_hops_v6(HOP_LIMIT).map_err(err)?;
    socket.set_multicast_hops_v6(HOP_LIMIT).map_err(err)?;
    socket.set_multicast_if_v6(ifindex).map_err(err)?;
    // Solicitations go to all-routers.
    socket.join_multicast_v6(&Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2), ifindex).map_err(err)?;
    socket.set_read_timeout(Some(Duration::from_millis(500))).map_err(err)?;
    info!(interface, "answering IPv6 router solicitations (no router, no prefix)");
    let ra = empty_advertisement();
    let mut buf = [0u8; 1500];
    while !cancel.is_cancelled() {
        let (len, from) = match recvfrom::<SockaddrIn6>(socket.as_raw_fd(), &mut buf) {
            Ok(x) => x,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                warn!(error = %e, "ICMPv6 receive failed");
                continue;
            }
        };
        if !is_solicitation(&buf[..len]) {
            continue;
        }
        // A solicitation from the unspecified address gets a multicast answer (§6.2.6).
        let to = match from.map(|a| a.ip()).filter(|ip| !ip.is_unspecified()) {
            Some(ip) => SockaddrIn6::from(SocketAddrV6::new(ip, 0, 0, ifindex)),
            None => SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, ifindex)),
        };
        match sendto(socket.as_raw_fd(), &ra, &to, MsgFlags::empty()) {
            Ok(_) => debug!(to = %to, "router advertisement sent"),
            Err(e) => warn!(to = %to, error = %e, "router advertisement not sent"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisement_announces_nothing() {
        let ra = empty_advertisement();
        assert_eq!(ra[0], 134);
        assert!(ra[1..].iter().all(|&b| b == 0), "code, flags, lifetimes and timers all zero");
    }

    #[test]
    fn only_router_solicitations_are_answered() {
        assert!(is_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[133, 1, 0, 0, 0, 0, 0, 0]), "non-zero code is invalid (RFC 4861 §6.1.1)");
        assert!(!is_solicitation(&[135, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[133, 0, 0]));
    }
}
