//! What the lab needs on the host before it can boot anything: the Debian packages
//! (installed with apt-get when missing, saying which) and the static stage-one agent
//! (built with cargo). The server binary does neither: `ramboot images build` takes
//! the agent this builds.

use crate::LabError;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Debian packages the lab needs, by the file that proves each is installed.
pub const NEEDS: &[(&str, &str)] = &[
    (crate::qemu::QEMU, "qemu-system-x86"),
    (crate::qemu::PXE_ROM, "ipxe-qemu"),
    ("/usr/lib/ipxe/undionly.kpxe", "ipxe"),
    (crate::qemu::OVMF_CODE, "ovmf"),
    ("/bin/busybox", "busybox-static"),
    ("/usr/bin/cpio", "cpio"),
    ("/usr/bin/zstd", "zstd"),
    ("/usr/bin/mksquashfs", "squashfs-tools"),
    ("/usr/sbin/depmod", "kmod"),
    ("/usr/sbin/debootstrap", "debootstrap"),
    ("/usr/bin/curl", "curl"),
    ("/usr/sbin/tgtd", "tgt"),
];

/// Install whatever the lab needs that is missing, saying so on screen.
pub fn ensure_packages() -> Result<(), LabError> {
    let missing: BTreeSet<&str> = NEEDS.iter().filter(|(f, _)| !Path::new(f).exists()).map(|(_, p)| *p).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<&str> = missing.into_iter().collect();
    println!("lab: installing missing Debian packages: {}", list.join(" "));
    let run = |args: &[&str]| -> Result<(), LabError> {
        let status = std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| LabError::spawn("apt-get", e))?;
        if !status.success() {
            let command = format!("apt-get {}", args.join(" "));
            return Err(LabError::Failed { command, detail: format!("failed ({status})") });
        }
        Ok(())
    };
    run(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(list);
    run(&args)
}

/// The agent's target: glibc, `+crt-static` (there is no musl target here).
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Build the static agent for stage one; returns its path. The command is the one
/// `ramboot images build` tells an operator to run when it finds no agent.
pub fn build_agent(repo: &Path) -> Result<PathBuf, LabError> {
    println!("lab: building ramboot-agent (static)");
    let status = crate::bins::cargo()
        .current_dir(repo)
        .args(["build", "--release", "-p", "ramboot-agent", "--target", AGENT_TARGET])
        // An explicit target dir: the path below must not depend on CARGO_TARGET_DIR.
        .args(["--target-dir", "target/agent"])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .status()
        .map_err(|e| LabError::spawn("cargo (to build the agent)", e))?;
    if !status.success() {
        let command = "cargo build --release -p ramboot-agent".to_string();
        return Err(LabError::Failed { command, detail: format!("building ramboot-agent failed ({status})") });
    }
    Ok(repo.join("target/agent").join(AGENT_TARGET).join("release/ramboot-agent"))
}
