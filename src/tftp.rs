//! TFTP: read-only service of the iPXE binaries under `ipxe/`.
//!
//! The protocol is ours (`ramboot_core::tftp::session`: a pure state machine); this is the thin
//! tokio layer around it. The server port takes requests; each read runs as its own
//! task on its own port (the TFTP transfer ID), under a cap on concurrent sessions.
//! Files are read once into memory and shared by every session that reads them
//! (all nodes fetch the same few iPXE binaries), so a boot storm costs one copy.
//!
//! Bounds (`TftpLimits`, from `tftp:` in the config): sessions in all and per
//! client address (beyond either: an ERROR, a counter, a throttled warning), the
//! client's `timeout` option only within bounds (the core declines the rest), and a
//! session's whole lifetime: a client that ACKs just often enough to dodge the
//! resend limit still cannot hold a session and its copy of the file for ever.
//!
//! Names are resolved by [`crate::safe_path::resolve`]: `..`, backslashes, control
//! characters, overlong names and symlinks pointing outside the root are refused.
//! Write requests get "illegal operation".
//!
//! Why not async-tftp (used before): it ignores a client's ERROR (its issue #18), so
//! a PXE ROM's tsize probe left a session resending into the void, and its window
//! retransmission had bugs; a sans-I/O core is also what the rest of ramboot does.

use crate::limits::{Refused, SourceSlots, Throttle};
use crate::safe_path::{resolve, PathError};
use ramboot_core::tftp::session::{
    error_packet, negotiate, parse_client, parse_request, Datagram, Limits, Session, Step,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

/// Concurrent transfers; more are refused with an ERROR (the client retries).
pub const MAX_SESSIONS: usize = 1024;
/// Concurrent transfers from one address: a PXE ROM reads one file at a time.
pub const MAX_SESSIONS_PER_SOURCE: usize = 8;
/// A whole session's lifetime: 1 MB in 512-byte lock-step blocks is 2,048 round
/// trips, 120 s even at 50 ms each.
pub const MAX_SESSION: Duration = Duration::from_secs(120);
/// Refusal warnings are logged at most this often (with a count of the rest).
const REFUSAL_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// What the TFTP service allows; [`Default`] is what `ramboot serve` uses unless
/// `tftp:` in the config says otherwise.
#[derive(Debug, Clone, Copy)]
pub struct TftpLimits {
    /// Negotiation and resend limits of each session (the pure core's).
    pub session: Limits,
    pub max_sessions: usize,
    pub max_sessions_per_source: usize,
    /// A session still running after this long is ended with an ERROR.
    pub max_session: Duration,
}

impl Default for TftpLimits {
    fn default() -> Self {
        TftpLimits {
            session: Limits::default(),
            max_sessions: MAX_SESSIONS,
            max_sessions_per_source: MAX_SESSIONS_PER_SOURCE,
            max_session: MAX_SESSION,
        }
    }
}
/// Files larger than this are not served over TFTP (iPXE loads the rest by HTTP).
const MAX_FILE: u64 = 128 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("TFTP root {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TFTP socket: {0}")]
    Socket(#[from] std::io::Error),
}

/// Files read into memory, shared by sessions; a file is read again when its
/// size or modification time changes.
#[derive(Default)]
struct FileCache {
    files: Mutex<HashMap<PathBuf, CachedFile>>,
}

/// A file's bytes and the modification time they were read at.
type CachedFile = (SystemTime, Arc<[u8]>);

impl FileCache {
    fn get(&self, path: &Path) -> std::io::Result<Arc<[u8]>> {
        let meta = std::fs::metadata(path)?;
        if meta.len() > MAX_FILE {
            return Err(std::io::Error::other(format!("{} bytes is too large for TFTP", meta.len())));
        }
        let mtime = meta.modified()?;
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, bytes)) = files.get(path) {
            if *seen == mtime && bytes.len() as u64 == meta.len() {
                return Ok(bytes.clone());
            }
        }
        let bytes: Arc<[u8]> = std::fs::read(path)?.into();
        files.insert(path.to_path_buf(), (mtime, bytes.clone()));
        Ok(bytes)
    }
}

