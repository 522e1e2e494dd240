//! Regression check for the DHCP fuzzer: replays every seed in fuzz/corpus/dhcp_decide/
//! and every saved crash in fuzz/artifacts/dhcp_decide/ through
//! `ramboot_core::dhcp::fuzz::decide_bytes`, on stable, in a plain `cargo test`.
//! The fuzzer itself (nightly-style flags, libFuzzer) lives in fuzz/: see fuzz/README.md.

use std::path::{Path, PathBuf};

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        // skip dotfiles such as .gitkeep
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    files
}

fn replay(files: &[PathBuf]) -> Vec<String> {
    let mut failures = Vec::new();
    for path in files {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| ramboot_core::dhcp::fuzz::decide_bytes(&bytes));
        if let Err(payload) = outcome {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            failures.push(format!("{}: {msg}", path.display()));
        }
    }
    failures
}

#[test]
fn dhcp_decide_corpus_never_panics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = files_in(&root.join("corpus/dhcp_decide"));
    assert!(!corpus.is_empty(), "fuzz/corpus/dhcp_decide/ is empty or missing");
    let artifacts = files_in(&root.join("artifacts/dhcp_decide"));

    let mut failures = replay(&corpus);
    failures.extend(replay(&artifacts));
    assert!(
        failures.is_empty(),
        "decide_bytes panicked on {} of {} inputs:\n{}",
        failures.len(),
        corpus.len() + artifacts.len(),
        failures.join("\n")
    );
}
