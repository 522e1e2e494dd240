//! TFTP: read-only service of the iPXE binaries under `ipxe/`.
//!
//! The protocol is ours (`ramboot_core::tftp::session`: a pure state machine); this is the thin
//! layer around it. The server port takes requests (tokio); each read runs on its
//! own port (the TFTP transfer ID), under a cap on concurrent sessions. The first
//! few at once (`threaded_sessions`) each get a blocking-pool thread: a lockstep
//! download is one send and one blocking receive per block, woken by the kernel
//! directly (tftpd-hpa's cost per block, not an event loop's). A storm's other
//! thousands are tasks on the TFTP runtime's one thread, so together they weigh
//! as one thread beside DHCP's and HTTP's (see `SessionSocket`).
//! Files are read once into memory and shared by every session that reads them
//! (all nodes fetch the same few iPXE binaries), so a boot storm costs one copy.
//!
//! Bounds (`TftpLimits`, from `tftp:` in the config): sessions in all and per
//! client address (beyond either: an ERROR, a counter, a throttled warning), the
//! client's `timeout` option only within bounds (the core declines the rest), and a
//! session's whole lifetime: a client that ACKs just often enough to dodge the
//! resend limit still cannot hold a session and its copy of the file for ever.
//!
//! Answers come from the address the request was sent to, whatever the listener is
//! bound to (`0.0.0.0`, a secondary address, a VIP): the request is read with
//! `IP_PKTINFO` and each session's socket is bound to its destination. NIC
//! firmware drops DATA from any other source (pin/tftp issue 58, danderson/netboot
//! issue 122). The block size is capped so one DATA fits one frame of the interface
//! the request came in on (`Limits::for_link_mtu`): UNDI ROMs drop IP fragments.
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
    error_packet, negotiate, parse_client, parse_request, AbortReason, Datagram, Limits, Session, Step,
};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
/// Sessions with a thread each: lockstep turnaround for a normal day's few; past
/// them a storm's sessions are tasks, and weigh as one thread (`SessionSocket`).
pub const THREADED_SESSIONS: usize = 16;
/// How often a session blocked in recv(2) wakes to check shutdown and its clocks.
const SESSION_WAKE: Duration = Duration::from_millis(100);
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
    /// Sessions running at once on a thread each; the rest are tasks on the TFTP
    /// runtime's one thread (see `SessionSocket`).
    pub threaded_sessions: usize,
}

impl Default for TftpLimits {
    fn default() -> Self {
        TftpLimits {
            session: Limits::default(),
            max_sessions: MAX_SESSIONS,
            max_sessions_per_source: MAX_SESSIONS_PER_SOURCE,
            max_session: MAX_SESSION,
            threaded_sessions: THREADED_SESSIONS,
        }
    }
}
/// How long the request loop waits for a generated file (a GRUB config is a store
/// read and write): a slow database delays other requests at most this long.
const GENERATED_WITHIN: Duration = Duration::from_secs(3);
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
struct FileCache {
    files: Mutex<HashMap<PathBuf, CachedFile>>,
    /// Held while a file is read into the cache: a storm's sessions that all find
    /// a new or changed file wait for one read instead of each making a copy.
    reading: tokio::sync::Mutex<()>,
    /// Most bytes kept: past it the files used longest ago are dropped (the signed
    /// chain's stage-one files come through here, and each rebuild has new ones).
    max_bytes: u64,
}

impl Default for FileCache {
    fn default() -> Self {
        FileCache { files: Mutex::default(), reading: tokio::sync::Mutex::default(), max_bytes: CACHE_BYTES }
    }
}

/// The file cache's bound: every iPXE binary and a few stage-one sets.
const CACHE_BYTES: u64 = 512 << 20;

/// A file's bytes, the modification time they were read at, and when a session
/// last took them.
struct CachedFile {
    mtime: SystemTime,
    bytes: Arc<[u8]>,
    used: std::time::Instant,
}

/// What the cache holds of a file, as it is on disk now.
enum Lookup {
    Fresh(Arc<[u8]>),
    /// Not held, or changed since: read it ([`FileCache::read`]) with its mtime.
    Stale(SystemTime),
}

impl FileCache {
    fn get(&self, path: &Path) -> std::io::Result<Arc<[u8]>> {
        match self.lookup(path)? {
            Lookup::Fresh(bytes) => Ok(bytes),
            Lookup::Stale(mtime) => self.read(path, mtime),
        }
    }

