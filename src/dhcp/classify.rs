//! Who is asking: the client's MAC, firmware architecture and boot stack.
//!
//! Sources: option 93 (client system architecture, RFC 4578 and the IANA registry),
//! option 60 (vendor class: `PXEClient`, `HTTPClient`), option 77 (user class, RFC 3004:
//! iPXE sends `iPXE`) and option 175 (iPXE's encapsulated options).

use crate::node::MacAddr;
use dhcproto::v4::{DhcpOption, HType, Message, OptionCode};
use serde::Serialize;
use std::fmt;

/// Processor architecture and firmware, from option 93 (IANA "Processor Architecture Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// 0: x86 BIOS.
    Bios,
    /// 6: x86 UEFI.
    EfiIa32,
    /// 7 (EFI BC) and 9 (EFI x86-64): firmware disagrees on which to send.
    EfiX64,
    /// 10: ARM 32-bit UEFI.
    EfiArm32,
    /// 11: ARM 64-bit UEFI.
    EfiArm64,
    /// 15: x86 UEFI HTTP boot.
    EfiIa32Http,
    /// 16: x64 UEFI HTTP boot.
    EfiX64Http,
    /// 18: ARM 32-bit UEFI HTTP boot.
    EfiArm32Http,
    /// 19: ARM 64-bit UEFI HTTP boot.
    EfiArm64Http,
    /// Anything else in the registry (or outside it).
    Other(u16),
}

impl From<u16> for Arch {
    fn from(code: u16) -> Self {
        match code {
            0 => Arch::Bios,
            6 => Arch::EfiIa32,
            7 | 9 => Arch::EfiX64,
            10 => Arch::EfiArm32,
            11 => Arch::EfiArm64,
            15 => Arch::EfiIa32Http,
            16 => Arch::EfiX64Http,
            18 => Arch::EfiArm32Http,
            19 => Arch::EfiArm64Http,
            other => Arch::Other(other),
        }
    }
}

impl Arch {
    /// UEFI HTTP boot clients fetch their boot file by URL, not TFTP.
    pub fn is_http_boot(self) -> bool {
        matches!(self, Arch::EfiIa32Http | Arch::EfiX64Http | Arch::EfiArm32Http | Arch::EfiArm64Http)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arch::Bios => f.write_str("bios"),
            Arch::EfiIa32 => f.write_str("efi-ia32"),
            Arch::EfiX64 => f.write_str("efi-x64"),
            Arch::EfiArm32 => f.write_str("efi-arm32"),
            Arch::EfiArm64 => f.write_str("efi-arm64"),
            Arch::EfiIa32Http => f.write_str("efi-ia32-http"),
            Arch::EfiX64Http => f.write_str("efi-x64-http"),
            Arch::EfiArm32Http => f.write_str("efi-arm32-http"),
            Arch::EfiArm64Http => f.write_str("efi-arm64-http"),
            Arch::Other(code) => write!(f, "arch-{code}"),
        }
    }
}

/// The boot stack that sent the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// iPXE (user class `iPXE` or option 175): gets the HTTP script URL, which
    /// breaks the PXE → iPXE → PXE chainload loop.
    Ipxe,
    /// A PXE ROM (`PXEClient` vendor class): gets an iPXE binary over TFTP.
    Pxe,
    /// UEFI HTTP boot (`HTTPClient` vendor class): gets an iPXE binary by URL.
    HttpClient,
    /// An ordinary DHCP client (an OS, the stage-one agent's udhcpc).
    Plain,
}

/// Everything the decision pipeline needs to know about the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub mac: MacAddr,
    pub arch: Option<Arch>,
    pub firmware: Firmware,
    /// Option 97 (client machine identifier, a UUID for PXE clients).
    pub uuid: Option<Vec<u8>>,
    pub vendor_class: Option<String>,
}

/// Why a message was not even classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    #[error("not an Ethernet client (htype {htype:?}, hlen {hlen})")]
    NotEthernet { htype: HType, hlen: u8 },
}

