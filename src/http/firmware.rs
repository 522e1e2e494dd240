//! `/ipxe/<file>`: the iPXE binaries over HTTP, for UEFI HTTP Boot clients.
//!
//! DHCP hands an HTTP Boot client (option 60 `HTTPClient`) the URL
//! `{boot_url}/ipxe/{file}` instead of a TFTP file name; the firmware's own HTTP
//! client fetches it and runs it. The files are the ones TFTP serves, from
//! `paths.ipxe`, found by the same [`crate::safe_path::resolve`]: no name leaves
//! that directory (`..`, backslashes, control characters, symlinks pointing out).
//! Public, like TFTP: nothing under `ipxe/` is secret.
//!
//! The binaries are replaced in place when `ipxe/fetch.sh` runs again, so they are
//! revalidated rather than cached for ever: the ETag is the file's size and
//! modification time, as static file servers make it. Range requests work as for
//! artifacts (firmware resumes a broken download with one).

use super::artifacts::file_body;
use super::error::ApiError;
use super::AppState;
use crate::safe_path::{resolve, PathError};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

pub fn routes() -> Router<AppState> {
    Router::new().route("/ipxe/{*file}", get(boot_file))
}

/// What firmware expects of an EFI binary (UEFI 2.x HTTP Boot checks
/// `application/efi`; others fall back to the file name's extension).
fn content_type(name: &str) -> &'static str {
    if name.to_ascii_lowercase().ends_with(".efi") {
        "application/efi"
    } else {
        "application/octet-stream"
    }
}

async fn boot_file(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let root = state.config.paths.ipxe.clone();
    let name = file.clone();
    let opened = tokio::task::spawn_blocking(move || -> Result<(std::fs::File, std::fs::Metadata), PathError> {
        let root = std::fs::canonicalize(&root).map_err(|_| PathError::NotFound)?;
        let real = resolve(&root, &name)?;
        let file = std::fs::File::open(real).map_err(|_| PathError::NotFound)?;
        let meta = file.metadata().map_err(|_| PathError::NotFound)?;
        Ok((file, meta))
    })
    .await
    .map_err(ApiError::internal)?;
    let (opened, meta) = match opened {
        Ok(found) => found,
        Err(e) => {
            let result = if e == PathError::NotFound { "not_found" } else { "refused" };
            metrics::counter!("ramboot_http_boot_file_requests_total", "result" => result).increment(1);
            if result == "refused" {
                tracing::warn!(file = %file.escape_debug(), error = %e, "boot file request refused");
            }
            return Err(ApiError::not_found(format!(
                "no boot file {:?} under ipxe/: {e}",
                file.escape_debug().to_string()
            )));
        }
    };
    metrics::counter!("ramboot_http_boot_file_requests_total", "result" => "ok").increment(1);
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
    let etag = format!("\"{:x}-{:x}\"", meta.len(), mtime.as_nanos());
    let mut common = HeaderMap::new();
    common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    common.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        common.insert(header::ETAG, v);
    }
    Ok(file_body(Arc::new(opened), meta.len(), &etag, common, content_type(&file), &headers))
}
