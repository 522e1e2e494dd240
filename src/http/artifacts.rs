//! Artifact downloads: `/artifacts/sha256/<digest>[/<name>]`.
//!
//! Artifacts are immutable and named by their SHA-256, which is also their strong
//! ETag. Bodies stream from disk in fixed-size chunks (memory per download is one
//! buffer, whatever the file size), with single-range support for resumes.

use super::error::ApiError;
use super::range::{parse_range, RangeOutcome};
use super::AppState;
use crate::images::Digest;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

const CHUNK: usize = 256 * 1024;

/// Counts a download as in flight until its body stream is dropped (finished,
/// failed or abandoned by the client).
struct InFlight;

impl InFlight {
    fn start() -> Self {
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
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ApiError::not_found("no such artifact")),
        Err(e) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())),
    };
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .len();
    let etag = format!("\"{digest}\"");
    let mut common = HeaderMap::new();
    common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    common.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        common.insert(header::ETAG, v);
    }
    let if_none_match = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok());
    if if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*")) {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    // If-Range with another validator means "send it all": the client's copy is stale.
    let if_range_ok = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()).is_none_or(|v| v.trim() == etag);
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).filter(|_| if_range_ok);
    let (status, start, count) = match parse_range(range_header, len) {
        RangeOutcome::Full => (StatusCode::OK, 0, len),
        RangeOutcome::Partial { start, end } => {
            let value = format!("bytes {start}-{end}/{len}");
            if let Ok(v) = HeaderValue::from_str(&value) {
                common.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeOutcome::Unsatisfiable => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                common.insert(header::CONTENT_RANGE, v);
            }
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, common).into_response());
        }
    };
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    }
    common.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    common.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    let in_flight = InFlight::start();
    let chunks = ReaderStream::with_capacity(file.take(count), CHUNK).map(move |chunk| {
        let _held = &in_flight;
        if let Ok(bytes) = &chunk {
            metrics::counter!("ramboot_http_artifact_bytes_total").increment(bytes.len() as u64);
        }
        chunk
    });
    let body = Body::from_stream(chunks);
    Ok((status, common, body).into_response())
}
