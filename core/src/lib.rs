//! ramboot's pure cores.
//!
//! Everything here decides from its inputs alone: no sockets, no files, no clock, no
//! async runtime. Time comes in as an argument (`now`), state comes in as values, and
//! decisions come out as values; the server's tokio layers do the I/O around them.
//! Cargo enforces the wall: `cargo tree -p ramboot-core -e normal` lists no I/O crate.

pub mod dhcp;
pub mod dhcp6;
pub mod inventory;
pub mod lifecycle;
pub mod node;
pub mod plan;
pub mod profile;
pub mod range;
pub mod rollout;
pub mod tftp;
pub mod trust;