    /// One stat: cheap enough for an async task, where reading is not.
    fn lookup(&self, path: &Path) -> std::io::Result<Lookup> {
        let meta = std::fs::metadata(path)?;
        if meta.len() > MAX_FILE {
            return Err(std::io::Error::other(format!("{} bytes is too large for TFTP", meta.len())));
        }
        let mtime = meta.modified()?;
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        match files.get_mut(path) {
            Some(cached) if cached.mtime == mtime && cached.bytes.len() as u64 == meta.len() => {
                cached.used = std::time::Instant::now();
                Ok(Lookup::Fresh(cached.bytes.clone()))
            }
            _ => Ok(Lookup::Stale(mtime)),
        }
    }

    fn read(&self, path: &Path, mtime: SystemTime) -> std::io::Result<Arc<[u8]>> {
        let bytes: Arc<[u8]> = std::fs::read(path)?.into();
        let now = std::time::Instant::now();
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files.insert(path.to_path_buf(), CachedFile { mtime, bytes: bytes.clone(), used: now });
        // Sessions hold their own reference: dropping an entry never cuts a transfer.
        let mut total: u64 = files.values().map(|f| f.bytes.len() as u64).sum();
        while total > self.max_bytes {
            let oldest = files.iter().filter(|(p, _)| p.as_path() != path).min_by_key(|(_, f)| f.used);
            let Some(oldest) = oldest.map(|(p, _)| p.clone()) else { break };
            if let Some(dropped) = files.remove(&oldest) {
                total -= dropped.bytes.len() as u64;
            }
        }
        Ok(bytes)
    }
}

/// Running sessions by the client's address and port (its transfer ID), each with
/// the request that opened it. The same request again from the same port is the
/// client saying our first packet was lost or late, not a new transfer: the session
/// is told (it resends at once if the client has not answered yet), and no second
/// session is opened. A second one would answer from a new port the client ignores,
/// resending into the void until it gives up (a 5,000-node storm made 3,552 such).
#[derive(Default, Clone)]
struct LiveRequests(Arc<Mutex<HashMap<SocketAddr, Arc<LiveRequest>>>>);

struct LiveRequest {
    request: Box<[u8]>,
    /// Set by the listener, taken by the session on its next wake.
    repeated: AtomicBool,
    /// Wakes a session that runs as a task (a thread looks at `repeated` on its own).
    repeated_notify: tokio::sync::Notify,
}

/// A session's entry in [`LiveRequests`], removed when dropped.
struct LiveEntry {
    requests: LiveRequests,
    client: SocketAddr,
    live: Arc<LiveRequest>,
}

impl LiveRequests {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<LiveRequest>>> {
        // Every change is one map operation: the map is whole even after a panic.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `request` from `client` repeats the one a running session was opened
    /// by; if so, that session is told. A different request from the same port (a
    /// ROM that probed `tsize` and asks again) is a new transfer.
    fn repeat(&self, client: SocketAddr, request: &[u8]) -> bool {
        match self.map().get(&client) {
            Some(live) if *live.request == *request => {
                live.repeated.store(true, Ordering::Relaxed);
                live.repeated_notify.notify_one();
                true
            }
            _ => false,
        }
    }

    /// Enter a new session's request; a session opened later for the same port
    /// replaces it.
    fn enter(&self, client: SocketAddr, request: &[u8]) -> LiveEntry {
        let live = Arc::new(LiveRequest {
            request: request.into(),
            repeated: AtomicBool::new(false),
            repeated_notify: tokio::sync::Notify::new(),
        });
        self.map().insert(client, live.clone());
        LiveEntry { requests: self.clone(), client, live }
    }
}

impl LiveEntry {
    /// Whether the client repeated its request since the last look.
    fn take_repeat(&self) -> bool {
        self.live.repeated.swap(false, Ordering::Relaxed)
    }
}

impl Drop for LiveEntry {
    fn drop(&mut self) {
        let mut map = self.requests.map();
        if map.get(&self.client).is_some_and(|live| Arc::ptr_eq(live, &self.live)) {
            map.remove(&self.client);
        }
    }
}

/// A file that is not read from the root: rendered for the client that asked (the
/// signed chain's `grub.cfg`), or found elsewhere (a content-addressed artifact).
pub enum Generated {
    Bytes(Arc<[u8]>),
    /// Read through the shared file cache, like the root's files.
    File(PathBuf),
}

/// Why a generated name is not served: the client gets "file not found" with it.
pub type GeneratedError = String;

/// A future that finds or renders a generated file.
pub type GeneratedFuture = futures_util::future::BoxFuture<'static, Result<Generated, GeneratedError>>;

/// Names served by something other than the root directory.
pub trait GeneratedFiles: Send + Sync + 'static {
    /// `None`: not one of its names (the root's file, if any, is served).
    fn open(&self, name: &str, client: IpAddr) -> Option<GeneratedFuture>;
}

/// Serve `root` on `socket` with the default limits until `cancel` fires.
pub async fn serve(root: &Path, socket: std::net::UdpSocket, cancel: CancellationToken) -> Result<(), TftpError> {
    serve_with(root, socket, TftpLimits::default(), None, cancel).await
}