/// Serve `root` on `socket` with the default limits until `cancel` fires.
pub async fn serve(root: &Path, socket: std::net::UdpSocket, cancel: CancellationToken) -> Result<(), TftpError> {
    serve_with(root, socket, TftpLimits::default(), cancel).await
}

/// Serve `root` on `socket` under `limits` until `cancel` fires.
pub async fn serve_with(
    root: &Path,
    socket: std::net::UdpSocket,
    limits: TftpLimits,
    cancel: CancellationToken,
) -> Result<(), TftpError> {
    let root = std::fs::canonicalize(root).map_err(|source| TftpError::Root { path: root.to_path_buf(), source })?;
    socket.set_nonblocking(true)?;
    let socket = UdpSocket::from_std(socket)?;
    let local = socket.local_addr()?;
    info!(
        addr = %local,
        root = %root.display(),
        max_sessions = limits.max_sessions,
        max_sessions_per_source = limits.max_sessions_per_source,
        "TFTP serving"
    );
    let sessions = SourceSlots::default();
    let mut refusals = Throttle::new(REFUSAL_WARN_INTERVAL);
    let cache = Arc::new(FileCache::default());
    let mut tasks = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; 1024];
    loop {
        let (len, client) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "TFTP receive failed");
                    continue;
                }
            },
            // Reap finished sessions so the set stays small.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let request = match parse_request(&buf[..len]) {
            Ok(r) => r,
            Err(e) => {
                debug!(%client, error = %e, "TFTP: not a request; ignored");
                continue;
            }
        };
        let refuse = |code: u16, message: String, outcome: &'static str| {
            metrics::counter!("ramboot_tftp_sessions_total", "outcome" => outcome).increment(1);
            let packet = error_packet(code, &message);
            let socket = &socket;
            async move {
                let _ = socket.send_to(&packet, client).await;
            }
        };
        if request.write {
            warn!(%client, file = %request.filename.escape_debug(), "TFTP write refused: this server is read-only");
            refuse(
                ramboot_core::tftp::session::code::ILLEGAL_OPERATION,
                "read-only server: writes are refused".into(),
                "write_refused",
            )
            .await;
            continue;
        }
        let real = match resolve(&root, &request.filename) {
            Ok(real) => real,
            Err(e) => {
                let (code, outcome) = match e {
                    PathError::NotFound | PathError::Empty => {
                        (ramboot_core::tftp::session::code::FILE_NOT_FOUND, "not_found")
                    }
                    _ => (ramboot_core::tftp::session::code::ACCESS_VIOLATION, "denied"),
                };
                warn!(%client, file = %request.filename.escape_debug(), reason = %e, "TFTP read refused");
                refuse(code, e.to_string(), outcome).await;
                continue;
            }
        };
        let permit = match sessions.try_acquire(client.ip(), limits.max_sessions_per_source, Some(limits.max_sessions))
        {
            Ok(permit) => permit,
            Err(refused) => {
                if let Some(suppressed) = refusals.allow(std::time::Instant::now()) {
                    warn!(
                        %client,
                        reason = %refused,
                        suppressed,
                        "TFTP session refused (the client may retry); `suppressed` more since the last warning"
                    );
                }
                let (message, outcome) = match refused {
                    Refused::Source(_) => ("too many sessions from your address, retry later", "source_busy"),
                    Refused::Total(_) => ("server busy, retry", "busy"),
                };
                refuse(ramboot_core::tftp::session::code::NOT_DEFINED, message.into(), outcome).await;
                continue;
            }
        };
        let bytes = {
            let (cache, real) = (cache.clone(), real.clone());
            tokio::task::spawn_blocking(move || cache.get(&real)).await
        };
        let bytes = match bytes {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                warn!(%client, file = %real.display(), error = %e, "TFTP open failed");
                refuse(ramboot_core::tftp::session::code::FILE_NOT_FOUND, e.to_string(), "not_found").await;
                continue;
            }
            Err(e) => {
                warn!(error = %e, "TFTP file read task failed");
                continue;
            }
        };
        let span = info_span!("tftp", %client, file = %request.filename);
        let cancel = cancel.clone();
        let options = request.options;
        tasks.spawn(
            async move {
                let _permit = permit;
                if let Err(e) = transfer(local, client, &options, bytes, &limits, cancel).await {
                    warn!(error = %e, "TFTP session socket failed");
                }
            }
            .instrument(span),
        );
    }
    tasks.shutdown().await;
    Ok(())
}

