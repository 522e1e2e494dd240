//! The workspace's own binaries, built with cargo on demand: the `ramboot` server the
//! lab runs, and the `ramboot-lab` and `ramboot-sim` tools the tests run (cargo only
//! tells a package's tests where that package's own binaries are).
//!
//! One `cargo build` for all three, in the profile this crate was built in, so they
//! share one dependency build; once per process. It is a no-op when they are current.

use crate::LabError;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The checkout this crate was built from.
pub fn repo() -> PathBuf {
    let lab = Path::new(env!("CARGO_MANIFEST_DIR"));
    lab.parent().unwrap_or(lab).to_path_buf()
}

/// Paths of the workspace's binaries.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `ramboot`: the server and operator CLI.
    pub ramboot: PathBuf,
    /// `ramboot-lab`.
    pub lab: PathBuf,
    /// `ramboot-sim`.
    pub sim: PathBuf,
}

/// The cargo that built (or runs) us: `$CARGO`, else `cargo` on the PATH.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Build the binaries (once per process) and return where they are.
pub fn workspace() -> Result<&'static Bins, LabError> {
    static BUILT: OnceLock<Result<Bins, String>> = OnceLock::new();
    BUILT.get_or_init(|| build(&repo()).map_err(|e| e.to_string())).as_ref().map_err(|e| LabError::Other(e.clone()))
}

fn build(repo: &Path) -> Result<Bins, LabError> {
    let mut cmd = cargo();
    cmd.arg("build").arg("--manifest-path").arg(repo.join("Cargo.toml"));
    cmd.args(["-p", "ramboot", "-p", "ramboot-lab", "--bins", "--message-format=json-render-diagnostics"]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let shown = format!("{cmd:?}");
    eprintln!("building the workspace's binaries: cargo build -p ramboot -p ramboot-lab --bins");
    let out = cmd.stderr(Stdio::inherit()).output().map_err(|e| LabError::spawn("cargo", e))?;
    if !out.status.success() {
        return Err(LabError::Failed { command: shown, detail: out.status.to_string() });
    }
    let mut found = std::collections::HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if let (Some("compiler-artifact"), Some(name), Some(exe)) =
            (msg["reason"].as_str(), msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            found.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    let mut take = |name: &str| {
        found.remove(name).ok_or_else(|| LabError::Other(format!("{shown} reported no executable {name}")))
    };
    Ok(Bins { ramboot: take("ramboot")?, lab: take("ramboot-lab")?, sim: take("ramboot-sim")? })
}
