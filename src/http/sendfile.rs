//! Artifact downloads with `sendfile(2)`: the bytes go from the page cache to the
//! socket without passing through this process, as nginx serves files.
//!
//! hyper can only send bodies it holds in memory, so each new connection is first
//! offered to [`Artifacts::serve`]: it *peeks* at the next request head and takes it
//! only if it is a plain `GET`/`HEAD` of an existing artifact that gets a body (200 or
//! 206). Anything else (another path, a 304, a 416, a missing blob, a head that did
//! not arrive in one piece) is left unread and the connection goes to hyper, which
//! answers it with the same rules (`ramboot_core::range::answer`). So keep-alive
//! connections may mix both, and what hyper sees is always a whole request stream.
//!
//! No body buffers: memory does not grow with the number of downloads. A client that
//! stops reading is dropped by the kernel (`TCP_USER_TIMEOUT`, see `http::server`).

use super::artifacts::{digest_in_path, etag_of, fixed_headers, InFlight};
use crate::images::{Digest, ImageStore};
use ramboot_core::range::{answer, Answer, Conditions};
use std::os::fd::AsFd;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// A request head bigger than this is left to hyper.
const PEEK: usize = 8 * 1024;
/// Bytes handed to one `sendfile` call: the socket takes what its buffer holds.
const SENDFILE_MAX: usize = 4 << 20;
const MAX_HEADERS: usize = 32;

/// The artifact store the sendfile path serves from.
#[derive(Clone)]
pub struct Artifacts {
    pub images: ImageStore,
}

/// What the next request on a connection is, by a peek.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// An artifact request we serve: its head's length, what to send, and whether
    /// the connection stays open afterwards.
    Ours { head_len: usize, head: bool, digest: Digest, conditions: OwnedConditions, keep_alive: bool },
    /// Anything else: hyper's.
    Theirs,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct OwnedConditions {
    if_none_match: Option<String>,
    if_range: Option<String>,
    range: Option<String>,
}

/// Pure: classify a peeked request head.
fn classify(bytes: &[u8]) -> Next {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = request.parse(bytes) else { return Next::Theirs };
    let (Some(method), Some(path), Some(version)) = (request.method, request.path, request.version) else {
        return Next::Theirs;
    };
    // A query or an escape is for the router to interpret.
    if !matches!(method, "GET" | "HEAD") || path.contains(['?', '%', '#']) {
        return Next::Theirs;
    }
    let Some(digest) = digest_in_path(path) else { return Next::Theirs };
    let mut conditions = OwnedConditions::default();
    let mut connection = None;
    for h in request.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else { return Next::Theirs };
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            // A request body, or an expectation, is for hyper to handle properly.
            "content-length" if value.trim() != "0" => return Next::Theirs,
            "transfer-encoding" | "expect" | "upgrade" => return Next::Theirs,
            "if-none-match" => conditions.if_none_match = Some(value.to_string()),
            "if-range" => conditions.if_range = Some(value.to_string()),
            "range" => conditions.range = Some(value.to_string()),
            "connection" => connection = Some(value.to_ascii_lowercase()),
            _ => {}
        }
    }
    let has = |token: &str| connection.as_deref().is_some_and(|c| c.split(',').any(|t| t.trim() == token));
    let keep_alive = if version == 1 { !has("close") } else { has("keep-alive") };
    Next::Ours { head_len, head: method == "HEAD", digest, conditions, keep_alive }
}

impl Artifacts {
    /// Serve artifact requests on `stream` while they come; give the connection back
    /// (nothing of the next request read) when one is not ours, or `None` once it is
    /// closed. `idle` bounds the wait for the next request, as hyper's header timeout
    /// does; `cut` ends a transfer at the shutdown drain deadline.
    pub async fn serve(
        &self,
        mut stream: TcpStream,
        idle: Duration,
        shutdown: &CancellationToken,
        cut: &CancellationToken,
    ) -> Option<TcpStream> {
        let mut peeked = vec![0u8; PEEK];
        let mut first = true;
        loop {
            if !first {
                // Between requests: wait for the next one, or close when idle or
                // shutting down (as hyper does).
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    ready = tokio::time::timeout(idle, stream.readable()) => match ready {
                        Ok(Ok(())) => {}
                        _ => return None,
                    },
                }
            }
            first = false;
            let n = match tokio::time::timeout(idle, stream.peek(&mut peeked)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => n,
            };
            let Next::Ours { head_len, head, digest, conditions, keep_alive } = classify(&peeked[..n]) else {
                return Some(stream);
            };
            // Only a body answer is ours; the rest (missing blob, 304, 416) goes to
            // hyper with the request still unread.
            let Ok(file) = std::fs::File::open(self.images.blob_path(&digest)) else { return Some(stream) };
            let Ok(len) = file.metadata().map(|m| m.len()) else { return Some(stream) };
            let etag = etag_of(&digest);
            let asked = Conditions {
                if_none_match: conditions.if_none_match.as_deref(),
                if_range: conditions.if_range.as_deref(),
                range: conditions.range.as_deref(),
            };
            let Answer::Body { start, count, content_range } = answer(&etag, &asked, len) else {
                return Some(stream);
            };
            // Consume exactly the head we peeked at.
            if stream.read_exact(&mut peeked[..head_len]).await.is_err() {
                return None;
            }
            let response = response_head(&etag, count, content_range.as_deref(), keep_alive);
            // With a body to follow, the head waits for it (MSG_MORE) and leaves in
            // the same segment, as nginx's tcp_nopush does.
            if send_head(&stream, response.as_bytes(), !head && count > 0).await.is_err() {
                return None;
            }
            metrics::counter!("ramboot_http_artifact_sendfile_responses_total").increment(1);
            if !head {
                let _in_flight = InFlight::start();
                tokio::select! {
                    _ = cut.cancelled() => return None,
                    sent = send_file(&stream, &file, start, count) => if let Err(e) = sent {
                        debug!(%digest, error = %e, "artifact download ended early");
                        return None;
                    },
                }
            }
            debug!(%digest, start, count, head, "artifact sent with sendfile");
            if !keep_alive {
                let _ = stream.shutdown().await;
                return None;
            }
            if shutdown.is_cancelled() {
                return None;
            }
        }
    }
}