/// What a request reads: a file under the root, or a generated one.
enum Source {
    Root(PathBuf),
    Generated(GeneratedFuture),
}

/// Serve `root` (and the names `generated` knows) on `socket` under `limits`
/// until `cancel` fires.
pub async fn serve_with(
    root: &Path,
    socket: std::net::UdpSocket,
    limits: TftpLimits,
    generated: Option<Arc<dyn GeneratedFiles>>,
    cancel: CancellationToken,
) -> Result<(), TftpError> {
    let root = std::fs::canonicalize(root).map_err(|source| TftpError::Root { path: root.to_path_buf(), source })?;
    socket.set_nonblocking(true)?;
    // A storm's read requests all arrive at once; each one dropped here costs its
    // node a retransmit timeout (the simulator's 1,000-node storms measured it).
    crate::udp::deepen_receive_queue(&socket, crate::udp::LISTENER_RECEIVE_BUFFER);
    let socket = UdpSocket::from_std(socket)?;
    let local = socket.local_addr()?;
    // IPv4: each request tells where it arrived (see the module doc). IPv6 sessions
    // answer from the listening address, as before.
    let pktinfo = local.is_ipv4() && {
        let on = crate::pktinfo::enable(&socket);
        if let Err(e) = &on {
            warn!(error = %e, "TFTP: no IP_PKTINFO; sessions answer from the listening address");
        }
        on.is_ok()
    };
    info!(
        addr = %local,
        max_blksize = limits.session.max_blksize,
        root = %root.display(),
        max_sessions = limits.max_sessions,
        max_sessions_per_source = limits.max_sessions_per_source,
        "TFTP serving"
    );
    let sessions = SourceSlots::default();
    let mut refusals = Throttle::new(REFUSAL_WARN_INTERVAL);
    let cache = Arc::new(FileCache::default());
    let live = LiveRequests::default();
    let threads = Arc::new(tokio::sync::Semaphore::new(limits.threaded_sessions));
    let mtus = LinkMtus::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; 1024];
    loop {
        let (len, client, arrival) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = recv_request(&socket, pktinfo, &mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "TFTP receive failed");
                    continue;
                }
            },
            // Reap finished sessions so the set stays small.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        if live.repeat(client, &buf[..len]) {
            metrics::counter!("ramboot_tftp_repeated_requests_total").increment(1);
            debug!(%client, "TFTP: a running session's request again; that session answers it");
            continue;
        }
        let request = match parse_request(&buf[..len]) {
            Ok(r) => r,
            Err(e) => {
                debug!(%client, error = %e, "TFTP: not a request; ignored");
                continue;
            }
        };
        let source = answer_from(local.ip(), arrival);
        let refuse = |code: u16, message: String, outcome: &'static str| {
            metrics::counter!("ramboot_tftp_sessions_total", "outcome" => outcome).increment(1);
            let packet = error_packet(code, &message);
            let socket = &socket;
            async move {
                // From the address asked, like the session would have been.
                let _ = match (client, source) {
                    (SocketAddr::V4(to), IpAddr::V4(from)) if pktinfo => {
                        crate::pktinfo::send_from(socket, &packet, to, from).await
                    }
                    _ => socket.send_to(&packet, client).await,
                };
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
        let generated = generated.as_ref().and_then(|g| g.open(&request.filename, client.ip()));
        let source_file = match generated {
            Some(future) => Ok(Source::Generated(future)),
            None => resolve(&root, &request.filename).map(Source::Root),
        };
        let source_file = match source_file {
            Ok(found) => found,
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
        let file = match source_file {
            Source::Root(real) => SessionFile::Cached(cache.clone(), real),
            Source::Generated(future) => match tokio::time::timeout(GENERATED_WITHIN, future).await {
                Err(_) => {
                    warn!(
                        %client,
                        file = %request.filename.escape_debug(),
                        "TFTP: generated file not ready in time; refused (the client retries)"
                    );
                    let busy = "server busy, retry".to_string();
                    refuse(ramboot_core::tftp::session::code::NOT_DEFINED, busy, "busy").await;
                    continue;
                }
                Ok(Ok(Generated::File(path))) => SessionFile::Cached(cache.clone(), path),
                Ok(Ok(Generated::Bytes(bytes))) => SessionFile::Bytes(bytes),
                Ok(Err(message)) => {
                    debug!(%client, file = %request.filename.escape_debug(), %message, "TFTP: generated file refused");
                    refuse(ramboot_core::tftp::session::code::FILE_NOT_FOUND, message, "not_found").await;
                    continue;
                }
            },
        };
        let entry = live.enter(client, &buf[..len]);
        let link_mtu = mtus.get(arrival.map_or(0, |a| a.ifindex));
        spawn_session(
            &mut tasks,
            (request, client, source),
            (file, link_mtu),
            (permit, entry),
            (&limits, &threads),
            &cancel,
        );
    }
    tasks.shutdown().await;
    Ok(())
}

