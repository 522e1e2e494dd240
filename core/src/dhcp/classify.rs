//! Who is asking: the client's MAC, firmware architecture and boot stack.
//!
//! Sources: option 93 (client system architecture, RFC 4578 and the IANA registry),
//! option 60 (vendor class: `PXEClient`, `HTTPClient`), option 77 (user class, RFC 3004:
//! iPXE sends `iPXE`) and option 175 (iPXE's encapsulated options).

use crate::node::MacAddr;
use dhcproto::v4::{DhcpOption, HType, Message, OptionCode};
use serde::Serialize;
use std::fmt;

/// Processor architecture and firmware: option 93's code (RFC 4578, IANA "Processor
/// Architecture Types"), named after the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch(pub u16);

/// The IANA registry as of 2026: code, ramboot's name, and whether the client boots
/// over HTTP (UEFI HTTP boot) rather than TFTP.
const ARCH_TABLE: &[(u16, &str, bool)] = &[
    (0, "bios", false),
    (1, "nec-pc98", false),
    (2, "efi-itanium", false),
    (3, "dec-alpha", false),
    (4, "arc-x86", false),
    (5, "intel-lean-client", false),
    (6, "efi-ia32", false),
    (7, "efi-x64", false),
    (8, "efi-xscale", false),
    // The registry says 9 is EFI byte code, but x64 firmware sends it (RFC 4578
    // errata 4624 swapped 7 and 9): treat both as x64, as iPXE's own ROMs do.
    (9, "efi-x64", false),
    (10, "efi-arm32", false),
    (11, "efi-arm64", false),
    (12, "ppc-open-firmware", false),
    (13, "ppc-epapr", false),
    (14, "power-opal-v3", false),
    (15, "efi-ia32-http", true),
    (16, "efi-x64-http", true),
    (17, "efi-ebc-http", true),
    (18, "efi-arm32-http", true),
    (19, "efi-arm64-http", true),
    (20, "pc-bios-http", true),
    (21, "uboot-arm32", false),
    (22, "uboot-arm64", false),
    (23, "uboot-arm32-http", true),
    (24, "uboot-arm64-http", true),
    (25, "efi-riscv32", false),
    (26, "efi-riscv32-http", true),
    (27, "efi-riscv64", false),
    (28, "efi-riscv64-http", true),
    (29, "efi-riscv128", false),
    (30, "efi-riscv128-http", true),
    (31, "s390-basic", false),
    (32, "s390-extended", false),
    (33, "efi-mips32", false),
    (34, "efi-mips64", false),
    (35, "efi-sunway32", false),
    (36, "efi-sunway64", false),
    (37, "efi-loongarch32", false),
    (38, "efi-loongarch32-http", true),
    (39, "efi-loongarch64", false),
    (40, "efi-loongarch64-http", true),
    (41, "arm-rpiboot", false),
];

impl Arch {
    pub const BIOS: Arch = Arch(0);

    fn entry(self) -> Option<&'static (u16, &'static str, bool)> {
        ARCH_TABLE.iter().find(|(code, _, _)| *code == self.0)
    }

    /// UEFI HTTP boot clients fetch their boot file by URL, not TFTP.
    pub fn is_http_boot(self) -> bool {
        self.entry().is_some_and(|(_, _, http)| *http)
    }

    /// A UEFI firmware (the registry's `efi-*` codes, HTTP boot ones included).
    pub fn is_uefi(self) -> bool {
        self.entry().is_some_and(|(_, name, _)| name.starts_with("efi-"))
    }

    /// The registry name (`bios`, `efi-x64`, ...), or `arch-<code>` outside it.
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        match self.entry() {
            Some((_, name, _)) => (*name).into(),
            None => format!("arch-{}", self.0).into(),
        }
    }

    /// Every code a name stands for (`efi-x64` is both 7 and 9); `arch-<n>` or a bare
    /// number names one code. For the operator's boot-file map.
    pub fn codes_named(name: &str) -> Vec<Arch> {
        let by_number = name.strip_prefix("arch-").unwrap_or(name).parse::<u16>().ok();
        if let Some(code) = by_number {
            return vec![Arch(code)];
        }
        ARCH_TABLE.iter().filter(|(_, n, _)| *n == name).map(|(code, _, _)| Arch(*code)).collect()
    }

    /// All named architectures, for documentation and validation messages.
    pub fn known_names() -> impl Iterator<Item = &'static str> {
        let mut seen = std::collections::BTreeSet::new();
        ARCH_TABLE.iter().map(|(_, n, _)| *n).filter(move |n| seen.insert(*n))
    }
}

impl From<u16> for Arch {
    fn from(code: u16) -> Self {
        Arch(code)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
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
    /// Option 77's names (iPXE sends `iPXE`, or ramboot's own user class).
    pub user_classes: Vec<String>,
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
    let arch = arch_of(msg);
    let vendor_class = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(raw)) => Some(String::from_utf8_lossy(raw).into_owned()),
        _ => None,
    };
    let user_classes: Vec<String> = match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(raw)) => {
            user_class_names(raw).map(|name| String::from_utf8_lossy(name).into_owned()).collect()
        }
        _ => Vec::new(),
    };
    // Option 175 is iPXE's own space: FlexBoot and other vendor builds send it
    // without the `iPXE` user class.
    let has_ipxe_encap = opts.get(OptionCode::Unknown(175)).is_some();
    let firmware = if user_classes.iter().any(|c| c == "iPXE") || has_ipxe_encap {
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
    Ok(Client { mac: MacAddr(mac), arch, firmware, uuid, vendor_class, user_classes })
}

