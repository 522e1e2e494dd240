//! What the operator configured for DHCP, as the decision core sees it: the mode,
//! the subnets with their ranges and options, the unknown-client policy and the
//! architecture → boot-file table. The server's config loader validates YAML into
//! these; the core only reads them.

use super::classify::Arch;
use super::ipxe::IpxePolicy;
use super::pool::Share;
use crate::profile::BootChain;
use ipnet::Ipv4Net;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Whether ramboot hands out addresses (authoritative) or only boot options next to
/// the site's own DHCP server (proxy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DhcpMode {
    #[default]
    Authoritative,
    Proxy,
}

/// What a client whose MAC is not in the node inventory gets on a subnet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownClients {
    /// An address and the discovery boot (it becomes a `discovered` node).
    #[default]
    Discovery,
    /// Nothing at all: only registered nodes are served.
    Ignore,
    /// An address, but no boot file.
    AddressOnly,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetConfig {
    pub net: Ipv4Net,
    /// Dynamic ranges, inclusive, sorted and disjoint.
    pub ranges: Vec<(Ipv4Addr, Ipv4Addr)>,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_time: Duration,
    pub unknown_clients: UnknownClients,
}

/// iPXE binaries per architecture unless the operator says otherwise. HTTP-boot
/// variants load the same binary by URL.
pub fn default_boot_files() -> BTreeMap<Arch, String> {
    let table: &[(&[u16], &str)] = &[
        (&[0], "undionly.kpxe"),
        (&[6, 15], "ipxe-ia32.efi"),
        // The firmware's SNP driver, not iPXE's own: `ipxe.efi`'s native drivers fail
        // on Intel 82599, Broadcom BCM5720 and ConnectX (ipxe issues 923, 972).
        (&[7, 9, 16], "snponly.efi"),
        (&[10, 18], "ipxe-arm32.efi"),
        (&[11, 19], "ipxe-arm64.efi"),
        (&[27, 28], "ipxe-riscv64.efi"),
        (&[39, 40], "ipxe-loong64.efi"),
    ];
    table.iter().flat_map(|(codes, file)| codes.iter().map(|c| (Arch(*c), file.to_string()))).collect()
}

/// The signed chain's first binary (shim) per architecture: Debian's
/// Microsoft-signed shim, which loads `grub<arch>.efi` from beside it.
pub fn default_signed_boot_files() -> BTreeMap<Arch, String> {
    [(7, "shimx64.efi"), (9, "shimx64.efi"), (11, "shimaa64.efi")]
        .into_iter()
        .map(|(code, file)| (Arch(code), file.to_string()))
        .collect()
}

/// Static inputs of the decision: what the operator configured.
#[derive(Debug, Clone)]
pub struct DhcpPolicy {
    pub mode: DhcpMode,
    /// `siaddr` (next server): where PXE ROMs fetch iPXE over TFTP.
    pub tftp_server: Ipv4Addr,
    /// `http://server:port`: iPXE and UEFI HTTP clients get URLs under it.
    pub boot_url: String,
    pub boot_files: BTreeMap<Arch, String>,
    /// What a PXE firmware on the signed chain loads first, per architecture.
    pub signed_boot_files: BTreeMap<Arch, String>,
    /// The chain of nodes whose profile names none, and of unknown clients.
    pub boot_chain: BootChain,
    pub subnets: Vec<SubnetConfig>,
    /// Relays whose link selection (option 82 sub-option 5, option 118) and agent
    /// information are believed: a packet's giaddr and UDP source must both be in
    /// one of these networks (see [`super::relay`]).
    pub trusted_relays: Vec<Ipv4Net>,
    pub offer_hold_secs: u64,
    pub quarantine_secs: u64,
    /// Which iPXE runs the boot script (see [`super::ipxe`]).
    pub ipxe: IpxePolicy,
    /// The part of each range this server offers from first (see [`Share`]).
    pub share: Share,
}
