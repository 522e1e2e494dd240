//! A QEMU VM that network-boots from a tap on a lab bridge (see LAB.md for why these
//! flags): TCG, e1000 with its iPXE ROM under SeaBIOS or OVMF, or OVMF's own PXE on a
//! virtio-net NIC without a ROM. [`PxeVm`] is its command line, for the lab's VM and
//! the tests' alike; [`reset`] power-cycles it through the monitor.

use crate::LabError;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// QEMU's e1000 iPXE ROMs (Debian's ipxe-qemu).
pub const PXE_ROM: &str = "/usr/lib/ipxe/qemu/pxe-e1000.rom";
pub const EFI_ROM: &str = "/usr/lib/ipxe/qemu/efi-e1000.rom";
/// OVMF's code (read-only) and the variables a VM gets a writable copy of.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// OVMF built with Secure Boot (and SMM, so a guest cannot rewrite its variables),
/// and variables with Microsoft's keys enrolled and Secure Boot on: a firmware that
/// runs only what Microsoft's UEFI CA signed, as a datacenter server's does.
pub const OVMF_SECBOOT_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
pub const OVMF_MS_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

/// arm64: QEMU's `virt` machine with AAVMF (EDK2 for arm64, Debian's
/// qemu-efi-aarch64), under TCG.
pub const QEMU_AARCH64: &str = "/usr/bin/qemu-system-aarch64";
pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
pub const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";

/// Write a fresh copy of AAVMF's variables to `to`.
pub fn fresh_arm64_vars(to: &Path) -> std::io::Result<()> {
    std::fs::copy(AAVMF_VARS, to).map(|_| ())
}

/// Write a fresh copy of OVMF's variables to `to`: Microsoft-enrolled ones for a
/// Secure Boot VM, the empty set otherwise.
pub fn fresh_vars(to: &Path, secure_boot: bool) -> std::io::Result<()> {
    let from = if secure_boot { OVMF_MS_VARS } else { OVMF_VARS };
    std::fs::copy(from, to).map(|_| ())
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone)]
pub enum Console {
    /// QEMU's stdout (the caller redirects it, e.g. appending across power-ons).
    Stdout,
    /// A file QEMU writes itself.
    File(PathBuf),
}

/// The VM's NIC and what boots from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nic {
    /// e1000 with QEMU's iPXE ROM (`pxe-e1000.rom`, or `efi-e1000.rom` under UEFI).
    E1000Ipxe,
    /// virtio-net with no option ROM. Under OVMF the firmware's own PXE stack boots
    /// (EDK2 NetworkPkg over its VirtioNetDxe driver); SeaBIOS has none.
    VirtioFirmwarePxe,
    /// As [`Nic::VirtioFirmwarePxe`] with OVMF's PXE turned off (its fw_cfg
    /// switches), so the firmware boots with its UEFI HTTP Boot client: DHCP as
    /// `HTTPClient`, then the boot file by URL. UEFI only.
    VirtioFirmwareHttp,
}

/// A network-booting VM's command line.
#[derive(Debug, Clone)]
pub struct PxeVm {
    pub tap: String,
    pub mac: String,
    pub memory_mb: u32,
    /// UEFI (OVMF with this writable copy of its variables) instead of SeaBIOS.
    pub uefi_vars: Option<PathBuf>,
    /// With `uefi_vars`: OVMF's Secure Boot build, enforcing (the variables must be
    /// a copy of [`OVMF_MS_VARS`], see [`fresh_vars`]).
    pub secure_boot: bool,
    /// An arm64 `virt` machine with AAVMF (`uefi_vars` a copy of [`AAVMF_VARS`])
    /// instead of an x86 one; its NIC boots with the firmware's own PXE.
    pub aarch64: bool,
    pub nic: Nic,
    pub console: Console,
    /// A monitor socket (for [`reset`]); none without.
    pub monitor: Option<PathBuf>,
    /// Exit on a guest reboot instead of booting again.
    pub no_reboot: bool,
}

impl PxeVm {
    /// A BIOS VM with 256 MiB on `tap`, console to `console`, no monitor, exiting on
    /// reboot: what the tests boot.
    pub fn bios(tap: &str, mac: &str, console: &Path) -> PxeVm {
        PxeVm {
            tap: tap.into(),
            mac: mac.into(),
            memory_mb: 256,
            uefi_vars: None,
            secure_boot: false,
            aarch64: false,
            nic: Nic::E1000Ipxe,
            console: Console::File(console.to_path_buf()),
            monitor: None,
            no_reboot: true,
        }
    }