/// The client's architecture (option 93), if it names one.
pub fn arch_of(msg: &Message) -> Option<Arch> {
    match msg.opts().get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(Arch::from(u16::from(*a))),
        _ => None,
    }
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

/// Option 97 as a UUID string: type 0 then 16 bytes, the first three fields
/// little-endian as SMBIOS stores them (so it matches `dmidecode -s system-uuid`).
pub fn format_uuid(raw: &[u8]) -> Option<String> {
    let b: &[u8; 16] = match raw {
        [0, rest @ ..] if rest.len() == 16 => rest.try_into().ok()?,
        _ => return None,
    };
    Some(format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        b[8],
        b[9],
        hex::encode(&b[10..])
    ))
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

    /// Option 175 as QEMU's BIOS iPXE ROM sends it, and Debian's `undionly.kpxe`
    /// byte for byte (both iPXE 1.0.0+git-20190125; captured in the lab): bus id
    /// (177) PCI 8086:100e, version (235) 1.0.0, then one byte per feature: DNS,
    /// ELF, HTTP, iSCSI, menu, multiboot, NFS, PXE extensions (2), PXE, TFTP,
    /// bzImage, AoE.
    pub const IPXE_BIOS_175: &[u8] = &[
        0xb1, 5, 1, 0x80, 0x86, 0x10, 0x0e, 0xeb, 3, 1, 0, 0, 0x17, 1, 1, 0x22, 1, 1, 0x13, 1, 1, 0x11, 1, 1, 0x27, 1,
        1, 0x19, 1, 1, 0x29, 1, 1, 0x10, 1, 2, 0x21, 1, 1, 0x15, 1, 1, 0x18, 1, 1, 0x12, 1, 1,
    ];

    /// What SeaBIOS + QEMU's iPXE ROM sends (see LAB.md).
    pub fn ipxe_bios(mac: [u8; 6], kind: MessageType) -> Message {
        ipxe_bios_with_class(mac, kind, b"iPXE")
    }

    /// The same iPXE, announcing `user_class` (ramboot's own, for one).
    pub fn ipxe_bios_with_class(mac: [u8; 6], kind: MessageType, user_class: &[u8]) -> Message {
        let mut msg = request(mac, kind);
        let o = msg.opts_mut();
        o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(0)));
        o.insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()));
        o.insert(DhcpOption::UserClass(user_class.to_vec()));
        o.insert(DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(175.into(), IPXE_BIOS_175.to_vec())));
        msg
    }

    #[test]
    fn option_97_formats_like_dmidecode() {
        let mut raw = vec![0u8];
        raw.extend(1..=16u8);
        assert_eq!(format_uuid(&raw).unwrap(), "04030201-0605-0807-090a-0b0c0d0e0f10");
        assert_eq!(format_uuid(&raw[1..]), None, "no type byte");
        assert_eq!(format_uuid(&[0; 5]), None);
    }

    #[test]
    fn qemu_ipxe_rom_is_ipxe_on_bios() {
        let client = classify(&ipxe_bios([2, 0, 0, 0, 0, 1], MessageType::Discover)).unwrap();
        assert_eq!(client.firmware, Firmware::Ipxe);
        assert_eq!(client.arch, Some(Arch::BIOS));
        assert_eq!(client.mac.to_string(), "02:00:00:00:00:01");
    }

    #[test]
    fn plain_pxe_rom_on_uefi() {
        let mut msg = request([2, 0, 0, 0, 0, 2], MessageType::Discover);
        msg.opts_mut().insert(DhcpOption::ClientSystemArchitecture(Architecture::from(7)));
        msg.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007:UNDI:003016".to_vec()));
        let client = classify(&msg).unwrap();
        assert_eq!((client.firmware, client.arch), (Firmware::Pxe, Some(Arch(7))));
        assert_eq!(client.arch.unwrap().to_string(), "efi-x64");
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

    #[test]
    fn arch_names_follow_the_registry_and_map_back() {
        assert_eq!(Arch(9).to_string(), "efi-x64");
        assert_eq!(Arch(19).to_string(), "efi-arm64-http");
        assert!(Arch(19).is_http_boot() && !Arch(11).is_http_boot());
        assert_eq!(Arch(4242).to_string(), "arch-4242");
        assert_eq!(Arch::codes_named("efi-x64"), vec![Arch(7), Arch(9)]);
        assert_eq!(Arch::codes_named("arch-11"), vec![Arch(11)]);
        assert_eq!(Arch::codes_named("27"), vec![Arch(27)]);
        assert_eq!(Arch(27).to_string(), "efi-riscv64");
        assert_eq!(Arch(41).to_string(), "arm-rpiboot");
        assert!(Arch::codes_named("efi-vax").is_empty());
    }
}
