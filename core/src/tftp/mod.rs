//! TFTP (RFC 1350, options RFC 2347/2348/2349, windowsize RFC 7440) as pure state
//! machines: the server's read [`session`] and the [`client`] the simulator drives.

pub mod client;
pub mod session;
