//! TFTP: read-only service of the iPXE binaries under `ipxe/`.
//!
//! Transfers (RFC 1350 with the 2347/2348/2349/7440 options) are async-tftp's; what
//! is ours is the handler: which names resolve to which files. Writes are refused
//! and no name can leave the root: `..`, backslashes, control characters, overlong
//! names and symlinks pointing outside are all turned away.

use async_tftp::packet;
use async_tftp::server::{Handler, TftpServerBuilder};
use blocking::{unblock, Unblock};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Longest file name we look up; real boot file names are short.
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

/// Serves files under one directory, read-only.
pub struct ReadOnlyDir {
    root: PathBuf,
}

impl ReadOnlyDir {
    pub fn new(root: &Path) -> std::io::Result<Self> {
        Ok(ReadOnlyDir { root: std::fs::canonicalize(root)? })
    }
}

impl Handler for ReadOnlyDir {
    type Reader = Unblock<File>;
    type Writer = Unblock<File>;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Self::Reader, Option<u64>), packet::Error> {
        let requested = path.to_string_lossy();
        let real = match resolve(&self.root, &requested) {
            Ok(real) => real,
            Err(e) => {
                warn!(%client, file = %requested.escape_debug(), reason = %e, "TFTP read refused");
                return Err(match e {
                    PathError::NotFound | PathError::Empty => packet::Error::FileNotFound,
                    _ => packet::Error::PermissionDenied,
                });
            }
        };
        let opened = unblock(move || {
            let file = File::open(&real)?;
            let len = file.metadata()?.len();
            Ok::<_, std::io::Error>((file, len))
        })
        .await;
        match opened {
            Ok((file, len)) => {
                info!(%client, file = %requested, bytes = len, "TFTP read");
                Ok((Unblock::new(file), Some(len)))
            }
            Err(e) => {
                warn!(%client, file = %requested, error = %e, "TFTP open failed");
                Err(packet::Error::FileNotFound)
            }
        }
    }

    async fn write_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
        _size: Option<u64>,
    ) -> Result<Self::Writer, packet::Error> {
        warn!(%client, file = %path.display(), "TFTP write refused: this server is read-only");
        Err(packet::Error::IllegalOperation)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("TFTP root {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TFTP: {0}")]
    Server(#[from] async_tftp::Error),
    #[error("TFTP socket: {0}")]
    Socket(#[from] std::io::Error),
}

/// Serve `root` on `socket` until `cancel` fires.
pub async fn serve(root: &Path, socket: std::net::UdpSocket, cancel: CancellationToken) -> Result<(), TftpError> {
    let handler = ReadOnlyDir::new(root).map_err(|source| TftpError::Root { path: root.to_path_buf(), source })?;
    socket.set_nonblocking(true)?;
    let server = TftpServerBuilder::with_handler(handler).std_socket(socket)?.build().await?;
    info!(addr = %server.listen_addr()?, root = %root.display(), "TFTP serving");
    tokio::select! {
        result = server.serve() => result.map_err(TftpError::from),
        _ = cancel.cancelled() => Ok(()),
    }
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
