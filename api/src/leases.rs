//! DHCP leases as `/leases` lists them.

use ramboot_core::node::MacAddr;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
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
