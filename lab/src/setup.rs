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

/// Make sure the images a profile needs exist and are current, building them if
/// not: a recipe (or, for stage one, the agent) that changed since the last build
/// makes that build stale.
pub fn ensure_images(
    repo: &Path,
    data: &Path,
    cache: &Path,
    profile: &ramboot::profiles::Profile,
    rebuild: bool,
) -> Result<()> {
    let store = ImageStore::new(data.join("images"));
    let recipes = repo.join("images");
    for name in [&profile.stage1, &profile.image] {
        let agent = if name == &profile.stage1 { Some(build_agent(repo)?) } else { None };
        let mut wanted = vec![(images::RECIPE_DIGEST, images::recipe_digest(&recipes, name)?.to_string())];
        if let Some(agent) = &agent {
            wanted.push((images::AGENT_DIGEST, images::hash_file(agent)?.0.to_string()));
        }
        let current =
            store.manifest(name).ok().filter(|m| wanted.iter().all(|(key, digest)| m.inputs.get(*key) == Some(digest)));
        if current.is_some() && !rebuild {
            println!("lab: image {name} is up to date");
            continue;
        }
        println!("lab: building image {name} (recipe images/{name}/build.sh)");
        let started = Instant::now();
        let manifest = images::build(
            &store,
            &BuildRequest {
                recipe: name.clone(),
                recipes_dir: recipes.clone(),
                cache_dir: cache.to_path_buf(),
                agent,
                now_ms: ramboot::clock::now_ms(),
            },
        )?;
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
