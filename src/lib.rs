//! ramboot: a diskless netboot provisioner.
//!
//! One process serves DHCP, TFTP and HTTP so that bare-metal nodes PXE-boot into a
//! stage-one OS, which loads the node's profile image into RAM and hands off to it.
//! Protocol decisions live in the pure `ramboot-core` crate; sockets and
//! files live in thin tokio layers around them.

pub mod bmc;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dhcp;
pub mod doctor;
pub mod files;
pub mod http;
pub mod images;
pub mod inventory;
pub mod iscsi;
pub mod limits;
pub mod pktinfo;
pub mod profiles;
pub mod ra;
pub mod retention;
pub mod rollout;
pub mod safe_path;
pub mod sd_notify;
pub mod secrets;
pub mod serve;
pub mod store;
pub mod tftp;
pub mod token;
pub mod udp;
pub mod watch;
pub mod watchdog;
pub mod yaml;