/// What a session sends: a file under the root, through the shared cache, or
/// bytes generated for this client.
enum SessionFile {
    Cached(Arc<FileCache>, PathBuf),
    Bytes(Arc<[u8]>),
}

impl SessionFile {
    /// The file's bytes, for a session on a thread: a stat, or (new or changed)
    /// a read that the other sessions wanting it wait for.
    fn load(self) -> std::io::Result<Arc<[u8]>> {
        let (cache, path) = match self {
            SessionFile::Bytes(bytes) => return Ok(bytes),
            SessionFile::Cached(cache, path) => (cache, path),
        };
        if let Lookup::Fresh(bytes) = cache.lookup(&path)? {
            return Ok(bytes);
        }
        let _one_reader = cache.reading.blocking_lock();
        cache.get(&path)
    }

    /// The same for a session that runs as a task: the stat on the runtime's
    /// thread, a read on a blocking one.
    async fn load_async(self) -> std::io::Result<Arc<[u8]>> {
        let (cache, path) = match self {
            SessionFile::Bytes(bytes) => return Ok(bytes),
            SessionFile::Cached(cache, path) => (cache, path),
        };
        if let Lookup::Fresh(bytes) = cache.lookup(&path)? {
            return Ok(bytes);
        }
        let _one_reader = cache.reading.lock().await;
        // Read by the session this one waited for, most likely.
        if let Lookup::Fresh(bytes) = cache.lookup(&path)? {
            return Ok(bytes);
        }
        let reader = cache.clone();
        tokio::task::spawn_blocking(move || reader.get(&path)).await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

/// Interface MTUs by index, each read again after [`LinkMtus::FOR`]: a read is
/// an ioctl and a sysfs file, and a storm asks thousands of times a second.
#[derive(Default)]
struct LinkMtus(Mutex<HashMap<u32, (std::time::Instant, Option<u32>)>>);

impl LinkMtus {
    const FOR: Duration = Duration::from_secs(1);

    fn get(&self, ifindex: u32) -> Option<u32> {
        let now = std::time::Instant::now();
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match known.get(&ifindex) {
            Some(&(read, mtu)) if now.duration_since(read) < Self::FOR => mtu,
            _ => {
                let mtu = crate::pktinfo::interface_mtu(ifindex);
                known.insert(ifindex, (now, mtu));
                mtu
            }
        }
    }
}

/// Run one read session: (request, client, the address to answer from), (its
/// file, the interface the request came in on), (its slot, its entry among live
/// requests). The first [`TftpLimits::threaded_sessions`] running at once get a
/// thread each, the rest are tasks on the TFTP runtime (see [`SessionSocket`]).
fn spawn_session(
    tasks: &mut tokio::task::JoinSet<()>,
    (request, client, source): (ramboot_core::tftp::session::Request, SocketAddr, IpAddr),
    (file, link_mtu): (SessionFile, Option<u32>),
    (permit, entry): (crate::limits::Slot, LiveEntry),
    (limits, threads): (&TftpLimits, &Arc<tokio::sync::Semaphore>),
    cancel: &CancellationToken,
) {
    let span = info_span!("tftp", %client, file = %request.filename);
    let (cancel, limits) = (cancel.clone(), *limits);
    let options = request.options;
    let session = move |loaded: std::io::Result<Arc<[u8]>>, threaded: bool| {
        let link = Link { source, mtu: link_mtu };
        async move {
            let bytes = match loaded {
                Ok(bytes) => bytes,
                Err(e) => {
                    warn!(error = %e, "TFTP open failed");
                    metrics::counter!("ramboot_tftp_sessions_total", "outcome" => "not_found").increment(1);
                    let packet = error_packet(ramboot_core::tftp::session::code::FILE_NOT_FOUND, &e.to_string());
                    // From the address asked, as the transfer would have come; best effort.
                    let _ = std::net::UdpSocket::bind(SocketAddr::new(link.source, 0))
                        .and_then(|socket| socket.send_to(&packet, client));
                    return;
                }
            };
            let session_limits = session_limits(&limits, link.mtu);
            let socket = match SessionSocket::open(&link, client, threaded) {
                Ok(socket) => socket,
                Err(e) => return warn!(error = %e, "TFTP session socket failed"),
            };
            let run = transfer(socket, link, &options, bytes, (&limits, session_limits), (&entry, &cancel));
            if let Err(e) = run.await {
                warn!(error = %e, "TFTP session socket failed");
            }
        }
    };
    // The file (a stat, or a read if it changed) is taken by the session, not by
    // the listener: in a storm the listener admits thousands of requests at once,
    // and each of its waits for another thread was a turn behind every busy
    // session (a 5,000-node storm's read requests waited out a retransmit timeout
    // for admission). A session as a task reads on a blocking thread only when the
    // cache must read, one read at a time: thousands of hand-offs would be
    // thousands of new threads, and thousands of copies of the file.
    match threads.clone().try_acquire_owned() {
        Ok(thread) => {
            tasks.spawn_blocking(move || {
                let (_permit, _thread, _entered) = (permit, thread, span.enter());
                // The threaded socket never returns Pending: this runs it to the end.
                futures_executor::block_on(session(file.load(), true));
            });
        }
        Err(_) => {
            let run = async move {
                let _permit = permit;
                session(file.load_async().await, false).await;
            };
            tasks.spawn(run.instrument(span));
        }
    }
}

/// Receive a request: (length, sender, where it arrived if `pktinfo` is on).
async fn recv_request(
    socket: &UdpSocket,
    pktinfo: bool,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<crate::pktinfo::PacketInfo>)> {
    if pktinfo {
        let (len, peer, info) = crate::pktinfo::recv_from(socket, buf).await?;
        Ok((len, SocketAddr::V4(peer), Some(info)))
    } else {
        let (len, peer) = socket.recv_from(buf).await?;
        Ok((len, peer, None))
    }
}

/// The address a session answers from: where its request arrived, else (no
/// `IP_PKTINFO`) the listening address. Binding to `0.0.0.0` would let the route
/// pick the primary address, which firmware that asked a secondary one or a VIP drops.
fn answer_from(listening: IpAddr, arrival: Option<crate::pktinfo::PacketInfo>) -> IpAddr {
    match arrival {
        Some(info) if !info.local.is_unspecified() && info.local != Ipv4Addr::BROADCAST => IpAddr::V4(info.local),
        _ => listening,
    }
}

/// A session's negotiation limits: the configured ones, lowered to the MTU of the
/// link the request came in on when it is known.
fn session_limits(limits: &TftpLimits, link_mtu: Option<u32>) -> Limits {
    link_mtu.map_or(limits.session, |mtu| limits.session.for_link_mtu(mtu))
}

/// Where a session's request arrived: the address to answer from and that link's MTU.
#[derive(Debug, Clone, Copy)]
struct Link {
    source: IpAddr,
    mtu: Option<u32>,
}

/// Run one read session from a fresh port (the server's transfer ID) on the
/// address the request was sent to, until it ends.
async fn transfer(
    socket: SessionSocket,
    link: Link,
    options: &[(String, String)],
    file: Arc<[u8]>,
    (limits, session_limits): (&TftpLimits, Limits),
    (entry, cancel): (&LiveEntry, &CancellationToken),
) -> std::io::Result<()> {
    let negotiated = negotiate(options, file.len() as u64, &session_limits);
    let (mut session, mut step) = Session::start(&negotiated, file.len() as u64, &session_limits);
    let started = std::time::Instant::now();
    let expires = started + limits.max_session;
    let mut deadline = started + session.timeout();
    let mut packet = Vec::with_capacity(usize::from(negotiated.blksize) + 4);
    let mut buf = vec![0u8; 1024];
    // Waits for an ACK that ran out (each resends): a lossy network or an
    // overloaded side shows here first.
    let mut timeouts = 0u32;
    loop {
        match step {
            Step::Send(sends) => {
                deadline = std::time::Instant::now() + session.timeout();
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
                    timeouts,
                    from = %link.source,
                    link_mtu = ?link.mtu,
                    "TFTP read"
                );
                return Ok(());
            }
            Step::Abort(reason) => {
                metrics::counter!("ramboot_tftp_sessions_total", "outcome" => reason.outcome()).increment(1);
                match reason {
                    _ if reason.is_tsize_probe() => debug!(%reason, "TFTP: client read the size and ended the session"),
                    // A late repeat of a request whose transfer already ended: routine in a storm.
                    AbortReason::ClientGone => debug!(%reason, "TFTP session ended"),
                    _ => warn!(%reason, "TFTP transfer aborted"),
                }
                return Ok(());
            }
        }
        // Wait for the client's next packet, a due resend, or the session's end.
        step = match socket.wait(&mut buf, (deadline, expires), entry, cancel).await? {
            Wake::Cancelled => return Ok(()),
            Wake::Expired => {
                metrics::counter!("ramboot_tftp_sessions_total", "outcome" => "expired").increment(1);
                warn!(max_session = ?limits.max_session, "TFTP session ran out of time; ended");
                let packet = error_packet(ramboot_core::tftp::session::code::NOT_DEFINED, "session time limit reached");
                // Best effort: the client may be gone.
                let _ = socket.send(&packet).await;
                return Ok(());
            }
            Wake::Repeated => session.on_repeated_request(),
            Wake::Client(Waited::Packet(n)) => match parse_client(&buf[..n]) {
                Ok(p) => session.on_packet(&p),
                // Not TFTP: as if nothing came.
                Err(_) => Step::Wait,
            },
            Wake::Client(Waited::ClientGone) => session.on_client_gone(),
            Wake::Client(_) => {
                timeouts += 1;
                metrics::counter!("ramboot_tftp_timeouts_total").increment(1);
                session.on_timeout()
            }
        };
    }
}

/// A session's socket, connected to its client: the kernel drops packets from
/// any other transfer ID.
///
/// Why two kinds. On a thread of its own, blocked in recv(2) between blocks, a
/// lockstep download (every PXE ROM's) costs one send and one receive per block,
/// and the kernel wakes the session directly: the lowest turnaround for the few
/// sessions of a normal day. But each thread weighs as much as DHCP's in the
/// kernel's scheduler: 5,000 session threads in a storm left DHCP a 5,000th of
/// a busy core. Past [`TftpLimits::threaded_sessions`] a session is a task on
/// the TFTP runtime's one thread, and all of them together weigh as one.
enum SessionSocket {
    /// recv(2) returns at least every [`SESSION_WAKE`] to look at the clocks.
    Thread(std::net::UdpSocket),
    Task(UdpSocket),
}

/// What ended a session's wait.
#[derive(Debug)]
enum Wake {
    Cancelled,
    /// The session's whole lifetime ran out.
    Expired,
    /// The client sent its request again (see [`LiveRequests`]).
    Repeated,
    /// A packet, the client's port closed, or the resend deadline passed.
    Client(Waited),
}

impl SessionSocket {
    fn open(link: &Link, client: SocketAddr, threaded: bool) -> std::io::Result<SessionSocket> {
        let socket = std::net::UdpSocket::bind(SocketAddr::new(link.source, 0))?;
        socket.connect(client)?;
        if threaded {
            // Timeouts are whole seconds: waking this often is precise enough.
            socket.set_read_timeout(Some(SESSION_WAKE))?;
            Ok(SessionSocket::Thread(socket))
        } else {
            socket.set_nonblocking(true)?;
            Ok(SessionSocket::Task(UdpSocket::from_std(socket)?))
        }
    }

