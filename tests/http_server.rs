//! `http::server`: the header/idle timeout, the connection cap and graceful shutdown,
//! on loopback with raw TCP clients (so the test controls every byte and pause).
//!
//! Timeouts here are short (1 s) and every assertion has wide margins: a bound is
//! checked as "not before half of it" and "within several seconds of it".
//!
//! Per-address caps (connections, and the admin API's event streams) use 127.0.0.1
//! and 127.0.0.2 as two clients: all of 127/8 is loopback.

mod common;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::header::CONTENT_LENGTH;
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use ramboot::http::server::{serve, ServerLimits};
use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SHORT: Duration = Duration::from_secs(1);
/// `/big`: far more than loopback's socket buffers hold (client receive buffer
/// pinned to 64 KiB below, server send buffer at most `tcp_wmem` max, 4 MiB here).
const BIG_BODY: usize = 16 * 1024 * 1024;
const BIG_CHUNK: usize = 64 * 1024;
/// `/slow`: 20 chunks, 150 ms apart, so a response takes about 3 s.
const SLOW_CHUNKS: usize = 20;
const SLOW_CHUNK: usize = 512;
const SLOW_PAUSE: Duration = Duration::from_millis(150);

fn big_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// `/hello`; `/peer` (the `ConnectInfo` address); `/big` (16 MiB, streamed);
/// `/slow` (10 KiB over ~3 s, says "slow" on `started` first); `/forever` (one chunk,
/// then nothing, says "forever" first).
fn app(started: mpsc::UnboundedSender<&'static str>) -> Router {
    let forever_started = started.clone();
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/peer", get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }))
        .route(
            "/big",
            get(|| async {
                let chunks = futures_util::stream::iter((0..BIG_BODY / BIG_CHUNK).map(|n| {
                    let chunk: Vec<u8> = (n * BIG_CHUNK..(n + 1) * BIG_CHUNK).map(big_byte).collect();
                    Ok::<_, std::io::Error>(Bytes::from(chunk))
                }));
                ([(CONTENT_LENGTH, BIG_BODY.to_string())], Body::from_stream(chunks))
            }),
        )
        .route(
            "/slow",
            get(move || {
                let _ = started.send("slow");
                async {
                    let chunks = futures_util::stream::iter(0..SLOW_CHUNKS).then(|_| async {
                        tokio::time::sleep(SLOW_PAUSE).await;
                        Ok::<_, std::io::Error>(Bytes::from(vec![b's'; SLOW_CHUNK]))
                    });
                    ([(CONTENT_LENGTH, (SLOW_CHUNKS * SLOW_CHUNK).to_string())], Body::from_stream(chunks))
                }
            }),
        )
        .route(
            "/forever",
            get(move || {
                let _ = forever_started.send("forever");
                async {
                    let first = futures_util::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"x")) });
                    Body::from_stream(first.chain(futures_util::stream::pending()))
                }
            }),
        )
}

struct Server {
    addr: SocketAddr,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
    started: mpsc::UnboundedReceiver<&'static str>,
}

async fn start(limits: ServerLimits) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let (tx, started) = mpsc::unbounded_channel();
    let handle = tokio::spawn(serve(listener, app(tx), None, limits, cancel.clone()));
    Server { addr, cancel, handle, started }
}

fn limits(header_read_timeout: Duration) -> ServerLimits {
    ServerLimits { header_read_timeout, drain: Duration::from_secs(10), ..ServerLimits::default() }
}

/// `future`, or a panic naming `what` after `secs`: no test can hang.
async fn within<T>(secs: u64, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: not within {secs} s"),
    }
}

async fn get_request(stream: &mut TcpStream, path: &str) {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes()).await.unwrap();
}

/// Reads a response head; returns it (lower-cased) and any body bytes read past it.
async fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            return (head, buf[end + 4..].to_vec());
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "EOF inside a response head: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(head: &str) -> usize {
    let line = head.lines().find_map(|l| l.strip_prefix("content-length:")).expect("a content-length");
    line.trim().parse().unwrap()
}

