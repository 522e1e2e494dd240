//! The HTTP accept loop: hyper's HTTP/1 connection driver under our own limits.
//!
//! `axum::serve` hides hyper's connection settings, so it cannot bound how long a
//! connection may sit without a request. This loop serves each connection with
//! `hyper::server::conn::http1` and:
//! - `header_read_timeout`: a request head must arrive in full within this long. In
//!   hyper 1.x the timer starts when the connection opens and again as soon as a
//!   response is done, so it is also the keep-alive idle timeout, and a client that
//!   dribbles its head (slowloris) is cut off. It never runs while a body streams.
//! - `max_buf_size`: bounds hyper's per-connection buffers and the size of a request
//!   head (a larger one gets 431).
//! - `TCP_USER_TIMEOUT` + keep-alive on every socket: a client that stops reading a
//!   response (or vanishes) is dropped by the kernel after `stall_timeout`.
//! - at most `max_connections` open at once; beyond that the loop stops accepting and
//!   new connections wait in the kernel's listen backlog.
//! - at most `max_connections_per_source` open from one address: one client cannot
//!   take every slot. Beyond it a connection is answered `503` with `Retry-After`
//!   before anything is read, and closed (counted in
//!   `ramboot_http_connections_refused_total`, warned at most once a minute).
//!
//! On cancel it stops accepting (closing the listener, so new connections are
//! refused), lets every open connection finish its current response, and closes
//! whatever is still open after `drain`.

use super::sendfile::Artifacts;
use crate::limits::{SourceSlots, Throttle};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

/// A request head (request line and headers) must arrive within this long, and an
/// idle keep-alive connection is closed after it. iPXE, the agent and curl send a
/// head in one segment; 10 s is generous for them and short for an attacker.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may make no progress (unacknowledged data, or a client that
/// stopped reading) before the kernel drops it (`TCP_USER_TIMEOUT`).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// hyper's per-connection buffer cap (its default is ~400 KiB) and the largest
/// request head: heads are a few hundred bytes; a larger one is refused with 431.
pub const MAX_BUF_SIZE: usize = 64 * 1024;
/// Open connections at most: a boot storm of a few thousand nodes fits, and file
/// descriptors and per-connection memory stay bounded.
pub const MAX_CONNECTIONS: usize = 4096;
/// Open connections from one address at most. A node uses one or two (iPXE opens
/// one per file); the fleet simulator, many nodes behind one address, raises it.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 64;
/// What a connection over its address's cap gets before it is closed. Written
/// before reading (the request is never parsed), so nothing is spent on it.
const SOURCE_BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nConnection: close\r\n\
    Content-Type: text/plain\r\nContent-Length: 39\r\n\r\ntoo many connections from your address\n";
/// Refused connections read away at once, each for at most `LINGER_TIME` and
/// `LINGER_BYTES` (a lingering close, as nginx does).
const MAX_LINGERING: usize = 64;
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 << 10;
/// How long shutdown waits for in-flight responses before closing their connections.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The "connection cap reached" warning is logged at most this often.
const CAP_WARN_INTERVAL: Duration = Duration::from_secs(60);
/// Pause after an accept error that is not the peer's doing (e.g. `EMFILE`), so the
/// loop does not spin while the process is out of descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The limits one HTTP server applies; [`Default`] is what `ramboot serve` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Time to receive a whole request head, and the keep-alive idle timeout.
    pub header_read_timeout: Duration,
    /// `TCP_USER_TIMEOUT` on accepted sockets.
    pub stall_timeout: Duration,
    /// hyper's per-connection buffer cap (at least 8192), and the largest request head.
    pub max_buf_size: usize,
    /// Open connections at most (at least 1).
    pub max_connections: usize,
    /// Open connections from one address at most (at least 1).
    pub max_connections_per_source: usize,
    /// How long shutdown waits for open connections.
    pub drain: Duration,
}

impl Default for ServerLimits {
    fn default() -> ServerLimits {
        ServerLimits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            stall_timeout: STALL_TIMEOUT,
            max_buf_size: MAX_BUF_SIZE,
            max_connections: MAX_CONNECTIONS,
            max_connections_per_source: MAX_CONNECTIONS_PER_SOURCE,
            drain: DRAIN_TIMEOUT,
        }
    }
}

/// Serve `app` on `listener` until `cancel`, then drain (see the module docs) and
/// return. Requests carry [`ConnectInfo<SocketAddr>`] as with
/// `into_make_service_with_connect_info`. Accept errors are logged and retried,
/// never fatal.
///
/// With `artifacts`, each connection's artifact downloads go out with `sendfile(2)`
/// first ([`super::sendfile`]); everything else on it is hyper's.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    artifacts: Option<Artifacts>,
    limits: ServerLimits,
    cancel: CancellationToken,
) {
    serve_all(vec![listener], app, artifacts, limits, cancel).await
}

/// The next connection on any of `listeners` (IPv4 and IPv6 sockets of one server).
fn accept_any(
    listeners: &[TcpListener],
) -> impl std::future::Future<Output = std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)>> + '_ {
    std::future::poll_fn(move |cx| {
        for listener in listeners {
            if let std::task::Poll::Ready(accepted) = listener.poll_accept(cx) {
                return std::task::Poll::Ready(accepted);
            }
        }
        std::task::Poll::Pending
    })
}

