//! DHCP leases as `/leases` (IPv4) and `/leases6` (DHCPv6) list them.

use ramboot_core::node::MacAddr;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    #[schema(value_type = String, example = "10.213.0.100")]
    pub ip: Ipv4Addr,
    #[schema(value_type = String, example = "52:54:00:72:62:01")]
    pub mac: MacAddr,
    pub expires_at: u64,
    pub state: String,
}

/// A DHCPv6 binding: one per address; the node is its MAC, when the client's DUID
/// or link-local address named one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Lease6 {
    #[schema(value_type = String, example = "fd00:213::100")]
    pub address: Ipv6Addr,
    /// The client's DUID, in hex.
    #[schema(example = "00030001525400726201")]
    pub duid: String,
    pub iaid: u32,
    #[schema(value_type = Option<String>, example = "52:54:00:72:62:01")]
    pub mac: Option<MacAddr>,
    pub expires_at: u64,
    pub state: String,
}
