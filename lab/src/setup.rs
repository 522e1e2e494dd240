//! What the lab needs on the host before it can boot anything: the Debian packages
//! (installed with apt-get when missing, saying which) and the static stage-one agent
//! (built with cargo). The server binary does neither: `ramboot images build` takes
//! the agent this builds.

use crate::LabError;
use anyhow::{Context, Result};
use ramboot::images::{self, BuildRequest, ImageStore};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

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

/// What an arm64 lab run needs besides [`NEEDS`].
pub const ARM64_NEEDS: &[(&str, &str)] =
    &[(crate::qemu::QEMU_AARCH64, "qemu-system-arm"), (crate::qemu::AAVMF_CODE, "qemu-efi-aarch64")];

/// Install whatever the lab needs that is missing, saying so on screen.
pub fn ensure_packages() -> Result<(), LabError> {
    install_missing(NEEDS)
}

/// For arm64 nodes: QEMU's arm64 system emulator and AAVMF, and dpkg's arm64
/// architecture (the images and the signed chain are arm64 packages, downloaded
/// and unpacked, never installed).
pub fn ensure_arm64() -> Result<(), LabError> {
    let foreign = std::process::Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()
        .map_err(|e| LabError::spawn("dpkg", e))?;
    if !String::from_utf8_lossy(&foreign.stdout).lines().any(|a| a.trim() == "arm64") {
        println!("lab: adding dpkg architecture arm64 (for downloading arm64 packages)");
        apt(&["--add-architecture", "arm64"], "dpkg")?;
        apt(&["update", "-q"], "apt-get")?;
    }
    install_missing(ARM64_NEEDS)
}

/// Run `program` (apt-get or dpkg) with `args`, non-interactively.
fn apt(args: &[&str], program: &str) -> Result<(), LabError> {
    let status = std::process::Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| LabError::spawn(program, e))?;
    if !status.success() {
        let command = format!("{program} {}", args.join(" "));
        return Err(LabError::Failed { command, detail: format!("failed ({status})") });
    }
    Ok(())
}

fn install_missing(needs: &[(&str, &str)]) -> Result<(), LabError> {
    let missing: BTreeSet<&str> = needs.iter().filter(|(f, _)| !Path::new(f).exists()).map(|(_, p)| *p).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<&str> = missing.into_iter().collect();
    println!("lab: installing missing Debian packages: {}", list.join(" "));
    apt(&["update", "-q"], "apt-get")?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(list);
    apt(&args, "apt-get")
}

/// The agent's target: glibc, `+crt-static` (there is no musl target here).
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";
/// For arm64 nodes: musl, linked by the toolchain's own `rust-lld` (no cross C
/// toolchain needed). `rustup target add` fetches its standard library once.
pub const ARM64_AGENT_TARGET: &str = "aarch64-unknown-linux-musl";

/// Build the static agent for stage one (for `arch`, Debian's name; `None`: this
/// host's); returns its path. The command is the one `ramboot images build` tells
/// an operator to run when it finds no agent.
pub fn build_agent(repo: &Path, arch: Option<&str>) -> Result<PathBuf, LabError> {
    let target = match arch {
        None | Some("amd64") => AGENT_TARGET,
        Some("arm64") => ARM64_AGENT_TARGET,
        Some(other) => return Err(LabError::Other(format!("no agent target for architecture {other}"))),
    };
    println!("lab: building ramboot-agent (static, {target})");
    let mut cargo = crate::bins::cargo();
    cargo
        .current_dir(repo)
        .args(["build", "--release", "-p", "ramboot-agent", "--target", target])
        // An explicit target dir: the path below must not depend on CARGO_TARGET_DIR.
        .args(["--target-dir", "target/agent"]);
    if target == AGENT_TARGET {
        cargo.env("RUSTFLAGS", "-C target-feature=+crt-static");
    } else {
        let installed = std::process::Command::new("rustup").args(["target", "add", target]).status();
        if !installed.is_ok_and(|s| s.success()) {
            return Err(LabError::Failed {
                command: format!("rustup target add {target}"),
                detail: "the arm64 agent needs this Rust target".into(),
            });
        }
        cargo.env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld").env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS",
            "-C linker-flavor=ld.lld -C link-self-contained=yes",
        );
    }
    let status = cargo.status().map_err(|e| LabError::spawn("cargo (to build the agent)", e))?;
    if !status.success() {
        let command = format!("cargo build --release -p ramboot-agent --target {target}");
        return Err(LabError::Failed { command, detail: format!("building ramboot-agent failed ({status})") });
    }
    Ok(repo.join("target/agent").join(target).join("release/ramboot-agent"))
}

/// Make sure the images a profile needs exist and are current, building them if
/// not: a recipe (or, for stage one, the agent) that changed since the last build
/// makes that build stale.
pub fn ensure_images(
    repo: &Path,
    data: &Path,
    cache: &Path,
    profile: &ramboot::profiles::Profile,
    rebuild: bool,
    arch: Option<&str>,
) -> Result<()> {
    let store = ImageStore::new(data.join("images"));
    let recipes = repo.join("images");
    for recipe in [&profile.stage1, &profile.image] {
        let agent = if recipe == &profile.stage1 { Some(build_agent(repo, arch)?) } else { None };
        let request = BuildRequest {
            recipe: recipe.clone(),
            recipes_dir: recipes.clone(),
            cache_dir: cache.to_path_buf(),
            agent,
            arch: arch.map(str::to_string),
            now_ms: ramboot::clock::now_ms(),
        };
        let name = &request.image_name();
        let mut wanted = vec![(images::RECIPE_DIGEST, images::recipe_digest(&recipes, recipe)?.to_string())];
        if let Some(agent) = &request.agent {
            wanted.push((images::AGENT_DIGEST, images::hash_file(agent)?.0.to_string()));
        }
        let current =
            store.manifest(name).ok().filter(|m| wanted.iter().all(|(key, digest)| m.inputs.get(*key) == Some(digest)));
        if current.is_some() && !rebuild {
            println!("lab: image {name} is up to date");
            continue;
        }
        println!("lab: building image {name} (recipe images/{recipe}/build.sh)");
        let started = Instant::now();
        let manifest = images::build(&store, &request)?;
        for (role, a) in &manifest.artifacts {
            println!("lab:   {name}/{role}: {}, sha256 {}", ramboot_proto::human_bytes(a.size), a.digest);
        }
        println!("lab: image {name} built in {:.0}s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Hard-link every file under `from` into `to` (made anew): a second server's own
/// copy of the built images, without copying their bytes.
pub fn link_tree(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("removing {}", to.display()))?;
    }
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            link_tree(&src, &dst)?;
        } else {
            std::fs::hard_link(&src, &dst)
                .with_context(|| format!("linking {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}
