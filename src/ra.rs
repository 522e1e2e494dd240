//! IPv6 router advertisements on the boot network, of two kinds:
//!
//! - **Empty** (`ipv6_ra: true` on an IPv4 boot network): iPXE starts IPv6
//!   autoconfiguration next to DHCPv4 and waits for a router advertisement before
//!   it runs the boot script: about 13 s on a boot network with no IPv6 router.
//!   Answering each router solicitation with an RA that announces no router
//!   (lifetime 0), no prefix and no DHCPv6 (M=O=0) ends that wait at once and
//!   configures nothing on any host. Only where no real IPv6 router serves the
//!   boot network.
//! - **Managed** (with `dhcp6:`): the boot prefix as on-link (L=1) but not for
//!   address autoconfiguration (A=0), and M=O=1: clients take their address from
//!   DHCPv6, where ramboot binds it to the node. Still not a default router
//!   (lifetime 0): the boot network needs none. Sent on solicitation and every
//!   [`UNSOLICITED_INTERVAL`] to all nodes, so the on-link route never ages out.

use nix::sys::socket::{recvfrom, sendto, MsgFlags, SockaddrIn6};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// RFC 4861 §6.2.1 MaxRtrAdvInterval's default is 600 s; half keeps two in every
/// interval a host might wait.
pub const UNSOLICITED_INTERVAL: Duration = Duration::from_secs(300);
/// Unsolicited advertisements sent right after start, [`INITIAL_INTERVAL`] apart.
const INITIAL_ADVERTISEMENTS: u32 = 3;
const INITIAL_INTERVAL: Duration = Duration::from_secs(2);
/// The on-link prefix's valid lifetime: a day, refreshed long before it ends.
const PREFIX_VALID_SECS: u32 = 86_400;

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
/// RFC 4861 §4.2 and §6.1.2: hop limit 255 proves the RA was not forwarded.
const HOP_LIMIT: u32 = 255;

/// What the advertisements say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advertisement {
    Empty,
    Managed { prefix: ipnet::Ipv6Net },
}

impl Advertisement {
    /// The ICMPv6 message (RFC 4861 §4.2; the kernel fills the checksum).
    pub fn bytes(self) -> Vec<u8> {
        let mut ra = vec![0u8; 16];
        ra[0] = ROUTER_ADVERTISEMENT;
        if let Advertisement::Managed { prefix } = self {
            // M (managed address configuration) and O (other configuration).
            ra[5] = 0x80 | 0x40;
            // Prefix Information (§4.6.2): type 3, length 4 (× 8 octets).
            ra.extend_from_slice(&[3, 4, prefix.prefix_len(), 0x80]);
            ra.extend_from_slice(&PREFIX_VALID_SECS.to_be_bytes());
            ra.extend_from_slice(&PREFIX_VALID_SECS.to_be_bytes());
            ra.extend_from_slice(&[0; 4]);
            ra.extend_from_slice(&prefix.network().octets());
        }
        ra
    }
}

/// An RFC 4861 §4.2 router advertisement with every field zero: not a default
/// router, no managed/other configuration, no options.
pub fn empty_advertisement() -> Vec<u8> {
    Advertisement::Empty.bytes()
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
pub async fn serve(interface: &str, advert: Advertisement, cancel: CancellationToken) -> Result<(), RaError> {
    let interface = interface.to_string();
    let worker = tokio::task::spawn_blocking(move || answer_solicitations(&interface, advert, &cancel));
    match worker.await {
        Ok(result) => result,
        Err(e) => Err(RaError::Socket { interface: "?".into(), source: std::io::Error::other(e) }),
    }
}

fn answer_solicitations(interface: &str, advert: Advertisement, cancel: &CancellationToken) -> Result<(), RaError> {
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
    bind_link_local(&socket, interface, ifindex, cancel);
    let all_nodes = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, ifindex));
    let ra = advert.bytes();
    let mut next_unsolicited = match advert {
        Advertisement::Empty => {
            info!(interface, "answering IPv6 router solicitations (no router, no prefix)");
            None
        }
        Advertisement::Managed { prefix } => {
            info!(interface, %prefix, "router advertisements: prefix on-link, addresses from DHCPv6 (M, O)");
            Some(std::time::Instant::now())
        }
    };
    // The first few come quickly (RFC 4861 §6.2.4): hosts that solicited before
    // this server started, or while its link-local address was still tentative,
    // learn the prefix at once.
    let mut initial_left = INITIAL_ADVERTISEMENTS;
    let mut buf = [0u8; 1500];
    while !cancel.is_cancelled() {
        if let Some(due) = next_unsolicited.filter(|due| *due <= std::time::Instant::now()) {
            if let Err(e) = sendto(socket.as_raw_fd(), &ra, &all_nodes, MsgFlags::empty()) {
                warn!(error = %e, "unsolicited router advertisement not sent");
            }
            let interval = if initial_left > 0 { INITIAL_INTERVAL } else { UNSOLICITED_INTERVAL };
            initial_left = initial_left.saturating_sub(1);
            next_unsolicited = Some(due + interval);
        }
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
            None => all_nodes,
        };
        match sendto(socket.as_raw_fd(), &ra, &to, MsgFlags::empty()) {
            Ok(_) => debug!(to = %to, "router advertisement sent"),
            Err(e) => warn!(to = %to, error = %e, "router advertisement not sent"),
        }
    }
    Ok(())
}

/// Send from the interface's link-local address, as RFC 4861 §4.2 requires (a host
/// drops an RA from any other). Left unbound, the kernel would pick a global
/// source while the link-local address is still in duplicate address detection;
/// binding fails until DAD is done, so this retries for a while.
fn bind_link_local(socket: &Socket, interface: &str, ifindex: u32, cancel: &CancellationToken) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cancel.is_cancelled() {
        let link_local = nix::ifaddrs::getifaddrs().ok().and_then(|mut all| {
            all.find_map(|a| {
                let ip = a.address?.as_sockaddr_in6()?.ip();
                (a.interface_name == interface && ip.segments()[0] & 0xffc0 == 0xfe80).then_some(ip)
            })
        });
        if let Some(ip) = link_local {
            let at = std::net::SocketAddr::V6(SocketAddrV6::new(ip, 0, 0, ifindex));
            if socket.bind(&at.into()).is_ok() {
                debug!(%ip, "router advertisements from the link-local address");
                return;
            }
        }
        if std::time::Instant::now() >= deadline {
            warn!(
                interface,
                "no usable link-local address; router advertisements go out from whatever the kernel picks"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
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
    fn a_managed_advertisement_puts_the_prefix_on_link_and_asks_for_dhcpv6() {
        let ra = Advertisement::Managed { prefix: "fd00:213::/64".parse().unwrap() }.bytes();
        assert_eq!(ra.len(), 16 + 32);
        assert_eq!(ra[5], 0xc0, "M and O");
        assert_eq!(&ra[6..8], &[0, 0], "not a default router");
        assert_eq!(&ra[16..20], &[3, 4, 64, 0x80], "prefix information, /64, on-link, not autonomous");
        assert_eq!(&ra[32..48], &"fd00:213::".parse::<Ipv6Addr>().unwrap().octets());
    }

    #[test]
    fn only_router_solicitations_are_answered() {
        assert!(is_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[133, 1, 0, 0, 0, 0, 0, 0]), "non-zero code is invalid (RFC 4861 §6.1.1)");
        assert!(!is_solicitation(&[135, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[133, 0, 0]));
    }
}