/// A whole `Content-Length` response: (lower-cased head, body).
async fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let (head, mut body) = read_head(stream).await;
    let len = content_length(&head);
    let mut chunk = [0u8; 16 * 1024];
    while body.len() < len {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "EOF after {} of {len} body bytes", body.len());
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body.len(), len, "more bytes than Content-Length");
    (head, body)
}

/// Waits for the server to close the connection (EOF, or a reset when it closed with
/// our bytes unread); any data before that is a test failure.
async fn closed_by_server(stream: &mut TcpStream) {
    let mut chunk = [0u8; 1024];
    match stream.read(&mut chunk).await {
        Ok(0) => {}
        Ok(n) => panic!("expected the connection closed, got {:?}", String::from_utf8_lossy(&chunk[..n])),
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {}
        Err(e) => panic!("expected the connection closed, got {e}"),
    }
}

/// (1) An idle keep-alive connection stays open between requests but is closed by the
/// server once it has been idle for the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let server = start(limits(SHORT)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    get_request(&mut stream, "/hello").await;
    let (head, body) = within(5, "first response", read_response(&mut stream)).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"hello");

    // Still open well inside the timeout: keep-alive works.
    tokio::time::sleep(SHORT / 3).await;
    get_request(&mut stream, "/hello").await;
    let (head, body) = within(5, "second response on the same connection", read_response(&mut stream)).await;
    assert!(head.starts_with("http/1.1 200") && !head.contains("connection: close"), "{head}");
    assert_eq!(body, b"hello");

    let idle_from = Instant::now();
    within(10, "server closing the idle connection", closed_by_server(&mut stream)).await;
    let idle = idle_from.elapsed();
    eprintln!("idle keep-alive connection closed after {idle:?} (header timeout {SHORT:?})");
    assert!(idle >= SHORT / 2, "closed after only {idle:?}");
    assert!(idle < SHORT + Duration::from_secs(5), "closed only after {idle:?}");
    server.cancel.cancel();
    within(10, "serve() returning", server.handle).await.unwrap();
}

/// (2) Slowloris: a partial request line and then silence, or a head dribbled a byte
/// at a time, is disconnected once the header timeout passes since the connection
/// opened — dribbling does not restart the timer — with no response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_disconnected_after_the_header_timeout() {
    let server = start(limits(SHORT)).await;

    let opened = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    silent.write_all(b"GET /hel").await.unwrap();
    within(10, "server dropping the silent client", closed_by_server(&mut silent)).await;
    let silent_after = opened.elapsed();

    let opened = Instant::now();
    let mut dribbler = TcpStream::connect(server.addr).await.unwrap();
    let head = b"GET /hello HTTP/1.1\r\nHost: test\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let (mut reader, mut writer) = dribbler.split();
    let dribble = async {
        for byte in head {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // The server may already have hung up: stop writing, the reader will see it.
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
        }
        // Took ~8 s, far past the timeout: the reader must have seen the close by now.
        std::future::pending::<()>().await
    };
    let mut chunk = [0u8; 1024];
    let read = tokio::select! {
        read = reader.read(&mut chunk) => read,
        _ = dribble => unreachable!(),
    };
    let dribbler_after = opened.elapsed();
    match read {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("dribbling client: expected a close, got {other:?}"),
    }
    eprintln!("slowloris: silent client dropped after {silent_after:?}, dribbling client after {dribbler_after:?}");
    for after in [silent_after, dribbler_after] {
        assert!(after >= SHORT / 2, "dropped after only {after:?}");
        assert!(after < SHORT + Duration::from_secs(5), "dropped only after {after:?}");
    }
    server.cancel.cancel();
    within(10, "serve() returning", server.handle).await.unwrap();
}

