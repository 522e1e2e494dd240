//! The simulator's HTTP client: one connection per request, as iPXE opens them,
//! bodies streamed through SHA-256 and never kept (a 500-node storm of 64 MiB
//! images must not need 32 GiB of RAM in the simulator).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HttpSimError {
    #[error("{url}: bad URL")]
    BadUrl { url: String },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: HTTP {status}: {body}")]
    Status { url: String, status: StatusCode, body: String },
    #[error("{url}: got {got} bytes, expected {expected}")]
    Length { url: String, got: u64, expected: u64 },
    #[error("{url}: sha256 {got}, expected {expected}")]
    Digest { url: String, got: String, expected: String },
}

/// A fetched body: small ones are kept, large ones only hashed.
pub struct Fetched {
    pub status: StatusCode,
    pub bytes: u64,
    /// Empty when the call did not hash.
    pub sha256: String,
    pub kept: Vec<u8>,
}

/// What a GET or POST should do with the body.
pub struct Call<'a> {
    pub method: Method,
    pub url: &'a str,
    pub token: Option<&'a str>,
    pub json: Option<Vec<u8>>,
    /// Keep at most this many body bytes (the rest is only hashed and counted).
    pub keep: usize,
    /// Hash the body (SHA-256); off, only its bytes are counted.
    pub hash: bool,
    /// Called with the running byte count as the body arrives.
    pub progress: Option<&'a mut (dyn FnMut(u64) + Send)>,
    /// Connect as this node: the server gives a node's script and token only to
    /// the address DHCP bound to its MAC.
    pub origin: Option<Origin>,
}

/// Where a simulated node's connections come from.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    /// The node's leased address.
    pub address: IpAddr,
    /// `SO_RCVBUF` of each connection, when set. Every simulated node's receive
    /// queue is on this one host: left to autotuning (up to `tcp_rmem`'s 32 MiB each)
    /// a few hundred slow readers push the host past `net.ipv4.tcp_mem`, where Linux
    /// drops arriving segments and a node can stall for a minute on its sender's
    /// backed-off retransmit timer. A real node's queue is in its own memory.
    pub receive_buffer: Option<usize>,
}

impl<'a> Call<'a> {
    pub fn get(url: &'a str, token: Option<&'a str>) -> Call<'a> {
        Call { method: Method::GET, url, token, json: None, keep: 1 << 20, hash: true, progress: None, origin: None }
    }

    pub fn post_json(url: &'a str, token: Option<&'a str>, body: &impl serde::Serialize) -> Call<'a> {
        let json = serde_json::to_vec(body).unwrap_or_default();
        Call {
            method: Method::POST,
            url,
            token,
            json: Some(json),
            keep: 64 << 10,
            hash: true,
            progress: None,
            origin: None,
        }
    }
}

pub async fn call(mut c: Call<'_>) -> Result<Fetched, HttpSimError> {
    let url = c.url.to_string();
    let transport = |message: String| HttpSimError::Transport { url: url.clone(), message };
    let uri: Uri = c.url.parse().map_err(|_| HttpSimError::BadUrl { url: url.clone() })?;
    let host = uri.host().ok_or_else(|| HttpSimError::BadUrl { url: url.clone() })?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect(&host, port, c.origin))
        .await
        .map_err(|_| transport("connect timed out".into()))?
        .map_err(|e| transport(format!("connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| transport(e.to_string()))?;
    let driver = tokio::spawn(connection);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = Request::builder().method(c.method.clone()).uri(path).header("host", format!("{host}:{port}"));
    if let Some(token) = c.token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = match c.json.take() {
        Some(json) => {
            request = request.header("content-type", "application/json");
            Full::new(Bytes::from(json))
        }
        None => Full::new(Bytes::new()),
    };
    let request = request.body(body).map_err(|e| transport(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| transport(e.to_string()))?;
    let status = response.status();
    let mut body = response.into_body();
    let (mut hasher, mut bytes, mut kept) = (Sha256::new(), 0u64, Vec::new());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| transport(format!("reading the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if c.hash {
                hasher.update(&data);
            }
            bytes += data.len() as u64;
            let room = c.keep.saturating_sub(kept.len());
            kept.extend_from_slice(&data[..data.len().min(room)]);
            if let Some(progress) = c.progress.as_mut() {
                progress(bytes);
            }
        }
    }
    drop(sender);
    let _ = driver.await;
    if !status.is_success() {
        let body = String::from_utf8_lossy(&kept).trim().chars().take(300).collect();
        return Err(HttpSimError::Status { url, status, body });
    }
    let sha256 = if c.hash { hex::encode(hasher.finalize()) } else { String::new() };
    Ok(Fetched { status, bytes, sha256, kept })
}

/// Connect to `host:port`, as `origin` if given.
async fn connect(host: &str, port: u16, origin: Option<Origin>) -> std::io::Result<TcpStream> {
    let Some(Origin { address: local, receive_buffer }) = origin else {
        return TcpStream::connect((host, port)).await;
    };
    let server = tokio::net::lookup_host((host, port))
        .await?
        .find(|a| a.is_ipv4() == local.is_ipv4())
        .ok_or_else(|| std::io::Error::other(format!("{host} has no address of the family of {local}")))?;
    let socket = if local.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(bytes) = receive_buffer {
        // Before connect: the window scale is agreed in the handshake.
        socket.set_recv_buffer_size(u32::try_from(bytes).unwrap_or(u32::MAX))?;
    }
    socket.bind(SocketAddr::new(local, 0)).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "binding the node's leased address {local}: {e} (the simulator's host must own the leased \
                 range, e.g. `ip route add local <range> dev lo`)"
            ),
        )
    })?;
    socket.connect(server).await
}

/// Check a download against the size and digest it was announced with.
pub fn verify(url: &str, got: &Fetched, sha256: &str, size: Option<u64>) -> Result<(), HttpSimError> {
    if let Some(expected) = size.filter(|&s| s != got.bytes) {
        return Err(HttpSimError::Length { url: url.to_string(), got: got.bytes, expected });
    }
    if !got.sha256.eq_ignore_ascii_case(sha256) {
        return Err(HttpSimError::Digest { url: url.to_string(), got: got.sha256.clone(), expected: sha256.into() });
    }
    Ok(())
}
