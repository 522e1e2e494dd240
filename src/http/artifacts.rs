//! Artifact downloads: `/artifacts/sha256/<digest>[/<name>]`, and the image
//! manifests (`/artifacts/manifests[/<name>]`) other servers sharing the database
//! read to fetch images they lack (`images::sync`).
//!
//! Both are public on the boot network, like the blobs themselves: a manifest
//! holds only image names, kinds, build times, recipe inputs, sizes and digests,
//! nothing secret (secrets live in profiles' templates, never in images).
//!
//! Artifacts are immutable and named by their SHA-256, which is also their strong
//! ETag. Bodies stream from disk in fixed-size chunks, with single-range support for
//! resumes (several ranges are refused with 416).
//!
//! Most bodies leave through `http::sendfile`, which shares `ramboot_core::range::answer`; this handler
//! serves what that path leaves to hyper. Each chunk is read with one positioned
//! read (`pread`) on a blocking thread straight into the buffer that is sent, and no
//! buffer hides in a per-file reader (tokio's `fs::File` keeps one per open file,
//! outside any budget).
//!
//! Memory is bounded for the whole server, not per download: a chunk is read only
//! with a permit from one shared budget ([`BODY_BUDGET`] bytes), and the permit goes
//! back when the HTTP layer has written the chunk and dropped it. The budget's
//! semaphore is FIFO, so when a boot storm wants more than the budget, downloads take
//! turns chunk by chunk (fair queuing): a thousand clients all progress, and memory
//! stays flat whatever their number. A client that stops reading holds at most a
//! couple of chunks, and the kernel drops its connection after `TCP_USER_TIMEOUT`
//! (see `serve`).

use super::error::ApiError;
use super::AppState;
use crate::images::sync::ManifestList;
use crate::images::{valid_name, Digest, ImageError, Manifest};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::StreamExt;
use ramboot_core::range::{answer, Answer, Conditions};
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, OnceLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One read, one body frame: large enough that the per-chunk costs (a blocking-pool
/// hand-off, a permit) vanish next to the copy, small enough that the budget holds
/// hundreds of them, so a storm of clients takes turns finely.
const CHUNK: usize = 128 * 1024;
/// Bytes of artifact bodies in memory at once, across all downloads.
pub const BODY_BUDGET: usize = 32 << 20;

fn budget() -> &'static Arc<Semaphore> {
    static BUDGET: OnceLock<Arc<Semaphore>> = OnceLock::new();
    BUDGET.get_or_init(|| Arc::new(Semaphore::new(BODY_BUDGET / CHUNK)))
}

