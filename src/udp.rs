//! UDP socket settings the DHCP, DHCPv6 and TFTP listeners share.

use nix::sys::socket::{self as sock, sockopt};
use std::os::fd::AsFd;

/// Receive queue of a listener that a boot storm hits all at once: every node's
/// DISCOVER (or read request) arrives within a few milliseconds, and at the
/// default ~200 KiB the kernel drops all but the first few hundred (each small
/// datagram is charged about 1 KiB), which the nodes then wait out as a
/// retransmit timeout.
pub const LISTENER_RECEIVE_BUFFER: usize = 4 << 20;

/// Give `socket` a receive queue of `bytes`: as root past `net.core.rmem_max`
/// (`SO_RCVBUFFORCE`), otherwise as far as that allows. Best effort: a smaller
/// queue only means drops under a burst, never a failure to serve.
pub fn deepen_receive_queue(socket: &impl AsFd, bytes: usize) {
    if sock::setsockopt(socket, sockopt::RcvBufForce, &bytes).is_err() {
        let _ = sock::setsockopt(socket, sockopt::RcvBuf, &bytes);
    }
}