/// (3) Normal requests work (and see `ConnectInfo`), and a 16 MiB body read slowly
/// over more than twice the header timeout arrives whole: the timeout bounds heads,
/// never a response in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_work_and_a_slowly_read_large_body_is_not_cut() {
    let server = start(limits(SHORT)).await;

    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    get_request(&mut stream, "/peer").await;
    let (head, body) = within(5, "/peer", read_response(&mut stream)).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(String::from_utf8(body).unwrap(), stream.local_addr().unwrap().to_string());

    // A small receive buffer keeps the server writing for as long as we read slowly
    // (the kernel would otherwise absorb megabytes of the body at once).
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    get_request(&mut stream, "/big").await;
    let started = Instant::now();
    let slow_read = async {
        let (head, mut received) = read_head(&mut stream).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(content_length(&head), BIG_BODY);
        let mut chunk = vec![0u8; 16 * 1024];
        // When we had read 10 MiB, at most ~4.2 MiB more sat in socket buffers, so
        // the server was still writing the body at that moment.
        let mut at_10_mib = None;
        while received.len() < BIG_BODY {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "body cut after {} of {BIG_BODY} bytes ({:?})", received.len(), started.elapsed());
            received.extend_from_slice(&chunk[..n]);
            if at_10_mib.is_none() && received.len() >= 10 * 1024 * 1024 {
                at_10_mib = Some(started.elapsed());
            }
        }
        (received, at_10_mib.unwrap_or_default())
    };
    let (received, at_10_mib) = within(120, "slow read of /big", slow_read).await;
    let total = started.elapsed();
    eprintln!("slow reader: 10 MiB after {at_10_mib:?}, all {BIG_BODY} bytes after {total:?}");
    assert_eq!(received.len(), BIG_BODY);
    assert!(received.iter().enumerate().all(|(i, b)| *b == big_byte(i)), "body corrupted");
    assert!(at_10_mib > SHORT * 2, "read too fast to prove anything: 10 MiB after {at_10_mib:?}");

    server.cancel.cancel();
    within(10, "serve() returning", server.handle).await.unwrap();
}

/// (4) Graceful shutdown: with a ~3 s response in flight, cancel closes idle
/// connections at once, refuses new ones, lets the in-flight response finish and then
/// closes its connection, then `serve()` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_responses_and_refuses_new_connections() {
    // A long header timeout: the idle connection below must be closed by the shutdown.
    let mut server = start(limits(Duration::from_secs(30))).await;

    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    get_request(&mut idle, "/hello").await;
    within(5, "/hello", read_response(&mut idle)).await;

    let mut busy = TcpStream::connect(server.addr).await.unwrap();
    get_request(&mut busy, "/slow").await;
    assert_eq!(within(5, "/slow handler starting", server.started.recv()).await, Some("slow"));
    let cancelled = Instant::now();
    server.cancel.cancel();

    within(5, "idle connection closed by the shutdown", closed_by_server(&mut idle)).await;
    let refused = async {
        loop {
            match TcpStream::connect(server.addr).await {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => break,
                // Connected in the instant before the listener closed: try again.
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    };
    within(5, "new connections refused", refused).await;
    let refused_after = cancelled.elapsed();
    assert!(!server.handle.is_finished(), "serve() returned with a response in flight");

    let (head, body) = within(15, "in-flight response", read_response(&mut busy)).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, vec![b's'; SLOW_CHUNKS * SLOW_CHUNK]);
    within(5, "busy connection closed after its response", closed_by_server(&mut busy)).await;
    within(10, "serve() returning", server.handle).await.unwrap();
    eprintln!(
        "graceful shutdown: refused new connections after {refused_after:?}, returned after {:?}",
        cancelled.elapsed()
    );
}

/// (4b) A response that never ends does not hold shutdown past the drain bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_still_open_at_the_drain_deadline() {
    let mut server = start(ServerLimits { drain: SHORT, ..limits(Duration::from_secs(30)) }).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    get_request(&mut stream, "/forever").await;
    assert_eq!(within(5, "/forever handler starting", server.started.recv()).await, Some("forever"));
    let (head, _) = within(5, "/forever head", read_head(&mut stream)).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");

    let cancelled = Instant::now();
    server.cancel.cancel();
    within(10, "serve() returning", server.handle).await.unwrap();
    let returned = cancelled.elapsed();
    eprintln!("drain deadline {SHORT:?}: serve() returned after {returned:?}");
    assert!(returned >= SHORT / 2, "returned after only {returned:?}");
    // The unfinished response is cut: the rest of the chunked body never comes.
    let mut rest = Vec::new();
    let read = within(5, "connection cut", stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok() || read.is_err_and(|e| e.kind() == ErrorKind::ConnectionReset));
    assert!(!rest.ends_with(b"0\r\n\r\n"), "the endless body ended cleanly");
}