/// Run one read session from a fresh port (the server's transfer ID).
async fn transfer(
    local: SocketAddr,
    client: SocketAddr,
    options: &[(String, String)],
    file: Arc<[u8]>,
    limits: &TftpLimits,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let socket = UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await?;
    // Connected: the kernel drops packets from any other transfer ID.
    socket.connect(client).await?;
    let negotiated = negotiate(options, file.len() as u64, &limits.session);
    let (mut session, mut step) = Session::start(&negotiated, file.len() as u64, &limits.session);
    let started = std::time::Instant::now();
    let expires = tokio::time::Instant::now() + limits.max_session;
    let mut packet = Vec::with_capacity(usize::from(negotiated.blksize) + 4);
    let mut buf = vec![0u8; 1024];
    let mut deadline = tokio::time::Instant::now();
    loop {
        match step {
            Step::Send(sends) => {
                deadline = tokio::time::Instant::now() + session.timeout();
                for send in sends {
                    match send {
                        Datagram::Oack => {
                            socket.send(negotiated.oack.as_deref().unwrap_or_default()).await?;
                        }
                        Datagram::Data { index, offset, len } => {
                            let offset = offset as usize;
                            packet.clear();
                            packet.extend_from_slice(&ramboot_core::tftp::session::data_header(index as u16));
                            packet.extend_from_slice(&file[offset..offset + len]);
                            socket.send(&packet).await?;
                        }
                    }
                }
            }
            // A duplicate ACK: keep waiting, but not longer than for what we sent.
            Step::Wait => {}
            Step::Done => {
                let secs = started.elapsed().as_secs_f64();
                metrics::counter!("ramboot_tftp_sessions_total", "outcome" => "served").increment(1);
                metrics::counter!("ramboot_tftp_bytes_total").increment(file.len() as u64);
                // What the client asked for next to what it got: PXE ROMs differ.
                let asked: Vec<String> = options.iter().map(|(k, v)| format!("{k}={v}")).collect();
                info!(
                    bytes = file.len(),
                    blksize = negotiated.blksize,
                    windowsize = negotiated.windowsize,
                    asked = ?asked.join(" "),
                    ms = (secs * 1000.0) as u64,
                    "TFTP read"
                );
                return Ok(());
            }
            Step::Abort(reason) => {
                if reason.is_tsize_probe() {
                    metrics::counter!("ramboot_tftp_sessions_total", "outcome" => "tsize_probe").increment(1);
                    debug!(%reason, "TFTP: client read the size and ended the session");
                } else {
                    metrics::counter!("ramboot_tftp_sessions_total", "outcome" => "aborted").increment(1);
                    warn!(%reason, "TFTP transfer aborted");
                }
                return Ok(());
            }
        }
        step = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(expires) => {
                metrics::counter!("ramboot_tftp_sessions_total", "outcome" => "expired").increment(1);
                warn!(max_session = ?limits.max_session, "TFTP session ran out of time; ended");
                let packet = error_packet(ramboot_core::tftp::session::code::NOT_DEFINED, "session time limit reached");
                // Best effort: the client may be gone.
                let _ = socket.send(&packet).await;
                return Ok(());
            }
            r = tokio::time::timeout_at(deadline, socket.recv(&mut buf)) => match r {
                Err(_) => session.on_timeout(),
                // ICMP port unreachable: the client went away; resends run out fast.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => session.on_timeout(),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(n)) => match parse_client(&buf[..n]) {
                    Ok(p) => session.on_packet(&p),
                    Err(_) => Step::Wait,
                },
            },
        };
    }
}