    /// The program and its arguments.
    pub fn command_line(&self) -> Vec<String> {
        let serial = match &self.console {
            Console::Stdout => "stdio".to_string(),
            Console::File(path) => format!("file:{}", path.display()),
        };
        let monitor = match &self.monitor {
            Some(path) => format!("unix:{},server,nowait", path.display()),
            None => "none".to_string(),
        };
        let program = if self.aarch64 { QEMU_AARCH64 } else { QEMU };
        let mut args: Vec<String> = vec![program.into(), "-accel".into(), "tcg".into(), "-m".into()];
        args.push(self.memory_mb.to_string());
        args.extend(["-nographic", "-serial", &serial, "-monitor", &monitor].map(String::from));
        if self.no_reboot {
            args.push("-no-reboot".into());
        }
        args.extend(["-boot".into(), "n".into(), "-device".into()]);
        args.push(match self.nic {
            Nic::E1000Ipxe => {
                let rom = if self.uefi_vars.is_some() { EFI_ROM } else { PXE_ROM };
                format!("e1000,netdev=n0,mac={},romfile={rom},bootindex=1", self.mac)
            }
            // An empty romfile: no iPXE, the firmware's driver and PXE stack.
            Nic::VirtioFirmwarePxe | Nic::VirtioFirmwareHttp => {
                format!("virtio-net-pci,netdev=n0,mac={},romfile=,bootindex=1", self.mac)
            }
        });
        if self.nic == Nic::VirtioFirmwareHttp {
            // OVMF reads these at start (OvmfPkg's NetworkPkg PCDs): with PXE off, the
            // NIC's boot options are HTTP Boot's.
            for family in ["IPv4", "IPv6"] {
                args.push("-fw_cfg".into());
                args.push(format!("name=opt/org.tianocore/{family}PXESupport,string=n"));
            }
        }
        args.push("-netdev".into());
        args.push(format!("tap,id=n0,ifname={},script=no,downscript=no", self.tap));
        if let (true, Some(vars)) = (self.aarch64, &self.uefi_vars) {
            // cortex-a57: a plain ARMv8.0 core, quicker under TCG than `max`.
            args.extend(["-machine", "virt", "-cpu", "cortex-a57", "-drive"].map(String::from));
            args.push(format!("if=pflash,format=raw,readonly=on,file={AAVMF_CODE}"));
            args.push("-drive".into());
            args.push(format!("if=pflash,format=raw,file={}", vars.display()));
        } else if let Some(vars) = &self.uefi_vars {
            let code = if self.secure_boot {
                // The Secure Boot build keeps its variables in SMM-only flash: QEMU
                // must emulate SMM and give that flash the "secure" property.
                args.extend(
                    ["-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"]
                        .map(String::from),
                );
                OVMF_SECBOOT_CODE
            } else {
                args.extend(["-machine", "q35"].map(String::from));
                OVMF_CODE
            };
            args.push("-drive".into());
            args.push(format!("if=pflash,format=raw,readonly=on,file={code}"));
            args.push("-drive".into());
            args.push(format!("if=pflash,format=raw,file={}", vars.display()));
        }
        args
    }
}

/// Reset the VM (a power cycle): it PXE-boots again.
///
/// QEMU's human monitor drops a command whose connection closes before it has been
/// read, so this waits for the banner's prompt, sends the command, and waits for
/// the prompt that follows it.
pub async fn reset(monitor: &Path) -> Result<(), LabError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = |e: std::io::Error| LabError::file(monitor, e);
    let talk = async {
        let mut sock = tokio::net::UnixStream::connect(monitor).await.map_err(io)?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        let mut prompts_wanted = 1;
        loop {
            let n = sock.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                return Err(LabError::Other("the QEMU monitor closed the connection".into()));
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(7).filter(|w| w == b"(qemu) ").count() >= prompts_wanted {
                if prompts_wanted == 2 {
                    return Ok(());
                }
                sock.write_all(b"system_reset\n").await.map_err(io)?;
                prompts_wanted = 2;
            }
        }
    };
    let limit = Duration::from_secs(10);
    tokio::time::timeout(limit, talk).await.map_err(|_| LabError::Timeout {
        what: "the QEMU monitor's answer".into(),
        secs: limit.as_secs(),
        detail: String::new(),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uefi_vm_gets_the_efi_rom_and_both_flash_drives() {
        let mut vm = PxeVm::bios("tap0", "52:54:00:00:00:01", Path::new("/tmp/console"));
        assert!(vm.command_line().iter().any(|a| a.contains("romfile=/usr/lib/ipxe/qemu/pxe-e1000.rom")));
        vm.uefi_vars = Some("/tmp/vars.fd".into());
        vm.monitor = Some("/tmp/mon".into());
        let args = vm.command_line();
        assert!(args.iter().any(|a| a.contains("efi-e1000.rom")), "{args:?}");
        assert_eq!(args.iter().filter(|a| a.starts_with("if=pflash")).count(), 2, "{args:?}");
        assert!(args.contains(&"unix:/tmp/mon,server,nowait".to_string()), "{args:?}");
        vm.nic = Nic::VirtioFirmwarePxe;
        let args = vm.command_line();
        assert!(args.iter().any(|a| a.starts_with("virtio-net-pci,") && a.contains("romfile=,")), "{args:?}");
        assert!(!args.iter().any(|a| a.contains(".rom")), "no option ROM: {args:?}");
    }
}