/// [`serve`] on several listeners, under one connection cap and one drain.
pub async fn serve_all(
    listeners: Vec<TcpListener>,
    app: Router,
    artifacts: Option<Artifacts>,
    limits: ServerLimits,
    cancel: CancellationToken,
) {
    // hyper panics below its 8 KiB minimum.
    let max_buf_size = limits.max_buf_size.max(8192);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(max_buf_size)
        // max_buf_size alone lets a head through that arrived in one big read.
        .max_header_size(max_buf_size);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let connections = TaskTracker::new();
    // Cancelled when the drain deadline passes: the connections still open end.
    let cut = CancellationToken::new();
    let mut cap_warned: Option<Instant> = None;
    let per_source = SourceSlots::default();
    let lingering = Arc::new(Semaphore::new(MAX_LINGERING));
    let mut source_refusals = Throttle::new(CAP_WARN_INTERVAL);
    debug!(?limits, "HTTP serving");

    loop {
        // Take a connection slot before accepting: when none is free, connections
        // queue in the kernel's backlog instead of in this process.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if cap_warned.is_none_or(|at| at.elapsed() >= CAP_WARN_INTERVAL) {
                    warn!(
                        max_connections = limits.max_connections,
                        "HTTP connection cap reached; new connections wait in the listen backlog"
                    );
                    cap_warned = Some(Instant::now());
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        // Never closed; if it were, there is nothing left to serve.
                        Err(_) => break,
                    },
                }
            }
        };
        let (stream, remote) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = accept_any(&listeners) => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    error!(error = %e, "HTTP accept failed; retrying in {ACCEPT_ERROR_PAUSE:?}");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    }
                }
            },
        };
        let source_slot = match per_source.try_acquire(remote.ip(), limits.max_connections_per_source.max(1), None) {
            Ok(slot) => slot,
            Err(refused) => {
                metrics::counter!("ramboot_http_connections_refused_total", "reason" => refused.label()).increment(1);
                if let Some(suppressed) = source_refusals.allow(Instant::now()) {
                    warn!(%remote, reason = %refused, suppressed, "HTTP connection refused (503); `suppressed` more since the last warning");
                }
                // A fresh socket's send buffer takes this at once; if not, the client
                // just sees the close. Never waits, so a flood cannot stall the loop.
                let _ = stream.try_write(SOURCE_BUSY);
                // Closing with the request unread would reset the connection and
                // could lose the 503: read it away first, briefly, a bounded number
                // of connections at a time (past that, they just close).
                if let Ok(permit) = lingering.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        linger_close(stream).await;
                        drop(permit);
                    });
                }
                continue;
            }
        };
        set_socket_options(&stream, limits.stall_timeout);

        let service = TowerToHyperService::new(app.clone());
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(remote));
            service.call(request)
        });
        let (http, watcher, artifacts) = (http.clone(), graceful.watcher(), artifacts.clone());
        let (cut, shutdown, idle) = (cut.clone(), cancel.clone(), limits.header_read_timeout);
        connections.spawn(async move {
            // Held until the connection ends: frees its slots.
            let _slots = (slot, source_slot);
            let stream = match &artifacts {
                Some(fast) => match fast.serve(stream, idle, &shutdown, &cut).await {
                    Some(stream) => stream,
                    None => return,
                },
                None => stream,
            };
            let connection = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        // Header timeouts, resets and parse errors: the client's doing.
                        debug!(%remote, error = %e, "HTTP connection ended with an error");
                    }
                }
                _ = cut.cancelled() => debug!(%remote, "HTTP connection closed at the drain deadline"),
            }
        });
    }

    // Closing the listener makes new connections fail at once (RST), not hang.
    drop(listeners);
    connections.close();
    info!(open = connections.len(), drain = ?limits.drain, "HTTP: stopped accepting; draining connections");
    // Idle connections close now; busy ones after their current response. The
    // deadline covers hyper's connections and the sendfile path's (which hyper's
    // graceful watcher does not see) alike.
    let drained = async {
        graceful.shutdown().await;
        connections.wait().await;
    };
    if tokio::time::timeout(limits.drain, drained).await.is_err() {
        warn!(open = connections.len(), "HTTP: connections still open at the drain deadline; closing them");
        cut.cancel();
        connections.wait().await;
    }
}

/// Errors that concern one incoming connection, not the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// A client that stops reading (zero window) or vanishes is cut off by the kernel
/// after `stall_timeout` without progress; its body chunks go back to the shared
/// budget (`http::artifacts`). Best effort: a socket that refuses is still served.
fn set_socket_options(stream: &TcpStream, stall_timeout: Duration) {
    // A response's head and a body's last small chunk go out at once, not after the
    // client's delayed ACK (Nagle), as nginx's `tcp_nodelay on` does.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "HTTP: cannot set TCP_NODELAY");
    }
    let socket = socket2::SockRef::from(stream);
    if let Err(e) = socket.set_tcp_user_timeout(Some(stall_timeout)) {
        debug!(error = %e, "HTTP: cannot set TCP_USER_TIMEOUT");
    }
    if let Err(e) = socket.set_keepalive(true) {
        debug!(error = %e, "HTTP: cannot set SO_KEEPALIVE");
    }
}

/// Half-close, then read what the client already sent (bounded) so the close does
/// not reset the connection and discard the answer written before it.
async fn linger_close(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.shutdown().await;
    let mut buf = [0u8; 4096];
    let mut read = 0;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while read < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}