    async fn send(&self, packet: &[u8]) -> std::io::Result<()> {
        match self {
            SessionSocket::Thread(socket) => socket.send(packet).map(drop),
            SessionSocket::Task(socket) => socket.send(packet).await.map(drop),
        }
    }

    /// Wait for the client's next packet, its request again, the resend
    /// `deadline`, the session's end (`expires`) or shutdown.
    async fn wait(
        &self,
        buf: &mut [u8],
        (deadline, expires): (std::time::Instant, std::time::Instant),
        entry: &LiveEntry,
        cancel: &CancellationToken,
    ) -> std::io::Result<Wake> {
        loop {
            if cancel.is_cancelled() {
                return Ok(Wake::Cancelled);
            }
            let now = std::time::Instant::now();
            if now >= expires {
                return Ok(Wake::Expired);
            }
            if entry.take_repeat() {
                return Ok(Wake::Repeated);
            }
            let overdue = now >= deadline;
            let waited = match self {
                SessionSocket::Thread(socket) => wait_for_client(socket, buf, overdue)?,
                SessionSocket::Task(socket) if overdue => waited(recv_queued(socket, buf), true)?,
                SessionSocket::Task(socket) => tokio::select! {
                    // A packet that came with the deadline is read, not resent over.
                    biased;
                    received = socket.recv(buf) => waited(received, false)?,
                    _ = entry.live.repeated_notify.notified() => Waited::Nothing,
                    _ = cancel.cancelled() => Waited::Nothing,
                    _ = tokio::time::sleep_until(deadline.min(expires).into()) => Waited::Nothing,
                },
            };
            if !matches!(waited, Waited::Nothing) {
                return Ok(Wake::Client(waited));
            }
        }
    }
}

/// What a session's wait for its client came to.
#[derive(Debug, PartialEq, Eq)]
enum Waited {
    /// A datagram of this length is in the buffer.
    Packet(usize),
    /// ICMP port unreachable: the client's port is closed.
    ClientGone,
    /// The deadline had passed and nothing had come: resend.
    TimedOut,
    /// The socket's wake-up interval passed, or a signal: check the clocks again.
    Nothing,
}

/// Wait for the client's next datagram; `overdue`: the resend deadline has passed.
///
/// An overdue session still reads what is already queued before it counts a
/// timeout: on a busy host its thread can run after the deadline with the
/// client's ACK waiting in the socket, and resending then would be a block the
/// client already has (and, for the client, a duplicate to answer).
fn wait_for_client(socket: &std::net::UdpSocket, buf: &mut [u8], overdue: bool) -> std::io::Result<Waited> {
    let received = if overdue { recv_queued(socket, buf) } else { socket.recv(buf) };
    waited(received, overdue)
}

/// A datagram already queued on `socket`, without waiting: a syscall whatever
/// tokio last saw of the socket's readiness (its `try_recv` trusts that, and a
/// task woken late would miss an ACK the reactor has not reported yet).
fn recv_queued(socket: &impl std::os::fd::AsRawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    nix::sys::socket::recv(socket.as_raw_fd(), buf, nix::sys::socket::MsgFlags::MSG_DONTWAIT)
        .map_err(std::io::Error::from)
}

/// What a receive came to; `overdue`: nothing received means resend.
fn waited(received: std::io::Result<usize>, overdue: bool) -> std::io::Result<Waited> {
    use std::io::ErrorKind;
    match received {
        Ok(n) => Ok(Waited::Packet(n)),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(Waited::ClientGone),
        Err(e) if e.kind() == ErrorKind::Interrupted => Ok(Waited::Nothing),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Ok(if overdue { Waited::TimedOut } else { Waited::Nothing })
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pktinfo::PacketInfo;

    #[test]
    fn an_overdue_session_reads_the_answer_already_queued_before_it_counts_a_timeout() {
        let session = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        session.connect(client.local_addr().unwrap()).unwrap();
        session.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(wait_for_client(&session, &mut buf, false).unwrap(), Waited::Nothing);
        let started = std::time::Instant::now();
        assert_eq!(wait_for_client(&session, &mut buf, true).unwrap(), Waited::TimedOut);
        assert!(started.elapsed() < Duration::from_millis(20), "an overdue wait does not block");
        // The ACK came while the session's thread was not running: it is read, not resent over.
        client.send_to(&[0, 4, 0, 1], session.local_addr().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(wait_for_client(&session, &mut buf, true).unwrap(), Waited::Packet(4));
        assert_eq!(&buf[..4], &[0, 4, 0, 1]);
        drop(client);
        // A closed client port: an ICMP error, then the session ends.
        session.send(&[0, 3, 0, 2]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(wait_for_client(&session, &mut buf, true).unwrap(), Waited::ClientGone);
    }

    fn arrived(local: [u8; 4]) -> Option<PacketInfo> {
        Some(PacketInfo { local: local.into(), header_dst: local.into(), ifindex: 2 })
    }

    #[test]
    fn the_file_cache_drops_the_files_used_longest_ago_past_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        for (name, len) in [("a", 40), ("b", 40), ("c", 40)] {
            std::fs::write(dir.path().join(name), vec![0u8; len]).unwrap();
        }
        let cache = FileCache { max_bytes: 100, ..FileCache::default() };
        let get = |name: &str| cache.get(&dir.path().join(name)).unwrap();
        let a = get("a");
        get("b");
        get("a"); // a is used again: b is now the oldest
        get("c");
        let files = cache.files.lock().unwrap();
        let kept: Vec<_> = files.keys().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert!(
            kept.contains(&"a".to_string()) && kept.contains(&"c".to_string()) && !kept.contains(&"b".to_string()),
            "{kept:?}"
        );
        assert_eq!(a.len(), 40, "a reference taken earlier stays whole");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_that_find_a_new_file_at_once_share_one_read_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipxe.efi");
        std::fs::write(&path, vec![7u8; 300_000]).unwrap();
        let cache = Arc::new(FileCache::default());
        let file = || SessionFile::Cached(cache.clone(), path.clone());
        let mut loads = tokio::task::JoinSet::new();
        for _ in 0..40 {
            loads.spawn(file().load_async());
        }
        for _ in 0..8 {
            let file = file();
            loads.spawn_blocking(move || file.load());
        }
        let got: Vec<Arc<[u8]>> = loads.join_all().await.into_iter().map(Result::unwrap).collect();
        assert!(got.iter().all(|bytes| Arc::ptr_eq(bytes, &got[0])), "one copy in memory, read once");
        assert_eq!(got[0].len(), 300_000);
    }

    fn rrq(filename: &str, options: &[(&str, &str)]) -> Vec<u8> {
        let mut packet = vec![0, 1];
        for field in [filename, "octet"].into_iter().chain(options.iter().flat_map(|(n, v)| [*n, *v])) {
            packet.extend_from_slice(field.as_bytes());
            packet.push(0);
        }
        packet
    }

    /// Datagrams the client receives within `within`: (sender's port, bytes).
    async fn received(client: &UdpSocket, within: Duration) -> Vec<(u16, Vec<u8>)> {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        let end = tokio::time::Instant::now() + within;
        while let Ok(Ok((n, from))) = tokio::time::timeout_at(end, client.recv_from(&mut buf)).await {
            got.push((from.port(), buf[..n].to_vec()));
        }
        got
    }

    #[tokio::test]
    async fn a_repeated_request_is_answered_by_the_running_session_and_a_new_one_opens_a_new_session() {
        // A session on a thread of its own, then one that runs as a task.
        for threaded_sessions in [THREADED_SESSIONS, 0] {
            repeated_request_case(threaded_sessions).await;
        }
    }

    async fn repeated_request_case(threaded_sessions: usize) {
        let root = tempfile::tempdir().unwrap();
        let file: Vec<u8> = (0..2000u32).map(|i| i as u8).collect();
        std::fs::write(root.path().join("undionly.kpxe"), &file).unwrap();
        let listener = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server_addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let (root_path, stop) = (root.path().to_path_buf(), cancel.clone());
        let limits = TftpLimits { threaded_sessions, ..TftpLimits::default() };
        let server = tokio::spawn(async move { serve_with(&root_path, listener, limits, None, stop).await });
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();

        // The request twice from one port, as a client whose first block came late
        // sends it: one session answers both, from one port (block 1, then its resend).
        let request = rrq("undionly.kpxe", &[]);
        client.send_to(&request, server_addr).await.unwrap();
        client.send_to(&request, server_addr).await.unwrap();
        let answers = received(&client, Duration::from_millis(1500)).await;
        assert!(!answers.is_empty(), "no answer");
        // (sender's port, TFTP header) of each answer.
        let heads: Vec<(u16, Vec<u8>)> = answers.iter().map(|(port, bytes)| (*port, bytes[..4].to_vec())).collect();
        let session_port = answers[0].0;
        assert!(heads.iter().all(|(port, _)| *port == session_port), "a second session answered: {heads:?}");
        assert!(heads.iter().all(|(_, head)| *head == [0, 3, 0, 1]), "only block 1: {heads:?}");
        // That session serves the whole file.
        let session = SocketAddr::new(server_addr.ip(), session_port);
        let mut got = answers[0].1[4..].to_vec();
        for block in 1u16.. {
            client.send_to(&[0, 4, (block >> 8) as u8, block as u8], session).await.unwrap();
            if got.len() >= file.len() {
                break;
            }
            let mut buf = [0u8; 1024];
            let (n, _) =
                tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf)).await.unwrap().unwrap();
            assert_eq!(buf[..4], [0, 3, ((block + 1) >> 8) as u8, (block + 1) as u8]);
            got.extend_from_slice(&buf[4..n]);
        }
        assert_eq!(got, file);

        // A different request from the same port while a session runs (a ROM that
        // read tsize and asks again) is a transfer of its own.
        client.send_to(&rrq("undionly.kpxe", &[("tsize", "0")]), server_addr).await.unwrap();
        let probe = received(&client, Duration::from_millis(300)).await;
        assert_eq!(probe.first().map(|(_, b)| b[..2].to_vec()), Some(vec![0, 6]), "an OACK first");
        client.send_to(&request, server_addr).await.unwrap();
        let second = received(&client, Duration::from_millis(300)).await;
        let data = second.iter().find(|(_, b)| b[..2] == [0, 3]).expect("block 1 of a new session");
        assert_ne!(data.0, probe[0].0, "the new request got a session of its own");

        cancel.cancel();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn sessions_answer_from_the_address_the_request_reached() {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        // Listening on 0.0.0.0, asked on a secondary address or a VIP: answer from it.
        assert_eq!(answer_from(any, arrived([10, 0, 0, 9])), IpAddr::from([10, 0, 0, 9]));
        // Bound to one address: that one (the kernel reports it), as before.
        let bound = IpAddr::from([10, 0, 0, 1]);
        assert_eq!(answer_from(bound, arrived([10, 0, 0, 1])), bound);
        // Nothing known (IPv6, or no IP_PKTINFO): the listening address.
        assert_eq!(answer_from(bound, None), bound);
        assert_eq!(answer_from(bound, arrived([0, 0, 0, 0])), bound);
    }

    #[test]
    fn a_sessions_blksize_cap_follows_its_links_mtu() {
        let limits = TftpLimits::default();
        assert_eq!(session_limits(&limits, None).max_blksize, 1468);
        assert_eq!(session_limits(&limits, Some(1500)).max_blksize, 1468);
        assert_eq!(session_limits(&limits, Some(1400)).max_blksize, 1368);
        assert_eq!(session_limits(&limits, Some(65536)).max_blksize, 1468);
    }
}