/// (5) The connection cap: with both slots held by silent clients, a third
/// connection waits in the backlog and is served once the header timeout frees a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let server = start(ServerLimits { max_connections: 2, ..limits(SHORT) }).await;
    let mut holders = Vec::new();
    for _ in 0..2 {
        holders.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let waiting_from = Instant::now();
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    get_request(&mut third, "/hello").await;
    let (head, body) = within(10, "third connection served", read_response(&mut third)).await;
    let waited = waiting_from.elapsed();
    eprintln!("connection cap 2: third connection served after {waited:?} (header timeout {SHORT:?})");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"hello");
    assert!(waited >= SHORT / 2, "served after only {waited:?}: the cap did not hold");
    for holder in &mut holders {
        within(5, "slot holder dropped", closed_by_server(holder)).await;
    }
    server.cancel.cancel();
    within(10, "serve() returning", server.handle).await.unwrap();
}

/// (6) A request head larger than `max_buf_size` is refused with 431, even when it
/// arrives all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_is_refused() {
    let server = start(limits(SHORT)).await;
    let max = ServerLimits::default().max_buf_size;
    for (pad, status) in [(max / 2, "http/1.1 200"), (max + 4096, "http/1.1 431")] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let head = format!("GET /hello HTTP/1.1\r\nHost: test\r\nX-Pad: {}\r\n\r\n", "a".repeat(pad));
        // The server may stop reading (and answer) before the whole head is written.
        let _ = stream.write_all(head.as_bytes()).await;
        let (head, _) = within(5, "response to a large head", read_head(&mut stream)).await;
        assert!(head.starts_with(status), "{pad}-byte header: {head}");
    }
    server.cancel.cancel();
    within(10, "serve() returning", server.handle).await.unwrap();
}

/// (4c) The same bound holds for an artifact download on the sendfile path (which
/// hyper's graceful watcher does not see): a client that stopped reading does not
/// hold shutdown past the drain deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_a_stalled_sendfile_download_at_the_drain_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let images = ramboot::images::ImageStore::new(dir.path().join("images"));
    let blob = dir.path().join("image");
    std::fs::write(&blob, vec![7u8; 32 << 20]).unwrap();
    let artifact = images.ingest(&blob, "raw").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let (tx, _started) = mpsc::unbounded_channel();
    let artifacts = Some(ramboot::http::sendfile::Artifacts { images });
    let limits = ServerLimits { drain: SHORT, ..limits(Duration::from_secs(30)) };
    let handle = tokio::spawn(serve(listener, app(tx), artifacts, limits, cancel.clone()));

    // A client with a small receive buffer reads the head and then stops reading.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    get_request(&mut stream, &format!("/artifacts/sha256/{}/image", artifact.digest)).await;
    let (head, _) = within(5, "artifact head", read_head(&mut stream)).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");

    let cancelled = Instant::now();
    cancel.cancel();
    within(10, "serve() returning", handle).await.unwrap();
    let returned = cancelled.elapsed();
    eprintln!("drain deadline {SHORT:?}: serve() returned after {returned:?} with a stalled sendfile download");
    assert!(returned >= SHORT / 2, "returned after only {returned:?}: the download was not waited for");
}

/// A connection from `source` (any 127/8 address) to `server`.
async fn connect_from(source: [u8; 4], server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(server).await.unwrap()
}

/// The sum of a counter's samples with `label=value`, as `/metrics` renders it.
fn counter(name: &str, label: &str, value: &str) -> f64 {
    let text = ramboot::http::metrics::handle().render();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && s.labels.get(label) == Some(value))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// (7) One address may hold `max_connections_per_source` connections: the next
