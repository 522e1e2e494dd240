//! DHCPv4 decisions (RFC 2131/2132, PXE options of RFC 4578, relay agent
//! information of RFC 3046): [`classify`] the client, keep the address [`pool`]s,
//! [`relay`]-screen what relays assert, tell ramboot's own [`ipxe`] from others, and
//! [`decide`] the reply from the operator's [`policy`].

pub mod classify;
pub mod decide;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod ipxe;
pub mod policy;
pub mod pool;
pub mod relay;
