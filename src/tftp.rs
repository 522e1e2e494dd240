//! TFTP: read-only service of the iPXE binaries under `ipxe/`.
//!
//! Transfers (RFC 1350 with the 2347/2348/2349/7440 options) are async-tftp's; what
//! is ours is the handler: which names resolve to which files. Writes are refused
//! and no name can leave the root: `..`, backslashes, control characters, overlong
//! names and symlinks pointing outside are all turned away.

use crate::safe_path::{resolve, PathError};
use async_tftp::packet;
use async_tftp::server::{Handler, TftpServerBuilder};
use blocking::{unblock, Unblock};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
                let outcome = if matches!(e, PathError::NotFound | PathError::Empty) { "not_found" } else { "denied" };
                metrics::counter!("ramboot_tftp_sessions_total", "outcome" => outcome).increment(1);
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
                metrics::counter!("ramboot_tftp_sessions_total", "outcome" => "served").increment(1);
                metrics::counter!("ramboot_tftp_bytes_total").increment(len);
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
        metrics::counter!("ramboot_tftp_sessions_total", "outcome" => "write_refused").increment(1);
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
