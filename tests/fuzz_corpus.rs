//! Regression check for the DHCP fuzzers: replays every seed in fuzz/corpus/<target>/
//! and every saved crash in fuzz/artifacts/<target>/ through the target's function
//! (`ramboot_core::dhcp::fuzz::decide_bytes`, `ramboot_core::dhcp6::decide6_bytes`),
//! on stable, in a plain `cargo test`.
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

fn replay(files: &[PathBuf], target: fn(&[u8])) -> Vec<String> {
    let mut failures = Vec::new();
    for path in files {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| target(&bytes));
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

/// Replay fuzz/corpus/`name`/ (which must hold seeds) and fuzz/artifacts/`name`/.
fn corpus_never_panics(name: &str, target: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = files_in(&root.join("corpus").join(name));
    assert!(!corpus.is_empty(), "fuzz/corpus/{name}/ is empty or missing");
    let artifacts = files_in(&root.join("artifacts").join(name));

    let mut failures = replay(&corpus, target);
    failures.extend(replay(&artifacts, target));
    assert!(
        failures.is_empty(),
        "{name} panicked on {} of {} inputs:\n{}",
        failures.len(),
        corpus.len() + artifacts.len(),
        failures.join("\n")
    );
}

#[test]
fn dhcp_decide_corpus_never_panics() {
    corpus_never_panics("dhcp_decide", ramboot_core::dhcp::fuzz::decide_bytes);
}

#[test]
fn dhcp6_decide_corpus_never_panics() {
    corpus_never_panics("dhcp6_decide", ramboot_core::dhcp6::decide6_bytes);
}
