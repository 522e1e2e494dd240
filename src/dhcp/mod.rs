//! DHCPv4 service: the socket layer ([`io`]) around the pure decision core in
//! `ramboot_core::dhcp` (classify, pool, decide).

pub mod io;
pub mod io6;