fn response_head(etag: &str, count: u64, content_range: Option<&str>, keep_alive: bool) -> String {
    use std::fmt::Write as _;
    let status = if content_range.is_some() { "206 Partial Content" } else { "200 OK" };
    let mut head = String::with_capacity(320);
    let _ = write!(head, "HTTP/1.1 {status}\r\n");
    for (name, value) in fixed_headers(etag) {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if let Some(range) = content_range {
        let _ = write!(head, "content-range: {range}\r\n");
    }
    let date = httpdate::HttpDate::from(std::time::SystemTime::now());
    let _ = write!(head, "content-type: application/octet-stream\r\ncontent-length: {count}\r\ndate: {date}\r\n");
    if !keep_alive {
        head += "connection: close\r\n";
    }
    head + "\r\n"
}

/// Write all of `bytes`; with `more`, tell TCP that data follows (`MSG_MORE`).
async fn send_head(stream: &TcpStream, mut bytes: &[u8], more: bool) -> std::io::Result<()> {
    let flags = nix::libc::MSG_NOSIGNAL | if more { nix::libc::MSG_MORE } else { 0 };
    while !bytes.is_empty() {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || socket2::SockRef::from(stream).send_with_flags(bytes, flags));
        match sent {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `count` bytes of `file` from `start` to the socket, page cache to socket.
async fn send_file(stream: &TcpStream, file: &std::fs::File, start: u64, count: u64) -> std::io::Result<()> {
    let mut offset = i64::try_from(start).map_err(std::io::Error::other)?;
    let end = offset.saturating_add(i64::try_from(count).map_err(std::io::Error::other)?);
    while offset < end {
        stream.writable().await?;
        let want = usize::try_from(end - offset).unwrap_or(SENDFILE_MAX).min(SENDFILE_MAX);
        let sent = stream.try_io(Interest::WRITABLE, || {
            nix::sys::sendfile::sendfile(stream.as_fd(), file.as_fd(), Some(&mut offset), want)
                .map_err(std::io::Error::from)
        });
        match sent {
            Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file shrank")),
            Ok(n) => metrics::counter!("ramboot_http_artifact_bytes_total").increment(n as u64),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/artifacts/sha256/2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824/vmlinuz";

    fn ours(head: &str) -> Option<(bool, OwnedConditions, bool)> {
        match classify(head.as_bytes()) {
            Next::Ours { head_len, head: is_head, conditions, keep_alive, .. } => {
                assert_eq!(head_len, head.len());
                Some((is_head, conditions, keep_alive))
            }
            Next::Theirs => None,
        }
    }

    #[test]
    fn plain_artifact_gets_and_heads_are_ours() {
        let (is_head, c, keep) = ours(&format!("GET {PATH} HTTP/1.1\r\nHost: x\r\nRange: bytes=1-2\r\n\r\n")).unwrap();
        assert!(!is_head && keep);
        assert_eq!(c.range.as_deref(), Some("bytes=1-2"));
        let (is_head, _, keep) = ours(&format!("HEAD {PATH} HTTP/1.1\r\nConnection: close\r\n\r\n")).unwrap();
        assert!(is_head && !keep);
        assert!(!ours(&format!("GET {PATH} HTTP/1.0\r\n\r\n")).unwrap().2, "HTTP/1.0 closes by default");
        assert!(ours(&format!("GET {PATH} HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")).unwrap().2);
        let digest_only = "/artifacts/sha256/2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        assert!(ours(&format!("GET {digest_only} HTTP/1.1\r\n\r\n")).is_some());
    }

    #[test]
    fn everything_else_is_left_to_hyper() {
        for head in [
            format!("POST {PATH} HTTP/1.1\r\n\r\n"),
            format!("GET {PATH}?x=1 HTTP/1.1\r\n\r\n"),
            format!("GET {PATH}/more HTTP/1.1\r\n\r\n"),
            "GET /artifacts/sha256/abc/vmlinuz HTTP/1.1\r\n\r\n".to_string(),
            "GET /boot.ipxe?mac=02:00:00:00:00:01 HTTP/1.1\r\n\r\n".to_string(),
            format!("GET {PATH} HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            format!("GET {PATH} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            format!("GET {PATH} HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"),
            // Not all of the head has arrived: hyper reads the rest.
            format!("GET {PATH} HTTP/1.1\r\nHost: x\r\n"),
            "\u{0}\u{1}garbage\r\n\r\n".to_string(),
        ] {
            assert_eq!(classify(head.as_bytes()), Next::Theirs, "{head:?}");
        }
    }

    #[test]
    fn the_response_head_is_http_1_1() {
        let head = response_head("\"abc\"", 10, Some("bytes 0-9/20"), false);
        assert!(head.starts_with("HTTP/1.1 206 Partial Content\r\n"), "{head}");
        for line in ["etag: \"abc\"", "content-length: 10", "content-range: bytes 0-9/20", "connection: close"] {
            assert!(head.contains(&format!("{line}\r\n")), "{line} in {head}");
        }
        assert!(head.ends_with("\r\n\r\n"));
        assert!(response_head("\"abc\"", 5, None, true).starts_with("HTTP/1.1 200 OK\r\n"));
    }
}