/// One chunk of a body and its share of the budget, returned when hyper drops it.
struct BudgetedChunk {
    bytes: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for BudgetedChunk {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// `count` bytes from `start`, chunk by chunk, each read only with a permit from
/// `budget`, by `read_at(offset, len)`.
fn budgeted_body<F>(
    budget: Arc<Semaphore>,
    read_at: impl Fn(u64, usize) -> F,
    start: u64,
    count: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>>
where
    F: Future<Output = std::io::Result<Vec<u8>>>,
{
    async_stream::try_stream! {
        let (mut offset, end) = (start, start + count);
        while offset < end {
            let permit = budget.clone().acquire_owned().await.map_err(std::io::Error::other)?;
            let want = (end - offset).min(CHUNK as u64) as usize;
            let bytes = read_at(offset, want).await?;
            offset += want as u64;
            metrics::counter!("ramboot_http_artifact_bytes_total").increment(want as u64);
            yield Bytes::from_owner(BudgetedChunk { bytes, _permit: permit });
        }
    }
}

/// `len` bytes of `file` at `offset`, read on the blocking pool.
async fn pread(file: Arc<std::fs::File>, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let mut bytes = vec![0u8; len];
        // A short read means the blob shrank under us: an error, not silent truncation.
        file.read_exact_at(&mut bytes, offset)?;
        Ok(bytes)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The strong ETag of an artifact: its digest, quoted.
pub fn etag_of(digest: &Digest) -> String {
    format!("\"{digest}\"")
}

/// Headers every artifact answer carries.
pub fn fixed_headers(etag: &str) -> [(header::HeaderName, String); 3] {
    [
        (header::ACCEPT_RANGES, "bytes".into()),
        (header::CACHE_CONTROL, "public, max-age=31536000, immutable".into()),
        (header::ETAG, etag.into()),
    ]
}

/// The digest an artifact URL path names (`/artifacts/sha256/<hex>[/<name>]`).
pub fn digest_in_path(path: &str) -> Option<Digest> {
    let rest = path.strip_prefix("/artifacts/sha256/")?;
    let (hex, name) = rest.split_once('/').unwrap_or((rest, "x"));
    if name.is_empty() || name.contains('/') {
        return None;
    }
    hex.parse().ok()
}

/// Counts a download as in flight until its body stream is dropped (finished,
/// failed or abandoned by the client).
pub(crate) struct InFlight;

impl InFlight {
    pub(crate) fn start() -> Self {
        metrics::gauge!("ramboot_http_artifact_downloads_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("ramboot_http_artifact_downloads_in_flight").decrement(1.0);
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/artifacts/sha256/{digest}", get(artifact))
        .route("/artifacts/sha256/{digest}/{name}", get(named_artifact))
        .route("/artifacts/manifests", get(manifests))
        .route("/artifacts/manifests/{name}", get(manifest))
}

/// Every image manifest of this server.
async fn manifests(State(state): State<AppState>) -> Result<Json<ManifestList<Manifest>>, ApiError> {
    let images = state.images.clone();
    let manifests = tokio::task::spawn_blocking(move || images.list()).await.map_err(ApiError::internal)??;
    Ok(Json(ManifestList { manifests }))
}

/// One image manifest; a name that is not an image name is simply not found.
async fn manifest(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Manifest>, ApiError> {
    if !valid_name(&name) {
        return Err(ImageError::NoSuchImage(name).into());
    }
    let images = state.images.clone();
    Ok(Json(tokio::task::spawn_blocking(move || images.manifest(&name)).await.map_err(ApiError::internal)??))
}

async fn named_artifact(
    state: State<AppState>,
    Path((digest, _name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    artifact(state, Path(digest), headers).await
}

/// The trailing file name is cosmetic (iPXE names an image after its URL's last
/// segment); only the digest selects the file.
async fn artifact(
    State(state): State<AppState>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let digest: Digest = digest.parse().map_err(|_| ApiError::not_found("no such artifact"))?;
    let path = state.images.blob_path(&digest);
    let file = match tokio::task::spawn_blocking(move || std::fs::File::open(path)).await.map_err(ApiError::internal)? {
        Ok(f) => Arc::new(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ApiError::not_found("no such artifact")),
        Err(e) => return Err(ApiError::internal(e)),
    };
    // An open file's size: a local inode lookup, no I/O worth a blocking thread.
    let len = file.metadata().map_err(ApiError::internal)?.len();
    let etag = etag_of(&digest);
    let mut common = HeaderMap::new();
    for (name, value) in fixed_headers(&etag) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            common.insert(name, v);
        }
    }
    Ok(file_body(file, len, &etag, common, "application/octet-stream", &headers))
}

/// `file` (`len` bytes, tagged `etag`) as the request's conditions and range ask:
/// 304, 416, 206 or 200 with `common` headers and `content_type`, the body read
/// chunk by chunk within the shared budget.
pub(crate) fn file_body(
    file: Arc<std::fs::File>,
    len: u64,
    etag: &str,
    mut common: HeaderMap,
    content_type: &'static str,
    headers: &HeaderMap,
) -> Response {
    let header = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let request = Conditions {
        if_none_match: header(header::IF_NONE_MATCH),
        if_range: header(header::IF_RANGE),
        range: header(header::RANGE),
    };
    let (status, start, count) = match answer(etag, &request, len) {
        Answer::NotModified => return (StatusCode::NOT_MODIFIED, common).into_response(),
        Answer::Unsatisfiable => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                common.insert(header::CONTENT_RANGE, v);
            }
            return (StatusCode::RANGE_NOT_SATISFIABLE, common).into_response();
        }
        Answer::Body { start, count, content_range } => {
            let status = match content_range {
                Some(value) => {
                    if let Ok(v) = HeaderValue::from_str(&value) {
                        common.insert(header::CONTENT_RANGE, v);
                    }
                    StatusCode::PARTIAL_CONTENT
                }
                None => StatusCode::OK,
            };
            (status, start, count)
        }
    };
    common.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    common.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    let in_flight = InFlight::start();
    let read_at = move |offset, len| pread(file.clone(), offset, len);
    let chunks = budgeted_body(budget().clone(), read_at, start, count).map(move |chunk| {
        let _held = &in_flight;
        chunk
    });
    (status, common, Body::from_stream(chunks)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Five downloads and a budget of two chunks: every download gets its first
    /// chunk before any gets its third (the FIFO semaphore makes them take turns),
    /// no more than two chunks are ever alive, and every byte arrives.
    #[tokio::test]
    async fn downloads_take_turns_under_a_small_budget() {
        let budget = Arc::new(Semaphore::new(2));
        let data: Vec<u8> = (0..(CHUNK * 4) as u32).map(|i| i as u8).collect();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for client in 0..5 {
            let (budget, data, log) = (budget.clone(), data.clone(), log.clone());
            tasks.push(tokio::spawn(async move {
                let read_at = |offset: u64, len: usize| {
                    let chunk = data[offset as usize..offset as usize + len].to_vec();
                    async move { Ok(chunk) }
                };
                let mut body = std::pin::pin!(budgeted_body(budget.clone(), read_at, 0, data.len() as u64));
                let mut got = Vec::new();
                let mut n = 0;
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.unwrap();
                    assert!(budget.available_permits() <= 1, "the chunk holds a permit");
                    got.extend_from_slice(&chunk);
                    n += 1;
                    log.lock().unwrap().push((client, n));
                    drop(chunk); // written: its permit goes back
                    tokio::task::yield_now().await;
                }
                assert!(got == data, "client {client} got other bytes");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let log = log.lock().unwrap();
        let first_third = log.iter().position(|(_, n)| *n == 3).unwrap();
        let firsts = log.iter().filter(|(_, n)| *n == 1).count();
        assert_eq!(firsts, 5);
        assert!(log[..first_third].iter().filter(|(_, n)| *n == 1).count() == 5, "{log:?}");
        assert_eq!(budget.available_permits(), 2, "every permit came back");
    }
}
