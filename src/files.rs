//! Modes of what the server keeps on disk. The data directory (database, admin
//! token, images, volumes) is the server's alone: 0700, and the files that hold
//! node state or disks 0600. `ramboot serve` also sets its umask to 0077 so every
//! file it creates later (SQLite's -wal and -shm, blobs, backing files) starts
//! private; the explicit modes here also cover files made by an older version or
//! by hand, and callers that run without that umask (tests, the CLI).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use tracing::warn;

/// Private to the owner: directories.
pub const DIR_MODE: u32 = 0o700;
/// Private to the owner: files.
pub const FILE_MODE: u32 = 0o600;

/// New files and directories of this process get no group or other bits.
pub fn private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Does `mode` give the group or others any access?
pub fn is_exposed(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// Create `dir` (and its parents) as 0700, or tighten an existing one that grants
/// the group or others access (with a warning saying so).
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
    tighten(dir, DIR_MODE)
}

/// Tighten an existing file to 0600 if the group or others have access; a missing
/// file is fine (nothing to protect yet).
pub fn restrict_file(path: &Path) -> std::io::Result<()> {
    match tighten(path, FILE_MODE) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
    let have = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if is_exposed(have) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        warn!(path = %path.display(), was = format!("{have:o}"), now = format!("{mode:o}"), "tightened the mode of a private path");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_data_dir_is_created_private_and_a_loose_one_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("a/data");
        ensure_private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        // Already private, more so than 0700: left alone.
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o500)).unwrap();
        ensure_private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o500);
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn files_are_tightened_to_0600_and_missing_ones_are_fine() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("db");
        restrict_file(&file).unwrap();
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        restrict_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert!(is_exposed(0o640) && is_exposed(0o604) && !is_exposed(0o600) && !is_exposed(0o400));
    }
}
