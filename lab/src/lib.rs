//! ramboot's lab: the machinery that puts ramboot on a network of its own, once, for
//! the `ramboot-lab` tool (a QEMU VM netbooting through `ramboot serve`), the
//! `ramboot-sim` fleet simulator and the integration tests.
//!
//! The fallible building blocks (network namespaces, bridges and taps, processes
//! stopped by PID, QEMU's command line, a private tgtd, a private libvirtd behind a
//! Redfish BMC (sushy-tools), the workspace's binaries and the lab's Debian packages
//! and agent build) return [`LabError`]. [`tmpfs`] gives a test a file system of the
//! size it chooses. [`harness`] and
//! [`pcap`] wrap them for tests, which panic with a clear message instead; [`wire`]
//! reads the DHCP and TFTP messages of a capture.
//! Nothing here is linked into the `ramboot` server binary: the server crate never
//! depends on this one.

pub mod bins;
pub mod dhcpload;
pub mod harness;
pub mod logs;
pub mod net;
pub mod pcap;
pub mod process;
pub mod qemu;
pub mod redfish;
pub mod seed;
pub mod setup;
pub mod sim;
pub mod tgtd;
pub mod tmpfs;
pub mod wire;

mod error;

pub use error::LabError;