pub fn classify(msg: &Message) -> Result<Client, ClassifyError> {
    // `Message::chaddr()` slices by the wire's hlen and would panic past 16: check first.
    if msg.htype() != HType::Eth || msg.hlen() != 6 {
        return Err(ClassifyError::NotEthernet { htype: msg.htype(), hlen: msg.hlen() });
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&msg.chaddr()[..6]);
    let opts = msg.opts();
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(Arch::from(u16::from(*a))),
        _ => None,
    };
    let vendor_class = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(raw)) => Some(String::from_utf8_lossy(raw).into_owned()),
        _ => None,
    };
    let user_class_is_ipxe = match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(raw)) => user_class_names(raw).any(|name| name == b"iPXE"),
        _ => false,
    };
    let has_ipxe_encap = opts.get(OptionCode::Unknown(175)).is_some();
    let firmware = if user_class_is_ipxe || has_ipxe_encap {
        Firmware::Ipxe
    } else if vendor_class.as_deref().is_some_and(|v| v.starts_with("HTTPClient")) {
        Firmware::HttpClient
    } else if vendor_class.as_deref().is_some_and(|v| v.starts_with("PXEClient")) {
        Firmware::Pxe
    } else {
        Firmware::Plain
    };
    let uuid = match opts.get(OptionCode::ClientMachineIdentifier) {
        Some(DhcpOption::ClientMachineIdentifier(raw)) => Some(raw.clone()),
        _ => None,
    };
    Ok(Client { mac: MacAddr(mac), arch, firmware, uuid, vendor_class })
}

/// Option 77's value. RFC 3004 frames it as length-prefixed names, but iPXE and many
/// firmwares send one bare string: accept both.
fn user_class_names(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    let framed = is_rfc3004_framed(raw);
    let mut rest = raw;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if framed {
            let len = usize::from(rest[0]);
            let (name, tail) = rest[1..].split_at(len);
            rest = tail;
            Some(name)
        } else {
            let whole = rest;
            rest = &[];
            Some(whole)
        }
    })
}

fn is_rfc3004_framed(raw: &[u8]) -> bool {
    let mut rest = raw;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        if len == 0 || len > tail.len() {
            return false;
        }
        rest = &tail[len..];
    }
    !raw.is_empty()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use dhcproto::v4::{Architecture, MessageType};
    use std::net::Ipv4Addr;

    pub fn request(mac: [u8; 6], kind: MessageType) -> Message {
        let mut msg = Message::new_with_id(
            0x1234_5678,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        msg.opts_mut().insert(DhcpOption::MessageType(kind));
        msg
    }

    /// What SeaBIOS + QEMU's iPXE ROM sends (see LAB.md).
    pub fn ipxe_bios(mac: [u8; 6], kind: MessageType) -> Message {
        let mut msg = request(mac, kind);
        let o = msg.opts_mut();
        o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(0)));
        o.insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()));
        o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        o.insert(DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(175.into(), vec![0xb1, 1, 1])));
        msg
    }

    #[test]
    fn qemu_ipxe_rom_is_ipxe_on_bios() {
        let client = classify(&ipxe_bios([2, 0, 0, 0, 0, 1], MessageType::Discover)).unwrap();
        assert_eq!(client.firmware, Firmware::Ipxe);
        assert_eq!(client.arch, Some(Arch::Bios));
        assert_eq!(client.mac.to_string(), "02:00:00:00:00:01");
    }

    #[test]
    fn plain_pxe_rom_on_uefi() {
        let mut msg = request([2, 0, 0, 0, 0, 2], MessageType::Discover);
        msg.opts_mut().insert(DhcpOption::ClientSystemArchitecture(Architecture::from(7)));
        msg.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007:UNDI:003016".to_vec()));
        let client = classify(&msg).unwrap();
        assert_eq!((client.firmware, client.arch), (Firmware::Pxe, Some(Arch::EfiX64)));
    }

    #[test]
    fn http_boot_client() {
        let mut msg = request([2, 0, 0, 0, 0, 3], MessageType::Discover);
        msg.opts_mut().insert(DhcpOption::ClientSystemArchitecture(Architecture::from(16)));
        msg.opts_mut().insert(DhcpOption::ClassIdentifier(b"HTTPClient:Arch:00016".to_vec()));
        let client = classify(&msg).unwrap();
        assert_eq!(client.firmware, Firmware::HttpClient);
        assert!(client.arch.unwrap().is_http_boot());
    }

    #[test]
    fn rfc3004_framed_user_class_is_recognised() {
        let mut msg = request([2, 0, 0, 0, 0, 4], MessageType::Discover);
        msg.opts_mut().insert(DhcpOption::UserClass(b"\x03foo\x04iPXE".to_vec()));
        assert_eq!(classify(&msg).unwrap().firmware, Firmware::Ipxe);
    }

    #[test]
    fn oversized_hlen_is_refused_not_panicking() {
        let mut msg = request([2, 0, 0, 0, 0, 5], MessageType::Discover);
        msg.set_chaddr(&[0u8; 16]);
        assert!(matches!(classify(&msg), Err(ClassifyError::NotEthernet { hlen: 16, .. })));
    }
}
