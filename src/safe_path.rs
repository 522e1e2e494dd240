//! Mapping a requested file name to a file under a root, safely.
//!
//! Used wherever a name from the network or from an operator's file selects a file:
//! TFTP requests and profile template files. No name can leave the root: `..`,
//! backslashes, control characters, overlong names and symlinks pointing outside
//! are all refused.

use std::path::{Component, Path, PathBuf};

/// Longest file name we look up; real boot file and template names are short.
pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("file name is empty")]
    Empty,
    #[error("file name is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    #[error("file name contains a control character or backslash")]
    BadCharacter,
    #[error("file name leaves the served directory")]
    Traversal,
    #[error("no such file")]
    NotFound,
}

/// Map a requested name to a regular file under `root` (which must be canonical).
///
/// A leading `/` is taken as relative to the root, as tftpd-hpa does with `-s`,
/// because some PXE ROMs ask for `/undionly.kpxe`.
pub fn resolve(root: &Path, requested: &str) -> Result<PathBuf, PathError> {
    if requested.is_empty() {
        return Err(PathError::Empty);
    }
    if requested.len() > MAX_NAME_LEN {
        return Err(PathError::TooLong);
    }
    if requested.chars().any(|c| c.is_control() || c == '\\') {
        return Err(PathError::BadCharacter);
    }
    let relative = Path::new(requested.trim_start_matches('/'));
    let mut clean = PathBuf::new();
    for part in relative.components() {
        match part {
            Component::Normal(p) => clean.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Err(PathError::Traversal),
        }
    }
    if clean.as_os_str().is_empty() {
        return Err(PathError::Empty);
    }
    // Symlinks may point anywhere: judge the real path, not the spelling.
    let real = std::fs::canonicalize(root.join(&clean)).map_err(|_| PathError::NotFound)?;
    if !real.starts_with(root) {
        return Err(PathError::Traversal);
    }
    if !real.is_file() {
        return Err(PathError::NotFound);
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap().join("ipxe");
        std::fs::create_dir_all(root.join("efi")).unwrap();
        std::fs::write(root.join("undionly.kpxe"), b"x").unwrap();
        std::fs::write(root.join("efi/ipxe.efi"), b"y").unwrap();
        std::fs::write(root.parent().unwrap().join("secret"), b"s").unwrap();
        (dir, root)
    }

    #[test]
    fn plain_nested_and_rooted_names_resolve() {
        let (_d, root) = root();
        assert_eq!(resolve(&root, "undionly.kpxe").unwrap(), root.join("undionly.kpxe"));
        assert_eq!(resolve(&root, "/undionly.kpxe").unwrap(), root.join("undionly.kpxe"));
        assert_eq!(resolve(&root, "./efi/ipxe.efi").unwrap(), root.join("efi/ipxe.efi"));
    }

    #[test]
    fn traversal_attempts_are_refused() {
        let (_d, root) = root();
        assert_eq!(resolve(&root, "../secret"), Err(PathError::Traversal));
        assert_eq!(resolve(&root, "efi/../../secret"), Err(PathError::Traversal));
        assert_eq!(resolve(&root, "..\\secret"), Err(PathError::BadCharacter));
        assert_eq!(resolve(&root, "undionly.kpxe\0.txt"), Err(PathError::BadCharacter));
        assert_eq!(resolve(&root, &"a".repeat(300)), Err(PathError::TooLong));
        assert_eq!(resolve(&root, "/etc/passwd"), Err(PathError::NotFound), "absolute names stay inside the root");
        assert_eq!(resolve(&root, "efi"), Err(PathError::NotFound), "directories are not files");
        assert_eq!(resolve(&root, "/"), Err(PathError::Empty));
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let (_d, root) = root();
        std::os::unix::fs::symlink(root.parent().unwrap().join("secret"), root.join("link")).unwrap();
        assert_eq!(resolve(&root, "link"), Err(PathError::Traversal));
    }
}
