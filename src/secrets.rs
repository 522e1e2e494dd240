//! The `secrets:` file: a YAML map of name → value that overlay templates read
//! with `secret("name")`. Read at start (`ramboot serve` refuses to start on any
//! error here) and again at every render, so a rotated secret needs no restart.
//!
//! As ssh refuses a private key others can read, the file is refused unless it is
//! owned by the server's user and grants the group and others nothing. The check
//! is made on the opened file (`fstat`), so a swap between check and read cannot
//! slip a different file through. Errors never quote the file's contents: a parse
//! error names the position only, since the parser's message may quote a value.

use crate::files::is_exposed;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A secrets file larger than this is not a list of passwords.
const MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secrets file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "secrets file {path} has mode {mode:03o}: the group or others can access it; \
         refused (fix: chmod 600 {path})"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "secrets file {path} is owned by uid {owner}, not by this server's uid {server}; \
         refused (fix: chown {server} {path})"
    )]
    Owner { path: PathBuf, owner: u32, server: u32 },
    #[error("secrets file {path} is {size} bytes; at most {MAX_BYTES} are read")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("secrets file {path}:{line}:{column}: not a YAML map of names to strings")]
    Invalid { path: PathBuf, line: u64, column: u64 },
}

/// Whether a file with this `mode` and `owner` may hold secrets for a server
/// running as `server_uid`.
pub fn check(path: &Path, mode: u32, owner: u32, server_uid: u32) -> Result<(), SecretsError> {
    if owner != server_uid {
        return Err(SecretsError::Owner { path: path.to_path_buf(), owner, server: server_uid });
    }
    if is_exposed(mode) {
        return Err(SecretsError::Exposed { path: path.to_path_buf(), mode: mode & 0o7777 });
    }
    Ok(())
}

/// Read the secrets at `path`, refusing a file others can read or that is not ours.
pub fn load(path: &Path) -> Result<BTreeMap<String, String>, SecretsError> {
    let io = |source| SecretsError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    check(path, meta.mode(), meta.uid(), nix::unistd::geteuid().as_raw())?;
    if meta.len() > MAX_BYTES {
        return Err(SecretsError::TooLarge { path: path.to_path_buf(), size: meta.len() });
    }
    let mut text = String::new();
    file.take(MAX_BYTES + 1).read_to_string(&mut text).map_err(io)?;
    crate::yaml::parse::<BTreeMap<String, String>>(path, &text).map_err(|e| SecretsError::Invalid {
        path: path.to_path_buf(),
        line: e.line,
        column: e.column,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("secrets.yaml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_private_file_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), "db_password: hunter2\napi: 'k e y'\n", 0o600);
        let secrets = load(&path).unwrap();
        assert_eq!(secrets["db_password"], "hunter2");
        assert_eq!(secrets["api"], "k e y");
        assert!(load(&write(tmp.path(), "a: b\n", 0o400)).is_ok(), "read-only for the owner is fine");
    }

    #[test]
    fn a_file_others_can_read_is_refused_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
            let path = write(tmp.path(), "db_password: hunter2\n", mode);
            let err = load(&path).unwrap_err().to_string();
            assert!(err.contains(&format!("chmod 600 {}", path.display())), "{mode:o}: {err}");
            assert!(err.contains(&format!("{mode:03o}")), "{mode:o}: {err}");
            assert!(!err.contains("hunter2"));
        }
    }

    #[test]
    fn a_file_owned_by_someone_else_is_refused() {
        let path = Path::new("/etc/ramboot/secrets.yaml");
        let err = check(path, 0o100600, 1000, 0).unwrap_err().to_string();
        assert!(err.contains("owned by uid 1000") && err.contains("chown 0 /etc/ramboot/secrets.yaml"), "{err}");
        assert!(check(path, 0o100600, 0, 0).is_ok());
    }

    #[test]
    fn errors_never_quote_the_contents() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), "db_password: [hunter2]\n", 0o600);
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("secrets.yaml:1:"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let missing = load(&tmp.path().join("nope")).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
    }
}