/// is answered 503 with Retry-After and closed, without a request being read and
/// counted; another address is served meanwhile; once a holder goes, the address
/// is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_address_cap_get_503_and_others_are_served() {
    ramboot::http::metrics::handle();
    let refused_before = counter("ramboot_http_connections_refused_total", "reason", "per_source");
    let server = start(ServerLimits { max_connections_per_source: 2, ..limits(Duration::from_secs(30)) }).await;
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut holder = connect_from([127, 0, 0, 1], server.addr).await;
        // Served, so the loop has surely accepted it before the next connects.
        get_request(&mut holder, "/hello").await;
        let (head, _) = within(5, "holder served", read_response(&mut holder)).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        holders.push(holder);
    }
    let mut over = connect_from([127, 0, 0, 1], server.addr).await;
    let (head, body) = within(5, "refusal", read_response(&mut over)).await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("retry-after: 2") && head.contains("connection: close"), "{head}");
    assert_eq!(body, b"too many connections from your address\n");
    within(5, "refused connection closed", closed_by_server(&mut over)).await;
    // A client that sent its request at once still reads the 503: the server reads
    // the request away before it closes, so the close is no reset.
    for _ in 0..20 {
        let mut eager = connect_from([127, 0, 0, 1], server.addr).await;
        get_request(&mut eager, "/hello").await;
        let (head, _) = within(5, "refusal after a request", read_response(&mut eager)).await;
        assert!(head.starts_with("http/1.1 503"), "{head}");
    }
    assert!(counter("ramboot_http_connections_refused_total", "reason", "per_source") - refused_before >= 1.0);

    let mut other = connect_from([127, 0, 0, 2], server.addr).await;
    get_request(&mut other, "/peer").await;
    let (head, body) = within(5, "another address served", read_response(&mut other)).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body.starts_with(b"127.0.0.2:"), "{}", String::from_utf8_lossy(&body));

    // A holder leaves: its slot comes back (the server sees the close at once; a
    // retry covers the moment in between).
    drop(holders.pop());
    let mut served = false;
    for _ in 0..50 {
        let mut again = connect_from([127, 0, 0, 1], server.addr).await;
        get_request(&mut again, "/hello").await;
        let (head, _) = within(5, "a response", read_response(&mut again)).await;
        if head.starts_with("http/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the address was not served again after a holder left");
    server.cancel.cancel();
    within(15, "serve() returning", server.handle).await.unwrap();
}

/// Opens `/api/v1/events/stream` from `source`; the response head, lower-cased, and
/// the connection (kept open: the stream is the body).
async fn open_event_stream(srv: &common::TestServer, source: [u8; 4]) -> (String, Vec<u8>, TcpStream) {
    let addr: SocketAddr = srv.base.trim_start_matches("http://").parse().unwrap();
    let mut stream = connect_from(source, addr).await;
    let request =
        format!("GET /api/v1/events/stream HTTP/1.1\r\nHost: test\r\nAuthorization: {}\r\n\r\n", srv.read_auth());
    stream.write_all(request.as_bytes()).await.unwrap();
    let (head, body) = within(10, "event stream head", read_head(&mut stream)).await;
    (head, body, stream)
}

/// (8) Event streams are capped per address (default 4): the next gets a 503 with a
/// JSON error naming the limit and is counted; another address still gets one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_beyond_the_per_address_cap_get_503() {
    ramboot::http::metrics::handle();
    let refused_before = counter("ramboot_http_event_streams_refused_total", "reason", "per_source");
    let srv = tokio::task::spawn_blocking(common::TestServer::start).await.unwrap();
    let per_source = ramboot::config::HttpLimits::default().max_event_streams_per_source;
    let mut open = Vec::new();
    for _ in 0..per_source {
        let (head, _, stream) = open_event_stream(&srv, [127, 0, 0, 1]).await;
        assert!(head.starts_with("http/1.1 200") && head.contains("text/event-stream"), "{head}");
        open.push(stream);
    }
    let (head, mut body, mut stream) = open_event_stream(&srv, [127, 0, 0, 1]).await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    let len = content_length(&head);
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = within(5, "error body", stream.read(&mut chunk)).await.unwrap();
        assert!(n > 0);
        body.extend_from_slice(&chunk[..n]);
    }
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "too_many_streams", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("already holds {per_source}")), "{message}");
    assert!(counter("ramboot_http_event_streams_refused_total", "reason", "per_source") - refused_before >= 1.0);

    let (head, _, _other) = open_event_stream(&srv, [127, 0, 0, 2]).await;
    assert!(head.starts_with("http/1.1 200"), "another address gets a stream: {head}");
    drop(open);
    srv.shutdown.cancel();
    let common::TestServer { runtime, .. } = srv;
    tokio::task::spawn_blocking(move || runtime.join().unwrap()).await.unwrap();
}
